//! Redis in each mode Ringway takes, with real servers: a 3-master Redis
//! Cluster, a primary with a replica behind Sentinel (and its failover),
//! and one server that speaks only TLS with a password and client
//! certificates. Gateways and the coordinator run as processes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{push_client, redis_flags, Cluster, ClusterOn};
use common::{
    connect_as, connect_ws, get, next_event, wait_sample, ws_connect_main, ws_expect, ws_send,
    Polling, Ws,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use ringway_proto::v1::{target, EmitRequest, Target};
use ringway_testkit::eventually;
use ringway_testkit::redis::{cli, RedisCluster, RedisSentinel, RedisServer};

const TOKEN: &str = "redis-modes-token";
const JWT_SECRET: &str = "redis-modes-jwt";

/// An echo round trip (the answer may carry its recovery offset).
async fn echo(ws: &mut Ws, text: &str) {
    ws_send(ws, &format!("42[\"message\",\"{text}\"]")).await;
    let back = ws_expect(ws, "42[\"message-back\"").await;
    let want = format!("42[\"message-back\",\"{text}\"");
    assert!(back.starts_with(&want), "{back}");
}

/// Polls (answering pings) until a packet starting with `prefix` comes.
async fn poll_for(p: &Polling, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "waited for {prefix}");
        if let Some(found) = p
            .next_non_ping()
            .await
            .into_iter()
            .find(|g| g.starts_with(prefix))
        {
            return found;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_serves_polling_upgrades_and_push_with_keys_spread() {
    let redis = RedisCluster::start(3, 0);
    let c = ClusterOn::start(
        3,
        &redis.flags(),
        &["--api-token", TOKEN, "--recovery-window", "120000"],
    )
    .await;

    // Non-sticky polling: one session, its requests on every node.
    let p = Polling::open(c.addr(0), "/socket.io/").await;
    p.on(c.addr(1)).send("40").await;
    poll_for(&p.on(c.addr(2)), "40{\"sid\"").await;
    p.on(c.addr(2)).send("42[\"message\",\"polled\"]").await;
    poll_for(&p.on(c.addr(1)), "42[\"message-back\",\"polled\"").await;

    // An upgrade on another node hands the session off.
    let q = Polling::open(c.addr(0), "/socket.io/").await;
    q.on(c.addr(0)).send("40").await;
    poll_for(&q.on(c.addr(0)), "40{\"sid\"").await;
    let mut upgraded = q.on(c.addr(2)).upgrade().await;
    echo(&mut upgraded, "upgraded").await;

    // The Push API reaches a session on another node (recovery on: the
    // emit goes through the log, on the cluster).
    let (mut ws, sid) = ws_connect_main(c.addr(1)).await;
    let mut push = push_client(c.nodes[0].api.as_deref().expect("api"), Some(TOKEN)).await;
    push.emit(EmitRequest {
        target: Some(Target {
            to: Some(target::To::Sid(sid.clone())),
            ..Target::default()
        }),
        event: "pushed".into(),
        args_json: "[1]".into(),
        ..EmitRequest::default()
    })
    .await
    .expect("push");
    let got = ws_expect(&mut ws, "42[\"pushed\"").await;
    assert!(got.starts_with("42[\"pushed\",1,\""), "{got}");

    // Sessions' keys land on every master, none holding most of them.
    let mut sessions = Vec::new();
    for i in 0..60 {
        sessions.push(Polling::open(c.addr(i % 3), "/socket.io/").await);
    }
    let keys = eventually(Duration::from_secs(10), "the sessions' keys", || async {
        let keys = redis.keys_per_master();
        (keys.iter().sum::<u64>() >= 60).then_some(keys)
    })
    .await;
    let total: u64 = keys.iter().sum();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for n in &keys {
        assert!(
            (*n as f64) <= 0.6 * total as f64,
            "one master holds {n} of {total} keys: {keys:?}"
        );
    }
}

/// Users are found through the registry (`{prefix}:user:...`, a key per
/// user): on a Redis Cluster too, and their entries go when they leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_finds_users_through_the_registry() {
    let redis = RedisCluster::start(3, 0);
    let c = ClusterOn::start(
        3,
        &redis.flags(),
        &["--api-token", TOKEN, "--jwt-hs256-secret", JWT_SECRET],
    )
    .await;
    let mut push = push_client(c.nodes[0].api.as_deref().expect("api"), Some(TOKEN)).await;
    // A user on two nodes is found through the registry, on the cluster.
    let (mut carol1, _) = connect_as(c.addr(1), JWT_SECRET, "carol").await;
    let (mut carol2, _) = connect_as(c.addr(2), JWT_SECRET, "carol").await;
    let reply = push
        .emit(EmitRequest {
            target: Some(Target {
                to: Some(target::To::User("carol".into())),
                ..Target::default()
            }),
            event: "dm".into(),
            args_json: "[]".into(),
            ..EmitRequest::default()
        })
        .await
        .expect("push to a user")
        .into_inner();
    assert_eq!((reply.sockets, reply.nodes), (2, 2), "{reply:?}");
    for ws in [&mut carol1, &mut carol2] {
        ws_expect(ws, "42[\"dm\"").await;
    }
    // Her entry is on the master of its slot (the others redirect).
    let key = "ringway:user:1:/:carol";
    let fields = || -> Vec<String> {
        redis
            .masters()
            .iter()
            .filter_map(|m| m.command(&["HLEN", key]))
            .filter(|reply| !reply.starts_with("-MOVED"))
            .collect()
    };
    assert_eq!(fields(), vec![":2".to_owned()]);
    drop((carol1, carol2));
    // Her sockets gone, the nodes take themselves out of it.
    eventually(Duration::from_secs(10), "carol's entry to go", || async {
        fields() == vec![":0".to_owned()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_sessions_and_new_ones_open() {
    let mut redis = RedisSentinel::start();
    let c = ClusterOn::start(2, &redis.flags(), &["--recovery-window", "120000"]).await;
    let (mut a, _) = ws_connect_main(c.addr(0)).await;
    let (mut b, sid_b) = ws_connect_main(c.addr(1)).await;
    echo(&mut a, "before").await;

    // The primary dies; the Sentinel promotes the replica.
    let old = redis.primary.port;
    redis.primary.stop();
    eventually(
        Duration::from_secs(30),
        "the Sentinel to fail over",
        || async { redis.primary_port().is_some_and(|p| p != old) },
    )
    .await;
    assert!(redis.sentinel_alive());
    // The coordinator follows the new primary too: still acting.
    eventually(
        Duration::from_secs(20),
        "the coordinator to act",
        || async { get(&c.coordinator.http, "/readyz").await.status == 200 },
    )
    .await;
    // Established sessions were served all along, and still are.
    echo(&mut a, "during").await;
    echo(&mut b, "after").await;
    // Every node takes new sessions on the new primary, and registers
    // them there (the refresh writes again what the old one did not
    // replicate).
    for i in 0..2 {
        eventually(Duration::from_secs(20), "new sessions to open", || async {
            let resp = get(c.addr(i), "/readyz").await;
            resp.status == 200 && resp.text() == "ready"
        })
        .await;
        let (mut fresh, _) = ws_connect_main(c.addr(i)).await;
        echo(&mut fresh, "fresh").await;
    }
    eventually(
        Duration::from_secs(20),
        "the registry on the new primary",
        || async { redis.replica.get(&format!("ringway:sid:{sid_b}")).is_some() },
    )
    .await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files: (ca, server cert, server key, client cert, client key).
fn certificates(dir: &Path) -> [String; 5] {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names of their own: OpenSSL (Redis) takes a leaf named as its CA
    // for a self-signed certificate.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ringway test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost");
    let (client_cert, client_key) = leaf("ringway-client");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write a PEM");
        path.to_string_lossy().into_owned()
    };
    [
        write("ca.pem", ca.pem()),
        write("server.pem", server_cert),
        write("server.key", server_key),
        write("client.pem", client_cert),
        write("client.key", client_key),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_and_a_password_file_reach_redis() {
    let dir = std::env::temp_dir().join(format!("ringway-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let [ca, cert, key, client_cert, client_key] = certificates(&dir);
    let password = dir.join("redis-password");
    std::fs::write(&password, "s3cret-redis\n").expect("password file");
    let cli_auth = [
        "--cacert",
        &ca,
        "--cert",
        &client_cert,
        "--key",
        &client_key,
        "-a",
        "s3cret-redis",
        "--no-auth-warning",
    ];
    let redis = RedisServer::start_tls(
        &cert,
        &key,
        &ca,
        true,
        &cli_auth,
        &["--requirepass", "s3cret-redis"],
    );
    let flags: Vec<String> = [
        "--redis-url",
        &format!("rediss://127.0.0.1:{}/", redis.port),
        "--redis-ca-file",
        &ca,
        "--redis-client-cert",
        &client_cert,
        "--redis-client-key",
        &client_key,
        "--redis-password-file",
        password.to_str().expect("utf-8 path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = ClusterOn::start(2, &flags, &[]).await;
    let (mut ws, sid) = ws_connect_main(c.addr(1)).await;
    echo(&mut ws, "over tls").await;
    eventually(
        Duration::from_secs(10),
        "the session's registry entry",
        || async { redis.get(&format!("ringway:sid:{sid}")).is_some() },
    )
    .await;
    // A session of node 2 served through node 1 (the registry says where).
    let p = Polling::open(c.addr(1), "/socket.io/").await;
    p.on(c.addr(0)).send("40").await;
    poll_for(&p.on(c.addr(0)), "40{\"sid\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_redis_lost_after_a_node_read_them_start_a_new_log_generation() {
    let c = Cluster::start(1, &["--recovery-window", "120000"]).await;
    let (mut ws, first) = connect_ws(c.addr(0), "{}").await;
    // The echo application's first event carries its offset: this node
    // read that entry from the log.
    let offset = next_event(&mut ws).await[2].clone();
    let gen = c
        .redis
        .get("ringway:{log}:gen")
        .expect("the log's generation");
    // The log loses what the node read, as a failover to a replica that
    // had not received it would.
    c.redis.command(&["DEL", "ringway:{log}"]);
    eventually(Duration::from_secs(10), "a new log generation", || async {
        c.redis.get("ringway:{log}:gen").is_some_and(|g| g != gen)
    })
    .await;
    // A recovery from before the loss is a fresh socket, not a replay of
    // whatever now follows that offset.
    drop(ws);
    let auth = serde_json::json!({"pid": first["pid"], "offset": offset}).to_string();
    let (_ws, answer) = connect_ws(c.addr(0), &auth).await;
    assert_ne!(answer["sid"], first["sid"], "recovered across lost entries");
    // Counted as a recovery the log no longer covers.
    wait_sample(
        c.addr(0),
        "ringway_recoveries_total{outcome=\"not_covered\"",
        |v| v >= 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_emit_waited_for_the_replica_and_one_it_did_not_says_so() {
    let primary = RedisServer::start();
    let primary_port = primary.port.to_string();
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary_port]);
    eventually(Duration::from_secs(10), "the replica to sync", || async {
        cli(replica.port, &["INFO", "replication"])
            .is_some_and(|info| info.contains("master_link_status:up"))
    })
    .await;
    let c = ClusterOn::start(
        2,
        &redis_flags(&primary.url()),
        &[
            "--api-token",
            TOKEN,
            "--recovery-window",
            "120000",
            "--redis-wait-replicas",
            "1",
        ],
    )
    .await;
    let (mut ws, _) = ws_connect_main(c.addr(1)).await;
    let mut push = push_client(c.nodes[0].api.as_deref().expect("api"), Some(TOKEN)).await;
    let everyone = || {
        Some(Target {
            to: Some(target::To::Namespace(true)),
            ..Target::default()
        })
    };
    let emit = |event: &str| EmitRequest {
        target: everyone(),
        event: event.into(),
        args_json: "[]".into(),
        ..EmitRequest::default()
    };
    // The replica has it: durable.
    let reply = push
        .emit(emit("replicated"))
        .await
        .expect("push")
        .into_inner();
    assert!(reply.durable, "{reply:?}");
    assert_eq!((reply.sockets, reply.nodes), (1, 1), "{reply:?}");
    ws_expect(&mut ws, "42[\"replicated\"").await;
    // Uncounted: the same delivery and durability, no call to the other
    // node (its count is not asked for).
    let local_calls = |metrics: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("ringway_peer_duration_seconds_count{")
                    && l.contains("method=\"local\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = local_calls(&get(c.addr(0), "/metrics").await.text());
    let reply = push
        .emit(EmitRequest {
            skip_count: true,
            ..emit("uncounted")
        })
        .await
        .expect("push")
        .into_inner();
    assert!(reply.durable, "{reply:?}");
    assert_eq!((reply.sockets, reply.nodes), (0, 0), "{reply:?}");
    ws_expect(&mut ws, "42[\"uncounted\"").await;
    let after = local_calls(&get(c.addr(0), "/metrics").await.text());
    assert_eq!(after, before, "an uncounted emit called another node");
    // Without the replica the append is not confirmed in time: delivered
    // all the same, and the caller is told it is not durable.
    replica.stop();
    eventually(
        Duration::from_secs(10),
        "the primary to lose its replica",
        || async {
            cli(primary.port, &["INFO", "replication"])
                .is_some_and(|info| info.contains("connected_slaves:0"))
        },
    )
    .await;
    let reply = push.emit(emit("alone")).await.expect("push").into_inner();
    assert!(!reply.durable, "{reply:?}");
    ws_expect(&mut ws, "42[\"alone\"").await;
}
