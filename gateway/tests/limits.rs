//! Limits and faults against a real gateway process: clients that never
//! read, handshake floods, oversized frames, SIGTERM. Other sessions must
//! go on being served through all of them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// Whether the server still knows `sid` (a websocket session answers a
/// polling request with "Bad request" while alive, "Session ID unknown"
/// once gone).
async fn alive(addr: &str, sid: &str) -> bool {
    let resp = get(
        addr,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .await;
    !resp.text().contains("Session ID unknown")
}

async fn connected_ws(addr: &str) -> (Ws, String) {
    let (mut ws, open) = ws_open(addr).await;
    ws_send(&mut ws, "40").await;
    assert!(ws_text(&mut ws).await.unwrap().starts_with("40{"));
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some(r#"42["auth",{}]"#));
    (ws, open["sid"].as_str().unwrap().to_owned())
}

async fn echo_round_trip(ws: &mut Ws, text: &str) -> Duration {
    let started = Instant::now();
    ws_send(ws, &format!(r#"42["echo","{text}"]"#)).await;
    assert_eq!(ws_text(ws).await, Some(format!(r#"42["echo","{text}"]"#)));
    started.elapsed()
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_and_others_are_served() {
    let gw = Gateway::start(&["--max-payload", "100000", "--max-queued-bytes", "300000"]);
    let (mut healthy, _) = connected_ws(&gw.addr).await;
    let (mut stalled, sid) = connected_ws(&gw.addr).await;
    let big = "x".repeat(90_000);
    let frame = format!(r#"42["echo","{big}"]"#);
    // Never read: the echoes pile up in the kernel buffers, then in the
    // session queue, which is bounded. Bounded loop: at most ~90 MB sent.
    let mut sent = 0;
    for _ in 0..1000 {
        match tokio::time::timeout(
            Duration::from_secs(2),
            stalled.send(Message::text(frame.clone())),
        )
        .await
        {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
        if sent % 20 == 0 && !alive(&gw.addr, &sid).await {
            break;
        }
    }
    let what = format!("the stalled session to be closed ({sent} sent)");
    ringway_testkit::eventually(Duration::from_secs(10), &what, || async {
        !alive(&gw.addr, &sid).await
    })
    .await;
    // The healthy session did not notice.
    let rtt = echo_round_trip(&mut healthy, "still-fine").await;
    assert!(rtt < Duration::from_secs(1), "{rtt:?}");
}

#[tokio::test]
async fn a_polling_client_that_stops_polling_is_disconnected() {
    let gw = Gateway::start(&["--max-payload", "100000", "--max-queued-bytes", "300000"]);
    let s = Polling::open(&gw.addr, "/socket.io/").await;
    s.send("40").await;
    let big = "y".repeat(90_000);
    // POST events whose echoes are never fetched.
    let mut closed = false;
    for _ in 0..20 {
        let resp = s.post(&format!(r#"42["echo","{big}"]"#)).await;
        if resp.status != 200 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the queue was never bounded");
    let resp = s.get().await;
    assert_eq!(resp.text(), r#"{"code":1,"message":"Session ID unknown"}"#);
}

#[tokio::test]
async fn handshake_flood_leaves_other_sessions_served_and_is_cleaned_up() {
    // A flood from many addresses, as far as the per-address limits go
    // (they are off here; tests/security.rs floods from one address).
    let gw = Gateway::start(&[
        "--connect-timeout",
        "1000",
        "--max-sessions-per-ip",
        "0",
        "--handshake-rate-per-ip",
        "0",
    ]);
    let (mut established, _) = connected_ws(&gw.addr).await;
    let mut sids = Vec::new();
    for _batch in 0..10 {
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let addr = gw.addr.clone();
            tasks.push(tokio::spawn(async move {
                get(&addr, "/socket.io/?EIO=4&transport=polling").await
            }));
        }
        for t in tasks {
            let resp = t.await.unwrap();
            assert_eq!(resp.status, 200);
            let open: serde_json::Value = serde_json::from_str(&resp.text()[1..]).unwrap();
            sids.push(open["sid"].as_str().unwrap().to_owned());
        }
        let rtt = echo_round_trip(&mut established, "during-flood").await;
        assert!(rtt < Duration::from_secs(2), "{rtt:?}");
    }
    assert_eq!(sids.len(), 2000);
    // Sessions that never join a namespace are closed after the connect
    // timeout, so a flood does not hold memory: as from the reference, a
    // polling session closed between two GETs answers the next one with
    // `6` and `1` (closing), then its sid is unknown.
    // fixed: the connect timeout passing is what is tested (a GET before
    // it would be held as a long-poll).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for sid in sids.iter().step_by(97) {
        let query = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        assert_eq!(get(&gw.addr, &query).await.text(), "6\u{1e}1");
        assert_eq!(
            get(&gw.addr, &query).await.text(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
    }
    echo_round_trip(&mut established, "after-flood").await;
}

#[tokio::test]
async fn an_oversized_websocket_message_closes_only_its_session() {
    let gw = Gateway::start(&["--max-payload", "1000"]);
    let (mut other, _) = connected_ws(&gw.addr).await;
    let (mut ws, sid) = connected_ws(&gw.addr).await;
    // Exactly at the limit is accepted.
    let at_limit = format!(r#"42["echo","{}"]"#, "a".repeat(1000 - 13));
    assert_eq!(at_limit.len(), 1000);
    ws_send(&mut ws, &at_limit).await;
    assert_eq!(ws_text(&mut ws).await.as_deref(), Some(at_limit.as_str()));
    ws_send(&mut ws, &format!(r#"42["echo","{}"]"#, "a".repeat(2000))).await;
    assert_eq!(ws_text(&mut ws).await, None);
    ringway_testkit::eventually(
        Duration::from_secs(5),
        "the session to be closed",
        || async { !alive(&gw.addr, &sid).await },
    )
    .await;
    assert!(!alive(&gw.addr, &sid).await);
    echo_round_trip(&mut other, "unaffected").await;
}

#[tokio::test]
async fn sigterm_closes_every_session_and_exits() {
    let mut gw = Gateway::start(&[]);
    let (mut ws, _) = connected_ws(&gw.addr).await;
    let polling = Polling::open(&gw.addr, "/socket.io/").await;
    polling.send("40").await;
    polling.next_non_ping().await;
    let pending = {
        let addr = gw.addr.clone();
        let q = polling.query();
        tokio::spawn(async move { get(&addr, &q).await })
    };
    common::wait_poll_reached(&gw.addr, &pending).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.terminate(Duration::from_secs(5));
        (status, gw)
    });
    // The pending poll gets a close packet, the websocket a close frame.
    let pending = pending.await.unwrap();
    assert_eq!(pending.text(), "1");
    assert_eq!(ws_text(&mut ws).await, None);
    let (status, gw) = status.await.unwrap();
    let status = status.expect("gateway did not exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(&gw.addr).await.is_err());
}
