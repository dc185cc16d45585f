//! The backend hooks with real processes: a `ringway.v1.Upstream` server
//! written here (tonic, on a free 127.0.0.1 port) behind a real 3-node
//! cluster (redis, coordinator, gateways), driven by raw Socket.IO packets
//! over polling and WebSocket; and the built-in JWT verification.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use ringway_proto::v1::connect_reply::Decision;
use ringway_proto::v1::upstream_server::{Upstream, UpstreamServer};
use ringway_proto::v1::{target, EmitRequest, RoomList, Target};
use ringway_proto::v1::{
    Allow, ConnectReply, ConnectRequest, Deny, DisconnectNotice, DisconnectNoticeReply, EventReply,
    EventRequest,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_tungstenite::tungstenite::Message;
use tonic::{Request, Response, Status};

use common::cluster::{free_port, push_client, Cluster};
use common::{get, ws_expect, ws_frame, ws_open, ws_send, ws_text, Gateway, Polling, Ws};

// ---------------------------------------------------------------------------
// The test backend.

/// What the backend was told.
#[derive(Default)]
struct Seen {
    connects: Vec<ConnectRequest>,
    events: Vec<EventRequest>,
    disconnects: Vec<DisconnectNotice>,
    /// Sockets with an `OnEvent` running.
    active: HashSet<String>,
    /// Two calls of one socket ran at the same time.
    overlap: bool,
    /// `hold` events waiting for the release.
    holding: usize,
}

/// The backend's behaviour is chosen by the client:
/// - CONNECT auth `{"mode":"deny"}` denies with data, `"slow"` answers
///   after 8 s, `"empty"` answers without a decision, `"fail"` with an
///   error status; otherwise allows with `user`, `rooms` and the data
///   `data-of-<user>`.
/// - events `slow` (8 s), `hold` (until released), `seq` (150 ms),
///   `fail` (error status), `bad-ack` (not JSON); every other event is
///   acked with `[{"user","data","event"}, ...its arguments]` and its
///   attachments.
#[derive(Clone)]
struct Backend {
    seen: Arc<Mutex<Seen>>,
    release: watch::Sender<bool>,
}

impl Backend {
    fn new() -> Backend {
        Backend {
            seen: Arc::default(),
            release: watch::channel(false).0,
        }
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().expect("lock"))
    }

    /// Waits (10 s at most) until `check` holds.
    async fn wait_until(&self, what: &str, check: impl Fn(&Seen) -> bool) {
        ringway_testkit::eventually(Duration::from_secs(10), what, || async {
            self.seen(&check)
        })
        .await;
    }
}

/// Removes a socket from the running set, even if the call is cancelled.
struct Running(Arc<Mutex<Seen>>, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.lock().expect("lock").active.remove(&self.1);
    }
}

#[tonic::async_trait]
impl Upstream for Backend {
    async fn on_connect(
        &self,
        request: Request<ConnectRequest>,
    ) -> Result<Response<ConnectReply>, Status> {
        let req = request.into_inner();
        let auth: Value = serde_json::from_str(&req.auth_json).unwrap_or(json!({}));
        self.seen.lock().expect("lock").connects.push(req);
        let decision = match auth["mode"].as_str() {
            Some("deny") => Some(Decision::Deny(Deny {
                message: "go away".into(),
                data_json: r#"{"reason":"banned"}"#.into(),
            })),
            Some("empty") => None,
            Some("fail") => return Err(Status::permission_denied("nope")),
            mode => {
                if mode == Some("slow") {
                    // fixed: a slow backend's latency is what is tested.
                    tokio::time::sleep(Duration::from_secs(8)).await;
                }
                let user = auth["user"].as_str().unwrap_or_default().to_owned();
                let rooms = auth["rooms"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(Decision::Allow(Allow {
                    data: format!("data-of-{user}").into_bytes().into(),
                    user,
                    rooms,
                }))
            }
        };
        Ok(Response::new(ConnectReply { decision }))
    }

    async fn on_event(
        &self,
        request: Request<EventRequest>,
    ) -> Result<Response<EventReply>, Status> {
        let req = request.into_inner();
        let _running = {
            let mut seen = self.seen.lock().expect("lock");
            seen.events.push(req.clone());
            if !seen.active.insert(req.socket_id.clone()) {
                seen.overlap = true;
            }
            Running(self.seen.clone(), req.socket_id.clone())
        };
        match req.event.as_str() {
            // fixed: a slow backend's latency is what is tested.
            "slow" => tokio::time::sleep(Duration::from_secs(8)).await,
            // fixed: as above; calls must not overlap while it lasts.
            "seq" => tokio::time::sleep(Duration::from_millis(150)).await,
            "hold" => {
                self.seen.lock().expect("lock").holding += 1;
                let mut released = self.release.subscribe();
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), released.wait_for(|r| *r)).await;
                self.seen.lock().expect("lock").holding -= 1;
            }
            "fail" => return Err(Status::internal("boom")),
            "bad-ack" => {
                return Ok(Response::new(EventReply {
                    ack_args_json: "{not json".into(),
                    ack_attachments: Vec::new(),
                }))
            }
            _ => {}
        }
        let mut args: Vec<Value> = serde_json::from_str(&req.args_json).unwrap_or_default();
        args.insert(
            0,
            json!({
                "user": req.user,
                "data": String::from_utf8_lossy(&req.data),
                "event": req.event,
            }),
        );
        Ok(Response::new(EventReply {
            ack_args_json: Value::Array(args).to_string(),
            ack_attachments: req.attachments,
        }))
    }

    async fn on_disconnect(
        &self,
        request: Request<DisconnectNotice>,
    ) -> Result<Response<DisconnectNoticeReply>, Status> {
        self.seen
            .lock()
            .expect("lock")
            .disconnects
            .push(request.into_inner());
        Ok(Response::new(DisconnectNoticeReply {}))
    }
}

/// A backend serving on `port` (0: a free one); its URL and a switch that
/// stops it.
/// Stops a test backend: [`Stop::stop`] returns once its server has ended
/// (its connections closed).
struct Stop {
    tx: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Stop {
    async fn stop(self) {
        let _ = self.tx.send(());
        let _ = self.server.await;
    }
}

async fn start_backend(port: u16) -> (Backend, String, Stop) {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the backend");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let backend = Backend::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UpstreamServer::new(backend.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    (backend, url, Stop { tx: stop, server })
}

// ---------------------------------------------------------------------------
// Client helpers (raw Socket.IO packets).

/// Polls `p` (answering pings) until packets starting with each of `want`
/// came, in this order; returns everything received.
async fn expect_packets(p: &Polling, want: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got: Vec<String> = Vec::new();
    loop {
        let mut from = 0;
        let mut matched = 0;
        for w in want {
            match got[from..].iter().position(|g| g.starts_with(w)) {
                Some(pos) => {
                    from += pos + 1;
                    matched += 1;
                }
                None => break,
            }
        }
        if matched == want.len() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "waited for {want:?}, got {got:?}"
        );
        got.extend(p.next_non_ping().await);
    }
}

/// A polling session opened on `addr` with extra query parameters.
async fn polling_open(addr: &str, query: &str) -> Polling {
    let resp = get(
        addr,
        &format!("/socket.io/?EIO=4&transport=polling&{query}"),
    )
    .await;
    assert_eq!(resp.status, 200, "handshake: {}", resp.text());
    let text = resp.text();
    let open: Value =
        serde_json::from_str(text.strip_prefix('0').expect("open packet")).expect("open json");
    Polling {
        addr: addr.to_owned(),
        path: "/socket.io/".to_owned(),
        sid: open["sid"].as_str().expect("sid").to_owned(),
        open,
    }
}

/// The JSON after a packet's prefix.
fn json_after(packet: &str, prefix: &str) -> Value {
    let body = packet
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{packet:?} does not start with {prefix:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{packet:?}: {e}"))
}

/// Sends a CONNECT to the main namespace and returns its answer: `Ok` with
/// the socket id, or `Err` with the CONNECT_ERROR body.
async fn ws_join(ws: &mut Ws, auth: &str) -> Result<String, Value> {
    ws_send(ws, &format!("40{auth}")).await;
    loop {
        let text = ws_text(ws).await.expect("websocket closed");
        if text.starts_with("40{") {
            let answer = json_after(&text, "40");
            return Ok(answer["sid"].as_str().expect("sid").to_owned());
        }
        if text.starts_with("44{") {
            return Err(json_after(&text, "44"));
        }
    }
}

/// A WebSocket session on `addr` with a socket in the main namespace.
async fn ws_client(addr: &str, auth: &str) -> (Ws, String) {
    let (mut ws, _) = ws_open(addr).await;
    let id = ws_join(&mut ws, auth).await.expect("connected");
    (ws, id)
}

fn connect_error(message: &str) -> Value {
    json!({ "message": message })
}

// ---------------------------------------------------------------------------
// Upstream hooks.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_decide_receive_and_hear_of_leaving_across_three_nodes() {
    let (backend, url, _stop) = start_backend(0).await;
    let c = Cluster::start(3, &["--upstream", &url, "--api-token", "t0ken"]).await;
    let (n1, n2, n3) = (c.addr(0), c.addr(1), c.addr(2));

    // Allow: handshake on node 1 (the owner), CONNECT posted on node 2,
    // its answer polled on node 3.
    let p = polling_open(n1, "tenant=acme").await;
    p.on(n2)
        .send(r#"40{"user":"alice","rooms":["lobby"],"token":"t"}"#)
        .await;
    let got = expect_packets(&p.on(n3), &["40{\"sid\""]).await;
    let socket_id = got
        .iter()
        .find(|g| g.starts_with("40{"))
        .map(|g| json_after(g, "40")["sid"].as_str().expect("sid").to_owned())
        .expect("connect answer");
    let connect = backend.seen(|s| s.connects.last().cloned().expect("OnConnect"));
    assert_eq!(connect.sid, p.sid);
    assert_eq!(connect.namespace, "/");
    assert_eq!(connect.node_id, "n1", "the owner decides");
    assert_eq!(
        serde_json::from_str::<Value>(&connect.auth_json).expect("auth json"),
        json!({"user": "alice", "rooms": ["lobby"], "token": "t"})
    );
    assert!(
        connect.remote_addr.starts_with("127.0.0.1:"),
        "{}",
        connect.remote_addr
    );
    assert_eq!(connect.headers.get("host").map(String::as_str), Some(n1));
    assert!(
        connect.query.contains("tenant=acme") && connect.query.contains("EIO=4"),
        "{}",
        connect.query
    );

    // The Allow's user and rooms hold across the cluster: a push (on node
    // 3) to the room and one to the user reach the socket.
    let mut api = push_client(c.nodes[2].api.as_deref().expect("api"), Some("t0ken")).await;
    for to in [
        target::To::Rooms(RoomList {
            rooms: vec!["lobby".into()],
        }),
        target::To::User("alice".into()),
    ] {
        let reply = api
            .emit(EmitRequest {
                namespace: "/".into(),
                target: Some(Target {
                    to: Some(to),
                    except_rooms: vec![],
                }),
                event: "pushed".into(),
                args_json: "[1]".into(),
                attachments: vec![],
                volatile: false,
                skip_count: false,
            })
            .await
            .expect("push")
            .into_inner();
        assert_eq!(reply.sockets, 1);
        expect_packets(&p.on(n2), &["42[\"pushed\",1]"]).await;
    }

    // An event posted on node 3, its ack (the backend's reply) polled on
    // node 2; the backend sees the user and the data of the Allow.
    p.on(n3).send(r#"421["chat","hi"]"#).await;
    let got = expect_packets(&p.on(n2), &["431["]).await;
    let ack = got.iter().find(|g| g.starts_with("431[")).expect("ack");
    assert_eq!(
        json_after(ack, "431"),
        json!([{"user": "alice", "data": "data-of-alice", "event": "chat"}, "hi"])
    );
    let event = backend.seen(|s| s.events.last().cloned().expect("OnEvent"));
    assert_eq!(
        (
            event.sid.as_str(),
            event.socket_id.as_str(),
            event.namespace.as_str(),
            event.user.as_str(),
            event.event.as_str(),
            event.args_json.as_str(),
            event.wants_ack,
            &event.data[..],
        ),
        (
            p.sid.as_str(),
            socket_id.as_str(),
            "/",
            "alice",
            "chat",
            r#"["hi"]"#,
            true,
            &b"data-of-alice"[..]
        )
    );

    // Without an ack id the backend is told the client wants none.
    p.on(n2).send(r#"42["note",7]"#).await;
    backend
        .wait_until("the note", |s| {
            s.events.iter().any(|e| e.event == "note" && !e.wants_ack)
        })
        .await;

    // Events of one socket reach the backend one at a time, in order, even
    // when the backend is slow with each.
    p.on(n1)
        .send("422[\"seq\",1]\u{1e}423[\"seq\",2]\u{1e}424[\"seq\",3]")
        .await;
    expect_packets(&p.on(n1), &["432[", "433[", "434["]).await;
    let seq: Vec<String> = backend.seen(|s| {
        s.events
            .iter()
            .filter(|e| e.event == "seq")
            .map(|e| e.args_json.clone())
            .collect()
    });
    assert_eq!(seq, ["[1]", "[2]", "[3]"]);
    assert!(
        !backend.seen(|s| s.overlap),
        "calls of one socket overlapped"
    );

    // A failing backend call or a reply that is not JSON: the ack carries
    // an error.
    p.on(n3).send("425[\"fail\"]\u{1e}426[\"bad-ack\"]").await;
    let got = expect_packets(&p.on(n2), &["435[", "436["]).await;
    assert!(
        got.contains(&r#"435[{"error":"upstream error"}]"#.to_owned()),
        "{got:?}"
    );
    assert!(
        got.contains(&r#"436[{"error":"upstream error"}]"#.to_owned()),
        "{got:?}"
    );

    // The session moves to node 3 (WebSocket upgrade there) while node 1
    // waits for the backend's answer to an event with ack: the ack,
    // made on node 1 after the move, reaches the client on node 3.
    p.on(n2).send(r#"427["hold"]"#).await;
    backend
        .wait_until("the held call", |s| s.holding == 1)
        .await;
    let mut ws = p.on(n3).upgrade().await;
    backend.release.send_replace(true);
    let held = ws_expect(&mut ws, "437[").await;
    assert_eq!(
        json_after(&held, "437"),
        json!([{"user": "alice", "data": "data-of-alice", "event": "hold"}])
    );

    // The socket's user and data travelled with it; a binary event and
    // its binary ack.
    ws_send(&mut ws, r#"451-8["bin",{"_placeholder":true,"num":0}]"#).await;
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    let ack = ws_expect(&mut ws, "461-8").await;
    assert_eq!(
        json_after(&ack, "461-8"),
        json!([
            {"user": "alice", "data": "data-of-alice", "event": "bin"},
            {"_placeholder": true, "num": 0}
        ])
    );
    assert_eq!(
        ws_frame(&mut ws).await,
        Some(Message::binary(vec![1u8, 2, 3]))
    );
    let event = backend.seen(|s| s.events.last().cloned().expect("OnEvent"));
    assert_eq!(event.socket_id, socket_id, "the socket kept its id");
    assert_eq!(&event.data[..], b"data-of-alice");
    assert_eq!(
        event.attachments,
        vec![bytes::Bytes::from_static(&[1, 2, 3])]
    );

    // Deny: CONNECT_ERROR with the backend's message and data; a reply
    // without a decision or an error status: "upstream error". The session
    // may try again.
    let (mut other, _) = ws_open(n2).await;
    assert_eq!(
        ws_join(&mut other, r#"{"mode":"deny"}"#).await,
        Err(json!({"message": "go away", "data": {"reason": "banned"}}))
    );
    assert_eq!(
        ws_join(&mut other, r#"{"mode":"empty"}"#).await,
        Err(connect_error("upstream error"))
    );
    assert_eq!(
        ws_join(&mut other, r#"{"mode":"fail"}"#).await,
        Err(connect_error("upstream error"))
    );
    let bob = ws_join(&mut other, r#"{"user":"bob"}"#)
        .await
        .expect("bob connects");

    // Disconnect: leaving the namespace, and closing the transport.
    ws_send(&mut ws, "41").await;
    backend
        .wait_until("alice's disconnect", |s| {
            s.disconnects.iter().any(|d| d.socket_id == socket_id)
        })
        .await;
    let notice = backend.seen(|s| {
        s.disconnects
            .iter()
            .find(|d| d.socket_id == socket_id)
            .cloned()
            .expect("notice")
    });
    assert_eq!(
        (
            notice.sid.as_str(),
            notice.namespace.as_str(),
            notice.user.as_str(),
            notice.reason.as_str(),
            &notice.data[..]
        ),
        (
            p.sid.as_str(),
            "/",
            "alice",
            "client namespace disconnect",
            &b"data-of-alice"[..]
        )
    );
    other.close(None).await.expect("close");
    backend
        .wait_until("bob's disconnect", |s| {
            s.disconnects.iter().any(|d| d.socket_id == bob)
        })
        .await;
    let reason = backend.seen(|s| {
        s.disconnects
            .iter()
            .find(|d| d.socket_id == bob)
            .map(|d| (d.user.clone(), d.reason.clone()))
    });
    assert_eq!(
        reason,
        Some(("bob".to_owned(), "transport close".to_owned()))
    );
    // Each socket was told once.
    assert_eq!(backend.seen(|s| s.disconnects.len()), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gives_upstream_timeout_not_a_hang() {
    let (_backend, url, _stop) = start_backend(0).await;
    let c = Cluster::start(3, &["--upstream", &url, "--upstream-timeout", "1500"]).await;
    let within =
        |took: Duration| took >= Duration::from_millis(1400) && took < Duration::from_secs(5);

    // A CONNECT the backend does not answer in time: CONNECT_ERROR after
    // the timeout; the session may try again.
    let (mut ws, _) = ws_open(c.addr(0)).await;
    let started = Instant::now();
    assert_eq!(
        ws_join(&mut ws, r#"{"mode":"slow"}"#).await,
        Err(connect_error("upstream timeout"))
    );
    assert!(within(started.elapsed()), "{:?}", started.elapsed());
    ws_join(&mut ws, r#"{"user":"carol"}"#)
        .await
        .expect("carol connects");

    // An event the backend does not answer in time: its ack is an error.
    // The event queued behind it on the same socket keeps its own
    // deadline, counted from its arrival: both answer by then.
    let started = Instant::now();
    ws_send(&mut ws, "421[\"slow\"]").await;
    ws_send(&mut ws, "422[\"chat\"]").await;
    assert_eq!(
        ws_expect(&mut ws, "431").await,
        r#"431[{"error":"upstream timeout"}]"#
    );
    assert!(within(started.elapsed()), "{:?}", started.elapsed());
    // The second started once the first gave up, with what was left of
    // its own deadline: answered just in time, or timed out.
    let second = ws_expect(&mut ws, "432").await;
    assert!(
        second == r#"432[{"error":"upstream timeout"}]"# || second.contains(r#""event":"chat""#),
        "{second}"
    );
    assert!(within(started.elapsed()), "{:?}", started.elapsed());

    // The socket is not stuck: its next event is answered.
    ws_send(&mut ws, "423[\"chat\"]").await;
    let ack = ws_expect(&mut ws, "433").await;
    assert_eq!(json_after(&ack, "433")[0]["user"], "carol", "{ack}");

    // The calls, timed by outcome.
    let metrics = get(c.addr(0), "/metrics").await.text();
    let count = |labels: &str| {
        common::sample(
            &metrics,
            &format!("ringway_upstream_duration_seconds_count{{{labels}"),
        )
        .unwrap_or(0.0)
    };
    assert!(
        count("call=\"OnConnect\",outcome=\"timeout\"") >= 1.0,
        "{metrics}"
    );
    assert!(
        count("call=\"OnConnect\",outcome=\"ok\"") >= 1.0,
        "{metrics}"
    );
    assert!(
        count("call=\"OnEvent\",outcome=\"timeout\"") >= 1.0,
        "{metrics}"
    );
    assert!(count("call=\"OnEvent\",outcome=\"ok\"") >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_are_bounded_per_node() {
    let (backend, url, _stop) = start_backend(0).await;
    let c = Cluster::start(3, &["--upstream", &url, "--upstream-max-in-flight", "2"]).await;
    let (n2, n3) = (c.addr(1), c.addr(2));

    // Two calls held on node 2 take its whole budget: its next calls fail
    // at once, other nodes are not affected.
    let (mut a, _) = ws_client(n2, r#"{"user":"a"}"#).await;
    let (mut b, _) = ws_client(n2, r#"{"user":"b"}"#).await;
    let (mut d, _) = ws_client(n2, r#"{"user":"d"}"#).await;
    ws_send(&mut a, r#"421["hold"]"#).await;
    ws_send(&mut b, r#"421["hold"]"#).await;
    backend
        .wait_until("two held calls", |s| s.holding == 2)
        .await;
    let started = Instant::now();
    ws_send(&mut d, r#"429["chat"]"#).await;
    assert_eq!(
        ws_expect(&mut d, "439").await,
        r#"439[{"error":"upstream busy"}]"#
    );
    let (mut e, _) = ws_open(n2).await;
    assert_eq!(
        ws_join(&mut e, r#"{"user":"e"}"#).await,
        Err(connect_error("upstream busy"))
    );
    assert!(started.elapsed() < Duration::from_secs(2), "fail fast");
    ws_client(n3, r#"{"user":"f"}"#).await;

    // Released: the held calls answer, and node 2 takes calls again.
    backend.release.send_replace(true);
    for ws in [&mut a, &mut b] {
        let ack = ws_expect(ws, "431").await;
        assert_eq!(json_after(&ack, "431")[0]["event"], "hold", "{ack}");
    }
    ws_join(&mut e, r#"{"user":"e"}"#)
        .await
        .expect("e connects");
    ws_send(&mut d, r#"4210["chat"]"#).await;
    let ack = ws_expect(&mut d, "4310").await;
    assert_eq!(json_after(&ack, "4310")[0]["user"], "d", "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_gives_upstream_unavailable_at_once() {
    let port = free_port();
    let c = Cluster::start(3, &["--upstream", &format!("http://127.0.0.1:{port}")]).await;
    let (n1, n2) = (c.addr(0), c.addr(1));

    let (mut ws, _) = ws_open(n2).await;
    let started = Instant::now();
    assert_eq!(
        ws_join(&mut ws, r#"{"user":"x"}"#).await,
        Err(connect_error("upstream unavailable"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let metrics = get(n2, "/metrics").await.text();
    assert!(
        common::sample(
            &metrics,
            "ringway_upstream_duration_seconds_count{call=\"OnConnect\",outcome=\"unavailable\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );

    // The backend comes up: CONNECTs reach it.
    let (backend, _, stop) = start_backend(port).await;
    let joining = tokio::sync::Mutex::new(&mut ws);
    let id = ringway_testkit::eventually(Duration::from_secs(10), "a CONNECT taken", || async {
        let mut ws = joining.lock().await;
        ws_join(&mut ws, r#"{"user":"x"}"#).await.ok()
    })
    .await;
    ws_send(&mut ws, r#"421["chat"]"#).await;
    let ack = ws_expect(&mut ws, "431").await;
    assert_eq!(json_after(&ack, "431")[0]["user"], "x");

    // It goes away again: events that want an ack get the error, the
    // disconnect is not waited for, nothing hangs.
    stop.stop().await;
    let started = Instant::now();
    ws_send(&mut ws, r#"422["chat"]"#).await;
    assert_eq!(
        ws_expect(&mut ws, "432").await,
        r#"432[{"error":"upstream unavailable"}]"#
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    ws_send(&mut ws, "41").await;
    let (mut other, _) = ws_open(n1).await;
    assert_eq!(
        ws_join(&mut other, "{}").await,
        Err(connect_error("upstream unavailable"))
    );
    assert!(
        backend.seen(|s| s.disconnects.iter().all(|d| d.socket_id != id)),
        "the backend was down"
    );
}

// ---------------------------------------------------------------------------
// JWT.

const SECRET: &str = "test-secret-of-the-cluster";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> u64 {
    get_current_timestamp()
}

fn hs256(claims: Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

fn rs256(claims: Value) -> String {
    let pem = std::fs::read(fixture("jwt-rs256-private.pem")).expect("private key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("RSA key");
    encode(&Header::new(Algorithm::RS256), &claims, &key).expect("encode")
}

fn auth(token: &str) -> String {
    json!({ "token": token }).to_string()
}

/// The token with its signature's first character changed.
fn tampered(token: &str) -> String {
    let (head, signature) = token.rsplit_once('.').expect("a JWT");
    let mut chars: Vec<char> = signature.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    format!("{head}.{}", chars.into_iter().collect::<String>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_decides_connects_and_its_rooms_hold_across_three_nodes() {
    let c = Cluster::start(3, &["--jwt-hs256-secret", SECRET, "--jwt-audience", "chat"]).await;
    let (n1, n2, n3) = (c.addr(0), c.addr(1), c.addr(2));
    let secret = SECRET.as_bytes();

    // Alice's token puts her in "team": a broadcast to it from another
    // node reaches her (the echo application handles events).
    let alice = hs256(
        json!({"sub": "alice", "aud": "chat", "exp": now() + 300, "rooms": ["team"]}),
        secret,
    );
    let (mut a, _) = ws_client(n1, &auth(&alice)).await;
    let bob = hs256(
        json!({"sub": "bob", "aud": "chat", "exp": now() + 300}),
        secret,
    );
    let (mut b, _) = ws_client(n2, &auth(&bob)).await;
    ws_send(
        &mut b,
        r#"421["broadcast",{"room":"team","msg":"hi team"}]"#,
    )
    .await;
    ws_expect(&mut b, "431[").await;
    assert_eq!(
        ws_expect(&mut a, "42[\"message\"").await,
        r#"42["message","hi team"]"#
    );

    // Every refusal has its message; the session lives on and may retry.
    let claims = |extra: Value| {
        let mut c = json!({"sub": "carol", "aud": "chat", "exp": now() + 300});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    };
    let (mut ws, _) = ws_open(n3).await;
    let cases = [
        ("{}".to_owned(), "missing token"),
        (auth(""), "missing token"),
        (auth("garbage"), "malformed token"),
        (
            auth(&hs256(claims(json!({"exp": now() - 120})), secret)),
            "token expired",
        ),
        (
            auth(&hs256(claims(json!({"nbf": now() + 120})), secret)),
            "token not yet valid",
        ),
        (
            auth(&hs256(claims(json!({})), b"another secret")),
            "invalid signature",
        ),
        (
            auth(&tampered(&hs256(claims(json!({})), secret))),
            "invalid signature",
        ),
        (
            auth(&hs256(claims(json!({"aud": "other"})), secret)),
            "invalid audience",
        ),
        (
            auth(&hs256(json!({"sub": "carol", "exp": now() + 300}), secret)),
            "missing claim: aud",
        ),
        (auth(&rs256(claims(json!({})))), "invalid algorithm"),
    ];
    for (auth, message) in cases {
        assert_eq!(
            ws_join(&mut ws, &auth).await,
            Err(connect_error(message)),
            "{auth}"
        );
    }
    ws_join(&mut ws, &auth(&hs256(claims(json!({})), secret)))
        .await
        .expect("a good token after bad ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rs256_with_a_public_key_file() {
    let key = fixture("jwt-rs256-public.pem");
    let gw = Gateway::start(&[
        "--jwt-rs256-public-key",
        key.to_str().expect("path"),
        "--jwt-issuer",
        "auth.test",
    ]);
    let claims = json!({"sub": "dave", "iss": "auth.test", "exp": now() + 300, "rooms": ["ops"]});
    let good = rs256(claims.clone());
    let (mut d, _) = ws_client(&gw.addr, &auth(&good)).await;
    let (mut other, _) = ws_client(
        &gw.addr,
        &auth(&rs256(
            json!({"sub": "erin", "iss": "auth.test", "exp": now() + 300}),
        )),
    )
    .await;
    ws_send(
        &mut other,
        r#"421["broadcast",{"room":"ops","msg":"page"}]"#,
    )
    .await;
    assert_eq!(
        ws_expect(&mut d, "42[\"message\"").await,
        r#"42["message","page"]"#
    );

    // The public key is not an HMAC secret: a token signed with it as one
    // (the algorithm-confusion attack) is refused.
    let pem = std::fs::read(&key).expect("public key");
    let (mut ws, _) = ws_open(&gw.addr).await;
    let cases = [
        (auth(&hs256(claims.clone(), &pem)), "invalid algorithm"),
        (auth(&tampered(&good)), "invalid signature"),
        (
            auth(&rs256(
                json!({"sub": "dave", "iss": "elsewhere", "exp": now() + 300}),
            )),
            "invalid issuer",
        ),
        (
            auth(&rs256(
                json!({"sub": "dave", "iss": "auth.test", "exp": now() - 120}),
            )),
            "token expired",
        ),
    ];
    for (auth, message) in cases {
        assert_eq!(
            ws_join(&mut ws, &auth).await,
            Err(connect_error(message)),
            "{auth}"
        );
    }
}

// ---------------------------------------------------------------------------
// Configuration.

fn check(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-gateway"))
        .args(args)
        .arg("--check-config")
        .envs(env.iter().copied())
        .output()
        .expect("run ringway-gateway");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn upstream_and_jwt_flags_are_checked() {
    let public = fixture("jwt-rs256-public.pem");
    let public = public.to_str().expect("path");
    let private = fixture("jwt-rs256-private.pem");
    let private = private.to_str().expect("path");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    for (args, env) in [
        (
            &[
                "--upstream",
                "http://127.0.0.1:9",
                "--upstream-timeout",
                "100",
            ][..],
            &[][..],
        ),
        (&[], &[("RINGWAY_UPSTREAM", "http://backend:9000")]),
        (
            &["--jwt-rs256-public-key", public, "--jwt-audience", "a,b"],
            &[],
        ),
        (&[], &[("RINGWAY_JWT_HS256_SECRET", "sesame")]),
    ] {
        let (code, out) = check(args, env);
        assert_eq!(code, 0, "{args:?} {env:?}: {out}");
        assert!(!out.contains("sesame"), "the secret is printed: {out}");
    }

    for (args, says) in [
        (
            &[
                "--upstream",
                "http://127.0.0.1:9",
                "--jwt-hs256-secret",
                "s",
            ][..],
            "cannot be combined",
        ),
        (&["--upstream", "ftp://backend:9"], "http://"),
        (&["--upstream", "backend:9000"], "--upstream"),
        (
            &["--upstream", "http://b:9", "--upstream-timeout", "0"],
            "--upstream-timeout",
        ),
        (
            &["--upstream", "http://b:9", "--upstream-max-in-flight", "0"],
            "--upstream-max-in-flight",
        ),
        (
            &["--jwt-hs256-secret", "s", "--jwt-rs256-public-key", public],
            "one JWT key",
        ),
        (&["--jwt-audience", "chat"], "--jwt-audience"),
        (&["--jwt-hs256-secret", ""], "empty"),
        (
            &["--jwt-rs256-public-key", "/nonexistent.pem"],
            "cannot read",
        ),
        (&["--jwt-rs256-public-key", private], "holds a private key"),
        (
            &["--jwt-rs256-public-key", manifest],
            "not an RSA public key",
        ),
    ] {
        let (code, out) = check(args, &[]);
        assert_eq!(code, 2, "{args:?} accepted: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
}
