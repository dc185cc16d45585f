//! Socket.IO v2 clients (Engine.IO v3, Socket.IO protocol v4) with
//! `--allow-eio3`, against real gateway processes:
//!
//! - raw protocol: the refusal without the flag, the v3 handshake, the
//!   length-prefixed text payloads (lengths in UTF-16 units), binary as
//!   `b4<base64>` (`b64=1`) and in the binary payload form, WebSocket
//!   binary frames with their type byte, the heartbeat direction and
//!   timeout, the upgrade, the v2 CONNECTs and their errors, no pids or
//!   offsets with recovery on, v3 and v4 sessions side by side, a v3
//!   session forwarded and handed off across a cluster;
//! - interop: the official `socket.io-client` 2.x from npm
//!   (`tests/interop/js/v2.mjs`) against one gateway and through a
//!   round-robin nginx in front of three clustered gateways, and its
//!   browser bundle in headless Chromium (browsers poll with binary
//!   payloads, Node with base64).

mod common;

#[path = "browser/driver.rs"]
#[allow(dead_code)] // only part of the driver is used here
mod driver;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::cluster::Cluster;
use common::nginx::{Nginx, Upgrades};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SIO: &str = "/socket.io/";

/// The flags of the raw tests: v3 on, short heartbeats (v3 sessions time
/// out after 300 + 200 ms without a ping), the test namespaces.
const ARGS: &[&str] = &[
    "--allow-eio3",
    "--ping-interval",
    "300",
    "--ping-timeout",
    "200",
    "--namespace",
    "/",
    "--namespace",
    "/custom",
];

fn gateway() -> Gateway {
    Gateway::start(ARGS)
}

// ---------------------------------------------------------------------------
// A v3 client by hand

/// One packet of a v3 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Text(String),
    /// Binary data (from `b4<base64>` or the binary form).
    Bin(Vec<u8>),
}

fn text(s: &str) -> Item {
    Item::Text(s.to_owned())
}

/// Parses a v3 text payload: `<length>:<packet>`, lengths in UTF-16 code
/// units (written independently of the gateway's decoder).
fn parse_text(body: &str) -> Vec<Item> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (digits, after) = rest.split_once(':').expect("a length prefix");
        let units: usize = digits.parse().expect("decimal length");
        let mut taken = 0;
        let mut end = 0;
        for c in after.chars() {
            if taken == units {
                break;
            }
            taken += c.len_utf16();
            end += c.len_utf8();
        }
        assert_eq!(taken, units, "length {units} in {body:?}");
        let (packet, tail) = after.split_at(end);
        rest = tail;
        out.push(match packet.strip_prefix("b4") {
            Some(b64) => Item::Bin(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64"),
            ),
            None => text(packet),
        });
    }
    out
}

/// Parses a v3 binary payload: type byte, length digits, 0xff, packet.
fn parse_binary(body: &[u8]) -> Vec<Item> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        let end = after.iter().position(|&b| b == 0xff).expect("length end");
        let len = after[..end]
            .iter()
            .fold(0usize, |n, &d| n * 10 + usize::from(d));
        let packet = &after[end + 1..end + 1 + len];
        rest = &after[end + 1 + len..];
        out.push(match kind {
            0 => text(std::str::from_utf8(packet).expect("utf-8")),
            1 => {
                assert_eq!(packet[0], 4, "binary packets are messages");
                Item::Bin(packet[1..].to_vec())
            }
            other => panic!("type byte {other}"),
        });
    }
    out
}

/// A v3 text payload of these packets.
fn encode_text(items: &[Item]) -> String {
    let mut out = String::new();
    for item in items {
        let packet = match item {
            Item::Text(t) => t.clone(),
            Item::Bin(b) => format!("b4{}", base64::engine::general_purpose::STANDARD.encode(b)),
        };
        out.push_str(&format!("{}:{packet}", packet.encode_utf16().count()));
    }
    out
}

/// A v3 binary payload of these packets.
fn encode_binary(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        let (kind, packet) = match item {
            Item::Text(t) => (0u8, t.as_bytes().to_vec()),
            Item::Bin(b) => (1u8, [&[4u8][..], b].concat()),
        };
        out.push(kind);
        out.extend(packet.len().to_string().bytes().map(|d| d - b'0'));
        out.push(0xff);
        out.extend(packet);
    }
    out
}

/// A v3 polling session driven by hand.
struct V3 {
    addr: String,
    sid: String,
    open: Value,
}

impl V3 {
    /// Opens a session (`b64`: as socket.io-client 2 in Node); returns it
    /// and the packets that came after the open packet.
    async fn open(addr: &str, b64: bool) -> (V3, Vec<Item>) {
        let q = if b64 { "&b64=1" } else { "" };
        let resp = get(addr, &format!("{SIO}?EIO=3&transport=polling{q}")).await;
        assert_eq!(resp.status, 200, "v3 handshake: {}", resp.text());
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=UTF-8")
        );
        let mut items = parse_text(&resp.text());
        let Item::Text(open) = items.remove(0) else {
            panic!("open packet")
        };
        let open: Value =
            serde_json::from_str(open.strip_prefix('0').expect("open")).expect("json");
        let sid = open["sid"].as_str().expect("sid").to_owned();
        (
            V3 {
                addr: addr.to_owned(),
                sid,
                open,
            },
            items,
        )
    }

    /// Opens a session and reads until `/` is joined and the echo
    /// application's `auth` event arrived (in the handshake's answer, or
    /// later with recovery on: its emits go through the log).
    async fn joined(addr: &str, b64: bool) -> V3 {
        let (s, mut items) = V3::open(addr, b64).await;
        while !items.contains(&event(r#"["auth",{}]"#)) {
            items.extend(s.next_items().await);
        }
        assert_eq!(
            items,
            vec![text("40"), event(r#"["auth",{}]"#)],
            "what follows the open packet"
        );
        s
    }

    fn on(&self, addr: &str) -> V3 {
        V3 {
            addr: addr.to_owned(),
            sid: self.sid.clone(),
            open: self.open.clone(),
        }
    }

    fn query(&self) -> String {
        format!("{SIO}?EIO=3&transport=polling&sid={}", self.sid)
    }

    async fn get(&self) -> Resp {
        get(&self.addr, &self.query()).await
    }

    /// GET, parsed by its content type.
    async fn items(&self) -> Vec<Item> {
        let resp = self.get().await;
        assert_eq!(resp.status, 200, "v3 poll: {}", resp.text());
        match resp.header("content-type") {
            Some("application/octet-stream") => parse_binary(&resp.body),
            Some("text/plain; charset=UTF-8") => parse_text(&resp.text()),
            other => panic!("content type {other:?}"),
        }
    }

    /// Polls until something but pongs arrives.
    async fn next_items(&self) -> Vec<Item> {
        loop {
            let items: Vec<Item> = self
                .items()
                .await
                .into_iter()
                .filter(|i| *i != text("3"))
                .collect();
            if !items.is_empty() {
                return items;
            }
        }
    }

    async fn send(&self, items: &[Item]) {
        let resp = post(&self.addr, &self.query(), encode_text(items)).await;
        assert_eq!(resp.status, 200, "post: {}", resp.text());
        assert_eq!(resp.text(), "ok");
    }

    async fn send_binary(&self, items: &[Item]) {
        let resp = request(
            &self.addr,
            "POST",
            &self.query(),
            &[("content-type", "application/octet-stream")],
            encode_binary(items),
        )
        .await;
        assert_eq!(resp.status, 200, "binary post: {}", resp.text());
        assert_eq!(resp.text(), "ok");
    }

    /// Upgrades the session to a WebSocket on its node (probe, `5`).
    async fn upgrade(&self) -> Ws {
        let mut ws = ws_connect(
            &self.addr,
            &format!("{SIO}?EIO=3&transport=websocket&sid={}", self.sid),
        )
        .await;
        ws_send(&mut ws, "2probe").await;
        assert_eq!(next_ws(&mut ws).await, Some(Message::text("3probe")));
        ws_send(&mut ws, "5").await;
        ws
    }
}

/// The next WebSocket message (no automatic answers: a v3 server never
/// pings). None when closed.
async fn next_ws(ws: &mut Ws) -> Option<Message> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("websocket read timed out")?;
        match msg.ok()? {
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => return None,
            other => return Some(other),
        }
    }
}

/// Reads messages until `want` (skipping pongs); fails on anything else.
async fn expect_ws(ws: &mut Ws, want: Message) {
    loop {
        let got = next_ws(ws).await;
        if got == Some(Message::text("3")) && want != Message::text("3") {
            continue;
        }
        assert_eq!(got, Some(want));
        return;
    }
}

fn event(body: &str) -> Item {
    text(&format!("42{body}"))
}

// ---------------------------------------------------------------------------
// Raw protocol

/// With `--allow-eio3 false`, an `EIO=3` handshake gets the same answer
/// as any unsupported revision, as the reference without `allowEIO3`; with
/// it (the default), only `3` and `4` are taken.
#[tokio::test]
async fn eio3_is_refused_without_the_flag() {
    let gw = Gateway::start(&["--namespace", "/", "--allow-eio3", "false"]);
    for q in ["EIO=3&transport=polling", "EIO=3&transport=polling&b64=1"] {
        let resp = get(&gw.addr, &format!("{SIO}?{q}")).await;
        assert_eq!(resp.status, 400, "{q}");
        assert_eq!(
            resp.text(),
            r#"{"code":5,"message":"Unsupported protocol version"}"#
        );
    }
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}{SIO}?EIO=3&transport=websocket",
        gw.addr
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            assert_eq!(
                resp.body().as_deref(),
                Some(&b"Unsupported protocol version"[..])
            );
        }
        other => panic!("a v3 WebSocket without the flag: {other:?}"),
    }
    // The Engine.IO echo endpoint too.
    let resp = get(&gw.addr, "/engine.io/?EIO=3&transport=polling").await;
    assert_eq!(resp.status, 400);

    let gw = gateway();
    for eio in ["2", "5", ""] {
        let resp = get(&gw.addr, &format!("{SIO}?EIO={eio}&transport=polling")).await;
        assert_eq!(
            resp.text(),
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
            "EIO={eio}"
        );
    }
    let resp = get(&gw.addr, &format!("{SIO}?transport=polling")).await;
    assert_eq!(resp.status, 400);
}

/// The v3 handshake: the open packet (sid, upgrades, pingInterval,
/// pingTimeout, and maxPayload, which the reference sends to v3 clients
/// too) and, in the same answer, `40`: the server joins `/` at once, with
/// no payload. The echo application's `auth` event follows with `{}`.
#[tokio::test]
async fn the_v3_handshake_joins_the_default_namespace() {
    let gw = gateway();
    let resp = get(&gw.addr, &format!("{SIO}?EIO=3&transport=polling")).await;
    let body = resp.text();
    let (len, rest) = body.split_once(':').expect("length");
    let open_len: usize = len.parse().expect("number");
    let (open, after) = rest.split_at(open_len);
    // (Recovery off: the application's `auth` emit is in the same answer.)
    assert_eq!(after, "2:4013:42[\"auth\",{}]", "{body}");
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open")).expect("json");
    let sid = open["sid"].as_str().expect("sid");
    assert_eq!(sid.len(), 20);
    assert_eq!(
        open,
        json!({"sid": sid, "upgrades": ["websocket"], "pingInterval": 300, "pingTimeout": 200, "maxPayload": 1_000_000})
    );
    let s = V3 {
        addr: gw.addr.clone(),
        sid: sid.to_owned(),
        open,
    };
    s.send(&[text("2")]).await;
    assert_eq!(s.items().await, vec![text("3")]);
}

/// Text payloads both ways (lengths in UTF-16 units: `😀` counts two),
/// several packets in one POST, binary as `b4<base64>` for a client that
/// asked `b64=1`.
#[tokio::test]
async fn text_payloads_and_base64_binary() {
    let gw = gateway();
    let s = V3::joined(&gw.addr, true).await;

    s.send(&[
        event(r#"["message","é😀",1.5,null]"#),
        event(r#"["message",{"k":[true]}]"#),
    ])
    .await;
    let mut got = s.next_items().await;
    if got.len() < 2 {
        got.extend(s.next_items().await);
    }
    assert_eq!(
        got,
        vec![
            event(r#"["message-back","é😀",1.5,null]"#),
            event(r#"["message-back",{"k":[true]}]"#),
        ]
    );
    // The raw answer: exact lengths.
    s.send(&[event(r#"["message","😀"]"#)]).await;
    let raw = s.get().await.text();
    assert_eq!(raw, "23:42[\"message-back\",\"😀\"]");

    // A binary event: `b4` + base64 both ways.
    s.send(&[
        text(r#"451-["message",{"_placeholder":true,"num":0},"x"]"#),
        Item::Bin(vec![0, 1, 255]),
    ])
    .await;
    let resp = s.get().await;
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    assert_eq!(
        resp.text(),
        "54:451-[\"message-back\",{\"_placeholder\":true,\"num\":0},\"x\"]6:b4AAH/"
    );
}

/// A client that did not ask `b64=1` (a browser) gets the binary payload
/// form for answers that hold binary, text otherwise, and may post
/// either form.
#[tokio::test]
async fn binary_payloads() {
    let gw = gateway();
    let s = V3::joined(&gw.addr, false).await;

    s.send_binary(&[
        text(r#"452-["message",{"_placeholder":true,"num":0},{"b":{"_placeholder":true,"num":1}},"ü"]"#),
        Item::Bin(vec![1, 2, 3]),
        Item::Bin(vec![]),
    ])
    .await;
    let resp = s.get().await;
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    let packet = r#"452-["message-back",{"_placeholder":true,"num":0},{"b":{"_placeholder":true,"num":1}},"ü"]"#;
    let mut expected = vec![0u8];
    expected.extend(packet.len().to_string().bytes().map(|d| d - b'0'));
    expected.push(0xff);
    expected.extend(packet.as_bytes());
    expected.extend([1, 4, 0xff, 4, 1, 2, 3, 1, 1, 0xff, 4]);
    assert_eq!(&resp.body[..], &expected[..]);

    // Text only: the text form.
    s.send(&[event(r#"["message","t"]"#)]).await;
    assert_eq!(s.get().await.text(), "22:42[\"message-back\",\"t\"]");
    // The binary form may carry only text too.
    s.send_binary(&[event(r#"["message",2]"#)]).await;
    assert_eq!(s.next_items().await, vec![event(r#"["message-back",2]"#)]);
}

/// v3 heartbeats go the other way: the server never pings, the client
/// pings `2` and gets `3`; without a ping for pingInterval + pingTimeout
/// the session ends (ping timeout); a pong from the client is a protocol
/// error. A v4 session on the same gateway keeps the v4 direction.
#[tokio::test]
async fn the_client_pings_in_v3() {
    let gw = gateway();
    // A v4 session beside it gets pings from the server.
    let v4 = Polling::open(&gw.addr, SIO).await;
    assert_eq!(v4.packets().await, vec!["2".to_owned()]);

    let s = V3::joined(&gw.addr, true).await;
    // Three timeouts' worth of pings: the session lives, and nothing the
    // server sends is a ping.
    let started = Instant::now();
    let mut pongs = 0;
    let mut last_ping = Instant::now();
    // The client's ping pace over a span of time is what is tested.
    let mut pace = ringway_testkit::pace(Duration::from_millis(150));
    while started.elapsed() < Duration::from_millis(1500) {
        pace.tick().await;
        last_ping = Instant::now();
        s.send(&[text("2")]).await;
        let items = s.items().await;
        assert!(!items.contains(&text("2")), "a v3 server pinged: {items:?}");
        pongs += items.iter().filter(|i| **i == text("3")).count();
    }
    assert!(pongs >= 5, "{pongs} pongs");
    // Other packets do not count as heartbeats.
    s.send(&[event(r#"["message","alive"]"#)]).await;
    assert_eq!(
        s.next_items().await,
        vec![event(r#"["message-back","alive"]"#)]
    );

    // No more pings: a pending GET gets the close packet once
    // pingInterval + pingTimeout have passed since the last one.
    let last = s.items().await;
    assert_eq!(last, vec![text("1")], "the close packet");
    let took = last_ping.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let resp = s.get().await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.text(), r#"{"code":1,"message":"Session ID unknown"}"#);

    // A pong from a v3 client closes its session.
    let s = V3::joined(&gw.addr, true).await;
    s.send(&[text("3")]).await;
    session_gone(&s).await;
}

/// The upgrade: probe, the pending poll released with a noop in v3
/// framing, `5`; then binary WebSocket messages carry the type byte `4`
/// both ways, the client pings over the WebSocket, and a binary message of
/// another type closes the session.
#[tokio::test]
async fn the_v3_upgrade_and_websocket_frames() {
    let gw = gateway();
    let s = V3::joined(&gw.addr, true).await;
    let pending = {
        let s = s.on(&gw.addr);
        tokio::spawn(async move { s.get().await })
    };
    common::wait_poll_reached(&gw.addr, &pending).await;
    let mut ws = ws_connect(
        &gw.addr,
        &format!("{SIO}?EIO=3&transport=websocket&sid={}", s.sid),
    )
    .await;
    ws_send(&mut ws, "2probe").await;
    assert_eq!(next_ws(&mut ws).await, Some(Message::text("3probe")));
    let released = pending.await.expect("pending poll");
    assert_eq!(released.text(), "1:6");
    ws_send(&mut ws, "5").await;

    ws_send(&mut ws, r#"451-["message",{"_placeholder":true,"num":0}]"#).await;
    ws.send(Message::binary(Bytes::from_static(&[4, 7, 8, 9])))
        .await
        .expect("send");
    expect_ws(
        &mut ws,
        Message::text(r#"451-["message-back",{"_placeholder":true,"num":0}]"#),
    )
    .await;
    expect_ws(&mut ws, Message::binary(Bytes::from_static(&[4, 7, 8, 9]))).await;
    // Heartbeat over the WebSocket: client ping, server pong; several
    // timeouts long, at the client's pace.
    let mut pace = ringway_testkit::pace(Duration::from_millis(200));
    pace.tick().await;
    for _ in 0..6 {
        ws_send(&mut ws, "2").await;
        expect_ws(&mut ws, Message::text("3")).await;
        pace.tick().await;
    }
    // Polling is over for this session: EIO=3 polling gets code 3.
    let resp = s.get().await;
    assert_eq!(resp.status, 400);
    // A binary message that is not a message packet: closed.
    ws_send(&mut ws, r#"451-["message",{"_placeholder":true,"num":0}]"#).await;
    ws.send(Message::binary(Bytes::from_static(&[2, 1])))
        .await
        .expect("send");
    assert_eq!(next_ws(&mut ws).await, None, "closed on a bad binary frame");
}

/// A WebSocket opened directly with `EIO=3`, with `b64=1`: binary goes
/// out as `b4<base64>` text frames.
#[tokio::test]
async fn a_direct_v3_websocket_with_base64() {
    let gw = gateway();
    let mut ws = ws_connect(&gw.addr, &format!("{SIO}?EIO=3&transport=websocket&b64=1")).await;
    let Some(Message::Text(open)) = next_ws(&mut ws).await else {
        panic!("open")
    };
    let open: Value = serde_json::from_str(&open.as_str()[1..]).expect("json");
    assert_eq!(open["upgrades"], json!([]));
    expect_ws(&mut ws, Message::text("40")).await;
    expect_ws(&mut ws, Message::text(r#"42["auth",{}]"#)).await;
    ws_send(&mut ws, r#"451-["message",{"_placeholder":true,"num":0}]"#).await;
    ws_send(&mut ws, "b4AQI=").await;
    expect_ws(
        &mut ws,
        Message::text(r#"451-["message-back",{"_placeholder":true,"num":0}]"#),
    )
    .await;
    expect_ws(&mut ws, Message::text("b4AQI=")).await;
}

/// Every request of a session speaks its handshake's revision: `EIO=4`
/// on a v3 session and `EIO=3` on a v4 one get code 3.
#[tokio::test]
async fn a_session_keeps_its_revision() {
    let gw = gateway();
    let (v3, _) = V3::open(&gw.addr, true).await;
    let resp = get(
        &gw.addr,
        &format!("{SIO}?EIO=4&transport=polling&sid={}", v3.sid),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.text(), r#"{"code":3,"message":"Bad request"}"#);
    let v4 = Polling::open(&gw.addr, SIO).await;
    let resp = get(
        &gw.addr,
        &format!("{SIO}?EIO=3&transport=polling&sid={}", v4.sid),
    )
    .await;
    assert_eq!(resp.text(), r#"{"code":3,"message":"Bad request"}"#);
    // A v4 POST with an octet-stream body still closes its session; a v3
    // one is the binary form.
    let resp = request(
        &gw.addr,
        "POST",
        &v4.query(),
        &[("content-type", "application/octet-stream")],
        Bytes::from_static(b"40"),
    )
    .await;
    assert_eq!(resp.status, 400);
    // Both sessions still work side by side (the v4 one was closed).
    v3.send(&[event(r#"["message",1]"#)]).await;
    let items = v3.next_items().await;
    assert!(items.contains(&event(r#"["message-back",1]"#)), "{items:?}");
}

/// Malformed v3 payloads close the session after the packets before the
/// error were applied; the POST is still answered `ok`.
#[tokio::test]
async fn malformed_v3_payloads_close_the_session() {
    let gw = gateway();
    for bad in [
        "99:42[\"message\"]",
        "x:2",
        "2",
        "1:",
        "3:b2AA",
        "5:b4!!!",
        "2:4😀",
    ] {
        let s = V3::joined(&gw.addr, true).await;
        let pending = {
            let s = s.on(&gw.addr);
            tokio::spawn(async move { s.items().await })
        };
        common::wait_poll_reached(&gw.addr, &pending).await;
        let body = encode_text(&[event(r#"["message","before"]"#)]) + bad;
        let resp = post(&gw.addr, &s.query(), body).await;
        assert_eq!(resp.status, 200, "{bad:?}");
        assert_eq!(resp.text(), "ok");
        let items = pending.await.expect("pending poll");
        assert_eq!(
            items.first(),
            Some(&event(r#"["message-back","before"]"#)),
            "{bad:?}: {items:?}"
        );
        session_gone(&s).await;
    }
    // A binary form with a bad type byte.
    let s = V3::joined(&gw.addr, false).await;
    let resp = request(
        &gw.addr,
        "POST",
        &s.query(),
        &[("content-type", "application/octet-stream")],
        Bytes::from_static(&[7, 1, 0xff, b'2']),
    )
    .await;
    assert_eq!(resp.status, 200);
    session_gone(&s).await;
}

/// Polls until the session is unknown (a GET in between may still get the
/// close packet).
async fn session_gone(s: &V3) {
    for _ in 0..3 {
        let resp = s.get().await;
        if resp.status == 400 {
            assert_eq!(resp.text(), r#"{"code":1,"message":"Session ID unknown"}"#);
            return;
        }
        let text = resp.text();
        assert!(text.ends_with("1:1"), "{text}");
    }
    panic!("the session lives on");
}

/// Socket.IO v2 CONNECTs: the query in the namespace part is the CONNECT
/// payload (`auth`); the answer has no payload; an unknown namespace gets
/// the reference's `{"message":"Invalid namespace"}`; a CONNECT to `/`
/// (joined at the open) closes the session, as the reference does.
#[tokio::test]
async fn v2_connects_carry_their_query() {
    let gw = gateway();
    let s = V3::joined(&gw.addr, true).await;
    s.send(&[text("40/custom?x=1&y=%C3%A9+z,")]).await;
    let mut got = s.next_items().await;
    if got.len() < 2 {
        got.extend(s.next_items().await);
    }
    assert_eq!(
        got,
        vec![
            text("40/custom,"),
            text(r#"42/custom,["auth",{"x":"1","y":"é z"}]"#)
        ]
    );
    s.send(&[text(r#"42/custom,["message",1]"#)]).await;
    assert_eq!(
        s.next_items().await,
        vec![text(r#"42/custom,["message-back",1]"#)]
    );
    s.send(&[text("40/nope?a=b,")]).await;
    assert_eq!(
        s.next_items().await,
        vec![text(r#"44/nope,{"message":"Invalid namespace"}"#)]
    );
    // Leaving /custom, then `/` again: protocol error.
    s.send(&[text("41/custom,")]).await;
    s.send(&[text("40")]).await;
    session_gone(&s).await;
}

const JWT_SECRET: &str = "eio3-test-secret";

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encode")
}

/// A refused v2 CONNECT is an ERROR packet with a string payload (JWT
/// here: the default namespace, joined with `{}`, has no token); a
/// namespace query carries the token.
#[tokio::test]
async fn refused_v2_connects_get_a_string() {
    let mut args = ARGS.to_vec();
    args.extend(["--jwt-hs256-secret", JWT_SECRET]);
    let gw = Gateway::start(&args);
    let (s, first) = V3::open(&gw.addr, true).await;
    let [Item::Text(refusal)] = &first[..] else {
        panic!("{first:?}")
    };
    let message: Value =
        serde_json::from_str(refusal.strip_prefix("44").expect("an ERROR packet")).expect("json");
    assert!(message.is_string(), "{refusal}");
    let token =
        hs256(json!({"sub": "v2-user", "exp": jsonwebtoken::get_current_timestamp() + 300}));
    s.send(&[text(&format!("40/custom?token={token},"))]).await;
    assert_eq!(s.next_items().await[0], text("40/custom,"));
    let (s, _) = V3::open(&gw.addr, true).await;
    s.send(&[text("40/custom?token=forged,")]).await;
    let items = s.next_items().await;
    let Item::Text(refusal) = &items[0] else {
        panic!("{items:?}")
    };
    assert!(refusal.starts_with("44/custom,\""), "{refusal}");
}

/// With connection state recovery on, a v2 client gets no pid and no
/// offsets (v2 has no recovery), while a v4 client beside it does.
#[tokio::test]
async fn no_pids_or_offsets_for_v2_clients() {
    let mut args = ARGS.to_vec();
    args.extend(["--recovery-window", "120000"]);
    let gw = Gateway::start(&args);
    let s = V3::joined(&gw.addr, true).await;
    s.send(&[event(r#"["message","x"]"#)]).await;
    assert_eq!(s.next_items().await, vec![event(r#"["message-back","x"]"#)]);
    s.send(&[event(r#"["join","room"]"#)]).await;
    s.send(&[event(r#"["broadcast",{"room":"room","msg":"to all"}]"#)])
        .await;
    assert_eq!(s.next_items().await, vec![event(r#"["message","to all"]"#)]);
    let (mut ws, _) = ws_open(&gw.addr).await;
    ws_send(&mut ws, "40").await;
    let answer = ws_text(&mut ws).await.expect("connect");
    assert!(answer.contains("\"pid\""), "{answer}");
}

// ---------------------------------------------------------------------------
// Across a cluster

/// A v3 session in a cluster: a poll sent to another node is forwarded to
/// its owner and answered in v3 framing; an upgrade on a third node takes
/// the session over with its revision (the client then pings over the
/// WebSocket, binary frames carry the type byte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v3_session_moves_across_the_cluster() {
    let mut args = ARGS.to_vec();
    args.extend(["--recovery-window", "120000"]);
    // Heartbeats with room for a loaded machine.
    args[2] = "1000";
    args[4] = "3000";
    let cluster = Cluster::start(3, &args).await;
    let (s, mut seen) = V3::open(cluster.addr(0), true).await;
    let others: Vec<V3> = (1..3).map(|i| s.on(cluster.addr(i))).collect();
    others[0]
        .send(&[text("2"), event(r#"["message","é😀"]"#)])
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(&event(r#"["message-back","é😀"]"#)) {
        assert!(Instant::now() < deadline, "{seen:?}");
        seen.extend(others[1].items().await);
    }
    assert!(seen.contains(&event(r#"["auth",{}]"#)), "{seen:?}");

    let mut ws = others[1].upgrade().await;
    ws_send(&mut ws, "2").await;
    expect_ws(&mut ws, Message::text("3")).await;
    ws_send(&mut ws, r#"451-["message",{"_placeholder":true,"num":0}]"#).await;
    ws.send(Message::binary(Bytes::from_static(&[4, 1])))
        .await
        .expect("send");
    expect_ws(
        &mut ws,
        Message::text(r#"451-["message-back",{"_placeholder":true,"num":0}]"#),
    )
    .await;
    expect_ws(&mut ws, Message::binary(Bytes::from_static(&[4, 1]))).await;
    // The session lives past several timeouts on its new node.
    let mut pace = ringway_testkit::pace(Duration::from_millis(200));
    pace.tick().await;
    for _ in 0..5 {
        pace.tick().await;
        ws_send(&mut ws, "2").await;
        expect_ws(&mut ws, Message::text("3")).await;
    }
    ws_send(&mut ws, r#"421["whoami"]"#).await;
    let Some(Message::Text(who)) = next_ws(&mut ws).await else {
        panic!("whoami")
    };
    assert!(who.as_str().contains("\"node\":\"n3\""), "{who}");
}

// ---------------------------------------------------------------------------
// Interop with socket.io-client 2.x

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/js")
}

fn run_v2(url: &str, scenario: &str) -> String {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/socket.io-client-v2").exists(),
        "npm packages missing in {}: run scripts/test.sh (it runs npm ci)",
        dir.display()
    );
    let out = std::process::Command::new("node")
        .arg(dir.join("v2.mjs"))
        .arg(scenario)
        .env("RINGWAY_URL", url)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{scenario} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.trim());
    stdout
}

/// The interop gateway: heartbeats with room for a loaded machine (a
/// client starved past pingTimeout would be timed out, and v2 clients
/// drive the heartbeat themselves).
fn interop_gateway() -> Gateway {
    let mut args = ARGS.to_vec();
    args[2] = "1000";
    args[4] = "3000";
    Gateway::start(&args)
}

macro_rules! v2_scenarios {
    ($($name:ident => $scenario:literal),* $(,)?) => {
        mod single {
            $(
                #[test]
                fn $name() {
                    let gw = super::interop_gateway();
                    super::run_v2(&format!("http://{}", gw.addr), $scenario);
                }
            )*
        }
    };
}

v2_scenarios!(
    polling_upgrade => "v2-polling-upgrade",
    polling_only => "v2-polling-only",
    websocket_only => "v2-websocket-only",
    namespace_query => "v2-namespace-query",
    rooms => "v2-rooms",
    server_disconnect => "v2-server-disconnect",
);

/// Every scenario of v2.mjs is run above.
#[test]
fn every_v2_scenario_is_run() {
    let out = std::process::Command::new("node")
        .arg(js_dir().join("v2.mjs"))
        .arg("--list")
        .output()
        .expect("node");
    let source = include_str!("eio3.rs");
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        assert!(source.contains(&format!("\"{name}\"")), "{name} is not run");
    }
}

/// The engine ids of a scenario's summary: `... [sids a b c]`.
fn sids_of(stdout: &str) -> Vec<String> {
    let start = stdout.find("[sids ").expect("[sids ...]") + "[sids ".len();
    let end = stdout[start..].find(']').expect("]");
    stdout[start..start + end]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// socket.io-client 2 through nginx round robin (no affinity) in front of
/// three clustered gateways with recovery on: every scenario passes, the
/// polling requests of each session spread over the nodes (forwarded to
/// the owner), and upgrades land on any node (handoffs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_clients_through_a_round_robin_cluster() {
    let mut args = ARGS.to_vec();
    args.extend(["--recovery-window", "120000"]);
    // Heartbeats with room for a loaded machine.
    args[2] = "1000";
    args[4] = "3000";
    let cluster = Cluster::start(3, &args).await;
    let addrs: Vec<&str> = (0..3).map(|i| cluster.addr(i)).collect();
    let nginx = Nginx::start_with(&addrs, Upgrades::Pass);
    let url = nginx.url();
    for scenario in [
        "v2-polling-only",
        "v2-polling-upgrade",
        "v2-websocket-only",
        "v2-namespace-query",
        "v2-rooms",
    ] {
        let url = url.clone();
        let stdout = tokio::task::spawn_blocking(move || run_v2(&url, scenario))
            .await
            .expect("client");
        if scenario == "v2-polling-only" {
            let sid = &sids_of(&stdout)[0];
            // nginx logs a request once answered: the last poll may still
            // be pending, the others are there.
            let log = nginx.access_log();
            let mut nodes: Vec<&str> = log
                .iter()
                .filter(|a| a.sid() == Some(sid.as_str()))
                .inspect(|a| assert_eq!(a.query("EIO"), Some("3"), "{a:?}"))
                .map(|a| a.upstream.as_str())
                .collect();
            nodes.sort();
            nodes.dedup();
            assert_eq!(
                nodes.len(),
                3,
                "polling requests of {sid} went to {nodes:?}"
            );
        }
    }
}

/// socket.io-client 2's browser bundle in headless Chromium: the browser's
/// XHR takes binary, so it polls without `b64` and binary travels in the
/// binary payload form (Node's client never does); over polling only,
/// WebSocket only and polling-then-upgrade, binary both ways and an ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v2_browser_bundle_uses_binary_payloads() {
    let gw = interop_gateway();
    let bundle = std::fs::read_to_string(
        js_dir().join("node_modules/socket.io-client-v2/dist/socket.io.js"),
    )
    .expect("socket.io-client 2 browser bundle (npm ci)");
    let browser = driver::Browser::launch().await;
    let page = browser.page("v2").await;
    // Same origin as the gateway: no CORS needed.
    page.goto(&gw.url("/healthz")).await;
    let script = serde_json::to_string(&bundle).expect("json");
    page.eval(&format!("window.eval({script}); typeof io"))
        .await;
    let got = page
        .eval(
            r#"(async () => {
  const run = (transports) => new Promise((resolve, reject) => {
    const s = io(location.origin, { transports, forceNew: true, reconnection: false });
    const t = setTimeout(() => reject(new Error('timed out: ' + transports)), 15000);
    s.on('connect_error', (e) => reject(new Error('connect_error: ' + e)));
    s.on('error', (e) => reject(new Error('error: ' + JSON.stringify(e))));
    s.on('connect', () => {
      s.once('message-back', (text, data, nested) => {
        s.emit('message-with-ack', 'x', new Uint8Array([9, 8]).buffer, (a, b) => {
          clearTimeout(t);
          const bytes = (x) => Array.from(new Uint8Array(x));
          const engine = s.io.engine;
          resolve({
            text, data: bytes(data), nested: bytes(nested.b), ack: [a, bytes(b)],
            transport: engine.transport.name,
            polledBinary: engine.transport.name === 'polling' ? engine.transport.supportsBinary : null,
          });
          s.close();
        });
      });
      s.emit('message', 'é😀', new Uint8Array([0, 1, 2, 255]).buffer, { b: new Uint8Array([7]).buffer });
    });
  });
  return {
    polling: await run(['polling']),
    websocket: await run(['websocket']),
    upgrade: await run(['polling', 'websocket']),
  };
})()"#,
        )
        .await;
    browser.close().await;
    for (mode, transport) in [
        ("polling", "polling"),
        ("websocket", "websocket"),
        ("upgrade", ""),
    ] {
        let r = &got[mode];
        assert_eq!(r["text"], "é😀", "{mode}: {r}");
        assert_eq!(r["data"], json!([0, 1, 2, 255]), "{mode}: {r}");
        assert_eq!(r["nested"], json!([7]), "{mode}: {r}");
        assert_eq!(r["ack"], json!(["x", [9, 8]]), "{mode}: {r}");
        if !transport.is_empty() {
            assert_eq!(r["transport"], transport, "{mode}: {r}");
        }
    }
    assert_eq!(
        got["polling"]["polledBinary"], true,
        "the browser polls with binary payloads: {got}"
    );
}
