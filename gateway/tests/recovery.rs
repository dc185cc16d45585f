//! Connection state recovery, with real processes: gateways with recovery
//! on, the official `socket.io-client` (`tests/interop/js/recovery.mjs`)
//! and raw protocol clients; in a cluster, `redis-server`, the coordinator,
//! three gateways and nginx round robin in front, with gateways killed
//! (SIGKILL) while a publisher pushes numbered messages through the API.
//! Every client must end with the complete sequence, in order, once, and
//! `recovered === true` after every reconnection.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster::{push_client, start_node, Cluster, PushClient, RegistryExt};
use common::nginx::Nginx;
use common::{connect_ws, next_event, ws_send, ws_text, Gateway, Ws};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use ringway_proto::v1::{target, EmitRequest, RoomList, Target};
use serde_json::{json, Value};

const TOKEN: &str = "recovery-test-token";
const ROOM: &str = "chaos";

/// Recovery on (as by default), heartbeats short enough that a dead node's
/// clients notice within the test.
const RECOVERY: &[&str] = &["--recovery-window", "120000"];

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/js")
}

fn node_command(scenario: &str, url: &str) -> Command {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "npm packages missing in {}: run scripts/test.sh (it runs npm ci)",
        dir.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("recovery.mjs"))
        .arg(scenario)
        .env("RINGWAY_URL", url);
    cmd
}

fn run_js(scenario: &str, url: &str, env: &[(&str, &str)]) -> String {
    let out = node_command(scenario, url)
        .envs(env.iter().copied())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{scenario} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

// ---------------------------------------------------------------------------
// One node (the in-memory store): the official client.

fn js_drops(transports: &str) {
    let gw = Gateway::start(RECOVERY);
    let out = run_js(
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
// One node: the protocol, raw.

/// Joins a room with the echo application's acked `join`.
async fn join(ws: &mut Ws, room: &str) {
    ws_send(ws, &format!("421[\"join\",\"{room}\"]")).await;
    loop {
        let text = ws_text(ws).await.expect("join ack");
        if text.starts_with("431") {
            return;
        }
    }
}

fn is_offset(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.split_once('-')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
    })
}

#[tokio::test]
async fn connect_answers_carry_a_pid_and_events_their_offsets() {
    let gw = Gateway::start(RECOVERY);
    let (mut ws, answer) = connect_ws(&gw.addr, "{}").await;
    let pid = answer["pid"].as_str().expect("a pid");
    assert_eq!(pid.len(), 22, "128 random bits, URL-safe: {pid}");
    assert!(answer["sid"].is_string());
    // The echo application's `auth` event, then an echo: each ends with
    // its offset, and the offsets grow.
    let auth = next_event(&mut ws).await;
    assert_eq!(auth[0], "auth");
    assert_eq!(auth[1], json!({}), "the application never sees the pid");
    assert!(is_offset(&auth[2]), "{auth}");
    ws_send(&mut ws, r#"42["message","x",{"n":1}]"#).await;
    let back = next_event(&mut ws).await;
    assert_eq!(
        &back.as_array().unwrap()[..3],
        &[json!("message-back"), json!("x"), json!({"n":1})]
    );
    assert!(is_offset(&back[3]), "{back}");
    assert_ne!(back[3], auth[2]);
    // An event that asks for an ack is not recoverable: no offset.
    ws_send(&mut ws, r#"421["message-with-ack","y"]"#).await;
    loop {
        let text = ws_text(&mut ws).await.expect("ack");
        if text.starts_with("431") {
            assert_eq!(text, r#"431["y"]"#);
            break;
        }
    }

    // Recovery off: no pid, no offsets.
    let off = Gateway::start(&["--recovery-window", "0"]);
    let (mut ws, answer) = connect_ws(&off.addr, "{}").await;
    assert!(answer.get("pid").is_none(), "{answer}");
    assert_eq!(next_event(&mut ws).await, json!(["auth", {}]));
}

#[tokio::test]
async fn unknown_and_malformed_recoveries_get_a_fresh_socket() {
    let gw = Gateway::start(RECOVERY);
    let (mut ws, first) = connect_ws(&gw.addr, "{}").await;
    let pid = first["pid"].as_str().unwrap().to_owned();
    let sid = first["sid"].as_str().unwrap().to_owned();
    let offset = next_event(&mut ws).await[2].clone();
    drop(ws); // the transport goes away: recoverable

    // A forged pid, a malformed or non-string offset, an offset past the
    // end of the log, a pid of the wrong shape: fresh sockets (new sid and
    // pid).
    for auth in [
        json!({"pid": "AAAAAAAAAAAAAAAAAAAAAA", "offset": offset}),
        json!({"pid": pid, "offset": "garbage"}),
        json!({"pid": pid, "offset": 12}),
        json!({"pid": pid, "offset": "99999999999999-0"}),
        json!({"pid": "short", "offset": offset}),
        json!({"pid": ["not", "a", "string"]}),
    ] {
        let (_ws, answer) = connect_ws(&gw.addr, &auth.to_string()).await;
        assert_ne!(answer["sid"], json!(sid), "{auth} got the socket back");
        assert_ne!(answer["pid"], json!(pid), "{auth} got the pid back");
        assert!(answer["pid"].is_string(), "{answer}");
    }

    // The real pid and offset: the same socket, after all that.
    let auth = json!({"pid": pid, "offset": offset}).to_string();
    let (_ws, answer) = connect_ws(&gw.addr, &auth).await;
    assert_eq!(answer, json!({"sid": sid, "pid": pid}));
}

#[tokio::test]
async fn past_the_window_a_recovery_gets_a_fresh_socket() {
    let gw = Gateway::start(&["--recovery-window", "300"]);
    let (mut ws, first) = connect_ws(&gw.addr, "{}").await;
    let offset = next_event(&mut ws).await[2].clone();
    drop(ws);
    // fixed: the recovery window passing is what is tested.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let auth = json!({"pid": first["pid"], "offset": offset}).to_string();
    let (_ws, answer) = connect_ws(&gw.addr, &auth).await;
    assert_ne!(answer["sid"], first["sid"], "recovered after the window");
}

/// A killed node's sockets are recoverable for the window from the node's
/// death (its last heartbeat), not for as long as their states live in
/// Redis (hours: `--registry-ttl`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_window_a_killed_nodes_socket_gets_a_fresh_one() {
    let mut c = Cluster::start(2, &["--recovery-window", "2000"]).await;
    let (mut ws, first) = connect_ws(c.addr(1), "{}").await;
    let offset = next_event(&mut ws).await[2].clone();
    // A join's ack waits for the state's write.
    join(&mut ws, "r").await;
    let alive = c.redis.get("ringway:alive:n2").expect("n2's heartbeat");
    assert!(alive.split_once(' ').is_some(), "{alive}");
    c.nodes[1].kill();
    // fixed: the window (2 s) and the heartbeat's leeway (3 s) passing
    // after the death is what is tested.
    tokio::time::sleep(Duration::from_millis(6000)).await;
    let state = format!("ringway:rec:{}", first["pid"].as_str().expect("pid"));
    assert!(
        c.redis.command(&["EXISTS", &state]).as_deref() == Some(":1"),
        "the state is still in Redis"
    );
    let auth = json!({"pid": first["pid"], "offset": offset}).to_string();
    let (_ws, answer) = connect_ws(c.addr(0), &auth).await;
    assert_ne!(answer["sid"], first["sid"], "recovered after the window");
    common::wait_sample(
        c.addr(0),
        "ringway_recoveries_total{outcome=\"unknown_pid\"",
        |v| v >= 1.0,
    )
    .await;
}

#[tokio::test]
async fn a_client_that_leaves_for_good_cannot_be_recovered() {
    let gw = Gateway::start(RECOVERY);
    let (mut ws, first) = connect_ws(&gw.addr, "{}").await;
    let offset = next_event(&mut ws).await[2].clone();
    // A DISCONNECT from the client: the socket is gone, as in the reference.
    ws_send(&mut ws, "41").await;
    common::wait_sample(&gw.addr, "ringway_sockets{namespace=\"/\"", |v| v == 0.0).await;
    let auth = json!({"pid": first["pid"], "offset": offset}).to_string();
    let (_ws, answer) = connect_ws(&gw.addr, &auth).await;
    assert_ne!(answer["sid"], first["sid"]);
}

const JWT_SECRET: &str = "recovery-jwt-secret";

fn token(sub: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": get_current_timestamp() + 600}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encode")
}

#[tokio::test]
async fn another_users_pid_gets_a_fresh_socket_and_none_of_the_data() {
    let gw = Gateway::start(&[
        "--recovery-window",
        "120000",
        "--jwt-hs256-secret",
        JWT_SECRET,
    ]);
    let alice_auth = json!({"token": token("alice")}).to_string();
    let (mut alice, first) = connect_ws(&gw.addr, &alice_auth).await;
    let offset = next_event(&mut alice)
        .await
        .as_array()
        .unwrap()
        .last()
        .cloned();
    join(&mut alice, "alice-only").await;
    drop(alice);
    // Something for Alice while she is away.
    let (mut other, _) = connect_ws(&gw.addr, &json!({"token": token("carol")}).to_string()).await;
    ws_send(
        &mut other,
        r#"421["broadcast",{"room":"alice-only","msg":"secret"}]"#,
    )
    .await;
    // Logged and sent once the broadcast is acked.
    loop {
        let text = ws_text(&mut other).await.expect("carol's websocket");
        if text.starts_with("431") {
            break;
        }
    }
    // Bob presents Alice's pid and offset with his own token.
    let mallory = json!({"token": token("bob"), "pid": first["pid"], "offset": offset}).to_string();
    let (mut bob, answer) = connect_ws(&gw.addr, &mallory).await;
    assert_ne!(answer["sid"], first["sid"], "Bob got Alice's socket");
    assert_ne!(answer["pid"], first["pid"]);
    // Bob gets his own `auth` event, not Alice's message.
    let ev = next_event(&mut bob).await;
    assert_eq!(ev[0], "auth", "{ev}");
    assert!(!ev.to_string().contains("secret"), "{ev}");
    // ... and nothing of hers after it: the next event is the answer to
    // his own message.
    ws_send(&mut bob, r#"42["message","bob"]"#).await;
    let ev = next_event(&mut bob).await;
    assert_eq!(ev[0], "message-back", "{ev}");
    assert_eq!(ev[1], "bob", "{ev}");
    // Alice herself still recovers, and gets it.
    let alice_back =
        json!({"token": token("alice"), "pid": first["pid"], "offset": offset}).to_string();
    let (mut alice, answer) = connect_ws(&gw.addr, &alice_back).await;
    assert_eq!(answer["sid"], first["sid"]);
    let missed = next_event(&mut alice).await;
    assert_eq!(missed[0], "message");
    assert_eq!(missed[1], "secret");
}

#[test]
fn the_pid_never_shows_in_the_logs() {
    // Everything Ringway logs, at its most verbose.
    let (mut gateway, log) = Gateway::start_logged(
        &["--listen", "127.0.0.1:0", "--recovery-window", "120000"],
        "info,ringway=trace",
    );
    let addr = gateway.addr.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pid = rt.block_on(async {
        let (mut ws, first) = connect_ws(&addr, "{}").await;
        let offset = next_event(&mut ws).await[2].clone();
        drop(ws);
        common::wait_sample(&addr, "ringway_sockets{namespace=\"/\"", |v| v == 0.0).await;
        let auth = json!({"pid": first["pid"], "offset": offset}).to_string();
        let (_ws, answer) = connect_ws(&addr, &auth).await;
        assert_eq!(answer["sid"], first["sid"]);
        // The recovery's log line follows its answer.
        ringway_testkit::eventually(
            Duration::from_secs(10),
            "the recovery's log line",
            || async { log.text().contains("socket recovered") },
        )
        .await;
        first["pid"].as_str().unwrap().to_owned()
    });
    gateway.kill();
    let log = log.text();
    assert!(
        log.contains("socket recovered"),
        "no trace of the recovery: {log}"
    );
    assert!(!log.contains(&pid), "the pid appears in the log");
}

// ---------------------------------------------------------------------------
// The cluster: kills under load.

/// Three gateways with recovery on, the Push API, nginx round robin.
struct Setup {
    cluster: Cluster,
    nginx: Nginx,
}

const CLUSTER_ARGS: &[&str] = &[
    "--recovery-window",
    "120000",
    "--api-token",
    TOKEN,
    "--ping-interval",
    "1000",
    "--ping-timeout",
    "2000",
];

impl Setup {
    async fn start() -> Setup {
        let cluster = Cluster::start(3, CLUSTER_ARGS).await;
        let addrs: Vec<&str> = (0..3).map(|i| cluster.addr(i)).collect();
        let nginx = Nginx::start(&addrs);
        Setup { cluster, nginx }
    }

    /// The node (index) that owns a session now, from the registry.
    fn owner(&self, sid: &str) -> Option<usize> {
        let entry = self.cluster.redis.registry_entry(sid)?;
        let node = entry.split_once(' ')?.1.to_owned();
        node.strip_prefix('n')?.parse::<usize>().ok().map(|n| n - 1)
    }
}

/// The JS fleet (`recovery.mjs fleet`) as a process: its `ready` and
/// `report` lines.
struct Fleet {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Fleet {
    /// socket.io-client (JavaScript) clients.
    fn start(url: &str, clients: usize) -> Fleet {
        Fleet::spawn(node_command("fleet", url), clients)
    }

    /// python-socketio clients.
    fn start_py(url: &str, clients: usize) -> Fleet {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/py/recovery.py");
        let mut cmd = Command::new(common::python());
        cmd.arg(script).arg("fleet").env("RINGWAY_URL", url);
        Fleet::spawn(cmd, clients)
    }

    fn spawn(mut cmd: Command, clients: usize) -> Fleet {
        let mut child = cmd
            .env("FLEET_CLIENTS", clients.to_string())
            .env("FLEET_ROOM", ROOM)
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

/// Emits `tick` with numbers from..=to into the room, at about `rate` per
/// second, one call after the other (each answered once it is in the log).
async fn publish(push: &mut PushClient, from: u64, to: u64, rate: u64) {
    let mut pace = ringway_testkit::pace(Duration::from_micros(1_000_000 / rate.max(1)));
    for seq in from..=to {
        pace.tick().await;
        emit(push, "tick", &format!("[{seq}]")).await;
    }
}

async fn emit(push: &mut PushClient, event: &str, args: &str) {
    let request = EmitRequest {
        namespace: "/".into(),
        target: Some(Target {
            to: Some(target::To::Rooms(RoomList {
                rooms: vec![ROOM.into()],
            })),
            except_rooms: Vec::new(),
        }),
        event: event.into(),
        args_json: args.into(),
        ..EmitRequest::default()
    };
    // Retried while the called node's view settles after a kill.
    let what = format!("the emit of {event} {args} to be taken");
    ringway_testkit::eventually(Duration::from_secs(10), &what, || {
        let (mut push, request) = (push.clone(), request.clone());
        async move {
            let sent = push.emit(request).await;
            if let Err(status) = &sent {
                eprintln!("emit {event} {args}: {status}; retrying");
            }
            sent.is_ok()
        }
    })
    .await;
}

/// Every client got 1..=total once, in order, and came back recovered
/// after every reconnection. Returns how many reconnected.
fn check_report(report: &Value, total: u64) -> usize {
    let clients = report.as_array().expect("a list of clients");
    let want: Vec<u64> = (1..=total).collect();
    let mut reconnected = 0;
    let mut problems = Vec::new();
    for c in clients {
        let got: Vec<u64> = c["got"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        if got != want {
            let mut seen = BTreeMap::new();
            for s in &got {
                *seen.entry(*s).or_insert(0) += 1;
            }
            let missing: Vec<u64> = want
                .iter()
                .filter(|s| !seen.contains_key(s))
                .copied()
                .collect();
            let dups: Vec<u64> = seen
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(s, _)| *s)
                .collect();
            problems.push(format!(
                "client {} ({}): {} received, missing {:?}, duplicates {:?}, in order {}, disconnects {}",
                c["i"],
                c["transports"],
                got.len(),
                &missing[..missing.len().min(20)],
                &dups[..dups.len().min(20)],
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
                "client {} ({}): a reconnection was not recovered: {recoveries:?} ({})",
                c["i"], c["transports"], c["disconnects"]
            ));
        }
        if c["done"] != json!(total) {
            problems.push(format!("client {}: done = {}", c["i"], c["done"]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    reconnected
}

/// Clients per owner node.
fn owners(setup: &Setup, ready: &Value) -> Vec<usize> {
    let mut per_node = vec![0; 3];
    for sid in ready["sids"].as_array().expect("sids") {
        if let Some(n) = setup.owner(sid.as_str().unwrap_or("")) {
            per_node[n] += 1;
        }
    }
    per_node
}

/// The busiest of nodes 2 and 3 (node 1 takes the API calls).
fn victim(per_node: &[usize]) -> usize {
    if per_node[1] >= per_node[2] {
        1
    } else {
        2
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_recover_everything_through_any_node() {
    let mut setup = Setup::start().await;
    // The official clients of both languages, through the proxy.
    let js = Fleet::start(&setup.nginx.url(), 30);
    let py = Fleet::start_py(&setup.nginx.url(), 9);
    let ready_js = js.line("ready ", Duration::from_secs(60));
    let ready_py = py.line("ready ", Duration::from_secs(60));
    let (js_nodes, py_nodes) = (owners(&setup, &ready_js), owners(&setup, &ready_py));
    let per_node: Vec<usize> = js_nodes.iter().zip(&py_nodes).map(|(a, b)| a + b).collect();
    let victim = victim(&per_node);
    assert!(
        per_node[victim] > 0,
        "no client on the node to kill: {per_node:?}"
    );
    let mut push = push_client(setup.cluster.nodes[0].api.as_deref().unwrap(), Some(TOKEN)).await;

    publish(&mut push, 1, 150, 100).await;
    // Mid-stream: SIGKILL the node that holds about a third of the clients.
    setup.cluster.nodes[victim].kill();
    publish(&mut push, 151, 400, 100).await;
    emit(&mut push, "done", "[400]").await;

    let js_back = check_report(&js.line("report ", Duration::from_secs(90)), 400);
    let py_back = check_report(&py.line("report ", Duration::from_secs(90)), 400);
    eprintln!("killed n{}: JavaScript clients per node {js_nodes:?}, {js_back} reconnected; Python {py_nodes:?}, {py_back}", victim + 1);
    assert!(
        js_back >= js_nodes[victim] && py_back >= py_nodes[victim],
        "reconnected: {js_back} JavaScript of {js_nodes:?}, {py_back} Python of {py_nodes:?} (node {victim} killed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_killed_one_after_the_other_lose_nothing() {
    let mut setup = Setup::start().await;
    let fleet = Fleet::start(&setup.nginx.url(), 24);
    let ready = fleet.line("ready ", Duration::from_secs(60));
    let per_node = owners(&setup, &ready);
    let mut push = push_client(setup.cluster.nodes[0].api.as_deref().unwrap(), Some(TOKEN)).await;

    publish(&mut push, 1, 100, 100).await;
    setup.cluster.nodes[1].kill();
    publish(&mut push, 101, 250, 100).await;
    // The second kill: its clients include some that recovered there.
    setup.cluster.nodes[2].kill();
    publish(&mut push, 251, 400, 100).await;
    emit(&mut push, "done", "[400]").await;

    let report = fleet.line("report ", Duration::from_secs(90));
    let reconnected = check_report(&report, 400);
    assert!(
        reconnected >= per_node[1] + per_node[2],
        "{reconnected} reconnected, nodes 2 and 3 had {per_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarted_rejoins_and_serves_recovered_clients() {
    let mut setup = Setup::start().await;
    let fleet = Fleet::start(&setup.nginx.url(), 15);
    let _ = fleet.line("ready ", Duration::from_secs(60));
    let mut push = push_client(setup.cluster.nodes[0].api.as_deref().unwrap(), Some(TOKEN)).await;
    publish(&mut push, 1, 50, 100).await;
    setup.cluster.nodes[2].kill();
    publish(&mut push, 51, 100, 100).await;
    // n3 comes back (a new process, new ports) and joins the view.
    let n3 = start_node(
        "n3",
        &setup.cluster.coordinator,
        &setup.cluster.redis,
        CLUSTER_ARGS,
    );
    setup
        .cluster
        .coordinator
        .wait_members(&["n1", "n2", "n3"])
        .await;
    let back = n3.addr.clone();
    setup.cluster.nodes[2] = n3;
    // A client on the restarted node, in the room, gets what follows.
    let (mut ws, _) = connect_ws(&back, "{}").await;
    join(&mut ws, ROOM).await;
    publish(&mut push, 101, 150, 100).await;
    emit(&mut push, "done", "[150]").await;
    let report = fleet.line("report ", Duration::from_secs(60));
    check_report(&report, 150);
    let mut got = Vec::new();
    while got.len() < 50 {
        let ev = next_event(&mut ws).await;
        if ev[0] == "tick" {
            got.push(ev[1].as_u64().unwrap());
        }
    }
    assert_eq!(got, (101..=150).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_keeps_sessions_and_later_recoveries() {
    let mut setup = Setup::start().await;
    let fleet = Fleet::start(&setup.nginx.url(), 15);
    let ready = fleet.line("ready ", Duration::from_secs(60));
    let per_node = owners(&setup, &ready);
    let victim = victim(&per_node);
    let mut push = push_client(setup.cluster.nodes[0].api.as_deref().unwrap(), Some(TOKEN)).await;
    publish(&mut push, 1, 50, 100).await;
    // Redis goes away (and comes back empty: no persistence). Meanwhile
    // emits are delivered live without the log.
    setup.cluster.redis.stop();
    publish(&mut push, 51, 60, 50).await;
    setup.cluster.redis.restart();
    // The states are written again at once (the nodes' heartbeat keys are
    // gone: Redis lost its data): every client's is back in Redis. What is
    // emitted now is logged again.
    ringway_testkit::eventually(
        Duration::from_secs(20),
        "the 15 states rewritten",
        || async {
            let count = setup.cluster.redis.command(&[
                "EVAL",
                "return #redis.call('KEYS', ARGV[1])",
                "0",
                "ringway:rec:*",
            ]);
            count
                .and_then(|c| c.trim_start_matches(':').parse::<u64>().ok())
                .is_some_and(|n| n >= 15)
        },
    )
    .await;
    publish(&mut push, 61, 150, 100).await;
    // A node dies after the restart: its clients recover from the new log.
    setup.cluster.nodes[victim].kill();
    publish(&mut push, 151, 250, 100).await;
    emit(&mut push, "done", "[250]").await;
    let report = fleet.line("report ", Duration::from_secs(90));
    let reconnected = check_report(&report, 250);
    assert!(
        reconnected >= per_node[victim],
        "{reconnected} vs {per_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_nodes_clients_recover_on_the_others_with_nothing_lost() {
    let mut setup = Setup::start().await;
    let fleet = Fleet::start(&setup.nginx.url(), 21);
    let ready = fleet.line("ready ", Duration::from_secs(60));
    let per_node = owners(&setup, &ready);
    let victim = victim(&per_node);
    let mut push = push_client(setup.cluster.nodes[0].api.as_deref().unwrap(), Some(TOKEN)).await;
    publish(&mut push, 1, 100, 100).await;
    // SIGTERM: the node leaves the ring, closes its sessions ("server
    // shutting down", recoverable) and exits; its clients come back on
    // the other nodes.
    let victim_node = setup.cluster.nodes.remove(victim);
    let drained = tokio::task::spawn_blocking(move || {
        let mut node = victim_node;
        node.terminate(Duration::from_secs(15))
    });
    publish(&mut push, 101, 300, 100).await;
    let status = drained
        .await
        .expect("join")
        .expect("the drained node exited in time");
    assert!(status.success(), "drain exit status {status}");
    emit(&mut push, "done", "[300]").await;
    let reconnected = check_report(&fleet.line("report ", Duration::from_secs(90)), 300);
    assert!(
        reconnected >= per_node[victim],
        "{reconnected} vs {per_node:?}"
    );
}
