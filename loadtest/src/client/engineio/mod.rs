//! Engine.IO v4 client: the open packet, the heartbeat (answer `2` with `3`,
//! give up when no ping comes within pingInterval + pingTimeout), messages
//! (`4...`), over a WebSocket or a long-polling transport.

mod polling;
mod websocket;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::error::{ClientError, ErrorKind};
use super::{trace, ClientConfig, NodeCursor, TransportKind};

/// The Engine.IO packet separator in polling payloads.
pub const RECORD_SEPARATOR: char = '\x1e';

/// One Engine.IO packet as a transport carries it.
#[derive(Debug)]
pub enum Frame {
    /// A text packet: type character then data (`4hello`, `2`).
    Text(String),
    /// A binary message (WebSocket binary frame, or a decoded `b...` packet).
    Binary(Vec<u8>),
}

/// An application message delivered by the session.
#[derive(Debug)]
pub enum EioMessage {
    Text(String),
    /// Binary attachments are not used by the scenarios, which skip them.
    Binary(#[allow(dead_code)] Vec<u8>),
}

/// The open packet's handshake data.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenInfo {
    pub sid: String,
    pub ping_interval: u64,
    pub ping_timeout: u64,
}

impl OpenInfo {
    /// Parses an open packet (`0{...}`).
    pub fn parse(packet: &str) -> Result<OpenInfo, ClientError> {
        let json = packet.strip_prefix('0').ok_or_else(|| {
            ClientError::protocol(format!("expected an open packet, got {}", clip(packet)))
        })?;
        serde_json::from_str(json)
            .map_err(|e| ClientError::protocol(format!("bad open packet {}: {e}", clip(packet))))
    }

    /// How long the client waits for a ping before it gives up.
    pub fn ping_deadline(&self) -> Duration {
        Duration::from_millis(self.ping_interval + self.ping_timeout)
    }
}

/// The transport under a session.
enum Transport {
    Ws(Box<websocket::WsTransport>),
    Polling(polling::PollingTransport),
}

impl Transport {
    async fn recv(&mut self) -> Result<Frame, ClientError> {
        match self {
            Transport::Ws(t) => t.recv().await,
            Transport::Polling(t) => t.recv().await,
        }
    }

    async fn send(&mut self, packet: String) -> Result<(), ClientError> {
        match self {
            Transport::Ws(t) => t.send(packet).await,
            Transport::Polling(t) => t.send(packet).await,
        }
    }

    async fn close(self) {
        match self {
            Transport::Ws(t) => t.close().await,
            Transport::Polling(t) => t.close().await,
        }
    }
}

/// Timestamps of the handshake steps, from the start of the TCP connect.
#[derive(Debug, Clone, Copy, Default)]
pub struct HandshakeTimes {
    /// Open packet received.
    pub open: Duration,
}

/// Timestamps of an upgrade (polling to WebSocket), from the moment the
/// upgrade request is sent (after its TCP connect).
#[derive(Debug, Clone, Copy, Default)]
pub struct UpgradeTimes {
    /// `101 Switching Protocols` received (in a cluster, a handoff happens
    /// before it when the request lands on another node than the owner).
    pub response: Duration,
    /// `3probe` received.
    pub probe: Duration,
    /// Polling paused (its pending GET released) and `5` sent: the session
    /// is on the WebSocket.
    pub done: Duration,
}

/// An open Engine.IO session.
pub struct EioSession {
    transport: Transport,
    ping_deadline: Duration,
    last_ping: Instant,
    sid: String,
    /// Node index of the handshake.
    home: usize,
}

impl EioSession {
    /// Connects to node `node` of the list and waits for the open packet.
    /// `start` is the instant the caller counts handshake latency from.
    pub async fn open(
        cfg: &Arc<ClientConfig>,
        node: usize,
        start: Instant,
    ) -> Result<(Self, HandshakeTimes), ClientError> {
        let (transport, open, home) = match cfg.transport {
            TransportKind::Websocket => {
                let home = node % cfg.nodes.len();
                let mut t = websocket::WsTransport::connect(cfg, cfg.node(home)).await?;
                let open = match t.recv().await? {
                    Frame::Text(text) => OpenInfo::parse(&text)?,
                    Frame::Binary(_) => {
                        return Err(ClientError::protocol(
                            "binary frame instead of the open packet",
                        ))
                    }
                };
                (Transport::Ws(Box::new(t)), open, home)
            }
            TransportKind::Polling => {
                let cursor = NodeCursor::new(node, cfg.nodes.len());
                let (t, open, home) = polling::PollingTransport::connect(cfg, &cursor).await?;
                (Transport::Polling(t), open, home)
            }
        };
        let times = HandshakeTimes {
            open: start.elapsed(),
        };
        let ping_deadline = open.ping_deadline();
        Ok((
            EioSession {
                transport,
                ping_deadline,
                last_ping: Instant::now(),
                sid: open.sid,
                home,
            },
            times,
        ))
    }

    /// Upgrades a polling session to WebSocket like the official client:
    /// the upgrade request (`transport=websocket&sid=..`), `2probe`, wait
    /// for `3probe`, pause polling (the pending GET is released by the
    /// server), then `5`. With a node list the upgrade request goes to the
    /// node after the one that served the handshake (another node than the
    /// session's owner in a Ringway cluster: a handoff).
    pub async fn upgrade(&mut self, cfg: &ClientConfig) -> Result<UpgradeTimes, ClientError> {
        let Transport::Polling(polling) = &mut self.transport else {
            return Err(ClientError::new(
                ErrorKind::Upgrade,
                "only a polling session can upgrade",
            ));
        };
        let node = cfg.node(self.home + 1);
        trace(format_args!(
            "upgrade {} on node {}",
            self.sid,
            (self.home + 1) % cfg.nodes.len() + 1
        ));
        let (mut ws, sent) = websocket::WsTransport::connect_upgrade(cfg, node, &self.sid).await?;
        let response = sent.elapsed();
        ws.send("2probe".to_string()).await?;
        match ws.recv().await? {
            Frame::Text(text) if text == "3probe" => {}
            Frame::Text(text) => {
                return Err(ClientError::new(
                    ErrorKind::Upgrade,
                    format!("expected 3probe, got {}", clip(&text)),
                ))
            }
            Frame::Binary(_) => {
                return Err(ClientError::new(
                    ErrorKind::Upgrade,
                    "expected 3probe, got a binary frame",
                ))
            }
        }
        let probe = sent.elapsed();
        trace(format_args!(
            "3probe {} after {} µs",
            self.sid,
            probe.as_micros()
        ));
        let pending = polling.pause(cfg.handshake_timeout).await?;
        ws.send("5".to_string()).await?;
        ws.set_pending(pending);
        // The polling transport is dropped: its loops have ended.
        self.transport = Transport::Ws(Box::new(ws));
        Ok(UpgradeTimes {
            response,
            probe,
            done: sent.elapsed(),
        })
    }

    /// Sends one message packet (`4` + `text`).
    pub async fn send_message(&mut self, text: &str) -> Result<(), ClientError> {
        let mut packet = String::with_capacity(text.len() + 1);
        packet.push('4');
        packet.push_str(text);
        self.transport.send(packet).await
    }

    /// Waits for the next message, answering pings on the way. Fails when
    /// the server closes the session or no ping arrives in time.
    ///
    /// Cancel-safe enough for `select!`: a frame is never half-read; a pong
    /// being written when the future is dropped stays queued and goes out
    /// with the next write.
    pub async fn recv(&mut self) -> Result<EioMessage, ClientError> {
        loop {
            let deadline = self.last_ping + self.ping_deadline;
            let frame = match tokio::time::timeout_at(deadline.into(), self.transport.recv()).await
            {
                Ok(frame) => frame?,
                Err(_) => {
                    return Err(ClientError::new(
                        ErrorKind::PingTimeout,
                        format!("no ping within {} ms", self.ping_deadline.as_millis()),
                    ))
                }
            };
            let text = match frame {
                Frame::Binary(bytes) => return Ok(EioMessage::Binary(bytes)),
                Frame::Text(text) => text,
            };
            match text.as_bytes().first() {
                Some(b'4') => {
                    let mut text = text;
                    text.remove(0);
                    return Ok(EioMessage::Text(text));
                }
                Some(b'2') => {
                    self.last_ping = Instant::now();
                    self.transport.send("3".to_string()).await?;
                }
                Some(b'1') => return Err(ClientError::closed("server sent close packet")),
                Some(b'6') => {}
                _ => {
                    return Err(ClientError::protocol(format!(
                        "unexpected packet {}",
                        clip(&text)
                    )))
                }
            }
        }
    }

    /// Closes the session (close packet, then the transport), best effort.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.transport.send("1".to_string()))
            .await;
        self.transport.close().await;
    }
}

/// At most 120 characters of `s`, for error details.
pub fn clip(s: &str) -> String {
    if s.len() <= 120 {
        return format!("{s:?}");
    }
    let mut end = 120;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_packet() {
        let open = OpenInfo::parse(
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
        )
        .unwrap();
        assert_eq!(open.sid, "abc");
        assert_eq!(open.ping_deadline(), Duration::from_millis(45_000));
        assert!(OpenInfo::parse("4hello").is_err());
        assert!(OpenInfo::parse("0{").is_err());
    }
}
