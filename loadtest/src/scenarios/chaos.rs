//! `chaos`: the fanout scenario with nodes killed mid-stream. Receivers
//! (WebSocket) join a room through `--url` (a proxy in front of the
//! cluster, normally); a publisher on `--publisher-url` (a node that is not
//! killed) broadcasts numbered messages; `--kill-pid` processes are
//! SIGKILLed during the run. A receiver whose connection breaks reconnects
//! at once, through the same URLs, asking to recover (Socket.IO connection
//! state recovery: the `pid` of its CONNECT answer and the last offset it
//! received). It is recovered when the answer carries the same pid; else it
//! joins the room again (a fresh socket). Figures: delivered / expected,
//! loss, duplicates, out of order (all over every receiver), receivers
//! recovered or not, and the time from losing the connection to the
//! recovered CONNECT answer.
//!
//! Works against any server with connection state recovery (Ringway by
//! default, the reference socket.io with `connectionStateRecovery`); with
//! `--no-recover`, receivers reconnect without asking (the baseline of a
//! server without recovery).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::fanout::{
    delivery, delivery_figures, join, publish, FanoutArgs, PublisherStats, ReceiverStats, Shared,
    Tally,
};
use super::{end_progress, progress, spawn_paced, Run};
use crate::client::socketio::PacketType;
use crate::client::{ClientError, ErrorKind, SioSession};
use crate::metrics::LatencyHistogram;
use crate::report::Report;
use crate::timeline::Timeline;

#[derive(Debug, Clone, Args, Serialize)]
pub struct ChaosArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,

    /// The publisher's server (default: the first --url).
    #[arg(long)]
    pub publisher_url: Option<String>,

    /// A server process to SIGKILL during the run; repeat for several
    /// (killed one after the other).
    #[arg(long = "kill-pid")]
    pub kill_pids: Vec<u32>,

    /// Seconds into publishing of the first kill.
    #[arg(long, default_value_t = 5.0)]
    pub kill_after: f64,

    /// Seconds between kills.
    #[arg(long, default_value_t = 3.0)]
    pub kill_interval: f64,

    /// Most seconds a receiver keeps trying to reconnect.
    #[arg(long, default_value_t = 30.0)]
    pub reconnect_for: f64,

    /// Reconnect without asking to recover.
    #[arg(long)]
    pub no_recover: bool,
}

/// Counters of the reconnections.
#[derive(Default)]
struct Reconnects {
    disconnected: AtomicU64,
    /// Receivers reconnecting right now (the drain waits for them).
    in_progress: AtomicU64,
    recovered: AtomicU64,
    fresh: AtomicU64,
    gave_up: AtomicU64,
    latency: LatencyHistogram,
}

struct ReceiverEnd {
    joined: bool,
    stats: ReceiverStats,
}

pub async fn run(args: ChaosArgs) -> Result<Report, String> {
    let fan = &args.fanout;
    let run = Run::new(&fan.common, fan.receivers + 1).await?;
    let mut report = fan
        .common
        .report("chaos", serde_json::to_value(&args).unwrap_or_default());
    let (mut servers, mut client) = fan.common.probes()?;
    if fan.rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    let publisher_cfg = match &args.publisher_url {
        Some(url) => {
            let mut common = fan.common.clone();
            common.urls = vec![url.clone()];
            Arc::new(common.client_config().await?)
        }
        None => run.cfg.clone(),
    };

    let shared = Arc::new(Shared::new(run.errors.clone()));
    let reconnects = Arc::new(Reconnects::default());
    let room_json = serde_json::Value::from(fan.room.as_str()).to_string();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let join_timeout = run.cfg.handshake_timeout;
    let reconnect_for = Duration::from_secs_f64(args.reconnect_for);
    let recover = !args.no_recover;

    let mut tasks = spawn_paced(fan.receivers, fan.connect_rate, |_| {
        let cfg = run.cfg.clone();
        let shared = shared.clone();
        let reconnects = reconnects.clone();
        let stop = stop_rx.clone();
        let ready = ready_tx.clone();
        let room_json = room_json.clone();
        async move {
            let mut end = ReceiverEnd {
                joined: false,
                stats: ReceiverStats::default(),
            };
            let first = match SioSession::connect(&cfg).await {
                Ok((s, _)) => join(s, &room_json, join_timeout, &shared).await,
                Err(e) => Err(e),
            };
            let mut session = match first {
                Ok(s) => s,
                Err(e) => {
                    shared.errors.add(&e);
                    let _ = ready.send(false);
                    return end;
                }
            };
            end.joined = true;
            let _ = ready.send(true);
            drop(ready);
            loop {
                let lost = match receive(&mut session, stop.clone(), &shared, &mut end.stats).await
                {
                    Ok(()) => {
                        session.close().await;
                        return end;
                    }
                    Err(e) => e,
                };
                // The connection broke: back at once, asking to recover.
                reconnects.disconnected.fetch_add(1, Ordering::Relaxed);
                reconnects.in_progress.fetch_add(1, Ordering::Relaxed);
                let since = Instant::now();
                let pid = session.pid.clone().filter(|_| recover);
                let offset = session.last_offset.clone();
                let mut back = None;
                while since.elapsed() < reconnect_for && !*stop.borrow() {
                    let attempt = match &pid {
                        Some(pid) => SioSession::reconnect(&cfg, pid, offset.as_deref()).await,
                        None => SioSession::connect(&cfg).await,
                    };
                    match attempt {
                        Ok((s, _)) => {
                            back = Some(s);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                reconnects.in_progress.fetch_sub(1, Ordering::Relaxed);
                let Some(fresh) = back else {
                    reconnects.gave_up.fetch_add(1, Ordering::Relaxed);
                    shared.errors.add(&lost);
                    return end;
                };
                if pid.is_some() && fresh.pid == pid {
                    reconnects.latency.record(since.elapsed());
                    reconnects.recovered.fetch_add(1, Ordering::Relaxed);
                    session = fresh;
                    // As the official client: the last offset seen stays
                    // until a newer event comes.
                    if session.last_offset.is_none() {
                        session.last_offset = offset;
                    }
                } else {
                    // Not recovered: a new socket, which joins the room.
                    reconnects.fresh.fetch_add(1, Ordering::Relaxed);
                    match join(fresh, &room_json, join_timeout, &shared).await {
                        Ok(s) => session = s,
                        Err(e) => {
                            shared.errors.add(&e);
                            return end;
                        }
                    }
                }
            }
        }
    })
    .await;
    drop(ready_tx);
    let mut joined = 0u64;
    while let Some(ok) = ready_rx.recv().await {
        joined += ok as u64;
    }

    let mut publisher = match SioSession::connect_on(&publisher_cfg, 0).await {
        Ok((s, _)) => Some(s),
        Err(e) => {
            run.errors.add(&e);
            report.note(format!("publisher could not connect: {e}"));
            None
        }
    };
    let shown = (shared.clone(), reconnects.clone());
    let bar = progress(fan.common.show_progress(), move || {
        format!(
            "delivered {}, disconnected {}, recovered {}",
            shown.0.delivered.load(Ordering::Relaxed),
            shown.1.disconnected.load(Ordering::Relaxed),
            shown.1.recovered.load(Ordering::Relaxed)
        )
    });
    let timeline = {
        let s = shared.clone();
        Timeline::start("delivery", move || s.latency.take_interval())
    };
    // The kills, on their schedule from the start of publishing.
    // Kills that the kernel accepted (a wrong pid, or a kill scheduled
    // after the run, does not count).
    let killed = Arc::new(AtomicU64::new(0));
    let kills = {
        let pids = args.kill_pids.clone();
        let (after, every) = (args.kill_after, args.kill_interval);
        let killed = killed.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (i, pid) in pids.into_iter().enumerate() {
                let at = Duration::from_secs_f64(after + every * i as f64);
                tokio::time::sleep_until(start + at).await;
                // SAFETY: kill(2) with a pid and a signal number; no memory.
                if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                    killed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    servers.restart()?;
    client.restart()?;
    let publish_start_ns = shared.now_ns();
    let window = Instant::now();
    let mut pubstats = PublisherStats::default();
    if let Some(session) = publisher.as_mut() {
        if let Err(e) = publish(session, fan, &room_json, &shared, &mut pubstats).await {
            run.errors.add(&e);
            report.note(format!("publisher failed: {e}"));
        }
        let expected = pubstats.sent * joined;
        let drain_end = Instant::now() + Duration::from_secs_f64(fan.drain);
        while (shared.delivered.load(Ordering::Relaxed) < expected
            || pubstats.acked < pubstats.sent
            || reconnects.in_progress.load(Ordering::Relaxed) > 0)
            && Instant::now() < drain_end
        {
            let tick = tokio::time::sleep(Duration::from_millis(10));
            tokio::select! {
                _ = tick => {}
                packet = session.recv() => match packet {
                    Ok(p) => pubstats.on_packet(&p),
                    Err(e) => { run.errors.add(&e); break; }
                }
            }
        }
    }
    run.record_usage(&mut report, &servers, &client);
    let window_s = window.elapsed().as_secs_f64();
    end_progress(bar);
    let _ = stop_tx.send(true);
    if let Some(session) = publisher {
        session.close().await;
    }
    kills.abort();
    let mut tally = Tally::default();
    while let Some(end) = tasks.join_next().await {
        let Ok(end) = end else { continue };
        if !end.joined {
            continue;
        }
        tally.lossy_receivers += (end.stats.unique < pubstats.sent) as u64;
        let t = &mut tally.stats;
        t.delivered += end.stats.delivered;
        t.unique += end.stats.unique;
        t.duplicates += end.stats.duplicates;
        t.gaps += end.stats.gaps;
        t.reordered += end.stats.reordered;
    }
    tally.lost_receivers = reconnects.gave_up.load(Ordering::Relaxed);
    let expected = pubstats.sent * joined;
    let last_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    let delivery_s =
        (last_ns.saturating_sub(publish_start_ns) as f64 / 1e9).max(fan.duration.min(window_s));
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    report.figure("receivers", "receivers joined", joined as f64, "");
    report.figure("kills", "processes killed", count(&killed), "");
    if count(&killed) < args.kill_pids.len() as f64 {
        report.note(format!(
            "{} of {} kills done (a pid not running, or a kill after the run)",
            count(&killed),
            args.kill_pids.len()
        ));
    }
    report.figure(
        "broadcasts_sent",
        "broadcasts sent",
        pubstats.sent as f64,
        "",
    );
    report.figure(
        "delivered_pct",
        "delivered / expected",
        if expected > 0 {
            tally.stats.unique as f64 * 100.0 / expected as f64
        } else {
            0.0
        },
        "%",
    );
    delivery_figures(
        &mut report,
        &shared,
        &tally,
        pubstats.sent,
        joined,
        delivery_s,
    );
    report.figure(
        "disconnected",
        "connections lost",
        count(&reconnects.disconnected),
        "",
    );
    report.figure(
        "recovered",
        "reconnections recovered",
        count(&reconnects.recovered),
        "",
    );
    report.figure(
        "not_recovered",
        "reconnections with a fresh socket",
        count(&reconnects.fresh),
        "",
    );
    report.figure(
        "gave_up",
        "receivers that could not reconnect",
        count(&reconnects.gave_up),
        "",
    );
    report.latency("reconnect_to_recovered", reconnects.latency.summary());
    fan.common.keep_timeline(&mut report, timeline);
    run.finish_report(&mut report);
    Ok(report)
}

/// Receives until `stop` (Ok) or until the connection breaks (Err).
async fn receive(
    session: &mut SioSession,
    mut stop: watch::Receiver<bool>,
    shared: &Shared,
    stats: &mut ReceiverStats,
) -> Result<(), ClientError> {
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            packet = session.recv() => {
                let packet = packet?;
                if packet.kind != PacketType::Event {
                    continue;
                }
                match delivery(&packet) {
                    Ok(Some(msg)) => {
                        let now = shared.now_ns();
                        shared.latency.record(Duration::from_nanos(now.saturating_sub(msg.t)));
                        stats.record(msg.seq);
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                        shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(e) => shared.errors.add(&ClientError::new(ErrorKind::UnexpectedReply, e.to_string())),
                }
            }
        }
    }
}
