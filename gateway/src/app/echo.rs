//! The built-in `echo` application (docs/ECHO_APP.md): what the official
//! protocol test suites expect, plus the events the interop tests, the demo
//! and the load-test tool use.

use std::time::Duration;

use serde_json::Value;

use crate::engineio::{EngineHandler, Frame, Message, SessionRef};
use crate::socketio::{AckSender, Application, Event, Payload, SocketRef, Target};

/// How long `ask` waits for the client's ack.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EchoApp {
    namespaces: Vec<String>,
    /// This node's id, for `whoami`.
    node: String,
}

impl EchoApp {
    pub fn new(namespaces: Vec<String>, node: &str) -> EchoApp {
        EchoApp {
            namespaces,
            node: node.to_owned(),
        }
    }
}

fn ack_with(ack: Option<AckSender>, args: &Payload) {
    if let Some(ack) = ack {
        let _ = ack.send(args);
    }
}

impl Application for EchoApp {
    fn has_namespace(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == namespace)
    }

    fn on_connect(&self, socket: &SocketRef) {
        let args = Payload::from_json_array(format!("[{}]", socket.auth()));
        let _ = socket.emit("auth", &args);
    }

    fn on_event(&self, socket: &SocketRef, event: Event, ack: Option<AckSender>) {
        let Event { name, args } = event;
        match name.as_str() {
            "message" => {
                let _ = socket.emit("message-back", &args);
            }
            "message-with-ack" => ack_with(ack, &args),
            "echo" => {
                let _ = socket.emit("echo", &args);
                ack_with(ack, &args);
            }
            "join" | "leave" => {
                let done = Payload::from_json_array("[true]".into());
                let Some(room) = args.first_str() else {
                    return ack_with(ack, &done);
                };
                if name == "leave" {
                    socket.leave(&room);
                    return ack_with(ack, &done);
                }
                match socket.join(&room) {
                    // The room is new on this node: ack once every node
                    // knows, so a broadcast sent after the ack reaches us.
                    Ok(Some(receipt)) => {
                        tokio::spawn(async move {
                            receipt.await;
                            ack_with(ack, &done);
                        });
                    }
                    Ok(None) => ack_with(ack, &done),
                    // A reserved name, a name too long, too many rooms.
                    Err(err) => {
                        let error = serde_json::json!([{ "error": err.to_string() }]);
                        ack_with(ack, &Payload::from_json_array(error.to_string()));
                    }
                }
            }
            "broadcast" => {
                let values = args.values();
                let Some(Value::Object(req)) = values.first() else {
                    return;
                };
                let Some(room) = req.get("room").and_then(Value::as_str) else {
                    return;
                };
                let msg = req.get("msg").cloned().unwrap_or(Value::Null);
                let reached = socket.namespace().emit(
                    &Target::room(room),
                    "message",
                    &Payload::from_values(&[msg]),
                );
                ack_with(ack, &Payload::from_json_array(format!("[{reached}]")));
            }
            "ask" => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    match socket.emit_with_ack("question", &args, ASK_TIMEOUT).await {
                        Ok(answer) => {
                            let _ = socket.emit("answer", &answer);
                        }
                        Err(_) => {
                            let _ = socket.emit("answer-timeout", &Payload::empty());
                        }
                    }
                });
            }
            "whoami" => {
                // Where the session is held now (it moves with a handoff).
                let me = serde_json::json!({
                    "node": self.node,
                    "sid": socket.session().sid().to_string(),
                    "transport": socket.session().transport().as_str(),
                });
                ack_with(ack, &Payload::from_values(&[me]));
            }
            "server-disconnect" => socket.disconnect(),
            "server-close" => socket.close_session(),
            _ => {}
        }
    }
}

/// The plain Engine.IO endpoint of the echo application: every message is
/// sent back as it came.
#[derive(Default)]
pub struct EngineEcho;

impl EngineHandler for EngineEcho {
    type Data = ();
    type Snapshot = ();

    fn on_open(&self, _session: &SessionRef<()>) {}

    fn on_message(&self, session: &SessionRef<()>, message: Message<'_>) {
        let frame = match message {
            Message::Text(text) => Frame::message(text),
            Message::Binary(data) => Frame::binary(data),
        };
        let _ = session.send(frame);
    }

    fn on_close(&self, _session: &SessionRef<()>, _reason: crate::engineio::CloseReason) {}
}
