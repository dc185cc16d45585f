//! Gateways run in-process through the library's `Node` (the same
//! listeners and tasks as the binary, on real sockets): where one process
//! is enough, a test needs no binary and no output parsing. (Telemetry is
//! the binary's: an in-process node has no `/metrics` series, so tests
//! that wait on metrics run the binary.)

mod common;

use std::time::Duration;

use clap::Parser;
use common::{get, ws_open, ws_send, ws_text, Polling};
use ringway_gateway::app::EchoApp;
use ringway_gateway::config::Config;
use ringway_gateway::node::Node;
use ringway_testkit::eventually;

fn config(args: &[&str]) -> Config {
    let mut all = vec!["ringway-gateway", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Config::try_parse_from(all).expect("flags")
}

async fn start(args: &[&str]) -> ringway_gateway::node::RunningNode {
    let config = config(args);
    let app = EchoApp::new(config.namespaces.clone(), &config.node_id());
    Node::new(config, app)
        .start()
        .await
        .expect("the node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_node_serves_both_transports_and_stops_on_request() {
    let node = start(&[]).await;
    let addr = node.addr.to_string();
    assert_eq!(get(&addr, "/healthz").await.status, 200);

    // Polling, then WebSocket, as the official clients do.
    let p = Polling::open(&addr, "/socket.io/").await;
    p.send("40").await;
    let connected = p.packets().await;
    assert!(connected[0].starts_with("40{\"sid\""), "{connected:?}");
    let (mut ws, _) = ws_open(&addr).await;
    ws_send(&mut ws, "40").await;
    let answer = ws_text(&mut ws).await.expect("CONNECT answer");
    assert!(answer.starts_with("40{\"sid\""), "{answer}");
    ws_send(&mut ws, r#"42["message","hi"]"#).await;
    let mut echoed = false;
    for _ in 0..4 {
        let text = ws_text(&mut ws).await.expect("a packet");
        if text == r#"42["message-back","hi"]"# {
            echoed = true;
            break;
        }
    }
    assert!(echoed, "no echo");

    // Stopping drains: the WebSocket's client is told (the connection
    // ends), and the port is closed once the node has stopped.
    let stopping = tokio::spawn(node.shutdown());
    // Whatever is still queued (the close packet among it), then the end.
    while ws_text(&mut ws).await.is_some() {}
    stopping.await.expect("task").expect("stops cleanly");
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_sessions_and_answers_not_ready() {
    let node = start(&["--drain-delay", "2000"]).await;
    let addr = node.addr.to_string();
    assert_eq!(get(&addr, "/readyz").await.status, 200);
    let stopping = tokio::spawn(node.shutdown());
    eventually(
        Duration::from_secs(10),
        "readyz to say draining",
        || async { get(&addr, "/readyz").await.status == 503 },
    )
    .await;
    let refused = get(&addr, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.text(), r#"{"code":3,"message":"Server draining"}"#);
    stopping.await.expect("task").expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_in_process_nodes_are_independent() {
    let (a, b) = (start(&[]).await, start(&[]).await);
    assert_ne!(a.addr, b.addr);
    let on_a = Polling::open(&a.addr.to_string(), "/socket.io/").await;
    // A node alone knows only its own sessions.
    let unknown = get(
        &b.addr.to_string(),
        &format!("/socket.io/?EIO=4&transport=polling&sid={}", on_a.sid),
    )
    .await;
    assert_eq!(unknown.status, 400);
    a.shutdown().await.expect("a stops");
    assert_eq!(get(&b.addr.to_string(), "/healthz").await.status, 200);
    b.shutdown().await.expect("b stops");
}
