//! End-to-end tests of the coordinator: a real `redis-server`, the real
//! `ringway-coordinator` binary, and the tonic client the gateways use.
//! Waits poll with generous bounds (the machine may be loaded); only the
//! bounds the design promises are asserted tightly.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringway_coordinator::proto::{HeartbeatRequest, LeaveRequest, MemberState};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_two_nodes_watch_sees_epochs_grow() {
    let redis = RedisServer::start();
    let coord = Coordinator::start(&redis.url(), RELAXED);
    let mut client = coord.client().await;
    let mut watcher = Watcher::open(&mut client, "test").await;
    let first = watcher.wait_for(WAIT, "a first view", |_| true).await;
    assert!(first.members.is_empty());

    let a = client
        .join(join_req("a", 1))
        .await
        .expect("join a")
        .into_inner();
    assert_eq!(a.lease_ttl_ms, 3000);
    assert_eq!(a.heartbeat_interval_ms, 500);
    assert_ne!(a.lease_id, 0);
    let va = a.view.expect("a view in the join reply");
    assert_eq!(ids(&va), ["a"]);
    assert!(va.epoch > first.epoch);

    let b = client
        .join(join_req("b", 1))
        .await
        .expect("join b")
        .into_inner();
    let vb = b.view.expect("view");
    assert!(vb.epoch > va.epoch);
    assert_eq!(ids(&vb), ["a", "b"]);
    let m = &vb.members[1];
    assert_eq!(m.grpc_addr, "b.local:7001");
    assert_eq!(m.http_addr, "b.local:3000");
    assert_eq!(m.state, MemberState::Active as i32);
    assert_eq!(m.joined_epoch, vb.epoch);
    assert_eq!(m.incarnation, 1);

    let seen = watcher
        .wait_for(WAIT, "members a and b", |v| ids(v) == ["a", "b"])
        .await;
    assert_eq!(seen.epoch, vb.epoch);
    let epochs: Vec<u64> = watcher.history().iter().map(|v| v.epoch).collect();
    assert!(
        epochs.windows(2).all(|w| w[0] < w[1]),
        "epochs must grow: {epochs:?}"
    );

    // Joining again unchanged (with its proof): new lease, same epoch.
    let mut rejoin = join_req("a", 1);
    rejoin.proof = a.member_token.clone();
    let again = client.join(rejoin).await.expect("rejoin").into_inner();
    assert_ne!(again.lease_id, a.lease_id);
    assert_eq!(again.view.expect("view").epoch, vb.epoch);

    // A second watcher gets the current view at once.
    let mut late = Watcher::open(&mut client, "late").await;
    let now = late.wait_for(WAIT, "the current view", |_| true).await;
    assert_eq!(now.epoch, vb.epoch);
    assert_eq!(ids(&now), ["a", "b"]);

    // Bad requests.
    for bad in [
        join_req("", 1),
        {
            let mut r = join_req("c", 1);
            r.grpc_addr.clear();
            r
        },
        {
            let mut r = join_req("c", 1);
            r.http_addr.clear();
            r
        },
    ] {
        let err = client.join(bad).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    // The view is persisted.
    eventually(WAIT, "view persisted", || async {
        redis
            .stored_view()
            .await
            .is_some_and(|v| v.epoch == vb.epoch)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_member_and_a_silent_one_lapses() {
    let redis = RedisServer::start();
    let timing = FAST;
    let coord = Coordinator::start(&redis.url(), timing);
    let mut client = coord.client().await;
    let mut watcher = Watcher::open(&mut client, "test").await;

    let a = client
        .join(join_req("a", 1))
        .await
        .expect("join a")
        .into_inner();
    let b = client
        .join(join_req("b", 1))
        .await
        .expect("join b")
        .into_inner();
    let joined_epoch = b.view.expect("view").epoch;

    // Heartbeat both for several TTLs.
    let start = Instant::now();
    let mut last_b_sent = Instant::now();
    let mut last_b_answered = Instant::now();
    let mut pace = ringway_testkit::pace(Duration::from_millis(timing.interval / 2));
    while start.elapsed() < Duration::from_millis(3 * timing.ttl) {
        pace.tick().await;
        for (node, lease) in [("a", a.lease_id), ("b", b.lease_id)] {
            let sent = Instant::now();
            let hb = client
                .heartbeat(HeartbeatRequest {
                    node_id: node.into(),
                    lease_id: lease,
                    sessions: 7,
                    ..Default::default()
                })
                .await
                .expect("heartbeat")
                .into_inner();
            assert!(hb.known, "{node} lost its lease while heartbeating");
            assert_eq!(hb.epoch, joined_epoch);
            if node == "b" {
                last_b_sent = sent;
                last_b_answered = Instant::now();
            }
        }
    }
    assert_eq!(ids(&watcher.latest().expect("a view")), ["a", "b"]);
    assert_eq!(watcher.latest().expect("a view").epoch, joined_epoch);

    // Now only "a" heartbeats; "b" must go within ttl + one interval.
    let keep_a = {
        let mut client = client.clone();
        let lease = a.lease_id;
        tokio::spawn(async move {
            let mut pace = ringway_testkit::pace(Duration::from_millis(timing.interval / 2));
            loop {
                pace.tick().await;
                let _ = client
                    .heartbeat(HeartbeatRequest {
                        node_id: "a".into(),
                        lease_id: lease,
                        sessions: 1,
                        ..Default::default()
                    })
                    .await;
            }
        })
    };
    let view = watcher
        .wait_for(WAIT, "b removed", |v| ids(v) == ["a"])
        .await;
    let since_sent = last_b_sent.elapsed();
    let since_answered = last_b_answered.elapsed();
    keep_a.abort();
    assert!(view.epoch > joined_epoch);
    assert!(
        since_sent >= Duration::from_millis(timing.ttl),
        "b removed before its lease lapsed ({since_sent:?})"
    );
    // ttl + one interval, plus slack for a loaded machine.
    let bound = Duration::from_millis(timing.ttl + timing.interval) + Duration::from_millis(700);
    assert!(
        since_answered <= bound,
        "b removed {since_answered:?} after its last heartbeat (bound {bound:?})"
    );
    // Its lease is gone.
    let hb = client
        .heartbeat(HeartbeatRequest {
            node_id: "b".into(),
            lease_id: b.lease_id,
            sessions: 0,
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!hb.known);
    assert_eq!(hb.epoch, view.epoch);
    // Unknown nodes are not known either (and not an error).
    let hb = client
        .heartbeat(HeartbeatRequest {
            node_id: "nobody".into(),
            lease_id: 1,
            sessions: 0,
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!hb.known);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_removes_at_once() {
    let redis = RedisServer::start();
    let coord = Coordinator::start(&redis.url(), RELAXED);
    let mut client = coord.client().await;
    let mut watcher = Watcher::open(&mut client, "test").await;
    let a = client
        .join(join_req("a", 1))
        .await
        .expect("join")
        .into_inner();
    let b = client
        .join(join_req("b", 1))
        .await
        .expect("join")
        .into_inner();
    let before = b.view.expect("view").epoch;

    let err = client
        .leave(LeaveRequest {
            node_id: "a".into(),
            lease_id: a.lease_id.wrapping_add(1),
        })
        .await
        .expect_err("wrong lease");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let asked = Instant::now();
    let left = client
        .leave(LeaveRequest {
            node_id: "a".into(),
            lease_id: a.lease_id,
        })
        .await
        .expect("leave")
        .into_inner();
    assert_eq!(left.epoch, before + 1);
    let view = watcher.wait_for(WAIT, "a gone", |v| ids(v) == ["b"]).await;
    assert_eq!(view.epoch, left.epoch);
    // Watchers hear of it well within one heartbeat interval (+ slack).
    assert!(
        asked.elapsed() < Duration::from_millis(500 + 1000),
        "{:?}",
        asked.elapsed()
    );

    // Idempotent.
    let again = client
        .leave(LeaveRequest {
            node_id: "a".into(),
            lease_id: a.lease_id,
        })
        .await
        .expect("leave again")
        .into_inner();
    assert_eq!(again.epoch, left.epoch);
    eventually(WAIT, "view persisted", || async {
        redis
            .stored_view()
            .await
            .is_some_and(|v| v.epoch == left.epoch && ids(&v) == ["b"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_continues_the_view() {
    let redis = RedisServer::start();
    let mut coord = Coordinator::start(&redis.url(), RELAXED);
    let mut client = coord.client().await;
    let a = client
        .join(join_req("a", 1))
        .await
        .expect("join")
        .into_inner();
    let b = client
        .join(join_req("b", 1))
        .await
        .expect("join")
        .into_inner();
    let c = client
        .join(join_req("c", 1))
        .await
        .expect("join")
        .into_inner();
    let before = c.view.expect("view");
    eventually(WAIT, "view persisted", || async {
        redis
            .stored_view()
            .await
            .is_some_and(|v| v.epoch == before.epoch)
    })
    .await;

    // A crash: no clean-up, its lock stays until it lapses.
    coord.kill();
    let coord = Coordinator::start(&redis.url(), RELAXED);
    let mut client = coord.client().await;
    let mut watcher = Watcher::open(&mut client, "test").await;
    let restored = watcher.wait_for(WAIT, "a view", |_| true).await;
    assert_eq!(ids(&restored), ["a", "b", "c"]);
    assert_eq!(restored.members, before.members);
    assert!(
        restored.epoch > before.epoch,
        "{} > {}",
        restored.epoch,
        before.epoch
    );

    // The old lease is unknown: the gateway must join again.
    let hb = client
        .heartbeat(HeartbeatRequest {
            node_id: "a".into(),
            lease_id: a.lease_id,
            sessions: 0,
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!hb.known);
    // Joining again unchanged, with the proof the first coordinator gave
    // (its key is in Redis), does not bump the epoch.
    let mut rejoin = join_req("a", 1);
    rejoin.proof = a.member_token.clone();
    let a2 = client.join(rejoin).await.expect("rejoin").into_inner();
    assert_eq!(a2.view.expect("view").epoch, restored.epoch);
    // Without the proof, a live member's id is refused.
    let refused = client.join(join_req("b", 2)).await.expect_err("no proof");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused}");
    // With it, a new incarnation replaces the member and bumps the epoch.
    let mut restarted = join_req("b", 2);
    restarted.proof = b.member_token.clone();
    let b2 = client.join(restarted).await.expect("rejoin").into_inner();
    let after_b = b2.view.expect("view");
    assert!(after_b.epoch > restored.epoch);

    // Keep a and b alive; c never comes back and lapses after its grace TTL.
    let keepalive = {
        let mut client = client.clone();
        let leases = [("a", a2.lease_id), ("b", b2.lease_id)];
        tokio::spawn(async move {
            let mut pace = ringway_testkit::pace(Duration::from_millis(200));
            loop {
                pace.tick().await;
                for (node, lease) in leases {
                    let _ = client
                        .heartbeat(HeartbeatRequest {
                            node_id: node.into(),
                            lease_id: lease,
                            sessions: 0,
                            ..Default::default()
                        })
                        .await;
                }
            }
        })
    };
    let view = watcher
        .wait_for(WAIT, "c lapsed", |v| ids(v) == ["a", "b"])
        .await;
    keepalive.abort();
    assert!(view.epoch > after_b.epoch);
    let epochs: Vec<u64> = watcher.history().iter().map(|v| v.epoch).collect();
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_exits_with_code_3() {
    let port = free_port();
    let mut coord = Coordinator::spawn(&format!("redis://127.0.0.1:{port}/"), FAST, &[]);
    let status = coord.wait_exit(WAIT).expect("the coordinator exits");
    assert_eq!(status.code(), Some(3), "stderr:\n{}", coord.stderr());
    // The stderr reader may lag the exit a little.
    eventually(WAIT, "error message on stderr", || {
        let err = coord.stderr();
        async move { err.contains("cannot reach Redis") && err.contains(&port.to_string()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_with_code_2() {
    let mut coord = Coordinator::spawn(
        "redis://127.0.0.1:1/",
        Timing {
            ttl: 1000,
            interval: 500,
        },
        &[],
    );
    let status = coord.wait_exit(WAIT).expect("the coordinator exits");
    assert_eq!(status.code(), Some(2));
    eventually(WAIT, "error message on stderr", || {
        let err = coord.stderr();
        async move { err.contains("--heartbeat-interval") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_while_running() {
    let mut redis = RedisServer::start();
    let mut coord = Coordinator::start(&redis.url(), RELAXED);
    let mut client = coord.client().await;
    let a = client
        .join(join_req("a", 1))
        .await
        .expect("join")
        .into_inner();
    eventually(WAIT, "view persisted", || async {
        redis.stored_view().await.is_some_and(|v| ids(&v) == ["a"])
    })
    .await;

    redis.stop();
    // RPCs answer from memory, fast.
    let t = Instant::now();
    let b = client
        .join(join_req("b", 1))
        .await
        .expect("join")
        .into_inner();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "join took {:?}",
        t.elapsed()
    );
    assert_eq!(ids(&b.view.expect("view")), ["a", "b"]);
    let mut pace = ringway_testkit::pace(Duration::from_millis(300));
    for _ in 0..5 {
        pace.tick().await;
        let t = Instant::now();
        let hb = client
            .heartbeat(HeartbeatRequest {
                node_id: "a".into(),
                lease_id: a.lease_id,
                sessions: 0,
                ..Default::default()
            })
            .await
            .expect("heartbeat")
            .into_inner();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "heartbeat took {:?}",
            t.elapsed()
        );
        assert!(hb.known);
    }
    let mut watcher = Watcher::open(&mut client, "test").await;
    watcher
        .wait_for(WAIT, "a and b", |v| ids(v) == ["a", "b"])
        .await;

    // Redis comes back empty (no persistence); a new change is persisted.
    redis.restart();
    let c = client
        .join(join_req("c", 1))
        .await
        .expect("join")
        .into_inner();
    let latest = c.view.expect("view");
    assert_eq!(ids(&latest), ["a", "b", "c"]);
    eventually(WAIT, "the new view persisted", || async {
        redis
            .stored_view()
            .await
            .is_some_and(|v| v.epoch == latest.epoch && ids(&v) == ["a", "b", "c"])
    })
    .await;
    eventually(WAIT, "the lock taken again", || async {
        redis.lock_holder().await.is_some()
    })
    .await;

    // A restarted coordinator sees it.
    coord.kill();
    let coord = Coordinator::start(&redis.url(), RELAXED);
    let mut client = coord.client().await;
    let mut watcher = Watcher::open(&mut client, "test").await;
    let view = watcher.wait_for(WAIT, "a view", |_| true).await;
    assert_eq!(ids(&view), ["a", "b", "c"]);
    assert!(view.epoch > latest.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_watches_and_exits_0() {
    let redis = RedisServer::start();
    let mut coord = Coordinator::start(&redis.url(), RELAXED);
    let mut client = coord.client().await;
    let mut watcher = Watcher::open(&mut client, "test").await;
    watcher.wait_for(WAIT, "a view", |_| true).await;
    client.join(join_req("a", 1)).await.expect("join");
    eventually(WAIT, "lock held", || async {
        redis.lock_holder().await.is_some()
    })
    .await;

    coord.terminate();
    let status = coord.wait_exit(WAIT).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", coord.stderr());
    assert!(
        watcher.wait_end(WAIT).await.is_some(),
        "the watch stream ended"
    );
    // The lock is released: the next coordinator starts at once.
    assert_eq!(redis.lock_holder().await, None);
    let stored = redis.stored_view().await.expect("a stored view");
    assert_eq!(ids(&stored), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_waits_for_the_first() {
    let redis = RedisServer::start();
    let first = Coordinator::start(&redis.url(), RELAXED);
    let mut client = first.client().await;
    let joined = client
        .join(join_req("a", 1))
        .await
        .expect("join")
        .into_inner();
    let epoch = joined.view.expect("view").epoch;
    let keepalive = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut pace = ringway_testkit::pace(Duration::from_millis(200));
            loop {
                pace.tick().await;
                let _ = client
                    .heartbeat(HeartbeatRequest {
                        node_id: "a".into(),
                        lease_id: joined.lease_id,
                        sessions: 0,
                        ..Default::default()
                    })
                    .await;
            }
        })
    };

    let mut second = Coordinator::spawn(&redis.url(), RELAXED, &[]);
    // It does not serve while the first holds the lock (which the first
    // renews every interval, far below its TTL).
    assert!(
        second
            .wait_listening(Duration::from_millis(2 * RELAXED.ttl))
            .is_none(),
        "a second coordinator served while the first was alive"
    );
    keepalive.abort();
    first.terminate();
    let addr = second
        .wait_listening(WAIT)
        .expect("the second coordinator takes over");
    let mut client = connect(addr).await;
    let mut watcher = Watcher::open(&mut client, "test").await;
    let view = watcher.wait_for(WAIT, "a view", |_| true).await;
    assert_eq!(ids(&view), ["a"]);
    assert!(view.epoch > epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stored_view_is_refused() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let _: () = redis::cmd("SET")
        .arg("ringway:membership")
        .arg("not json")
        .query_async(&mut con)
        .await
        .expect("SET");
    let mut coord = Coordinator::spawn(&redis.url(), FAST, &[]);
    let status = coord.wait_exit(WAIT).expect("the coordinator exits");
    assert_eq!(status.code(), Some(1), "stderr:\n{}", coord.stderr());
    eventually(WAIT, "error message on stderr", || {
        let err = coord.stderr();
        async move { err.contains("ringway:membership is not readable") }
    })
    .await;
    // It let go of the lock on its way out.
    assert_eq!(redis.lock_holder().await, None);
}

/// `--max-members`: a new node id past the cap is refused
/// (RESOURCE_EXHAUSTED); a member joining again is not; without the
/// cluster credential nothing is served at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_capped_and_strangers_refused() {
    let redis = RedisServer::start();
    let mut coord = Coordinator::spawn(&redis.url(), RELAXED, &["--max-members", "2"]);
    let addr = coord.wait_listening(WAIT).expect("listening");
    let mut client = connect(addr).await;
    let a = client.join(join_req("a", 1)).await.expect("a").into_inner();
    client.join(join_req("b", 1)).await.expect("b");
    let err = client.join(join_req("c", 1)).await.expect_err("c");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    let mut again = join_req("a", 1);
    again.proof = a.member_token;
    client.join(again).await.expect("a member joins again");

    let mut stranger = connect_as(addr, None).await;
    let err = stranger
        .join(join_req("d", 1))
        .await
        .expect_err("no credential");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = stranger
        .watch(ringway_coordinator::proto::WatchRequest::default())
        .await
        .expect_err("no credential");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
}
