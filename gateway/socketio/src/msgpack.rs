//! The msgpack codec (`--parser msgpack`): the wire form of the
//! `socket.io-msgpack-parser` npm package (3.x). Pure functions, no I/O.
//!
//! Each Socket.IO packet is one msgpack map `{type, nsp, data, id}` sent as
//! one Engine.IO binary message. Binary values inside `data` are msgpack
//! `bin` values in place: no attachments follow, and the packet types are
//! only CONNECT, DISCONNECT, EVENT, ACK and CONNECT_ERROR (0..=4).
//!
//! Inside the gateway the arguments stay a [`Payload`] (a JSON array text,
//! binaries as `{"_placeholder":true,"num":N}` plus attachments), so the
//! application, the Upstream hooks, the Push API and the recovery log see
//! the same thing whichever parser the clients speak: decoding turns `bin`
//! values into placeholders (numbered in order of appearance), encoding
//! turns placeholders back into `bin`.
//!
//! The decoder accepts what the reference decoder (notepack.io plus the
//! package's `checkPacket`) accepts, and maps the values JavaScript would
//! see to JSON the way `JSON.stringify` would show them: `undefined` is
//! `null` in an array and leaves out a map entry, a `Date` is its ISO
//! string, a non-finite float is `null`, an ext value that is not an
//! ArrayBuffer is `[type, <binary>]`. It refuses more than the reference
//! where a value has no JSON form or would break the placeholders (see
//! `docs/PROTOCOL_NOTES.md`): nesting past [`MAX_DEPTH`], more than
//! [`MAX_BINARIES`] binaries, map keys that are not strings, numbers,
//! booleans or nil, a key twice in a map, a map with `"_placeholder": true`, reserved or
//! non-scalar event names, negative ack ids, binaries in a CONNECT.

use std::borrow::Cow;
use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Write as _;

use bytes::Bytes;
use rmp::encode::{self as enc, ByteBuf, ValueWriteError};
use rmp::Marker;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::packet::{event_name, Packet, PacketError, Payload};
use ringway_engineio::Frame;

/// Containers (arrays, maps) nested in a packet, at most (the top-level
/// map is the first). Keeps the JSON made from it within serde_json's
/// recursion limit (128), which the rest of the gateway parses it with.
pub const MAX_DEPTH: usize = 100;

/// Binary values in one packet, at most. The input size bounds them
/// already (two bytes each at least); this bounds what one packet may cost
/// in placeholders and attachment handles.
pub const MAX_BINARIES: usize = 1_000;

/// Socket.IO packet types the msgpack parser knows.
const CONNECT: u8 = 0;
const DISCONNECT: u8 = 1;
const EVENT: u8 = 2;
const ACK: u8 = 3;
const CONNECT_ERROR: u8 = 4;

/// The msgpack extension type notepack.io gives `undefined` (fixext 1),
/// `Date` (fixext 8) and `ArrayBuffer` (ext 8/16/32).
const EXT_JS: i8 = 0;

// ---------------------------------------------------------------------------
// Decoding

/// A packet decoded from a client, owning what a [`Packet`] borrows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    nsp: String,
    body: Body,
    attachments: Vec<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Connect(Option<String>),
    Disconnect,
    Event {
        id: Option<u64>,
        name: String,
        args: String,
    },
    Ack {
        id: Option<u64>,
        args: String,
    },
    ConnectError,
}

impl Decoded {
    /// The packet, as the default codec would have decoded it (with its
    /// attachment count), and the binaries its placeholders point at. The
    /// event name and arguments move out: call it once.
    pub fn take(&mut self) -> (Packet<'_>, Vec<Bytes>) {
        let Decoded {
            nsp,
            body,
            attachments,
        } = self;
        let attachments = std::mem::take(attachments);
        let count = attachments.len();
        let nsp = nsp.as_str();
        let packet = match body {
            Body::Connect(auth) => Packet::Connect {
                nsp,
                auth: auth.as_deref(),
            },
            Body::Disconnect => Packet::Disconnect { nsp },
            Body::Event { id, name, args } => Packet::Event {
                nsp,
                id: *id,
                name: std::mem::take(name),
                args: std::mem::take(args),
                attachments: count,
            },
            Body::Ack { id, args } => Packet::Ack {
                nsp,
                id: *id,
                args: std::mem::take(args),
                attachments: count,
            },
            Body::ConnectError => Packet::ConnectError { nsp },
        };
        (packet, attachments)
    }
}

/// What a decoded value was, as far as the packet checks care.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// JavaScript's `undefined`: nothing was written.
    Undefined,
    Int(i128),
    Float(f64),
    Str,
    Array,
    Map,
    /// Anything else (nil, booleans, binaries, dates, ext values).
    Other,
}

fn malformed(what: &'static str) -> PacketError {
    PacketError::Msgpack(what)
}

/// Decodes one packet (one binary message) and checks it as the
/// reference's `checkPacket` does, plus Ringway's own rules.
pub fn decode(input: &Bytes) -> Result<Decoded, PacketError> {
    let mut r = Reader { input, pos: 0 };
    let entries = match r.marker()? {
        Marker::FixMap(n) => usize::from(n),
        Marker::Map16 => usize::from(r.u16()?),
        Marker::Map32 => r.u32()? as usize,
        _ => return Err(malformed("a packet is a map")),
    };
    r.fits(entries, 2)?;
    // As in JavaScript, a key given twice keeps its last value.
    let mut kind = Kind::Undefined;
    let mut nsp: Option<String> = None;
    let mut id = Kind::Undefined;
    let mut data = (Kind::Undefined, String::new(), Vec::new());
    let mut scratch = String::new();
    for _ in 0..entries {
        scratch.clear();
        let (key, is_str) = r.key(&mut scratch)?;
        let key = is_str.then_some(key);
        let mut out = String::new();
        let mut bins = Vec::new();
        let value = r.value(&mut out, &mut bins, 1)?;
        match key.as_deref() {
            Some("type") => kind = value,
            Some("id") => id = value,
            Some("nsp") => {
                nsp = match value {
                    Kind::Str => {
                        Some(serde_json::from_str(&out).map_err(|_| malformed("namespace"))?)
                    }
                    _ => None,
                }
            }
            Some("data") => data = (value, out, bins),
            _ => {}
        }
    }
    if r.pos != input.len() {
        return Err(malformed("trailing bytes"));
    }

    let kind = match kind {
        Kind::Int(n) if (0..=i128::from(CONNECT_ERROR)).contains(&n) => n as u8,
        Kind::Float(f) if f.fract() == 0.0 && (0.0..=f64::from(CONNECT_ERROR)).contains(&f) => {
            f as u8
        }
        _ => return Err(PacketError::UnknownType),
    };
    let nsp = nsp.ok_or(PacketError::Msgpack("the namespace is a string"))?;
    let (shape, json, attachments) = data;
    let valid = match kind {
        CONNECT => matches!(shape, Kind::Undefined | Kind::Map),
        DISCONNECT => shape == Kind::Undefined,
        CONNECT_ERROR => matches!(shape, Kind::Str | Kind::Map),
        _ => shape == Kind::Array,
    };
    if !valid {
        return Err(PacketError::InvalidPayload);
    }
    // A CONNECT payload is the socket's auth, JSON for the application
    // and the Upstream hook, with nowhere for attachments to go (the
    // default parser's CONNECT cannot carry binaries either).
    if kind == CONNECT && !attachments.is_empty() {
        return Err(PacketError::UnexpectedBinary);
    }
    let id = match id {
        Kind::Undefined => None,
        Kind::Int(n) => Some(u64::try_from(n).map_err(|_| PacketError::InvalidAckId)?),
        // Below 2^64 exactly: `u64::MAX as f64` rounds up to 2^64.
        Kind::Float(f) if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 => Some(f as u64),
        _ => return Err(PacketError::InvalidAckId),
    };
    let body = match kind {
        CONNECT => Body::Connect((shape == Kind::Map).then_some(json)),
        DISCONNECT => Body::Disconnect,
        EVENT => {
            let (name, args) = event_name(&json)?;
            Body::Event { id, name, args }
        }
        ACK => Body::Ack { id, args: json },
        _ => Body::ConnectError,
    };
    Ok(Decoded {
        nsp,
        body,
        attachments,
    })
}

/// A cursor over one message; binaries are slices of it (no copies).
struct Reader<'a> {
    input: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.input.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PacketError> {
        if n > self.left() {
            return Err(malformed("truncated"));
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.input[start..self.pos])
    }

    fn take_bytes(&mut self, n: usize) -> Result<Bytes, PacketError> {
        if n > self.left() {
            return Err(malformed("truncated"));
        }
        let start = self.pos;
        self.pos += n;
        Ok(self.input.slice(start..self.pos))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PacketError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn marker(&mut self) -> Result<Marker, PacketError> {
        Ok(Marker::from_u8(self.array::<1>()?[0]))
    }

    fn u8(&mut self) -> Result<u8, PacketError> {
        Ok(self.array::<1>()?[0])
    }

    fn i8(&mut self) -> Result<i8, PacketError> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, PacketError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, PacketError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Checks that `count` items of at least `each` bytes can follow,
    /// before anything is done for them: a declared length never makes
    /// the decoder work or allocate past the input.
    fn fits(&self, count: usize, each: usize) -> Result<(), PacketError> {
        if count.saturating_mul(each) > self.left() {
            return Err(malformed("length past the end"));
        }
        Ok(())
    }

    fn str_len(&mut self, marker: Marker) -> Result<Option<usize>, PacketError> {
        Ok(Some(match marker {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => usize::from(self.u8()?),
            Marker::Str16 => usize::from(self.u16()?),
            Marker::Str32 => self.u32()? as usize,
            _ => return Ok(None),
        }))
    }

    /// A string, with invalid UTF-8 replaced as Node's `Buffer.toString`
    /// does.
    fn string(&mut self, len: usize) -> Result<Cow<'_, str>, PacketError> {
        Ok(String::from_utf8_lossy(self.take(len)?))
    }

    /// A map key, written as a JSON string; returns its text and whether
    /// it was a string (the packet's own keys are). Numbers, booleans and
    /// nil become their text as JavaScript's property keys do; other keys
    /// are refused.
    fn key(&mut self, out: &mut String) -> Result<(String, bool), PacketError> {
        let marker = self.marker()?;
        if let Some(len) = self.str_len(marker)? {
            let key = self.string(len)?.into_owned();
            push_json_str(out, &key);
            return Ok((key, true));
        }
        let text = match marker {
            Marker::Null => "null".to_owned(),
            Marker::True => "true".to_owned(),
            Marker::False => "false".to_owned(),
            m => match self.int(m)? {
                Some(n) => n.to_string(),
                None => return Err(malformed("map key")),
            },
        };
        push_json_str(out, &text);
        Ok((text, false))
    }

    fn int(&mut self, marker: Marker) -> Result<Option<i128>, PacketError> {
        Ok(Some(match marker {
            Marker::FixPos(n) => i128::from(n),
            Marker::FixNeg(n) => i128::from(n),
            Marker::U8 => i128::from(self.u8()?),
            Marker::U16 => i128::from(self.u16()?),
            Marker::U32 => i128::from(self.u32()?),
            Marker::U64 => i128::from(u64::from_be_bytes(self.array()?)),
            Marker::I8 => i128::from(self.i8()?),
            Marker::I16 => i128::from(i16::from_be_bytes(self.array()?)),
            Marker::I32 => i128::from(i32::from_be_bytes(self.array()?)),
            Marker::I64 => i128::from(i64::from_be_bytes(self.array()?)),
            _ => return Ok(None),
        }))
    }

    /// One value as JSON appended to `out` (nothing for `undefined`),
    /// binaries as placeholders into `bins`. `depth` counts the containers
    /// this value is inside.
    fn value(
        &mut self,
        out: &mut String,
        bins: &mut Vec<Bytes>,
        depth: usize,
    ) -> Result<Kind, PacketError> {
        let marker = self.marker()?;
        if let Some(n) = self.int(marker)? {
            let _ = write!(out, "{n}");
            return Ok(Kind::Int(n));
        }
        if let Some(len) = self.str_len(marker)? {
            let s = self.string(len)?;
            push_json_str(out, &s);
            return Ok(Kind::Str);
        }
        match marker {
            Marker::Null => out.push_str("null"),
            Marker::True => out.push_str("true"),
            Marker::False => out.push_str("false"),
            Marker::F32 => {
                let f = f64::from(f32::from_be_bytes(self.array()?));
                push_f64(out, f);
                return Ok(Kind::Float(f));
            }
            Marker::F64 => {
                let f = f64::from_be_bytes(self.array()?);
                push_f64(out, f);
                return Ok(Kind::Float(f));
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let len = match marker {
                    Marker::Bin8 => usize::from(self.u8()?),
                    Marker::Bin16 => usize::from(self.u16()?),
                    _ => self.u32()? as usize,
                };
                let data = self.take_bytes(len)?;
                push_binary(out, bins, data)?;
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                let len = match marker {
                    Marker::FixArray(n) => usize::from(n),
                    Marker::Array16 => usize::from(self.u16()?),
                    _ => self.u32()? as usize,
                };
                self.fits(len, 1)?;
                if depth >= MAX_DEPTH {
                    return Err(malformed("nested too deep"));
                }
                out.push('[');
                for i in 0..len {
                    if i > 0 {
                        out.push(',');
                    }
                    if self.value(out, bins, depth + 1)? == Kind::Undefined {
                        out.push_str("null");
                    }
                }
                out.push(']');
                return Ok(Kind::Array);
            }
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                let len = match marker {
                    Marker::FixMap(n) => usize::from(n),
                    Marker::Map16 => usize::from(self.u16()?),
                    _ => self.u32()? as usize,
                };
                self.fits(len, 2)?;
                if depth >= MAX_DEPTH {
                    return Err(malformed("nested too deep"));
                }
                out.push('{');
                let mut first = true;
                // A key twice would leave JSON whose first value (and its
                // binaries) no reader sees: refused.
                let mut keys = HashSet::new();
                for _ in 0..len {
                    let before = out.len();
                    if !first {
                        out.push(',');
                    }
                    let (key, _) = self.key(out)?;
                    // The gateway's own mark for binaries: a client may
                    // not fake one.
                    if key == "_placeholder" && self.input.get(self.pos) == Some(&0xc3) {
                        return Err(PacketError::IllegalAttachments);
                    }
                    if !keys.insert(key) {
                        return Err(malformed("a key twice in a map"));
                    }
                    out.push(':');
                    if self.value(out, bins, depth + 1)? == Kind::Undefined {
                        // JSON.stringify leaves such an entry out.
                        out.truncate(before);
                    } else {
                        first = false;
                    }
                }
                out.push('}');
                return Ok(Kind::Map);
            }
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => return self.ext(marker, out, bins, depth),
            _ => return Err(malformed("unknown marker")),
        }
        Ok(Kind::Other)
    }

    /// An ext value, as notepack.io decodes it.
    fn ext(
        &mut self,
        marker: Marker,
        out: &mut String,
        bins: &mut Vec<Bytes>,
        depth: usize,
    ) -> Result<Kind, PacketError> {
        let (len, fixed) = match marker {
            Marker::FixExt1 => (1, true),
            Marker::FixExt2 => (2, true),
            Marker::FixExt4 => (4, true),
            Marker::FixExt8 => (8, true),
            Marker::FixExt16 => (16, true),
            Marker::Ext8 => (usize::from(self.u8()?), false),
            Marker::Ext16 => (usize::from(self.u16()?), false),
            _ => (self.u32()? as usize, false),
        };
        let kind = self.i8()?;
        match (kind, fixed, len) {
            (EXT_JS, true, 1) => {
                self.take(1)?;
                Ok(Kind::Undefined)
            }
            (EXT_JS, true, 8) => {
                let ms = i64::from_be_bytes(self.array()?);
                match iso_date(ms) {
                    Some(date) => push_json_str(out, &date),
                    None => out.push_str("null"),
                }
                Ok(Kind::Other)
            }
            (EXT_JS, false, _) => {
                let data = self.take_bytes(len)?;
                push_binary(out, bins, data)?;
                Ok(Kind::Other)
            }
            _ => {
                // `[type, <binary>]`, as notepack.io gives it.
                if depth >= MAX_DEPTH {
                    return Err(malformed("nested too deep"));
                }
                let data = self.take_bytes(len)?;
                let _ = write!(out, "[{kind},");
                push_binary(out, bins, data)?;
                out.push(']');
                Ok(Kind::Array)
            }
        }
    }
}

fn push_binary(out: &mut String, bins: &mut Vec<Bytes>, data: Bytes) -> Result<(), PacketError> {
    if bins.len() >= MAX_BINARIES {
        return Err(PacketError::IllegalAttachments);
    }
    let _ = write!(out, r#"{{"_placeholder":true,"num":{}}}"#, bins.len());
    bins.push(data);
    Ok(())
}

/// A float as JSON; like `JSON.stringify`, `null` when not finite.
fn push_f64(out: &mut String, f: f64) {
    match serde_json::Number::from_f64(f) {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if c < ' ' => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escaped);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// A JavaScript time value (ms since the epoch) as `Date.toISOString`
/// writes it; `None` outside the range of a `Date` (an Invalid Date, which
/// `JSON.stringify` shows as `null`).
pub fn iso_date(ms: i64) -> Option<String> {
    const MAX_MS: i64 = 8_640_000_000_000_000;
    if !(-MAX_MS..=MAX_MS).contains(&ms) {
        return None;
    }
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Days to a civil date (proleptic Gregorian), after H. Hinnant.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let year = if (0..=9_999).contains(&year) {
        format!("{year:04}")
    } else if year < 0 {
        format!("-{:06}", -year)
    } else {
        format!("+{year:06}")
    };
    Some(format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    ))
}

// ---------------------------------------------------------------------------
// Encoding

/// A JSON value in document order (serde_json's own maps would sort the
/// keys), strings borrowed from the text where they need no unescaping.
#[derive(Debug, Clone, PartialEq)]
enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::UInt(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Json::Float(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Cow<'de, str>, Json<'de>>()? {
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

/// Writing to a `ByteBuf` cannot fail.
fn ok<T>(result: Result<T, ValueWriteError<Infallible>>) -> T {
    match result {
        Ok(value) => value,
        Err(ValueWriteError::InvalidMarkerWrite(e) | ValueWriteError::InvalidDataWrite(e)) => {
            match e {}
        }
    }
}

fn write_str(buf: &mut ByteBuf, s: &str) {
    ok(enc::write_str(buf, s));
}

/// A length as msgpack writes it (a packet is far below 4 GiB).
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn write_array_len(buf: &mut ByteBuf, len: usize) {
    ok(enc::write_array_len(buf, len32(len)));
}

fn write_map_len(buf: &mut ByteBuf, len: usize) {
    ok(enc::write_map_len(buf, len32(len)));
}

/// Writes JSON values as msgpack, placeholders that point at one of
/// `attachments` as `bin`.
struct Writer<'a> {
    buf: ByteBuf,
    attachments: &'a [Bytes],
}

impl Writer<'_> {
    fn value(&mut self, v: &Json<'_>) {
        match v {
            Json::Null => {
                let Ok(()) = enc::write_nil(&mut self.buf);
            }
            Json::Bool(b) => {
                let Ok(()) = enc::write_bool(&mut self.buf, *b);
            }
            Json::Int(n) => {
                ok(enc::write_sint(&mut self.buf, *n));
            }
            Json::UInt(n) => {
                ok(enc::write_uint(&mut self.buf, *n));
            }
            Json::Float(f) => ok(enc::write_f64(&mut self.buf, *f)),
            Json::Str(s) => write_str(&mut self.buf, s),
            Json::Array(items) => {
                write_array_len(&mut self.buf, items.len());
                for item in items {
                    self.value(item);
                }
            }
            Json::Object(entries) => {
                if let Some(index) = self.binary(entries) {
                    let data = &self.attachments[index];
                    ok(enc::write_bin(&mut self.buf, data));
                    return;
                }
                write_map_len(&mut self.buf, entries.len());
                for (key, value) in entries {
                    write_str(&mut self.buf, key);
                    self.value(value);
                }
            }
        }
    }

    /// The attachment a placeholder object stands for, if it is one.
    fn binary(&self, entries: &[(Cow<'_, str>, Json<'_>)]) -> Option<usize> {
        let field = |name: &str| entries.iter().rev().find(|(k, _)| k == name).map(|e| &e.1);
        if field("_placeholder") != Some(&Json::Bool(true)) {
            return None;
        }
        match field("num") {
            Some(Json::UInt(n)) => usize::try_from(*n)
                .ok()
                .filter(|&n| n < self.attachments.len()),
            _ => None,
        }
    }
}

impl<'a> Writer<'a> {
    /// A packet of `entries` fields; the fields follow in the order the
    /// reference server writes them (its packet objects' key order), so
    /// the same packet is the same bytes.
    fn packet(entries: usize, attachments: &'a [Bytes]) -> Writer<'a> {
        let mut w = Writer {
            buf: ByteBuf::with_capacity(64),
            attachments,
        };
        write_map_len(&mut w.buf, entries);
        w
    }

    fn kind(&mut self, kind: u8) {
        write_str(&mut self.buf, "type");
        ok(enc::write_uint(&mut self.buf, u64::from(kind)));
    }

    fn nsp(&mut self, nsp: &str) {
        write_str(&mut self.buf, "nsp");
        write_str(&mut self.buf, nsp);
    }

    fn id(&mut self, id: Option<u64>) {
        if let Some(id) = id {
            write_str(&mut self.buf, "id");
            ok(enc::write_uint(&mut self.buf, id));
        }
    }

    /// The `data` key; its value follows.
    fn data(&mut self) {
        write_str(&mut self.buf, "data");
    }

    /// An array: `first`, these values, then `last`.
    fn array(&mut self, values: &[Json<'_>], first: Option<&str>, last: Option<&str>) {
        let len = values.len() + usize::from(first.is_some()) + usize::from(last.is_some());
        write_array_len(&mut self.buf, len);
        if let Some(first) = first {
            write_str(&mut self.buf, first);
        }
        for value in values {
            self.value(value);
        }
        if let Some(last) = last {
            write_str(&mut self.buf, last);
        }
    }

    fn frame(self) -> Frame {
        Frame::binary(Bytes::from(self.buf.into_vec()))
    }
}

/// The arguments of a payload; none if its text is not a JSON array
/// (every payload the gateway makes is one).
fn args_of(args: &Payload) -> Vec<Json<'_>> {
    serde_json::from_str(args.json()).unwrap_or_default()
}

/// An EVENT, `{type, data, [id,] nsp}`: `data` is the event name, the
/// arguments, then the recovery offset when there is one (connection state
/// recovery).
pub fn encode_event(
    nsp: &str,
    event: &str,
    args: &Payload,
    id: Option<u64>,
    offset: Option<&str>,
) -> Vec<Frame> {
    let values = args_of(args);
    let mut w = Writer::packet(3 + usize::from(id.is_some()), args.attachments());
    w.kind(EVENT);
    w.data();
    w.array(&values, Some(event), offset);
    w.id(id);
    w.nsp(nsp);
    vec![w.frame()]
}

/// An ACK of the client's event `id`, `{id, type, data, nsp}`.
pub fn encode_ack(nsp: &str, id: u64, args: &Payload) -> Vec<Frame> {
    let values = args_of(args);
    let mut w = Writer::packet(4, args.attachments());
    w.id(Some(id));
    w.kind(ACK);
    w.data();
    w.array(&values, None, None);
    w.nsp(nsp);
    vec![w.frame()]
}

/// The CONNECT answer, `{type, data, nsp}`; `data` is a JSON object text
/// (`{"sid":...}`), or empty for none.
pub fn encode_connect(nsp: &str, data: &str) -> Frame {
    let value: Option<Json<'_>> = serde_json::from_str(data).ok();
    let mut w = Writer::packet(2 + usize::from(value.is_some()), &[]);
    w.kind(CONNECT);
    if let Some(value) = &value {
        w.data();
        w.value(value);
    }
    w.nsp(nsp);
    w.frame()
}

/// CONNECT_ERROR, `{type, nsp, data}` with `data` `{message[, data]}`.
pub fn encode_connect_error(nsp: &str, message: &str, data: Option<&serde_json::Value>) -> Frame {
    let text = data.map(serde_json::Value::to_string);
    let extra: Option<Json<'_>> = text.as_deref().and_then(|t| serde_json::from_str(t).ok());
    let mut w = Writer::packet(3, &[]);
    w.kind(CONNECT_ERROR);
    w.nsp(nsp);
    w.data();
    write_map_len(&mut w.buf, 1 + usize::from(extra.is_some()));
    write_str(&mut w.buf, "message");
    write_str(&mut w.buf, message);
    if let Some(extra) = &extra {
        write_str(&mut w.buf, "data");
        w.value(extra);
    }
    w.frame()
}

/// DISCONNECT of a namespace, `{type, nsp}`.
pub fn encode_disconnect(nsp: &str) -> Frame {
    let mut w = Writer::packet(2, &[]);
    w.kind(DISCONNECT);
    w.nsp(nsp);
    w.frame()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_as_javascript_writes_them() {
        assert_eq!(iso_date(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            iso_date(1_700_000_000_123).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(iso_date(-1).as_deref(), Some("1969-12-31T23:59:59.999Z"));
        assert_eq!(
            iso_date(951_782_400_000).as_deref(),
            Some("2000-02-29T00:00:00.000Z")
        );
        assert_eq!(
            iso_date(-62_198_755_200_000).as_deref(),
            Some("-000001-01-01T00:00:00.000Z")
        );
        assert_eq!(
            iso_date(253_402_300_800_000).as_deref(),
            Some("+010000-01-01T00:00:00.000Z")
        );
        assert_eq!(
            iso_date(8_640_000_000_000_000).as_deref(),
            Some("+275760-09-13T00:00:00.000Z")
        );
        assert_eq!(iso_date(8_640_000_000_000_001), None);
        assert_eq!(iso_date(i64::MIN), None);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\n\u{1}\u{1f}é🚀\u{7f}");
        assert_eq!(
            serde_json::from_str::<String>(&out).expect("valid JSON"),
            "a\"b\\c\n\u{1}\u{1f}é🚀\u{7f}"
        );
    }
}
