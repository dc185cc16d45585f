//! Ringway's own processes, as every suite starts them: a
//! `ringway-coordinator` and `ringway-gateway` binaries of the same build,
//! on free ports, with the test clusters' shared secret. The gateway's,
//! the coordinator's and the load tester's tests all start theirs here;
//! each adds the flags it tests.
//!
//! The processes are found and told apart by what they print on stdout
//! (`... listening on <addr>`), as an operator's script would; this crate
//! names no Ringway crate.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::process::{free_port, ChildGuard};

/// How long a process may take to print its address.
pub const START_WAIT: Duration = Duration::from_secs(20);

/// The shared secret of every test cluster.
pub const SECRET: &str = "ringway-test-cluster-secret-0123456789abcdef";

/// A file holding [`SECRET`] (written once per test process).
pub fn secret_file() -> &'static str {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "ringway-test-cluster-secret-{}",
            std::process::id()
        ));
        std::fs::write(&path, SECRET).expect("write the cluster secret");
        path.to_str().expect("utf-8 temp dir").to_owned()
    })
}

/// A binary of the workspace built with the running test:
/// `target/<profile>/<name>`, beside the test's `deps/` directory.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build --workspace) first",
        bin.display()
    );
    bin
}

/// The lines a child prints on stdout, read on a thread of their own (so
/// the child never blocks on a full pipe).
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn read(stdout: ChildStdout) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Nobody listening any more is fine: the loop drains the
                // pipe, so the child never blocks on it.
                let _ = tx.send(line);
            }
        });
        Lines(rx)
    }

    fn next(&self, timeout: Duration) -> Option<String> {
        self.0.recv_timeout(timeout).ok()
    }
}

/// Lease TTL and heartbeat interval of a coordinator, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ttl: u64,
    pub interval: u64,
}

/// The lease of cluster tests: short, so that failures show quickly.
pub const CLUSTER_TIMING: Timing = Timing {
    ttl: 1500,
    interval: 300,
};

/// How to start a `ringway-coordinator`.
#[derive(Debug, Clone)]
pub struct CoordinatorSpec {
    /// The gRPC port; 0 for any (a fixed one lets the test restart it on
    /// the same address).
    pub port: u16,
    /// Its Redis flags (`--redis-url ...`, a mode, TLS files).
    pub redis: Vec<String>,
    pub timing: Timing,
    /// Authenticate with [`secret_file`] (else `extra` names the
    /// credential, or `--insecure-cluster`).
    pub secret: bool,
    pub extra: Vec<String>,
    pub rust_log: String,
}

impl CoordinatorSpec {
    /// A coordinator on one plain Redis.
    pub fn new(redis_url: &str) -> CoordinatorSpec {
        CoordinatorSpec::on(vec!["--redis-url".to_owned(), redis_url.to_owned()])
    }

    /// A coordinator on any Redis set-up (its flags).
    pub fn on(redis: Vec<String>) -> CoordinatorSpec {
        CoordinatorSpec {
            port: 0,
            redis,
            timing: CLUSTER_TIMING,
            secret: true,
            extra: Vec::new(),
            rust_log: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        }
    }

    /// On a port of its own that stays the same across restarts.
    pub fn fixed_port(mut self) -> Self {
        self.port = free_port();
        self
    }

    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    pub fn args<S: AsRef<str>>(mut self, extra: &[S]) -> Self {
        self.extra
            .extend(extra.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn without_secret(mut self) -> Self {
        self.secret = false;
        self
    }

    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_owned();
        self
    }

    /// Spawns the process without waiting for it to listen.
    pub fn spawn(&self) -> CoordinatorProcess {
        let mut cmd = Command::new(workspace_binary("ringway-coordinator"));
        // The environment of the machine configures nothing here.
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
        cmd.args(["--listen", &format!("127.0.0.1:{}", self.port)])
            // The dashboard's port too (default 7080): tests run side by
            // side.
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--lease-ttl", &self.timing.ttl.to_string()])
            .args(["--heartbeat-interval", &self.timing.interval.to_string()])
            .args(&self.redis);
        if self.secret {
            cmd.args(["--cluster-secret-file", secret_file()]);
        }
        let mut child = cmd
            .args(&self.extra)
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringway-coordinator");
        let pid = child.id();
        let lines = Lines::read(child.stdout.take().expect("stdout"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                // Shown by the test harness when a test fails.
                eprintln!("[coordinator {pid}] {line}");
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        CoordinatorProcess {
            proc: ChildGuard::new(child),
            lines,
            stderr,
            addr: None,
            http: None,
        }
    }

    /// Spawns it and waits for its `listening on` line.
    pub fn start(&self) -> CoordinatorProcess {
        let mut c = self.spawn();
        if c.wait_listening(START_WAIT).is_none() {
            panic!(
                "the coordinator did not print its address in {START_WAIT:?}; stderr:\n{}",
                c.stderr()
            );
        }
        c
    }
}

/// A `ringway-coordinator` process, killed on drop.
pub struct CoordinatorProcess {
    proc: ChildGuard,
    lines: Lines,
    stderr: Arc<Mutex<String>>,
    addr: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

impl CoordinatorProcess {
    /// Waits up to `timeout` for the `listening on` line.
    pub fn wait_listening(&mut self, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        while self.addr.is_none() {
            self.read_line(deadline.saturating_duration_since(Instant::now()))?;
        }
        self.addr
    }

    /// Waits up to `timeout` for the `http on` line (printed before the
    /// coordinator takes its lock).
    pub fn wait_http(&mut self, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        while self.http.is_none() {
            self.read_line(deadline.saturating_duration_since(Instant::now()))?;
        }
        self.http
    }

    fn read_line(&mut self, timeout: Duration) -> Option<()> {
        let line = self.lines.next(timeout)?;
        let parse = |addr: &str| addr.trim().parse().ok();
        if let Some(addr) = line.strip_prefix("ringway-coordinator listening on ") {
            self.addr = parse(addr);
        } else if let Some(addr) = line.strip_prefix("ringway-coordinator http on ") {
            self.http = parse(addr);
        }
        Some(())
    }

    /// The gRPC address (once listening).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the coordinator is listening")
    }

    /// The HTTP address (dashboard, health).
    pub fn http_addr(&mut self) -> SocketAddr {
        self.wait_http(START_WAIT)
            .expect("the coordinator reports its HTTP address")
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        self.proc.terminate();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }
}

/// A `ringway-gateway` process, killed on drop, with the listeners it
/// reported.
pub struct GatewayProcess {
    proc: ChildGuard,
    /// The Socket.IO listener, `host:port`.
    pub addr: String,
    /// The node-to-node gRPC listener (cluster mode).
    pub grpc: Option<String>,
    /// The Push API listener (with API tokens).
    pub api: Option<String>,
}

impl GatewayProcess {
    /// A command for the gateway binary of this build, its gRPC and API
    /// listeners on free ports unless flags place them (tests run side by
    /// side).
    pub fn command() -> Command {
        let mut command = Command::new(workspace_binary("ringway-gateway"));
        command
            .env("RINGWAY_GRPC_LISTEN", "127.0.0.1:0")
            .env("RINGWAY_API_LISTEN", "127.0.0.1:0");
        command
    }

    /// Spawns `command` (its stdout is the kit's; its stderr what the
    /// command says) and waits until it listens.
    pub fn spawn(mut command: Command) -> GatewayProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ringway-gateway");
        let lines = Lines::read(child.stdout.take().expect("stdout"));
        let proc = ChildGuard::new(child);
        // The gRPC and API lines, when there are any, come first.
        let (mut grpc, mut api) = (None, None);
        let deadline = Instant::now() + START_WAIT;
        let addr = loop {
            let line = lines
                .next(deadline.saturating_duration_since(Instant::now()))
                .expect("the gateway did not report its address");
            if let Some(addr) = line.strip_prefix("ringway-gateway grpc listening on ") {
                grpc = Some(addr.trim().to_owned());
            } else if let Some(addr) = line.strip_prefix("ringway-gateway api listening on ") {
                api = Some(addr.trim().to_owned());
            } else if let Some(addr) = line.strip_prefix("ringway-gateway listening on http://") {
                break addr.trim().to_owned();
            }
        };
        // The reader thread goes on draining stdout once `lines` is gone.
        drop(lines);
        GatewayProcess {
            proc,
            addr,
            grpc,
            api,
        }
    }

    /// Its stderr, when the command piped it (once).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.proc.child_mut()?.stderr.take()
    }

    pub fn pid(&self) -> u32 {
        self.proc.id().expect("the gateway runs")
    }

    /// SIGKILL: the node dies without a word.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM, then the exit status (within `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        self.proc.terminate();
        self.proc.wait_exit(within)
    }
}
