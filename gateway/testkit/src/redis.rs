//! A `redis-server` of the test's own: on a free port of 127.0.0.1, no
//! persistence, never the machine's 6379; stopped to test an outage,
//! restarted (empty) on the same port. Read with plain RESP, so the kit
//! needs no Redis client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, ChildGuard};

/// How long a start waits for the server to answer.
const START_WAIT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    pub port: u16,
    proc: Option<ChildGuard>,
}

impl RedisServer {
    /// Starts one (the Debian package's `redis-server`, which
    /// `scripts/test.sh` installs); another port if the first was taken
    /// meanwhile.
    pub fn start() -> Self {
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                proc: None,
            };
            if server.try_start() {
                return server;
            }
        }
        panic!("cannot start redis-server (installed by scripts/test.sh)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (an outage; its data is lost).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let what = format!("redis-server to restart on port {}", self.port);
        crate::eventually_blocking(START_WAIT, what, || self.try_start());
    }

    fn try_start(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (installed by scripts/test.sh)");
        let mut guard = ChildGuard::new(child);
        // Answering, or exited (most likely the port was taken meanwhile).
        let answering = crate::poll_until_blocking(START_WAIT, || {
            if guard.try_wait().is_some() {
                return Some(false);
            }
            (self.command(&["PING"]).as_deref() == Some("+PONG")).then_some(true)
        });
        if answering == Some(true) {
            self.proc = Some(guard);
            return true;
        }
        false
    }

    /// One command over RESP; the first line of the answer (a bulk
    /// string's value; `$-1` for a nil one). `None` if it does not answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        stream.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 1 << 16];
        let n = stream.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut lines = text.split("\r\n");
        let first = lines.next()?.to_owned();
        if first.starts_with('$') && first != "$-1" {
            return lines.next().map(str::to_owned);
        }
        Some(first)
    }

    /// The value of a string key; `None` when it has none.
    pub fn get(&self, key: &str) -> Option<String> {
        self.command(&["GET", key]).filter(|v| v != "$-1")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
