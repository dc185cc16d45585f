//! Test harness: starts real `ringway-gateway` processes on free ports and
//! talks to them over real sockets (raw HTTP/1.1 and WebSocket).

#![allow(dead_code)]

pub mod cluster;
pub mod nginx;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use ringway_testkit::cluster::GatewayProcess;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The Python of the test virtualenv (the pinned python-socketio,
/// grpcio-tools): `RINGWAY_TEST_PYTHON`, or the virtualenv
/// `scripts/test.sh` makes at the repository root.
#[allow(dead_code)]
pub fn python() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("RINGWAY_TEST_PYTHON") {
        return std::path::PathBuf::from(p);
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/python");
    assert!(
        venv.exists(),
        "no test virtualenv at {}: run scripts/test.sh (it installs the Python clients)",
        venv.display()
    );
    venv
}

/// The environment variable of `--recovery-window` (a flag overrides it).
pub const RECOVERY_ENV: &str = "RINGWAY_RECOVERY_WINDOW";

/// The sum of the Prometheus series whose line starts with `prefix` (a
/// metric name, optionally with the first labels: `name{a="b"`).
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Waits (20 s at most) until the gateway at `addr` reports, on
/// `/metrics`, a sum of the series `prefix` (as [`sample`]) that `ok`
/// accepts: the tests wait on what the server says, not on a delay.
pub async fn wait_sample(addr: &str, prefix: &str, ok: impl Fn(f64) -> bool) {
    let what = format!("{prefix} on {addr}");
    ringway_testkit::eventually(Duration::from_secs(20), &what, || async {
        let metrics = get(addr, "/metrics").await.text();
        sample(&metrics, prefix).is_some_and(&ok)
    })
    .await;
}

/// Waits until the gateway at `addr` holds `n` or more polling GETs
/// pending (a long-poll, forwarded or not, has reached its owner).
pub async fn wait_held_polls(addr: &str, n: u64) {
    wait_sample(addr, "ringway_requests_held{kind=\"poll\"", |v| {
        v >= n as f64
    })
    .await;
}

/// Waits until the GET running in `task` has reached the gateway at
/// `addr`: held there as a long-poll, or already answered (something was
/// queued for it).
pub async fn wait_poll_reached<T>(addr: &str, task: &tokio::task::JoinHandle<T>) {
    let what = format!("a GET held on {addr}, or answered");
    ringway_testkit::eventually(Duration::from_secs(20), &what, || async {
        if task.is_finished() {
            return true;
        }
        let metrics = get(addr, "/metrics").await.text();
        sample(&metrics, "ringway_requests_held{kind=\"poll\"").is_some_and(|v| v >= 1.0)
    })
    .await;
}

/// The lines a process logged so far.
#[derive(Clone, Default)]
pub struct Log(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Log {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

/// A gateway process, killed when dropped (the test kit's, with the
/// listeners it reported: `addr`, `grpc`, `api`).
pub struct Gateway(ringway_testkit::cluster::GatewayProcess);

impl std::ops::Deref for Gateway {
    type Target = ringway_testkit::cluster::GatewayProcess;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Gateway {
    /// Starts the gateway with the echo application on a free port.
    pub fn start(extra: &[&str]) -> Gateway {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Gateway::start_raw(&args)
    }

    /// The options of the official protocol test suites.
    pub fn start_suite() -> Gateway {
        Gateway::start(&[
            "--ping-interval",
            "300",
            "--ping-timeout",
            "200",
            "--namespace",
            "/",
            "--namespace",
            "/custom",
        ])
    }

    /// Starts the gateway with exactly these flags, but for connection
    /// state recovery: off unless the flags turn it on
    /// (`--recovery-window`). Tests of other features assert exact event
    /// arguments and same-node ordering of emits and acks, which the
    /// recovery offsets and the log change (see tests/recovery.rs).
    pub fn start_raw(args: &[&str]) -> Gateway {
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let mut command = GatewayProcess::command();
        command
            .args(args)
            .env(RECOVERY_ENV, "0")
            .env("RUST_LOG", rust_log)
            .stderr(Stdio::inherit());
        Gateway(GatewayProcess::spawn(command))
    }

    /// Starts the gateway with exactly these flags and `RUST_LOG`, its log
    /// (stderr) read line by line into the returned [`Log`].
    pub fn start_logged(args: &[&str], rust_log: &str) -> (Gateway, Log) {
        let mut command = GatewayProcess::command();
        command
            .args(args)
            .env(RECOVERY_ENV, "0")
            .env("RUST_LOG", rust_log)
            .stderr(Stdio::piped());
        let mut gateway = GatewayProcess::spawn(command);
        let stderr = gateway.take_stderr().expect("stderr");
        let log = Log::default();
        let lines = log.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        (Gateway(gateway), log)
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }
}

/// A raw HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(
    addr: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = sender.send_request(req).await.expect("send request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: &str, pq: &str) -> Resp {
    request(addr, "GET", pq, &[], Bytes::new()).await
}

pub async fn post(addr: &str, pq: &str, body: impl Into<Bytes>) -> Resp {
    request(
        addr,
        "POST",
        pq,
        &[("content-type", "text/plain;charset=UTF-8")],
        body,
    )
    .await
}

/// A polling session driven by hand.
pub struct Polling {
    pub addr: String,
    pub path: String,
    pub sid: String,
    pub open: serde_json::Value,
}

impl Polling {
    pub async fn open(addr: &str, path: &str) -> Polling {
        let resp = get(addr, &format!("{path}?EIO=4&transport=polling")).await;
        assert_eq!(resp.status, 200, "handshake: {}", resp.text());
        let text = resp.text();
        let json = text.strip_prefix('0').expect("open packet");
        let open: serde_json::Value = serde_json::from_str(json).expect("open json");
        let sid = open["sid"].as_str().expect("sid").to_owned();
        Polling {
            addr: addr.to_owned(),
            path: path.to_owned(),
            sid,
            open,
        }
    }

    /// The same session, with requests sent to another node.
    pub fn on(&self, addr: &str) -> Polling {
        Polling {
            addr: addr.to_owned(),
            path: self.path.clone(),
            sid: self.sid.clone(),
            open: self.open.clone(),
        }
    }

    pub fn query(&self) -> String {
        format!("{}?EIO=4&transport=polling&sid={}", self.path, self.sid)
    }

    pub async fn get(&self) -> Resp {
        get(&self.addr, &self.query()).await
    }

    /// GET and split the payload into packets.
    pub async fn packets(&self) -> Vec<String> {
        let resp = self.get().await;
        assert_eq!(resp.status, 200, "poll: {}", resp.text());
        resp.text().split('\u{1e}').map(str::to_owned).collect()
    }

    pub async fn post(&self, body: &str) -> Resp {
        post(&self.addr, &self.query(), body.to_owned()).await
    }

    pub async fn send(&self, body: &str) {
        let resp = self.post(body).await;
        assert_eq!(resp.status, 200, "post {body:?}: {}", resp.text());
        assert_eq!(resp.text(), "ok");
    }

    /// Upgrades the session to a WebSocket on this node (probe, `5`).
    pub async fn upgrade(&self) -> Ws {
        let ws_path = format!("{}?EIO=4&transport=websocket&sid={}", self.path, self.sid);
        let mut ws = ws_connect(&self.addr, &ws_path).await;
        ws_send(&mut ws, "2probe").await;
        assert_eq!(ws_text(&mut ws).await.as_deref(), Some("3probe"));
        ws_send(&mut ws, "5").await;
        ws
    }

    /// Polls until a packet that is not a ping arrives (answering pings).
    pub async fn next_non_ping(&self) -> Vec<String> {
        loop {
            let packets = self.packets().await;
            let rest: Vec<String> = packets.iter().filter(|p| *p != "2").cloned().collect();
            if packets.iter().any(|p| p == "2") {
                self.send("3").await;
            }
            if !rest.is_empty() {
                return rest;
            }
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn ws_connect(addr: &str, path_and_query: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path_and_query}"))
        .await
        .expect("websocket connect");
    ws
}

/// Next text frame, answering server pings on the way. None on close.
pub async fn ws_text(ws: &mut Ws) -> Option<String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("websocket read timed out")?;
        match msg.ok()? {
            Message::Text(t) if t.as_str() == "2" => {
                ws.send(Message::text("3")).await.ok()?;
            }
            Message::Text(t) => return Some(t.as_str().to_owned()),
            Message::Close(_) => return None,
            Message::Binary(b) => panic!("unexpected binary frame {b:?}"),
            _ => {}
        }
    }
}

/// Next frame of any kind (text or binary), answering pings.
pub async fn ws_frame(ws: &mut Ws) -> Option<Message> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("websocket read timed out")?;
        match msg.ok()? {
            Message::Text(t) if t.as_str() == "2" => {
                ws.send(Message::text("3")).await.ok()?;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => return None,
            other => return Some(other),
        }
    }
}

pub async fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned()))
        .await
        .expect("ws send");
}

/// Opens a direct WebSocket session on the Socket.IO path and returns it
/// after the open packet.
pub async fn ws_open(addr: &str) -> (Ws, serde_json::Value) {
    let mut ws = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
    let open = ws_text(&mut ws).await.expect("open packet");
    let json: serde_json::Value =
        serde_json::from_str(open.strip_prefix('0').expect("open type")).expect("open json");
    (ws, json)
}

/// CONNECTs `/` on a fresh WebSocket session with this payload; returns
/// the session and the CONNECT answer's JSON.
pub async fn connect_ws(addr: &str, auth: &str) -> (Ws, Value) {
    let (mut ws, _) = ws_open(addr).await;
    ws_send(&mut ws, &format!("40{auth}")).await;
    let answer = loop {
        let text = ws_text(&mut ws).await.expect("CONNECT answer");
        if let Some(json) = text.strip_prefix("40") {
            break serde_json::from_str::<Value>(json).expect("answer JSON");
        }
        assert!(!text.starts_with("44"), "CONNECT refused: {text}");
    };
    (ws, answer)
}

/// The next `42` event of a session, as JSON (pings answered).
pub async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let text = ws_text(ws).await.expect("an event");
        if let Some(json) = text.strip_prefix("42") {
            return serde_json::from_str(json).expect("event JSON");
        }
    }
}

/// Reads WebSocket text frames until one starts with `prefix`.
pub async fn ws_expect(ws: &mut Ws, prefix: &str) -> String {
    loop {
        let text = ws_text(ws).await.expect("websocket closed");
        if text.starts_with(prefix) {
            return text;
        }
    }
}

/// A WebSocket client connected to the main namespace (the echo
/// application's `auth` event read): the session and its engine sid.
pub async fn ws_connect_main(addr: &str) -> (Ws, String) {
    let (mut ws, open) = ws_open(addr).await;
    let sid = open["sid"].as_str().expect("sid").to_owned();
    ws_send(&mut ws, "40").await;
    ws_expect(&mut ws, "40{\"sid\"").await;
    ws_expect(&mut ws, "42[\"auth\"").await;
    (ws, sid)
}

/// An HS256 token for `user` (`sub`), valid for an hour.
pub fn jwt_for(secret: &str, user: &str) -> String {
    use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
    let claims = serde_json::json!({ "sub": user, "exp": get_current_timestamp() + 3600 });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a token")
}

/// A WebSocket client of `user` on a gateway with `--jwt-hs256-secret
/// secret` (the token in the CONNECT auth; the echo application answers
/// with its `auth` event): the socket and the session id.
pub async fn connect_as(addr: &str, secret: &str, user: &str) -> (Ws, String) {
    let (mut ws, open) = ws_open(addr).await;
    let sid = open["sid"].as_str().expect("sid").to_owned();
    ws_send(
        &mut ws,
        &format!("40{{\"token\":\"{}\"}}", jwt_for(secret, user)),
    )
    .await;
    ws_expect(&mut ws, "40{\"sid\"").await;
    ws_expect(&mut ws, "42[\"auth\"").await;
    (ws, sid)
}
