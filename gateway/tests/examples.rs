//! The examples of `examples/` against a real 3-node cluster (Redis,
//! coordinator, gateways as processes), with raw Socket.IO clients over
//! WebSocket on every node:
//! - `examples/python-publisher/publisher.py`, run with the test venv's
//!   Python (`.venv-test`, grpcio and grpcio-tools installed by
//!   `scripts/test.sh`; the stubs are generated when it runs);
//! - `examples/chat-backend` (`target/debug/chat-backend`, built with the
//!   workspace's tests, or here when it is missing), as the cluster's
//!   Upstream backend, pushing through one gateway's Push API.

mod common;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::{free_port, Cluster};
use common::{ws_open, ws_send, ws_text, Ws};
use serde_json::{json, Value};

const TOKEN: &str = "examples-token";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

// ---------------------------------------------------------------------------
// A raw Socket.IO client on the main namespace that keeps what it received.

struct Client {
    ws: Ws,
    /// Received and not yet taken by `expect`.
    pending: VecDeque<String>,
    /// Every packet received (pings excepted).
    seen: Vec<String>,
    next_ack: u32,
}

impl Client {
    async fn open(addr: &str) -> Client {
        let (ws, _) = ws_open(addr).await;
        Client {
            ws,
            pending: VecDeque::new(),
            seen: Vec::new(),
            next_ack: 1,
        }
    }

    async fn read(&mut self) -> String {
        let text = ws_text(&mut self.ws).await.expect("websocket closed");
        self.seen.push(text.clone());
        text
    }

    /// The first packet starting with `prefix`: taken from what came
    /// already, else read (keeping the others for later).
    async fn expect(&mut self, prefix: &str) -> String {
        if let Some(i) = self.pending.iter().position(|p| p.starts_with(prefix)) {
            return self.pending.remove(i).expect("index");
        }
        loop {
            let text = self.read().await;
            if text.starts_with(prefix) {
                return text;
            }
            self.pending.push_back(text);
        }
    }

    /// CONNECT to the main namespace with `auth` (none: `""`): the socket
    /// id, or the CONNECT_ERROR's body.
    async fn join_namespace(&mut self, auth: &str) -> Result<String, Value> {
        ws_send(&mut self.ws, &format!("40{auth}")).await;
        loop {
            let text = self.read().await;
            if let Some(body) = text.strip_prefix("40") {
                let body: Value = serde_json::from_str(body).expect("connect json");
                return Ok(body["sid"].as_str().expect("sid").to_owned());
            }
            if let Some(body) = text.strip_prefix("44") {
                return Err(serde_json::from_str(body).expect("connect_error json"));
            }
            self.pending.push_back(text);
        }
    }

    /// Emits `event` with one argument and returns the ack's first argument.
    async fn call(&mut self, event: &str, arg: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let packet = json!([event, arg]);
        ws_send(&mut self.ws, &format!("42{id}{packet}")).await;
        let ack = self.expect(&format!("43{id}[")).await;
        let args: Value =
            serde_json::from_str(&ack[format!("43{id}").len()..]).expect("ack arguments");
        args[0].clone()
    }

    /// The next `event` received: its first argument.
    async fn event(&mut self, event: &str) -> Value {
        let prefix = format!("42[\"{event}\",");
        let packet = self.expect(&prefix).await;
        let args: Value = serde_json::from_str(&packet[2..]).expect("event json");
        args[1].clone()
    }

    /// Takes `event`s until one whose first argument is `want`.
    async fn wait_for(&mut self, event: &str, want: Value) {
        while self.event(event).await != want {}
    }

    /// Takes the `said` events up to the one with `text`: their texts.
    async fn said_until(&mut self, text: &str) -> Vec<String> {
        let mut texts = Vec::new();
        loop {
            let said = self.event("said").await;
            let t = said["text"].as_str().expect("text").to_owned();
            texts.push(t.clone());
            if t == text {
                return texts;
            }
        }
    }

    /// The first argument of each `event` received so far.
    fn got(&self, event: &str) -> Vec<Value> {
        let prefix = format!("42[\"{event}\",");
        self.seen
            .iter()
            .filter(|p| p.starts_with(&prefix))
            .map(|p| serde_json::from_str::<Value>(&p[2..]).expect("event json")[1].clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// (a) The Python publisher.

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn publisher(args: &[&str]) -> Run {
    let script = workspace().join("examples/python-publisher/publisher.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(common::python())
            .arg(&script)
            .args(args)
            .env_remove("RINGWAY_API_TOKEN")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the publisher did not finish in 60 s")
    .expect("run the publisher");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A client of the echo application in `room`.
async fn echo_client(addr: &str, room: Option<&str>) -> Client {
    let mut c = Client::open(addr).await;
    c.join_namespace("").await.expect("connected");
    c.expect("42[\"auth\"").await;
    if let Some(room) = room {
        ws_send(&mut c.ws, &format!("429[\"join\",\"{room}\"]")).await;
        c.expect("439[true]").await;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publisher_reaches_a_room_on_every_node_in_order() {
    let c = Cluster::start(3, &["--api-token", TOKEN]).await;
    // Two members of `news` on each node, and one outsider.
    let mut members = Vec::new();
    for i in 0..6 {
        members.push(echo_client(c.addr(i % 3), Some("news")).await);
    }
    let mut outsider = echo_client(c.addr(0), None).await;

    // 20 messages on one EmitStream, through node 2.
    let grpc = c.nodes[1].api.clone().expect("api address");
    let run = publisher(&[
        "--gateway",
        &grpc,
        "--token",
        TOKEN,
        "--room",
        "news",
        "--event",
        "tick",
        "--json",
        r#"["hello",{"from":"python"}]"#,
        "--count",
        "20",
        "--seq",
    ])
    .await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout {}\nstderr {}",
        run.stdout,
        run.stderr
    );
    let mut want: Vec<String> = (1..=20)
        .map(|i| format!("message {i}: reached 6 sockets on 3 nodes"))
        .collect();
    want.push("done: sent 20 messages to news, reached 120 sockets in all".into());
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines, want, "stderr {}", run.stderr);

    // Every member got every message, in order.
    for (m, client) in members.iter_mut().enumerate() {
        for i in 1..=20 {
            assert_eq!(
                client.expect("42[\"tick\"").await,
                format!(r#"42["tick","hello",{{"from":"python"}},{i}]"#),
                "member {m}"
            );
        }
    }

    // One message: Push.Emit, through node 3.
    let grpc = c.nodes[2].api.clone().expect("api address");
    let run = publisher(&[
        "--gateway",
        &grpc,
        "--token",
        TOKEN,
        "--room",
        "news",
        "--event",
        "flash",
        "--json",
        r#"[{"n":1}]"#,
    ])
    .await;
    assert_eq!(run.code, Some(0), "stderr {}", run.stderr);
    assert_eq!(
        run.stdout,
        "message 1: reached 6 sockets on 3 nodes\n\
         done: sent 1 message to news, reached 6 sockets in all\n"
    );
    for client in &mut members {
        assert_eq!(
            client.expect("42[\"flash\"").await,
            r#"42["flash",{"n":1}]"#
        );
    }

    // A wrong token: UNAUTHENTICATED, exit code 1, nothing sent.
    let run = publisher(&[
        "--gateway",
        &grpc,
        "--token",
        "wrong",
        "--room",
        "news",
        "--event",
        "tick",
    ])
    .await;
    assert_eq!(run.code, Some(1), "stdout {}", run.stdout);
    assert!(
        run.stderr.contains("Emit failed: UNAUTHENTICATED"),
        "{}",
        run.stderr
    );

    // The outsider got none of it.
    ws_send(&mut outsider.ws, "42[\"message\",\"sync\"]").await;
    outsider.expect("42[\"message-back\"").await;
    assert!(outsider.got("tick").is_empty() && outsider.got("flash").is_empty());
    for client in &members {
        assert_eq!(client.got("tick").len(), 20);
    }
}

// ---------------------------------------------------------------------------
// (b) The chat backend.

/// `target/<profile>/chat-backend`, next to the gateway. `cargo nextest
/// run --workspace` builds it (examples/chat-backend has an integration
/// test of its own); a run of the gateway's tests alone builds it here.
fn chat_backend_binary() -> PathBuf {
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_ringway-gateway"));
    let path = gateway.with_file_name("chat-backend");
    if path.exists() {
        return path;
    }
    let profile_dir = gateway
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str())
        .unwrap_or("debug")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace()).args([
        "build",
        "-p",
        "ringway-example-chat",
        "--bin",
        "chat-backend",
    ]);
    if profile_dir != "debug" {
        build.args(["--profile", &profile_dir]);
    }
    let status = build.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p ringway-example-chat failed"
    );
    assert!(
        path.exists(),
        "{} is missing after the build",
        path.display()
    );
    path
}

/// A `chat-backend` process, killed when dropped.
struct ChatBackend {
    child: Child,
}

impl ChatBackend {
    fn start(listen: &str, gateway: &str) -> ChatBackend {
        let mut child = Command::new(chat_backend_binary())
            .args(["--listen", listen, "--gateway", gateway])
            // The token from the environment: kept out of the process list.
            .env("CHAT_API_TOKEN", TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chat-backend");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("chat-backend listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("chat-backend did not report its address");
        assert_eq!(addr, listen);
        ChatBackend { child }
    }
}

impl Drop for ChatBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chat user on `addr`.
async fn chat_client(addr: &str, name: &str) -> Client {
    let mut c = Client::open(addr).await;
    c.join_namespace(&json!({ "name": name }).to_string())
        .await
        .unwrap_or_else(|e| panic!("{name} refused: {e}"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_backend_across_three_nodes() {
    // The cluster first (the gateways reach the backend at the first
    // call), then the backend, pushing through node 2.
    let listen = format!("127.0.0.1:{}", free_port());
    let upstream = format!("http://{listen}");
    let c = Cluster::start(3, &["--upstream", &upstream, "--api-token", TOKEN]).await;
    let grpc = c.nodes[1].api.clone().expect("api address");
    let backend = ChatBackend::start(&listen, &grpc);

    // Bad names get CONNECT_ERROR with the backend's message; the session
    // stays open and may try again.
    let mut alice = Client::open(c.addr(0)).await;
    let refused = json!({
        "message": "auth.name must be a non-empty string of at most 32 characters",
        "data": {"field": "name", "max": 32}
    });
    for auth in [
        "".to_owned(),
        json!({"name": ""}).to_string(),
        json!({"name": 42}).to_string(),
        json!({"name": "x".repeat(33)}).to_string(),
    ] {
        let err = alice.join_namespace(&auth).await.expect_err("refused");
        assert_eq!(err, refused, "auth {auth:?}");
    }
    alice
        .join_namespace(r#"{"name":"alice"}"#)
        .await
        .expect("alice connects");
    let mut bob = chat_client(c.addr(1), "bob").await;
    let mut carol = chat_client(c.addr(2), "carol").await;
    // carol has a second session, on node 1.
    let mut carol2 = chat_client(c.addr(0), "carol").await;

    // `say` reaches the whole lobby, on every node.
    let ack = alice.call("say", json!({"text": "hi all"})).await;
    assert_eq!(ack, json!({"ok": true, "room": "lobby", "delivered": 4}));
    for client in [&mut alice, &mut bob, &mut carol, &mut carol2] {
        assert_eq!(
            client.event("said").await,
            json!({"from": "alice", "room": "lobby", "text": "hi all"})
        );
    }
    // Newcomers were announced to the lobby (alice saw the others come).
    let joined = alice.got("joined");
    for user in ["bob", "carol"] {
        assert!(
            joined.contains(&json!({"user": user, "room": "lobby"})),
            "{joined:?}"
        );
    }

    // `whisper` reaches every session of the named user (two nodes), and
    // no one else.
    let ack = bob
        .call("whisper", json!({"to": "carol", "text": "psst"}))
        .await;
    assert_eq!(ack, json!({"ok": true, "to": "carol", "delivered": 2}));
    let whispered = json!({"from": "bob", "to": "carol", "text": "psst"});
    assert_eq!(carol.event("whispered").await, whispered);
    assert_eq!(carol2.event("whispered").await, whispered);
    let ack = bob.call("whisper", json!({"to": "zed", "text": "?"})).await;
    assert_eq!(ack, json!({"ok": false, "error": "zed is not online"}));
    // A lobby message after the whisper: a whisper to alice or bob would
    // have come before it.
    carol.call("say", json!({"text": "sync"})).await;
    for client in [&mut alice, &mut bob, &mut carol, &mut carol2] {
        assert_eq!(client.said_until("sync").await, ["sync"]);
    }
    for client in [&alice, &bob] {
        assert!(client.got("whispered").is_empty(), "{:?}", client.seen);
    }

    // `join` moves bob to `dev`: the lobby hears him leave, dev (bob)
    // hears him come.
    let ack = bob.call("join", json!({"room": "dev"})).await;
    assert_eq!(ack, json!({"ok": true, "room": "dev", "from": "lobby"}));
    bob.wait_for("joined", json!({"user": "bob", "room": "dev"}))
        .await;
    for client in [&mut alice, &mut carol, &mut carol2] {
        client
            .wait_for("left", json!({"user": "bob", "room": "lobby"}))
            .await;
    }
    // Lobby and dev no longer hear each other.
    let ack = alice.call("say", json!({"text": "lobby only"})).await;
    assert_eq!(ack, json!({"ok": true, "room": "lobby", "delivered": 3}));
    let ack = bob.call("say", json!({"text": "dev only"})).await;
    assert_eq!(ack, json!({"ok": true, "room": "dev", "delivered": 1}));
    assert_eq!(bob.said_until("dev only").await, ["dev only"]);
    carol.call("say", json!({"text": "sync 2"})).await;
    for client in [&mut alice, &mut carol, &mut carol2] {
        assert_eq!(client.said_until("sync 2").await, ["lobby only", "sync 2"]);
    }

    // A client that leaves is announced to its room.
    carol2.ws.close(None).await.expect("close");
    alice
        .wait_for("left", json!({"user": "carol", "room": "lobby"}))
        .await;
    let ack = alice.call("who", json!({})).await;
    assert_eq!(
        ack,
        json!({"ok": true, "room": "lobby", "users": ["alice", "carol"]})
    );
    let ack = alice.call("dance", json!({})).await;
    assert_eq!(ack["ok"], false);

    // The backend restarts (its memory of rooms is gone): bob is still in
    // dev, which it learns from Push.Sessions. The gateways reconnect on
    // their own; the first calls may find the backend unreachable.
    drop(backend);
    let _backend = ChatBackend::start(&listen, &grpc);
    let asking = tokio::sync::Mutex::new(&mut bob);
    let ack = ringway_testkit::eventually(Duration::from_secs(10), "the backend back", || async {
        let ack = asking.lock().await.call("who", json!({})).await;
        assert!(
            ack.get("ok").is_some() || ack.get("error").is_some(),
            "{ack}"
        );
        ack.get("ok").is_some().then_some(ack)
    })
    .await;
    assert_eq!(ack, json!({"ok": true, "room": "dev", "users": ["bob"]}));
    let ack = bob.call("say", json!({"text": "still here"})).await;
    assert_eq!(ack, json!({"ok": true, "room": "dev", "delivered": 1}));
    assert_eq!(bob.said_until("still here").await, ["still here"]);
}
