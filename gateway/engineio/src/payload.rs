//! Polling payloads: several packets in one HTTP body, separated by the
//! record separator `\x1e`; binary messages travel as `b` + base64.
//!
//! The decoder walks the body once, slicing at separators, and hands out
//! borrowed text or freshly decoded binary, one item at a time, so the
//! caller applies packets in order up to the first malformed one (then the
//! session is closed, as the reference server does).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;

use super::errors::DecodeError;
use super::packet::{decode_text, Frame, Packet};
use super::protocol::{Framing, Protocol};

pub const SEPARATOR: u8 = 0x1e;

/// One item of a decoded polling payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadItem<'a> {
    Packet(Packet<'a>),
    Binary(Bytes),
}

/// Decodes a POST body lazily, item by item: like the reference server,
/// the packets before a malformed one are delivered, then the session is
/// closed. An empty body yields one error.
pub fn decode_payload(body: &[u8]) -> impl Iterator<Item = Result<PayloadItem<'_>, DecodeError>> {
    let text = std::str::from_utf8(body);
    let (items, first_error) = match text {
        Ok(text) => (Some(text.split('\u{1e}')), None),
        Err(_) => (None, Some(Err(DecodeError::InvalidUtf8))),
    };
    first_error
        .into_iter()
        .chain(items.into_iter().flatten().map(decode_item))
}

/// Decodes one packet of a payload or one WebSocket text frame: `b` +
/// base64 is a binary message on both transports.
pub fn decode_item(item: &str) -> Result<PayloadItem<'_>, DecodeError> {
    if let Some(b64) = item.strip_prefix('b') {
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| DecodeError::InvalidBase64)?;
        return Ok(PayloadItem::Binary(Bytes::from(bytes)));
    }
    decode_text(item).map(PayloadItem::Packet)
}

/// Encodes queued frames into one polling response body.
pub fn encode_payload<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Bytes {
    let mut out: Vec<u8> = Vec::new();
    for (i, frame) in frames.into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match frame {
            Frame::Text(t) => out.extend_from_slice(t.as_bytes()),
            Frame::Binary(b) => {
                out.push(b'b');
                let start = out.len();
                out.resize(start + b.len().div_ceil(3) * 4, 0);
                // The slice is sized exactly for padded base64 output.
                let written = STANDARD
                    .encode_slice(b, &mut out[start..])
                    .unwrap_or_default();
                out.truncate(start + written);
            }
        }
    }
    Bytes::from(out)
}

/// A polling answer's body, framed for its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollBody {
    pub bytes: Bytes,
    /// The Engine.IO v3 binary form (`application/octet-stream`).
    pub binary: bool,
}

/// Encodes queued frames into one polling answer in the session's framing.
pub fn encode_for(framing: Framing, frames: &[Frame]) -> PollBody {
    match framing.protocol {
        Protocol::V4 => PollBody {
            bytes: encode_payload(frames),
            binary: false,
        },
        Protocol::V3 => {
            let (bytes, binary) = super::payload_v3::encode_payload(frames, framing.base64);
            PollBody { bytes, binary }
        }
    }
}

/// The items of a POST body, in the session's revision. `binary`: it came
/// as `application/octet-stream` (only v3 has a binary form; the caller
/// refuses it for v4).
pub fn decode_for(
    protocol: Protocol,
    body: &[u8],
    binary: bool,
) -> Box<dyn Iterator<Item = Result<PayloadItem<'_>, DecodeError>> + '_> {
    match protocol {
        Protocol::V4 => Box::new(decode_payload(body)),
        Protocol::V3 => Box::new(super::payload_v3::decode_payload(body, binary)),
    }
}

/// Decodes one WebSocket text frame in the session's revision.
pub fn decode_item_for(protocol: Protocol, item: &str) -> Result<PayloadItem<'_>, DecodeError> {
    match protocol {
        Protocol::V4 => decode_item(item),
        Protocol::V3 => super::payload_v3::decode_item(item),
    }
}
