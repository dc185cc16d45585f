//! TCP connections from rotating loopback source addresses.
//!
//! Loopback ephemeral ports are 32768-60999 per source address, so one source
//! address holds at most ~28,000 connections to one server. Binding each
//! client socket to 127.0.0.N (N rotating over `count` addresses) before
//! connecting multiplies that by `count`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpSocket, TcpStream};

use super::error::{ClientError, ErrorKind};

/// The source addresses client sockets are bound to, used in turn.
#[derive(Debug)]
pub struct SourceAddrs {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourceAddrs {
    /// `count` addresses 127.0.0.1 ..= 127.0.0.count when the target is an
    /// IPv4 loopback address; no binding otherwise (or when `count` is 0).
    pub fn for_target(target: SocketAddr, count: u8) -> Self {
        let addrs = match target.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && count > 0 => (1..=count)
                .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
                .collect(),
            _ => Vec::new(),
        };
        SourceAddrs {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        Some(self.addrs[i])
    }
}

/// Opens a TCP connection to `target`, bound to the next source address.
pub async fn connect(target: SocketAddr, sources: &SourceAddrs) -> Result<TcpStream, ClientError> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| ClientError::from_io(ErrorKind::Io, "socket", &e))?;
    if let Some(ip) = sources.pick() {
        // Lets bind() take a port whose previous connection is in TIME_WAIT.
        socket
            .set_reuseaddr(true)
            .map_err(|e| ClientError::from_io(ErrorKind::Bind, "SO_REUSEADDR", &e))?;
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| ClientError::from_io(ErrorKind::Bind, &format!("bind {ip}"), &e))?;
    }
    let stream = socket.connect(target).await.map_err(|e| {
        ClientError::from_io(ErrorKind::TcpConnect, &format!("connect {target}"), &e)
    })?;
    // Small messages are the point of the benchmarks: no Nagle delay.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
