//! Scenarios, one module each, and what they share: the common flags, the
//! client configuration, the fd budget, paced session spawning, progress.

pub mod chaos;
pub mod connect;
pub mod echo;
pub mod fanout;
pub mod hold;
pub mod polling;
pub mod push;
pub mod soak;

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::client::net::SourceAddrs;
use crate::client::{parse_url, ClientConfig, Endpoint, SioSession, TransportKind};
use crate::metrics::{ErrorCounts, LatencyHistogram, ProcProbe};
use crate::report::Report;
use crate::timeline::Timeline;

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Server URL; a path in it replaces --path (http://127.0.0.1:3000).
    /// Repeat it (or separate with commas) for a node list: sessions start
    /// on its nodes in turn, and every HTTP request of a polling session
    /// goes to the next node of the list (non-sticky).
    #[arg(
        long = "url",
        default_value = "http://127.0.0.1:3000",
        value_delimiter = ','
    )]
    pub urls: Vec<String>,

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

    /// No progress line on stderr (it is shown only on a terminal, and
    /// never with --json).
    #[arg(long)]
    pub quiet: bool,

    /// Draw latency percentiles and throughput per second of the run into
    /// this SVG file (the JSON then carries the samples in `timeline`).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,

    /// Compare with a saved --json report of an earlier run: prints (and
    /// adds to the JSON, in `baseline`) current / baseline for every figure
    /// and latency percentile they share.
    #[arg(long, value_name = "FILE.json")]
    pub baseline: Option<std::path::PathBuf>,
}

impl CommonArgs {
    /// Resolves the URLs into a client configuration.
    pub async fn client_config(&self) -> Result<ClientConfig, String> {
        let mut nodes = Vec::with_capacity(self.urls.len());
        let mut path = None;
        for url in &self.urls {
            let (authority, node_path) = parse_url(url, &self.path)?;
            let target = tokio::net::lookup_host(&authority)
                .await
                .map_err(|e| format!("cannot resolve {authority}: {e}"))?
                .next()
                .ok_or_else(|| format!("{authority} resolves to no address"))?;
            match &path {
                None => path = Some(node_path),
                Some(p) if *p != node_path => {
                    return Err(format!(
                        "every --url needs the same path ({p} and {node_path})"
                    ))
                }
                Some(_) => {}
            }
            nodes.push(Endpoint { target, authority });
        }
        let path = path.ok_or("no --url given")?;
        let target = nodes[0].target;
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
            nodes,
            path,
            transport: self.transport,
            namespace,
            auth: self.auth.clone(),
            sources: SourceAddrs::for_target(target, self.source_ips),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            ws_read_buffer: self.ws_read_buffer.max(256),
            started: Default::default(),
        })
    }

    /// Whether a progress line may be drawn.
    pub fn show_progress(&self) -> bool {
        !self.quiet && !self.json
    }

    /// Keeps the timeline in the report when a plot was asked for.
    pub fn keep_timeline(&self, report: &mut Report, timeline: Timeline) {
        let samples = timeline.finish();
        if self.plot.is_some() {
            report.timeline = Some(samples);
        }
    }

    pub fn report(&self, scenario: &'static str, params: serde_json::Value) -> Report {
        Report::new(
            scenario,
            &self.urls,
            self.transport,
            &self.namespace,
            params,
        )
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
        check_fd_budget(sessions * common.transport.fds_per_session(common.urls.len()))?;
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
        report.servers_total = crate::metrics::ProcTotal::of(&usage);
        report.servers = usage;
        for g in gone {
            report.note(g);
        }
        report.client = client.finish().0.into_iter().next();
        report.machine = client.machine();
        if let Some(m) = report.machine.as_mut() {
            let ours: f64 = report
                .servers
                .iter()
                .chain(report.client.iter())
                .filter(|u| u.window_s > 0.0)
                .map(|u| u.cpu_us as f64 / 1e6 / u.window_s)
                .sum();
            m.others_busy_cores = (m.busy_cores - m.irq_cores - ours).max(0.0);
        }
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
    /// With an upgrade: the upgrade's steps and the ack round trip that
    /// checks the session on its WebSocket.
    pub upgrade: Option<Arc<UpgradeHistograms>>,
    /// Per-second samples of the connect latency, from the first spawn.
    pub timeline: Option<Timeline>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<SessionEnd>,
    lost: Arc<AtomicU64>,
}

/// Latencies of polling sessions upgraded to WebSocket.
#[derive(Default)]
pub struct UpgradeHistograms {
    /// Upgrade request sent -> `101 Switching Protocols`.
    pub response: LatencyHistogram,
    /// Upgrade request sent -> `3probe`.
    pub probe: LatencyHistogram,
    /// Upgrade request sent -> polling paused and `5` sent.
    pub done: LatencyHistogram,
    /// An `echo` with an ack over the new WebSocket (the session works).
    pub check: LatencyHistogram,
}

/// Upgrades a connected polling session, then checks it with one `echo`
/// ack round trip over the WebSocket.
pub async fn upgrade_and_check(
    session: &mut SioSession,
    cfg: &ClientConfig,
    hist: &UpgradeHistograms,
) -> Result<(), crate::client::ClientError> {
    use crate::client::socketio::PacketType;
    use crate::client::{ClientError, ErrorKind};
    let times = session.upgrade(cfg).await?;
    hist.response.record(times.response);
    hist.probe.record(times.probe);
    hist.done.record(times.done);
    let id = session.next_ack_id();
    let started = Instant::now();
    session.emit("echo", "\"after-upgrade\"", Some(id)).await?;
    let wait = async {
        loop {
            let packet = session.recv().await?;
            if packet.kind == PacketType::Ack && packet.id == Some(id) {
                return Ok::<_, ClientError>(());
            }
        }
    };
    tokio::time::timeout(cfg.handshake_timeout, wait)
        .await
        .map_err(|_| ClientError::new(ErrorKind::ReplyTimeout, "no ack after the upgrade"))??;
    hist.check.record(started.elapsed());
    Ok(())
}

/// Opens `n` sessions at `rate` per second (upgrading each to WebSocket
/// when `upgrade`); each stays open, answering pings, until
/// [`Storm::release`]. Returns once every handshake ended.
pub async fn storm(run: &Run, n: u64, rate: f64, show_progress: bool, upgrade: bool) -> Storm {
    let open_latency = Arc::new(LatencyHistogram::new());
    let connect_latency = Arc::new(LatencyHistogram::new());
    let upgrade_hist = upgrade.then(|| Arc::new(UpgradeHistograms::default()));
    let timeline = {
        let h = connect_latency.clone();
        Timeline::start("connect", move || h.take_interval())
    };
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<bool>();
    let lost = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let shown = (connected.clone(), finished.clone(), lost.clone());
    let bar = progress(show_progress, move || {
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
        let upgrade_h = upgrade_hist.clone();
        let stop_rx = stop_rx.clone();
        let done = done_tx.clone();
        let lost = lost.clone();
        let (connected, finished) = (connected.clone(), finished.clone());
        async move {
            let mut result = SioSession::connect(&cfg).await;
            if let (Ok((session, _)), Some(hist)) = (result.as_mut(), upgrade_h.as_deref()) {
                if let Err(e) = upgrade_and_check(session, &cfg, hist).await {
                    result = Err(e);
                }
            }
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
        upgrade: upgrade_hist,
        timeline: Some(timeline),
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

/// A progress line on stderr (indicatif): a spinner, the elapsed time and
/// `line()`, refreshed four times a second.
pub struct Progress {
    bar: indicatif::ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

/// Shows `line()` on stderr while the returned guard lives, when `show`
/// (not `--quiet`, not `--json`) and stderr is a terminal.
pub fn progress<F>(show: bool, line: F) -> Option<Progress>
where
    F: Fn() -> String + Send + 'static,
{
    if !show || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    let style = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(250));
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            shown.set_message(line());
        }
    });
    Some(Progress { bar, task })
}

/// Stops a progress line and clears it.
pub fn end_progress(progress: Option<Progress>) {
    if let Some(p) = progress {
        p.task.abort();
        p.bar.finish_and_clear();
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
