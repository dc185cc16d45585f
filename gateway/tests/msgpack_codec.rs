//! Unit and property tests of the msgpack codec (`socketio::msgpack`, the
//! wire form of `--parser msgpack`) through its public API, with `rmpv` as
//! an independent msgpack implementation: packets as
//! `socket.io-msgpack-parser` (notepack.io) writes them and as the
//! reference server writes them (bytes recorded from both), what the
//! decoder checks and refuses, its bounds, and round trips with binaries,
//! through this codec alone and through both parsers. No I/O.

use bytes::Bytes;
use proptest::prelude::*;
use ringway_gateway::engineio::packet::{decode_text, Frame, Packet as EioPacket};
use ringway_gateway::socketio::msgpack::{decode, MAX_BINARIES, MAX_DEPTH};
use ringway_gateway::socketio::packet::{self, Packet, PacketError, Payload, RESERVED_EVENTS};
use ringway_gateway::socketio::Parser;
use rmpv::Value as Mp;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// helpers

fn hex(s: &str) -> Bytes {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex"))
        .collect::<Vec<u8>>()
        .into()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn encode(v: &Mp) -> Bytes {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("encode");
    out.into()
}

fn s(text: &str) -> Mp {
    Mp::from(text)
}

fn map(entries: Vec<(&str, Mp)>) -> Mp {
    Mp::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
}

/// notepack.io's `undefined` (fixext 1, type 0).
fn undefined() -> Mp {
    Mp::Ext(0, vec![0])
}

/// A client packet `{type, nsp, data?, id?}`.
fn client(kind: i64, nsp: &str, data: Option<Mp>, id: Option<Mp>) -> Bytes {
    let mut entries = vec![("type", Mp::from(kind)), ("nsp", s(nsp))];
    if let Some(d) = data {
        entries.push(("data", d));
    }
    if let Some(i) = id {
        entries.push(("id", i));
    }
    encode(&map(entries))
}

fn event(nsp: &str, items: Vec<Mp>, id: Option<u64>) -> Bytes {
    client(2, nsp, Some(Mp::Array(items)), id.map(Mp::from))
}

/// A decoded packet, owned.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Connect {
        nsp: String,
        auth: Option<Value>,
    },
    Disconnect {
        nsp: String,
    },
    Event {
        nsp: String,
        id: Option<u64>,
        name: String,
        args: Payload,
    },
    Ack {
        nsp: String,
        id: Option<u64>,
        args: Payload,
    },
    ConnectError {
        nsp: String,
    },
}

/// Decodes a client's packet the way the gateway does: the msgpack codec,
/// then the placeholders checked against the binaries.
fn got(bytes: &Bytes) -> Result<Got, PacketError> {
    let mut decoded = decode(bytes)?;
    let (packet, bins) = decoded.take();
    Ok(match packet {
        Packet::Connect { nsp, auth } => Got::Connect {
            nsp: nsp.to_owned(),
            auth: auth.map(|a| serde_json::from_str(a).expect("auth is JSON")),
        },
        Packet::Disconnect { nsp } => Got::Disconnect {
            nsp: nsp.to_owned(),
        },
        Packet::Event {
            nsp,
            id,
            name,
            args,
            attachments,
        } => {
            assert_eq!(attachments, bins.len());
            Got::Event {
                nsp: nsp.to_owned(),
                id,
                name,
                args: Payload::checked(args, bins).expect("placeholders"),
            }
        }
        Packet::Ack {
            nsp,
            id,
            args,
            attachments,
        } => {
            assert_eq!(attachments, bins.len());
            Got::Ack {
                nsp: nsp.to_owned(),
                id,
                args: Payload::checked(args, bins).expect("placeholders"),
            }
        }
        Packet::ConnectError { nsp } => Got::ConnectError {
            nsp: nsp.to_owned(),
        },
    })
}

fn got_event(bytes: &Bytes) -> (String, Option<u64>, String, Value, Vec<Bytes>) {
    match got(bytes) {
        Ok(Got::Event {
            nsp,
            id,
            name,
            args,
        }) => {
            let values = serde_json::from_str(args.json()).expect("args JSON");
            (nsp, id, name, values, args.attachments().to_vec())
        }
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The one msgpack value of a frame the gateway wrote.
fn value_of(frame: &Frame) -> Mp {
    let Frame::Binary(b) = frame else {
        panic!("a msgpack packet is a binary frame, got {frame:?}");
    };
    let mut rest: &[u8] = b;
    let v = rmpv::decode::read_value(&mut rest).expect("valid msgpack");
    assert!(rest.is_empty(), "trailing bytes after {v}");
    v
}

fn field<'a>(packet: &'a Mp, key: &str) -> Option<&'a Mp> {
    packet
        .as_map()
        .expect("a packet is a map")
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn one(frames: Vec<Frame>) -> Frame {
    assert_eq!(frames.len(), 1, "one frame per packet: {frames:?}");
    frames.into_iter().next().expect("one frame")
}

fn placeholder(n: usize) -> Value {
    json!({"_placeholder": true, "num": n})
}

// ---------------------------------------------------------------------------
// The wire form of the npm packages

/// Bytes notepack.io 2.2 (socket.io-msgpack-parser 3.0.2's encoder) wrote
/// for the packets socket.io-client 4.8 makes: a CONNECT without auth
/// (`data: undefined`), with auth and a recovery `offset` still undefined,
/// and an EVENT with an ack id, the client's `options` key, a Buffer, a
/// Uint8Array (an ext 0 ArrayBuffer), a Date and undefined values.
#[test]
fn client_packets_as_notepack_writes_them() {
    let connect = hex("83a47479706500a464617461d40000a36e7370a12f");
    assert_eq!(
        got(&connect),
        Ok(Got::Connect {
            nsp: "/".into(),
            auth: None
        })
    );

    let auth = hex(
        "83a47479706500a46461746183a5746f6b656ea3616263a3706964a170a66f6666736574d40000a36e7370a72f637573746f6d",
    );
    assert_eq!(
        got(&auth),
        Ok(Got::Connect {
            nsp: "/custom".into(),
            auth: Some(json!({"token": "abc", "pid": "p"}))
        })
    );

    let ev = hex(
        "85a47479706502a46461746197a76d65737361676501c4020102c702000304d7000000000005265c0091d4000082a175d40000a176c0a76f7074696f6e7381a8636f6d7072657373c3a2696403a36e7370a12f",
    );
    let (nsp, id, name, args, bins) = got_event(&ev);
    assert_eq!((nsp.as_str(), id, name.as_str()), ("/", Some(3), "message"));
    assert_eq!(
        args,
        json!([
            1,
            placeholder(0),
            placeholder(1),
            "1970-01-02T00:00:00.000Z",
            [null],
            {"v": null}
        ])
    );
    assert_eq!(
        bins,
        vec![Bytes::from_static(&[1, 2]), Bytes::from_static(&[3, 4])]
    );
}

/// The packets the reference server (socket.io 4.8.1 with
/// socket.io-msgpack-parser 3.0.2) wrote, byte for byte: fields in its
/// order, integers and floats in notepack.io's widths.
#[test]
fn server_packets_are_the_reference_servers_bytes() {
    // s.emit('ev', 1, 'a', Buffer.from([1, 2, 3]), {k: [true, null], f: 1.5, neg: -7})
    let args = Payload::with_attachments(
        r#"[1,"a",{"_placeholder":true,"num":0},{"k":[true,null],"f":1.5,"neg":-7}]"#.into(),
        vec![Bytes::from_static(&[1, 2, 3])],
    );
    let frame = one(Parser::Msgpack.encode_event("/", "ev", &args, None));
    assert_eq!(
        frame,
        Frame::Binary(hex(
            "83a47479706502a46461746195a2657601a161c40301020383a16b92c3c0a166cb3ff8000000000000a36e6567f9a36e7370a12f"
        ))
    );
    // s.emit('ev', {big: 2 ** 40})
    let big = Payload::from_json_array(r#"[{"big":1099511627776}]"#.into());
    assert_eq!(
        one(Parser::Msgpack.encode_event("/", "ev", &big, None)),
        Frame::Binary(hex(
            "83a47479706502a46461746192a2657681a3626967cf0000010000000000a36e7370a12f"
        ))
    );
    // The ack of {type: 2, data: ['ack-me', 1, 'x', <09>], id: 7}.
    let ack = Payload::with_attachments(
        r#"[1,"x",{"_placeholder":true,"num":0}]"#.into(),
        vec![Bytes::from_static(&[9])],
    );
    assert_eq!(
        one(Parser::Msgpack.encode_ack("/", 7, &ack)),
        Frame::Binary(hex(
            "84a2696407a47479706503a4646174619301a178c40109a36e7370a12f"
        ))
    );
    // s.disconnect()
    assert_eq!(
        Parser::Msgpack.encode_disconnect("/"),
        Frame::Binary(hex("82a47479706501a36e7370a12f"))
    );
    // A CONNECT to an unknown namespace.
    assert_eq!(
        Parser::Msgpack.encode_connect_error("/nope", "Invalid namespace", None),
        Frame::Binary(hex(
            "83a47479706504a36e7370a52f6e6f7065a46461746181a76d657373616765b1496e76616c6964206e616d657370616365"
        ))
    );
    // An event `auth` with `{}`.
    let auth = Payload::from_json_array("[{}]".into());
    assert_eq!(
        one(Parser::Msgpack.encode_event("/", "auth", &auth, None)),
        Frame::Binary(hex("83a47479706502a46461746192a46175746880a36e7370a12f"))
    );
}

#[test]
fn connect_answers_errors_and_acked_events() {
    let answer = Parser::Msgpack.encode_connect("/custom", r#"{"sid":"abc","pid":"p1"}"#);
    let v = value_of(&answer);
    assert_eq!(field(&v, "type"), Some(&Mp::from(0)));
    assert_eq!(field(&v, "nsp"), Some(&s("/custom")));
    assert_eq!(
        field(&v, "data"),
        Some(&map(vec![("sid", s("abc")), ("pid", s("p1"))]))
    );
    assert_eq!(field(&v, "id"), None);

    let refused = Parser::Msgpack.encode_connect_error(
        "/",
        "not allowed",
        Some(&json!({"why": "test", "n": [1, 2]})),
    );
    let v = value_of(&refused);
    assert_eq!(field(&v, "type"), Some(&Mp::from(4)));
    assert_eq!(
        field(&v, "data"),
        Some(&map(vec![
            ("message", s("not allowed")),
            (
                "data",
                map(vec![
                    ("n", Mp::Array(vec![Mp::from(1), Mp::from(2)])),
                    ("why", s("test"))
                ])
            )
        ]))
    );

    // An emit with ack: the id is in the packet; no binary types exist.
    let question = one(Parser::Msgpack.encode_event(
        "/",
        "question",
        &Payload::from_json_array("[\"q\"]".into()),
        Some(12),
    ));
    let v = value_of(&question);
    assert_eq!(field(&v, "type"), Some(&Mp::from(2)));
    assert_eq!(field(&v, "id"), Some(&Mp::from(12)));
    assert_eq!(
        field(&v, "data"),
        Some(&Mp::Array(vec![s("question"), s("q")]))
    );
}

/// A recoverable event carries its offset as one more, last, string
/// argument, binaries included.
#[test]
fn recoverable_events_carry_the_offset_last() {
    let args = Payload::with_attachments(
        r#"[{"_placeholder":true,"num":0},2]"#.into(),
        vec![Bytes::from_static(b"bin")],
    );
    let frame = one(Parser::Msgpack.encode_recoverable("/", "tick", &args, "1700000000000-3"));
    let v = value_of(&frame);
    assert_eq!(
        field(&v, "data"),
        Some(&Mp::Array(vec![
            s("tick"),
            Mp::Binary(b"bin".to_vec()),
            Mp::from(2),
            s("1700000000000-3")
        ]))
    );
    assert_eq!(field(&v, "id"), None);
}

/// The default parser's encoders are what `Parser::Default` writes.
#[test]
fn the_default_parser_is_unchanged() {
    let args = Payload::with_attachments(
        r#"["a",{"_placeholder":true,"num":0}]"#.into(),
        vec![Bytes::from_static(&[1])],
    );
    let d = Parser::Default;
    assert_eq!(Parser::default(), Parser::Default);
    assert_eq!(
        d.encode_event("/x", "e", &args, Some(4)),
        packet::encode_event("/x", "e", &args, Some(4))
    );
    assert_eq!(
        d.encode_recoverable("/", "e", &args, "1-0"),
        packet::encode_recoverable("/", "e", &args, "1-0")
    );
    assert_eq!(
        d.encode_ack("/", 3, &args),
        packet::encode_ack("/", 3, &args)
    );
    assert_eq!(
        d.encode_connect("/", r#"{"sid":"x"}"#),
        packet::encode_connect("/", r#"{"sid":"x"}"#)
    );
    assert_eq!(
        d.encode_connect_error("/", "m", Some(&json!(1))),
        packet::encode_connect_error("/", "m", Some(&json!(1)))
    );
    assert_eq!(d.encode_disconnect("/"), packet::encode_disconnect("/"));
    let frames = d.encode_event("/", "e", &args, None);
    let Frame::Text(t) = &frames[0] else {
        panic!("text first")
    };
    assert_eq!(t.as_str(), r#"451-["e","a",{"_placeholder":true,"num":0}]"#);
}

// ---------------------------------------------------------------------------
// What the decoder checks

/// The reference's `checkPacket`: an integer type 0..=4, a string
/// namespace, `data` as the type wants it, an integer id if any.
#[test]
fn the_decoder_checks_what_check_packet_checks() {
    let ok_event = || Some(Mp::Array(vec![s("message")]));
    // Types: integers 0..=4 (an integral float is an integer in JS).
    for bad in [
        Mp::from(5),
        Mp::from(-1),
        Mp::from(1.5),
        s("2"),
        Mp::Nil,
        undefined(),
    ] {
        let bytes = encode(&map(vec![
            ("type", bad.clone()),
            ("nsp", s("/")),
            ("data", Mp::Array(vec![s("m")])),
        ]));
        assert_eq!(
            decode(&bytes).err(),
            Some(PacketError::UnknownType),
            "{bad}"
        );
    }
    let bytes = encode(&map(vec![
        ("type", Mp::F64(2.0)),
        ("nsp", s("/")),
        ("data", Mp::Array(vec![s("m")])),
    ]));
    assert!(matches!(got(&bytes), Ok(Got::Event { .. })));
    // No type at all.
    assert_eq!(
        decode(&encode(&map(vec![("nsp", s("/"))]))).err(),
        Some(PacketError::UnknownType)
    );

    // The namespace must be a string, and is required.
    for nsp in [None, Some(Mp::Nil), Some(Mp::from(1)), Some(undefined())] {
        let mut entries = vec![("type", Mp::from(0))];
        if let Some(n) = nsp.clone() {
            entries.push(("nsp", n));
        }
        assert!(decode(&encode(&map(entries))).is_err(), "nsp {nsp:?}");
    }
    // Any string is a namespace (unknown ones get "Invalid namespace").
    assert_eq!(
        got(&client(0, "", None, None)),
        Ok(Got::Connect {
            nsp: String::new(),
            auth: None
        })
    );

    // data by type.
    let data_cases: Vec<(i64, Option<Mp>, bool)> = vec![
        (0, None, true),
        (0, Some(undefined()), true),
        (0, Some(map(vec![("a", Mp::from(1))])), true),
        (0, Some(Mp::Nil), false),
        (0, Some(Mp::Array(vec![])), false),
        (0, Some(s("x")), false),
        (1, None, true),
        (1, Some(undefined()), true),
        (1, Some(Mp::Nil), false),
        (1, Some(map(vec![])), false),
        (2, None, false),
        (2, Some(map(vec![])), false),
        (2, ok_event(), true),
        (3, None, false),
        (3, Some(Mp::Array(vec![])), true),
        (3, Some(s("x")), false),
        (4, Some(s("x")), true),
        (4, Some(map(vec![])), true),
        (4, Some(Mp::Array(vec![])), false),
        (4, None, false),
    ];
    for (kind, data, valid) in data_cases {
        let bytes = client(kind, "/", data.clone(), None);
        assert_eq!(
            decode(&bytes).is_ok(),
            valid,
            "type {kind} data {data:?}: {:?}",
            decode(&bytes)
        );
        if !valid {
            assert_eq!(
                decode(&bytes).err(),
                Some(PacketError::InvalidPayload),
                "{kind} {data:?}"
            );
        }
    }

    // Ack ids.
    for (id, want) in [
        (Mp::from(0), Ok(Some(0))),
        (Mp::from(u64::MAX), Ok(Some(u64::MAX))),
        (Mp::F64(7.0), Ok(Some(7))),
        (undefined(), Ok(None)),
        (Mp::Nil, Err(PacketError::InvalidAckId)),
        (s("1"), Err(PacketError::InvalidAckId)),
        (Mp::F64(1.5), Err(PacketError::InvalidAckId)),
        // Ringway: acks are numbered from 0 up; the reference would answer
        // a negative id as it is.
        (Mp::from(-1), Err(PacketError::InvalidAckId)),
    ] {
        let bytes = client(2, "/", ok_event(), Some(id.clone()));
        let result = got(&bytes).map(|g| match g {
            Got::Event { id, .. } => id,
            other => panic!("{other:?}"),
        });
        assert_eq!(result, want, "id {id}");
    }
    // An ack without an id decodes (the gateway ignores it, as the
    // reference does an ack it does not know).
    assert!(matches!(
        got(&client(3, "/", Some(Mp::Array(vec![])), None)),
        Ok(Got::Ack { id: None, .. })
    ));

    // A key given twice keeps its last value, as a JavaScript object does;
    // other keys are ignored.
    let bytes = encode(&map(vec![
        ("type", s("nope")),
        ("nsp", s("/a")),
        ("data", Mp::Nil),
        ("options", map(vec![("compress", Mp::Boolean(true))])),
        ("type", Mp::from(2)),
        ("nsp", s("/b")),
        ("data", Mp::Array(vec![s("m"), Mp::Binary(vec![1])])),
    ]));
    let (nsp, id, name, args, bins) = got_event(&bytes);
    assert_eq!((nsp.as_str(), id, name.as_str()), ("/b", None, "m"));
    assert_eq!(args, json!([placeholder(0)]));
    assert_eq!(bins, vec![Bytes::from_static(&[1])]);
}

/// Event names as the default parser takes them: a string that is not
/// reserved, or a number; anything else closes the session.
#[test]
fn event_names() {
    let name_of = |first: Mp| got(&event("/", vec![first, Mp::from(1)], None));
    assert!(matches!(name_of(s("hello")), Ok(Got::Event { name, .. }) if name == "hello"));
    assert!(matches!(name_of(Mp::from(42)), Ok(Got::Event { name, .. }) if name == "42"));
    assert!(matches!(name_of(Mp::F64(1.5)), Ok(Got::Event { name, .. }) if name == "1.5"));
    for reserved in RESERVED_EVENTS {
        assert_eq!(
            name_of(s(reserved)),
            Err(PacketError::ReservedEvent),
            "{reserved}"
        );
    }
    for bad in [
        Mp::Nil,
        Mp::Boolean(true),
        Mp::Binary(vec![1]),
        Mp::Array(vec![]),
        map(vec![]),
        undefined(),
    ] {
        assert_eq!(
            name_of(bad.clone()),
            Err(PacketError::InvalidPayload),
            "{bad}"
        );
    }
    // No name at all.
    assert_eq!(
        got(&event("/", vec![], None)),
        Err(PacketError::InvalidPayload)
    );
    // The arguments after the name.
    let (_, _, name, args, _) = got_event(&event("/", vec![s("e")], None));
    assert_eq!((name.as_str(), args), ("e", json!([])));
}

#[test]
fn malformed_msgpack_is_refused() {
    let good = event("/", vec![s("m"), Mp::from(1)], None);
    let cases: Vec<(&str, Bytes)> = vec![
        ("empty", Bytes::new()),
        ("not a map", encode(&Mp::Array(vec![Mp::from(2)]))),
        ("a string", encode(&s("42[\"m\"]"))),
        ("a number", hex("02")),
        ("reserved marker", hex("c1")),
        ("truncated", good.slice(..good.len() - 1)),
        ("trailing byte", {
            let mut v = good.to_vec();
            v.push(0);
            v.into()
        }),
        ("two packets in one message", {
            let mut v = good.to_vec();
            v.extend_from_slice(&good);
            v.into()
        }),
        // A map declaring 2^32-1 entries, an array 2^32-1 items, a string
        // and a binary 2^32-1 bytes: refused before anything is done for
        // them.
        ("huge map", hex("df ffffffff a474797065 02")),
        (
            "huge array",
            hex("83 a474797065 02 a36e7370 a12f a464617461 dd ffffffff"),
        ),
        ("huge string", hex("81 db ffffffff 61")),
        (
            "huge binary",
            hex("83 a474797065 02 a36e7370 a12f a464617461 92 a161 c6 ffffffff"),
        ),
        (
            "huge ext",
            hex("83 a474797065 02 a36e7370 a12f a464617461 92 a161 c9 ffffffff 00"),
        ),
        (
            "an array as a map key",
            encode(&Mp::Map(vec![
                (s("type"), Mp::from(2)),
                (s("nsp"), s("/")),
                (
                    s("data"),
                    Mp::Array(vec![
                        s("m"),
                        Mp::Map(vec![(Mp::Array(vec![]), Mp::from(1))]),
                    ]),
                ),
            ])),
        ),
        (
            "a float as a map key",
            encode(&Mp::Map(vec![
                (s("type"), Mp::from(0)),
                (s("nsp"), s("/")),
                (s("data"), Mp::Map(vec![(Mp::F64(1.5), Mp::from(1))])),
            ])),
        ),
        (
            "a fake placeholder",
            event(
                "/",
                vec![
                    s("m"),
                    map(vec![
                        ("_placeholder", Mp::Boolean(true)),
                        ("num", Mp::from(0)),
                    ]),
                ],
                None,
            ),
        ),
    ];
    for (what, bytes) in cases {
        let result = std::panic::catch_unwind(|| decode(&bytes));
        assert!(
            matches!(result, Ok(Err(_))),
            "{what} ({}): {result:?}",
            to_hex(&bytes)
        );
    }
    // A key twice in a map of the data (JavaScript keeps the last value:
    // the JSON would keep both, and the first one's binaries): refused;
    // also when two keys are the same property name ("1" and 1).
    for entries in [
        vec![(s("a"), Mp::Binary(vec![1])), (s("a"), Mp::Nil)],
        vec![(s("1"), Mp::from(1)), (Mp::from(1), Mp::from(2))],
    ] {
        let bytes = event("/", vec![s("m"), Mp::Map(entries.clone())], None);
        assert_eq!(
            decode(&bytes).err(),
            Some(PacketError::Msgpack("a key twice in a map")),
            "{entries:?}"
        );
    }
    // Binaries in a CONNECT payload (found by the fuzz target: they had
    // nowhere to go, their placeholders left behind).
    for binary in [
        Mp::Binary(vec![1]),
        Mp::Ext(8, vec![0]),
        Mp::Ext(0, vec![1, 2]),
    ] {
        let auth = map(vec![
            ("token", s("t")),
            ("offset", Mp::Array(vec![binary.clone()])),
        ]);
        assert_eq!(
            decode(&client(0, "/", Some(auth), None)).err(),
            Some(PacketError::UnexpectedBinary),
            "{binary}"
        );
    }
    // `_placeholder` that is not `true` is an ordinary key.
    let (_, _, _, args, bins) = got_event(&event(
        "/",
        vec![s("m"), map(vec![("_placeholder", Mp::from(1))])],
        None,
    ));
    assert_eq!(args, json!([{"_placeholder": 1}]));
    assert!(bins.is_empty());
}

#[test]
fn nesting_and_binaries_are_bounded() {
    // `depth` containers nested in `data`, below the packet's own map.
    let nested = |depth: usize| {
        let mut v = Mp::Array(vec![]);
        for _ in 1..depth {
            v = Mp::Array(vec![v]);
        }
        event("/", vec![s("m"), v], None)
    };
    // The packet map and `data` are two containers.
    assert!(decode(&nested(MAX_DEPTH - 2)).is_ok());
    assert_eq!(
        decode(&nested(MAX_DEPTH - 1)).err(),
        Some(PacketError::Msgpack("nested too deep"))
    );
    // Deep enough to break a recursive decoder's stack: refused, quickly.
    let mut deep = vec![0x82, 0xa4];
    deep.extend_from_slice(b"type");
    deep.push(0x02);
    deep.extend_from_slice(&[0xa4]);
    deep.extend_from_slice(b"data");
    deep.extend(std::iter::repeat_n(0x91, 1_000_000));
    deep.push(0xc0);
    assert!(decode(&Bytes::from(deep)).is_err());
    // The deepest accepted is still JSON the rest of the gateway reads.
    let (_, _, _, args, _) = got_event(&nested(MAX_DEPTH - 2));
    assert!(args.is_array());

    let bins = |n: usize| {
        let mut items = vec![s("m")];
        items.extend((0..n).map(|i| Mp::Binary(vec![i as u8])));
        event("/", items, None)
    };
    let (_, _, _, args, got_bins) = got_event(&bins(MAX_BINARIES));
    assert_eq!(got_bins.len(), MAX_BINARIES);
    assert_eq!(args[MAX_BINARIES - 1], placeholder(MAX_BINARIES - 1));
    assert_eq!(
        decode(&bins(MAX_BINARIES + 1)).err(),
        Some(PacketError::IllegalAttachments)
    );
}

/// What a JavaScript handler would get, as `JSON.stringify` shows it.
#[test]
fn javascript_values_map_to_json() {
    let cases: Vec<(Mp, Value)> = vec![
        (Mp::Array(vec![undefined(), Mp::from(1)]), json!([null, 1])),
        (
            map(vec![
                ("a", undefined()),
                ("b", Mp::from(1)),
                ("c", undefined()),
            ]),
            json!({"b": 1}),
        ),
        (map(vec![("a", undefined())]), json!({})),
        // Date (fixext 8, type 0), also before 1970 and out of range.
        (
            Mp::Ext(0, 1_700_000_000_123i64.to_be_bytes().to_vec()),
            json!("2023-11-14T22:13:20.123Z"),
        ),
        (
            Mp::Ext(0, (-1i64).to_be_bytes().to_vec()),
            json!("1969-12-31T23:59:59.999Z"),
        ),
        (Mp::Ext(0, i64::MAX.to_be_bytes().to_vec()), Value::Null),
        (Mp::F64(f64::NAN), Value::Null),
        (Mp::F64(f64::INFINITY), Value::Null),
        (Mp::F32(0.5), json!(0.5)),
        (Mp::F64(-0.25), json!(-0.25)),
        (Mp::from(u64::MAX), json!(u64::MAX)),
        (Mp::from(i64::MIN), json!(i64::MIN)),
        (
            Mp::String(rmpv::Utf8String::from(String::from("a\"\\\n\u{1}é🚀"))),
            json!("a\"\\\n\u{1}é🚀"),
        ),
        // Keys as JavaScript makes property names of them.
        (
            Mp::Map(vec![
                (Mp::from(1), s("one")),
                (Mp::from(-2), s("minus")),
                (Mp::Nil, s("nil")),
                (Mp::Boolean(true), s("t")),
            ]),
            json!({"1": "one", "-2": "minus", "null": "nil", "true": "t"}),
        ),
    ];
    for (value, want) in cases {
        let (_, _, _, args, bins) = got_event(&event("/", vec![s("m"), value.clone()], None));
        assert_eq!(args, json!([want]), "{value}");
        assert!(bins.is_empty());
    }
    // Invalid UTF-8 is replaced, as Node's Buffer.toString does.
    let mut bytes = event("/", vec![s("m"), s("ab")], None).to_vec();
    let at = bytes
        .windows(3)
        .position(|w| w == [0xa2, b'a', b'b'])
        .expect("the string");
    bytes[at + 1] = 0xff;
    let (_, _, _, args, _) = got_event(&Bytes::from(bytes));
    assert_eq!(args, json!(["\u{fffd}b"]));

    // Binaries: bin, an ArrayBuffer (ext 8/16/32 of type 0) and other ext
    // types (`[type, <binary>]`), numbered in order of appearance.
    let (_, _, _, args, bins) = got_event(&event(
        "/",
        vec![
            s("m"),
            Mp::Binary(vec![1]),
            map(vec![(
                "deep",
                Mp::Array(vec![Mp::Ext(0, vec![2, 2, 2]), Mp::Ext(5, vec![3])]),
            )]),
            Mp::Ext(-1, vec![4; 16]),
            Mp::Binary(vec![]),
        ],
        None,
    ));
    assert_eq!(
        args,
        json!([
            placeholder(0),
            {"deep": [placeholder(1), [5, placeholder(2)]]},
            [-1, placeholder(3)],
            placeholder(4)
        ])
    );
    assert_eq!(
        bins,
        vec![
            Bytes::from_static(&[1]),
            Bytes::from_static(&[2, 2, 2]),
            Bytes::from_static(&[3]),
            Bytes::from(vec![4u8; 16]),
            Bytes::new()
        ]
    );
}

/// Placeholders that point at no attachment go out as plain maps (as the
/// default parser sends them as plain JSON).
#[test]
fn stray_placeholders_stay_maps() {
    let args = Payload::from_json_array(r#"[{"_placeholder":true,"num":0}]"#.into());
    let v = value_of(&one(Parser::Msgpack.encode_event("/", "e", &args, None)));
    assert_eq!(
        field(&v, "data"),
        Some(&Mp::Array(vec![
            s("e"),
            map(vec![
                ("_placeholder", Mp::Boolean(true)),
                ("num", Mp::from(0))
            ])
        ]))
    );
}

// ---------------------------------------------------------------------------
// strategies

fn tricky_string() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        3 => any::<char>(),
        2 => prop::sample::select(vec![
            '"', '\\', '\u{1e}', '\0', '\n', '\u{7f}', '\u{2028}', 'é', '😀', '[', '{', ',', ':',
            '/', '0', ' ',
        ]),
        2 => prop::char::range('a', 'z'),
    ];
    prop::collection::vec(c, 0..16).prop_map(String::from_iter)
}

/// Floats that survive JSON text both ways (all finite ones do).
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        Just(0.1),
        Just(-1e300),
        Just(5e-324),
        Just(3.0),
    ]
}

/// msgpack values a client may send that have an exact JSON + binaries
/// form (no `undefined`, dates or ext values, string keys).
fn mp_value() -> impl Strategy<Value = Mp> {
    let leaf = prop_oneof![
        Just(Mp::Nil),
        any::<bool>().prop_map(Mp::Boolean),
        any::<i64>().prop_map(Mp::from),
        any::<u64>().prop_map(Mp::from),
        float().prop_map(Mp::F64),
        tricky_string().prop_map(|t| Mp::from(t.as_str())),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Mp::Binary),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Mp::Array),
            prop::collection::vec(
                (
                    tricky_string().prop_filter("placeholder key", |k| k != "_placeholder"),
                    inner
                ),
                0..5
            )
            .prop_map(|kv| {
                // Unique keys (the decoder refuses a key twice).
                let mut seen = std::collections::HashSet::new();
                Mp::Map(
                    kv.into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .map(|(k, v)| (s(&k), v))
                        .collect(),
                )
            }),
        ]
    })
}

fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![tricky_string(), Just("message".to_owned())]
        .prop_filter("reserved", |n| !RESERVED_EVENTS.contains(&n.as_str()))
}

fn nsp_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_owned()),
        tricky_string().prop_map(|t| format!("/{t}")),
    ]
}

fn count_bins(v: &Mp) -> usize {
    match v {
        Mp::Binary(_) => 1,
        Mp::Array(items) => items.iter().map(count_bins).sum(),
        Mp::Map(entries) => entries.iter().map(|(_, v)| count_bins(v)).sum(),
        _ => 0,
    }
}

/// A text frame's Socket.IO packet (the default parser's wire form).
fn text_packet(frame: &Frame) -> Packet<'_> {
    let Frame::Text(t) = frame else {
        panic!("text first, got {frame:?}");
    };
    match decode_text(t.as_str()) {
        Ok(EioPacket::Message(m)) => packet::decode(m).expect("the default parser reads it"),
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let bytes = Bytes::from(bytes);
        let result = std::panic::catch_unwind(|| decode(&bytes).map(|mut d| d.take().1.len()));
        prop_assert!(result.is_ok(), "decode panicked on {}", to_hex(&bytes));
    }

    /// Valid packets with bytes flipped, cut or inserted.
    #[test]
    fn prop_decode_never_panics_on_mutated_packets(
        args in prop::collection::vec(mp_value(), 0..4),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut items = vec![s("m")];
        items.extend(args);
        let mut bytes = event("/", items, Some(1)).to_vec();
        for (at, byte, how) in edits {
            let i = at.index(bytes.len() + 1);
            match how {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => bytes.truncate(i),
            }
        }
        let bytes = Bytes::from(bytes);
        let result = std::panic::catch_unwind(|| decode(&bytes).map(|mut d| d.take().1.len()));
        prop_assert!(result.is_ok(), "decode panicked on {}", to_hex(&bytes));
    }

    /// A client's event, decoded into a Payload and encoded back by the
    /// gateway, is the same msgpack data: values, binaries, key order.
    #[test]
    fn prop_event_round_trip(
        nsp in nsp_strategy(),
        name in name_strategy(),
        args in prop::collection::vec(mp_value(), 0..5),
        id in prop::option::of(any::<u64>()),
    ) {
        let mut items = vec![s(&name)];
        items.extend(args.iter().cloned());
        let bytes = event(&nsp, items.clone(), id);
        let Ok(Got::Event { nsp: n, id: i, name: na, args: payload }) = got(&bytes) else {
            panic!("{:?}", got(&bytes));
        };
        prop_assert_eq!((&n, i, &na), (&nsp, id, &name));
        prop_assert_eq!(payload.attachments().len(), args.iter().map(count_bins).sum::<usize>());
        let v = value_of(&one(Parser::Msgpack.encode_event(&n, &na, &payload, i)));
        prop_assert_eq!(field(&v, "data"), Some(&Mp::Array(items)));
        prop_assert_eq!(field(&v, "nsp"), Some(&s(&nsp)));
        let want_id = id.map(Mp::from);
        prop_assert_eq!(field(&v, "id"), want_id.as_ref());
    }

    #[test]
    fn prop_ack_round_trip(
        nsp in nsp_strategy(),
        args in prop::collection::vec(mp_value(), 0..5),
        id in any::<u64>(),
    ) {
        let bytes = client(3, &nsp, Some(Mp::Array(args.clone())), Some(Mp::from(id)));
        let Ok(Got::Ack { nsp: n, id: Some(i), args: payload }) = got(&bytes) else {
            panic!("{:?}", got(&bytes));
        };
        prop_assert_eq!(i, id);
        let v = value_of(&one(Parser::Msgpack.encode_ack(&n, i, &payload)));
        prop_assert_eq!(field(&v, "data"), Some(&Mp::Array(args)));
        prop_assert_eq!(field(&v, "id"), Some(&Mp::from(id)));
        prop_assert_eq!(field(&v, "type"), Some(&Mp::from(3)));
    }

    /// A CONNECT payload (auth) comes back as the CONNECT answer's data
    /// would carry it.
    #[test]
    fn prop_connect_round_trip(
        nsp in nsp_strategy(),
        entries in prop::collection::vec((tricky_string(), mp_value()), 0..5),
    ) {
        // Binaries have no JSON form of their own in an auth object: the
        // CONNECT keeps placeholders, as the default parser would keep them.
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<(String, Mp)> = entries
            .into_iter()
            .filter(|(k, v)| k != "_placeholder" && count_bins(v) == 0 && seen.insert(k.clone()))
            .collect();
        let data = Mp::Map(entries.iter().map(|(k, v)| (s(k), v.clone())).collect());
        let bytes = client(0, &nsp, Some(data.clone()), None);
        let Ok(Got::Connect { nsp: n, auth: Some(auth) }) = got(&bytes) else {
            panic!("{:?}", got(&bytes));
        };
        prop_assert_eq!(&n, &nsp);
        let v = value_of(&Parser::Msgpack.encode_connect(&n, &auth.to_string()));
        // serde_json's map sorts the keys: compare as JSON.
        let back: Value = serde_json::from_str(&mp_json(field(&v, "data").expect("data"))).expect("json");
        prop_assert_eq!(back, auth);
    }

    /// Both parsers carry the same arguments: a msgpack client's event,
    /// written by the default parser (text + attachments) and read back by
    /// it, is the same Payload; written again in msgpack, the same data.
    #[test]
    fn prop_parsers_agree(
        name in name_strategy(),
        args in prop::collection::vec(mp_value(), 0..5),
        id in prop::option::of(0u64..1_000_000),
    ) {
        let mut items = vec![s(&name)];
        items.extend(args.iter().cloned());
        let bins = args.iter().map(count_bins).sum::<usize>();
        prop_assume!(bins <= packet::MAX_ATTACHMENTS);
        let Ok(Got::Event { args: from_msgpack, .. }) = got(&event("/", items.clone(), id)) else {
            panic!("decode");
        };
        let frames = Parser::Default.encode_event("/x", &name, &from_msgpack, id);
        prop_assert_eq!(frames.len(), 1 + bins);
        let attachments: Vec<Bytes> = frames[1..]
            .iter()
            .map(|f| match f {
                Frame::Binary(b) => b.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        let Packet::Event { nsp, id: i, name: na, args: text_args, attachments: count } =
            text_packet(&frames[0])
        else {
            panic!("an event");
        };
        prop_assert_eq!((nsp, i, &na, count), ("/x", id, &name, bins));
        let from_text = if bins > 0 {
            Payload::checked(text_args, attachments).expect("placeholders")
        } else {
            Payload::from_json_array(text_args)
        };
        prop_assert_eq!(from_text.values(), from_msgpack.values());
        prop_assert_eq!(from_text.attachments(), from_msgpack.attachments());
        let v = value_of(&one(Parser::Msgpack.encode_event("/", &na, &from_text, i)));
        prop_assert_eq!(field(&v, "data"), Some(&Mp::Array(items)));
    }
}

/// A msgpack value without binaries as JSON text (for comparisons that
/// ignore key order).
fn mp_json(v: &Mp) -> String {
    fn to_value(v: &Mp) -> Value {
        match v {
            Mp::Nil => Value::Null,
            Mp::Boolean(b) => Value::Bool(*b),
            Mp::Integer(n) => n
                .as_u64()
                .map(Value::from)
                .or_else(|| n.as_i64().map(Value::from))
                .expect("an integer"),
            Mp::F32(f) => json!(f64::from(*f)),
            Mp::F64(f) => json!(f),
            Mp::String(t) => Value::from(t.as_str().expect("utf-8")),
            Mp::Array(items) => Value::Array(items.iter().map(to_value).collect()),
            Mp::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_str().expect("string key").to_owned(), to_value(v)))
                    .collect(),
            ),
            other => panic!("no JSON form: {other}"),
        }
    }
    to_value(v).to_string()
}
