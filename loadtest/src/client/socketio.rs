//! Socket.IO v5 client on top of an Engine.IO session: namespace CONNECT,
//! EVENT encoding with optional ack id, and a parser for what the server
//! sends (`<type>[<n>-][<nsp>,][<id>][json]`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::engineio::{clip, EioMessage, EioSession, UpgradeTimes};
use super::error::{ClientError, ErrorKind};
use super::ClientConfig;

/// The packet kinds (the shared codec's).
pub use ringway_socketio_codec::PacketKind as PacketType;

/// One Socket.IO packet received from the server. Holds the packet text;
/// namespace and JSON data are slices of it.
#[derive(Debug)]
pub struct SioPacket {
    pub kind: PacketType,
    pub id: Option<u64>,
    /// Binary attachments announced (`5N-...`), which follow as binary
    /// Engine.IO messages.
    pub attachments: usize,
    text: String,
    nsp: Option<(usize, usize)>,
    data_start: usize,
}

impl SioPacket {
    pub fn parse(text: String) -> Result<SioPacket, ClientError> {
        // The header by the shared codec (the gateway reads its clients'
        // packets with the same grammar); offsets into the owned text.
        let header = ringway_socketio_codec::header(&text).map_err(|e| {
            ClientError::protocol(format!("bad socket.io packet ({e}): {}", clip(&text)))
        })?;
        let offset = |part: &str| part.as_ptr() as usize - text.as_ptr() as usize;
        let nsp = header.nsp.map(|n| (offset(n), offset(n) + n.len()));
        let data_start = header.data.map_or(text.len(), offset);
        let (kind, id, attachments) = (header.kind, header.id, header.attachments);
        Ok(SioPacket {
            kind,
            id,
            attachments,
            nsp,
            data_start,
            text,
        })
    }

    /// The namespace (`/` when omitted).
    pub fn nsp(&self) -> &str {
        match self.nsp {
            Some((a, b)) => &self.text[a..b],
            None => "/",
        }
    }

    /// The JSON payload, as received (empty when there is none).
    pub fn data(&self) -> &str {
        &self.text[self.data_start..]
    }

    /// The whole packet text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// For an EVENT: its name and raw arguments.
    pub fn event(&self) -> Result<(String, Vec<&RawValue>), ClientError> {
        let items: Vec<&RawValue> = serde_json::from_str(self.data()).map_err(|e| {
            ClientError::protocol(format!("bad event payload {}: {e}", clip(self.data())))
        })?;
        let (first, args) = items
            .split_first()
            .ok_or_else(|| ClientError::protocol("event without a name"))?;
        let name: String = serde_json::from_str(first.get()).map_err(|_| {
            ClientError::protocol(format!("event name is not a string {}", clip(self.data())))
        })?;
        Ok((name, args.to_vec()))
    }

    /// Connection state recovery: takes the offset off a recoverable
    /// event (the last argument, after at least one other: a string shaped
    /// like a log offset, `<ms>-<seq>`, or Ringway's `unlogged`) and
    /// returns it; the packet then reads as the server's application sent
    /// it. Events without one (volatile ones) keep their arguments.
    pub fn take_offset(&mut self) -> Option<String> {
        if !matches!(self.kind, PacketType::Event | PacketType::BinaryEvent) || self.id.is_some() {
            return None;
        }
        let data = self.data();
        let items: Vec<&RawValue> = serde_json::from_str(data).ok()?;
        if items.len() < 2 {
            return None;
        }
        let last = items.last()?;
        let offset: String = serde_json::from_str(last.get()).ok()?;
        if !is_offset(&offset) {
            return None;
        }
        // Where the last item starts in the text, and the comma before it.
        let at = last.get().as_ptr() as usize - self.text.as_ptr() as usize;
        let comma = self.text[..at].rfind(',')?;
        let mut text = String::with_capacity(comma + 1);
        text.push_str(&self.text[..comma]);
        text.push(']');
        self.text = text;
        Some(offset)
    }

    /// The event name only, when this is an EVENT with a string name.
    pub fn event_name(&self) -> Option<String> {
        if self.kind != PacketType::Event {
            return None;
        }
        self.event().ok().map(|(name, _)| name)
    }
}

/// A recovery offset: a stream id (`<ms>-<seq>`, as Ringway's log and the
/// reference's Redis streams adapter give), or Ringway's mark of an emit
/// delivered without the log.
fn is_offset(s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    s == "unlogged"
        || s.split_once('-')
            .is_some_and(|(a, b)| digits(a) && digits(b))
}

/// Parses one JSON argument into `T`.
pub fn parse_arg<'a, T: Deserialize<'a>>(arg: &'a RawValue) -> Result<T, ClientError> {
    serde_json::from_str(arg.get())
        .map_err(|e| ClientError::protocol(format!("bad argument {}: {e}", clip(arg.get()))))
}

/// Timestamps of the handshake, from the start of the TCP connect.
#[derive(Debug, Clone, Copy)]
pub struct ConnectTimes {
    /// Engine.IO open packet received.
    pub open: Duration,
    /// Socket.IO CONNECT answer received.
    pub connect: Duration,
}

/// A Socket.IO socket in one namespace over its own Engine.IO session.
pub struct SioSession {
    eio: EioSession,
    nsp: String,
    /// Socket id given by the CONNECT answer.
    pub sid: String,
    next_ack_id: u64,
    /// Binary attachments still expected for the last binary packet.
    pending_attachments: usize,
    /// The private id of connection state recovery, when the server gave
    /// one: its events then carry their offsets, which `recv` takes off.
    pub pid: Option<String>,
    /// The last offset received (what a recovery asks to resume after).
    pub last_offset: Option<String>,
}

#[derive(Deserialize)]
struct ConnectAnswer {
    sid: String,
    #[serde(default)]
    pid: Option<String>,
}

impl SioSession {
    /// Opens an Engine.IO session (on the next start node of the list) and
    /// joins the configured namespace, within `cfg.handshake_timeout`.
    pub async fn connect(
        cfg: &Arc<ClientConfig>,
    ) -> Result<(SioSession, ConnectTimes), ClientError> {
        Self::connect_on(cfg, cfg.next_start()).await
    }

    /// [`SioSession::connect`], starting on node `node` of the list.
    pub async fn connect_on(
        cfg: &Arc<ClientConfig>,
        node: usize,
    ) -> Result<(SioSession, ConnectTimes), ClientError> {
        Self::connect_with(cfg, node, cfg.auth.as_deref()).await
    }

    /// A new session that asks to recover an earlier socket (connection
    /// state recovery): its `pid` and last offset join the CONNECT payload.
    /// The answer's [`SioSession::pid`] equals `pid` when it recovered.
    pub async fn reconnect(
        cfg: &Arc<ClientConfig>,
        pid: &str,
        offset: Option<&str>,
    ) -> Result<(SioSession, ConnectTimes), ClientError> {
        let mut auth = match cfg.auth.as_deref().map(serde_json::from_str) {
            Some(Ok(serde_json::Value::Object(map))) => map,
            _ => serde_json::Map::new(),
        };
        auth.insert("pid".into(), pid.into());
        if let Some(offset) = offset {
            auth.insert("offset".into(), offset.into());
        }
        let auth = serde_json::Value::Object(auth).to_string();
        Self::connect_with(cfg, cfg.next_start(), Some(&auth)).await
    }

    async fn connect_with(
        cfg: &Arc<ClientConfig>,
        node: usize,
        auth: Option<&str>,
    ) -> Result<(SioSession, ConnectTimes), ClientError> {
        let start = Instant::now();
        tokio::time::timeout(
            cfg.handshake_timeout,
            Self::connect_inner(cfg, node, start, auth),
        )
        .await
        .map_err(|_| ClientError::timeout("handshake"))?
    }

    /// Upgrades the (polling) session to WebSocket, within
    /// `cfg.handshake_timeout`; see [`EioSession::upgrade`].
    pub async fn upgrade(&mut self, cfg: &ClientConfig) -> Result<UpgradeTimes, ClientError> {
        tokio::time::timeout(cfg.handshake_timeout, self.eio.upgrade(cfg))
            .await
            .map_err(|_| ClientError::new(ErrorKind::Upgrade, "upgrade timed out"))?
    }

    async fn connect_inner(
        cfg: &Arc<ClientConfig>,
        node: usize,
        start: Instant,
        auth: Option<&str>,
    ) -> Result<(SioSession, ConnectTimes), ClientError> {
        let (eio, times) = EioSession::open(cfg, node, start).await?;
        let nsp = cfg.namespace.clone();

        let mut session = SioSession {
            eio,
            nsp,
            sid: String::new(),
            next_ack_id: 0,
            pending_attachments: 0,
            pid: None,
            last_offset: None,
        };
        let mut connect = String::new();
        ringway_socketio_codec::write_header(
            &mut connect,
            PacketType::Connect,
            0,
            &session.nsp,
            None,
        );
        connect.push_str(auth.unwrap_or(""));
        session.eio.send_message(&connect).await?;
        loop {
            let packet = session.recv_any().await?;
            if packet.nsp() != session.nsp {
                continue;
            }
            match packet.kind {
                PacketType::Connect => {
                    let answer: ConnectAnswer =
                        serde_json::from_str(packet.data()).map_err(|e| {
                            ClientError::protocol(format!(
                                "bad CONNECT answer {}: {e}",
                                clip(packet.text())
                            ))
                        })?;
                    session.sid = answer.sid;
                    session.pid = answer.pid;
                    break;
                }
                PacketType::ConnectError => {
                    return Err(ClientError::new(
                        ErrorKind::ConnectError,
                        format!("CONNECT refused: {}", clip(packet.data())),
                    ))
                }
                _ => {
                    return Err(ClientError::protocol(format!(
                        "expected CONNECT, got {}",
                        clip(packet.text())
                    )))
                }
            }
        }
        let connect = start.elapsed();
        Ok((
            session,
            ConnectTimes {
                open: times.open,
                connect,
            },
        ))
    }

    /// A fresh ack id for [`SioSession::emit`].
    pub fn next_ack_id(&mut self) -> u64 {
        let id = self.next_ack_id;
        self.next_ack_id += 1;
        id
    }

    /// Encodes an EVENT: `2[nsp,][id]["event",args]`. `args` is the
    /// comma-separated JSON of the arguments (empty for none).
    pub fn encode_event(&self, event: &str, args: &str, ack: Option<u64>) -> String {
        let name = serde_json::Value::from(event).to_string();
        let mut out = String::with_capacity(8 + self.nsp.len() + name.len() + args.len());
        ringway_socketio_codec::write_header(&mut out, PacketType::Event, 0, &self.nsp, ack);
        out.push('[');
        out.push_str(&name);
        if !args.is_empty() {
            out.push(',');
            out.push_str(args);
        }
        out.push(']');
        out
    }

    /// Emits `event` with raw JSON `args` (see [`SioSession::encode_event`]).
    pub async fn emit(
        &mut self,
        event: &str,
        args: &str,
        ack: Option<u64>,
    ) -> Result<(), ClientError> {
        let packet = self.encode_event(event, args, ack);
        self.eio.send_message(&packet).await
    }

    /// Sends an already encoded Socket.IO packet.
    pub async fn send_encoded(&mut self, packet: &str) -> Result<(), ClientError> {
        self.eio.send_message(packet).await
    }

    /// The next packet for this session's namespace (binary attachments are
    /// skipped). A DISCONNECT from the server ends the session.
    /// Cancel-safe in the same sense as [`EioSession::recv`].
    pub async fn recv(&mut self) -> Result<SioPacket, ClientError> {
        loop {
            let mut packet = self.recv_any().await?;
            if packet.nsp() != self.nsp {
                continue;
            }
            if packet.kind == PacketType::Disconnect {
                return Err(ClientError::closed("server sent DISCONNECT"));
            }
            if self.pid.is_some() {
                if let Some(offset) = packet.take_offset() {
                    self.last_offset = Some(offset);
                }
            }
            return Ok(packet);
        }
    }

    async fn recv_any(&mut self) -> Result<SioPacket, ClientError> {
        loop {
            match self.eio.recv().await? {
                EioMessage::Binary(_) => {
                    if self.pending_attachments == 0 {
                        return Err(ClientError::protocol(
                            "binary message without a binary packet",
                        ));
                    }
                    self.pending_attachments -= 1;
                }
                EioMessage::Text(text) => {
                    if self.pending_attachments > 0 {
                        return Err(ClientError::protocol(
                            "packet while binary attachments were due",
                        ));
                    }
                    let packet = SioPacket::parse(text)?;
                    self.pending_attachments = packet.attachments;
                    return Ok(packet);
                }
            }
        }
    }

    /// Leaves the namespace and closes the session, best effort.
    pub async fn close(mut self) {
        let mut disconnect = String::new();
        ringway_socketio_codec::write_header(
            &mut disconnect,
            PacketType::Disconnect,
            0,
            &self.nsp,
            None,
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.eio.send_message(&disconnect)).await;
        self.eio.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> SioPacket {
        SioPacket::parse(s.to_string()).unwrap()
    }

    #[test]
    fn parses_packets() {
        let p = parse(r#"2["message-back",1,"2"]"#);
        assert_eq!(p.kind, PacketType::Event);
        assert_eq!(p.nsp(), "/");
        assert_eq!(p.id, None);
        let (name, args) = p.event().unwrap();
        assert_eq!(name, "message-back");
        assert_eq!(args.len(), 2);

        let p = parse("31[1]");
        assert_eq!(p.kind, PacketType::Ack);
        assert_eq!(p.id, Some(1));
        assert_eq!(p.data(), "[1]");

        let p = parse(r#"0/custom,{"sid":"Y"}"#);
        assert_eq!(p.kind, PacketType::Connect);
        assert_eq!(p.nsp(), "/custom");
        assert_eq!(p.data(), r#"{"sid":"Y"}"#);

        let p = parse(r#"4/random,{"message":"Invalid namespace"}"#);
        assert_eq!(p.kind, PacketType::ConnectError);

        let p = parse(r#"52-/chat,7["m",{"_placeholder":true,"num":0}]"#);
        assert_eq!(p.kind, PacketType::BinaryEvent);
        assert_eq!(p.attachments, 2);
        assert_eq!(p.nsp(), "/chat");
        assert_eq!(p.id, Some(7));

        // A recoverable event's offset comes off; acks and events asking
        // for an ack have none.
        let mut p = parse(r#"2/chat,["m",{"a":"x,y"},"17-3"]"#);
        assert_eq!(p.take_offset().as_deref(), Some("17-3"));
        assert_eq!(p.data(), r#"["m",{"a":"x,y"}]"#);
        assert_eq!(p.nsp(), "/chat");
        let mut p = parse(r#"2["m"]"#);
        assert_eq!(p.take_offset(), None);
        let mut p = parse(r#"25["m","s"]"#);
        assert_eq!(p.take_offset(), None);
        let mut p = parse(r#"3["s","t"]"#);
        assert_eq!(p.take_offset(), None);
        // A volatile event (no offset) keeps a last string argument.
        let mut p = parse(r#"2["m","kept"]"#);
        assert_eq!(p.take_offset(), None);
        assert_eq!(p.data(), r#"["m","kept"]"#);
        let mut p = parse(r#"2["m",1,"unlogged"]"#);
        assert_eq!(p.take_offset().as_deref(), Some("unlogged"));

        assert_eq!(parse("1").kind, PacketType::Disconnect);
        assert!(SioPacket::parse("9".into()).is_err());
        assert!(SioPacket::parse("".into()).is_err());
        assert!(SioPacket::parse("5x".into()).is_err());
        assert!(SioPacket::parse("2[1]".into()).unwrap().event().is_err());
    }
}
