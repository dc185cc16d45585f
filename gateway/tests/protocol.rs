//! The wire protocol against a real gateway process: the example exchanges
//! of the protocol summary, what the official protocol test suites expect,
//! and every bad request of the error table.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

const SIO: &str = "/socket.io/";
const EIO: &str = "/engine.io/";

#[tokio::test]
async fn polling_handshake_sends_the_open_packet() {
    let gw = Gateway::start_suite();
    let resp = get(&gw.addr, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    let text = resp.text();
    let open: serde_json::Value = serde_json::from_str(&text[1..]).unwrap();
    assert!(text.starts_with('0'));
    assert_eq!(open["sid"].as_str().unwrap().len(), 20);
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["pingTimeout"], 200);
    assert_eq!(open["maxPayload"], 1_000_000);
}

#[tokio::test]
async fn reference_defaults_are_the_defaults() {
    let gw = Gateway::start(&[]);
    let s = Polling::open(&gw.addr, SIO).await;
    assert_eq!(s.open["pingInterval"], 25_000);
    assert_eq!(s.open["pingTimeout"], 20_000);
    assert_eq!(s.open["maxPayload"], 1_000_000);
}

#[tokio::test]
async fn example_exchange_over_polling() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, SIO).await;
    s.send("40").await;
    let packets = s.next_non_ping().await;
    let connect = &packets[0];
    assert!(connect.starts_with("40{\"sid\":\""), "{connect}");
    let mut rest = packets[1..].to_vec();
    if rest.is_empty() {
        rest = s.next_non_ping().await;
    }
    assert_eq!(rest, vec!["42[\"auth\",{}]".to_owned()]);

    s.send(r#"42["message",1,"2",{"3":[true]}]"#).await;
    assert_eq!(
        s.next_non_ping().await,
        vec![r#"42["message-back",1,"2",{"3":[true]}]"#.to_owned()]
    );
    s.send(r#"421["message-with-ack",1]"#).await;
    assert_eq!(s.next_non_ping().await, vec!["431[1]".to_owned()]);
}

#[tokio::test]
async fn batched_post_delivers_every_message_in_order() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, EIO).await;
    // A JSON-escaped separator inside a message is data, not a separator.
    s.send("4hello\u{1e}4world\u{1e}bAQID\u{1e}4\u{1e}4\"\\u001e\"")
        .await;
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(s.next_non_ping().await);
    }
    assert_eq!(got, ["4hello", "4world", "bAQID", "4", "4\"\\u001e\""]);
}

#[tokio::test]
async fn error_table() {
    let gw = Gateway::start_suite();
    let a = &gw.addr;
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "GET",
            "/socket.io/?EIO=4&transport=polling&sid=nope",
            400,
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
        (
            "POST",
            "/socket.io/?EIO=4&transport=polling&sid=nope",
            400,
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA",
            400,
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=foo",
            400,
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=4",
            400,
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
        (
            "POST",
            "/socket.io/?EIO=4&transport=polling",
            400,
            r#"{"code":2,"message":"Bad handshake method"}"#,
        ),
        (
            "PUT",
            "/socket.io/?EIO=4&transport=polling",
            400,
            r#"{"code":2,"message":"Bad handshake method"}"#,
        ),
        (
            "DELETE",
            "/socket.io/?EIO=4&transport=polling",
            400,
            r#"{"code":2,"message":"Bad handshake method"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=2&transport=polling",
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=5&transport=polling",
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "GET",
            "/socket.io/?transport=polling",
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=websocket",
            400,
            r#"{"code":3,"message":"Bad request"}"#,
        ),
        (
            "GET",
            "/engine.io/?EIO=4&transport=foo",
            400,
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
    ];
    for (method, pq, status, body) in cases {
        let resp = request(a, method, pq, &[], bytes::Bytes::new()).await;
        assert_eq!(resp.status, *status, "{method} {pq}");
        assert_eq!(resp.text(), *body, "{method} {pq}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{method} {pq}"
        );
    }
    let resp = get(a, "/nowhere").await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn wrong_transport_for_a_sid_is_a_bad_request() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, SIO).await;
    let resp = get(
        &gw.addr,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={}", s.sid),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.text(), r#"{"code":3,"message":"Bad request"}"#);
}

#[tokio::test]
async fn second_concurrent_get_closes_the_session() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, EIO).await;
    let first = {
        let addr = gw.addr.clone();
        let q = s.query();
        tokio::spawn(async move { get(&addr, &q).await })
    };
    common::wait_poll_reached(&gw.addr, &first).await;
    let second = s.get().await;
    assert_eq!(second.status, 400);
    assert_eq!(second.text(), "");
    let first = first.await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "1");
    ringway_testkit::eventually(Duration::from_secs(5), "the session to be gone", || async {
        s.get().await.status == 400
    })
    .await;
    let after = s.get().await;
    assert_eq!(after.text(), r#"{"code":1,"message":"Session ID unknown"}"#);
}

#[tokio::test]
async fn post_over_max_payload_is_refused_with_413_and_the_session_lives() {
    let gw = Gateway::start(&["--max-payload", "1000", "--max-queued-bytes", "100000"]);
    let s = Polling::open(&gw.addr, EIO).await;
    let big = format!("4{}", "x".repeat(2000));
    let resp = s.post(&big).await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.text(), "");
    // A chunked body without a length is cut at the limit too.
    let resp = request(
        &gw.addr,
        "POST",
        &s.query(),
        &[("transfer-encoding", "chunked")],
        big.clone(),
    )
    .await;
    assert_eq!(resp.status, 413);
    // Exactly maxPayload bytes is fine, and the session still works.
    let exact = format!("4{}", "y".repeat(999));
    s.send(&exact).await;
    assert_eq!(s.next_non_ping().await, vec![exact]);
}

/// A POST announced over maxPayload (up to 4 x) is answered 413 at once,
/// and what the client still sends is read and dropped: it finishes its
/// upload, reads the answer, and its connection serves the next request
/// (no reset mid-upload). One announced larger gets the 413 and its
/// connection closed.
#[tokio::test]
async fn the_body_of_a_post_over_max_payload_is_read_and_dropped_up_to_a_bound() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&["--max-payload", "1000", "--max-queued-bytes", "100000"]);
    let s = Polling::open(&gw.addr, EIO).await;
    let head = |length: usize| {
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {length}\r\n\r\n",
            s.query()
        )
    };
    async fn answer(stream: &mut tokio::net::TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    let mut stream = tokio::net::TcpStream::connect(&gw.addr)
        .await
        .expect("connect");
    stream.write_all(head(3000).as_bytes()).await.expect("head");
    assert!(answer(&mut stream).await.starts_with("HTTP/1.1 413"));
    // The rest of the upload is taken, then the same connection serves.
    stream
        .write_all(&[b'x'; 3000])
        .await
        .expect("the body is read");
    let post = format!("{}4still", head(6));
    stream
        .write_all(post.as_bytes())
        .await
        .expect("next request");
    let next = answer(&mut stream).await;
    assert!(
        next.starts_with("HTTP/1.1 200") && next.ends_with("ok"),
        "{next}"
    );

    // Over 4 x maxPayload: answered, then closed.
    let mut stream = tokio::net::TcpStream::connect(&gw.addr)
        .await
        .expect("connect");
    stream.write_all(head(5000).as_bytes()).await.expect("head");
    assert!(answer(&mut stream).await.starts_with("HTTP/1.1 413"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is closed");
    // The session lived through both and got the packet posted after.
    assert_eq!(s.next_non_ping().await, vec!["4still"]);
}

#[tokio::test]
async fn malformed_post_closes_the_session_after_the_good_packets() {
    let gw = Gateway::start_suite();
    for bad in ["9xyz", "", "2", "2probe", "\u{1e}4hello", "é", "😀x"] {
        let s = Polling::open(&gw.addr, EIO).await;
        let resp = s.post(bad).await;
        assert_eq!((resp.status, resp.text().as_str()), (200, "ok"), "{bad:?}");
        // An Engine.IO error closes the session at once, as the
        // reference's: the next GET finds no session.
        let after = s.get().await;
        assert_eq!(
            after.text(),
            r#"{"code":1,"message":"Session ID unknown"}"#,
            "{bad:?}"
        );
    }
    // Packets before the bad one are delivered: the pending GET sees them.
    let s = Polling::open(&gw.addr, EIO).await;
    let pending = {
        let addr = gw.addr.clone();
        let q = s.query();
        tokio::spawn(async move { get(&addr, &q).await })
    };
    common::wait_poll_reached(&gw.addr, &pending).await;
    s.send("4hello\u{1e}9x\u{1e}4world").await;
    assert_eq!(pending.await.unwrap().text(), "4hello\u{1e}1");
    assert_eq!(s.get().await.status, 400);
    // An octet-stream body is refused and closes the session.
    let s = Polling::open(&gw.addr, EIO).await;
    let resp = request(
        &gw.addr,
        "POST",
        &s.query(),
        &[("content-type", "application/octet-stream")],
        "4x",
    )
    .await;
    assert_eq!((resp.status, resp.text().as_str()), (400, ""));
    assert_eq!(s.get().await.status, 400);
}

/// A malformed Socket.IO packet (a valid Engine.IO message) with no GET
/// pending: the Socket.IO layer closes the session gracefully, as the
/// reference's `conn.close()`: the session is closing, the next GET gets a
/// noop and the close packet, then the sid is unknown. Invalid base64 and
/// invalid UTF-8 too: the reference decodes them leniently into garbage
/// its Socket.IO layer refuses that way.
#[tokio::test]
async fn a_malformed_socketio_packet_leaves_a_closing_session_for_the_next_get() {
    let gw = Gateway::start_suite();
    let bodies: [&[u8]; 6] = [b"4abc", b"42[\"x\"", b"49", b"4", b"b!!!", b"4\xff\xfe"];
    for bad in bodies {
        let p = Polling::open(&gw.addr, "/socket.io/").await;
        let resp = post(&gw.addr, &p.query(), bytes::Bytes::from_static(bad)).await;
        assert_eq!((resp.status, resp.text().as_str()), (200, "ok"), "{bad:?}");
        let closing = p.get().await;
        assert_eq!(
            (closing.status, closing.text().as_str()),
            (200, "6\u{1e}1"),
            "{bad:?}"
        );
        let after = p.get().await;
        assert_eq!(
            after.text(),
            r#"{"code":1,"message":"Session ID unknown"}"#,
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn other_methods_and_protocol_mismatch_on_a_session() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, EIO).await;
    let resp = request(&gw.addr, "PUT", &s.query(), &[], "4x").await;
    assert_eq!((resp.status, resp.text().as_str()), (500, ""));
    let resp = get(
        &gw.addr,
        &format!("/engine.io/?EIO=3&transport=polling&sid={}", s.sid),
    )
    .await;
    assert_eq!(resp.text(), r#"{"code":3,"message":"Bad request"}"#);
    // Neither closed the session; an empty sid is a new handshake.
    s.send("4alive").await;
    assert_eq!(s.next_non_ping().await, vec!["4alive"]);
    let resp = get(&gw.addr, "/engine.io/?EIO=4&transport=polling&sid=").await;
    assert!(resp.text().starts_with("0{\"sid\""));
}

#[tokio::test]
async fn cors_headers_and_preflight() {
    let gw = Gateway::start(&["--cors-origin", "http://allowed.example"]);
    let pre = request(
        &gw.addr,
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &[
            ("origin", "http://allowed.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type,x-foo"),
        ],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://allowed.example")
    );
    assert_eq!(pre.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("content-type,x-foo")
    );
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let evil = request(
        &gw.addr,
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &[
            ("origin", "http://evil.example"),
            ("access-control-request-method", "GET"),
        ],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(evil.status, 204);
    assert_eq!(evil.header("access-control-allow-origin"), None);
    let ok = request(
        &gw.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[("origin", "http://allowed.example")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("http://allowed.example")
    );
    assert_eq!(ok.header("vary"), Some("Origin"));
    let err = request(
        &gw.addr,
        "GET",
        "/socket.io/?EIO=4&transport=foo",
        &[("origin", "http://allowed.example")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(err.status, 400);
    assert_eq!(
        err.header("access-control-allow-origin"),
        Some("http://allowed.example")
    );
    // Without --cors-origin there are no CORS headers, and OPTIONS is a bad handshake.
    let plain = Gateway::start(&[]);
    let resp = request(
        &plain.addr,
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &[("origin", "http://allowed.example")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(
        resp.text(),
        r#"{"code":2,"message":"Bad handshake method"}"#
    );
    assert_eq!(resp.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn client_close_packet_ends_the_session() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, EIO).await;
    let pending = {
        let addr = gw.addr.clone();
        let q = s.query();
        tokio::spawn(async move { get(&addr, &q).await })
    };
    common::wait_poll_reached(&gw.addr, &pending).await;
    s.send("1").await;
    let pending = pending.await.unwrap();
    assert_eq!(pending.text(), "6");
    ringway_testkit::eventually(Duration::from_secs(5), "the session to be gone", || async {
        s.get().await.status == 400
    })
    .await;
    assert_eq!(s.get().await.status, 400);
}

#[tokio::test]
async fn polling_session_without_pong_is_closed_after_ping_timeout() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, EIO).await;
    let started = Instant::now();
    // The ping comes after pingInterval; we never answer it.
    assert_eq!(s.packets().await, vec!["2"]);
    let closed = s.get().await;
    assert_eq!(closed.text(), "1");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
}

#[tokio::test]
async fn polling_session_with_pongs_stays_open() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, EIO).await;
    for _ in 0..4 {
        assert_eq!(s.packets().await, vec!["2"]);
        s.send("3").await;
    }
    s.send("4still-here").await;
    assert_eq!(s.next_non_ping().await, vec!["4still-here"]);
}

#[tokio::test]
async fn upgrade_to_websocket() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, EIO).await;
    // Something queued before the upgrade must arrive on the WebSocket.
    s.send("4before").await;
    assert_eq!(s.next_non_ping().await, vec!["4before"]);
    let pending = {
        let addr = gw.addr.clone();
        let q = s.query();
        tokio::spawn(async move { get(&addr, &q).await })
    };
    common::wait_poll_reached(&gw.addr, &pending).await;
    let mut ws = ws_connect(
        &gw.addr,
        &format!("{EIO}?EIO=4&transport=websocket&sid={}", s.sid),
    )
    .await;
    ws_send(&mut ws, "2probe").await;
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some("3probe"));
    let pending = pending.await.unwrap();
    assert_eq!(pending.text(), "6");
    // Queued while the upgrade is in progress: must go out on the websocket.
    s.send("4during").await;
    ws_send(&mut ws, "5").await;
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some("4during"));
    ws_send(&mut ws, "4after").await;
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some("4after"));
    // Polling is over for this sid; a second websocket completes its
    // handshake and is closed at once, as the reference does.
    let resp = s.get().await;
    assert_eq!(resp.text(), r#"{"code":3,"message":"Bad request"}"#);
    let resp = s.post("4x").await;
    assert_eq!(resp.text(), r#"{"code":3,"message":"Bad request"}"#);
    let (mut second, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}{EIO}?EIO=4&transport=websocket&sid={}",
        gw.addr, s.sid
    ))
    .await
    .expect("101");
    assert_eq!(ws_text(&mut second).await, None);
}

#[tokio::test]
async fn websocket_upgrade_errors_are_plain_400s() {
    let gw = Gateway::start_suite();
    for pq in [
        "/socket.io/?EIO=4&transport=websocket&sid=nope",
        "/socket.io/?EIO=2&transport=websocket",
        "/socket.io/?EIO=4&transport=foo",
    ] {
        let resp = request(
            &gw.addr,
            "GET",
            pq,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(resp.status, 400, "{pq}");
        assert!(
            [
                "Session ID unknown",
                "Unsupported protocol version",
                "Transport unknown"
            ]
            .contains(&resp.text().as_str()),
            "{pq}: {}",
            resp.text()
        );
    }
}

#[tokio::test]
async fn direct_websocket_namespace_with_auth() {
    let gw = Gateway::start_suite();
    let (mut ws, open) = ws_open(&gw.addr).await;
    assert_eq!(open["upgrades"], serde_json::json!([]));
    ws_send(&mut ws, r#"40/custom,{"token":"abc"}"#).await;
    let connect = ws_text(&mut ws).await.unwrap();
    assert!(connect.starts_with("40/custom,{\"sid\":\""), "{connect}");
    assert_eq!(
        ws_text(&mut ws).await.as_deref(),
        Some(r#"42/custom,["auth",{"token":"abc"}]"#)
    );
    ws_send(&mut ws, r#"40/random,"#).await;
    assert_eq!(
        ws_text(&mut ws).await.as_deref(),
        Some(r#"44/random,{"message":"Invalid namespace"}"#)
    );
    // Multiplexed on the same session.
    ws_send(&mut ws, "40").await;
    assert!(ws_text(&mut ws).await.unwrap().starts_with("40{\"sid\":"));
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some(r#"42["auth",{}]"#));
    ws_send(&mut ws, r#"42/custom,["message","x"]"#).await;
    assert_eq!(
        ws_text(&mut ws).await.as_deref(),
        Some(r#"42/custom,["message-back","x"]"#)
    );
}

#[tokio::test]
async fn binary_event_and_ack_round_trip() {
    let gw = Gateway::start_suite();
    let (mut ws, _) = ws_open(&gw.addr).await;
    ws_send(&mut ws, "40").await;
    ws_text(&mut ws).await.unwrap();
    ws_text(&mut ws).await.unwrap();
    ws_send(
        &mut ws,
        r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
    )
    .await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    ws.send(Message::binary(vec![4u8, 5, 6])).await.unwrap();
    assert_eq!(
        ws_text(&mut ws).await.as_deref(),
        Some(r#"452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
    );
    assert_eq!(
        ws_frame(&mut ws).await,
        Some(Message::binary(vec![1u8, 2, 3]))
    );
    assert_eq!(
        ws_frame(&mut ws).await,
        Some(Message::binary(vec![4u8, 5, 6]))
    );
    ws_send(
        &mut ws,
        r#"451-7["message-with-ack",{"k":{"_placeholder":true,"num":0}}]"#,
    )
    .await;
    ws.send(Message::binary(vec![9u8])).await.unwrap();
    assert_eq!(
        ws_text(&mut ws).await.as_deref(),
        Some(r#"461-7[{"k":{"_placeholder":true,"num":0}}]"#)
    );
    assert_eq!(ws_frame(&mut ws).await, Some(Message::binary(vec![9u8])));
}

#[tokio::test]
async fn binary_over_polling_is_base64() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, SIO).await;
    s.send("40").await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(s.next_non_ping().await);
    }
    s.send("451-[\"message\",{\"_placeholder\":true,\"num\":0}]\u{1e}bAQID")
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(s.next_non_ping().await);
    }
    assert_eq!(
        got,
        vec![
            r#"451-["message-back",{"_placeholder":true,"num":0}]"#.to_owned(),
            "bAQID".to_owned()
        ]
    );
}

#[tokio::test]
async fn server_to_client_ack() {
    let gw = Gateway::start_suite();
    let (mut ws, _) = ws_open(&gw.addr).await;
    ws_send(&mut ws, "40").await;
    ws_text(&mut ws).await.unwrap();
    ws_text(&mut ws).await.unwrap();
    ws_send(&mut ws, r#"42["ask","q1"]"#).await;
    let question = ws_text(&mut ws).await.unwrap();
    let id: String = question
        .strip_prefix("42")
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    assert_eq!(question, format!(r#"42{id}["question","q1"]"#));
    ws_send(&mut ws, &format!(r#"43{id}["a1",2]"#)).await;
    assert_eq!(
        ws_text(&mut ws).await.as_deref(),
        Some(r#"42["answer","a1",2]"#)
    );
}

#[tokio::test]
async fn rooms_and_broadcast_with_exclusions() {
    let gw = Gateway::start_suite();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = ws_open(&gw.addr).await;
        ws_send(&mut ws, "40").await;
        ws_text(&mut ws).await.unwrap();
        ws_text(&mut ws).await.unwrap();
        clients.push(ws);
    }
    for ws in clients.iter_mut().take(2) {
        ws_send(ws, r#"421["join","r1"]"#).await;
        assert_eq!(ws_text(ws).await.as_deref(), Some("431[true]"));
    }
    ws_send(
        &mut clients[0],
        r#"422["broadcast",{"room":"r1","msg":{"n":1}}]"#,
    )
    .await;
    assert_eq!(
        ws_text(&mut clients[0]).await.as_deref(),
        Some(r#"42["message",{"n":1}]"#)
    );
    assert_eq!(ws_text(&mut clients[0]).await.as_deref(), Some("432[2]"));
    assert_eq!(
        ws_text(&mut clients[1]).await.as_deref(),
        Some(r#"42["message",{"n":1}]"#)
    );
    ws_send(&mut clients[1], r#"423["leave","r1"]"#).await;
    assert_eq!(ws_text(&mut clients[1]).await.as_deref(), Some("433[true]"));
    ws_send(
        &mut clients[2],
        r#"424["broadcast",{"room":"r1","msg":"two"}]"#,
    )
    .await;
    assert_eq!(ws_text(&mut clients[2]).await.as_deref(), Some("434[1]"));
    assert_eq!(
        ws_text(&mut clients[0]).await.as_deref(),
        Some(r#"42["message","two"]"#)
    );
    // Client 1 left and client 2 never joined: an echo is the next thing they see.
    for ws in clients.iter_mut().skip(1) {
        ws_send(ws, r#"42["echo","probe"]"#).await;
        assert_eq!(ws_text(ws).await.as_deref(), Some(r#"42["echo","probe"]"#));
    }
}

#[tokio::test]
async fn malformed_socketio_packets_close_the_session() {
    let gw = Gateway::start_suite();
    for bad in [
        "4",
        "42[",
        "49",
        r#"42"notarray""#,
        "42[]",
        r#"42["connect"]"#,
        r#"42["disconnect"]"#,
        "40\"str\"",
        "40[1]",
        r#"451-["m",{"_placeholder":true,"num":3}]"#,
        "45x-[]",
        "450-[\"m\"]",
        "4511-[\"m\"]",
        r#"41{"a":1}"#,
        r#"42/custom,["message"]"#,
        "41/custom,",
        "40",
        r#"44{"message":"x"}"#,
    ] {
        let (mut ws, _) = ws_open(&gw.addr).await;
        ws_send(&mut ws, "40").await;
        ws_text(&mut ws).await.unwrap();
        ws_text(&mut ws).await.unwrap();
        ws_send(&mut ws, bad).await;
        if bad.starts_with("451-") {
            let _ = ws.send(Message::binary(vec![1u8])).await;
        }
        assert_eq!(ws_text(&mut ws).await, None, "{bad:?} should close");
    }
    // A binary frame that nothing announced.
    let (mut ws, _) = ws_open(&gw.addr).await;
    ws.send(Message::binary(vec![1u8])).await.unwrap();
    assert_eq!(ws_text(&mut ws).await, None);
}

#[tokio::test]
async fn server_disconnect_and_close() {
    let gw = Gateway::start_suite();
    let (mut ws, _) = ws_open(&gw.addr).await;
    ws_send(&mut ws, "40/custom,").await;
    ws_text(&mut ws).await.unwrap();
    ws_text(&mut ws).await.unwrap();
    ws_send(&mut ws, r#"42/custom,["server-disconnect"]"#).await;
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some("41/custom,"));
    // The session itself goes on.
    ws_send(&mut ws, "40").await;
    assert!(ws_text(&mut ws).await.unwrap().starts_with("40{"));
    ws_text(&mut ws).await.unwrap();
    ws_send(&mut ws, r#"42["server-close"]"#).await;
    assert_eq!(ws_text(&mut ws).await, None);
}

/// A polling session the application closes while no GET is pending: the
/// next GET still gets the close packet (the client sees "transport
/// close", not an unknown sid); only then is the session gone.
#[tokio::test]
async fn a_polling_session_closed_between_two_gets_gets_its_close_packet() {
    let gw = Gateway::start_suite();
    let p = Polling::open(&gw.addr, "/socket.io/").await;
    p.send("40").await;
    let connected = p.packets().await;
    assert!(connected[0].starts_with("40{"), "{connected:?}");
    // No GET pending: the close comes between two GETs.
    p.send(r#"42["server-close"]"#).await;
    // The socket is gone once the server has closed it.
    common::wait_sample(&gw.addr, "ringway_sockets{namespace=\"/\"", |v| v == 0.0).await;
    // Packets posted now are not applied to the closed session.
    let late = p.post(r#"42["message","late"]"#).await;
    assert_eq!((late.status, late.text()), (200, "ok".to_owned()));
    let last = p.packets().await;
    assert_eq!(last[last.len().saturating_sub(2)..], ["6", "1"], "{last:?}");
    assert!(
        !last.iter().any(|packet| packet.contains("late")),
        "{last:?}"
    );
    let gone = p.get().await;
    assert_eq!(gone.status, 400);
    assert_eq!(gone.text(), r#"{"code":1,"message":"Session ID unknown"}"#);
}

#[tokio::test]
async fn websocket_without_pong_is_closed_after_ping_timeout() {
    let gw = Gateway::start_suite();
    let mut ws = ws_connect(&gw.addr, "/engine.io/?EIO=4&transport=websocket").await;
    let started = Instant::now();
    let open = ws.next_text().await;
    assert!(open.starts_with('0'));
    assert_eq!(ws.next_text().await, "2");
    // No pong: the server closes.
    let end = tokio::time::timeout(
        Duration::from_secs(3),
        futures_util::StreamExt::next(&mut ws),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(
            end,
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_)))
        ),
        "{end:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
}

trait NextText {
    async fn next_text(&mut self) -> String;
}

impl NextText for Ws {
    async fn next_text(&mut self) -> String {
        loop {
            match futures_util::StreamExt::next(self).await {
                Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
                Some(Ok(_)) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn polling_answers_hold_at_most_16_packets_and_keep_order() {
    let gw = Gateway::start(&[]);
    let s = Polling::open(&gw.addr, EIO).await;
    let body: Vec<String> = (0..40).map(|i| format!("4m{i}")).collect();
    s.send(&body.join("\u{1e}")).await;
    let mut got = Vec::new();
    while got.len() < 40 {
        let packets = s.next_non_ping().await;
        assert!(
            packets.len() <= 16,
            "{} packets in one answer",
            packets.len()
        );
        got.extend(packets);
    }
    assert_eq!(got, body);
    // 0 lifts the limit.
    let gw = Gateway::start(&["--max-poll-packets", "0"]);
    let s = Polling::open(&gw.addr, EIO).await;
    s.send(&body.join("\u{1e}")).await;
    assert_eq!(s.next_non_ping().await, body);
}

#[tokio::test]
async fn websocket_write_interval_holds_only_writes_that_follow_closely() {
    let gw = Gateway::start(&["--ws-write-interval", "600"]);
    let mut ws = ws_connect(&gw.addr, &format!("{EIO}?EIO=4&transport=websocket")).await;
    let open = ws_text(&mut ws).await.expect("open packet");
    assert!(open.starts_with('0'), "{open}");
    // A quiet spell longer than the interval: the next write goes at once.
    // fixed: a quiet spell is what is tested.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sent = Instant::now();
    ws_send(&mut ws, "4a").await;
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some("4a"));
    let first = Instant::now();
    assert!(
        first - sent < Duration::from_millis(500),
        "first write after a quiet spell held for {:?}",
        first - sent
    );
    // Written within the interval of that write: held until it is over,
    // then everything queued meanwhile, in order.
    ws_send(&mut ws, "4b").await;
    ws_send(&mut ws, "4c").await;
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some("4b"));
    let held = first.elapsed();
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some("4c"));
    assert!(
        held >= Duration::from_millis(500),
        "a write {held:?} after the last one was not held"
    );
}

#[tokio::test]
async fn websocket_writer_drains_what_was_queued_while_a_write_was_blocked() {
    let gw = Gateway::start(&["--max-queued-bytes", "67108864"]);
    let mut ws = ws_connect(&gw.addr, &format!("{EIO}?EIO=4&transport=websocket")).await;
    let open = ws_text(&mut ws).await.expect("open packet");
    assert!(open.starts_with('0'), "{open}");
    // More echoes than the sockets' buffers hold, while the client does
    // not read: the server's write blocks with more echoes queued behind.
    let big = format!("4{}", "x".repeat(64 << 10));
    let n = 400;
    for _ in 0..n {
        ws.feed(Message::text(big.clone())).await.expect("ws feed");
    }
    ws.flush().await.expect("ws flush");
    // All of them received: their echoes are queued behind the blocked
    // write.
    common::wait_sample(&gw.addr, "ringway_messages_received_total", |v| {
        v >= n as f64
    })
    .await;
    // Every echo arrives without waiting for another wake-up (the next
    // ping is 25 s away; each read gives up after 10 s).
    for i in 0..n {
        let echo = ws_text(&mut ws).await.expect("an echo");
        assert_eq!(echo.len(), big.len(), "echo {i}");
    }
}

/// Polling answers of at least 1 KiB are compressed when the client
/// accepts it (gzip first, else deflate), as the reference server's
/// `httpCompression`; smaller answers, clients that do not ask, and
/// `--http-compression-threshold 0` get them plain.
#[tokio::test]
async fn large_polling_answers_are_compressed_for_clients_that_accept_it() {
    use std::io::Read;
    let gw = Gateway::start(&[]);
    let p = Polling::open(&gw.addr, "/socket.io/").await;
    p.send("40").await;
    p.packets().await;
    let big = "z".repeat(5000);
    let get_with = |encoding: Option<&'static str>| {
        let addr = gw.addr.clone();
        let query = p.query();
        async move {
            let headers: Vec<(&str, &str)> = encoding
                .map(|e| vec![("accept-encoding", e)])
                .unwrap_or_default();
            request(&addr, "GET", &query, &headers, bytes::Bytes::new()).await
        }
    };
    // gzip.
    p.send(&format!(r#"42["message","{big}"]"#)).await;
    let resp = get_with(Some("gzip, deflate, br")).await;
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert!(resp
        .header("vary")
        .is_some_and(|v| v.contains("Accept-Encoding")));
    assert!(resp.body.len() < 1000, "{} bytes", resp.body.len());
    let mut text = String::new();
    flate2::read::GzDecoder::new(&resp.body[..])
        .read_to_string(&mut text)
        .expect("gzip");
    assert_eq!(text, format!(r#"42["message-back","{big}"]"#));
    // deflate (zlib) when gzip is refused.
    p.send(&format!(r#"42["message","{big}"]"#)).await;
    let resp = get_with(Some("gzip;q=0, deflate")).await;
    assert_eq!(resp.header("content-encoding"), Some("deflate"));
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(&resp.body[..])
        .read_to_string(&mut text)
        .expect("zlib");
    assert_eq!(text, format!(r#"42["message-back","{big}"]"#));
    // A client that does not ask.
    p.send(&format!(r#"42["message","{big}"]"#)).await;
    let resp = get_with(None).await;
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.text(), format!(r#"42["message-back","{big}"]"#));
    // Small answers stay plain.
    p.send(r#"42["message","small"]"#).await;
    let resp = get_with(Some("gzip")).await;
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.text(), r#"42["message-back","small"]"#);

    // Off.
    let off = Gateway::start(&["--http-compression-threshold", "0"]);
    let p = Polling::open(&off.addr, "/socket.io/").await;
    p.send("40").await;
    p.packets().await;
    p.send(&format!(r#"42["message","{big}"]"#)).await;
    let resp = request(
        &off.addr,
        "GET",
        &p.query(),
        &[("accept-encoding", "gzip")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.text(), format!(r#"42["message-back","{big}"]"#));
}

/// A WebSocket for a sid that is upgraded (or upgrading) already completes
/// its handshake (`101`) and is closed at once, as the reference server
/// does; the session goes on over its own WebSocket.
#[tokio::test]
async fn a_second_websocket_for_an_upgraded_session_gets_101_then_a_close() {
    let gw = Gateway::start_suite();
    let p = Polling::open(&gw.addr, "/socket.io/").await;
    let mut ws = p.upgrade().await;
    ws_send(&mut ws, "40").await;
    assert!(ws_text(&mut ws).await.expect("connect").starts_with("40{"));
    ws_text(&mut ws).await.expect("auth");
    let path = format!("/socket.io/?EIO=4&transport=websocket&sid={}", p.sid);
    let (mut second, resp) = tokio_tungstenite::connect_async(format!("ws://{}{path}", gw.addr))
        .await
        .expect("the handshake completes");
    assert_eq!(resp.status(), 101);
    assert_eq!(ws_text(&mut second).await, None, "closed at once");
    // The first WebSocket serves on.
    ws_send(&mut ws, r#"42["message","still"]"#).await;
    assert_eq!(
        ws_text(&mut ws).await.as_deref(),
        Some(r#"42["message-back","still"]"#)
    );
}

/// The frames of one exchange (the CONNECT answer and the `auth` event the
/// echo application emits with it) are written one by one, a timer tick
/// apart: a client that reads one frame per turn of its event loop, as the
/// official test suites do, receives each in its own read. (Timing on a
/// busy machine can still join two reads; with the writes batched they
/// were joined every time.)
#[tokio::test]
async fn packets_of_one_exchange_arrive_in_separate_reads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start_suite();
    // The WebSocket frames in `bytes` (server frames: unmasked).
    fn frames(mut bytes: &[u8]) -> Option<Vec<String>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if bytes.len() < 2 {
                return None;
            }
            let (len, head) = match bytes[1] & 0x7f {
                126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => return None,
                n => (n as usize, 2),
            };
            if bytes.len() < head + len {
                return None;
            }
            out.push(String::from_utf8_lossy(&bytes[head..head + len]).into_owned());
            bytes = &bytes[head + len..];
        }
        Some(out)
    }
    let mut separate = 0;
    const ROUNDS: usize = 30;
    for _ in 0..ROUNDS {
        let mut stream = tokio::net::TcpStream::connect(&gw.addr)
            .await
            .expect("connect");
        stream
            .write_all(
                format!(
                    "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    gw.addr
                )
                .as_bytes(),
            )
            .await
            .expect("upgrade");
        // The 101 and the open packet.
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        let opened = loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed during the handshake");
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                if let Some(f) = frames(&got[end + 4..]) {
                    if !f.is_empty() {
                        break f;
                    }
                }
            }
        };
        assert!(opened[0].starts_with("0{"), "{opened:?}");
        // CONNECT: a masked text frame "40" (mask 0: the payload as is).
        stream
            .write_all(&[0x81, 0x82, 0, 0, 0, 0, b'4', b'0'])
            .await
            .expect("connect");
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        let first = frames(&buf[..n]).unwrap_or_default();
        assert!(
            first.first().is_some_and(|f| f.starts_with("40{")),
            "{first:?}"
        );
        if first.len() == 1 {
            separate += 1;
        }
    }
    assert!(
        separate * 3 >= ROUNDS * 2,
        "only {separate} of {ROUNDS} CONNECT answers came alone in their read"
    );
}

/// A client (or a proxy cutting long polls) that gives up on a pending GET:
/// the reference closes the session ("poll connection closed
/// prematurely"); Ringway keeps it, takes nothing from its queue, and the
/// next GET gets what came meanwhile (a deliberate difference,
/// `docs/PROTOCOL_NOTES.md`).
#[tokio::test]
async fn an_aborted_long_poll_keeps_the_session_and_loses_nothing() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, EIO).await;
    let mut stream = tokio::net::TcpStream::connect(&gw.addr)
        .await
        .expect("connect");
    let req = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", s.query(), gw.addr);
    stream.write_all(req.as_bytes()).await.expect("write");
    // The GET is pending at the gateway; the client goes away.
    common::wait_held_polls(&gw.addr, 1).await;
    drop(stream);
    // fixed: the abort reaches the gateway first (nothing reports it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.send("4after-the-abort").await;
    assert_eq!(s.next_non_ping().await, vec!["4after-the-abort"]);
}

/// A GET racing the client's close packet (sent before it on another
/// connection, as the official suite's "forcefully closes the session"
/// does, but processed after it on another thread) gets the noop a
/// pending GET gets, not an unknown sid; a GET well after it finds no
/// session.
#[tokio::test]
async fn a_get_racing_the_client_close_packet_gets_a_noop() {
    let gw = Gateway::start_suite();
    let s = Polling::open(&gw.addr, EIO).await;
    let resp = s.post("1").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    let raced = s.get().await;
    assert_eq!((raced.status, raced.text().as_str()), (200, "6"));
    let s = Polling::open(&gw.addr, EIO).await;
    s.post("1").await;
    ringway_testkit::eventually(
        Duration::from_secs(5),
        "the close's grace to end",
        || async { s.get().await.status == 400 },
    )
    .await;
    assert_eq!(
        s.get().await.text(),
        r#"{"code":1,"message":"Session ID unknown"}"#
    );
}

/// A GET that begins while a WebSocket is attached was sent around the
/// client's `2probe` and `5` (the official suite sends `2probe`, `5`, then
/// a GET), and may be processed before them on another thread: it is
/// answered as the reference's single thread would, after the `5` as a
/// request after the upgrade (code 3); with no `5`, with a noop at the
/// reference's upgrade tick (100 ms after the probe was answered).
#[tokio::test]
async fn a_get_sent_around_the_upgrade_is_answered_as_after_it() {
    let gw = Gateway::start_suite();
    for finish in [true, false] {
        let s = Polling::open(&gw.addr, EIO).await;
        let mut ws = ws_connect(
            &gw.addr,
            &format!("{EIO}?EIO=4&transport=websocket&sid={}", s.sid),
        )
        .await;
        let raced = {
            let addr = gw.addr.clone();
            let q = s.query();
            tokio::spawn(async move { get(&addr, &q).await })
        };
        common::wait_poll_reached(&gw.addr, &raced).await;
        ws_send(&mut ws, "2probe").await;
        assert_eq!(ws_text(&mut ws).await.as_deref(), Some("3probe"));
        let probed = Instant::now();
        if finish {
            ws_send(&mut ws, "5").await;
            let raced = raced.await.unwrap();
            assert_eq!(raced.text(), r#"{"code":3,"message":"Bad request"}"#);
            ws_send(&mut ws, "4after").await;
            assert_eq!(ws_text(&mut ws).await.as_deref(), Some("4after"));
        } else {
            let raced = raced.await.unwrap();
            assert_eq!((raced.status, raced.text().as_str()), (200, "6"));
            assert!(probed.elapsed() >= Duration::from_millis(50));
        }
    }
}
