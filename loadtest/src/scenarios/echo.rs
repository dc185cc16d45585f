//! `echo`: S sessions in closed loop, each emitting `echo` with a string of
//! the given size and waiting for the server's `echo` event back (or, with
//! `--ack`, for the ack) before the next one. After a warm-up, a measured
//! window gives round trips per second, their latency, and the servers' CPU
//! time per round trip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::{end_progress, per_second, progress, spawn_paced, CommonArgs, Run};
use crate::client::socketio::PacketType;
use crate::client::{ClientError, ErrorKind, SioSession};
use crate::metrics::{ErrorCounts, LatencyHistogram};
use crate::report::Report;
use crate::timeline::Timeline;

#[derive(Debug, Clone, Args, Serialize)]
pub struct EchoArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: CommonArgs,

    /// Sessions, each with one message in flight.
    #[arg(long, default_value_t = 50)]
    pub sessions: u64,

    /// Size of the echoed string, bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// Measured seconds.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,

    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Sessions started per second (0: all at once).
    #[arg(long, default_value_t = 500.0)]
    pub connect_rate: f64,

    /// Ask for an ack and time it (instead of the `echo` event back).
    #[arg(long)]
    pub ack: bool,

    /// Milliseconds to wait for one reply before the session gives up.
    #[arg(long, default_value_t = 10_000)]
    pub reply_timeout_ms: u64,

    /// Milliseconds each session waits after a reply before its next emit
    /// (0: none, a saturating closed loop). A pause keeps the machine out
    /// of saturation, so the round trip shows the path, not the queueing.
    #[arg(long, default_value_t = 0.0)]
    pub pause_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Stop,
}

struct Shared {
    latency: LatencyHistogram,
    /// Round trips sent and answered inside the measured window.
    measured: AtomicU64,
    /// All round trips, warm-up included.
    total: AtomicU64,
    errors: Arc<ErrorCounts>,
}

pub async fn run(args: EchoArgs) -> Result<Report, String> {
    run_as(args, "echo").await
}

/// The echo loop, reported under the name `scenario`.
pub async fn run_as(args: EchoArgs, scenario: &'static str) -> Result<Report, String> {
    let run = Run::new(&args.common, args.sessions).await?;
    let mut report = args
        .common
        .report(scenario, serde_json::to_value(&args).unwrap_or_default());
    let (mut servers, mut client) = args.common.probes()?;

    let shared = Arc::new(Shared {
        latency: LatencyHistogram::new(),
        measured: AtomicU64::new(0),
        total: AtomicU64::new(0),
        errors: run.errors.clone(),
    });
    let timeline = {
        let s = shared.clone();
        let name = if args.ack { "ack_rtt" } else { "echo_rtt" };
        Timeline::start(name, move || s.latency.take_interval())
    };
    let payload = serde_json::Value::from("x".repeat(args.size)).to_string();
    let (phase_tx, phase_rx) = watch::channel(None::<Phase>);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let reply_timeout = Duration::from_millis(args.reply_timeout_ms);
    let pause = Duration::from_secs_f64(args.pause_ms.max(0.0) / 1e3);

    let mut tasks = spawn_paced(args.sessions, args.connect_rate, |_| {
        let cfg = run.cfg.clone();
        let shared = shared.clone();
        let phase = phase_rx.clone();
        let ready = ready_tx.clone();
        let payload = payload.clone();
        let ack = args.ack;
        async move {
            let session = match SioSession::connect(&cfg).await {
                Ok((s, _)) => {
                    let _ = ready.send(true);
                    s
                }
                Err(e) => {
                    shared.errors.add(&e);
                    let _ = ready.send(false);
                    return;
                }
            };
            drop(ready);
            match echo_loop(session, &payload, ack, reply_timeout, pause, phase, &shared).await {
                Ok(session) => session.close().await,
                Err(e) => shared.errors.add(&e),
            }
        }
    })
    .await;
    drop(ready_tx);
    let mut connected = 0u64;
    while let Some(ok) = ready_rx.recv().await {
        connected += ok as u64;
    }

    let shown = shared.clone();
    let bar = progress(args.common.show_progress(), move || {
        format!("round trips {}", shown.total.load(Ordering::Relaxed))
    });
    let _ = phase_tx.send(Some(Phase::Warmup));
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    servers.restart()?;
    client.restart()?;
    let window = Instant::now();
    let _ = phase_tx.send(Some(Phase::Measure));
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let _ = phase_tx.send(Some(Phase::Stop));
    let window_s = window.elapsed().as_secs_f64();
    run.record_usage(&mut report, &servers, &client);
    end_progress(bar);
    let grace = reply_timeout + Duration::from_secs(2);
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        report.note(format!(
            "{} sessions still busy after the stop; aborted",
            tasks.len()
        ));
        tasks.abort_all();
    }

    let measured = shared.measured.load(Ordering::Relaxed);
    report.figure("sessions", "sessions connected", connected as f64, "");
    report.figure(
        "failed",
        "handshakes failed",
        (args.sessions - connected) as f64,
        "",
    );
    report.figure("round_trips", "round trips measured", measured as f64, "");
    report.figure("window_s", "measured window", window_s, "s");
    report.figure(
        "round_trips_per_s",
        "throughput (round trips)",
        per_second(measured, window_s),
        "/s",
    );
    report.cpu_per(
        "server_cpu_us_per_message",
        "server CPU per echo (1 in + 1 out)",
        measured,
    );
    report.latency(
        if args.ack { "ack_rtt" } else { "echo_rtt" },
        shared.latency.summary(),
    );
    args.common.keep_timeline(&mut report, timeline);
    run.finish_report(&mut report);
    Ok(report)
}

/// The closed loop of one session, until the phase is `Stop`.
async fn echo_loop(
    mut session: SioSession,
    payload: &str,
    ack: bool,
    reply_timeout: Duration,
    pause: Duration,
    mut phase: watch::Receiver<Option<Phase>>,
    shared: &Shared,
) -> Result<SioSession, ClientError> {
    if phase.wait_for(|p| p.is_some()).await.is_err() {
        return Ok(session);
    }
    // The packet and the reply expected in event mode never change.
    let event_packet = session.encode_event("echo", payload, None);
    let expected = format!("[\"echo\",{payload}]");
    loop {
        let sent_in = *phase.borrow();
        if sent_in == Some(Phase::Stop) {
            return Ok(session);
        }
        let id = if ack {
            Some(session.next_ack_id())
        } else {
            None
        };
        let started = Instant::now();
        match id {
            Some(id) => session.emit("echo", payload, Some(id)).await?,
            None => session.send_encoded(&event_packet).await?,
        }
        tokio::time::timeout(
            reply_timeout,
            wait_reply(&mut session, id, &expected, &shared.errors),
        )
        .await
        .map_err(|_| {
            ClientError::new(
                ErrorKind::ReplyTimeout,
                format!("no echo reply within {} ms", reply_timeout.as_millis()),
            )
        })??;
        let rtt = started.elapsed();
        shared.total.fetch_add(1, Ordering::Relaxed);
        if sent_in == Some(Phase::Measure) && *phase.borrow() == Some(Phase::Measure) {
            shared.latency.record(rtt);
            shared.measured.fetch_add(1, Ordering::Relaxed);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Reads until the reply: the ack `id`, or else an `echo` event (one whose
/// data differ from `expected` counts as an unexpected reply).
async fn wait_reply(
    session: &mut SioSession,
    id: Option<u64>,
    expected: &str,
    errors: &ErrorCounts,
) -> Result<(), ClientError> {
    loop {
        let packet = session.recv().await?;
        match (id, packet.kind) {
            (Some(id), PacketType::Ack) if packet.id == Some(id) => return Ok(()),
            (None, PacketType::Event) if packet.data() == expected => return Ok(()),
            (None, PacketType::Event) if packet.event_name().as_deref() == Some("echo") => {
                errors.add(&ClientError::new(
                    ErrorKind::UnexpectedReply,
                    format!(
                        "echo data differ: {}",
                        crate::client::engineio::clip(packet.data())
                    ),
                ));
                return Ok(());
            }
            _ => {}
        }
    }
}
