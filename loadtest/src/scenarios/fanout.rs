//! `fanout`: R receiver sessions join a room (each waits for its join ack),
//! then one publisher session emits `broadcast`
//! `{"room":..,"msg":{"seq":n,"t":send_time_ns}}` at a given rate for T
//! seconds. Receivers time each delivery (now - t, both on this process's
//! monotonic clock) and track their sequence numbers: delivered / expected,
//! loss, duplicates, gaps, and the servers' CPU time per delivery.
//!
//! With a node list (`--url` repeated), receivers start on its nodes in
//! turn (round robin) and the publisher is on the first node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{end_progress, per_second, progress, spawn_paced, CommonArgs, Run};
use crate::client::socketio::{parse_arg, PacketType};
use crate::client::{ClientError, ErrorKind, SioSession};
use crate::metrics::{ErrorCounts, LatencyHistogram};
use crate::report::Report;
use crate::timeline::Timeline;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Args, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: CommonArgs,

    /// Receiver sessions in the room.
    #[arg(long, default_value_t = 1000)]
    pub receivers: u64,

    /// Broadcasts per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,

    /// Seconds of publishing.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,

    /// Receiver sessions started per second (0: all at once).
    #[arg(long, default_value_t = 500.0)]
    pub connect_rate: f64,

    /// Room name.
    #[arg(long, default_value = "bench")]
    pub room: String,

    /// Extra bytes of padding in every message (a `pad` string).
    #[arg(long, default_value_t = 0)]
    pub size: usize,

    /// Most seconds to wait after publishing for the last deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
}

/// What a receiver gets: `message` with this object.
#[derive(Deserialize)]
pub(crate) struct FanoutMsg {
    pub seq: u64,
    pub t: u64,
}

pub(crate) struct Shared {
    /// Time base of the `t` field.
    pub base: Instant,
    /// `t` is wall-clock time (nanoseconds since the Unix epoch) instead:
    /// for messages stamped by another process on this machine.
    pub wall_clock: bool,
    pub latency: LatencyHistogram,
    pub join_latency: LatencyHistogram,
    pub delivered: AtomicU64,
    /// Nanoseconds since `base` of the latest delivery.
    pub last_delivery_ns: AtomicU64,
    pub errors: Arc<ErrorCounts>,
}

impl Shared {
    pub fn new(errors: Arc<ErrorCounts>) -> Shared {
        Shared {
            base: Instant::now(),
            wall_clock: false,
            latency: LatencyHistogram::new(),
            join_latency: LatencyHistogram::new(),
            delivered: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            errors,
        }
    }

    pub fn now_ns(&self) -> u64 {
        if self.wall_clock {
            return std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        }
        self.base.elapsed().as_nanos() as u64
    }
}

/// Sequence bookkeeping of one receiver.
#[derive(Default)]
pub(crate) struct ReceiverStats {
    pub delivered: u64,
    pub unique: u64,
    pub duplicates: u64,
    /// Times a sequence number skipped ahead of the next expected one.
    pub gaps: u64,
    /// Deliveries older than one already seen (not duplicates).
    pub reordered: u64,
    next_expected: u64,
    seen: Vec<u64>,
}

impl ReceiverStats {
    pub fn record(&mut self, seq: u64) {
        self.delivered += 1;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        if seq == self.next_expected {
            self.next_expected += 1;
        } else if seq > self.next_expected {
            self.gaps += 1;
            self.next_expected = seq + 1;
        } else {
            self.reordered += 1;
        }
    }
}

/// How a receiver ended.
struct ReceiverEnd {
    joined: bool,
    lost: bool,
    stats: ReceiverStats,
}

/// Receivers that joined the room, each receiving until `stop`.
pub(crate) struct Receivers {
    tasks: JoinSet<ReceiverEnd>,
    pub joined: u64,
}

/// Starts `args.receivers` sessions at `args.connect_rate` that join the
/// room and receive until `stop`; returns once every join ended.
pub(crate) async fn start_receivers(
    run: &Run,
    args: &FanoutArgs,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> Receivers {
    let room_json = serde_json::Value::from(args.room.as_str()).to_string();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let join_timeout = run.cfg.handshake_timeout;
    let tasks = spawn_paced(args.receivers, args.connect_rate, |_| {
        let cfg = run.cfg.clone();
        let shared = shared.clone();
        let stop = stop.clone();
        let ready = ready_tx.clone();
        let room_json = room_json.clone();
        async move {
            let mut end = ReceiverEnd {
                joined: false,
                lost: false,
                stats: ReceiverStats::default(),
            };
            let joined = match SioSession::connect(&cfg).await {
                Ok((s, _)) => join(s, &room_json, join_timeout, &shared).await,
                Err(e) => Err(e),
            };
            let session = match joined {
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
            match receive(session, stop, &shared, &mut end.stats).await {
                Ok(session) => session.close().await,
                Err(e) => {
                    shared.errors.add(&e);
                    end.lost = true;
                }
            }
            end
        }
    })
    .await;
    drop(ready_tx);
    let mut joined = 0u64;
    while let Some(ok) = ready_rx.recv().await {
        joined += ok as u64;
    }
    Receivers { tasks, joined }
}

/// What every receiver got, summed.
#[derive(Default)]
pub(crate) struct Tally {
    pub stats: ReceiverStats,
    pub lost_receivers: u64,
    /// Receivers with fewer distinct messages than were sent.
    pub lossy_receivers: u64,
}

impl Receivers {
    /// Waits for every receiver (after `stop`) and sums what they got.
    pub async fn tally(mut self, sent: u64) -> Tally {
        let mut t = Tally::default();
        while let Some(end) = self.tasks.join_next().await {
            let Ok(end) = end else { continue };
            if !end.joined {
                continue;
            }
            t.lost_receivers += end.lost as u64;
            t.lossy_receivers += (end.stats.unique < sent) as u64;
            t.stats.delivered += end.stats.delivered;
            t.stats.unique += end.stats.unique;
            t.stats.duplicates += end.stats.duplicates;
            t.stats.gaps += end.stats.gaps;
            t.stats.reordered += end.stats.reordered;
        }
        t
    }
}

/// The delivery figures of a room publishing run: expected, received,
/// lost, duplicates, order, rates, CPU per delivery, latencies.
pub(crate) fn delivery_figures(
    report: &mut Report,
    shared: &Shared,
    tally: &Tally,
    sent: u64,
    joined: u64,
    delivery_s: f64,
) {
    let totals = &tally.stats;
    let expected = sent * joined;
    let missing = expected.saturating_sub(totals.unique);
    report.figure("expected", "deliveries expected", expected as f64, "");
    report.figure(
        "delivered",
        "deliveries received",
        totals.delivered as f64,
        "",
    );
    report.figure("unique", "distinct deliveries", totals.unique as f64, "");
    report.figure("lost", "deliveries lost", missing as f64, "");
    report.figure(
        "loss_pct",
        "loss",
        if expected > 0 {
            missing as f64 * 100.0 / expected as f64
        } else {
            0.0
        },
        "%",
    );
    report.figure("duplicates", "duplicates", totals.duplicates as f64, "");
    report.figure(
        "gaps",
        "sequence gaps (skips ahead)",
        totals.gaps as f64,
        "",
    );
    report.figure("reordered", "out of order", totals.reordered as f64, "");
    report.figure(
        "lossy_receivers",
        "receivers missing messages",
        tally.lossy_receivers as f64,
        "",
    );
    report.figure(
        "receivers_lost",
        "receivers lost during the run",
        tally.lost_receivers as f64,
        "",
    );
    report.figure(
        "delivered_per_s",
        "deliveries per second",
        per_second(totals.unique, delivery_s),
        "/s",
    );
    report.cpu_per(
        "server_cpu_us_per_delivery",
        "server CPU per delivery",
        totals.delivered,
    );
    report.latency("delivery", shared.latency.summary());
    report.latency("join_ack", shared.join_latency.summary());
}

pub async fn run(args: FanoutArgs) -> Result<Report, String> {
    // Receivers plus the publisher.
    let run = Run::new(&args.common, args.receivers + 1).await?;
    let mut report = args
        .common
        .report("fanout", serde_json::to_value(&args).unwrap_or_default());
    let (mut servers, mut client) = args.common.probes()?;
    if args.rate <= 0.0 {
        return Err("--rate must be positive".into());
    }

    let shared = Arc::new(Shared::new(run.errors.clone()));
    let room_json = serde_json::Value::from(args.room.as_str()).to_string();
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers = start_receivers(&run, &args, &shared, &stop_rx).await;
    let joined = receivers.joined;

    let mut publisher = match SioSession::connect_on(&run.cfg, 0).await {
        Ok((s, _)) => Some(s),
        Err(e) => {
            run.errors.add(&e);
            report.note(format!("publisher could not connect: {e}"));
            None
        }
    };

    let shown = shared.clone();
    let bar = progress(args.common.show_progress(), move || {
        format!("delivered {}", shown.delivered.load(Ordering::Relaxed))
    });
    let timeline = {
        let s = shared.clone();
        Timeline::start("delivery", move || s.latency.take_interval())
    };
    servers.restart()?;
    client.restart()?;
    let publish_start_ns = shared.now_ns();
    let window = Instant::now();
    let mut pubstats = PublisherStats::default();
    if let Some(session) = publisher.as_mut() {
        if let Err(e) = publish(session, &args, &room_json, &shared, &mut pubstats).await {
            run.errors.add(&e);
            report.note(format!("publisher failed: {e}"));
        }
        // Drain: wait for the last deliveries and acks.
        let expected = pubstats.sent * joined;
        let drain_end = Instant::now() + Duration::from_secs_f64(args.drain);
        while (shared.delivered.load(Ordering::Relaxed) < expected
            || pubstats.acked < pubstats.sent)
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

    let tally = receivers.tally(pubstats.sent).await;
    let last_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    let delivery_s =
        (last_ns.saturating_sub(publish_start_ns) as f64 / 1e9).max(args.duration.min(window_s));
    report.figure("receivers", "receivers joined", joined as f64, "");
    report.figure(
        "receivers_failed",
        "receivers failed to join",
        (args.receivers - joined) as f64,
        "",
    );
    report.figure(
        "broadcasts_sent",
        "broadcasts sent",
        pubstats.sent as f64,
        "",
    );
    report.figure(
        "broadcasts_acked",
        "broadcasts acked",
        pubstats.acked as f64,
        "",
    );
    report.figure(
        "room_size_acked",
        "room size reported by acks (mean)",
        if pubstats.acked > 0 {
            pubstats.reached as f64 / pubstats.acked as f64
        } else {
            f64::NAN
        },
        "",
    );
    report.figure("window_s", "publish + drain window", window_s, "s");
    delivery_figures(
        &mut report,
        &shared,
        &tally,
        pubstats.sent,
        joined,
        delivery_s,
    );
    args.common.keep_timeline(&mut report, timeline);
    run.finish_report(&mut report);
    Ok(report)
}

/// Emits `join` with an ack and waits for it.
pub(crate) async fn join(
    mut session: SioSession,
    room_json: &str,
    timeout: Duration,
    shared: &Shared,
) -> Result<SioSession, ClientError> {
    let id = session.next_ack_id();
    let started = Instant::now();
    session.emit("join", room_json, Some(id)).await?;
    let wait = async {
        loop {
            let packet = session.recv().await?;
            if packet.kind == PacketType::Ack && packet.id == Some(id) {
                return Ok::<_, ClientError>(());
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| ClientError::new(ErrorKind::ReplyTimeout, "no join ack"))??;
    shared.join_latency.record(started.elapsed());
    Ok(session)
}

/// Receives `message` deliveries until `stop`.
pub(crate) async fn receive(
    mut session: SioSession,
    mut stop: watch::Receiver<bool>,
    shared: &Shared,
    stats: &mut ReceiverStats,
) -> Result<SioSession, ClientError> {
    // Latencies are batched to take the histogram lock less often.
    let mut batch: Vec<u64> = Vec::with_capacity(64);
    let mut flushed_ns = shared.now_ns();
    let result = loop {
        if *stop.borrow() {
            break Ok(());
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
            }
            packet = session.recv() => {
                let packet = match packet {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                if packet.kind != PacketType::Event {
                    continue;
                }
                match delivery(&packet) {
                    Ok(Some(msg)) => {
                        let now = shared.now_ns();
                        batch.push(now.saturating_sub(msg.t) / 1000);
                        // Flushed when full, and at least every 200 ms for
                        // the per-second samples.
                        if batch.len() == batch.capacity()
                            || now.saturating_sub(flushed_ns) > 200_000_000
                        {
                            shared.latency.record_all(&batch);
                            batch.clear();
                            flushed_ns = now;
                        }
                        stats.record(msg.seq);
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                        shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(e) => shared.errors.add(&e),
                }
            }
        }
    };
    shared.latency.record_all(&batch);
    result.map(|()| session)
}

/// The fanout message of a `message` event (None for other events).
pub(crate) fn delivery(
    packet: &crate::client::SioPacket,
) -> Result<Option<FanoutMsg>, ClientError> {
    let (name, args) = packet.event()?;
    if name != "message" {
        return Ok(None);
    }
    let first = args
        .first()
        .ok_or_else(|| ClientError::new(ErrorKind::UnexpectedReply, "message without argument"))?;
    parse_arg::<FanoutMsg>(first)
        .map(Some)
        .map_err(|e| ClientError::new(ErrorKind::UnexpectedReply, e.detail))
}

#[derive(Default)]
pub(crate) struct PublisherStats {
    pub sent: u64,
    pub acked: u64,
    /// Sum of the room sizes the acks reported.
    pub reached: u64,
}

impl PublisherStats {
    pub fn on_packet(&mut self, packet: &crate::client::SioPacket) {
        if packet.kind == PacketType::Ack {
            self.acked += 1;
            if let Ok(v) = serde_json::from_str::<Vec<serde_json::Value>>(packet.data()) {
                self.reached += v.first().and_then(|n| n.as_u64()).unwrap_or(0);
            }
        }
    }
}

/// Emits `rate * duration` broadcasts on schedule, reading acks meanwhile.
pub(crate) async fn publish(
    session: &mut SioSession,
    args: &FanoutArgs,
    room_json: &str,
    shared: &Shared,
    stats: &mut PublisherStats,
) -> Result<(), ClientError> {
    let total = (args.rate * args.duration).round() as u64;
    let pad = if args.size > 0 {
        format!(
            ",\"pad\":{}",
            serde_json::Value::from("x".repeat(args.size))
        )
    } else {
        String::new()
    };
    let start = tokio::time::Instant::now();
    while stats.sent < total {
        let due = start + Duration::from_secs_f64(stats.sent as f64 / args.rate);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {
                let seq = stats.sent;
                let arg = format!(
                    "{{\"room\":{room_json},\"msg\":{{\"seq\":{seq},\"t\":{}{pad}}}}}",
                    shared.now_ns()
                );
                let id = session.next_ack_id();
                session.emit("broadcast", &arg, Some(id)).await?;
                stats.sent += 1;
            }
            packet = session.recv() => stats.on_packet(&packet?),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_stats() {
        let mut s = ReceiverStats::default();
        for seq in [0, 1, 2, 4, 5, 3, 5, 200] {
            s.record(seq);
        }
        assert_eq!(s.delivered, 8);
        assert_eq!(s.unique, 7);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.gaps, 2);
        assert_eq!(s.reordered, 1);
    }
}
