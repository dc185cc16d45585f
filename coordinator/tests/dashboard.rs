//! The coordinator's HTTP port, end to end: a real `redis-server`, the real
//! `ringway-coordinator` binary and, for live session counts, real
//! `ringway-gateway` processes (build them first: `cargo build -p
//! ringway-gateway`; `scripts/test.sh` builds the whole workspace). The
//! HTTP client is a few lines over `TcpStream`, so what is checked is what
//! goes over the wire.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ringway_coordinator::proto::LeaveRequest;
use ringway_ring::{Ring, DEFAULT_VNODES as VNODES};
use ringway_testkit::cluster::GatewayProcess;
use serde_json::Value;

// ---------------------------------------------------------------- HTTP ---

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Reads a status line and headers.
fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').expect("a header");
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    (status, headers)
}

/// Reads one chunk of a chunked body; None at the last (empty) chunk.
fn read_chunk(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
    let mut chunk = vec![0; size];
    reader.read_exact(&mut chunk)?;
    let mut crlf = [0; 2];
    reader.read_exact(&mut crlf)?;
    Ok((size > 0).then_some(chunk))
}

/// One HTTP/1.1 request (`Connection: close`), the whole answer.
fn request(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body).expect("write");
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    if method == "HEAD" {
        return reply;
    }
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        while let Some(chunk) = read_chunk(&mut reader).expect("a chunk") {
            reply.body.extend_from_slice(&chunk);
        }
    } else {
        reader.read_to_end(&mut reply.body).expect("body");
    }
    reply
}

fn get(addr: SocketAddr, target: &str) -> Reply {
    request(addr, "GET", target, b"")
}

/// `/api/state`.
fn state(http: SocketAddr) -> Value {
    let reply = get(http, "/api/state");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

/// Polls `/api/state` until `pred` holds; panics with the last state.
fn wait_state(http: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let failed =
        ringway_testkit::Describe(|| format!("a state with {what}; last: {:#}", state(http)));
    ringway_testkit::eventually_blocking(WAIT, failed, || {
        let s = state(http);
        pred(&s).then_some(s)
    })
}

/// The value of metric `name` whose labels include `labels`, in
/// Prometheus text (the first such series).
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
}

fn member_ids(state: &Value) -> Vec<String> {
    state["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["node_id"].as_str().expect("node_id").to_owned())
        .collect()
}

fn member<'a>(state: &'a Value, node: &str) -> &'a Value {
    state["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["node_id"] == node)
        .unwrap_or_else(|| panic!("no member {node} in {state:#}"))
}

fn has_event(state: &Value, kind: &str, node: &str) -> bool {
    state["events"]
        .as_array()
        .expect("events")
        .iter()
        .any(|e| e["kind"] == kind && e["node_id"] == node)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// A `/events` stream, decoded as it comes.
struct EventStream {
    reader: BufReader<TcpStream>,
    pending: String,
}

impl EventStream {
    fn open(addr: SocketAddr) -> EventStream {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let head =
            format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(head.as_bytes()).expect("write");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        assert_eq!(status, 200);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
        assert_eq!(header("transfer-encoding").as_deref(), Some("chunked"));
        EventStream {
            reader,
            pending: String::new(),
        }
    }

    /// The next `state` event's data; None when the stream ends.
    fn next_state(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let event: String = self.pending.drain(..end + 2).collect();
                let mut name = None;
                let mut data = None;
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_owned());
                    }
                }
                if let (Some("state"), Some(data)) = (name.as_deref(), data) {
                    return Some(serde_json::from_str(&data).expect("state JSON"));
                }
                continue;
            }
            let chunk = read_chunk(&mut self.reader).ok()??;
            self.pending
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }
}

// ------------------------------------------------------------ gateways ---

/// A clustered gateway (the test kit's process) and its HTTP address.
struct Gateway {
    proc: GatewayProcess,
    http: SocketAddr,
}

impl Gateway {
    fn start(node: &str, coordinator: SocketAddr, redis_url: &str) -> Gateway {
        let mut command = GatewayProcess::command();
        command
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .args(["--node-id", node, "--redis-url", redis_url])
            .args(["--coordinator", &coordinator.to_string()])
            .args(["--cluster-secret-file", common::secret_file()])
            // Echoes answered in the same poll: no recovery log between.
            .env("RINGWAY_RECOVERY_WINDOW", "0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        let proc = GatewayProcess::spawn(command);
        let http = proc.addr.parse().expect("an address");
        Gateway { proc, http }
    }
}

// --------------------------------------------------------------- tests ---

/// Three gateways: members, epoch, ring shares, sessions per transport
/// and message counts from the heartbeats, then a leave and a lapse in the
/// events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_follows_real_gateways() {
    let t0 = unix_ms();
    let redis = RedisServer::start();
    let mut coord = Coordinator::start(&redis.url(), FAST);
    let http = coord.http_addr();
    let mut gateways: Vec<Gateway> = (1..=3)
        .map(|i| Gateway::start(&format!("n{i}"), coord.addr(), &redis.url()))
        .collect();

    let s = wait_state(http, "n1..n3 heartbeating", |s| {
        member_ids(s) == ["n1", "n2", "n3"]
            && s["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["last_heartbeat_ms_ago"].is_u64())
    });
    assert_eq!(s["version"], 1);
    assert_eq!(s["coordinator"]["role"], "acting");
    assert_eq!(s["coordinator"]["ready"], true);
    assert_eq!(
        s["coordinator"]["grpc_addr"].as_str(),
        Some(coord.addr().to_string().as_str())
    );
    assert_eq!(s["coordinator"]["vnodes"], 256);
    assert_eq!(s["totals"]["members"], 3);

    // The epoch is the view's: what a Watch stream gets first.
    let mut client = coord.client().await;
    let mut watcher = Watcher::open(&mut client, "dashboard-test").await;
    let view = watcher.wait_for(WAIT, "the current view", |_| true).await;
    assert_eq!(s["epoch"].as_u64(), Some(view.epoch));
    for m in &view.members {
        let shown = member(&s, &m.node_id);
        assert_eq!(shown["grpc_addr"].as_str(), Some(m.grpc_addr.as_str()));
        assert_eq!(shown["http_addr"].as_str(), Some(m.http_addr.as_str()));
        assert_eq!(shown["incarnation"], m.incarnation.to_string());
        assert_eq!(shown["joined_epoch"].as_u64(), Some(m.joined_epoch));
        assert_eq!(shown["state"], "active");
    }
    let gateway_addrs: HashSet<String> = gateways.iter().map(|g| g.http.to_string()).collect();
    let shown_addrs: HashSet<String> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["http_addr"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown_addrs, gateway_addrs);

    // Ring shares: the gateways' ring, summing to 1.
    let expected = Ring::new(["n1", "n2", "n3"], VNODES).shares();
    let mut sum = 0.0;
    for (node, share) in &expected {
        let shown = member(&s, node)["ring_share"].as_f64().expect("a share");
        assert!((shown - share).abs() < 1e-12, "{node}: {shown} vs {share}");
        assert!((0.2..0.5).contains(&shown), "{node}: {shown}");
        sum += shown;
    }
    assert!((sum - 1.0).abs() < 1e-9, "shares sum to {sum}");

    // A polling session on n1 (the node that opens a session owns it).
    let n1 = gateways[0].http;
    let open = get(n1, "/socket.io/?EIO=4&transport=polling");
    assert_eq!(open.status, 200, "{}", open.text());
    let body = open.text();
    let handshake: Value =
        serde_json::from_str(body.strip_prefix('0').expect("an open packet")).expect("JSON");
    let sid = handshake["sid"].as_str().expect("sid").to_owned();
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    // Connect to "/", then emit an event the echo application answers.
    assert_eq!(request(n1, "POST", &target, b"40").status, 200);
    assert_eq!(get(n1, &target).status, 200);
    assert_eq!(
        request(n1, "POST", &target, br#"42["message","hi"]"#).status,
        200
    );
    assert!(get(n1, &target).text().contains("message-back"));

    let s = wait_state(http, "n1's polling session and messages", |s| {
        let m = member(s, "n1");
        m["sessions"] == 1
            && m["polling_sessions"] == 1
            && m["websocket_sessions"] == 0
            && m["messages_in"].as_u64() >= Some(2)
            && m["messages_out"].as_u64() >= Some(2)
    });
    assert_eq!(s["totals"]["sessions"], 1);
    assert_eq!(s["totals"]["polling_sessions"], 1);
    assert_eq!(s["totals"]["websocket_sessions"], 0);
    for other in ["n2", "n3"] {
        assert_eq!(member(&s, other)["sessions"], 0);
        assert_eq!(member(&s, other)["polling_sessions"], 0);
    }
    // Rates come from two heartbeats: numbers, never negative.
    let s = wait_state(http, "message rates", |s| {
        member(s, "n1")["messages_in_per_sec"].is_f64()
    });
    for m in s["members"].as_array().unwrap() {
        for key in ["messages_in_per_sec", "messages_out_per_sec"] {
            if let Some(rate) = m[key].as_f64() {
                assert!(rate >= 0.0, "{key} = {rate}");
            }
        }
    }

    // n3 drains (SIGTERM: Leave at once), n2 dies (SIGKILL: lease lapses).
    gateways[2].proc.terminate(Duration::ZERO);
    let s = wait_state(http, "n3's leave", |s| {
        member_ids(s) == ["n1", "n2"] && has_event(s, "leave", "n3")
    });
    assert!(!has_event(&s, "lapse", "n3"), "n3 left, it did not lapse");
    gateways[1].proc.kill();
    let s = wait_state(http, "n2's lapse", |s| {
        member_ids(s) == ["n1"] && has_event(s, "lapse", "n2")
    });
    assert_eq!(member(&s, "n1")["ring_share"], 1.0);
    let metrics = get(http, "/metrics").text();
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&metrics, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}: {metrics}"))
    };
    assert_eq!(
        value("ringway_coordinator_member_ring_share", &[("node", "n1")]),
        1.0
    );
    assert_eq!(
        value("ringway_coordinator_members", &[("state", "active")]),
        1.0
    );
    assert_eq!(
        value(
            "ringway_coordinator_member_sessions",
            &[("node", "n1"), ("transport", "polling")]
        ),
        1.0
    );
    assert_eq!(
        value("ringway_coordinator_events_total", &[("kind", "join")]),
        3.0
    );
    assert_eq!(
        value("ringway_coordinator_events_total", &[("kind", "leave")]),
        1.0
    );
    assert_eq!(
        value("ringway_coordinator_events_total", &[("kind", "lapse")]),
        1.0
    );
    assert!(
        value(
            "ringway_coordinator_rpc_duration_seconds_count",
            &[("method", "heartbeat"), ("outcome", "ok")]
        ) >= 3.0
    );
    assert!(
        value(
            "ringway_coordinator_store_duration_seconds_count",
            &[("outcome", "ok")]
        ) >= 1.0
    );

    // The events, newest first: start, three joins, the leave, the lapse.
    let events = s["events"].as_array().expect("events");
    let kinds: Vec<(String, String)> = events
        .iter()
        .rev()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["node_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(kinds.first(), Some(&("start".to_owned(), String::new())));
    for node in ["n1", "n2", "n3"] {
        assert!(has_event(&s, "join", node), "no join of {node}: {kinds:?}");
    }
    assert_eq!(
        &kinds[kinds.len() - 2..],
        [
            ("leave".to_owned(), "n3".to_owned()),
            ("lapse".to_owned(), "n2".to_owned())
        ]
    );
    let now = unix_ms();
    let mut last_id = u64::MAX;
    let mut last_epoch = u64::MAX;
    for e in events {
        let id = e["id"].as_u64().expect("id");
        let epoch = e["epoch"].as_u64().expect("epoch");
        let at = e["at_ms"].as_u64().expect("at_ms");
        assert!(
            id < last_id && epoch <= last_epoch,
            "newest first: {events:#?}"
        );
        assert!(
            at + 1000 >= t0 && at <= now + 1000,
            "timestamp {at} outside the test"
        );
        last_id = id;
        last_epoch = epoch;
    }
    assert_eq!(events[0]["epoch"], s["epoch"]);
    drop(gateways);
}

/// The page, its assets (nothing from elsewhere), health, metrics, and the
/// event stream: the state at once, every second, on every change, and
/// its end when the coordinator stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_health_and_event_stream() {
    let redis = RedisServer::start();
    let mut coord = Coordinator::start(&redis.url(), RELAXED);
    let http = coord.http_addr();

    let page = get(http, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("http"),
        "the CSP allows only this origin: {csp}"
    );
    let html = page.text();
    assert!(html.contains("<title>Ringway cluster</title>"));
    // Every URL the page names is relative to this coordinator.
    let mut named = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for piece in html.split(attr).skip(1) {
            named.push(piece.split('"').next().unwrap_or("").to_owned());
        }
    }
    named.sort();
    assert_eq!(
        named,
        ["api/state", "app.css", "app.js", "metrics"],
        "URLs named by the page"
    );
    for (path, content_type) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let reply = get(http, path);
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            reply
                .header("content-type")
                .unwrap_or("")
                .starts_with(content_type),
            "{path}: {:?}",
            reply.header("content-type")
        );
        let body = reply.text();
        assert!(body.len() > 500, "{path} is too short");
        for external in [
            "http://",
            "https://",
            "src=\"//",
            "href=\"//",
            "url(",
            "@import",
        ] {
            assert!(!body.contains(external), "{path} contains {external:?}");
        }
    }
    let js = get(http, "/app.js").text();
    assert!(js.contains("new EventSource(\"events\")"));
    assert!(js.contains("fetch(\"api/state\""));

    assert_eq!(get(http, "/healthz").text(), "ok\n");
    let ready = get(http, "/readyz");
    assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"));
    assert_eq!(get(http, "/nowhere").status, 404);
    let post = request(http, "POST", "/api/state", b"{}");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = request(http, "HEAD", "/", b"");
    assert_eq!(head.status, 200);

    let s = state(http);
    assert_eq!(s["epoch"], 0);
    assert_eq!(member_ids(&s), Vec::<String>::new());
    assert_eq!(s["events"][0]["kind"], "start");
    assert!(s["events"][0]["node_id"].is_null());
    let metrics = get(http, "/metrics").text();
    assert_eq!(
        sample(&metrics, "ringway_coordinator_acting", &[]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "ringway_coordinator_epoch", &[]),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "ringway_coordinator_members",
            &[("state", "active")]
        ),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "ringway_coordinator_events_total",
            &[("kind", "start")]
        ),
        Some(1.0),
        "{metrics}"
    );

    // The stream: the state at once, then every second.
    let mut stream = tokio::task::spawn_blocking(move || EventStream::open(http))
        .await
        .expect("open");
    let (first, second, stream_back) = tokio::task::spawn_blocking(move || {
        let first = stream.next_state().expect("a first state");
        let second = stream.next_state().expect("a second state");
        (first, second, stream)
    })
    .await
    .expect("two states");
    let mut stream = stream_back;
    assert_eq!(first["coordinator"]["role"], "acting");
    let gap =
        second["generated_at_ms"].as_u64().unwrap() - first["generated_at_ms"].as_u64().unwrap();
    assert!(gap >= 900, "states pushed {gap} ms apart, not every second");

    // A change is pushed at once, not at the next second: right after a
    // state arrives, a node joins; the state showing it follows the
    // previous one by much less than the 1 s period.
    let mut client = coord.client().await;
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let reader = tokio::task::spawn_blocking(move || {
        let mut previous = stream.next_state().expect("a state");
        let _ = arrived_tx.send(());
        loop {
            let s = stream.next_state().expect("a state showing x");
            if member_ids(&s) == ["x"] {
                return (previous, s, stream);
            }
            previous = s;
        }
    });
    arrived.await.expect("a state arrived");
    let joined = client
        .join(join_req("x", 1))
        .await
        .expect("join")
        .into_inner();
    let (previous, with_x, mut stream) = reader.await.expect("reader");
    let gap =
        with_x["generated_at_ms"].as_u64().unwrap() - previous["generated_at_ms"].as_u64().unwrap();
    assert!(
        gap < 900,
        "the join was pushed {gap} ms after the previous state"
    );
    assert_eq!(with_x["events"][0]["kind"], "join");
    assert_eq!(with_x["epoch"].as_u64(), Some(joined.view.unwrap().epoch));

    client
        .leave(LeaveRequest {
            node_id: "x".into(),
            lease_id: joined.lease_id,
        })
        .await
        .expect("leave");
    let stream = tokio::task::spawn_blocking(move || {
        loop {
            let s = stream.next_state().expect("a state after the leave");
            if member_ids(&s).is_empty() {
                assert_eq!(s["events"][0]["kind"], "leave");
                assert_eq!(s["events"][0]["node_id"], "x");
                break;
            }
        }
        stream
    })
    .await
    .expect("the leave is streamed");

    // Stopping ends the stream, and the process exits cleanly.
    coord.terminate();
    let ended = tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        let start = Instant::now();
        while stream.next_state().is_some() {
            assert!(start.elapsed() < WAIT, "the stream does not end");
        }
    });
    ended.await.expect("the stream ends on stop");
    let status = coord.wait_exit(WAIT).expect("the coordinator exits");
    assert!(status.success(), "exit status {status:?}");
}

/// A standby coordinator serves HTTP (alive, not ready, no view) and
/// becomes ready when it takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_alive_but_not_ready_until_it_takes_over() {
    // A long lease: member `a` (no heartbeats) stays through the takeover.
    const TIMING: Timing = Timing {
        ttl: 20_000,
        interval: 200,
    };
    let redis = RedisServer::start();
    let mut acting = Coordinator::start(&redis.url(), TIMING);
    let acting_http = acting.http_addr();
    let mut client = acting.client().await;
    client.join(join_req("a", 7)).await.expect("join");

    let mut standby = Coordinator::spawn(&redis.url(), TIMING, &[]);
    let http = standby.http_addr();
    assert!(
        standby
            .wait_listening(Duration::from_millis(1500))
            .is_none(),
        "a standby does not serve gRPC"
    );
    assert_eq!(get(http, "/healthz").status, 200);
    let ready = get(http, "/readyz");
    assert_eq!((ready.status, ready.text().as_str()), (503, "standby\n"));
    assert_eq!(get(http, "/").status, 200);
    let s = state(http);
    assert_eq!(s["coordinator"]["role"], "standby");
    assert_eq!(s["coordinator"]["ready"], false);
    assert!(s["coordinator"]["grpc_addr"].is_null());
    assert!(s["epoch"].is_null());
    assert_eq!(member_ids(&s), Vec::<String>::new());
    let metrics = get(http, "/metrics").text();
    assert_eq!(
        sample(&metrics, "ringway_coordinator_acting", &[]),
        Some(0.0),
        "{metrics}"
    );
    // No view on a standby: no epoch.
    assert_eq!(sample(&metrics, "ringway_coordinator_epoch", &[]), None);
    assert_eq!(get(acting_http, "/readyz").status, 200);

    // The acting one stops and frees the lock: the standby takes over with
    // the stored view.
    acting.terminate();
    assert!(acting.wait_exit(WAIT).expect("exits").success());
    assert!(
        standby.wait_listening(WAIT).is_some(),
        "the standby takes over; stderr:\n{}",
        standby.stderr()
    );
    let s = wait_state(http, "acting with the stored view", |s| {
        s["coordinator"]["role"] == "acting" && member_ids(s) == ["a"]
    });
    assert_eq!(get(http, "/readyz").status, 200);
    let start = &s["events"][0];
    assert_eq!(start["kind"], "start");
    assert!(
        start["detail"]
            .as_str()
            .unwrap()
            .contains("restored 1 members"),
        "{start}"
    );
    let a = member(&s, "a");
    assert_eq!(a["has_lease"], false);
    assert!(a["last_heartbeat_ms_ago"].is_null());
}

/// A node id with a quote, a backslash and a newline (the coordinator
/// takes any id up to its length limit) stays one escaped label value: the
/// Prometheus text keeps one series per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_node_ids_are_escaped_in_metrics() {
    let redis = RedisServer::start();
    let mut coord = Coordinator::start(&redis.url(), RELAXED);
    let http = coord.http_addr();
    let mut client = coord.client().await;
    let mut odd = join_req("a\"b\\c\nd", 1);
    odd.grpc_addr = "odd.local:7001".into();
    odd.http_addr = "odd.local:3000".into();
    client.join(odd).await.expect("join");
    let metrics = get(http, "/metrics").text();
    assert_eq!(
        sample(
            &metrics,
            "ringway_coordinator_member_ring_share",
            &[("node", "a\\\"b\\\\c\\nd")]
        ),
        Some(1.0),
        "{metrics}"
    );
    for line in metrics.lines() {
        assert!(
            line.starts_with('#') || line.starts_with("ringway_coordinator_"),
            "a broken series line: {line:?}"
        );
    }
}
