//! Unit and property tests of the two pure codecs, through their public API
//! only: the Engine.IO packet and polling payload codec
//! (`engineio::{packet, payload}`) and the Socket.IO packet codec
//! (`socketio::packet`). No I/O, no gateway process.

use bytes::Bytes;
use proptest::prelude::*;
use ringway_gateway::engineio::packet::{decode_text, Frame, Packet as EioPacket};
use ringway_gateway::engineio::payload::{
    decode_item, decode_payload, encode_payload, PayloadItem, SEPARATOR,
};
use ringway_gateway::engineio::DecodeError;
use ringway_gateway::socketio::packet::{
    decode, encode_ack, encode_connect, encode_connect_error, encode_disconnect, encode_event,
    event_name, Packet, PacketError, Payload, MAX_ATTACHMENTS, RESERVED_EVENTS,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// helpers

fn text(frame: &Frame) -> &str {
    match frame {
        Frame::Text(t) => t.as_str(),
        Frame::Binary(b) => panic!("expected a text frame, got binary {b:?}"),
    }
}

fn binary(frame: &Frame) -> &Bytes {
    match frame {
        Frame::Binary(b) => b,
        Frame::Text(t) => panic!("expected a binary frame, got text {:?}", t.as_str()),
    }
}

/// The Socket.IO packet inside an Engine.IO text frame, read the way the
/// gateway reads a client's frame: Engine.IO first, then Socket.IO.
fn sio_of(frame: &Frame) -> Result<Packet<'_>, PacketError> {
    match decode_text(text(frame)) {
        Ok(EioPacket::Message(m)) => decode(m),
        other => panic!("expected an Engine.IO message, got {other:?}"),
    }
}

fn items(body: &[u8]) -> Vec<Result<PayloadItem<'_>, DecodeError>> {
    decode_payload(body).collect()
}

/// What a caller applies: the items in order up to and including the first
/// error.
fn until_first_error(body: &[u8]) -> Vec<Result<PayloadItem<'_>, DecodeError>> {
    let mut out = Vec::new();
    for item in decode_payload(body) {
        let stop = item.is_err();
        out.push(item);
        if stop {
            break;
        }
    }
    out
}

fn msg(s: &str) -> Result<PayloadItem<'_>, DecodeError> {
    Ok(PayloadItem::Packet(EioPacket::Message(s)))
}

fn bin(b: &[u8]) -> Result<PayloadItem<'static>, DecodeError> {
    Ok(PayloadItem::Binary(Bytes::copy_from_slice(b)))
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
}

fn placeholder(n: usize) -> Value {
    json!({"_placeholder": true, "num": n})
}

// ---------------------------------------------------------------------------
// strategies

/// Characters that stress a JSON / wire codec, mixed with any char.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        2 => prop::sample::select(vec![
            '"', '\\', '\u{1e}', '\0', '\n', '\r', '\t', '\u{7f}', '\u{2028}', '\u{feff}', 'é',
            '😀', '[', ']', '{', '}', ',', ':', '/', '-', '0', '9', 'b', ' ',
        ]),
        2 => prop::char::range('a', 'z'),
    ]
}

/// Any unicode string, with a good share of quotes, backslashes, control
/// characters (the record separator included), brackets and digits.
fn tricky_string() -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..24).prop_map(String::from_iter)
}

/// Text an Engine.IO message may carry on a polling payload: anything but a
/// raw record separator, which the protocol forbids in text.
fn payload_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| s.replace('\u{1e}', "")),
        tricky_string().prop_map(|s| s.replace('\u{1e}', "")),
    ]
}

/// Numbers that serde_json reads back exactly (dyadic fractions with a short
/// mantissa stay on its exact fast path).
fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (any::<i32>(), 0u32..8).prop_map(|(m, e)| Value::from(m as f64 / f64::from(1u32 << e))),
        Just(json!(0.1)),
        Just(json!(-1e22)),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        tricky_string().prop_map(Value::String),
        // The separator, escaped, inside a string: must survive as is.
        Just(Value::String("a\u{1e}b\\u001e\"".into())),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((tricky_string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = serde_json::Map<String, Value>> {
    prop::collection::vec((tricky_string(), json_value()), 0..5)
        .prop_map(|kv| kv.into_iter().collect())
}

/// `/` or a namespace: a slash then anything but a comma (the namespace's
/// terminator) and the record separator.
fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_owned()),
        prop::collection::vec(tricky_char(), 0..12).prop_map(|cs| {
            let s: String = cs
                .into_iter()
                .filter(|c| *c != ',' && *c != '\u{1e}')
                .collect();
            format!("/{s}")
        }),
        Just("/chat".to_owned()),
        Just("/123".to_owned()),
    ]
}

fn event_name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        tricky_string(),
        any::<String>(),
        Just("message".to_owned()),
        Just("123".to_owned()),
    ]
    .prop_filter("reserved", |n| !RESERVED_EVENTS.contains(&n.as_str()))
}

#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Control(&'static str),
}

fn eio_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        3 => payload_text().prop_map(Msg::Text),
        2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Msg::Binary),
        1 => prop::sample::select(vec![Frame::CLOSE, Frame::PING, Frame::PONG_PROBE, Frame::NOOP])
            .prop_map(Msg::Control),
    ]
}

// ===========================================================================
// Engine.IO: one packet

#[test]
fn eio_every_packet_type_decodes() {
    assert_eq!(decode_text("1"), Ok(EioPacket::Close));
    assert_eq!(decode_text("2"), Ok(EioPacket::Ping));
    assert_eq!(decode_text("2probe"), Ok(EioPacket::PingProbe));
    assert_eq!(decode_text("3"), Ok(EioPacket::Pong));
    assert_eq!(decode_text("3probe"), Ok(EioPacket::PongProbe));
    assert_eq!(decode_text("4"), Ok(EioPacket::Message("")));
    assert_eq!(decode_text("4hello"), Ok(EioPacket::Message("hello")));
    assert_eq!(
        decode_text("42[\"é😀\"]"),
        Ok(EioPacket::Message("2[\"é😀\"]"))
    );
    assert_eq!(decode_text("4probe"), Ok(EioPacket::Message("probe")));
    assert_eq!(decode_text("44"), Ok(EioPacket::Message("4")));
    assert_eq!(decode_text("5"), Ok(EioPacket::Upgrade));
    assert_eq!(decode_text("6"), Ok(EioPacket::Noop));
}

#[test]
fn eio_decode_errors() {
    assert_eq!(decode_text(""), Err(DecodeError::Empty));
    for unknown in ["7", "8", "9", "a", "x", "b", "{", " 4hello", "-1", "\u{1e}"] {
        assert_eq!(
            decode_text(unknown),
            Err(DecodeError::UnknownType),
            "{unknown:?}"
        );
    }
    // An open packet from a client and a noop with data are ignored (as
    // noops), as the reference server ignores them.
    for ignored in ["0", "0{}", "6x", "6 "] {
        assert_eq!(decode_text(ignored), Ok(EioPacket::Noop), "{ignored:?}");
    }
    // Only the message type carries data; the others carry nothing but
    // "probe" for ping and pong.
    for unexpected in [
        "1x", "1probe", "2x", "2probe ", "2PROBE", "3x", "3probex", "5x", "5probe",
    ] {
        assert_eq!(
            decode_text(unexpected),
            Err(DecodeError::UnexpectedData),
            "{unexpected:?}"
        );
    }
}

#[test]
fn eio_non_ascii_first_char_is_an_unknown_type_not_a_panic() {
    // A WebSocket text frame or a polling item may start with any char.
    for input in ["é", "é4", "😀", "\u{80}", "\u{2028}2", "４hello"] {
        let got = std::panic::catch_unwind(|| decode_text(input));
        assert_eq!(
            got.ok(),
            Some(Err(DecodeError::UnknownType)),
            "decode_text({input:?}) must refuse, not panic"
        );
    }
}

#[test]
fn eio_frame_builders() {
    assert_eq!(text(&Frame::message("hello")), "4hello");
    assert_eq!(text(&Frame::message("")), "4");
    assert_eq!(
        text(&Frame::encoded_message("42[\"x\"]".into())),
        "42[\"x\"]"
    );
    assert_eq!(text(&Frame::control(Frame::PING)), "2");
    assert_eq!(text(&Frame::control(Frame::CLOSE)), "1");
    assert_eq!(text(&Frame::control(Frame::NOOP)), "6");
    assert_eq!(text(&Frame::control(Frame::PONG_PROBE)), "3probe");
    let b = Frame::binary(Bytes::from_static(&[1, 2, 3]));
    assert_eq!(binary(&b).as_ref(), &[1, 2, 3]);

    let open = Frame::open("abcdefghijklmnopqrst", true, 25_000, 20_000, 1_000_000);
    let t = text(&open);
    assert!(t.starts_with('0'), "{t}");
    assert_eq!(
        parse(&t[1..]),
        json!({"sid": "abcdefghijklmnopqrst", "upgrades": ["websocket"],
               "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000000})
    );
    let open = Frame::open("s", false, 300, 200, 10);
    assert_eq!(parse(&text(&open)[1..])["upgrades"], json!([]));
}

// ===========================================================================
// Engine.IO: polling payloads

#[test]
fn payload_batching_with_the_record_separator() {
    assert_eq!(SEPARATOR, 0x1e);
    assert_eq!(
        items(b"4hello\x1e4world\x1ebAQID"),
        vec![msg("hello"), msg("world"), bin(&[1, 2, 3])]
    );
    assert_eq!(items(b"4hello"), vec![msg("hello")]);
    assert_eq!(
        items(b"2probe\x1e3\x1e5\x1e1\x1e6\x1e2"),
        vec![
            Ok(PayloadItem::Packet(EioPacket::PingProbe)),
            Ok(PayloadItem::Packet(EioPacket::Pong)),
            Ok(PayloadItem::Packet(EioPacket::Upgrade)),
            Ok(PayloadItem::Packet(EioPacket::Close)),
            Ok(PayloadItem::Packet(EioPacket::Noop)),
            Ok(PayloadItem::Packet(EioPacket::Ping)),
        ]
    );
    // Socket.IO packets inside, with the reference's binary example.
    let body = "452-[\"message\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]\x1ebAQ==\x1eb/w==";
    let got = items(body.as_bytes());
    assert_eq!(got.len(), 3);
    assert_eq!(got[1], bin(&[1]));
    assert_eq!(got[2], bin(&[0xff]));
    let Ok(PayloadItem::Packet(EioPacket::Message(m))) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(decode(m).unwrap().attachments(), 2);
}

#[test]
fn payload_binary_items() {
    assert_eq!(decode_item("b"), Ok(PayloadItem::Binary(Bytes::new())));
    assert_eq!(decode_item("bAQID"), bin(&[1, 2, 3]));
    assert_eq!(decode_item("bAQIDBA=="), bin(&[1, 2, 3, 4]));
    assert_eq!(decode_item("bAQIDBAU="), bin(&[1, 2, 3, 4, 5]));
    assert_eq!(decode_item("b+/+/"), bin(&[0xfb, 0xff, 0xbf]));
    assert_eq!(decode_item("4hello"), msg("hello"));
    for bad in ["b!!!!", "bAQ=", "bA", "b-_-_", "bAQID ", "b AQID", "bé"] {
        assert_eq!(decode_item(bad), Err(DecodeError::InvalidBase64), "{bad:?}");
    }
    // Unpadded base64 is refused (every official client pads; note that
    // the reference server's Buffer.from(.., "base64") would accept it).
    assert_eq!(decode_item("bAQ"), Err(DecodeError::InvalidBase64));
}

#[test]
fn payload_items_in_order_then_the_first_error() {
    assert_eq!(
        until_first_error(b"4a\x1e4b\x1e7\x1e4c"),
        vec![msg("a"), msg("b"), Err(DecodeError::UnknownType)]
    );
    assert_eq!(
        until_first_error(b"4a\x1ebAQID\x1eb!!\x1e4c"),
        vec![msg("a"), bin(&[1, 2, 3]), Err(DecodeError::InvalidBase64)]
    );
    assert_eq!(
        until_first_error(b"4a\x1e\x1e4b"),
        vec![msg("a"), Err(DecodeError::Empty)]
    );
    assert_eq!(
        until_first_error(b"4a\x1e2x"),
        vec![msg("a"), Err(DecodeError::UnexpectedData)]
    );
    // A trailing separator is an empty last item.
    assert_eq!(items(b"4a\x1e"), vec![msg("a"), Err(DecodeError::Empty)]);
    // The decoder itself goes on after an error: stopping is the caller's.
    assert_eq!(
        items(b"7\x1e4b"),
        vec![Err(DecodeError::UnknownType), msg("b")]
    );
}

#[test]
fn payload_invalid_utf8_and_empty_body() {
    assert_eq!(items(b""), vec![Err(DecodeError::Empty)]);
    // Invalid UTF-8 anywhere refuses the whole body, before any item.
    assert_eq!(items(b"4\xff"), vec![Err(DecodeError::InvalidUtf8)]);
    assert_eq!(
        items(b"4hello\x1e4\xc3\x28\x1e4world"),
        vec![Err(DecodeError::InvalidUtf8)]
    );
    assert_eq!(items(b"\xed\xa0\x80"), vec![Err(DecodeError::InvalidUtf8)]);
    // Valid multi-byte UTF-8 is fine.
    assert_eq!(items("4é\x1e4😀".as_bytes()), vec![msg("é"), msg("😀")]);
}

#[test]
fn payload_encoding() {
    let frames = [
        Frame::message("hello"),
        Frame::binary(Bytes::from_static(&[1, 2, 3])),
        Frame::control(Frame::PING),
        Frame::binary(Bytes::new()),
        Frame::binary(Bytes::from_static(&[0xff])),
    ];
    assert_eq!(
        encode_payload(&frames).as_ref(),
        b"4hello\x1ebAQID\x1e2\x1eb\x1eb/w=="
    );
    assert_eq!(encode_payload(&[]).as_ref(), b"");
    assert_eq!(encode_payload(&frames[..1]).as_ref(), b"4hello");
}

proptest! {
    // No regression file beside the tests: failing inputs are reported in
    // the output (and worth a unit test of their own).
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_eio_decode_text_never_panics(s in any::<String>()) {
        let got = std::panic::catch_unwind(|| decode_text(&s).map(|_| ()));
        prop_assert!(got.is_ok(), "decode_text panicked on {:?}", s);
    }

    #[test]
    fn prop_eio_message_round_trip(data in payload_text()) {
        let frame = Frame::message(&data);
        prop_assert_eq!(decode_text(text(&frame)), Ok(EioPacket::Message(data.as_str())));
    }

    #[test]
    fn prop_decode_payload_never_panics(body in prop::collection::vec(any::<u8>(), 0..64)) {
        let got = std::panic::catch_unwind(|| decode_payload(&body).count());
        prop_assert!(got.is_ok(), "decode_payload panicked on {:?}", body);
    }

    #[test]
    fn prop_payload_round_trip(msgs in prop::collection::vec(eio_msg(), 1..16)) {
        let frames: Vec<Frame> = msgs
            .iter()
            .map(|m| match m {
                Msg::Text(s) => Frame::message(s),
                Msg::Binary(b) => Frame::binary(Bytes::copy_from_slice(b)),
                Msg::Control(c) => Frame::control(c),
            })
            .collect();
        let body = encode_payload(&frames);
        // The body is the frames' wire lengths plus one separator between each.
        let wire: usize = frames.iter().map(Frame::wire_len).sum::<usize>() + frames.len() - 1;
        prop_assert_eq!(body.len(), wire);
        let got = items(&body);
        prop_assert_eq!(got.len(), msgs.len());
        for (m, item) in msgs.iter().zip(got) {
            let expected = match m {
                Msg::Text(s) => PayloadItem::Packet(EioPacket::Message(s.as_str())),
                Msg::Binary(b) => PayloadItem::Binary(Bytes::copy_from_slice(b)),
                Msg::Control(c) => PayloadItem::Packet(decode_text(c).unwrap()),
            };
            prop_assert_eq!(item, Ok(expected));
        }
    }

    #[test]
    fn prop_binary_item_round_trip(b in prop::collection::vec(any::<u8>(), 0..300)) {
        let body = encode_payload(&[Frame::binary(Bytes::copy_from_slice(&b))]);
        prop_assert_eq!(body[0], b'b');
        prop_assert_eq!(decode_item(std::str::from_utf8(&body).unwrap()), bin(&b));
    }
}

// ===========================================================================
// Socket.IO: decoding every packet type

#[test]
fn sio_connect() {
    assert_eq!(
        decode("0"),
        Ok(Packet::Connect {
            nsp: "/",
            auth: None
        })
    );
    assert_eq!(
        decode("0{\"token\":\"abc\"}"),
        Ok(Packet::Connect {
            nsp: "/",
            auth: Some("{\"token\":\"abc\"}")
        })
    );
    assert_eq!(
        decode("0/admin,"),
        Ok(Packet::Connect {
            nsp: "/admin",
            auth: None
        })
    );
    assert_eq!(
        decode("0/custom,{\"token\":\"abc\"}"),
        Ok(Packet::Connect {
            nsp: "/custom",
            auth: Some("{\"token\":\"abc\"}")
        })
    );
    // A namespace without its comma runs to the end of the packet.
    assert_eq!(
        decode("0/admin"),
        Ok(Packet::Connect {
            nsp: "/admin",
            auth: None
        })
    );
    assert_eq!(decode("0\"x\""), Err(PacketError::InvalidPayload));
    assert_eq!(decode("0[]"), Err(PacketError::InvalidPayload));
    assert_eq!(decode("0null"), Err(PacketError::InvalidPayload));
    assert_eq!(decode("0{"), Err(PacketError::InvalidJson));
    assert_eq!(decode("0{}x"), Err(PacketError::InvalidJson));
}

#[test]
fn sio_disconnect() {
    assert_eq!(decode("1"), Ok(Packet::Disconnect { nsp: "/" }));
    assert_eq!(decode("1/chat,"), Ok(Packet::Disconnect { nsp: "/chat" }));
    assert_eq!(decode("1{}"), Err(PacketError::InvalidPayload));
    assert_eq!(decode("1/chat,[]"), Err(PacketError::InvalidPayload));
}

#[test]
fn sio_event() {
    assert_eq!(
        decode("2[\"hello\",1]"),
        Ok(Packet::Event {
            nsp: "/",
            id: None,
            name: "hello".into(),
            args: "[1]".into(),
            attachments: 0
        })
    );
    assert_eq!(
        decode("2[\"hello\"]"),
        Ok(Packet::Event {
            nsp: "/",
            id: None,
            name: "hello".into(),
            args: "[]".into(),
            attachments: 0
        })
    );
    assert_eq!(
        decode("2/chat,[\"hi\"]"),
        Ok(Packet::Event {
            nsp: "/chat",
            id: None,
            name: "hi".into(),
            args: "[]".into(),
            attachments: 0
        })
    );
    assert_eq!(
        decode("21[\"ping\"]"),
        Ok(Packet::Event {
            nsp: "/",
            id: Some(1),
            name: "ping".into(),
            args: "[]".into(),
            attachments: 0
        })
    );
    let Ok(Packet::Event {
        nsp,
        id,
        name,
        args,
        attachments,
    }) = decode("2/ché,12[\"a\",{\"b\":[2,\"]\"]},null]")
    else {
        panic!()
    };
    assert_eq!(
        (nsp, id, name.as_str(), attachments),
        ("/ché", Some(12), "a", 0)
    );
    assert_eq!(parse(&args), json!([{"b": [2, "]"]}, null]));
    // The protocol's example exchange.
    let Ok(Packet::Event { name, args, .. }) = decode("2[\"message\",1,\"2\",{\"3\":[true]}]")
    else {
        panic!()
    };
    assert_eq!(name, "message");
    assert_eq!(parse(&args), json!([1, "2", {"3": [true]}]));

    for (bad, err) in [
        ("2", PacketError::InvalidPayload),
        ("2/chat,", PacketError::InvalidPayload),
        ("2/chat", PacketError::InvalidPayload),
        ("21", PacketError::InvalidPayload),
        ("2[]", PacketError::InvalidPayload),
        ("2{}", PacketError::InvalidPayload),
        ("2\"x\"", PacketError::InvalidPayload),
        ("2[null]", PacketError::InvalidPayload),
        ("2[true]", PacketError::InvalidPayload),
        ("2[{}]", PacketError::InvalidPayload),
        ("2[[\"a\"]]", PacketError::InvalidPayload),
        ("2[", PacketError::InvalidJson),
        ("2[\"a\"", PacketError::InvalidJson),
        ("2[\"a\"]]", PacketError::InvalidJson),
        ("2x", PacketError::InvalidJson),
    ] {
        assert_eq!(decode(bad), Err(err), "{bad:?}");
    }
}

#[test]
fn sio_ack() {
    assert_eq!(
        decode("31[1]"),
        Ok(Packet::Ack {
            nsp: "/",
            id: Some(1),
            args: "[1]".into(),
            attachments: 0
        })
    );
    assert_eq!(
        decode("3/chat,7[]"),
        Ok(Packet::Ack {
            nsp: "/chat",
            id: Some(7),
            args: "[]".into(),
            attachments: 0
        })
    );
    assert_eq!(
        decode("3[\"x\"]"),
        Ok(Packet::Ack {
            nsp: "/",
            id: None,
            args: "[\"x\"]".into(),
            attachments: 0
        })
    );
    for (bad, err) in [
        ("3", PacketError::InvalidPayload),
        ("31", PacketError::InvalidPayload),
        ("31{}", PacketError::InvalidPayload),
        ("31\"x\"", PacketError::InvalidPayload),
        ("31[", PacketError::InvalidJson),
        ("31x", PacketError::InvalidJson),
    ] {
        assert_eq!(decode(bad), Err(err), "{bad:?}");
    }
}

#[test]
fn sio_connect_error() {
    assert_eq!(
        decode("4{\"message\":\"x\"}"),
        Ok(Packet::ConnectError { nsp: "/" })
    );
    assert_eq!(decode("4\"x\""), Ok(Packet::ConnectError { nsp: "/" }));
    assert_eq!(
        decode("4/random,{\"message\":\"Invalid namespace\"}"),
        Ok(Packet::ConnectError { nsp: "/random" })
    );
    assert_eq!(decode("4"), Err(PacketError::InvalidPayload));
    assert_eq!(decode("4[1]"), Err(PacketError::InvalidPayload));
    assert_eq!(decode("4null"), Err(PacketError::InvalidPayload));
    assert_eq!(decode("41"), Err(PacketError::InvalidPayload));
    assert_eq!(decode("4{"), Err(PacketError::InvalidJson));
}

#[test]
fn sio_binary_event_and_ack() {
    assert_eq!(
        decode("51-[\"upload\",{\"_placeholder\":true,\"num\":0}]"),
        Ok(Packet::Event {
            nsp: "/",
            id: None,
            name: "upload".into(),
            args: "[{\"_placeholder\":true,\"num\":0}]".into(),
            attachments: 1
        })
    );
    let p = decode(
        "52-/chat,9[\"up\",{\"_placeholder\":true,\"num\":1},{\"_placeholder\":true,\"num\":0}]",
    )
    .unwrap();
    assert_eq!(p.attachments(), 2);
    let Packet::Event { nsp, id, name, .. } = p else {
        panic!()
    };
    assert_eq!((nsp, id, name.as_str()), ("/chat", Some(9), "up"));
    assert_eq!(
        decode("61-/chat,3[{\"_placeholder\":true,\"num\":0}]"),
        Ok(Packet::Ack {
            nsp: "/chat",
            id: Some(3),
            args: "[{\"_placeholder\":true,\"num\":0}]".into(),
            attachments: 1
        })
    );
    assert_eq!(decode("62-[]").unwrap().attachments(), 2);
    // Non-binary packets carry no attachments.
    assert_eq!(decode("2[\"x\"]").unwrap().attachments(), 0);
    assert_eq!(decode("0").unwrap().attachments(), 0);
    assert_eq!(decode("1").unwrap().attachments(), 0);
}

#[test]
fn sio_unknown_and_empty() {
    assert_eq!(decode(""), Err(PacketError::Empty));
    for bad in ["7", "9[\"x\"]", "a", "é", " 2[\"x\"]", "/2", "\u{1e}"] {
        assert_eq!(decode(bad), Err(PacketError::UnknownType), "{bad:?}");
    }
}

#[test]
fn sio_attachment_count_rules() {
    let ok = |n: &str| decode(&format!("5{n}-[\"e\"]")).map(|p| p.attachments());
    for n in 1..=MAX_ATTACHMENTS {
        assert_eq!(ok(&n.to_string()), Ok(n));
    }
    assert_eq!(MAX_ATTACHMENTS, 10);
    assert_eq!(ok("0"), Err(PacketError::IllegalAttachments));
    assert_eq!(ok("11"), Err(PacketError::IllegalAttachments));
    assert_eq!(ok("100"), Err(PacketError::IllegalAttachments));
    assert_eq!(
        ok("99999999999999999999999"),
        Err(PacketError::IllegalAttachments)
    );
    assert_eq!(ok(""), Err(PacketError::IllegalAttachments));
    assert_eq!(ok("-1"), Err(PacketError::IllegalAttachments));
    // Leading zeros: like the reference ("01" == 1 in JavaScript).
    assert_eq!(ok("01"), Ok(1));
    for bad in [
        "5",
        "51",
        "51[\"e\"]",
        "5-[\"e\"]",
        "5a-[\"e\"]",
        "6",
        "61",
        "6[1]",
        "60-[1]",
    ] {
        assert_eq!(decode(bad), Err(PacketError::IllegalAttachments), "{bad:?}");
    }
}

#[test]
fn sio_ack_ids() {
    assert_eq!(
        decode(&format!("2{}[\"x\"]", u64::MAX)).map(|p| match p {
            Packet::Event { id, .. } => id,
            _ => None,
        }),
        Ok(Some(u64::MAX))
    );
    assert_eq!(
        decode("218446744073709551616[\"x\"]"),
        Err(PacketError::InvalidAckId)
    );
    assert_eq!(
        decode("3/chat,99999999999999999999999[]"),
        Err(PacketError::InvalidAckId)
    );
    assert_eq!(
        decode("2007[\"x\"]"),
        Ok(Packet::Event {
            nsp: "/",
            id: Some(7),
            name: "x".into(),
            args: "[]".into(),
            attachments: 0
        })
    );
    assert_eq!(
        decode("30[]"),
        Ok(Packet::Ack {
            nsp: "/",
            id: Some(0),
            args: "[]".into(),
            attachments: 0
        })
    );
}

#[test]
fn sio_reserved_event_names() {
    for name in RESERVED_EVENTS {
        let quoted = serde_json::to_string(name).unwrap();
        assert_eq!(
            decode(&format!("2[{quoted},1]")),
            Err(PacketError::ReservedEvent),
            "{name}"
        );
        assert_eq!(
            decode(&format!("2/chat,1[{quoted}]")),
            Err(PacketError::ReservedEvent)
        );
        assert_eq!(
            decode(&format!(
                "51-[{quoted},{{\"_placeholder\":true,\"num\":0}}]"
            )),
            Err(PacketError::ReservedEvent)
        );
        assert_eq!(
            event_name(&format!("[{quoted}]")),
            Err(PacketError::ReservedEvent)
        );
    }
    // Escaped spelling of a reserved name is the same name.
    assert_eq!(
        decode("2[\"\\u0063onnect\"]"),
        Err(PacketError::ReservedEvent)
    );
    // Near misses are ordinary events.
    for name in [
        "Connect",
        "connecting",
        "connect ",
        "disconnected",
        "newlistener",
    ] {
        let input = format!("2[{}]", serde_json::to_string(name).unwrap());
        let p = decode(&input).unwrap();
        assert!(matches!(p, Packet::Event { name: n, .. } if n == name));
    }
}

#[test]
fn sio_numeric_event_names() {
    assert_eq!(event_name("[1]"), Ok(("1".into(), "[]".into())));
    assert_eq!(
        event_name("[-5,\"x\"]"),
        Ok(("-5".into(), "[\"x\"]".into()))
    );
    assert_eq!(event_name("[1.5e3]"), Ok(("1.5e3".into(), "[]".into())));
    let Ok(Packet::Event { name, args, id, .. }) = decode("23[42,true]") else {
        panic!()
    };
    assert_eq!(
        (name.as_str(), args.as_str(), id),
        ("42", "[true]", Some(3))
    );
}

#[test]
fn sio_event_name_splitting() {
    assert_eq!(
        event_name("[\"a\\\"b\\\\c\\u001eé\"]"),
        Ok(("a\"b\\c\u{1e}é".into(), "[]".into()))
    );
    assert_eq!(
        event_name("[ \"a\" , 1 , [2,3] ]"),
        Ok(("a".into(), "[1 , [2,3] ]".into()))
    );
    let (name, args) = event_name("[\"a\", 1, [2,3], {\"x\":\"]\"}]").unwrap();
    assert_eq!(name, "a");
    assert_eq!(parse(&args), json!([1, [2, 3], {"x": "]"}]));
    assert_eq!(event_name("[]"), Err(PacketError::InvalidPayload));
    assert_eq!(event_name("{}"), Err(PacketError::InvalidPayload));
    assert_eq!(event_name("[\"a\""), Err(PacketError::InvalidJson));
    assert_eq!(event_name("[\"\\ud800\"]"), Err(PacketError::InvalidJson));
}

// ===========================================================================
// Socket.IO: encoding, against the protocol's examples

#[test]
fn sio_encoders_write_the_reference_wire_form() {
    let args = Payload::from_json_array("[1,\"2\",{\"3\":[true]}]".into());
    let frames = encode_event("/", "message-back", &args, None);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        text(&frames[0]),
        "42[\"message-back\",1,\"2\",{\"3\":[true]}]"
    );
    let frames = encode_ack("/", 1, &Payload::from_json_array("[1]".into()));
    assert_eq!(frames.len(), 1);
    assert_eq!(text(&frames[0]), "431[1]");
    assert_eq!(
        text(&encode_event("/chat", "x", &Payload::empty(), Some(5))[0]),
        "42/chat,5[\"x\"]"
    );
    assert_eq!(
        text(&encode_event("/", "x", &Payload::from_json_array("[ ]".into()), None)[0]),
        "42[\"x\"]"
    );
    assert_eq!(
        text(&encode_connect("/custom", "{\"sid\":\"Y\"}")),
        "40/custom,{\"sid\":\"Y\"}"
    );
    assert_eq!(
        text(&encode_connect("/", "{\"sid\":\"X\"}")),
        "40{\"sid\":\"X\"}"
    );
    assert_eq!(
        text(&encode_connect_error("/random", "Invalid namespace", None)),
        "44/random,{\"message\":\"Invalid namespace\"}"
    );
    let with_data = encode_connect_error("/", "nope", Some(&json!({"code": 3})));
    assert!(text(&with_data).starts_with("44{"));
    assert_eq!(
        parse(&text(&with_data)[2..]),
        json!({"message": "nope", "data": {"code": 3}})
    );
    assert_eq!(text(&encode_disconnect("/")), "41");
    assert_eq!(text(&encode_disconnect("/chat")), "41/chat,");
}

#[test]
fn sio_binary_encoding() {
    let a = Bytes::from_static(&[1, 2, 3]);
    let b = Bytes::from_static(&[]);
    let json = "[{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]";
    let args = Payload::with_attachments(json.into(), vec![a.clone(), b.clone()]);
    let frames = encode_event("/", "message-back", &args, None);
    assert_eq!(frames.len(), 3);
    assert_eq!(
        text(&frames[0]),
        "452-[\"message-back\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]"
    );
    assert_eq!(binary(&frames[1]), &a);
    assert_eq!(binary(&frames[2]), &b);

    let frames = encode_ack("/chat", 4, &args);
    assert_eq!(text(&frames[0]), format!("462-/chat,4{json}"));
    assert_eq!(frames.len(), 3);

    let one = Payload::with_attachments("[{\"_placeholder\":true,\"num\":0}]".into(), vec![a]);
    assert_eq!(
        text(&encode_event("/chat", "up", &one, Some(7))[0]),
        "451-/chat,7[\"up\",{\"_placeholder\":true,\"num\":0}]"
    );
}

// ===========================================================================
// Socket.IO: Payload

#[test]
fn payload_checked_placeholders() {
    let att = |n: usize| {
        (0..n)
            .map(|i| Bytes::from(vec![i as u8; i]))
            .collect::<Vec<_>>()
    };
    let p = Payload::checked("[{\"_placeholder\":true,\"num\":0}]".into(), att(1)).unwrap();
    assert_eq!(p.attachments(), &att(1)[..]);
    assert_eq!(p.json(), "[{\"_placeholder\":true,\"num\":0}]");

    // Nested deep in objects and arrays, in any order.
    let json = json!([{"a": [1, {"b": placeholder(2)}]}, placeholder(0), [[placeholder(1)]]]);
    let p = Payload::checked(json.to_string(), att(3)).unwrap();
    assert_eq!(p.attachments().len(), 3);

    for bad in [
        json!([placeholder(1)]),
        json!([{"_placeholder": true, "num": "0"}]),
        json!([{"_placeholder": true, "num": -1}]),
        json!([{"_placeholder": true, "num": null}]),
        json!([{"_placeholder": true}]),
        json!([{"_placeholder": true, "num": 18446744073709551615u64}]),
        json!([placeholder(0), {"x": placeholder(5)}]),
    ] {
        assert_eq!(
            Payload::checked(bad.to_string(), att(1)),
            Err(PacketError::IllegalAttachments),
            "{bad}"
        );
    }
    assert_eq!(
        Payload::checked("[{\"_placeholder\":true,\"num\":0}]".into(), vec![]),
        Err(PacketError::IllegalAttachments)
    );

    // No placeholder at all: the attachments are dropped.
    let p = Payload::checked("[1,\"x\",{\"num\":0}]".into(), att(2)).unwrap();
    assert!(p.attachments().is_empty());
    let p = Payload::checked("[{\"_placeholder\":false,\"num\":0}]".into(), att(1)).unwrap();
    assert!(p.attachments().is_empty());
    let p = Payload::checked("[{\"_placeholder\":\"true\",\"num\":0}]".into(), att(1)).unwrap();
    assert!(p.attachments().is_empty());

    assert_eq!(
        Payload::checked("[".into(), att(1)),
        Err(PacketError::InvalidJson)
    );
}

#[test]
fn payload_push_json_and_accessors() {
    let mut p = Payload::empty();
    assert_eq!(p.json(), "[]");
    assert!(p.values().is_empty());
    assert_eq!(p.first_str(), None);
    p.push_json("\"offset-1\"");
    assert_eq!(p.json(), "[\"offset-1\"]");
    p.push_json("2");
    assert_eq!(p.json(), "[\"offset-1\",2]");
    assert_eq!(p.values(), vec![json!("offset-1"), json!(2)]);
    assert_eq!(p.first_str().as_deref(), Some("offset-1"));

    let mut p = Payload::from_json_array("[1] \n".into());
    p.push_json("{\"a\":[]}");
    assert_eq!(parse(p.json()), json!([1, {"a": []}]));
    assert_eq!(p.first_str(), None);

    let mut p = Payload::from_json_array("[ ]".into());
    p.push_json("\"x\"");
    assert_eq!(parse(p.json()), json!(["x"]));

    let mut p = Payload::from_json_array("[\"[\"]".into());
    p.push_json("\"]\"");
    assert_eq!(parse(p.json()), json!(["[", "]"]));

    // Not an array: left alone.
    let mut p = Payload::from_json_array("{}".into());
    p.push_json("1");
    assert_eq!(p.json(), "{}");
    assert!(p.values().is_empty());

    // Attachments are kept across a push.
    let mut p = Payload::with_attachments(
        "[{\"_placeholder\":true,\"num\":0}]".into(),
        vec![Bytes::from_static(b"z")],
    );
    p.push_json("\"off\"");
    assert_eq!(p.attachments().len(), 1);
    assert_eq!(parse(p.json()), json!([placeholder(0), "off"]));

    let p = Payload::from_values(&[json!("a\u{1e}"), json!({"k": [1, 2]})]);
    assert_eq!(p.values(), vec![json!("a\u{1e}"), json!({"k": [1, 2]})]);
    assert_eq!(p.first_str().as_deref(), Some("a\u{1e}"));
    assert!(!p.json().contains('\u{1e}'), "{}", p.json());
}

// ===========================================================================
// Socket.IO: property tests

proptest! {
    // No regression file beside the tests: failing inputs are reported in
    // the output (and worth a unit test of their own).
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_sio_decode_never_panics(s in any::<String>()) {
        let got = std::panic::catch_unwind(|| decode(&s).map(|_| ()));
        prop_assert!(got.is_ok(), "decode panicked on {:?}", s);
    }

    #[test]
    fn prop_sio_decode_never_panics_on_plausible_packets(
        kind in 0u8..8,
        att in prop::option::of(0usize..20),
        nsp in prop::option::of(namespace()),
        id in prop::option::of(any::<u64>()),
        data in prop_oneof![
            json_value().prop_map(|v| v.to_string()),
            tricky_string(),
        ],
    ) {
        let mut s = format!("{kind}");
        if let Some(a) = att { s.push_str(&format!("{a}-")); }
        if let Some(n) = &nsp { s.push_str(n); s.push(','); }
        if let Some(i) = id { s.push_str(&i.to_string()); }
        s.push_str(&data);
        let got = std::panic::catch_unwind(|| decode(&s).map(|p| p.attachments()));
        prop_assert!(got.is_ok(), "decode panicked on {:?}", s);
    }

    #[test]
    fn prop_event_round_trip(
        nsp in namespace(),
        name in event_name_strategy(),
        args in prop::collection::vec(json_value(), 0..5),
        id in prop::option::of(any::<u64>()),
    ) {
        let frames = encode_event(&nsp, &name, &Payload::from_values(&args), id);
        prop_assert_eq!(frames.len(), 1);
        // Whatever the strings hold, the frame may go on a polling payload.
        prop_assert!(!text(&frames[0]).contains('\u{1e}'), "raw separator in {:?}", text(&frames[0]));
        match sio_of(&frames[0]) {
            Ok(Packet::Event { nsp: n, id: i, name: na, args: a, attachments }) => {
                prop_assert_eq!(n, nsp.as_str());
                prop_assert_eq!(i, id);
                prop_assert_eq!(na, name);
                prop_assert_eq!(attachments, 0);
                prop_assert_eq!(parse(&a), Value::Array(args));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn prop_event_round_trip_through_a_polling_payload(
        events in prop::collection::vec(
            (namespace(), event_name_strategy(), prop::collection::vec(json_value(), 0..3)),
            1..6,
        ),
    ) {
        let frames: Vec<Frame> = events
            .iter()
            .flat_map(|(nsp, name, args)| encode_event(nsp, name, &Payload::from_values(args), None))
            .collect();
        let body = encode_payload(&frames);
        let got = items(&body);
        prop_assert_eq!(got.len(), events.len());
        for ((nsp, name, args), item) in events.iter().zip(got) {
            let Ok(PayloadItem::Packet(EioPacket::Message(m))) = &item else {
                return Err(TestCaseError::fail(format!("{item:?}")));
            };
            let Ok(Packet::Event { nsp: n, name: na, args: a, .. }) = decode(m) else {
                return Err(TestCaseError::fail(m.to_string()));
            };
            prop_assert_eq!(n, nsp.as_str());
            prop_assert_eq!(&na, name);
            prop_assert_eq!(parse(&a), Value::Array(args.clone()));
        }
    }

    #[test]
    fn prop_ack_round_trip(
        nsp in namespace(),
        args in prop::collection::vec(json_value(), 0..5),
        id in any::<u64>(),
    ) {
        let frames = encode_ack(&nsp, id, &Payload::from_values(&args));
        prop_assert_eq!(frames.len(), 1);
        match sio_of(&frames[0]) {
            Ok(Packet::Ack { nsp: n, id: i, args: a, attachments }) => {
                prop_assert_eq!(n, nsp.as_str());
                prop_assert_eq!(i, Some(id));
                prop_assert_eq!(attachments, 0);
                prop_assert_eq!(parse(&a), Value::Array(args));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn prop_connect_round_trip(nsp in namespace(), data in prop::option::of(json_object())) {
        let data = data.map(|m| Value::Object(m).to_string());
        let frame = encode_connect(&nsp, data.as_deref().unwrap_or(""));
        prop_assert_eq!(
            sio_of(&frame),
            Ok(Packet::Connect { nsp: &nsp, auth: data.as_deref() })
        );
    }

    #[test]
    fn prop_connect_error_round_trip(
        nsp in namespace(),
        message in tricky_string(),
        data in prop::option::of(json_value()),
    ) {
        let frame = encode_connect_error(&nsp, &message, data.as_ref());
        prop_assert_eq!(sio_of(&frame), Ok(Packet::ConnectError { nsp: &nsp }));
        let prefix = if nsp == "/" { "44".to_owned() } else { format!("44{nsp},") };
        let t = text(&frame);
        prop_assert!(t.starts_with(&prefix), "{}", t);
        let mut expected = serde_json::Map::new();
        expected.insert("message".into(), Value::String(message));
        if let Some(d) = data { expected.insert("data".into(), d); }
        prop_assert_eq!(parse(&t[prefix.len()..]), Value::Object(expected));
    }

    #[test]
    fn prop_disconnect_round_trip(nsp in namespace()) {
        let frame = encode_disconnect(&nsp);
        prop_assert_eq!(sio_of(&frame), Ok(Packet::Disconnect { nsp: &nsp }));
    }

    #[test]
    fn prop_ack_ids(id in any::<u64>(), extra in 0u64..1000) {
        let Ok(Packet::Ack { id: got, .. }) = decode(&format!("3{id}[]")) else {
            return Err(TestCaseError::fail("ack"));
        };
        prop_assert_eq!(got, Some(id));
        // One digit more than u64 holds overflows.
        let big = format!("3{}{}[]", u64::MAX, extra % 10);
        prop_assert_eq!(decode(&big), Err(PacketError::InvalidAckId));
    }

    #[test]
    fn prop_attachment_count(n in 0usize..2000) {
        let got = decode(&format!("5{n}-[\"e\"]")).map(|p| p.attachments());
        if (1..=MAX_ATTACHMENTS).contains(&n) {
            prop_assert_eq!(got, Ok(n));
        } else {
            prop_assert_eq!(got, Err(PacketError::IllegalAttachments));
        }
        let got = decode(&format!("6{n}-1[]")).map(|p| p.attachments());
        prop_assert_eq!(got.is_ok(), (1..=MAX_ATTACHMENTS).contains(&n));
    }

    #[test]
    fn prop_binary_event_round_trip(
        nsp in namespace(),
        name in event_name_strategy(),
        blobs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..=MAX_ATTACHMENTS),
        others in prop::collection::vec(json_value(), 0..4),
        seed in any::<u64>(),
        id in prop::option::of(any::<u64>()),
        ack in any::<bool>(),
    ) {
        // Placeholders for every attachment, spread among other arguments,
        // some nested.
        let mut args = others.clone();
        for k in 0..blobs.len() {
            let ph = if (seed >> k) & 1 == 1 { json!({"nested": [placeholder(k)]}) } else { placeholder(k) };
            let at = ((seed >> (k + 16)) as usize) % (args.len() + 1);
            args.insert(at, ph);
        }
        let attachments: Vec<Bytes> = blobs.iter().map(|b| Bytes::copy_from_slice(b)).collect();
        let payload = Payload::with_attachments(Value::Array(args.clone()).to_string(), attachments.clone());
        let frames = if ack {
            encode_ack(&nsp, id.unwrap_or(0), &payload)
        } else {
            encode_event(&nsp, &name, &payload, id)
        };
        prop_assert_eq!(frames.len(), 1 + blobs.len());
        let (decoded_args, n) = match sio_of(&frames[0]) {
            Ok(Packet::Event { nsp: n, id: i, name: na, args: a, attachments }) if !ack => {
                prop_assert_eq!(n, nsp.as_str());
                prop_assert_eq!(i, id);
                prop_assert_eq!(na, name);
                (a, attachments)
            }
            Ok(Packet::Ack { nsp: n, id: i, args: a, attachments }) if ack => {
                prop_assert_eq!(n, nsp.as_str());
                prop_assert_eq!(i, Some(id.unwrap_or(0)));
                (a, attachments)
            }
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(n, blobs.len());
        prop_assert_eq!(parse(&decoded_args), Value::Array(args));
        // Through a polling payload, the attachments follow in order.
        let body = encode_payload(&frames);
        let got: Vec<Bytes> = items(&body)
            .into_iter()
            .skip(1)
            .map(|i| match i {
                Ok(PayloadItem::Binary(b)) => b,
                other => panic!("{other:?}"),
            })
            .collect();
        prop_assert_eq!(&got, &attachments);
        let checked = Payload::checked(decoded_args, got).unwrap();
        prop_assert_eq!(checked.attachments(), &attachments[..]);
    }

    #[test]
    fn prop_checked_placeholder_range(count in 0usize..=MAX_ATTACHMENTS, num in 0u64..20, nested in any::<bool>()) {
        let ph = json!({"_placeholder": true, "num": num});
        let json = if nested { json!([1, {"a": [ph]}]) } else { json!([ph, "x"]) };
        let attachments = vec![Bytes::from_static(b"x"); count];
        let got = Payload::checked(json.to_string(), attachments.clone());
        if (num as usize) < count {
            prop_assert_eq!(got.map(|p| p.attachments().len()), Ok(count));
        } else {
            prop_assert_eq!(got, Err(PacketError::IllegalAttachments));
        }
    }

    #[test]
    fn prop_checked_without_placeholders_drops_attachments(
        args in prop::collection::vec(json_value(), 0..5),
        count in 0usize..=MAX_ATTACHMENTS,
    ) {
        let json = Value::Array(args).to_string();
        let got = Payload::checked(json.clone(), vec![Bytes::from_static(b"x"); count]).unwrap();
        prop_assert!(got.attachments().is_empty());
        prop_assert_eq!(got.json(), json.as_str());
    }

    #[test]
    fn prop_push_json(args in prop::collection::vec(json_value(), 0..5), extra in json_value(), nsp in namespace()) {
        let mut p = Payload::from_values(&args);
        p.push_json(&extra.to_string());
        let mut expected = args.clone();
        expected.push(extra.clone());
        prop_assert_eq!(p.values(), expected.clone());
        // An event carrying it (a recovery offset, say) reads back with the
        // pushed value last.
        let frames = encode_event(&nsp, "m", &p, None);
        let Ok(Packet::Event { args: a, .. }) = sio_of(&frames[0]) else {
            return Err(TestCaseError::fail("event"));
        };
        prop_assert_eq!(parse(&a), Value::Array(expected));
    }

    #[test]
    fn prop_event_name_of_arbitrary_arrays(name in event_name_strategy(), args in prop::collection::vec(json_value(), 0..5)) {
        let mut all = vec![Value::String(name.clone())];
        all.extend(args.iter().cloned());
        let (n, a) = event_name(&Value::Array(all).to_string()).unwrap();
        prop_assert_eq!(n, name);
        prop_assert_eq!(parse(&a), Value::Array(args));
    }
}

// ===========================================================================
// Engine.IO v3 (Socket.IO v2 clients, `--allow-eio3`): polling payloads in
// the text form (`<length>:<packet>`, lengths in UTF-16 units) and the
// binary form, and WebSocket binary messages with their type byte.

mod v3 {
    use super::*;
    use ringway_gateway::engineio::payload_v3::{
        base64_message, binary_message, decode_binary_message, decode_item as decode_item_v3,
        decode_payload as decode_v3, encode_payload as encode_v3,
    };

    /// Text a v3 message may carry: anything (v3 has no separator).
    fn v3_text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), tricky_string()]
    }

    fn v3_msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            3 => v3_text().prop_map(Msg::Text),
            2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Msg::Binary),
            1 => prop::sample::select(vec![Frame::CLOSE, Frame::PING, Frame::PONG, Frame::NOOP])
                .prop_map(Msg::Control),
        ]
    }

    fn frame_of(m: &Msg) -> Frame {
        match m {
            Msg::Text(s) => Frame::message(s),
            Msg::Binary(b) => Frame::binary(Bytes::copy_from_slice(b)),
            Msg::Control(c) => Frame::control(c),
        }
    }

    fn item_of(m: &Msg) -> PayloadItem<'_> {
        match m {
            Msg::Text(s) => PayloadItem::Packet(EioPacket::Message(s.as_str())),
            Msg::Binary(b) => PayloadItem::Binary(Bytes::copy_from_slice(b)),
            Msg::Control(c) => PayloadItem::Packet(decode_text(c).unwrap()),
        }
    }

    #[test]
    fn v3_payload_examples() {
        // The reference's examples: `<length>:<packet>`, `0:` empty.
        let got: Vec<_> = decode_v3(b"6:4hello2:4x0:1:2", false).collect();
        assert_eq!(
            got,
            vec![
                Ok(PayloadItem::Packet(EioPacket::Message("hello"))),
                Ok(PayloadItem::Packet(EioPacket::Message("x"))),
                Ok(PayloadItem::Packet(EioPacket::Ping)),
            ]
        );
        assert_eq!(
            decode_v3(b"", false).collect::<Vec<_>>(),
            vec![Err(DecodeError::Empty)]
        );
        let (body, binary) = encode_v3(&[Frame::message("😀")], true);
        assert!(!binary);
        assert_eq!(&body[..], "3:4😀".as_bytes());
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn prop_v3_decode_never_panics_and_stops_at_the_first_error(
            body in prop::collection::vec(any::<u8>(), 0..64),
            binary in any::<bool>(),
        ) {
            let got = std::panic::catch_unwind(|| {
                decode_v3(&body, binary).map(|i| i.is_err()).collect::<Vec<bool>>()
            });
            let errors = got.expect("decode_payload (v3) panicked");
            if let Some(pos) = errors.iter().position(|e| *e) {
                prop_assert_eq!(pos, errors.len() - 1);
            }
        }

        #[test]
        fn prop_v3_decode_never_panics_on_plausible_text(
            parts in prop::collection::vec((0usize..40, v3_text()), 0..6),
        ) {
            let body: String = parts.iter().map(|(n, s)| format!("{n}:{s}")).collect();
            let got = std::panic::catch_unwind(|| decode_v3(body.as_bytes(), false).count());
            prop_assert!(got.is_ok(), "panicked on {:?}", body);
        }

        #[test]
        fn prop_v3_payload_round_trip(
            msgs in prop::collection::vec(v3_msg(), 1..12),
            b64 in any::<bool>(),
        ) {
            let frames: Vec<Frame> = msgs.iter().map(frame_of).collect();
            let (body, binary) = encode_v3(&frames, b64);
            let has_binary = msgs.iter().any(|m| matches!(m, Msg::Binary(_)));
            prop_assert_eq!(binary, !b64 && has_binary);
            let got: Vec<_> = decode_v3(&body, binary).collect();
            prop_assert_eq!(got.len(), msgs.len());
            for (m, item) in msgs.iter().zip(got) {
                prop_assert_eq!(item, Ok(item_of(m)));
            }
        }

        #[test]
        fn prop_v3_text_lengths_are_utf16_units(s in v3_text()) {
            let (body, _) = encode_v3(&[Frame::message(&s)], true);
            let expected = format!("{}:4{s}", s.encode_utf16().count() + 1);
            prop_assert_eq!(&body[..], expected.as_bytes());
        }

        #[test]
        fn prop_v3_truncated_payloads_keep_a_prefix(
            msgs in prop::collection::vec(v3_msg(), 1..8),
            b64 in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let frames: Vec<Frame> = msgs.iter().map(frame_of).collect();
            let (body, binary) = encode_v3(&frames, b64);
            let at = cut.index(body.len());
            let items: Vec<_> = decode_v3(&body[..at], binary).collect();
            // What decodes is a prefix of what was sent (the truncated
            // packet, if any, is an error or a shorter binary message).
            for (m, item) in msgs.iter().zip(&items) {
                if let Ok(item) = item {
                    if let (Msg::Binary(_), PayloadItem::Binary(_)) = (m, item) {
                        continue;
                    }
                    if let (Msg::Text(_), PayloadItem::Packet(EioPacket::Message(_))) = (m, item) {
                        continue;
                    }
                    prop_assert_eq!(item.clone(), item_of(m));
                }
            }
        }

        #[test]
        fn prop_v3_websocket_binary_round_trip(b in prop::collection::vec(any::<u8>(), 0..300)) {
            let msg = binary_message(&b);
            prop_assert_eq!(msg[0], 4);
            prop_assert_eq!(decode_binary_message(&msg), Ok(Bytes::copy_from_slice(&b)));
            let text = base64_message(&b);
            prop_assert_eq!(decode_item_v3(&text), bin(&b));
        }
    }
}
