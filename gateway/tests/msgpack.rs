//! The msgpack parser (`--parser msgpack`) end to end, with real gateway
//! processes: the official `socket.io-client` created with
//! `socket.io-msgpack-parser` from npm (`tests/interop/js/run.mjs` and
//! `recovery.mjs` with `RINGWAY_PARSER=msgpack`) on one node and through
//! nginx round robin in front of three (with connection state recovery on
//! and a node killed); raw protocol checks (a text packet to a msgpack
//! gateway closes the session as a malformed packet closes one of a
//! default gateway, binary packets over both transports, the default
//! parser unchanged); and the Push API's JSON reaching msgpack clients as
//! msgpack, binaries included.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::cluster::{push_client, Cluster, PushClient, RegistryExt};
use common::nginx::Nginx;
use common::{get, ws_frame, ws_open, ws_send, ws_text, Gateway, Polling, Ws};
use futures_util::SinkExt;
use ringway_proto::v1::{target, EmitRequest, EmitWithAckRequest, RoomList, Target};
use rmpv::Value as Mp;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "msgpack-test-token";
const MSGPACK: &[&str] = &["--parser", "msgpack"];

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/js")
}

fn check_npm() {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/socket.io-msgpack-parser").exists(),
        "npm packages missing in {}: run scripts/test.sh (it runs npm ci)",
        dir.display()
    );
}

/// Runs a JS script's scenario with the msgpack parser against `url`;
/// its stdout.
fn run_js(script: &str, scenario: &str, url: &str, env: &[(&str, &str)]) -> String {
    check_npm();
    let out = Command::new("node")
        .arg(js_dir().join(script))
        .arg(scenario)
        .env("RINGWAY_URL", url)
        .env("RINGWAY_PARSER", "msgpack")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{scenario} with msgpack failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.trim());
    stdout
}

/// One gateway with the options of the protocol suites and the msgpack
/// parser.
fn suite_gateway(extra: &[&str]) -> Gateway {
    let mut args = vec![
        "--ping-interval",
        "300",
        "--ping-timeout",
        "200",
        "--namespace",
        "/",
        "--namespace",
        "/custom",
    ];
    args.extend_from_slice(MSGPACK);
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

fn js(scenario: &str) {
    let gw = suite_gateway(&[]);
    let out = run_js("run.mjs", scenario, &format!("http://{}", gw.addr), &[]);
    assert!(out.contains("none as text"), "{out}");
}

// ---------------------------------------------------------------------------
// One node: the official client with socket.io-msgpack-parser.

macro_rules! js_scenarios {
    ($($name:ident => $scenario:literal),* $(,)?) => {
        mod js {
            $(
                #[test]
                fn $name() {
                    super::js($scenario);
                }
            )*
        }
    };
}

js_scenarios!(
    polling_upgrade => "polling-upgrade",
    polling_only => "polling-only",
    websocket_only => "websocket-only",
    binary_ws => "binary-ws",
    binary_polling => "binary-polling",
    ack_client_to_server => "ack-client-to-server",
    ack_server_to_client => "ack-server-to-client",
    namespace => "namespace",
    connect_error => "connect-error",
    rooms_broadcast => "rooms-broadcast",
    server_disconnect => "server-disconnect",
    reconnect_after_close => "reconnect-after-close",
    reconnect_after_close_polling => "reconnect-after-close-polling",
    many_messages_upgrade => "many-messages-upgrade",
    msgpack_values => "msgpack-values",
);

/// Connection state recovery with msgpack: a client that loses its
/// transport comes back recovered with every message once, in order.
fn js_drops(transports: &str) {
    let gw = Gateway::start(&["--parser", "msgpack", "--recovery-window", "120000"]);
    let out = run_js(
        "recovery.mjs",
        "drops",
        &format!("http://{}", gw.addr),
        &[("RINGWAY_TRANSPORTS", transports)],
    );
    assert!(out.contains("ok drops"), "{out}");
}

#[test]
fn js_recovers_after_transport_drops_polling_then_websocket() {
    js_drops("polling,websocket");
}

#[test]
fn js_recovers_after_transport_drops_websocket_only() {
    js_drops("websocket");
}

#[test]
fn js_recovers_after_transport_drops_polling_only() {
    js_drops("polling");
}

// ---------------------------------------------------------------------------
// Raw: the wire.

fn packet(entries: Vec<(&str, Mp)>) -> Vec<u8> {
    let map = Mp::Map(entries.into_iter().map(|(k, v)| (Mp::from(k), v)).collect());
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &map).expect("encode");
    out
}

fn connect_packet(nsp: &str, auth: Option<Mp>) -> Vec<u8> {
    let mut entries = vec![("type", Mp::from(0)), ("nsp", Mp::from(nsp))];
    if let Some(auth) = auth {
        entries.push(("data", auth));
    }
    packet(entries)
}

fn decode(bytes: &[u8]) -> Mp {
    let mut rest = bytes;
    let v = rmpv::decode::read_value(&mut rest).expect("a msgpack packet");
    assert!(rest.is_empty(), "trailing bytes after {v}");
    v
}

fn field<'a>(packet: &'a Mp, key: &str) -> Option<&'a Mp> {
    packet
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn data_of(packet: &Mp) -> &Mp {
    field(packet, "data").unwrap_or_else(|| panic!("no data in {packet}"))
}

/// The next Socket.IO packet on a WebSocket (a binary frame).
async fn next_packet(ws: &mut Ws) -> Mp {
    match ws_frame(ws).await {
        Some(Message::Binary(b)) => decode(&b),
        other => panic!("expected a msgpack packet, got {other:?}"),
    }
}

async fn send_packet(ws: &mut Ws, bytes: Vec<u8>) {
    ws.send(Message::binary(bytes)).await.expect("ws send");
}

/// A WebSocket session joined to `/` with the msgpack parser: (ws, engine
/// sid, socket id).
async fn msgpack_ws(addr: &str) -> (Ws, String, String) {
    let (mut ws, open) = ws_open(addr).await;
    let sid = open["sid"].as_str().expect("sid").to_owned();
    send_packet(&mut ws, connect_packet("/", None)).await;
    let answer = next_packet(&mut ws).await;
    assert_eq!(field(&answer, "type"), Some(&Mp::from(0)), "{answer}");
    let id = field(data_of(&answer), "sid")
        .and_then(Mp::as_str)
        .expect("socket id")
        .to_owned();
    let auth = next_packet(&mut ws).await;
    assert_eq!(
        data_of(&auth),
        &Mp::Array(vec![Mp::from("auth"), Mp::Map(vec![])])
    );
    (ws, sid, id)
}

/// A binary message as a polling payload item.
fn b64_item(bytes: &[u8]) -> String {
    format!(
        "b{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The msgpack packets of a polling answer (pings answered, left out).
async fn poll_packets(p: &Polling) -> Vec<Mp> {
    loop {
        let items = p.packets().await;
        if items.iter().any(|i| i == "2") {
            p.send("3").await;
        }
        let packets: Vec<Mp> = items
            .iter()
            .filter(|i| *i != "2")
            .map(|i| {
                let b64 = i
                    .strip_prefix('b')
                    .unwrap_or_else(|| panic!("not a binary item: {i:?}"));
                decode(
                    &base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .expect("base64"),
                )
            })
            .collect();
        if !packets.is_empty() {
            return packets;
        }
    }
}

/// Packets the client sends as msgpack go out as msgpack: CONNECT, events
/// with binaries, acks, on both transports; binaries are `bin` values
/// inside the one packet, no attachments follow.
#[tokio::test]
async fn msgpack_packets_on_both_transports() {
    let gw = suite_gateway(&[]);
    let (mut ws, _, _) = msgpack_ws(&gw.addr).await;
    send_packet(
        &mut ws,
        packet(vec![
            ("type", Mp::from(2)),
            ("nsp", Mp::from("/")),
            (
                "data",
                Mp::Array(vec![
                    Mp::from("message-with-ack"),
                    Mp::from(1),
                    Mp::Binary(vec![1, 2]),
                    Mp::Map(vec![(Mp::from("deep"), Mp::Binary(vec![3]))]),
                ]),
            ),
            ("id", Mp::from(5)),
        ]),
    )
    .await;
    // The reference server's ack, byte for byte: {id, type, data, nsp}.
    match ws_frame(&mut ws).await {
        Some(Message::Binary(b)) => assert_eq!(
            b.to_vec(),
            packet(vec![
                ("id", Mp::from(5)),
                ("type", Mp::from(3)),
                (
                    "data",
                    Mp::Array(vec![
                        Mp::from(1),
                        Mp::Binary(vec![1, 2]),
                        Mp::Map(vec![(Mp::from("deep"), Mp::Binary(vec![3]))]),
                    ])
                ),
                ("nsp", Mp::from("/")),
            ])
        ),
        other => panic!("expected the ack, got {other:?}"),
    }
    // A namespace it may not join: CONNECT_ERROR in msgpack.
    send_packet(&mut ws, connect_packet("/nope", None)).await;
    let refused = next_packet(&mut ws).await;
    assert_eq!(field(&refused, "type"), Some(&Mp::from(4)));
    assert_eq!(field(&refused, "nsp"), Some(&Mp::from("/nope")));
    assert_eq!(
        data_of(&refused),
        &Mp::Map(vec![(Mp::from("message"), Mp::from("Invalid namespace"))])
    );
    // The server disconnects the socket: DISCONNECT in msgpack.
    send_packet(
        &mut ws,
        packet(vec![
            ("type", Mp::from(2)),
            ("nsp", Mp::from("/")),
            ("data", Mp::Array(vec![Mp::from("server-disconnect")])),
        ]),
    )
    .await;
    let bye = next_packet(&mut ws).await;
    assert_eq!(
        bye,
        Mp::Map(vec![
            (Mp::from("type"), Mp::from(1)),
            (Mp::from("nsp"), Mp::from("/"))
        ])
    );

    // Polling: binary messages are `b` + base64 items.
    let p = Polling::open(&gw.addr, "/socket.io/").await;
    p.send(&b64_item(&connect_packet(
        "/custom",
        Some(Mp::Map(vec![(Mp::from("token"), Mp::from("abc"))])),
    )))
    .await;
    let mut got = poll_packets(&p).await;
    if got.len() < 2 {
        got.extend(poll_packets(&p).await);
    }
    assert_eq!(field(&got[0], "type"), Some(&Mp::from(0)), "{}", got[0]);
    assert_eq!(field(&got[0], "nsp"), Some(&Mp::from("/custom")));
    assert_eq!(
        data_of(&got[1]),
        &Mp::Array(vec![
            Mp::from("auth"),
            Mp::Map(vec![(Mp::from("token"), Mp::from("abc"))])
        ])
    );
    let message = packet(vec![
        ("type", Mp::from(2)),
        ("nsp", Mp::from("/custom")),
        (
            "data",
            Mp::Array(vec![
                Mp::from("message"),
                Mp::Binary(vec![0, 0x1e, 0xff]),
                Mp::from("text"),
            ]),
        ),
    ]);
    // Two packets in one POST.
    p.send(&format!(
        "{}\u{1e}{}",
        b64_item(&message),
        b64_item(&message)
    ))
    .await;
    let mut backs = poll_packets(&p).await;
    if backs.len() < 2 {
        backs.extend(poll_packets(&p).await);
    }
    for back in &backs {
        assert_eq!(
            data_of(back),
            &Mp::Array(vec![
                Mp::from("message-back"),
                Mp::Binary(vec![0, 0x1e, 0xff]),
                Mp::from("text")
            ])
        );
    }
}

/// What the session's end looks like after `bad` (sent once `connect`
/// packets went through), over WebSocket: `None` when the gateway closed
/// it without an answer.
async fn ws_after(addr: &str, connect: Option<Message>, bad: Message) -> Option<Message> {
    let (mut ws, _) = ws_open(addr).await;
    if let Some(connect) = connect {
        ws.send(connect).await.expect("send");
        ws_frame(&mut ws).await.expect("CONNECT answer");
        ws_frame(&mut ws).await.expect("auth event");
    }
    ws.send(bad).await.expect("send");
    ws_frame(&mut ws).await
}

/// Over polling: the POST's answer, then the next GET's, with or without
/// a GET pending when the bad packet comes.
async fn polling_after(addr: &str, connect: Option<&str>, bad: &str, pending: bool) -> Vec<String> {
    let p = Polling::open(addr, "/socket.io/").await;
    if let Some(connect) = connect {
        p.send(connect).await;
        let mut n = 0;
        while n < 2 {
            n += p.next_non_ping().await.len();
        }
    }
    let waiting = pending.then(|| {
        let (addr, q) = (addr.to_owned(), p.query());
        tokio::spawn(async move { get(&addr, &q).await })
    });
    if let Some(waiting) = &waiting {
        common::wait_poll_reached(addr, waiting).await;
    }
    let post = p.post(bad).await;
    let mut out = vec![format!("{} {}", post.status, post.text())];
    if let Some(waiting) = waiting {
        let r = waiting.await.expect("pending GET");
        out.push(format!("{} {}", r.status, r.text()));
    }
    let next = p.get().await;
    out.push(format!("{} {}", next.status, next.text()));
    out
}

/// The reference's msgpack decoder throws on a string, so the server
/// closes the connection as for any malformed packet (recorded: socket.io
/// 4.8.1 with socket.io-msgpack-parser 3.0.2 closes the WebSocket without
/// a word, before or after a CONNECT). Ringway: the same close as a
/// malformed text packet on a default gateway, on both transports.
#[tokio::test]
async fn a_text_packet_closes_a_msgpack_session_like_a_malformed_packet() {
    let mp = suite_gateway(&[]);
    let default = Gateway::start_suite();
    let mp_connect = Message::binary(connect_packet("/", None));
    let text_connect = Message::text("40");
    for connect in [false, true] {
        for text in ["40", r#"42["message","hi"]"#, "4", "b"] {
            let got = ws_after(
                &mp.addr,
                connect.then(|| mp_connect.clone()),
                Message::text(text),
            )
            .await;
            assert_eq!(got, None, "{text:?} (connected first: {connect})");
        }
        let reference = ws_after(
            &default.addr,
            connect.then(|| text_connect.clone()),
            Message::text("42["),
        )
        .await;
        assert_eq!(reference, None);
    }

    let mp_connect = b64_item(&connect_packet("/", None));
    for connect in [false, true] {
        for pending in [false, true] {
            let got = polling_after(
                &mp.addr,
                connect.then_some(mp_connect.as_str()),
                "40",
                pending,
            )
            .await;
            let malformed =
                polling_after(&default.addr, connect.then_some("40"), "42[", pending).await;
            assert_eq!(
                got, malformed,
                "text on msgpack vs malformed on default (connected {connect}, GET pending {pending})"
            );
            assert_eq!(got[0], "200 ok");
        }
    }
    // A malformed msgpack packet closes the same way.
    let garbage = Message::binary(vec![0x83, 0xc1]);
    assert_eq!(ws_after(&mp.addr, None, garbage).await, None);
}

/// With the default parser nothing changed: text packets answered in
/// text, a binary message nobody announced (here a msgpack CONNECT)
/// closes the session.
#[tokio::test]
async fn the_default_parser_is_unchanged() {
    let gw = Gateway::start_suite();
    let (mut ws, _) = ws_open(&gw.addr).await;
    ws_send(&mut ws, "40").await;
    let answer = ws_text(&mut ws).await.expect("CONNECT answer");
    assert!(answer.starts_with("40{\"sid\":\""), "{answer}");
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some("42[\"auth\",{}]"));
    ws_send(&mut ws, r#"42["message",1,{"a":[true]}]"#).await;
    assert_eq!(
        ws_text(&mut ws).await.as_deref(),
        Some(r#"42["message-back",1,{"a":[true]}]"#)
    );
    let (mut ws, _) = ws_open(&gw.addr).await;
    send_packet(&mut ws, connect_packet("/", None)).await;
    assert_eq!(ws_frame(&mut ws).await, None);
}

/// The Push API keeps JSON (and attachments) at its edge: an emit reaches
/// a msgpack client as msgpack with its binaries as `bin`, and the
/// client's ack comes back as JSON with placeholders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_api_reaches_msgpack_clients() {
    let gw = Gateway::start(&["--parser", "msgpack", "--api-token", TOKEN]);
    let mut push = push_client(gw.api.as_deref().expect("api"), Some(TOKEN)).await;
    let (mut ws, sid, _) = msgpack_ws(&gw.addr).await;
    let to_sid = Some(Target {
        to: Some(target::To::Sid(sid.clone())),
        except_rooms: Vec::new(),
    });
    push.emit(EmitRequest {
        target: to_sid,
        event: "news".into(),
        args_json: r#"[1,{"_placeholder":true,"num":0},{"k":"v","n":null}]"#.into(),
        attachments: vec![Bytes::from_static(&[0, 255])],
        ..EmitRequest::default()
    })
    .await
    .expect("emit");
    let news = next_packet(&mut ws).await;
    assert_eq!(
        data_of(&news),
        &Mp::Array(vec![
            Mp::from("news"),
            Mp::from(1),
            Mp::Binary(vec![0, 255]),
            Mp::Map(vec![
                (Mp::from("k"), Mp::from("v")),
                (Mp::from("n"), Mp::Nil)
            ]),
        ])
    );

    let mut api = push.clone();
    let asked = tokio::spawn(async move {
        api.emit_with_ack(EmitWithAckRequest {
            sid,
            event: "q".into(),
            args_json: r#"["x"]"#.into(),
            timeout_ms: 5_000,
            ..EmitWithAckRequest::default()
        })
        .await
    });
    let question = next_packet(&mut ws).await;
    assert_eq!(
        data_of(&question),
        &Mp::Array(vec![Mp::from("q"), Mp::from("x")])
    );
    let id = field(&question, "id").cloned().expect("an ack id");
    send_packet(
        &mut ws,
        packet(vec![
            ("type", Mp::from(3)),
            ("nsp", Mp::from("/")),
            ("id", id),
            (
                "data",
                Mp::Array(vec![Mp::from("y"), Mp::Binary(vec![7, 7])]),
            ),
        ]),
    )
    .await;
    let reply = asked
        .await
        .expect("task")
        .expect("emit with ack")
        .into_inner();
    let args: Value = serde_json::from_str(&reply.args_json).expect("JSON");
    assert_eq!(args, json!(["y", {"_placeholder": true, "num": 0}]));
    assert_eq!(reply.attachments, vec![Bytes::from_static(&[7, 7])]);
}

// ---------------------------------------------------------------------------
// Three nodes behind nginx round robin.

/// The options of tests/cluster_interop.rs, with msgpack.
const CLUSTER_ARGS: &[&str] = &[
    "--ping-interval",
    "1000",
    "--ping-timeout",
    "3000",
    "--namespace",
    "/",
    "--namespace",
    "/custom",
    "--parser",
    "msgpack",
];

async fn cluster_js(scenario: &str) {
    let cluster = Cluster::start(3, CLUSTER_ARGS).await;
    let addrs: Vec<&str> = (0..3).map(|i| cluster.addr(i)).collect();
    let nginx = Nginx::start(&addrs);
    let out = run_js(
        "run.mjs",
        scenario,
        &nginx.url(),
        &[("RINGWAY_TIMEOUT_MS", "60000")],
    );
    assert!(
        out.contains("[sids ") && out.contains("none as text"),
        "{out}"
    );
}

/// Polling requests spread over the nodes, then the upgrade (a handoff),
/// acks and message-back on both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_polling_then_websocket() {
    cluster_js("cluster-upgrade").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_polling_only() {
    cluster_js("cluster-polling").await;
}

/// Room broadcasts between clients created on different nodes: frames
/// encoded on one node, delivered by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_room_broadcasts() {
    cluster_js("cluster-rooms").await;
}

/// Three gateways with recovery on, the Push API, nginx round robin.
async fn recovery_cluster() -> (Cluster, Nginx) {
    let cluster = Cluster::start(
        3,
        &[
            "--parser",
            "msgpack",
            "--recovery-window",
            "120000",
            "--api-token",
            TOKEN,
            "--ping-interval",
            "1000",
            "--ping-timeout",
            "2000",
        ],
    )
    .await;
    let addrs: Vec<&str> = (0..3).map(|i| cluster.addr(i)).collect();
    let nginx = Nginx::start(&addrs);
    (cluster, nginx)
}

/// A client that loses its transport reconnects through any node and gets
/// its socket back with every missed message, in msgpack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_recovery_after_transport_drops() {
    let (_cluster, nginx) = recovery_cluster().await;
    let out = run_js("recovery.mjs", "drops", &nginx.url(), &[]);
    assert!(out.contains("ok drops"), "{out}");
}

/// The JS fleet (`recovery.mjs fleet`, msgpack) as a process.
struct Fleet {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Fleet {
    fn start(url: &str, clients: usize) -> Fleet {
        check_npm();
        let mut child = Command::new("node")
            .arg(js_dir().join("recovery.mjs"))
            .arg("fleet")
            .env("RINGWAY_URL", url)
            .env("RINGWAY_PARSER", "msgpack")
            .env("FLEET_CLIENTS", clients.to_string())
            .env("FLEET_ROOM", "chaos")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fleet");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Fleet { child, lines }
    }

    fn line(&self, prefix: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the fleet printed no `{prefix}` line in time"));
            if let Some(json) = line.strip_prefix(prefix) {
                return serde_json::from_str(json.trim()).expect("fleet JSON");
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Emits `event` into the fleet's room through the Push API (retried
/// while the views settle after a kill); a binary argument rides along.
async fn emit(push: &mut PushClient, event: &str, args_json: String) {
    let request = EmitRequest {
        target: Some(Target {
            to: Some(target::To::Rooms(RoomList {
                rooms: vec!["chaos".into()],
            })),
            except_rooms: Vec::new(),
        }),
        event: event.into(),
        args_json,
        attachments: vec![Bytes::from_static(b"\x00bin\xff")],
        ..EmitRequest::default()
    };
    let what = format!("the emit of {event} to be taken");
    ringway_testkit::eventually(Duration::from_secs(10), &what, || {
        let (mut push, request) = (push.clone(), request.clone());
        async move {
            let sent = push.emit(request).await;
            if let Err(status) = &sent {
                eprintln!("emit {event}: {status}; retrying");
            }
            sent.is_ok()
        }
    })
    .await;
}

async fn publish(push: &mut PushClient, from: u64, to: u64) {
    let mut pace = ringway_testkit::pace(Duration::from_millis(10));
    for seq in from..=to {
        pace.tick().await;
        emit(
            push,
            "tick",
            format!(r#"[{seq},{{"_placeholder":true,"num":0}}]"#),
        )
        .await;
    }
}

/// A node is killed while the Push API publishes (with a binary argument)
/// into a room: every msgpack client ends with every message once, in
/// order, and came back recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_recovery_after_a_node_is_killed() {
    let (mut cluster, nginx) = recovery_cluster().await;
    let fleet = Fleet::start(&nginx.url(), 18);
    let ready = fleet.line("ready ", Duration::from_secs(60));
    // Clients per owner node (the registry says who holds each session).
    let mut per_node = [0usize; 3];
    for sid in ready["sids"].as_array().expect("sids") {
        let entry = cluster
            .redis
            .registry_entry(sid.as_str().unwrap_or(""))
            .unwrap_or_default();
        if let Some(n) = entry
            .split_once(' ')
            .and_then(|(_, node)| node.strip_prefix('n')?.parse::<usize>().ok())
        {
            per_node[n - 1] += 1;
        }
    }
    let victim = if per_node[1] >= per_node[2] { 1 } else { 2 };
    assert!(
        per_node[victim] > 0,
        "no client on the node to kill: {per_node:?}"
    );
    let mut push = push_client(cluster.nodes[0].api.as_deref().expect("api"), Some(TOKEN)).await;
    publish(&mut push, 1, 100).await;
    cluster.nodes[victim].kill();
    publish(&mut push, 101, 250).await;
    emit(&mut push, "done", "[250]".into()).await;

    let report = fleet.line("report ", Duration::from_secs(90));
    let want: Vec<u64> = (1..=250).collect();
    let mut problems = Vec::new();
    let mut reconnected = 0;
    for c in report.as_array().expect("clients") {
        let got: Vec<u64> = c["got"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        if got != want {
            let mut seen = BTreeMap::new();
            for s in &got {
                *seen.entry(*s).or_insert(0) += 1;
            }
            let missing: Vec<&u64> = want.iter().filter(|s| !seen.contains_key(s)).collect();
            problems.push(format!(
                "client {} ({}): {} received, missing {:?}, in order {}, disconnects {}",
                c["i"],
                c["transports"],
                got.len(),
                &missing[..missing.len().min(20)],
                got.windows(2).all(|w| w[0] < w[1]),
                c["disconnects"]
            ));
        }
        let recoveries = c["recoveries"].as_array().cloned().unwrap_or_default();
        if !recoveries.is_empty() {
            reconnected += 1;
        }
        if recoveries.iter().any(|r| r != &Value::Bool(true)) {
            problems.push(format!(
                "client {}: a reconnection was not recovered: {recoveries:?}",
                c["i"]
            ));
        }
        if c["done"] != json!(250) {
            problems.push(format!("client {}: done = {}", c["i"], c["done"]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        reconnected >= per_node[victim],
        "{reconnected} reconnected, {per_node:?} per node, n{} killed",
        victim + 1
    );
    eprintln!(
        "killed n{}: clients per node {per_node:?}, {reconnected} recovered",
        victim + 1
    );
}
