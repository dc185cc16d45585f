//! The WebSocket transport: one task per connection that reads frames and
//! writes whatever the session queues. For an upgrade it first runs the
//! probe (`2probe` / `3probe` / `5`) and only then takes the queue over, so
//! nothing reaches the client on a transport it does not read yet.

use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::engine::Engine;
use super::handler::{EngineHandler, Message};
use super::packet::Frame;
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
) {
    let ws = accept(&engine, upgraded).await;
    let (sink, stream) = ws.split();
    serve(&engine, &session, sink, stream).await;
}

/// An upgrade of a polling session.
pub(crate) async fn run_upgrade<H: EngineHandler>(
    engine: Arc<Engine<H>>,
    session: SessionRef<H::Data>,
    upgraded: Upgraded,
) {
    let ws = accept(&engine, upgraded).await;
    let (mut sink, mut stream) = ws.split();
    let deadline = Instant::now() + engine.config().upgrade_timeout;
    match probe(&session, &mut sink, &mut stream, deadline).await {
        Ok(()) => serve(&engine, &session, sink, stream).await,
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
                return if session.complete_upgrade() {
                    Ok(())
                } else {
                    Err("upgrade out of order")
                };
            }
            _ => return Err("unexpected packet during upgrade"),
        }
    }
}

/// Carries the session until it or the connection closes.
async fn serve<H: EngineHandler>(
    engine: &Engine<H>,
    session: &SessionRef<H::Data>,
    mut sink: SplitSink<Ws, WsMessage>,
    mut stream: SplitStream<Ws>,
) {
    let mut out: Vec<Frame> = Vec::new();
    loop {
        let closed = session.drain_for_websocket(&mut out);
        if !out.is_empty() {
            let mut failed = false;
            for frame in out.drain(..) {
                let msg = match frame {
                    Frame::Text(text) => WsMessage::Text(text),
                    Frame::Binary(data) => WsMessage::Binary(data),
                };
                if sink.feed(msg).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed || sink.flush().await.is_err() {
                out.clear();
                session.close(CloseReason::TransportError);
                return;
            }
        }
        if closed.is_some() {
            // Like the reference server: what was queued is flushed above,
            // then a WebSocket close frame (no Engine.IO close packet).
            let _ = sink.close().await;
            return;
        }
        tokio::select! {
            _ = session.writer_event() => {}
            msg = stream.next() => {
                let result = match msg {
                    Some(Ok(WsMessage::Text(text))) => engine.on_text_frame(session, text.as_str()),
                    Some(Ok(WsMessage::Binary(data))) => {
                        engine.handler().on_message(session, Message::Binary(data));
                        Ok(())
                    }
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => Ok(()),
                    Some(Ok(WsMessage::Close(_))) | None => Err(CloseReason::TransportClose),
                    Some(Err(err)) => {
                        debug!(sid = %session.sid(), %err, "websocket read failed");
                        Err(CloseReason::TransportError)
                    }
                };
                if let Err(reason) = result {
                    session.close(reason);
                }
            }
        }
    }
}
