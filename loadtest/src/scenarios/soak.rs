//! `soak`: N sessions held for a long time under churn, with echo and room
//! fan-out mixed in, for leak hunting (`scripts/bench-soak.sh` samples the
//! servers meanwhile).
//!
//! Every session lives in a slot. The slots open at `--connect-rate` (the
//! ramp); then, `--churn` times a second, a held session picked at random
//! disconnects and its slot connects a new session at once, so about
//! `--sessions` stay held. A fraction of the slots (`--echo-fraction`)
//! emits `echo` every `--echo-every` seconds and waits for the `echo` back;
//! a fraction (`--room-fraction`) joins one of `--rooms` rooms, into which
//! a publisher session broadcasts `--publish-rate` messages a second, the
//! rooms in turn, each with its own sequence numbers. A session that drops
//! (the connection breaks, the server closes it, a ping does not come) is
//! counted by the kind of its error and its slot reconnects (a fresh
//! session, after a short pause). A receiver checks that, while it stays
//! connected, the sequence of its room has no hole (`missed`) and goes
//! forward only (`out_of_order`); when the publisher reconnects it starts
//! a new epoch and the receivers start counting again.
//!
//! Every `--report-every` seconds a JSON line of counters goes to stdout
//! (cumulative counts, latencies of the interval); the usual report (human,
//! or one JSON object with `--json`) comes at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::{check_fd_budget, end_progress, progress, spawn_paced, CommonArgs, Run};
use crate::client::socketio::{parse_arg, PacketType};
use crate::client::{ClientConfig, ClientError, ErrorKind, SioSession, TransportKind};
use crate::metrics::{ErrorCounts, LatencyHistogram};
use crate::report::Report;
use crate::timeline::Timeline;

#[derive(Debug, Clone, Args, Serialize)]
pub struct SoakArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: CommonArgs,

    /// Sessions held.
    #[arg(long, default_value_t = 5000)]
    pub sessions: u64,

    /// Held sessions closed per second, each replaced at once by a new
    /// session (0: no churn).
    #[arg(long, default_value_t = 100.0)]
    pub churn: f64,

    /// Seconds of churn once the ramp is over.
    #[arg(long, default_value_t = 1800.0)]
    pub duration: f64,

    /// Sessions started per second during the ramp (0: all at once).
    #[arg(long, default_value_t = 500.0)]
    pub connect_rate: f64,

    /// Fraction of the sessions on long-polling (the others on
    /// `--transport`).
    #[arg(long, default_value_t = 0.0)]
    pub polling_fraction: f64,

    /// Fraction of the sessions that echo.
    #[arg(long, default_value_t = 0.2)]
    pub echo_fraction: f64,

    /// Seconds between two echoes of one echoing session.
    #[arg(long, default_value_t = 5.0)]
    pub echo_every: f64,

    /// Size of the echoed string, bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// Fraction of the sessions in a room.
    #[arg(long, default_value_t = 0.2)]
    pub room_fraction: f64,

    /// Rooms (`soak-0`, `soak-1`, ...); room members are spread over them.
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,

    /// Broadcasts per second from the publisher session, into the rooms in
    /// turn (0: no publisher).
    #[arg(long, default_value_t = 10.0)]
    pub publish_rate: f64,

    /// Milliseconds to wait for an echo reply or a join ack.
    #[arg(long, default_value_t = 10_000)]
    pub reply_timeout_ms: u64,

    /// Seconds between two JSON lines of counters on stdout (0: none).
    #[arg(long, default_value_t = 10.0)]
    pub report_every: f64,

    /// Seed of the random choices (which sessions churn, echo phases).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// What a slot does, fixed for the run.
#[derive(Debug, Clone, Copy)]
struct Role {
    polling: bool,
    echo: bool,
    room: Option<u64>,
}

/// Whether slot `i` is one of the `fraction` picked evenly (a different
/// `phase` picks a different subset).
fn picked(i: u64, fraction: f64, phase: f64) -> bool {
    let f = fraction.clamp(0.0, 1.0);
    ((i + 1) as f64 * f + phase).floor() > (i as f64 * f + phase).floor()
}

/// splitmix64: small, seedable, good enough for picking slots.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A broadcast as a receiver gets it: `message` with this object.
#[derive(Deserialize)]
struct SoakMsg {
    seq: u64,
    t: u64,
    /// The publisher's epoch (one per publisher session).
    e: u64,
}

/// Counters of the run, shared by every task.
struct Shared {
    base: Instant,
    errors: Arc<ErrorCounts>,
    held: AtomicU64,
    /// Slots whose first connect attempt ended (the ramp is over when all
    /// did).
    ramped: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    churned: AtomicU64,
    reconnects: AtomicU64,
    drops: AtomicU64,
    drops_by_kind: Mutex<BTreeMap<&'static str, u64>>,
    echoes: AtomicU64,
    echo_timeouts: AtomicU64,
    /// Echo replies that came after their timeout.
    late_echoes: AtomicU64,
    joins: AtomicU64,
    deliveries: AtomicU64,
    missed: AtomicU64,
    out_of_order: AtomicU64,
    broadcasts_sent: AtomicU64,
    broadcasts_acked: AtomicU64,
    publisher_sessions: AtomicU64,
    connect_latency: LatencyHistogram,
    echo_rtt: LatencyHistogram,
    delivery: LatencyHistogram,
    /// The same echo round trips, for `--plot` (its own interval).
    echo_plot: LatencyHistogram,
}

impl Shared {
    fn new(errors: Arc<ErrorCounts>) -> Shared {
        Shared {
            base: Instant::now(),
            errors,
            held: AtomicU64::new(0),
            ramped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            churned: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            drops_by_kind: Mutex::new(BTreeMap::new()),
            echoes: AtomicU64::new(0),
            echo_timeouts: AtomicU64::new(0),
            late_echoes: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            broadcasts_sent: AtomicU64::new(0),
            broadcasts_acked: AtomicU64::new(0),
            publisher_sessions: AtomicU64::new(0),
            connect_latency: LatencyHistogram::new(),
            echo_rtt: LatencyHistogram::new(),
            delivery: LatencyHistogram::new(),
            echo_plot: LatencyHistogram::new(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// A held session ended by an error: counted by kind (and as an error).
    fn dropped(&self, err: &ClientError) {
        self.errors.add(err);
        self.drops.fetch_add(1, Ordering::Relaxed);
        let mut map = self.drops_by_kind.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(err.kind.as_str()).or_insert(0) += 1;
    }

    fn drops_by_kind(&self) -> BTreeMap<&'static str, u64> {
        self.drops_by_kind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One JSON line of counters (cumulative) and of the latencies since
    /// the previous line.
    fn line(&self, sample: u64, phase: &str, target: u64) -> serde_json::Value {
        let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let errors: BTreeMap<String, u64> = self
            .errors
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k, v.count))
            .collect();
        let (echo, delivery, connect) = (
            self.echo_rtt.take_interval(),
            self.delivery.take_interval(),
            self.connect_latency.take_interval(),
        );
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let (rss_kb, fds) = own_usage();
        serde_json::json!({
            "soak_sample": sample,
            "t": (self.base.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            "unix": (unix * 1000.0).round() / 1000.0,
            "phase": phase,
            "target": target,
            "held": count(&self.held),
            "connects": count(&self.connects),
            "connect_failures": count(&self.connect_failures),
            "churned": count(&self.churned),
            "drops": count(&self.drops),
            "drops_by_kind": self.drops_by_kind(),
            "reconnects": count(&self.reconnects),
            "joins": count(&self.joins),
            "echoes": count(&self.echoes),
            "echo_timeouts": count(&self.echo_timeouts),
            "late_echoes": count(&self.late_echoes),
            "broadcasts_sent": count(&self.broadcasts_sent),
            "broadcasts_acked": count(&self.broadcasts_acked),
            "publisher_sessions": count(&self.publisher_sessions),
            "deliveries": count(&self.deliveries),
            "missed": count(&self.missed),
            "out_of_order": count(&self.out_of_order),
            "error_total": self.errors.total(),
            "errors": errors,
            "interval": {
                "connects": connect.count,
                "connect_p99_us": connect.p99_us,
                "echoes": echo.count,
                "echo_p50_us": echo.p50_us,
                "echo_p99_us": echo.p99_us,
                "echo_max_us": echo.max_us,
                "deliveries": delivery.count,
                "delivery_p50_us": delivery.p50_us,
                "delivery_p99_us": delivery.p99_us,
                "delivery_max_us": delivery.max_us,
            },
            "client_rss_kb": rss_kb,
            "client_fds": fds,
        })
    }
}

/// This process's RSS (KiB) and open descriptors.
fn own_usage() -> (u64, u64) {
    let rss = crate::metrics::sample_proc(std::process::id()).map_or(0, |s| s.rss_kb);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (rss, fds)
}

/// What a slot needs besides its role.
struct Ctx {
    shared: Arc<Shared>,
    ws_cfg: Arc<ClientConfig>,
    polling_cfg: Arc<ClientConfig>,
    /// Per slot: whether its session is held now (the churn picks those).
    held: Vec<AtomicBool>,
    /// Per slot: the churn's signal to close the session.
    kicks: Vec<Notify>,
    stop: watch::Receiver<bool>,
    /// The `echo` packet's argument and the `echo` event expected back.
    payload: String,
    expected_echo: String,
    echo_every: Duration,
    reply_timeout: Duration,
    seed: u64,
}

/// How a held session ended.
enum End {
    Stop(SioSession),
    Churn(SioSession),
    Dropped(ClientError),
}

/// Why a slot connects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    First,
    Churn,
    Reconnect,
}

fn room_json(room: u64) -> String {
    serde_json::Value::from(format!("soak-{room}")).to_string()
}

/// Connects (and joins the slot's room), within the handshake and reply
/// limits.
async fn open(ctx: &Ctx, cfg: &Arc<ClientConfig>, role: Role) -> Result<SioSession, ClientError> {
    let (mut session, times) = SioSession::connect(cfg).await?;
    ctx.shared.connect_latency.record(times.connect);
    if let Some(room) = role.room {
        let id = session.next_ack_id();
        session.emit("join", &room_json(room), Some(id)).await?;
        let wait = async {
            loop {
                let packet = session.recv().await?;
                if packet.kind == PacketType::Ack && packet.id == Some(id) {
                    return Ok::<_, ClientError>(());
                }
            }
        };
        match tokio::time::timeout(ctx.reply_timeout, wait).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                session.close().await;
                return Err(ClientError::new(ErrorKind::ReplyTimeout, "no join ack"));
            }
        }
        ctx.shared.joins.fetch_add(1, Ordering::Relaxed);
    }
    Ok(session)
}

/// One slot: connects, holds, and connects again after a churn or a drop,
/// until the stop.
async fn slot(ctx: Arc<Ctx>, i: u64, role: Role) {
    let shared = &ctx.shared;
    let cfg = if role.polling {
        ctx.polling_cfg.clone()
    } else {
        ctx.ws_cfg.clone()
    };
    let mut rng = Rng(ctx.seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut stop = ctx.stop.clone();
    let mut cause = Cause::First;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            break;
        }
        let session = match open(&ctx, &cfg, role).await {
            Ok(s) => s,
            Err(e) => {
                shared.errors.add(&e);
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                // The slot's first try ended; it retries as a reconnect.
                if cause == Cause::First {
                    shared.ramped.fetch_add(1, Ordering::Relaxed);
                    cause = Cause::Reconnect;
                }
                let pause = backoff.mul_f64(0.5 + rng.unit());
                backoff = (backoff * 2).min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = stop.changed() => break,
                }
            }
        };
        backoff = Duration::from_millis(100);
        shared.connects.fetch_add(1, Ordering::Relaxed);
        if cause == Cause::Reconnect {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        shared.held.fetch_add(1, Ordering::Relaxed);
        ctx.held[i as usize].store(true, Ordering::Relaxed);
        if cause == Cause::First {
            shared.ramped.fetch_add(1, Ordering::Relaxed);
        }
        let end = hold(&ctx, i, role, session, &mut rng).await;
        ctx.held[i as usize].store(false, Ordering::Relaxed);
        shared.held.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Stop(session) => {
                session.close().await;
                break;
            }
            End::Churn(session) => {
                session.close().await;
                shared.churned.fetch_add(1, Ordering::Relaxed);
                cause = Cause::Churn;
            }
            End::Dropped(e) => {
                shared.dropped(&e);
                cause = Cause::Reconnect;
                // A short, random pause: the slots of a killed node do not
                // all come back in the same millisecond.
                let pause = Duration::from_millis(50 + rng.next() % 200);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
}

/// Holds a session: answers pings, echoes on schedule, checks deliveries;
/// until the stop, the churn picks it, or it drops.
async fn hold(ctx: &Ctx, i: u64, role: Role, mut session: SioSession, rng: &mut Rng) -> End {
    let shared = &ctx.shared;
    let mut stop = ctx.stop.clone();
    let kick = &ctx.kicks[i as usize];
    let echo_packet = session.encode_event("echo", &ctx.payload, None);
    // The first echo at a random point of the period: echoes spread out.
    let mut next_echo = tokio::time::Instant::now() + ctx.echo_every.mul_f64(rng.unit());
    let mut in_flight: Option<Instant> = None;
    // The last (epoch, seq) received while connected.
    let mut last: Option<(u64, u64)> = None;
    loop {
        if *stop.borrow() {
            return End::Stop(session);
        }
        let reply_deadline = in_flight.map(|at| tokio::time::Instant::from(at + ctx.reply_timeout));
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() {
                    return End::Stop(session);
                }
            }
            _ = kick.notified() => return End::Churn(session),
            _ = tokio::time::sleep_until(next_echo), if role.echo && in_flight.is_none() => {
                if let Err(e) = session.send_encoded(&echo_packet).await {
                    return End::Dropped(e);
                }
                in_flight = Some(Instant::now());
            }
            _ = tokio::time::sleep_until(reply_deadline.unwrap_or_else(tokio::time::Instant::now)), if reply_deadline.is_some() => {
                shared.echo_timeouts.fetch_add(1, Ordering::Relaxed);
                shared.errors.add(&ClientError::new(
                    ErrorKind::ReplyTimeout,
                    format!("no echo reply within {} ms", ctx.reply_timeout.as_millis()),
                ));
                in_flight = None;
                next_echo = tokio::time::Instant::now() + ctx.echo_every;
            }
            packet = session.recv() => {
                let packet = match packet {
                    Ok(p) => p,
                    Err(e) => return End::Dropped(e),
                };
                if packet.kind != PacketType::Event {
                    continue;
                }
                if packet.data() == ctx.expected_echo {
                    if let Some(sent) = in_flight.take() {
                        let rtt = sent.elapsed();
                        shared.echo_rtt.record(rtt);
                        shared.echo_plot.record(rtt);
                        shared.echoes.fetch_add(1, Ordering::Relaxed);
                        next_echo = tokio::time::Instant::from(sent + ctx.echo_every);
                    } else {
                        // The reply to an echo that timed out.
                        shared.late_echoes.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                match delivery(&packet) {
                    Ok(Some(msg)) => on_delivery(shared, &msg, &mut last),
                    Ok(None) => {}
                    Err(e) => shared.errors.add(&e),
                }
            }
        }
    }
}

/// Counts one delivery against the receiver's last one.
fn on_delivery(shared: &Shared, msg: &SoakMsg, last: &mut Option<(u64, u64)>) {
    let now = shared.now_ns();
    shared
        .delivery
        .record(Duration::from_nanos(now.saturating_sub(msg.t)));
    shared.deliveries.fetch_add(1, Ordering::Relaxed);
    match *last {
        Some((epoch, seq)) if epoch == msg.e => {
            if msg.seq > seq + 1 {
                shared
                    .missed
                    .fetch_add(msg.seq - seq - 1, Ordering::Relaxed);
            } else if msg.seq <= seq {
                shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // A broadcast of an earlier publisher session, after one of the
        // current: late.
        Some((epoch, _)) if msg.e < epoch => {
            shared.out_of_order.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The first delivery, or a new publisher session: counting
        // starts again.
        _ => {}
    }
    *last = Some((msg.e, msg.seq));
}

/// The broadcast of a `message` event (None for other events).
fn delivery(packet: &crate::client::SioPacket) -> Result<Option<SoakMsg>, ClientError> {
    let (name, args) = packet.event()?;
    if name != "message" {
        return Ok(None);
    }
    let first = args
        .first()
        .ok_or_else(|| ClientError::new(ErrorKind::UnexpectedReply, "message without argument"))?;
    parse_arg::<SoakMsg>(first)
        .map(Some)
        .map_err(|e| ClientError::new(ErrorKind::UnexpectedReply, e.detail))
}

/// The publisher: one session broadcasting into the rooms in turn, each
/// room with its own sequence; reconnects (a new epoch) when it drops.
async fn publisher(
    shared: Arc<Shared>,
    cfg: Arc<ClientConfig>,
    rate: f64,
    rooms: u64,
    mut stop: watch::Receiver<bool>,
) {
    let rooms_json: Vec<String> = (0..rooms).map(room_json).collect();
    let mut seqs = vec![0u64; rooms as usize];
    let mut sent = 0u64;
    let start = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut epoch = 0u64;
    'sessions: loop {
        if *stop.borrow() {
            return;
        }
        let mut session = match SioSession::connect(&cfg).await {
            Ok((s, _)) => s,
            Err(e) => {
                shared.errors.add(&e);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        epoch += 1;
        shared.publisher_sessions.fetch_add(1, Ordering::Relaxed);
        loop {
            if *stop.borrow() {
                session.close().await;
                return;
            }
            // On schedule from the start; after a gap (a reconnect), no
            // burst to catch up.
            let mut due = start + Duration::from_secs_f64(sent as f64 / rate);
            let now = tokio::time::Instant::now();
            if due + Duration::from_secs(1) < now {
                sent = ((now - start).as_secs_f64() * rate) as u64;
                due = now;
            }
            tokio::select! {
                biased;
                _ = stop.changed() => {}
                _ = tokio::time::sleep_until(due) => {
                    let room = (sent % rooms) as usize;
                    let arg = format!(
                        "{{\"room\":{},\"msg\":{{\"seq\":{},\"t\":{},\"e\":{epoch}}}}}",
                        rooms_json[room],
                        seqs[room],
                        shared.now_ns()
                    );
                    let id = session.next_ack_id();
                    if let Err(e) = session.emit("broadcast", &arg, Some(id)).await {
                        shared.dropped(&e);
                        continue 'sessions;
                    }
                    seqs[room] += 1;
                    sent += 1;
                    shared.broadcasts_sent.fetch_add(1, Ordering::Relaxed);
                }
                packet = session.recv() => match packet {
                    Ok(p) if p.kind == PacketType::Ack => {
                        shared.broadcasts_acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        shared.dropped(&e);
                        continue 'sessions;
                    }
                }
            }
        }
    }
}

pub async fn run(args: SoakArgs) -> Result<Report, String> {
    if args.sessions == 0 {
        return Err("--sessions must be positive".into());
    }
    for (name, f) in [
        ("--polling-fraction", args.polling_fraction),
        ("--echo-fraction", args.echo_fraction),
        ("--room-fraction", args.room_fraction),
    ] {
        if !(0.0..=1.0).contains(&f) {
            return Err(format!("{name} must be between 0 and 1"));
        }
    }
    if args.echo_every <= 0.0 || args.churn < 0.0 || args.publish_rate < 0.0 {
        return Err("--echo-every must be positive, --churn and --publish-rate 0 or more".into());
    }
    if args.rooms == 0 {
        return Err("--rooms must be positive".into());
    }
    let common = &args.common;
    let roles: Vec<Role> = {
        let mut in_rooms = 0u64;
        (0..args.sessions)
            .map(|i| Role {
                polling: common.transport == TransportKind::Polling
                    || picked(i, args.polling_fraction, 0.25),
                echo: picked(i, args.echo_fraction, 0.0),
                room: picked(i, args.room_fraction, 0.5).then(|| {
                    in_rooms += 1;
                    (in_rooms - 1) % args.rooms
                }),
            })
            .collect()
    };
    let polling = roles.iter().filter(|r| r.polling).count() as u64;
    let nodes = common.urls.len();
    let fds = (args.sessions - polling) * TransportKind::Websocket.fds_per_session(nodes)
        + polling * TransportKind::Polling.fds_per_session(nodes)
        + 1;
    check_fd_budget(fds)?;
    let ws_cfg = Arc::new(common.client_config().await?);
    let polling_cfg = {
        let mut c = common.clone();
        c.transport = TransportKind::Polling;
        Arc::new(c.client_config().await?)
    };
    let run = Run {
        cfg: ws_cfg.clone(),
        errors: Arc::new(ErrorCounts::default()),
        started: Instant::now(),
    };
    let mut report = common.report("soak", serde_json::to_value(&args).unwrap_or_default());
    let (servers, client) = common.probes()?;

    let shared = Arc::new(Shared::new(run.errors.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let payload = serde_json::Value::from("x".repeat(args.size)).to_string();
    let ctx = Arc::new(Ctx {
        shared: shared.clone(),
        ws_cfg: ws_cfg.clone(),
        polling_cfg,
        held: (0..args.sessions).map(|_| AtomicBool::new(false)).collect(),
        kicks: (0..args.sessions).map(|_| Notify::new()).collect(),
        stop: stop_rx.clone(),
        expected_echo: format!("[\"echo\",{payload}]"),
        payload,
        echo_every: Duration::from_secs_f64(args.echo_every),
        reply_timeout: Duration::from_millis(args.reply_timeout_ms),
        seed: args.seed,
    });
    let timeline = {
        let s = shared.clone();
        Timeline::start("echo_rtt", move || s.echo_plot.take_interval())
    };

    // The counter lines, from the start.
    let phase = Arc::new(Mutex::new("ramp"));
    let reporter = (args.report_every > 0.0).then(|| {
        let (shared, phase) = (shared.clone(), phase.clone());
        let every = Duration::from_secs_f64(args.report_every);
        let target = args.sessions;
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut n = 0u64;
            loop {
                n += 1;
                tokio::time::sleep_until(start + every * n as u32).await;
                let p = *phase.lock().unwrap_or_else(|e| e.into_inner());
                println!("{}", shared.line(n, p, target));
            }
        })
    });
    let shown = shared.clone();
    let target = args.sessions;
    let bar = progress(common.show_progress(), move || {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "held {}/{target}, connects {}, churned {}, drops {}, echoes {}, deliveries {}, errors {}",
            c(&shown.held),
            c(&shown.connects),
            c(&shown.churned),
            c(&shown.drops),
            c(&shown.echoes),
            c(&shown.deliveries),
            shown.errors.total()
        )
    });

    let publisher =
        (args.publish_rate > 0.0 && roles.iter().any(|r| r.room.is_some())).then(|| {
            tokio::spawn(publisher(
                shared.clone(),
                ws_cfg.clone(),
                args.publish_rate,
                args.rooms,
                stop_rx.clone(),
            ))
        });

    // The ramp.
    let mut tasks: JoinSet<()> = spawn_paced(args.sessions, args.connect_rate, |i| {
        slot(ctx.clone(), i, roles[i as usize])
    })
    .await;
    while shared.ramped.load(Ordering::Relaxed) < args.sessions {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp_s = shared.base.elapsed().as_secs_f64();
    let held_after_ramp = shared.held.load(Ordering::Relaxed);
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = "churn";

    // The churn, for the duration.
    let churn_start = tokio::time::Instant::now();
    let churn_end = churn_start + Duration::from_secs_f64(args.duration);
    let mut rng = Rng(args.seed);
    let mut kicked = 0u64;
    let mut missed_picks = 0u64;
    if args.churn > 0.0 {
        loop {
            let due = churn_start + Duration::from_secs_f64((kicked + 1) as f64 / args.churn);
            if due >= churn_end {
                break;
            }
            tokio::time::sleep_until(due).await;
            // A held session at random (a few tries: some are between
            // sessions).
            let picked = (0..20)
                .map(|_| (rng.next() % args.sessions) as usize)
                .find(|&i| ctx.held[i].load(Ordering::Relaxed));
            match picked {
                Some(i) => ctx.kicks[i].notify_one(),
                None => missed_picks += 1,
            }
            kicked += 1;
        }
    }
    tokio::time::sleep_until(churn_end).await;
    let held_at_end = shared.held.load(Ordering::Relaxed);
    run.record_usage(&mut report, &servers, &client);
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = "stop";
    end_progress(bar);

    // The stop: every session closes.
    let _ = stop_tx.send(true);
    if let Some(p) = publisher {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    if tokio::time::timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        report.note(format!(
            "{} sessions still closing after 15 s; aborted",
            tasks.len()
        ));
        tasks.abort_all();
    }
    if let Some(r) = reporter {
        r.abort();
        println!("{}", shared.line(0, "end", args.sessions));
    }

    let count = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    report.figure("sessions", "sessions to hold", args.sessions as f64, "");
    report.figure(
        "polling_sessions",
        "of which on long-polling",
        polling as f64,
        "",
    );
    report.figure("ramp_s", "ramp (every slot tried once)", ramp_s, "s");
    report.figure(
        "held_after_ramp",
        "held after the ramp",
        held_after_ramp as f64,
        "",
    );
    report.figure("held_at_end", "held at the end", held_at_end as f64, "");
    report.figure(
        "connects",
        "sessions connected",
        count(&shared.connects),
        "",
    );
    report.figure(
        "connect_failures",
        "connect attempts failed",
        count(&shared.connect_failures),
        "",
    );
    report.figure("churned", "sessions churned", count(&shared.churned), "");
    report.figure(
        "churn_missed",
        "churn ticks with no held session found",
        missed_picks as f64,
        "",
    );
    report.figure("drops", "sessions dropped", count(&shared.drops), "");
    for (kind, n) in shared.drops_by_kind() {
        report.figure(
            &format!("drops_{kind}"),
            &format!("  dropped: {kind}"),
            n as f64,
            "",
        );
    }
    report.figure(
        "reconnects",
        "reconnected after a drop",
        count(&shared.reconnects),
        "",
    );
    report.figure("joins", "room joins", count(&shared.joins), "");
    report.figure("echoes", "echo round trips", count(&shared.echoes), "");
    report.figure(
        "echo_timeouts",
        "echoes without a reply",
        count(&shared.echo_timeouts),
        "",
    );
    report.figure(
        "late_echoes",
        "echo replies after their timeout",
        count(&shared.late_echoes),
        "",
    );
    report.figure(
        "broadcasts_sent",
        "broadcasts sent",
        count(&shared.broadcasts_sent),
        "",
    );
    report.figure(
        "broadcasts_acked",
        "broadcasts acked",
        count(&shared.broadcasts_acked),
        "",
    );
    report.figure(
        "publisher_sessions",
        "publisher sessions (epochs)",
        count(&shared.publisher_sessions),
        "",
    );
    report.figure(
        "deliveries",
        "deliveries received",
        count(&shared.deliveries),
        "",
    );
    report.figure(
        "missed",
        "deliveries missed while connected",
        count(&shared.missed),
        "",
    );
    report.figure(
        "out_of_order",
        "deliveries out of order or repeated",
        count(&shared.out_of_order),
        "",
    );
    report.latency("connect", shared.connect_latency.summary());
    report.latency("echo_rtt", shared.echo_rtt.summary());
    report.latency("delivery", shared.delivery.summary());
    common.keep_timeline(&mut report, timeline);
    run.finish_report(&mut report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_fraction_evenly() {
        for (f, phase) in [(0.0, 0.0), (0.2, 0.0), (0.2, 0.5), (0.5, 0.25), (1.0, 0.0)] {
            let n = (0..1000).filter(|&i| picked(i, f, phase)).count();
            assert_eq!(n, (1000.0 * f) as usize, "{f} {phase}");
            // Evenly: every window of 10 has its share.
            let w = (0..10).filter(|&i| picked(i, f, phase)).count();
            assert_eq!(w, (10.0 * f) as usize, "{f} {phase}");
        }
    }

    fn shared() -> Shared {
        Shared::new(Arc::new(ErrorCounts::default()))
    }

    fn msg(e: u64, seq: u64) -> SoakMsg {
        SoakMsg { seq, t: 0, e }
    }

    #[test]
    fn deliveries_holes_and_epochs() {
        let s = shared();
        let mut last = None;
        // Counting starts at the first one seen.
        for (e, seq) in [
            (1, 5),
            (1, 6),
            (1, 8),
            (1, 8),
            (2, 0),
            (2, 1),
            (1, 9),
            (2, 2),
        ] {
            on_delivery(&s, &msg(e, seq), &mut last);
        }
        assert_eq!(s.deliveries.load(Ordering::Relaxed), 8);
        assert_eq!(s.missed.load(Ordering::Relaxed), 1);
        // The repeated 8 and the late epoch-1 message.
        assert_eq!(s.out_of_order.load(Ordering::Relaxed), 2);
        assert_eq!(last, Some((2, 2)));
    }
}
