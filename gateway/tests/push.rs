//! The `Push` API against a real 3-node cluster (Redis, coordinator,
//! gateways as processes): every call made on one node for sockets on
//! others.

mod common;

use std::time::Duration;

use common::cluster::{push_client as client, Cluster, PushClient as Client};
use common::{get, ws_connect_main, ws_expect, ws_open, ws_send, ws_text, Polling, Ws};
use ringway_proto::v1::{
    target, DisconnectRequest, EmitRequest, EmitWithAckRequest, PresenceRequest, RoomList,
    RoomsChange, RoomsRequest, SessionsRequest, StatsRequest, Target,
};
use ringway_testkit::eventually;
use tonic::Code;

const TOKEN: &str = "s3cret-token";

async fn start() -> (Cluster, Vec<Client>) {
    let c = Cluster::start(3, &["--api-token", TOKEN]).await;
    let mut clients = Vec::new();
    for node in &c.nodes {
        clients.push(client(node.api.as_deref().expect("api address"), Some(TOKEN)).await);
    }
    (c, clients)
}

async fn join(ws: &mut Ws, room: &str) {
    ws_send(ws, &format!("421[\"join\",\"{room}\"]")).await;
    ws_expect(ws, "431[true]").await;
}

/// Nothing but a round trip arrives: no stray message is queued.
async fn nothing_more(ws: &mut Ws) {
    ws_send(ws, "42[\"message\",\"sync\"]").await;
    assert_eq!(ws_expect(ws, "42[").await, "42[\"message-back\",\"sync\"]");
}

fn to_sid(sid: &str) -> Option<Target> {
    Some(Target {
        to: Some(target::To::Sid(sid.to_owned())),
        except_rooms: vec![],
    })
}

fn to_rooms(rooms: &[&str], except: &[&str]) -> Option<Target> {
    Some(Target {
        to: Some(target::To::Rooms(RoomList {
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
        })),
        except_rooms: except.iter().map(|r| r.to_string()).collect(),
    })
}

fn emit(target: Option<Target>, event: &str, args: &str) -> EmitRequest {
    EmitRequest {
        namespace: "/".into(),
        target,
        event: event.into(),
        args_json: args.into(),
        attachments: vec![],
        volatile: false,
        skip_count: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_reach_sessions_rooms_and_namespaces_on_other_nodes() {
    let (c, mut api) = start().await;
    let (mut a, sid_a) = ws_connect_main(c.addr(0)).await;
    let (mut b, _) = ws_connect_main(c.addr(1)).await;
    let (mut d, _) = ws_connect_main(c.addr(2)).await;

    // To one session owned by node 1, called on node 3.
    let reply = api[2]
        .emit(emit(to_sid(&sid_a), "news", "[1,{\"x\":\"y\"}]"))
        .await
        .expect("emit")
        .into_inner();
    assert_eq!((reply.sockets, reply.nodes), (1, 1));
    assert_eq!(
        ws_expect(&mut a, "42[\"news\"").await,
        "42[\"news\",1,{\"x\":\"y\"}]"
    );

    // To a room with members on every node, except a room.
    join(&mut a, "r").await;
    join(&mut b, "r").await;
    join(&mut d, "r").await;
    join(&mut d, "muted").await;
    let reply = api[1]
        .emit(emit(to_rooms(&["r"], &["muted"]), "room", "[\"hi\"]"))
        .await
        .expect("emit")
        .into_inner();
    assert_eq!((reply.sockets, reply.nodes), (2, 2));
    assert_eq!(
        ws_expect(&mut a, "42[\"room\"").await,
        "42[\"room\",\"hi\"]"
    );
    assert_eq!(
        ws_expect(&mut b, "42[\"room\"").await,
        "42[\"room\",\"hi\"]"
    );
    nothing_more(&mut d).await;

    // To the namespace: everyone, once.
    let reply = api[0]
        .emit(emit(
            Some(Target {
                to: Some(target::To::Namespace(true)),
                except_rooms: vec![],
            }),
            "all",
            "",
        ))
        .await
        .expect("emit")
        .into_inner();
    assert_eq!((reply.sockets, reply.nodes), (3, 3));
    for ws in [&mut a, &mut b, &mut d] {
        assert_eq!(ws_expect(ws, "42[\"all\"").await, "42[\"all\"]");
        nothing_more(ws).await;
    }

    // Binary attachments travel as such.
    let mut req = emit(to_sid(&sid_a), "bin", "[{\"_placeholder\":true,\"num\":0}]");
    req.attachments = vec![bytes::Bytes::from_static(b"\x01\x02")];
    api[1].emit(req).await.expect("binary emit");
    let header = ws_expect(&mut a, "451-[\"bin\"").await;
    assert_eq!(header, "451-[\"bin\",{\"_placeholder\":true,\"num\":0}]");
    match common::ws_frame(&mut a).await {
        Some(tokio_tungstenite::tungstenite::Message::Binary(data)) => {
            assert_eq!(&data[..], b"\x01\x02")
        }
        other => panic!("expected the attachment, got {other:?}"),
    }

    // A stream of emits, in order, each answered.
    let requests: Vec<EmitRequest> = (0..50)
        .map(|i| emit(to_rooms(&["r"], &[]), "seq", &format!("[{i}]")))
        .collect();
    let mut replies = api[2]
        .emit_stream(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let mut answered = 0;
    while let Some(reply) = replies.message().await.expect("stream reply") {
        assert_eq!(reply.sockets, 3);
        answered += 1;
    }
    assert_eq!(answered, 50);
    for ws in [&mut a, &mut b, &mut d] {
        for i in 0..50 {
            assert_eq!(
                ws_expect(ws, "42[\"seq\"").await,
                format!("42[\"seq\",{i}]")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_acks_disconnects_and_presence_by_api() {
    let (c, mut api) = start().await;
    let (mut a, sid_a) = ws_connect_main(c.addr(0)).await;
    let (mut b, sid_b) = ws_connect_main(c.addr(1)).await;

    // Join by API (called on node 3), then a room emit reaches both.
    for sid in [&sid_a, &sid_b] {
        let reply = api[2]
            .join_rooms(RoomsChange {
                namespace: "/".into(),
                target: to_sid(sid),
                rooms: vec!["team".into(), "all-hands".into()],
            })
            .await
            .expect("join")
            .into_inner();
        assert_eq!(reply.sockets, 1);
    }
    let reply = api[0]
        .emit(emit(to_rooms(&["team"], &[]), "t", "[]"))
        .await
        .expect("emit")
        .into_inner();
    assert_eq!(reply.sockets, 2);
    ws_expect(&mut a, "42[\"t\"").await;
    ws_expect(&mut b, "42[\"t\"").await;

    // Presence and rooms, from any node.
    let presence = api[2]
        .presence(PresenceRequest {
            namespace: "/".into(),
            rooms: vec!["team".into(), "nobody".into()],
        })
        .await
        .expect("presence")
        .into_inner();
    assert_eq!(presence.counts.get("team"), Some(&2));
    assert_eq!(presence.counts.get("nobody"), Some(&0));
    let rooms = api[2]
        .rooms(RoomsRequest {
            namespace: "/".into(),
            ..RoomsRequest::default()
        })
        .await
        .expect("rooms")
        .into_inner();
    assert_eq!(rooms.rooms, vec!["all-hands".to_owned(), "team".to_owned()]);
    assert_eq!(rooms.next_page_token, "");
    // A page at a time (the names of this node and the others').
    let first = api[2]
        .rooms(RoomsRequest {
            namespace: "/".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("rooms")
        .into_inner();
    assert_eq!(first.rooms, vec!["all-hands".to_owned()]);
    assert_eq!(first.next_page_token, "all-hands");
    let second = api[2]
        .rooms(RoomsRequest {
            namespace: "/".into(),
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .expect("rooms")
        .into_inner();
    assert_eq!(second.rooms, vec!["team".to_owned()]);
    assert_eq!(second.next_page_token, "");
    // Uncounted without recovery: delivered, counts left out.
    let reply = api[1]
        .emit(EmitRequest {
            skip_count: true,
            ..emit(to_rooms(&["team"], &[]), "quiet", "[]")
        })
        .await
        .expect("emit")
        .into_inner();
    assert_eq!((reply.sockets, reply.nodes), (0, 0));
    ws_expect(&mut a, "42[\"quiet\"").await;
    ws_expect(&mut b, "42[\"quiet\"").await;

    // Sessions, paged, across nodes.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = api[1]
            .sessions(SessionsRequest {
                namespace: "/".into(),
                room: "team".into(),
                user: String::new(),
                page_size: 1,
                page_token: token.clone(),
            })
            .await
            .expect("sessions")
            .into_inner();
        assert!(page.sessions.len() <= 1);
        seen.extend(
            page.sessions
                .iter()
                .map(|s| (s.sid.clone(), s.node_id.clone())),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let forged = api[1]
        .sessions(SessionsRequest {
            namespace: "/".into(),
            page_token: "not a sid".into(),
            ..SessionsRequest::default()
        })
        .await
        .expect_err("a token the API did not give");
    assert_eq!(forged.code(), tonic::Code::InvalidArgument);
    seen.sort();
    let mut want = vec![
        (sid_a.clone(), "n1".to_owned()),
        (sid_b.clone(), "n2".to_owned()),
    ];
    want.sort();
    assert_eq!(seen, want);

    // Leave by API: the room emit misses the one that left.
    api[0]
        .leave_rooms(RoomsChange {
            namespace: "/".into(),
            target: to_sid(&sid_b),
            rooms: vec!["team".into()],
        })
        .await
        .expect("leave");
    let reply = api[2]
        .emit(emit(to_rooms(&["team"], &[]), "t2", "[]"))
        .await
        .expect("emit")
        .into_inner();
    assert_eq!(reply.sockets, 1);
    ws_expect(&mut a, "42[\"t2\"").await;
    nothing_more(&mut b).await;

    // Emit with ack, called on node 3 for a socket of node 2.
    let call = {
        let mut api = api[2].clone();
        let sid = sid_b.clone();
        tokio::spawn(async move {
            api.emit_with_ack(EmitWithAckRequest {
                namespace: "/".into(),
                sid,
                event: "question".into(),
                args_json: "[\"2+2?\"]".into(),
                attachments: vec![],
                timeout_ms: 5000,
            })
            .await
        })
    };
    let question = ws_expect(&mut b, "42").await;
    let rest = question.strip_prefix("42").expect("event");
    let id: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    assert!(!id.is_empty(), "an ack id: {question}");
    assert_eq!(&rest[id.len()..], "[\"question\",\"2+2?\"]");
    ws_send(&mut b, &format!("43{id}[4,\"four\"]")).await;
    let answer = call.await.expect("task").expect("ack").into_inner();
    assert_eq!(answer.args_json, "[4,\"four\"]");

    // No ack in time: DEADLINE_EXCEEDED.
    let err = api[0]
        .emit_with_ack(EmitWithAckRequest {
            namespace: "/".into(),
            sid: sid_b.clone(),
            event: "question".into(),
            args_json: "[]".into(),
            attachments: vec![],
            timeout_ms: 300,
        })
        .await
        .expect_err("no ack");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");

    // Disconnect by sid, from another node: the client gets DISCONNECT.
    let reply = api[2]
        .disconnect(DisconnectRequest {
            namespace: "/".into(),
            target: to_sid(&sid_a),
            reason: "bye".into(),
            close_session: false,
        })
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(reply.sockets, 1);
    assert_eq!(ws_expect(&mut a, "41").await, "41");

    // Stats: every node, with its sessions.
    let stats = api[1]
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.nodes.len(), 3);
    assert!(stats.nodes.iter().all(|n| n.reachable));
    let total: u64 = stats.nodes.iter().map(|n| n.websocket_sessions).sum();
    assert_eq!(total, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_grpc_status_codes() {
    let (c, mut api) = start().await;
    let (_a, sid_a) = ws_connect_main(c.addr(0)).await;

    // Tokens.
    let mut anonymous = client(c.nodes[0].api.as_deref().expect("api"), None).await;
    let err = anonymous
        .stats(StatsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = client(c.nodes[1].api.as_deref().expect("api"), Some("nope")).await;
    let err = wrong.stats(StatsRequest {}).await.expect_err("wrong token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Unknown or forged sid: NOT_FOUND, from any node.
    for (i, sid) in ["AAAAAAAAAAAAAAAAAAAA", "garbage"].iter().enumerate() {
        let err = api[i]
            .emit(emit(to_sid(sid), "x", "[]"))
            .await
            .expect_err("unknown sid");
        assert_eq!(err.code(), Code::NotFound, "{err}");
    }
    // Bad arguments.
    for (event, args) in [
        ("x", "{not json"),
        ("x", "{\"an\":\"object\"}"),
        ("", "[]"),
        ("connect", "[]"),
    ] {
        let err = api[1]
            .emit(emit(to_sid(&sid_a), event, args))
            .await
            .expect_err("invalid");
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{event:?} {args:?}: {err}"
        );
    }
    let err = api[1]
        .emit(emit(None, "x", "[]"))
        .await
        .expect_err("no target");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut dangling = emit(to_sid(&sid_a), "x", "[{\"_placeholder\":true,\"num\":3}]");
    dangling.attachments = vec![bytes::Bytes::from_static(b"1")];
    let err = api[1].emit(dangling).await.expect_err("bad placeholder");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = api[1]
        .join_rooms(RoomsChange {
            namespace: "/".into(),
            target: to_sid(&sid_a),
            rooms: vec!["\u{1}user:mallory".into()],
        })
        .await
        .expect_err("hidden room");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Over the payload limit (1,000,000 bytes by default).
    let big = format!("[\"{}\"]", "x".repeat(1_000_001));
    let err = api[2]
        .emit(emit(to_rooms(&["r"], &[]), "big", &big))
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");

    // A user with no session: a zero count, not an error.
    let reply = api[0]
        .emit(emit(
            Some(Target {
                to: Some(target::To::User("nobody".into())),
                except_rooms: vec![],
            }),
            "x",
            "[]",
        ))
        .await
        .expect("emit to a user without sessions")
        .into_inner();
    assert_eq!(reply.sockets, 0);
}

/// An HS256 token for `user`, valid for an hour.
const JWT_SECRET: &str = "jwt-secret-for-tests";

async fn connect_as(addr: &str, user: &str) -> (Ws, String) {
    common::connect_as(addr, JWT_SECRET, user).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_with_sessions_on_several_nodes() {
    let c = Cluster::start(3, &["--api-token", TOKEN, "--jwt-hs256-secret", JWT_SECRET]).await;
    let mut api = client(c.nodes[2].api.as_deref().expect("api"), Some(TOKEN)).await;
    // alice on nodes 1 and 2, bob on node 3.
    let (mut alice1, _) = connect_as(c.addr(0), "alice").await;
    let (mut alice2, _) = connect_as(c.addr(1), "alice").await;
    let (mut bob, _) = connect_as(c.addr(2), "bob").await;
    let alice = || {
        Some(Target {
            to: Some(target::To::User("alice".into())),
            except_rooms: vec![],
        })
    };

    // To a user: both of alice's sessions, not bob.
    let reply = api
        .emit(emit(alice(), "dm", "[\"hello alice\"]"))
        .await
        .expect("emit to a user")
        .into_inner();
    assert_eq!((reply.sockets, reply.nodes), (2, 2));
    for ws in [&mut alice1, &mut alice2] {
        assert_eq!(
            ws_expect(ws, "42[\"dm\"").await,
            "42[\"dm\",\"hello alice\"]"
        );
    }
    nothing_more(&mut bob).await;

    // Users are found through the registry, not announced to the peers:
    // Redis says which nodes have alice, and no node routes her room.
    let alice_key = "ringway:user:1:/:alice";
    assert_eq!(c.redis.command(&["HLEN", alice_key]).as_deref(), Some(":2"));
    for node in ["n1", "n2"] {
        assert_eq!(
            c.redis.command(&["HEXISTS", alice_key, node]).as_deref(),
            Some(":1"),
            "{node}"
        );
    }
    for node in &c.nodes {
        let metrics = get(&node.addr, "/metrics").await.text();
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("ringway_cluster_room_routes") && !l.ends_with(" 0")),
            "a node routes rooms though nobody joined one:\n{metrics}"
        );
    }

    // The user's sessions are listed, and join a room by user.
    let sessions = api
        .sessions(SessionsRequest {
            namespace: "/".into(),
            room: String::new(),
            user: "alice".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("sessions")
        .into_inner();
    let mut nodes: Vec<String> = sessions
        .sessions
        .iter()
        .map(|s| s.node_id.clone())
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec!["n1", "n2"]);
    assert!(sessions
        .sessions
        .iter()
        .all(|s| s.user == "alice" && s.rooms.is_empty()));
    let joined = api
        .join_rooms(RoomsChange {
            namespace: "/".into(),
            target: alice(),
            rooms: vec!["vip".into()],
        })
        .await
        .expect("join by user")
        .into_inner();
    assert_eq!(joined.sockets, 2);
    let reply = api
        .emit(emit(to_rooms(&["vip"], &[]), "vip", "[]"))
        .await
        .expect("emit")
        .into_inner();
    assert_eq!(reply.sockets, 2);

    // Disconnect by user: both of alice's sockets, bob stays.
    let reply = api
        .disconnect(DisconnectRequest {
            namespace: "/".into(),
            target: alice(),
            reason: "banned".into(),
            close_session: false,
        })
        .await
        .expect("disconnect a user")
        .into_inner();
    assert_eq!(reply.sockets, 2);
    for ws in [&mut alice1, &mut alice2] {
        ws_expect(ws, "42[\"vip\"").await;
        assert_eq!(ws_expect(ws, "41").await, "41");
    }
    nothing_more(&mut bob).await;
    let reply = api
        .emit(emit(alice(), "dm", "[]"))
        .await
        .expect("emit")
        .into_inner();
    assert_eq!(reply.sockets, 0);
    // Her last sockets gone, the nodes took themselves out.
    eventually(
        Duration::from_secs(10),
        "alice's entry to empty",
        || async {
            c.redis
                .command(&["HLEN", "ringway:user:1:/:alice"])
                .as_deref()
                == Some(":0")
        },
    )
    .await;
    assert_eq!(
        c.redis
            .command(&["HLEN", "ringway:user:1:/:bob"])
            .as_deref(),
        Some(":1")
    );
}

// ---------------------------------------------------------------------------
// Volatile, everyone, whole-session disconnects and their reasons, token
// files, and the API with connection state recovery on.

fn everyone() -> Option<Target> {
    Some(Target {
        to: Some(target::To::Everyone(true)),
        except_rooms: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_everyone_and_disconnects_with_a_reason() {
    let c = Cluster::start(
        3,
        &[
            "--api-token",
            TOKEN,
            "--namespace",
            "/",
            "--namespace",
            "/custom",
        ],
    )
    .await;
    let mut api = client(c.nodes[2].api.as_deref().expect("api"), Some(TOKEN)).await;

    // Everyone: every namespace of every node, once per socket.
    let (mut a, sid_a) = ws_connect_main(c.addr(0)).await;
    let (mut custom, _) = ws_open(c.addr(1)).await;
    ws_send(&mut custom, "40/custom,").await;
    ws_expect(&mut custom, "40/custom,{\"sid\"").await;
    let reply = api
        .emit(emit(everyone(), "hello", "[1]"))
        .await
        .expect("emit to everyone")
        .into_inner();
    assert_eq!((reply.sockets, reply.nodes), (2, 2));
    assert_eq!(ws_expect(&mut a, "42[\"hello\"").await, "42[\"hello\",1]");
    assert_eq!(
        ws_expect(&mut custom, "42/custom,[\"hello\"").await,
        "42/custom,[\"hello\",1]"
    );

    // Volatile: dropped for a client that cannot take it now (a polling
    // client whose queue holds something), delivered once it can.
    let p = common::Polling::open(c.addr(0), "/socket.io/").await;
    p.send("40").await;
    let first = p.next_non_ping().await;
    assert!(first.iter().any(|x| x.starts_with("40{")), "{first:?}");
    let (sid_p, volatile) = (p.sid.clone(), |args: &str| {
        let mut r = emit(None, "v", args);
        r.volatile = true;
        r
    });
    api.emit(emit(to_sid(&sid_p), "queued", "[]"))
        .await
        .expect("emit");
    let mut v = volatile("[\"dropped\"]");
    v.target = to_sid(&sid_p);
    let reply = api.emit(v).await.expect("volatile emit").into_inner();
    assert_eq!(
        reply.sockets, 0,
        "a volatile emit to a busy client is dropped"
    );
    let got = p.next_non_ping().await;
    assert!(got.iter().any(|x| x == "42[\"queued\"]"), "{got:?}");
    assert!(!got.iter().any(|x| x.contains("dropped")), "{got:?}");
    let mut v = volatile("[\"kept\"]");
    v.target = to_sid(&sid_p);
    let reply = api.emit(v).await.expect("volatile emit").into_inner();
    assert_eq!(reply.sockets, 1);
    assert_eq!(
        p.next_non_ping().await,
        vec!["42[\"v\",\"kept\"]".to_owned()]
    );

    // A reason the client sees, then the DISCONNECT; the session stays.
    let reply = api
        .disconnect(DisconnectRequest {
            namespace: "/".into(),
            target: to_sid(&sid_a),
            reason: "maintenance".into(),
            close_session: false,
        })
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(reply.sockets, 1);
    assert_eq!(
        ws_expect(&mut a, "42[\"ringway:disconnect\"").await,
        "42[\"ringway:disconnect\",\"maintenance\"]"
    );
    assert_eq!(ws_expect(&mut a, "41").await, "41");

    // close_session: the whole Engine.IO session ends.
    let (mut b, sid_b) = ws_connect_main(c.addr(1)).await;
    api.disconnect(DisconnectRequest {
        namespace: "/".into(),
        target: to_sid(&sid_b),
        reason: String::new(),
        close_session: true,
    })
    .await
    .expect("close session");
    loop {
        match ws_text(&mut b).await {
            None => break,
            Some(t) => assert!(!t.starts_with("42[\"ringway:disconnect\""), "{t}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_from_a_file() {
    let dir = std::env::temp_dir().join(format!("ringway-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("tokens");
    std::fs::write(&file, "# one per line\nfile-token-1\n\nfile-token-2\n").expect("write");
    let c = Cluster::start(1, &["--api-token-file", file.to_str().expect("utf-8")]).await;
    let grpc = c.nodes[0].api.as_deref().expect("api");
    let stats = StatsRequest::default();
    for token in ["file-token-1", "file-token-2"] {
        let mut ok = client(grpc, Some(token)).await;
        ok.stats(stats).await.expect("a token of the file");
    }
    let mut wrong = client(grpc, Some("not-in-the-file")).await;
    let err = wrong
        .stats(stats)
        .await
        .expect_err("a token not in the file");
    assert_eq!(err.code(), Code::Unauthenticated);
    let _ = std::fs::remove_dir_all(dir);
}

/// A recoverable event's arguments without its offset (the last one).
fn without_offset(text: &str, prefix: &str) -> String {
    let json = text.strip_prefix(prefix).expect("prefix");
    let mut args: Vec<serde_json::Value> = serde_json::from_str(json).expect("event JSON");
    let offset = args.pop().expect("an offset");
    let offset = offset.as_str().expect("a string offset");
    assert!(
        offset
            .split_once('-')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok()),
        "not an offset: {offset}"
    );
    format!("{prefix}{}", serde_json::to_string(&args).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_recovery_on_pushes_go_through_the_log_in_order() {
    let c = Cluster::start(3, &["--api-token", TOKEN, "--recovery-window", "120000"]).await;
    let mut api = Vec::new();
    for node in &c.nodes {
        api.push(client(node.api.as_deref().expect("api"), Some(TOKEN)).await);
    }
    let mut socks = Vec::new();
    for i in 0..3 {
        let (mut ws, open) = ws_open(c.addr(i)).await;
        let sid = open["sid"].as_str().expect("sid").to_owned();
        ws_send(&mut ws, "40").await;
        let answer = ws_expect(&mut ws, "40{").await;
        assert!(answer.contains("\"pid\""), "{answer}");
        ws_expect(&mut ws, "42[\"auth\"").await;
        join(&mut ws, "r").await;
        socks.push((ws, sid));
    }
    // To a sid on another node, to a room, to the namespace: each arrives
    // once with its offset.
    let sid0 = socks[0].1.clone();
    let reply = api[2]
        .emit(emit(to_sid(&sid0), "one", "[1]"))
        .await
        .expect("emit")
        .into_inner();
    assert_eq!(reply.sockets, 1);
    let text = ws_expect(&mut socks[0].0, "42[\"one\"").await;
    assert_eq!(without_offset(&text, "42"), "42[\"one\",1]");
    let reply = api[1]
        .emit(emit(to_rooms(&["r"], &[]), "room", "[\"hi\"]"))
        .await
        .expect("emit")
        .into_inner();
    assert_eq!((reply.sockets, reply.nodes), (3, 3));
    for (ws, _) in socks.iter_mut() {
        let text = ws_expect(ws, "42[\"room\"").await;
        assert_eq!(without_offset(&text, "42"), "42[\"room\",\"hi\"]");
    }
    // The whole namespace, and everyone (every namespace): logged too.
    for (target, event) in [
        (
            Some(Target {
                to: Some(target::To::Namespace(true)),
                except_rooms: vec![],
            }),
            "ns",
        ),
        (everyone(), "all"),
    ] {
        let reply = api[2]
            .emit(emit(target, event, "[true]"))
            .await
            .expect("emit")
            .into_inner();
        assert_eq!((reply.sockets, reply.nodes), (3, 3), "{event}");
        for (ws, _) in socks.iter_mut() {
            let text = ws_expect(ws, &format!("42[\"{event}\"")).await;
            assert_eq!(without_offset(&text, "42"), format!("42[\"{event}\",true]"));
        }
    }
    // A stream of 300 emits (finished side by side on the node): in order
    // on every node, each answered.
    let requests: Vec<EmitRequest> = (0..300)
        .map(|i| emit(to_rooms(&["r"], &[]), "seq", &format!("[{i}]")))
        .collect();
    let mut replies = api[0]
        .emit_stream(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let mut answered = 0;
    while let Some(reply) = replies.message().await.expect("stream reply") {
        assert_eq!(reply.sockets, 3);
        answered += 1;
    }
    assert_eq!(answered, 300);
    for (ws, _) in socks.iter_mut() {
        for i in 0..300 {
            let text = ws_expect(ws, "42[\"seq\"").await;
            assert_eq!(without_offset(&text, "42"), format!("42[\"seq\",{i}]"));
        }
    }
    // Volatile emits are not logged: no offset.
    let mut v = emit(to_sid(&sid0), "v", "[\"now\"]");
    v.volatile = true;
    api[1].emit(v).await.expect("volatile");
    assert_eq!(
        ws_expect(&mut socks[0].0, "42[\"v\"").await,
        "42[\"v\",\"now\"]"
    );

    // An emit, then a disconnect by the API from another node: the emit
    // arrives first, then the reason, then the DISCONNECT; and the socket
    // cannot be recovered (a server-side disconnect is for good).
    let (mut ws, open) = ws_open(c.addr(0)).await;
    let sid = open["sid"].as_str().expect("sid").to_owned();
    ws_send(&mut ws, "40").await;
    let answer = ws_expect(&mut ws, "40{").await;
    let first: serde_json::Value =
        serde_json::from_str(answer.trim_start_matches("40")).expect("json");
    ws_expect(&mut ws, "42[\"auth\"").await;
    api[2]
        .emit(emit(to_sid(&sid), "bye", "[1]"))
        .await
        .expect("emit");
    api[1]
        .disconnect(DisconnectRequest {
            namespace: "/".into(),
            target: to_sid(&sid),
            reason: "kicked".into(),
            close_session: false,
        })
        .await
        .expect("disconnect");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let text = ws_text(&mut ws).await.expect("websocket closed");
        if text != "2" {
            seen.push(text);
        }
    }
    assert_eq!(without_offset(&seen[0], "42"), "42[\"bye\",1]", "{seen:?}");
    assert_eq!(seen[1], "42[\"ringway:disconnect\",\"kicked\"]", "{seen:?}");
    assert_eq!(seen[2], "41", "{seen:?}");
    let offset: serde_json::Value =
        serde_json::from_str(seen[0].trim_start_matches("42")).expect("json");
    let auth = serde_json::json!({"pid": first["pid"], "offset": offset[2]});
    let (mut again, _) = ws_open(c.addr(1)).await;
    ws_send(&mut again, &format!("40{auth}")).await;
    let answer = ws_expect(&mut again, "40{").await;
    let answer: serde_json::Value =
        serde_json::from_str(answer.trim_start_matches("40")).expect("json");
    assert_ne!(
        answer["sid"], first["sid"],
        "recovered after a server disconnect"
    );
    assert_ne!(answer["pid"], first["pid"]);
}

/// Polls until a packet that `wanted` accepts arrives, and returns it.
async fn poll_for(p: &Polling, wanted: impl Fn(&str) -> bool) -> String {
    for _ in 0..20 {
        if let Some(found) = p.next_non_ping().await.into_iter().find(|x| wanted(x)) {
            return found;
        }
    }
    panic!("the packet did not come");
}

/// An EVENT that asks for an ack.
fn asks_ack(packet: &str) -> bool {
    packet
        .strip_prefix("42")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The ack id and arguments of an EVENT packet `42<id>[...]`.
fn ack_id(packet: &str) -> (u64, &str) {
    let rest = packet.strip_prefix("42").expect("an event");
    let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    (rest[..digits].parse().expect("an ack id"), &rest[digits..])
}

fn question(sid: &str, text: &str) -> EmitWithAckRequest {
    EmitWithAckRequest {
        namespace: "/".into(),
        sid: sid.to_owned(),
        event: "question".into(),
        args_json: format!("[\"{text}\"]"),
        attachments: vec![],
        timeout_ms: 10_000,
    }
}

#[tokio::test]
async fn an_ack_pending_across_a_handoff_reaches_its_waiter() {
    let (c, api) = start().await;
    let (n1, n3) = (c.addr(0), c.addr(2));
    // A polling session owned by node 1.
    let p = Polling::open(n1, "/socket.io/").await;
    p.send("40").await;
    poll_for(&p, |x| x.starts_with("40{\"sid\"")).await;

    // An emit with ack made by node 1 (the call taken by node 2), asked
    // over polling and not answered yet.
    let call = {
        let mut api = api[1].clone();
        let sid = p.sid.clone();
        tokio::spawn(async move { api.emit_with_ack(question(&sid, "first?")).await })
    };
    let asked = poll_for(&p, asks_ack).await;
    let (first, args) = ack_id(&asked);
    assert_eq!(args, "[\"question\",\"first?\"]");

    // The WebSocket upgrade lands on node 3: the session moves there.
    let mut ws = p.on(n3).upgrade().await;

    // Answered on node 3: the waiter on node 1 gets it.
    ws_send(&mut ws, &format!("43{first}[\"one\"]")).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call returns")
        .expect("task")
        .expect("the ack made before the move is answered")
        .into_inner();
    assert_eq!(answer.args_json, "[\"one\"]");

    // An emit with ack after the move is made by node 3, with the next id.
    let call = {
        let mut api = api[0].clone();
        let sid = p.sid.clone();
        tokio::spawn(async move { api.emit_with_ack(question(&sid, "second?")).await })
    };
    let asked = ws_expect(&mut ws, "42").await;
    let (second, args) = ack_id(&asked);
    assert_eq!(args, "[\"question\",\"second?\"]");
    assert_eq!(second, first + 1, "ack ids go on after the move");
    // The first id answered again: nobody waits for it any more.
    ws_send(&mut ws, &format!("43{first}[\"again\"]")).await;
    ws_send(&mut ws, &format!("43{second}[\"two\"]")).await;
    let answer = call
        .await
        .expect("task")
        .expect("the ack made after the move is answered")
        .into_inner();
    assert_eq!(answer.args_json, "[\"two\"]");
    nothing_more(&mut ws).await;
}
