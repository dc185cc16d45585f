//! Helpers of the coordinator's integration tests: real `redis-server` and
//! `ringway-coordinator` processes (killed on drop), a tonic client, and a
//! watcher that records every view it receives.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringway_coordinator::proto::membership_client::MembershipClient;
use ringway_coordinator::proto::{JoinRequest, View, WatchRequest};
use ringway_proto::auth::{ClusterSecret, Signer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Upper bound of any wait that should take far less on an idle machine.
pub const WAIT: Duration = Duration::from_secs(30);

pub const COORDINATOR_BIN: &str = env!("CARGO_BIN_EXE_ringway-coordinator");

/// A port that was free a moment ago; children killed on drop; a
/// `redis-server` of the test's own: the test kit's.
#[allow(unused_imports)] // not every test binary uses each
pub use ringway_testkit::process::{free_port, ChildGuard};
pub use ringway_testkit::redis::RedisServer;

/// What the coordinator keeps in Redis, read by the tests.
#[allow(async_fn_in_trait)]
pub trait CoordinatorKeys {
    async fn stored_view(&self) -> Option<View>;
    async fn lock_holder(&self) -> Option<String>;
}

impl CoordinatorKeys for RedisServer {
    /// The view stored by the coordinator (default key prefix).
    async fn stored_view(&self) -> Option<View> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut con = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        let raw: Option<String> = redis::cmd("GET")
            .arg("ringway:membership")
            .query_async(&mut con)
            .await
            .ok()?;
        raw.map(|r| ringway_coordinator::store::decode_view(&r).expect("stored view is readable"))
    }

    /// The holder of the coordinator lock.
    async fn lock_holder(&self) -> Option<String> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("GET")
            .arg("ringway:coordinator")
            .query_async(&mut con)
            .await
            .ok()?
    }
}

/// A `ringway-coordinator` process.
pub struct Coordinator {
    proc: ChildGuard,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    addr: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

/// Lease TTL and heartbeat interval (ms).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ttl: u64,
    pub interval: u64,
}

pub const FAST: Timing = Timing {
    ttl: 1000,
    interval: 200,
};
pub const RELAXED: Timing = Timing {
    ttl: 3000,
    interval: 500,
};

impl Coordinator {
    /// Spawns the binary without waiting for it to listen.
    pub fn spawn(redis_url: &str, timing: Timing, extra: &[&str]) -> Self {
        let mut cmd = Command::new(COORDINATOR_BIN);
        for var in [
            "RINGWAY_LISTEN",
            "RINGWAY_HTTP_LISTEN",
            "RINGWAY_REDIS_URL",
            "RINGWAY_LEASE_TTL",
            "RINGWAY_HEARTBEAT_INTERVAL",
            "RINGWAY_KEY_PREFIX",
            "RINGWAY_LOG_FORMAT",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0", "--redis-url", redis_url])
            // The dashboard's port too: several coordinators run at once.
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--lease-ttl", &timing.ttl.to_string()])
            .args(["--heartbeat-interval", &timing.interval.to_string()])
            .args(credential(extra))
            .args(extra)
            .env("RUST_LOG", "info,ringway_coordinator=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringway-coordinator");
        let pid = child.id();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err_pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                // Shown by the test harness when a test fails.
                eprintln!("[coordinator {pid}] {line}");
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Coordinator {
            proc: ChildGuard::new(child),
            lines,
            stderr,
            addr: None,
            http: None,
        }
    }

    /// Spawns it and waits for its `listening on` line.
    pub fn start(redis_url: &str, timing: Timing) -> Self {
        let mut c = Self::spawn(redis_url, timing, &[]);
        if c.wait_listening(WAIT).is_none() {
            panic!(
                "the coordinator did not print its address in {WAIT:?}; stderr:\n{}",
                c.stderr()
            );
        }
        c
    }

    /// Waits up to `timeout` for the `listening on` line.
    pub fn wait_listening(&mut self, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        while self.addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.read_line(left)?;
        }
        self.addr
    }

    /// Waits up to `timeout` for the `http on` line (printed before the
    /// coordinator takes the lock).
    pub fn wait_http(&mut self, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        while self.http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.read_line(left)?;
        }
        self.http
    }

    /// Reads one stdout line, noting the addresses it reports.
    fn read_line(&mut self, timeout: Duration) -> Option<()> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        if let Some(addr) = line.strip_prefix("ringway-coordinator listening on ") {
            let addr = addr
                .trim()
                .parse()
                .expect("an address after 'listening on'");
            self.addr = Some(addr);
        } else if let Some(addr) = line.strip_prefix("ringway-coordinator http on ") {
            let addr = addr.trim().parse().expect("an address after 'http on'");
            self.http = Some(addr);
        }
        Some(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the coordinator is listening")
    }

    /// The HTTP address (dashboard, health), once reported.
    pub fn http_addr(&mut self) -> SocketAddr {
        self.wait_http(WAIT)
            .expect("the coordinator reports its HTTP address")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn terminate(&self) {
        self.proc.terminate();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    pub async fn client(&self) -> Client {
        connect(self.addr()).await
    }
}

/// The shared secret of the test coordinators.
pub const SECRET: &str = "ringway-test-cluster-secret-0123456789abcdef";

/// A file holding [`SECRET`] (written once per test process).
pub fn secret_file() -> &'static str {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "ringway-coordinator-test-secret-{}",
            std::process::id()
        ));
        std::fs::write(&path, SECRET).expect("write the cluster secret");
        path.to_str().expect("utf-8 temp dir").to_owned()
    })
}

/// The secret's flag, unless `extra` chooses the credential itself.
fn credential(extra: &[&str]) -> Vec<&'static str> {
    if extra
        .iter()
        .any(|a| a.starts_with("--cluster-") || *a == "--insecure-cluster")
    {
        vec![]
    } else {
        vec!["--cluster-secret-file", secret_file()]
    }
}

/// A Membership client signed with the test secret.
pub type Client = MembershipClient<InterceptedService<Channel, Signer>>;

pub async fn connect(addr: SocketAddr) -> Client {
    connect_as(addr, Some("test-client")).await
}

/// A Membership client signed as `node` (`None`: with no credential).
pub async fn connect_as(addr: SocketAddr, node: Option<&str>) -> Client {
    let signer = node.map_or_else(Signer::none, |node| {
        Signer::new(
            Some(ClusterSecret::new(SECRET.as_bytes()).expect("secret")),
            node,
        )
    });
    let channel = eventually(WAIT, format!("a connection to {addr}"), || async {
        Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .ok()
    })
    .await;
    MembershipClient::with_interceptor(channel, signer)
}

pub fn join_req(node: &str, incarnation: u64) -> JoinRequest {
    JoinRequest {
        node_id: node.into(),
        grpc_addr: format!("{node}.local:7001"),
        http_addr: format!("{node}.local:3000"),
        incarnation,
        ..JoinRequest::default()
    }
}

pub fn ids(view: &View) -> Vec<String> {
    view.members.iter().map(|m| m.node_id.clone()).collect()
}

/// Reads a `Watch` stream in a task and keeps every view received.
pub struct Watcher {
    latest: watch::Receiver<Option<View>>,
    history: Arc<Mutex<Vec<View>>>,
    ended: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Watcher {
    pub async fn open(client: &mut Client, node_id: &str) -> Self {
        let mut stream = client
            .watch(WatchRequest {
                node_id: node_id.into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let (tx, latest) = watch::channel(None);
        let history = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (h, e) = (history.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let end = loop {
                match stream.message().await {
                    Ok(Some(view)) => {
                        if let Ok(mut h) = h.lock() {
                            h.push(view.clone());
                        }
                        tx.send_replace(Some(view));
                    }
                    Ok(None) => break "end of stream".to_string(),
                    Err(status) => break format!("error: {status}"),
                }
            };
            if let Ok(mut e) = e.lock() {
                *e = Some(end);
            }
            // Wake waiters so they notice the end.
            tx.send_modify(|_| {});
        });
        Watcher {
            latest,
            history,
            ended,
            task,
        }
    }

    /// Waits up to `timeout` for a view matching `pred`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&View) -> bool,
    ) -> View {
        let found = tokio::time::timeout(
            timeout,
            self.latest.wait_for(|v| v.as_ref().is_some_and(&pred)),
        )
        .await;
        let found = found.ok().and_then(|r| r.ok()).and_then(|v| v.clone());
        match found {
            Some(v) => v,
            None => panic!(
                "no view with {what} within {timeout:?}; last view: {:?}; stream: {:?}",
                self.latest.borrow().clone(),
                self.ended()
            ),
        }
    }

    /// Waits up to `timeout` for the stream to end; its reason.
    pub async fn wait_end(&mut self, timeout: Duration) -> Option<String> {
        ringway_testkit::poll_until(timeout, || std::future::ready(self.ended())).await
    }

    pub fn ended(&self) -> Option<String> {
        self.ended.lock().ok().and_then(|e| e.clone())
    }

    pub fn history(&self) -> Vec<View> {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    pub fn latest(&self) -> Option<View> {
        self.latest.borrow().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The one wait of every Ringway test (`gateway/testkit`).
pub use ringway_testkit::eventually;
