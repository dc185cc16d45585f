//! `push`: the room fan-out with a backend as the publisher. Receivers
//! (WebSocket) join a room as in `fanout`; the publisher is the gRPC `Push`
//! API of a Ringway gateway (`--grpc`): one `EmitStream` carrying
//! `message {"seq":n,"t":wall_clock_ns}` into the room at `--rate` per
//! second, or as fast as the stream's flow control lets it with `--rate 0`
//! (at most `--window` emits unanswered). Figures: as `fanout` (delivered,
//! loss, duplicates, order, latency from the publisher's stamp to the
//! receiver, server CPU per delivery), plus emits answered.
//!
//! `--server-driver` measures a server that has no such API (the reference
//! socket.io peer): the publisher is a Socket.IO session that asks the
//! server, with the `drive` event of its echo application, to emit into the
//! room itself (`io.to(room).emit`) at the rate for the duration. Stamps
//! are wall-clock time, the same machine's clock on both sides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ringway_proto::v1::push_client::PushClient;
use ringway_proto::v1::{target, EmitRequest, RoomList, Target};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::fanout::{delivery_figures, start_receivers, FanoutArgs, Shared};
use super::{end_progress, progress, Run};
use crate::client::socketio::PacketType;
use crate::client::{ClientError, ErrorKind, SioSession};
use crate::report::Report;
use crate::timeline::Timeline;

#[derive(Debug, Clone, Args, Serialize)]
pub struct PushArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,

    /// The gateway's gRPC address (host:port) for the Push API.
    #[arg(long)]
    pub grpc: Option<String>,

    /// Bearer token for the Push API (`--api-token` of the gateways).
    #[arg(long)]
    #[serde(skip)]
    pub token: Option<String>,

    /// Most emits sent on the stream and not yet answered.
    #[arg(long, default_value_t = 256)]
    pub window: usize,

    /// Ask the server to emit into the room itself (the `drive` event of
    /// the reference peer) instead of calling the Push API.
    #[arg(long)]
    pub server_driver: bool,
}

/// Bearer token on every call.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Emits the API answered.
#[derive(Default)]
struct Published {
    answered: AtomicU64,
}

pub async fn run(args: PushArgs) -> Result<Report, String> {
    let fan = &args.fanout;
    let run = Run::new(&fan.common, fan.receivers + 1).await?;
    let mut report = fan
        .common
        .report("push", serde_json::to_value(&args).unwrap_or_default());
    let (mut servers, mut client) = fan.common.probes()?;
    if fan.rate < 0.0 {
        return Err("--rate must be 0 (as fast as possible) or positive".into());
    }
    if !args.server_driver && args.grpc.is_none() {
        return Err("--grpc ADDR (the Push API) or --server-driver is needed".into());
    }
    let mut shared = Shared::new(run.errors.clone());
    shared.wall_clock = true;
    let shared = Arc::new(shared);
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers = start_receivers(&run, fan, &shared, &stop_rx).await;
    let joined = receivers.joined;

    let shown = shared.clone();
    let bar = progress(fan.common.show_progress(), move || {
        format!("delivered {}", shown.delivered.load(Ordering::Relaxed))
    });
    let timeline = {
        let s = shared.clone();
        Timeline::start("delivery", move || s.latency.take_interval())
    };
    servers.restart()?;
    client.restart()?;
    let window = Instant::now();
    let published = Arc::new(Published::default());
    let outcome = if args.server_driver {
        drive(&run, &args).await
    } else {
        push_stream(&args, &shared, &published).await
    };
    let sent = match outcome {
        Ok(sent) => sent,
        Err(e) => {
            report.note(format!("publisher failed: {e}"));
            run.errors.add(&ClientError::new(ErrorKind::Protocol, e));
            0
        }
    };
    let publish_s = window.elapsed().as_secs_f64();
    // Drain: the last deliveries.
    let expected = sent * joined;
    let drain_end = Instant::now() + Duration::from_secs_f64(fan.drain);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.record_usage(&mut report, &servers, &client);
    end_progress(bar);
    let _ = stop_tx.send(true);
    let tally = receivers.tally(sent).await;
    report.figure("receivers", "receivers joined", joined as f64, "");
    report.figure("emits_sent", "emits sent", sent as f64, "");
    if !args.server_driver {
        report.figure(
            "emits_answered",
            "emits answered by the API",
            published.answered.load(Ordering::Relaxed) as f64,
            "",
        );
    }
    report.figure("publish_s", "publishing time", publish_s, "s");
    report.figure(
        "emits_per_s",
        "emits per second",
        sent as f64 / publish_s.max(1e-9),
        "/s",
    );
    delivery_figures(&mut report, &shared, &tally, sent, joined, publish_s);
    fan.common.keep_timeline(&mut report, timeline);
    run.finish_report(&mut report);
    Ok(report)
}

fn message(shared: &Shared, seq: u64, pad: &str) -> String {
    format!("[{{\"seq\":{seq},\"t\":{}{pad}}}]", shared.now_ns())
}

/// One `EmitStream`, paced (or unpaced: `--rate 0` for `--duration`);
/// returns how many emits were sent.
async fn push_stream(
    args: &PushArgs,
    shared: &Shared,
    published: &Arc<Published>,
) -> Result<u64, String> {
    let fan = &args.fanout;
    let addr = args.grpc.as_deref().unwrap_or_default();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("--grpc {addr}: {e}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot reach the Push API at {addr}: {e}"))?;
    let token = match &args.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| "--token has characters a header cannot carry".to_owned())?,
        ),
        None => None,
    };
    let mut push =
        PushClient::with_interceptor(channel, Bearer(token)).max_decoding_message_size(16 << 20);
    let (tx, rx) = mpsc::channel::<EmitRequest>(args.window.max(1));
    let mut replies = push
        .emit_stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("EmitStream: {s}"))?
        .into_inner();
    // Answers come back in order; at most `window` may be outstanding.
    let (credit_tx, mut credit) = mpsc::channel::<()>(args.window.max(1));
    let counter = published.clone();
    let reader = tokio::spawn(async move {
        loop {
            match replies.message().await {
                Ok(Some(_)) => {
                    counter.answered.fetch_add(1, Ordering::Relaxed);
                    let _ = credit.recv().await;
                }
                Ok(None) => return Ok(()),
                Err(status) => return Err(format!("EmitStream: {status}")),
            }
        }
    });
    let pad = pad_field(fan.size);
    let request = |seq: u64| EmitRequest {
        namespace: "/".into(),
        target: Some(Target {
            to: Some(target::To::Rooms(RoomList {
                rooms: vec![fan.room.clone()],
            })),
            except_rooms: Vec::new(),
        }),
        event: "message".into(),
        args_json: message(shared, seq, &pad),
        ..EmitRequest::default()
    };
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs_f64(fan.duration);
    let total = (fan.rate * fan.duration).round() as u64;
    let mut sent = 0u64;
    loop {
        if fan.rate > 0.0 {
            if sent >= total {
                break;
            }
            tokio::time::sleep_until(start + Duration::from_secs_f64(sent as f64 / fan.rate)).await;
        } else if tokio::time::Instant::now() >= end {
            break;
        }
        // One credit per emit in flight.
        if credit_tx.send(()).await.is_err() || tx.send(request(sent)).await.is_err() {
            break;
        }
        sent += 1;
    }
    drop(tx);
    match reader.await {
        Ok(Ok(())) => Ok(sent),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(format!("reply reader: {e}")),
    }
}

fn pad_field(size: usize) -> String {
    if size == 0 {
        return String::new();
    }
    format!(",\"pad\":{}", serde_json::Value::from("x".repeat(size)))
}

/// Asks the server to emit into the room itself; returns how many it
/// emitted (its `drive-done` answer).
async fn drive(run: &Run, args: &PushArgs) -> Result<u64, String> {
    let fan = &args.fanout;
    let (mut session, _) = SioSession::connect_on(&run.cfg, 0)
        .await
        .map_err(|e| format!("driver session: {e}"))?;
    let request = serde_json::json!({
        "room": fan.room,
        "rate": fan.rate,
        "duration_ms": (fan.duration * 1000.0) as u64,
        "pad": fan.size,
    })
    .to_string();
    session
        .emit("drive", &request, None)
        .await
        .map_err(|e| format!("drive: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs_f64(fan.duration + 30.0);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let packet = tokio::time::timeout(left, session.recv())
            .await
            .map_err(|_| "the server did not say drive-done".to_owned())?
            .map_err(|e| format!("driver session: {e}"))?;
        if packet.kind != PacketType::Event {
            continue;
        }
        if let Ok((name, args)) = packet.event() {
            if name == "drive-done" {
                let n = args
                    .first()
                    .and_then(|a| serde_json::from_str::<u64>(a.get()).ok())
                    .unwrap_or(0);
                session.close().await;
                return Ok(n);
            }
        }
    }
}
