//! The WebSocket transport: one task per connection that reads frames and
//! writes whatever the session queues. For an upgrade it first runs the
//! probe (`2probe` / `3probe` / `5`) and only then takes the queue over, so
//! nothing reaches the client on a transport it does not read yet.

use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::engine::Engine;
use super::handler::EngineHandler;
use super::packet::Frame;
use super::protocol::{Framing, Protocol};
use super::session::{CloseReason, SessionRef};

type Ws = WebSocketStream<TokioIo<Upgraded>>;

async fn accept<H: EngineHandler>(engine: &Engine<H>, upgraded: Upgraded) -> Ws {
    let cfg = engine.config();
    let mut ws_config = WebSocketConfig::default()
        .read_buffer_size(cfg.ws_read_buffer)
        .write_buffer_size(cfg.ws_write_buffer)
        .max_message_size(Some(cfg.max_payload))
        .max_frame_size(Some(cfg.max_payload));
    ws_config.max_write_buffer_size = cfg.max_queued_bytes.max(cfg.ws_write_buffer + 1);
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config)).await
}

/// A session opened directly over WebSocket: its open packet is already
/// queued.
pub(crate) async fn run_direct<H: EngineHandler>(
    engine: Arc<Engine<H>>,
    session: SessionRef<H::Data>,
    upgraded: Upgraded,
    framing: Framing,
) {
    let ws = accept(&engine, upgraded).await;
    let (sink, stream) = ws.split();
    serve(&engine, &session, sink, stream, framing).await;
}

/// A WebSocket for a session that has one already: completed, then closed
/// (a close frame, then the connection).
pub(crate) async fn refuse(upgraded: Upgraded) {
    let config = WebSocketConfig::default().read_buffer_size(256);
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
}

/// An upgrade of a polling session.
pub(crate) async fn run_upgrade<H: EngineHandler>(
    engine: Arc<Engine<H>>,
    session: SessionRef<H::Data>,
    upgraded: Upgraded,
    framing: Framing,
) {
    let ws = accept(&engine, upgraded).await;
    let (mut sink, mut stream) = ws.split();
    let deadline = Instant::now() + engine.config().upgrade_timeout;
    let span = tracing::info_span!("upgrade", sid = %session.sid());
    match tracing::Instrument::instrument(probe(&session, &mut sink, &mut stream, deadline), span)
        .await
    {
        Ok(()) => {
            crate::metrics::metrics().upgrades.add(1, &[]);
            serve(&engine, &session, sink, stream, framing).await
        }
        Err(why) => {
            debug!(sid = %session.sid(), why, "upgrade abandoned");
            session.detach_websocket();
            let _ = sink.close().await;
        }
    }
}

/// Runs the probe exchange. Anything unexpected abandons the upgrade (the
/// session goes on polling), as the reference server does.
async fn probe<D>(
    session: &SessionRef<D>,
    sink: &mut SplitSink<Ws, WsMessage>,
    stream: &mut SplitStream<Ws>,
    deadline: Instant,
) -> Result<(), &'static str> {
    loop {
        let msg = match timeout_at(deadline, stream.next()).await {
            Err(_) => return Err("upgrade timeout"),
            Ok(None) | Ok(Some(Err(_))) => return Err("websocket closed"),
            Ok(Some(Ok(msg))) => msg,
        };
        let text = match msg {
            WsMessage::Text(text) => text,
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            _ => return Err("unexpected frame during upgrade"),
        };
        if session.is_closed() {
            return Err("session closed");
        }
        match text.as_str() {
            "2probe" => {
                sink.send(WsMessage::Text(Utf8Bytes::from_static(Frame::PONG_PROBE)))
                    .await
                    .map_err(|_| "websocket closed")?;
                session.probing();
            }
            "5" => {
                return session
                    .complete_upgrade()
                    .map_err(|_| "upgrade out of order");
            }
            _ => return Err("unexpected packet during upgrade"),
        }
    }
}

/// Carries the session until it or the connection closes. Reading and
/// writing run side by side, so a client that stops reading cannot stop
/// the server from reading (and from noticing that its queue overflows),
/// and a write stuck on a full socket gives up as soon as the session
/// closes.
async fn serve<H: EngineHandler>(
    engine: &Engine<H>,
    session: &SessionRef<H::Data>,
    mut sink: SplitSink<Ws, WsMessage>,
    mut stream: SplitStream<Ws>,
    framing: Framing,
) {
    let writer_done = Notify::new();
    let reader = async {
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                _ = writer_done.notified() => return,
            };
            let result = match msg {
                Some(Ok(WsMessage::Text(text))) => engine.on_text_frame(session, text.as_str()),
                Some(Ok(WsMessage::Binary(data))) => engine.on_binary_frame(session, data),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => Ok(()),
                Some(Ok(WsMessage::Close(_))) | None => Err(CloseReason::TransportClose),
                Some(Err(err)) => {
                    debug!(sid = %session.sid(), %err, "websocket read failed");
                    Err(CloseReason::TransportError)
                }
            };
            if let Err(reason) = result {
                session.close(reason);
                return;
            }
        }
    };
    let writer = async {
        write_loop(
            session,
            &mut sink,
            engine.config().ws_write_interval,
            framing,
        )
        .await;
        writer_done.notify_one();
        // Polite close frame, but never wait long on a client that does
        // not read; dropping the socket closes it anyway.
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    };
    tokio::join!(reader, writer);
}

/// How long a closing WebSocket may take to send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Between the packets of a small batch: one tick of tokio's timer.
const PACKET_GAP: Duration = Duration::from_millis(1);

/// Batches of at most this many frames are written one packet at a time
/// (see [`write_loop`]); larger ones, which only pile up while the socket
/// is busy, go out in one write.
const SEPARATE_WRITES_UP_TO: usize = 4;

/// Writes what the session queues.
///
/// A small batch (an answer and what the application emitted with it, a
/// few events) is written one packet at a time, the next one a timer tick
/// after the previous write, as the reference server does (it writes the
/// next packet once the previous write completed): a client that reads one
/// frame per event-loop turn, as the official test suites and many
/// applications' tests do, receives each packet in its own read. A large
/// batch, the sign of a busy socket (a fan-out faster than one write per
/// packet), goes out in one write: fewer system calls and TCP segments.
/// A packet's binary attachments follow it at once.
///
/// With an `interval`, every batch is one write, and a write that follows
/// another within it waits out the rest of the interval first, so the
/// frames queued meanwhile join it; the first write after a quiet spell
/// goes at once.
async fn write_loop<D>(
    session: &SessionRef<D>,
    sink: &mut SplitSink<Ws, WsMessage>,
    interval: Duration,
    framing: Framing,
) {
    let mut out: Vec<Frame> = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        // Whether a wake-up came while a write was pending: what it
        // announced is drained next, without waiting for another.
        let mut woken = false;
        let closed = session.drain_for_websocket(&mut out);
        if !out.is_empty() {
            let separate = interval.is_zero() && out.len() <= SEPARATE_WRITES_UP_TO;
            let mut batches: Vec<Vec<WsMessage>> = Vec::new();
            for frame in out.drain(..) {
                // A text packet starts a new write when writing packet by
                // packet; binary frames go with the packet before them.
                let starts_packet = matches!(frame, Frame::Text(_));
                let message = ws_message(frame, framing);
                match batches.last_mut() {
                    Some(batch) if !(separate && starts_packet) => batch.push(message),
                    _ => batches.push(vec![message]),
                }
            }
            for (i, batch) in batches.into_iter().enumerate() {
                // The next timer tick: the client has read the packet
                // before this one by then. What was queued before a close
                // still goes out (without the gaps once closed).
                if i > 0 && !session.is_closed() {
                    tokio::time::sleep(PACKET_GAP).await;
                }
                let mut frames = futures_util::stream::iter(batch.into_iter().map(Ok));
                // `send_all` feeds every frame then flushes; a full socket
                // makes it wait, but a close of the session ends the wait.
                let send = sink.send_all(&mut frames);
                tokio::pin!(send);
                let written = loop {
                    tokio::select! {
                        biased;
                        result = &mut send => break result.is_ok(),
                        _ = session.writer_event() => {
                            if session.is_closed() {
                                // What was queued before the close still
                                // goes out, unless the client does not read.
                                let rest = tokio::time::timeout(CLOSE_GRACE, &mut send).await;
                                break matches!(rest, Ok(Ok(())));
                            }
                            woken = true;
                        }
                    }
                };
                if !written {
                    session.close(CloseReason::TransportError);
                    return;
                }
            }
            if !interval.is_zero() {
                last_write = Some(Instant::now());
            }
        }
        if closed.is_some() {
            return;
        }
        if !woken {
            session.writer_event().await;
        }
        if let Some(at) = last_write.map(|last| last + interval) {
            // A close arriving meanwhile waits at most the interval too.
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
        }
    }
}

/// A frame as a WebSocket message in the session's framing: v3 puts the
/// message type byte before binary data (or sends `b4` + base64 text to a
/// client that asked `b64=1`).
fn ws_message(frame: Frame, framing: Framing) -> WsMessage {
    match (frame, framing.protocol) {
        (Frame::Text(text), _) => WsMessage::Text(text),
        (Frame::Binary(data), Protocol::V4) => WsMessage::Binary(data),
        (Frame::Binary(data), Protocol::V3) if framing.base64 => {
            WsMessage::Text(super::payload_v3::base64_message(&data).into())
        }
        (Frame::Binary(data), Protocol::V3) => {
            WsMessage::Binary(super::payload_v3::binary_message(&data))
        }
    }
}
