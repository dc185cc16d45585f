//! Engine.IO v4 packet codec: pure functions, bytes in, packets out, no I/O.
//!
//! Outgoing packets are built once as wire-ready [`Frame`]s so that one
//! broadcast is encoded a single time and its bytes shared by every session
//! that receives it. Incoming text packets are decoded borrowing the input.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::errors::DecodeError;

/// One packet as it goes on the wire, ready for either transport.
///
/// `Text` holds the whole encoded packet, type digit included (`"4hello"`,
/// `"2"`, `"6"`): a WebSocket text frame carries it as is, a polling payload
/// joins several with the record separator. `Binary` is a binary message:
/// a WebSocket binary frame, or `b` + base64 in a polling payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Frame {
    pub const CLOSE: &'static str = "1";
    pub const PING: &'static str = "2";
    pub const PONG: &'static str = "3";
    pub const PONG_PROBE: &'static str = "3probe";
    pub const NOOP: &'static str = "6";

    /// A text message packet (`4` + data).
    pub fn message(data: &str) -> Frame {
        let mut s = String::with_capacity(data.len() + 1);
        s.push('4');
        s.push_str(data);
        Frame::Text(s.into())
    }

    /// A text frame from a string that already starts with the `4` type digit.
    /// Socket.IO encoders write the digit first to avoid a second copy.
    pub fn encoded_message(packet: String) -> Frame {
        debug_assert!(packet.starts_with('4'));
        Frame::Text(packet.into())
    }

    pub fn binary(data: Bytes) -> Frame {
        Frame::Binary(data)
    }

    pub fn control(packet: &'static str) -> Frame {
        Frame::Text(Utf8Bytes::from_static(packet))
    }

    /// The open packet sent as the first packet of every session.
    pub fn open(
        sid: &str,
        upgrades: bool,
        ping_interval_ms: u64,
        ping_timeout_ms: u64,
        max_payload: usize,
    ) -> Frame {
        let upgrades = if upgrades { "[\"websocket\"]" } else { "[]" };
        Frame::Text(
            format!(
                "0{{\"sid\":\"{sid}\",\"upgrades\":{upgrades},\"pingInterval\":{ping_interval_ms},\"pingTimeout\":{ping_timeout_ms},\"maxPayload\":{max_payload}}}"
            )
            .into(),
        )
    }

    /// Bytes this frame occupies on a polling payload (approximately for
    /// binary), used to bound per-session queues.
    pub fn wire_len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => 1 + b.len().div_ceil(3) * 4,
        }
    }
}

/// A decoded text packet from a client. Server-only types (open, noop)
/// are refused: a client never sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    Close,
    Ping,
    /// `2probe`: the client tests a new WebSocket transport.
    PingProbe,
    Pong,
    /// `3probe` would only come from a server; accepted and ignored like the
    /// reference does with a stray pong.
    PongProbe,
    Message(&'a str),
    Upgrade,
    Noop,
}

/// Decodes one text packet (`"4hello"`, `"3"`, `"2probe"` ...).
pub fn decode_text(input: &str) -> Result<Packet<'_>, DecodeError> {
    let mut chars = input.char_indices();
    let Some((_, kind)) = chars.next() else {
        return Err(DecodeError::Empty);
    };
    // Slice after the whole first char: a client may send any char there
    // (`"é"` must be an unknown type, not a panic on a char boundary).
    let rest = &input[kind.len_utf8()..];
    match kind {
        '1' if rest.is_empty() => Ok(Packet::Close),
        '2' if rest.is_empty() => Ok(Packet::Ping),
        '2' if rest == "probe" => Ok(Packet::PingProbe),
        '3' if rest.is_empty() => Ok(Packet::Pong),
        '3' if rest == "probe" => Ok(Packet::PongProbe),
        '4' => Ok(Packet::Message(rest)),
        '5' if rest.is_empty() => Ok(Packet::Upgrade),
        // An open packet from a client, or a noop with data: ignored, as
        // the reference server ignores them.
        '0' | '6' => Ok(Packet::Noop),
        '1'..='5' => Err(DecodeError::UnexpectedData),
        _ => Err(DecodeError::UnknownType),
    }
}
