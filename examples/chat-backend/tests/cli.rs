//! The `chat-backend` binary on its own (no gateway): bad flags, the ready
//! line, and the Upstream hooks called directly. With no gateway to push
//! through, events ack a delivery failure instead of hanging.
//!
//! (Also what makes `cargo test --workspace` / `cargo nextest run
//! --workspace` build the binary, which the gateway's cluster test
//! `gateway/tests/examples.rs` starts.)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ringway_proto::v1::connect_reply::Decision;
use ringway_proto::v1::upstream_client::UpstreamClient;
use ringway_proto::v1::{ConnectRequest, DisconnectNotice, EventRequest};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_chat-backend");

struct Backend {
    child: Child,
    addr: String,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Backend {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start chat-backend");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("chat-backend listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("chat-backend did not report its address");
    Backend { child, addr }
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["--gateway", "127.0.0.1:1", "--api-token", ""][..],
        &["--gateway", "https://gw:7200", "--api-token", "t"][..],
        &["--gateway", "127.0.0.1:1"][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("CHAT_API_TOKEN")
            .output()
            .expect("run chat-backend");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

fn connect(auth: Value) -> ConnectRequest {
    ConnectRequest {
        sid: "S1".into(),
        namespace: "/".into(),
        auth_json: auth.to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn hooks_answer_without_a_gateway() {
    // Nothing listens on port 1: every Push call fails at once.
    let backend = start(&[
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        "127.0.0.1:1",
        "--api-token",
        "t",
    ]);
    let mut client = UpstreamClient::connect(format!("http://{}", backend.addr))
        .await
        .expect("connect to the backend");

    for auth in [
        json!({}),
        json!({"name": ""}),
        json!({"name": 7}),
        json!({"name": "x".repeat(33)}),
    ] {
        let reply = client
            .on_connect(connect(auth.clone()))
            .await
            .expect("OnConnect")
            .into_inner();
        match reply.decision {
            Some(Decision::Deny(deny)) => {
                assert_eq!(
                    deny.message,
                    "auth.name must be a non-empty string of at most 32 characters"
                );
                let data: Value = serde_json::from_str(&deny.data_json).expect("data json");
                assert_eq!(data, json!({"field": "name", "max": 32}));
            }
            other => panic!("{auth}: expected a deny, got {other:?}"),
        }
    }

    let reply = client
        .on_connect(connect(json!({"name": "alice"})))
        .await
        .expect("OnConnect")
        .into_inner();
    match reply.decision {
        Some(Decision::Allow(allow)) => {
            assert_eq!(allow.user, "alice");
            assert_eq!(allow.rooms, ["lobby"]);
        }
        other => panic!("expected an allow, got {other:?}"),
    }

    let event = |name: &str, args: Value, wants_ack: bool| EventRequest {
        sid: "S1".into(),
        namespace: "/".into(),
        user: "alice".into(),
        event: name.into(),
        args_json: args.to_string(),
        wants_ack,
        socket_id: "K1".into(),
        ..Default::default()
    };
    let ack = |json: &str| -> Value { serde_json::from_str(json).expect("ack json") };

    // Refused before any push: a clear error in the ack.
    let reply = client
        .on_event(event("dance", json!([]), true))
        .await
        .expect("OnEvent")
        .into_inner();
    let got = ack(&reply.ack_args_json);
    assert_eq!(got[0]["ok"], json!(false));
    assert!(
        got[0]["error"].as_str().unwrap().contains("unknown event"),
        "{got}"
    );
    let reply = client
        .on_event(event("say", json!([{"text": ""}]), true))
        .await
        .expect("OnEvent")
        .into_inner();
    assert_eq!(ack(&reply.ack_args_json)[0]["ok"], json!(false));

    // The push fails (no gateway): the ack says so.
    let reply = client
        .on_event(event("say", json!([{"text": "hi"}]), true))
        .await
        .expect("OnEvent")
        .into_inner();
    let got = ack(&reply.ack_args_json);
    assert_eq!(got[0]["ok"], json!(false), "{got}");
    assert!(
        got[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("the chat could not deliver"),
        "{got}"
    );

    // No ack asked: none given.
    let reply = client
        .on_event(event("say", json!([{"text": "hi"}]), false))
        .await
        .expect("OnEvent")
        .into_inner();
    assert_eq!(reply.ack_args_json, "");

    client
        .on_disconnect(DisconnectNotice {
            sid: "S1".into(),
            namespace: "/".into(),
            user: "alice".into(),
            reason: "transport close".into(),
            ..Default::default()
        })
        .await
        .expect("OnDisconnect");
}
