//! A small Engine.IO v4 / Socket.IO v5 client, written for load: few
//! allocations per session, small WebSocket buffers, every failure counted
//! as a [`ClientError`] instead of a panic.
//!
//! Layers: [`net`] (TCP from rotating 127.0.0.N sources), [`engineio`]
//! (open packet, heartbeat, WebSocket and long-polling transports),
//! [`socketio`] (namespace CONNECT, EVENT / ACK encoding and parsing).

pub mod engineio;
pub mod error;
pub mod net;
pub mod socketio;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::ValueEnum;

pub use error::{ClientError, ErrorKind};
pub use socketio::{SioPacket, SioSession};

/// How a session talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// A direct WebSocket session (`transport=websocket`, no polling first).
    Websocket,
    /// A long-polling session: handshake GET, POSTs, a long-poll GET loop.
    Polling,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Websocket => "websocket",
            TransportKind::Polling => "polling",
        }
    }

    /// File descriptors one session holds on the client side.
    /// With `nodes` servers in the node list, a polling session keeps one
    /// keep-alive connection per node for its GETs and one for its POSTs.
    pub fn fds_per_session(self, nodes: usize) -> u64 {
        match self {
            TransportKind::Websocket => 1,
            // One connection for the long-poll GET, one for POSTs.
            TransportKind::Polling => 2 * nodes.max(1) as u64,
        }
    }
}

/// One server of the node list.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Resolved server address.
    pub target: SocketAddr,
    /// `Host` header value (`host:port` as given in the URL).
    pub authority: String,
}

/// Everything a session needs to reach the server.
#[derive(Debug)]
pub struct ClientConfig {
    /// The node list (`--url`, repeatable): sessions start on its nodes in
    /// turn, and every HTTP request of a polling session goes to the next
    /// node of the list (non-sticky). One node: the plain, sticky case.
    pub nodes: Vec<Endpoint>,
    /// Engine.IO endpoint path, with a trailing slash (`/socket.io/`).
    pub path: String,
    pub transport: TransportKind,
    /// Socket.IO namespace (`/` or `/custom`).
    pub namespace: String,
    /// CONNECT payload (a JSON object), if any.
    pub auth: Option<String>,
    pub sources: net::SourceAddrs,
    /// Limit for each handshake step (TCP, open packet, CONNECT).
    pub handshake_timeout: Duration,
    /// Initial WebSocket read buffer per session, in bytes.
    pub ws_read_buffer: usize,
    /// Sessions started so far (the next starts on node `n % nodes`).
    pub started: AtomicUsize,
}

impl ClientConfig {
    /// Node `i` of the list (modulo its length).
    pub fn node(&self, i: usize) -> &Endpoint {
        &self.nodes[i % self.nodes.len()]
    }

    /// The node index where the next session starts: round robin.
    pub fn next_start(&self) -> usize {
        self.started.fetch_add(1, Ordering::Relaxed) % self.nodes.len()
    }

    /// The Engine.IO request target (path and query) for `transport`,
    /// joined to session `sid` when given.
    pub fn request_target(&self, transport: &str, sid: Option<&str>) -> String {
        match sid {
            Some(sid) => format!("{}?EIO=4&transport={transport}&sid={sid}", self.path),
            None => format!("{}?EIO=4&transport={transport}", self.path),
        }
    }
}

/// Whether `RINGWAY_LOADTEST_TRACE` is set: every polling request and
/// upgrade step is then printed on stderr (a debugging aid for small runs).
pub fn trace_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RINGWAY_LOADTEST_TRACE").is_some())
}

/// Prints one trace line (see [`trace_enabled`]), with milliseconds since
/// the first trace line.
pub fn trace(args: std::fmt::Arguments<'_>) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    if trace_enabled() {
        let t = START.get_or_init(std::time::Instant::now).elapsed();
        eprintln!("[{:10.3} ms] {args}", t.as_secs_f64() * 1e3);
    }
}

/// The node of each HTTP request of one session: the session's start node
/// first, then the next node of the list for every request (GETs and POSTs
/// of a polling session share it).
#[derive(Debug, Clone)]
pub struct NodeCursor {
    next: std::sync::Arc<AtomicUsize>,
    nodes: usize,
}

impl NodeCursor {
    pub fn new(start: usize, nodes: usize) -> Self {
        NodeCursor {
            next: std::sync::Arc::new(AtomicUsize::new(start)),
            nodes: nodes.max(1),
        }
    }

    /// The node index of the next request.
    pub fn next(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.nodes
    }
}

/// Splits `http://host:port[/path]` (or `ws://`) into authority and path.
/// The path defaults to `default_path`; it always ends with `/`.
pub fn parse_url(url: &str, default_path: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("ws") => {}
        Some(other) => return Err(format!("--url scheme {other:?} not supported (http or ws)")),
        None => return Err(format!("--url {url:?} needs a scheme (http://)")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--url {url:?} has no host"))?;
    let authority = if authority.port().is_some() {
        authority.to_string()
    } else {
        format!("{}:80", authority.host())
    };
    let mut path = match uri.path() {
        "" | "/" => default_path.to_string(),
        p => p.to_string(),
    };
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if !path.ends_with('/') {
        path.push('/');
    }
    Ok((authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_and_without_path() {
        assert_eq!(
            parse_url("http://127.0.0.1:3000", "/socket.io/").unwrap(),
            ("127.0.0.1:3000".to_string(), "/socket.io/".to_string())
        );
        assert_eq!(
            parse_url("ws://localhost:8080/sio", "/socket.io/").unwrap(),
            ("localhost:8080".to_string(), "/sio/".to_string())
        );
        assert!(parse_url("https://x:1", "/socket.io/").is_err());
    }
}
