//! The attack suite: real processes attacked as an outsider on the public
//! port and as an intruder inside the cluster network would. Each attack
//! asserts that it was refused with the documented error (docs/SECURITY.md),
//! that a bystander client kept being served and received everything, and
//! that the gateway's memory stayed bounded.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{
    membership_client, node_client, signer, Cluster, Coordinator, Redis, TestTls,
};
use common::*;
use futures_util::SinkExt;
use ringway_proto::auth::ClusterSecret;
use ringway_proto::cluster::v1::{
    local_request::Op, poll_message, DeliverBatch, ForwardRequest, HandoffRequest,
    HeartbeatRequest, JoinRequest, LeaveRequest, LocalRequest, PollMessage, WatchRequest,
};
use ringway_proto::v1::{target, EmitRequest, SessionsRequest, StatsRequest, Target};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------
// Helpers.

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A client that must keep being served through an attack: connected on
/// WebSocket, in the room `bystanders`, checked by echoes with numbers.
struct Bystander {
    ws: Ws,
    next: u64,
}

impl Bystander {
    async fn connect(addr: &str) -> Bystander {
        Bystander::connect_with(addr, "").await
    }

    /// Connects with this CONNECT payload (a JSON object, or nothing).
    async fn connect_with(addr: &str, auth: &str) -> Bystander {
        let (mut ws, _) = ws_open(addr).await;
        ws_send(&mut ws, &format!("40{auth}")).await;
        let answer = ws_text(&mut ws).await.expect("connect");
        assert!(answer.starts_with("40{"), "{answer}");
        let event = ws_text(&mut ws).await.expect("auth event");
        assert!(event.starts_with(r#"42["auth","#), "{event}");
        Bystander { ws, next: 0 }
    }

    /// An echo round trip: answered, in order, within a bound.
    async fn served(&mut self) -> Duration {
        self.next += 1;
        let started = Instant::now();
        let text = format!(r#"42["echo",{}]"#, self.next);
        ws_send(&mut self.ws, &text).await;
        let got = ws_text(&mut self.ws).await.expect("the bystander's echo");
        // With recovery on, the echo carries its offset as a last argument.
        let with_offset = format!(r#"42["echo",{},""#, self.next);
        assert!(
            got == text || got.starts_with(&with_offset),
            "the bystander's echo {}: {got}",
            self.next
        );
        let rtt = started.elapsed();
        assert!(rtt < Duration::from_secs(3), "bystander echo took {rtt:?}");
        rtt
    }
}

/// A polling session of the echo application, connected to `/`.
async fn polling_victim(addr: &str) -> Polling {
    let p = Polling::open(addr, "/socket.io/").await;
    p.send("40").await;
    let got = p.packets().await;
    assert!(got.iter().any(|g| g.starts_with("40{\"sid\"")), "{got:?}");
    p
}

/// An HTTP GET from a given loopback source address.
async fn get_from(src: IpAddr, addr: &str, pq: &str) -> (u16, String) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(src, 0)).expect("bind source");
    let target: SocketAddr = addr.parse().expect("addr");
    let mut stream = socket.connect(target).await.expect("connect");
    let req = format!("GET {pq} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

fn emit_to(sid: &str, event: &str) -> EmitRequest {
    EmitRequest {
        namespace: "/".into(),
        target: Some(Target {
            to: Some(target::To::Sid(sid.to_owned())),
            except_rooms: vec![],
        }),
        event: event.into(),
        args_json: "[\"injected\"]".into(),
        attachments: vec![],
        volatile: false,
        skip_count: false,
    }
}

/// Adds a fixed cluster credential header (forged, stale, another
/// secret's), or none.
#[derive(Clone)]
struct FixedCredential(Option<String>);

impl tonic::service::Interceptor for FixedCredential {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            let value = value.parse().expect("header value");
            req.metadata_mut()
                .insert(ringway_proto::auth::METADATA_KEY, value);
        }
        Ok(req)
    }
}

// ---------------------------------------------------------------------------
// The internal plane.

/// Every `Node` and `Membership` call without the cluster credential, with
/// another cluster's, with a stale one or a forged one: UNAUTHENTICATED, and
/// nothing happened (the victim got nothing, kept its session, the view kept
/// its members and addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_calls_without_the_credential_are_refused_and_change_nothing() {
    let c = Cluster::start(3, &[]).await;
    let n1 = c.addr(0);
    let victim = polling_victim(n1).await;
    let mut bystander = Bystander::connect(c.addr(1)).await;
    let view_before = c.coordinator.view().await;
    let grpc = c.nodes[0].grpc.clone().expect("grpc address");
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .expect("url")
        .connect()
        .await
        .expect("connect to the node port");
    let other = ClusterSecret::new(&[42u8; 40]).expect("secret");
    let ours = ClusterSecret::new(common::cluster::SECRET.as_bytes()).expect("secret");
    let now = ringway_proto::auth::unix_now();
    let credentials: Vec<(&str, Option<String>)> = vec![
        ("no credential", None),
        ("another cluster's secret", Some(other.token("n2", now))),
        ("a stale credential", Some(ours.token("n2", now - 3600))),
        (
            "a forged MAC",
            Some(format!(
                "v1.bjI.{now}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            )),
        ),
        ("garbage", Some("v1.garbage".into())),
    ];
    for (what, credential) in credentials {
        let mut node = ringway_proto::cluster::v1::node_client::NodeClient::with_interceptor(
            channel.clone(),
            FixedCredential(credential.clone()),
        );
        let local = |op| LocalRequest { op: Some(op) };
        let refusals = [
            (
                "Local(sessions)",
                node.local(local(Op::Sessions(SessionsRequest {
                    namespace: "/".into(),
                    ..Default::default()
                })))
                .await
                .map(drop),
            ),
            (
                "Local(emit)",
                node.local(local(Op::Emit(emit_to(&victim.sid, "pwned"))))
                    .await
                    .map(drop),
            ),
            (
                "Local(stats)",
                node.local(local(Op::Stats(StatsRequest {})))
                    .await
                    .map(drop),
            ),
            (
                "Forward(POST)",
                node.forward(ForwardRequest {
                    sid: victim.sid.clone(),
                    method: "POST".into(),
                    query: format!("EIO=4&transport=polling&sid={}", victim.sid),
                    body: Bytes::from_static(b"42[\"message\",\"forged\"]"),
                    binary_body: false,
                })
                .await
                .map(drop),
            ),
            (
                "Handoff",
                node.handoff(HandoffRequest {
                    sid: victim.sid.clone(),
                    new_owner: "n2".into(),
                })
                .await
                .map(drop),
            ),
            (
                "Poll",
                node.poll(tokio_stream::iter(vec![PollMessage {
                    kind: Some(poll_message::Kind::Request(ForwardRequest {
                        sid: victim.sid.clone(),
                        method: "GET".into(),
                        query: format!("EIO=4&transport=polling&sid={}", victim.sid),
                        ..Default::default()
                    })),
                }]))
                .await
                .map(drop),
            ),
            (
                "Deliver",
                node.deliver(tokio_stream::iter(vec![DeliverBatch {
                    from_node: "n2".into(),
                    seq: 1,
                    ack: true,
                    items: vec![],
                }]))
                .await
                .map(drop),
            ),
        ];
        for (call, result) in refusals {
            let err = result.expect_err(&format!("{call} with {what} must be refused"));
            assert_eq!(
                err.code(),
                tonic::Code::Unauthenticated,
                "{call} with {what}: {err}"
            );
        }

        let mut membership =
            ringway_proto::cluster::v1::membership_client::MembershipClient::with_interceptor(
                tonic::transport::Channel::from_shared(format!("http://{}", c.coordinator.addr))
                    .expect("url")
                    .connect()
                    .await
                    .expect("connect to the coordinator"),
                FixedCredential(credential.clone()),
            );
        let refusals = [
            (
                "Join",
                membership
                    .join(JoinRequest {
                        node_id: "n2".into(),
                        grpc_addr: "10.6.6.6:7100".into(),
                        http_addr: "10.6.6.6:3000".into(),
                        incarnation: 666,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "Heartbeat",
                membership
                    .heartbeat(HeartbeatRequest {
                        node_id: "n2".into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "Leave",
                membership
                    .leave(LeaveRequest {
                        node_id: "n2".into(),
                        lease_id: 1,
                    })
                    .await
                    .map(drop),
            ),
            (
                "Watch",
                membership.watch(WatchRequest::default()).await.map(drop),
            ),
        ];
        for (call, result) in refusals {
            let err = result.expect_err(&format!("{call} with {what} must be refused"));
            assert_eq!(
                err.code(),
                tonic::Code::Unauthenticated,
                "{call} with {what}: {err}"
            );
        }
        bystander.served().await;
    }

    // Nothing happened: the victim got no injected event and is still
    // served by its owner; the view is the same.
    victim.send("42[\"message\",\"mine\"]").await;
    let got = victim.next_non_ping().await;
    assert_eq!(got, ["42[\"message-back\",\"mine\"]"], "{got:?}");
    let view_after = c.coordinator.view().await;
    assert_eq!(view_after.members, view_before.members);
    assert_eq!(view_after.epoch, view_before.epoch);
    let metrics = get(n1, "/metrics").await.text();
    assert!(
        sample(&metrics, "ringway_cluster_auth_refusals_total").unwrap_or(0.0) >= 35.0,
        "refusals counted: {metrics}"
    );

    // The control: with the credential, the same node answers.
    let mut node = node_client(&grpc, Some("n2")).await;
    node.local(LocalRequest {
        op: Some(Op::Stats(StatsRequest {})),
    })
    .await
    .expect("a member's call is served");
    bystander.served().await;
}

/// A `Join` under the id of a live member, with the credential but without
/// that member's proof: refused (ALREADY_EXISTS), the member keeps its place
/// and address. With the member's own proof it works (the same process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_as_a_live_member_is_refused() {
    let c = Cluster::start(2, &[]).await;
    let mut bystander = Bystander::connect(c.addr(1)).await;
    let before = c.coordinator.view().await;
    let mut client = membership_client(&c.coordinator.addr, Some("intruder")).await;
    for proof in [Bytes::new(), Bytes::from(vec![0u8; 32])] {
        let err = client
            .join(JoinRequest {
                node_id: "n1".into(),
                grpc_addr: "127.0.0.1:1".into(),
                http_addr: "127.0.0.1:2".into(),
                incarnation: 7,
                proof,
            })
            .await
            .expect_err("the intruder is refused");
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    }
    let after = c.coordinator.view().await;
    assert_eq!(after.members, before.members);
    assert_eq!(after.epoch, before.epoch);
    // The cluster works as before: a session of n1 served through n2.
    let p = polling_victim(c.addr(0)).await;
    p.on(c.addr(1)).send("42[\"message\",\"still\"]").await;
    assert_eq!(
        p.on(c.addr(1)).next_non_ping().await,
        ["42[\"message-back\",\"still\"]"]
    );
    bystander.served().await;
}

/// With mutual TLS and a certificate per node (`urn:ringway:node:<id>`), a
/// node can only speak for itself: another node's certificate cannot open
/// a delivery stream as it, take a session for it, or join as it; a client
/// without a certificate does not get through TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_speaks_for_its_node_only() {
    let dir = std::env::temp_dir().join(format!("ringway-sec-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let certs = NodeCerts::new(&dir);
    let redis = Redis::start();
    let coordinator = Coordinator::start_tls(&redis.url(), Some(certs.node("coordinator")));
    let nodes: Vec<Gateway> = ["n1", "n2"]
        .iter()
        .map(|id| {
            let flags = certs.node(id).flags();
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            common::cluster::start_node(id, &coordinator, &redis, &flags)
        })
        .collect();
    let view = coordinator.wait_members(&["n1", "n2"]).await;
    for node in &nodes {
        node.wait_epoch(view.epoch).await;
    }
    let victim = polling_victim(&nodes[0].addr).await;
    // Node-to-node traffic over mutual TLS works: the session is served
    // through n2.
    victim
        .on(&nodes[1].addr)
        .send("42[\"message\",\"tls\"]")
        .await;
    assert_eq!(
        victim.on(&nodes[1].addr).next_non_ping().await,
        ["42[\"message-back\",\"tls\"]"]
    );
    let mut bystander = Bystander::connect(&nodes[1].addr).await;

    // n2's certificate, claiming to be n1 or another node.
    let as_n2 = certs.node("n2");
    let grpc1 = nodes[0].grpc.clone().expect("grpc");
    let mut node = ringway_proto::cluster::v1::node_client::NodeClient::with_interceptor(
        as_n2.channel(&grpc1).await,
        signer("n2"),
    );
    let mut acks = node
        .deliver(tokio_stream::iter(vec![DeliverBatch {
            from_node: "n3".into(),
            seq: 1,
            ack: true,
            items: vec![],
        }]))
        .await
        .expect("the stream opens")
        .into_inner();
    let err = acks.message().await.expect_err("a stream as another node");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let err = node
        .handoff(HandoffRequest {
            sid: victim.sid.clone(),
            new_owner: "n1".into(),
        })
        .await
        .expect_err("a handoff for another node");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let mut membership =
        ringway_proto::cluster::v1::membership_client::MembershipClient::with_interceptor(
            as_n2.channel(&coordinator.addr).await,
            signer("n2"),
        );
    let err = membership
        .join(JoinRequest {
            node_id: "n1".into(),
            grpc_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            incarnation: 9,
            ..Default::default()
        })
        .await
        .expect_err("a join as another node");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // As itself, n2 may open a delivery stream.
    let mut acks = node
        .deliver(tokio_stream::iter(vec![DeliverBatch {
            from_node: "n2".into(),
            seq: 1,
            ack: true,
            items: vec![],
        }]))
        .await
        .expect("the stream opens")
        .into_inner();
    assert_eq!(acks.message().await.expect("acked").map(|a| a.seq), Some(1));

    // No certificate: TLS refuses the connection (or the first call).
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&as_n2.ca).expect("ca"),
        ))
        .domain_name(NAME);
    let anonymous = tonic::transport::Channel::from_shared(format!("https://{grpc1}"))
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await;
    if let Ok(channel) = anonymous {
        let mut node = ringway_proto::cluster::v1::node_client::NodeClient::with_interceptor(
            channel,
            signer("n2"),
        );
        assert!(node
            .local(LocalRequest {
                op: Some(Op::Stats(StatsRequest {}))
            })
            .await
            .is_err());
    }

    // The victim is untouched; the bystander served.
    victim.send("42[\"message\",\"after\"]").await;
    assert_eq!(
        victim.next_non_ping().await,
        ["42[\"message-back\",\"after\"]"]
    );
    bystander.served().await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

const NAME: &str = "members.ringway.test";

/// A CA and certificates for named nodes: the shared server name, and a
/// URI SAN naming the node (none for the coordinator).
struct NodeCerts {
    dir: std::path::PathBuf,
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl NodeCerts {
    fn new(dir: &std::path::Path) -> NodeCerts {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).expect("CA");
        NodeCerts {
            dir: dir.to_owned(),
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, ca_key),
        }
    }

    fn node(&self, id: &str) -> TestTls {
        use rcgen::{CertificateParams, KeyPair, SanType};
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![NAME.to_owned()]).expect("params");
        if id != "coordinator" {
            let uri = format!("urn:ringway:node:{id}");
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().expect("ia5")));
        }
        let cert = params.signed_by(&key, &self.issuer).expect("cert");
        let write = |name: String, pem: String| {
            let path = self.dir.join(name);
            std::fs::write(&path, pem).expect("write");
            path.to_string_lossy().into_owned()
        };
        TestTls {
            ca: write("ca.pem".into(), self.ca_pem.clone()),
            cert: write(format!("{id}.pem"), cert.pem()),
            key: write(format!("{id}.key"), key.serialize_pem()),
            name: NAME.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------
// The public port.

/// 1,000 connections that start a 1 MB polling POST for sids the cluster
/// never made, send 100 KB and stall: refused at once (the sid is checked
/// before the body is read), memory bounded. Then 100 such POSTs for real
/// sessions: cut off within the body timeout (408), memory bounded, and a
/// bystander served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_post_bodies_are_refused_or_cut_off_with_bounded_memory() {
    let gw = Gateway::start(&[
        "--body-read-timeout",
        "3000",
        "--handshake-burst-per-ip",
        "500",
    ]);
    let mut bystander = Bystander::connect(&gw.addr).await;
    let rss_before = rss_kib(gw.pid());
    let chunk = vec![b'x'; 100_000];

    // Random sids.
    let started = Instant::now();
    let mut streams = Vec::new();
    for i in 0..1000 {
        let sid: String = format!("{:0>20}", format!("forged{i}"));
        let mut stream = TcpStream::connect(&gw.addr).await.expect("connect");
        let head = format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 1000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        // The server may already have answered and closed: a failed write
        // is the refusal.
        let _ = stream.write_all(&chunk).await;
        streams.push(stream);
        if i % 100 == 0 {
            bystander.served().await;
        }
    }
    let mut refused = 0;
    for stream in &mut streams {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("HTTP/1.1 400") && text.contains("Session ID unknown") {
            refused += 1;
        }
    }
    assert_eq!(refused, 1000, "every forged sid refused at once");
    let rss_peak = rss_kib(gw.pid());
    assert!(
        rss_peak.saturating_sub(rss_before) < 64 * 1024,
        "1,000 stalled POSTs cost {} KiB",
        rss_peak.saturating_sub(rss_before)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    drop(streams);
    bystander.served().await;

    // Real sessions, stalled bodies: 408 within the body timeout.
    let mut sessions = Vec::new();
    for _ in 0..100 {
        sessions.push(Polling::open(&gw.addr, "/socket.io/").await);
    }
    let started = Instant::now();
    let mut streams = Vec::new();
    for p in &sessions {
        let mut stream = TcpStream::connect(&gw.addr).await.expect("connect");
        let head = format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 1000000\r\n\r\n",
            p.sid
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        let _ = stream.write_all(&chunk).await;
        streams.push(stream);
    }
    bystander.served().await;
    let mut cut = 0;
    for stream in &mut streams {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 503") {
            cut += 1;
        }
    }
    let took = started.elapsed();
    assert_eq!(cut, 100, "every stalled body cut off");
    assert!(took < Duration::from_secs(3 + 5), "cut off after {took:?}");
    let rss_after = rss_kib(gw.pid());
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "stalled bodies cost {} KiB",
        rss_after.saturating_sub(rss_before)
    );
    let metrics = get(&gw.addr, "/metrics").await.text();
    assert!(
        sample(
            &metrics,
            "ringway_limits_refusals_total{limit=\"body_timeout\""
        )
        .unwrap_or(0.0)
            + sample(
                &metrics,
                "ringway_limits_refusals_total{limit=\"body_buffer\""
            )
            .unwrap_or(0.0)
            >= 100.0,
        "{metrics}"
    );
    bystander.served().await;
}

/// A handshake flood from one address is cut to its burst and rate (429);
/// from many addresses, the node's session cap holds (503); sessions per
/// address hold (429). Each refusal carries the protocol's error body, and
/// a bystander is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_floods_from_one_address_and_from_many_are_refused() {
    // From one address: the default limits (burst 100, 20 per second).
    let gw = Gateway::start(&[]);
    let mut bystander = Bystander::connect(&gw.addr).await;
    let source: IpAddr = "127.0.0.9".parse().expect("ip");
    let started = Instant::now();
    let (mut accepted, mut limited) = (0, 0);
    for _ in 0..400 {
        let (status, body) =
            get_from(source, &gw.addr, "/socket.io/?EIO=4&transport=polling").await;
        match status {
            200 => accepted += 1,
            429 => {
                assert_eq!(
                    body,
                    r#"{"code":3,"message":"Too many handshakes from this address"}"#
                );
                limited += 1;
            }
            other => panic!("status {other}: {body}"),
        }
    }
    let allowed = 100.0 + 20.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(
        (accepted as f64) <= allowed && accepted >= 100,
        "{accepted} accepted in {:?}",
        started.elapsed()
    );
    assert_eq!(accepted + limited, 400);
    bystander.served().await;

    // Sessions per address.
    let gw = Gateway::start(&[
        "--max-sessions-per-ip",
        "50",
        "--handshake-rate-per-ip",
        "0",
    ]);
    let mut bystander = Bystander::connect(&gw.addr).await;
    let source: IpAddr = "127.0.0.10".parse().expect("ip");
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(get_from(source, &gw.addr, "/socket.io/?EIO=4&transport=polling").await);
    }
    assert_eq!(statuses.iter().filter(|(s, _)| *s == 200).count(), 50);
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s != 200).collect();
    assert_eq!(refused.len(), 10);
    assert!(refused
        .iter()
        .all(|(s, b)| *s == 429
            && b == r#"{"code":3,"message":"Too many sessions from this address"}"#));
    // Another address is not held back by it.
    let (status, _) = get_from(
        "127.0.0.11".parse().expect("ip"),
        &gw.addr,
        "/socket.io/?EIO=4&transport=polling",
    )
    .await;
    assert_eq!(status, 200);
    bystander.served().await;

    // From many addresses: the node's cap.
    let gw = Gateway::start(&["--max-sessions", "200"]);
    let mut bystander = Bystander::connect(&gw.addr).await;
    let rss_before = rss_kib(gw.pid());
    let (mut accepted, mut full) = (0, 0);
    for i in 0..300u32 {
        let source = IpAddr::from([127, 0, 1 + (i / 200) as u8, (i % 200) as u8 + 1]);
        let (status, body) =
            get_from(source, &gw.addr, "/socket.io/?EIO=4&transport=polling").await;
        match status {
            200 => accepted += 1,
            503 => {
                assert_eq!(body, r#"{"code":3,"message":"Server full"}"#);
                full += 1;
            }
            other => panic!("status {other}: {body}"),
        }
    }
    // The bystander holds one of the 200.
    assert_eq!(accepted, 199);
    assert_eq!(full, 101);
    assert!(rss_kib(gw.pid()).saturating_sub(rss_before) < 32 * 1024);
    bystander.served().await;
    let metrics = get(&gw.addr, "/metrics").await.text();
    assert_eq!(
        sample(&metrics, "ringway_limits_refusals_total{limit=\"sessions\""),
        Some(101.0),
        "{metrics}"
    );
}

/// One socket joining 100,000 rooms: the first 1,000 joins succeed, the rest
/// get an error ack; reserved and overlong names are refused the same way;
/// memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_joining_100000_rooms_stops_at_the_limit() {
    let gw = Gateway::start(&[]);
    let mut bystander = Bystander::connect(&gw.addr).await;
    let rss_before = rss_kib(gw.pid());
    let (mut ws, _) = ws_open(&gw.addr).await;
    ws_send(&mut ws, "40").await;
    assert!(ws_text(&mut ws).await.expect("connect").starts_with("40{"));
    ws_text(&mut ws).await.expect("auth");
    let sender = tokio::spawn(async move {
        let mut ws = ws;
        for i in 0..100_000u64 {
            ws.feed(Message::text(format!(r#"42{i}["join","room-{i}"]"#)))
                .await
                .expect("send");
            if i % 1000 == 999 {
                ws.flush().await.expect("flush");
            }
        }
        ws.flush().await.expect("flush");
        ws
    });
    let mut ws = sender.await.expect("sender");
    let (mut joined, mut refused) = (0, 0);
    while joined + refused < 100_000 {
        let text = ws_text(&mut ws).await.expect("an ack");
        let Some(rest) = text.strip_prefix("43") else {
            continue;
        };
        let (id, args) = rest.split_at(rest.find('[').expect("ack args"));
        let id: u64 = id.parse().expect("ack id");
        if args == "[true]" {
            assert!(id < 1000, "join {id} accepted");
            joined += 1;
        } else {
            assert_eq!(args, r#"[{"error":"in 1000 rooms already"}]"#);
            refused += 1;
        }
    }
    assert_eq!((joined, refused), (1000, 99_000));
    // Reserved and overlong names.
    let long = "r".repeat(300);
    for (name, error) in [
        (
            "\\u0001user:alice",
            "room names starting with U+0001 are reserved",
        ),
        (long.as_str(), "room name longer than 256 bytes"),
    ] {
        ws_send(&mut ws, &format!(r#"42777["join","{name}"]"#)).await;
        loop {
            let text = ws_text(&mut ws).await.expect("ack");
            if text.starts_with("43777") {
                assert_eq!(text, format!(r#"43777[{{"error":"{error}"}}]"#));
                break;
            }
        }
    }
    // An overlong event name: an error ack, and nothing else happens.
    let event = "e".repeat(300);
    ws_send(&mut ws, &format!(r#"42778["{event}"]"#)).await;
    loop {
        let text = ws_text(&mut ws).await.expect("ack");
        if text.starts_with("43778") {
            assert_eq!(
                text,
                r#"43778[{"error":"event name longer than 256 bytes"}]"#
            );
            break;
        }
    }
    let grown = rss_kib(gw.pid()).saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "100,000 joins cost {grown} KiB");
    bystander.served().await;
}

/// A half-sent 10 MB binary packet, on WebSocket (a frame announcing 10 MB,
/// then 64 KB, then silence) and on polling (a 10 MB POST): refused at once,
/// only that session closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_10_mb_packet_is_refused_at_once() {
    let gw = Gateway::start(&[]);
    let mut bystander = Bystander::connect(&gw.addr).await;

    // WebSocket, by hand: the upgrade, then one masked binary frame
    // header announcing 10,000,000 bytes.
    let mut stream = TcpStream::connect(&gw.addr).await.expect("connect");
    let head = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gw.addr
    );
    stream.write_all(head.as_bytes()).await.expect("upgrade");
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.expect("101");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    let mut frame = vec![0x82u8, 0x80 | 127];
    frame.extend_from_slice(&10_000_000u64.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend(std::iter::repeat_n(0u8, 64 * 1024));
    let started = Instant::now();
    let _ = stream.write_all(&frame).await;
    // The server closes the connection (a close frame, then EOF).
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stays open");
    assert!(started.elapsed() < Duration::from_secs(5));
    bystander.served().await;

    // Polling: a 10 MB POST gets 413 before its body is read.
    let p = Polling::open(&gw.addr, "/socket.io/").await;
    let mut stream = TcpStream::connect(&gw.addr).await.expect("connect");
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 10000000\r\n\r\n",
        p.sid
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let _ = stream.write_all(&[b'x'; 64 * 1024]).await;
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered at once")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    bystander.served().await;
}

/// Refused CONNECTs do not go on forever: past `--max-failed-connects` the
/// session is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refused_connects_close_the_session() {
    let gw = Gateway::start(&["--max-failed-connects", "3"]);
    let mut bystander = Bystander::connect(&gw.addr).await;
    let (mut ws, _) = ws_open(&gw.addr).await;
    for _ in 0..3 {
        ws_send(&mut ws, "40/nope,").await;
        assert_eq!(
            ws_text(&mut ws).await.as_deref(),
            Some(r#"44/nope,{"message":"Invalid namespace"}"#)
        );
    }
    ws_send(&mut ws, "40/nope,").await;
    // The fourth: its CONNECT_ERROR, then the session ends.
    let mut closed = false;
    for _ in 0..3 {
        if ws_text(&mut ws).await.is_none() {
            closed = true;
            break;
        }
    }
    assert!(closed, "the session stays open");
    bystander.served().await;
}

// ---------------------------------------------------------------------------
// Recovery and authentication.

/// With recovery on: events too large for the log are delivered and not
/// logged; many events that fit are kept within `--recovery-max-log-bytes`
/// of Redis memory; the client receives every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_cannot_fill_the_recovery_log() {
    let c = Cluster::start(
        1,
        &[
            "--recovery-window",
            "120000",
            "--recovery-max-log-bytes",
            "2000000",
            "--max-payload",
            "1000000",
        ],
    )
    .await;
    let addr = c.addr(0);
    let (mut ws, _) = ws_open(addr).await;
    ws_send(&mut ws, "40").await;
    ws_text(&mut ws).await.expect("connect");
    ws_text(&mut ws).await.expect("auth");
    // 20 events of 200 KB: too large for the log (64 KB), delivered.
    let big = "b".repeat(200_000);
    for i in 0..20 {
        ws_send(&mut ws, &format!(r#"42["message","{big}",{i}]"#)).await;
        let text = ws_text(&mut ws).await.expect("echo");
        assert!(
            text.starts_with(r#"42["message-back","bbbb"#),
            "{}",
            &text[..40]
        );
        assert!(text.contains(&format!(",{i}")), "in order");
    }
    let len: u64 = c
        .redis
        .command(&["XLEN", "ringway:{log}"])
        .and_then(|v| v.trim_start_matches(':').parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        len <= 2,
        "only the auth event (and no big one) is logged: {len}"
    );
    // 200 events of 50 KB: 10 MB through a log bounded at 2 MB.
    let medium = "m".repeat(50_000);
    for i in 0..200 {
        ws_send(&mut ws, &format!(r#"42["message","{medium}",{i}]"#)).await;
        let text = ws_text(&mut ws).await.expect("echo");
        assert!(text.contains(&format!(",{i},")), "echo {i} in order");
    }
    // The log is trimmed every second.
    let used = || {
        c.redis
            .command(&["MEMORY", "USAGE", "ringway:{log}"])
            .and_then(|v| v.trim_start_matches(':').parse::<u64>().ok())
            .unwrap_or(0)
    };
    ringway_testkit::eventually(
        Duration::from_secs(10),
        "the log trimmed below 3 MB",
        || async {
            let used = used();
            used > 0 && used < 3_000_000
        },
    )
    .await;
    let metrics = get(addr, "/metrics").await.text();
    assert_eq!(
        sample(
            &metrics,
            "ringway_recovery_log_appends_total{outcome=\"too_large\""
        ),
        Some(20.0),
        "{metrics}"
    );
}

const JWT_SECRET: &str = "attack-suite-jwt-secret";

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encode")
}

/// A CONNECT over a fresh WebSocket; the answer packet.
async fn connect_with(addr: &str, auth: &Value) -> (Ws, String) {
    let (mut ws, _) = ws_open(addr).await;
    ws_send(&mut ws, &format!("40{auth}")).await;
    let answer = ws_text(&mut ws).await.expect("CONNECT answer");
    (ws, answer)
}

/// Someone else's pid (another user's), a forged pid and an expired one
/// get a fresh socket, never the socket they name; tokens with `alg: none`,
/// the wrong algorithm, a bad signature or past `exp` are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_forged_and_expired_pids_and_bad_tokens_get_nothing() {
    let gw = Gateway::start_raw(&[
        "--listen",
        "127.0.0.1:0",
        "--recovery-window",
        "1500",
        "--jwt-hs256-secret",
        JWT_SECRET,
    ]);
    let now = jsonwebtoken::get_current_timestamp();
    let alice = hs256(json!({"sub": "alice", "exp": now + 300, "rooms": ["alice-only"]}));
    let bob = hs256(json!({"sub": "bob", "exp": now + 300}));
    let (mut a, answer) = connect_with(&gw.addr, &json!({"token": alice})).await;
    let answer: Value =
        serde_json::from_str(answer.strip_prefix("40").expect("connect")).expect("json");
    let (pid, sid) = (answer["pid"].clone(), answer["sid"].clone());
    let auth_event = ws_text(&mut a).await.expect("auth event");
    let offset: Value =
        serde_json::from_str::<Value>(auth_event.strip_prefix("42").expect("event")).expect("json")
            [2]
        .clone();
    drop(a); // Alice's transport goes away: her socket is recoverable.
    wait_sample(&gw.addr, "ringway_sockets{namespace=\"/\"", |v| v == 0.0).await;

    // Bob with Alice's pid and offset: a fresh socket of his own.
    let (_b, answer) = connect_with(
        &gw.addr,
        &json!({"token": bob, "pid": pid, "offset": offset}),
    )
    .await;
    let answer: Value =
        serde_json::from_str(answer.strip_prefix("40").expect("connect")).expect("json");
    assert_ne!(answer["sid"], sid, "Bob got Alice's socket");
    assert_ne!(answer["pid"], pid);
    // A forged pid.
    let (_f, answer) = connect_with(
        &gw.addr,
        &json!({"token": bob, "pid": "AAAAAAAAAAAAAAAAAAAAAA", "offset": offset}),
    )
    .await;
    assert!(answer.starts_with("40{\"sid\""), "{answer}");
    assert!(!answer.contains(sid.as_str().unwrap_or("?")));
    // Alice's own pid once the window passed: a fresh socket too.
    // fixed: the recovery window passing is what is tested.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let alice = hs256(json!({"sub": "alice", "exp": now + 300}));
    let (_a, answer) = connect_with(
        &gw.addr,
        &json!({"token": alice, "pid": pid, "offset": offset}),
    )
    .await;
    let answer: Value =
        serde_json::from_str(answer.strip_prefix("40").expect("connect")).expect("json");
    assert_ne!(answer["sid"], sid, "recovered past the window");

    // Bad tokens: CONNECT_ERROR, never a socket.
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "mallory", "exp": now + 300}))
    );
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "mallory", "exp": now + 300}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encode");
    let expired = hs256(json!({"sub": "mallory", "exp": now - 3600}));
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "mallory", "exp": now + 300}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the secret"),
    )
    .expect("encode");
    let carol = hs256(json!({"sub": "carol", "exp": now + 300}));
    let mut bystander =
        Bystander::connect_with(&gw.addr, &json!({ "token": carol }).to_string()).await;
    for (what, token) in [
        ("alg none", unsigned),
        ("HS512 for an HS256 key", hs512),
        ("expired", expired),
        ("another key", other_key),
    ] {
        let (_ws, answer) = connect_with(&gw.addr, &json!({"token": token})).await;
        assert!(answer.starts_with("44{"), "{what}: {answer}");
        bystander.served().await;
    }
    // The algorithm-confusion attack on an RS256 key is in
    // tests/upstream.rs (jwt_rs256_with_a_public_key_file).
}

// ---------------------------------------------------------------------------
// Start-up refusals.

/// The flags an attacker or a typo could exploit are refused at start with
/// a clear message, and a Redis password never shows.
#[test]
fn dangerous_configurations_are_refused_at_start() {
    let gateway = env!("CARGO_BIN_EXE_ringway-gateway");
    let run = |args: &[&str]| {
        std::process::Command::new(gateway)
            .args(args)
            .arg("--check-config")
            .env_remove("RINGWAY_CLUSTER_SECRET_FILE")
            .env_remove("RINGWAY_INSECURE_CLUSTER")
            .output()
            .expect("run the gateway")
    };
    let cluster = vec![
        "--coordinator",
        "127.0.0.1:7000",
        "--redis-url",
        "redis://:hunter2@127.0.0.1:6379/",
    ];
    // No credential.
    let out = run(&cluster);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster credential"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // A short secret.
    let short = std::env::temp_dir().join(format!("ringway-short-secret-{}", std::process::id()));
    std::fs::write(&short, "short").expect("write");
    let mut args = cluster.clone();
    args.extend(["--cluster-secret-file", short.to_str().expect("path")]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
    let _ = std::fs::remove_file(&short);
    // Malformed addresses.
    let secret = common::cluster::secret_file();
    for (flag, value, expect) in [
        (
            "--advertise-grpc",
            "http://127.0.0.1:7101",
            "without a scheme",
        ),
        ("--advertise-grpc", "127.0.0.1", "port is missing"),
        (
            "--advertise-grpc",
            "0.0.0.0:7100",
            "not an address others can reach",
        ),
        ("--advertise-http", "gw:0", "not a port"),
        ("--coordinator", "ftp://127.0.0.1:7000", "scheme"),
        ("--redis-url", "http://127.0.0.1:6379/", "--redis-url"),
    ] {
        let mut args = vec!["--cluster-secret-file", secret, flag, value];
        if flag != "--coordinator" {
            args.extend(["--coordinator", "127.0.0.1:7000"]);
        }
        if flag != "--redis-url" {
            args.extend(["--redis-url", "redis://127.0.0.1:6379/"]);
        }
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{flag} {value}: {stderr}");
    }
    // The insecure cluster is explicit, and allowed.
    let mut args = cluster.clone();
    args.push("--insecure-cluster");
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

/// A Redis that refuses the password: the start failure names the URL
/// without it.
#[test]
fn a_start_failure_does_not_print_the_redis_password() {
    let redis = Redis::start();
    let url = format!("redis://:hunter2-secret@127.0.0.1:{}/", redis.port);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringway-gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--node-id",
            "n1",
            "--coordinator",
            "127.0.0.1:1",
            "--redis-url",
            &url,
            "--cluster-secret-file",
            common::cluster::secret_file(),
        ])
        .output()
        .expect("run the gateway");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("cannot reach Redis at redis://:***@127.0.0.1"),
        "{all}"
    );
    assert!(!all.contains("hunter2"), "{all}");
}
