//! Socket.IO v5 packet codec (v4's, for v2 clients, is the same but for
//! CONNECT and its errors: `v2.rs`): pure functions, no I/O.
//!
//! Wire form: `<type>[<attachments>-][<namespace>,][<ack id>][JSON]`.
//! Decoding borrows the input and checks the JSON payload against what the
//! packet type allows, as the reference parser does. Event arguments stay
//! raw JSON text (an array) with the binary attachments beside them: the
//! echo of an event re-encodes nothing it does not have to.

use bytes::Bytes;
use serde_json::value::RawValue;

use ringway_engineio::Frame;

pub use ringway_socketio_codec::{
    decode, event_name, header as read_header, parse_array, write_header, Header, Packet,
    PacketError, PacketKind, MAX_ATTACHMENTS, RESERVED_EVENTS,
};

/// Arguments of an event or ack: a JSON array, with binary attachments
/// referenced from it by `{"_placeholder":true,"num":K}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    json: String,
    attachments: Vec<Bytes>,
}

impl Payload {
    /// Arguments from a JSON array text. The caller vouches it is an array
    /// (use [`Payload::from_values`] otherwise).
    pub fn from_json_array(json: String) -> Payload {
        Payload {
            json,
            attachments: Vec::new(),
        }
    }

    /// Arguments from values.
    pub fn from_values(values: &[serde_json::Value]) -> Payload {
        Payload::from_json_array(serde_json::to_string(values).unwrap_or_else(|_| "[]".into()))
    }

    pub fn empty() -> Payload {
        Payload::from_json_array("[]".to_owned())
    }

    /// Arguments with binary attachments; `json` must reference every
    /// attachment by placeholder.
    pub fn with_attachments(json: String, attachments: Vec<Bytes>) -> Payload {
        Payload { json, attachments }
    }

    /// Arguments of a BINARY_EVENT / BINARY_ACK: checks that every
    /// placeholder points at one of the attachments, as the reference's
    /// reconstruction does. Attachments that no placeholder references are
    /// dropped when there are no placeholders at all.
    pub fn checked(json: String, attachments: Vec<Bytes>) -> Result<Payload, PacketError> {
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|_| PacketError::InvalidJson)?;
        let mut found = 0;
        check_placeholders(&value, attachments.len(), 0, &mut found)?;
        let attachments = if found == 0 { Vec::new() } else { attachments };
        Ok(Payload { json, attachments })
    }

    pub fn json(&self) -> &str {
        &self.json
    }

    pub fn attachments(&self) -> &[Bytes] {
        &self.attachments
    }

    /// The JSON array text and the attachments, without copies.
    pub fn into_parts(self) -> (String, Vec<Bytes>) {
        (self.json, self.attachments)
    }

    /// The arguments as JSON values (placeholders left in place).
    pub fn values(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.json).unwrap_or_default()
    }

    /// The first argument as a string, if it is one.
    pub fn first_str(&self) -> Option<String> {
        let items: Vec<&RawValue> = serde_json::from_str(&self.json).ok()?;
        serde_json::from_str::<String>(items.first()?.get()).ok()
    }

    /// Appends one argument (for example a recovery offset).
    pub fn push_json(&mut self, value: &str) {
        if let Some(body) = self.json.trim_end().strip_suffix(']') {
            let has_items = !body.trim_end().ends_with('[');
            let mut json = String::with_capacity(self.json.len() + value.len() + 1);
            json.push_str(body);
            if has_items {
                json.push(',');
            }
            json.push_str(value);
            json.push(']');
            self.json = json;
        }
    }
}

fn check_placeholders(
    v: &serde_json::Value,
    count: usize,
    depth: usize,
    found: &mut usize,
) -> Result<(), PacketError> {
    use serde_json::Value;
    if depth > 128 {
        return Err(PacketError::InvalidPayload);
    }
    match v {
        Value::Object(map) => {
            if map.get("_placeholder") == Some(&Value::Bool(true)) {
                let ok = map
                    .get("num")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| (n as usize) < count);
                *found += 1;
                return if ok {
                    Ok(())
                } else {
                    Err(PacketError::IllegalAttachments)
                };
            }
            map.values()
                .try_for_each(|x| check_placeholders(x, count, depth + 1, found))
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|x| check_placeholders(x, count, depth + 1, found)),
        _ => Ok(()),
    }
}

/// Writes the packet header after the Engine.IO `4`.
/// The Engine.IO message prefix, then the packet header.
fn header(out: &mut String, kind: PacketKind, attachments: usize, nsp: &str, id: Option<u64>) {
    out.push('4');
    write_header(out, kind, attachments, nsp, id);
}

/// The frames of an EVENT (or BINARY_EVENT when there are attachments):
/// the text packet first, then one binary message per attachment.
pub fn encode_event(nsp: &str, event: &str, args: &Payload, id: Option<u64>) -> Vec<Frame> {
    encode_event_with(nsp, event, args, id, None)
}

/// A recoverable EVENT: the arguments, then the event's log offset as one
/// more string argument (connection state recovery: the client remembers
/// the last one it saw).
pub fn encode_recoverable(nsp: &str, event: &str, args: &Payload, offset: &str) -> Vec<Frame> {
    encode_event_with(nsp, event, args, None, Some(offset))
}

fn encode_event_with(
    nsp: &str,
    event: &str,
    args: &Payload,
    id: Option<u64>,
    offset: Option<&str>,
) -> Vec<Frame> {
    let name = serde_json::to_string(event).unwrap_or_else(|_| "\"\"".into());
    let inner = args
        .json
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or("");
    let extra = offset.map_or(0, |o| o.len() + 3);
    let mut out = String::with_capacity(16 + nsp.len() + name.len() + args.json.len() + extra);
    header(&mut out, PacketKind::Event, args.attachments.len(), nsp, id);
    out.push('[');
    out.push_str(&name);
    if !inner.trim().is_empty() {
        out.push(',');
        out.push_str(inner);
    }
    if let Some(offset) = offset {
        // Offsets are `digits-digits`: nothing to escape.
        out.push_str(",\"");
        out.push_str(offset);
        out.push('"');
    }
    out.push(']');
    frames_with_attachments(out, &args.attachments)
}

/// The frames of an ACK (or BINARY_ACK).
pub fn encode_ack(nsp: &str, id: u64, args: &Payload) -> Vec<Frame> {
    let mut out = String::with_capacity(16 + nsp.len() + args.json.len());
    header(
        &mut out,
        PacketKind::Ack,
        args.attachments.len(),
        nsp,
        Some(id),
    );
    out.push_str(&args.json);
    frames_with_attachments(out, &args.attachments)
}

fn frames_with_attachments(text: String, attachments: &[Bytes]) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(1 + attachments.len());
    frames.push(Frame::encoded_message(text));
    frames.extend(attachments.iter().cloned().map(Frame::binary));
    frames
}

/// CONNECT answer: `40/nsp,{"sid":"..."}`.
pub fn encode_connect(nsp: &str, data: &str) -> Frame {
    let mut out = String::with_capacity(8 + nsp.len() + data.len());
    header(&mut out, PacketKind::Connect, 0, nsp, None);
    out.push_str(data);
    Frame::encoded_message(out)
}

/// CONNECT_ERROR: `44/nsp,{"message":"..."}` (with `data` when given).
pub fn encode_connect_error(nsp: &str, message: &str, data: Option<&serde_json::Value>) -> Frame {
    let mut body = serde_json::Map::new();
    body.insert("message".into(), serde_json::Value::String(message.into()));
    if let Some(d) = data {
        body.insert("data".into(), d.clone());
    }
    let json = serde_json::Value::Object(body).to_string();
    let mut out = String::with_capacity(8 + nsp.len() + json.len());
    header(&mut out, PacketKind::ConnectError, 0, nsp, None);
    out.push_str(&json);
    Frame::encoded_message(out)
}

/// CONNECT_ERROR with a payload already encoded as JSON (Socket.IO v2
/// clients get a string).
pub fn encode_connect_error_payload(nsp: &str, json: &str) -> Frame {
    let mut out = String::with_capacity(8 + nsp.len() + json.len());
    header(&mut out, PacketKind::ConnectError, 0, nsp, None);
    out.push_str(json);
    Frame::encoded_message(out)
}

/// DISCONNECT: `41` or `41/nsp,`.
pub fn encode_disconnect(nsp: &str) -> Frame {
    let mut out = String::with_capacity(4 + nsp.len());
    header(&mut out, PacketKind::Disconnect, 0, nsp, None);
    Frame::encoded_message(out)
}
