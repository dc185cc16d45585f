//! Scenarios, one module each, and what they share: the common flags, the
//! client configuration, the fd budget, paced session spawning, progress.

pub mod connect;
pub mod echo;
pub mod fanout;
pub mod hold;

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::client::net::SourceAddrs;
use crate::client::{parse_url, ClientConfig, SioSession, TransportKind};
use crate::metrics::{ErrorCounts, LatencyHistogram, ProcProbe};
use crate::report::Report;

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Server URL; a path in it replaces --path (http://127.0.0.1:3000).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,

    /// Engine.IO endpoint path, when the URL has none.
    #[arg(long, default_value = "/socket.io/")]
    pub path: String,

    /// Transport of every session.
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: TransportKind,

    /// Socket.IO namespace to connect to.
    #[arg(long, default_value = "/")]
    pub namespace: String,

    /// CONNECT payload (a JSON object), e.g. '{"token":"abc"}'.
    #[arg(long)]
    pub auth: Option<String>,

    /// Pid of a server process to measure (RSS from /proc/PID/status, CPU
    /// from /proc/PID/stat); repeat for several processes.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,

    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,

    /// Bind client sockets to 127.0.0.1 ..= 127.0.0.N in turn (loopback
    /// targets only; 0: let the kernel choose). Each source address gives
    /// ~28,000 ephemeral ports.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(0..=254))]
    pub source_ips: u8,

    /// Limit for the whole handshake of one session (TCP, open, CONNECT), ms.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Initial WebSocket read buffer per client session, bytes.
    #[arg(long, default_value_t = 4096)]
    pub ws_read_buffer: usize,

    /// No progress line on stderr (it is shown only on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
}

impl CommonArgs {
    /// Resolves the URL into a client configuration.
    pub async fn client_config(&self) -> Result<ClientConfig, String> {
        let (authority, path) = parse_url(&self.url, &self.path)?;
        let target = tokio::net::lookup_host(&authority)
            .await
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{authority} resolves to no address"))?;
        let namespace = if self.namespace.starts_with('/') {
            self.namespace.clone()
        } else {
            format!("/{}", self.namespace)
        };
        if let Some(auth) = &self.auth {
            let value: serde_json::Value =
                serde_json::from_str(auth).map_err(|e| format!("--auth is not JSON: {e}"))?;
            if !value.is_object() {
                return Err("--auth must be a JSON object".into());
            }
        }
        Ok(ClientConfig {
            target,
            authority,
            path,
            transport: self.transport,
            namespace,
            auth: self.auth.clone(),
            sources: SourceAddrs::for_target(target, self.source_ips),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            ws_read_buffer: self.ws_read_buffer.max(256),
        })
    }

    pub fn report(&self, scenario: &'static str, params: serde_json::Value) -> Report {
        Report::new(scenario, &self.url, self.transport, &self.namespace, params)
    }

    /// Starts measuring the server processes (and this client).
    pub fn probes(&self) -> Result<(ProcProbe, ProcProbe), String> {
        let servers = if self.server_pids.is_empty() {
            ProcProbe::none()
        } else {
            ProcProbe::start(&self.server_pids)?
        };
        let client = ProcProbe::start(&[std::process::id()])?;
        Ok((servers, client))
    }
}

/// Shared state of a run.
pub struct Run {
    pub cfg: Arc<ClientConfig>,
    pub errors: Arc<ErrorCounts>,
    pub started: Instant,
}

impl Run {
    pub async fn new(common: &CommonArgs, sessions: u64) -> Result<Run, String> {
        check_fd_budget(sessions * common.transport.fds_per_session())?;
        let cfg = common.client_config().await?;
        Ok(Run {
            cfg: Arc::new(cfg),
            errors: Arc::new(ErrorCounts::default()),
            started: Instant::now(),
        })
    }

    /// Samples the probes now: the end of the measured window.
    pub fn record_usage(&self, report: &mut Report, servers: &ProcProbe, client: &ProcProbe) {
        let (usage, gone) = servers.finish();
        report.servers = usage;
        for g in gone {
            report.note(g);
        }
        report.client = client.finish().0.into_iter().next();
        report.machine = client.machine();
    }

    /// Fills in errors and elapsed time.
    pub fn finish_report(&self, report: &mut Report) {
        report.errors = self.errors.snapshot();
        report.error_total = self.errors.total();
        report.elapsed_s = self.started.elapsed().as_secs_f64();
    }
}

/// How one held session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The handshake failed.
    Failed,
    /// Connected, then lost before the end (error counted).
    Lost,
    /// Still open at the end; closed by the client.
    Alive,
}

/// Sessions opened by [`storm`], idle until released.
pub struct Storm {
    pub connected: u64,
    pub failed: u64,
    /// From the first spawn to the last handshake's end, seconds.
    pub storm_secs: f64,
    pub open_latency: Arc<LatencyHistogram>,
    pub connect_latency: Arc<LatencyHistogram>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<SessionEnd>,
    lost: Arc<AtomicU64>,
}

/// Opens `n` sessions at `rate` per second; each stays open, answering
/// pings, until [`Storm::release`]. Returns once every handshake ended.
pub async fn storm(run: &Run, n: u64, rate: f64, quiet: bool) -> Storm {
    let open_latency = Arc::new(LatencyHistogram::new());
    let connect_latency = Arc::new(LatencyHistogram::new());
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<bool>();
    let lost = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let shown = (connected.clone(), finished.clone(), lost.clone());
    let bar = progress(quiet, move || {
        format!(
            "handshakes {}/{n}, connected {}, lost {}",
            shown.1.load(Ordering::Relaxed),
            shown.0.load(Ordering::Relaxed),
            shown.2.load(Ordering::Relaxed)
        )
    });
    let start = Instant::now();
    let tasks = spawn_paced(n, rate, |_| {
        let cfg = run.cfg.clone();
        let errors = run.errors.clone();
        let (open_h, connect_h) = (open_latency.clone(), connect_latency.clone());
        let stop_rx = stop_rx.clone();
        let done = done_tx.clone();
        let lost = lost.clone();
        let (connected, finished) = (connected.clone(), finished.clone());
        async move {
            let result = SioSession::connect(&cfg).await;
            finished.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok((session, times)) => {
                    open_h.record(times.open);
                    connect_h.record(times.connect);
                    connected.fetch_add(1, Ordering::Relaxed);
                    let _ = done.send(true);
                    match idle_until(session, stop_rx).await {
                        Ok(session) => {
                            session.close().await;
                            SessionEnd::Alive
                        }
                        Err(e) => {
                            errors.add(&e);
                            lost.fetch_add(1, Ordering::Relaxed);
                            SessionEnd::Lost
                        }
                    }
                }
                Err(e) => {
                    errors.add(&e);
                    let _ = done.send(false);
                    SessionEnd::Failed
                }
            }
        }
    })
    .await;
    drop(done_tx);
    let (mut ok, mut failed) = (0, 0);
    while let Some(success) = done_rx.recv().await {
        if success {
            ok += 1;
        } else {
            failed += 1;
        }
        if ok + failed == n {
            break;
        }
    }
    let storm_secs = start.elapsed().as_secs_f64();
    end_progress(bar);
    Storm {
        connected: ok,
        failed,
        storm_secs,
        open_latency,
        connect_latency,
        stop,
        tasks,
        lost,
    }
}

impl Storm {
    /// Sessions lost so far (connected, then closed by an error).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The live counter of lost sessions (for progress lines).
    pub fn lost_counter(&self) -> Arc<AtomicU64> {
        self.lost.clone()
    }

    /// Closes every session; returns how many were still open.
    pub async fn release(mut self) -> u64 {
        let _ = self.stop.send(true);
        let mut alive = 0;
        while let Some(end) = self.tasks.join_next().await {
            if matches!(end, Ok(SessionEnd::Alive)) {
                alive += 1;
            }
        }
        alive
    }
}

/// File descriptors kept for the runtime, stdio and the like.
const FD_RESERVE: u64 = 64;

/// Raises the soft fd limit to the hard one, then checks that `needed`
/// descriptors fit. The hard limit here is 20,000 per process: a run that
/// needs more spreads over several client processes.
pub fn check_fd_budget(needed: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    let limit: u64 = lim.rlim_cur;
    if needed + FD_RESERVE > limit {
        return Err(format!(
            "this run needs about {needed} file descriptors but one process may open {limit}; \
             split it over several ringway-loadtest processes (fewer sessions each)"
        ));
    }
    Ok(())
}

/// Spawns `make(i)` for i in 0..n, paced at `rate` per second (0: at once).
pub async fn spawn_paced<F, Fut>(n: u64, rate: f64, mut make: F) -> JoinSet<Fut::Output>
where
    F: FnMut(u64) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut set = JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0..n {
        if rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        set.spawn(make(i));
    }
    set
}

/// Keeps a session alive (answering pings, ignoring events) until `stop`
/// turns true. Returns the session if it is still open then, or the error
/// that ended it.
pub async fn idle_until(
    mut session: SioSession,
    mut stop: watch::Receiver<bool>,
) -> Result<SioSession, crate::client::ClientError> {
    loop {
        if *stop.borrow() {
            return Ok(session);
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    return Ok(session);
                }
            }
            packet = session.recv() => {
                packet?;
            }
        }
    }
}

/// Prints `line()` on stderr every second while the returned guard lives,
/// when stderr is a terminal and not `quiet`.
pub fn progress<F>(quiet: bool, line: F) -> Option<tokio::task::JoinHandle<()>>
where
    F: Fn() -> String + Send + 'static,
{
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprint!("\r\x1b[2K{}", line());
        }
    }))
}

/// Stops a progress printer and clears its line.
pub fn end_progress(handle: Option<tokio::task::JoinHandle<()>>) {
    if let Some(h) = handle {
        h.abort();
        eprint!("\r\x1b[2K");
    }
}

/// Rate per second of `count` over `secs` (0 when no time passed).
pub fn per_second(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}
