//! The WebSocket transport: one text frame per Engine.IO packet, a binary
//! frame per binary message.

use std::collections::VecDeque;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::Frame;
use crate::client::error::{ClientError, ErrorKind};
use crate::client::{net, ClientConfig, Endpoint};

pub struct WsTransport {
    ws: WebSocketStream<TcpStream>,
    /// Packets received over polling before an upgrade completed, read
    /// before anything the WebSocket brings.
    pending: VecDeque<Frame>,
}

impl WsTransport {
    /// TCP connect from the next source address, then the WebSocket upgrade
    /// to `transport=websocket` (a direct session, no sid).
    pub async fn connect(cfg: &ClientConfig, node: &Endpoint) -> Result<Self, ClientError> {
        let stream = net::connect(node.target, &cfg.sources).await?;
        Self::handshake(cfg, node, stream, None).await
    }

    /// TCP connect, then the upgrade request of polling session `sid`.
    /// Returns the instant the upgrade request started (after the TCP
    /// connect), the time the 101 answer is measured from.
    pub async fn connect_upgrade(
        cfg: &ClientConfig,
        node: &Endpoint,
        sid: &str,
    ) -> Result<(Self, Instant), ClientError> {
        let stream = net::connect(node.target, &cfg.sources).await?;
        let sent = Instant::now();
        let ws = Self::handshake(cfg, node, stream, Some(sid)).await?;
        Ok((ws, sent))
    }

    async fn handshake(
        cfg: &ClientConfig,
        node: &Endpoint,
        stream: TcpStream,
        sid: Option<&str>,
    ) -> Result<Self, ClientError> {
        let url = format!(
            "ws://{}{}",
            node.authority,
            cfg.request_target("websocket", sid)
        );
        let request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::new(ErrorKind::WsHandshake, format!("request {url}: {e}")))?;
        let config = WebSocketConfig::default()
            .read_buffer_size(cfg.ws_read_buffer)
            .write_buffer_size(0);
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| match e {
                    tungstenite::Error::Http(resp) => ClientError::new(
                        ErrorKind::WsHandshake,
                        format!(
                            "upgrade refused: HTTP {} {}",
                            resp.status(),
                            resp.body()
                                .as_ref()
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                                .unwrap_or_default()
                        ),
                    ),
                    tungstenite::Error::Io(io) => {
                        ClientError::from_io(ErrorKind::WsHandshake, "upgrade", &io)
                    }
                    other => ClientError::new(ErrorKind::WsHandshake, format!("upgrade: {other}")),
                })?;
        Ok(WsTransport {
            ws,
            pending: VecDeque::new(),
        })
    }

    /// Packets to deliver before the WebSocket's own (an upgrade's leftovers).
    pub fn set_pending(&mut self, pending: VecDeque<Frame>) {
        self.pending = pending;
    }

    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(Frame::Text(text.as_str().to_owned())),
                Some(Ok(Message::Binary(bytes))) => return Ok(Frame::Binary(bytes.to_vec())),
                // Ping frames are answered by tungstenite itself.
                Some(Ok(Message::Ping(_)))
                | Some(Ok(Message::Pong(_)))
                | Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    let why = frame
                        .map(|f| format!("{} {}", f.code, f.reason))
                        .unwrap_or_default();
                    return Err(ClientError::closed(format!("websocket close frame {why}")));
                }
                Some(Err(e)) => return Err(ws_error(e)),
                None => return Err(ClientError::closed("websocket ended")),
            }
        }
    }

    pub async fn send(&mut self, packet: String) -> Result<(), ClientError> {
        self.ws.send(Message::text(packet)).await.map_err(ws_error)
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.ws.close(None)).await;
    }
}

fn ws_error(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            ClientError::closed("websocket closed")
        }
        tungstenite::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof => ClientError::closed(format!("websocket: {io}")),
            _ => ClientError::from_io(ErrorKind::Io, "websocket", &io),
        },
        tungstenite::Error::Protocol(p) => match p {
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake => {
                ClientError::closed("websocket reset without closing handshake")
            }
            other => ClientError::protocol(format!("websocket: {other}")),
        },
        other => ClientError::protocol(format!("websocket: {other}")),
    }
}
