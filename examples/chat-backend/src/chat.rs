//! The chat: who may connect (`OnConnect`), what each client event does
//! (`OnEvent`), who left (`OnDisconnect`). Everything clients receive goes
//! out through a gateway's `Push` API; the backend never holds a client
//! socket, and any gateway of the cluster reaches every client.
//!
//! Client events (the first argument is an object):
//!
//! | event | argument | what happens | ack |
//! |---|---|---|---|
//! | `say` | `{text}` | `said` `{from, room, text}` to everyone in the sender's room | `{ok, room, delivered}` |
//! | `whisper` | `{to, text}` | `whispered` `{from, to, text}` to every session of user `to` | `{ok, to, delivered}` |
//! | `join` | `{room}` | the sender's socket moves to `room`: `left` `{user, room}` to the old room, `joined` `{user, room}` to the new one | `{ok, room, from}` |
//! | `who` | none | | `{ok, room, users}` (users in the sender's room) |
//!
//! A refused or failed event acks `{ok: false, error}` (acks only go to
//! clients that asked for one).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringway_proto::v1::connect_reply::Decision;
use ringway_proto::v1::push_client::PushClient;
use ringway_proto::v1::upstream_server::Upstream;
use ringway_proto::v1::{
    target, Allow, ConnectReply, ConnectRequest, Deny, DisconnectNotice, DisconnectNoticeReply,
    EmitReply, EmitRequest, EventReply, EventRequest, RoomList, RoomsChange, SessionsRequest,
    Target,
};
use serde_json::{json, Map, Value};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

/// The room every user starts in.
pub const LOBBY: &str = "lobby";
/// Longest user name (`auth.name`), in characters.
pub const MAX_NAME: usize = 32;
/// Longest room name, in characters.
pub const MAX_ROOM: usize = 32;
/// Longest message, in characters.
pub const MAX_TEXT: usize = 2000;

/// The CONNECT_ERROR message of a refused name.
pub const BAD_NAME: &str = "auth.name must be a non-empty string of at most 32 characters";

/// Deadline of the Push calls made for a client event: shorter than the
/// gateways' default `--upstream-timeout` (5 s), so that a push that fails
/// is acked as such, not as an upstream timeout.
const PUSH_TIMEOUT: Duration = Duration::from_secs(4);
/// Deadline of the `joined`/`left` notices (best effort: they must not
/// hold up a CONNECT).
const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);

/// Adds `authorization: Bearer <token>` to every Push call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Result<Bearer, String> {
        if token.is_empty() {
            return Err("the API token is empty".into());
        }
        format!("Bearer {token}")
            .parse()
            .map(Bearer)
            .map_err(|_| "the API token must be visible ASCII".into())
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A `Push` client that authenticates.
pub type Push = PushClient<InterceptedService<Channel, Bearer>>;

/// A socket: its session id and namespace.
type SocketKey = (String, String);

/// The chat backend. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct Chat {
    push: Push,
    /// The room each known socket is in. Lost on a restart: a socket the
    /// backend does not know yet is looked up with `Push.Sessions`.
    rooms: Arc<Mutex<HashMap<SocketKey, String>>>,
}

/// What an event did (the fields of its ack), or why it was refused.
type Outcome = Result<Value, String>;

/// Checks a user name: a string of 1 to 32 characters, not only spaces,
/// without control characters.
pub fn valid_name(name: &str) -> bool {
    valid_label(name, MAX_NAME)
}

/// Checks a room name (same rules as a user name, so no hidden rooms).
pub fn valid_room(room: &str) -> bool {
    valid_label(room, MAX_ROOM)
}

fn valid_label(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

/// The ack arguments (a JSON array of one object) of an outcome.
pub fn ack_json(outcome: &Outcome) -> String {
    let mut fields = Map::new();
    match outcome {
        Ok(value) => {
            fields.insert("ok".into(), Value::Bool(true));
            if let Value::Object(more) = value {
                fields.extend(more.clone());
            }
        }
        Err(message) => {
            fields.insert("ok".into(), Value::Bool(false));
            fields.insert("error".into(), Value::String(message.clone()));
        }
    }
    Value::Array(vec![Value::Object(fields)]).to_string()
}

fn to_sid(sid: &str) -> Option<Target> {
    Some(Target {
        to: Some(target::To::Sid(sid.to_owned())),
        except_rooms: Vec::new(),
    })
}

fn to_room(room: &str) -> Option<Target> {
    Some(Target {
        to: Some(target::To::Rooms(RoomList {
            rooms: vec![room.to_owned()],
        })),
        except_rooms: Vec::new(),
    })
}

fn to_user(user: &str) -> Option<Target> {
    Some(Target {
        to: Some(target::To::User(user.to_owned())),
        except_rooms: Vec::new(),
    })
}

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// What a client is told when a Push call fails (the details go to the
/// log).
fn push_failed(call: &str, status: Status) -> String {
    warn!(call, code = ?status.code(), message = status.message(), "push call failed");
    format!("the chat could not deliver ({:?})", status.code())
}

/// A string field of the event's argument.
fn field<'a>(arg: &'a Value, name: &str) -> Result<&'a str, String> {
    arg.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing {name:?}: a string"))
}

fn text_of(arg: &Value) -> Result<&str, String> {
    let text = field(arg, "text")?;
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT {
        return Err(format!(
            "text must be a non-empty string of at most {MAX_TEXT} characters"
        ));
    }
    Ok(text)
}

impl Chat {
    pub fn new(push: Push) -> Chat {
        Chat {
            push,
            rooms: Arc::default(),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<SocketKey, String>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One emit, with the event's deadline.
    async fn emit(
        &self,
        namespace: &str,
        target: Option<Target>,
        event: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<EmitReply, Status> {
        let request = EmitRequest {
            namespace: namespace.to_owned(),
            target,
            event: event.to_owned(),
            args_json: args.to_string(),
            attachments: Vec::new(),
            volatile: false,
            skip_count: false,
        };
        Ok(self
            .push
            .clone()
            .emit(with_timeout(request, timeout))
            .await?
            .into_inner())
    }

    /// A `joined`/`left` notice to a room; failures are only logged.
    async fn notice(&self, namespace: &str, room: &str, event: &str, user: &str) {
        let args = json!([{ "user": user, "room": room }]);
        if let Err(status) = self
            .emit(namespace, to_room(room), event, args, NOTICE_TIMEOUT)
            .await
        {
            debug!(event, room, code = ?status.code(), "notice not delivered");
        }
    }

    /// The room of the event's socket: known, or (after a restart of the
    /// backend) looked up with `Push.Sessions`; the lobby otherwise.
    async fn room_of(&self, req: &EventRequest) -> String {
        let key = (req.sid.clone(), req.namespace.clone());
        if let Some(room) = self.rooms().get(&key) {
            return room.clone();
        }
        let lookup = SessionsRequest {
            namespace: req.namespace.clone(),
            room: String::new(),
            user: req.user.clone(),
            page_size: 1000,
            page_token: String::new(),
        };
        let room = match self
            .push
            .clone()
            .sessions(with_timeout(lookup, PUSH_TIMEOUT))
            .await
        {
            Ok(reply) => reply
                .into_inner()
                .sessions
                .into_iter()
                .find(|s| s.sid == req.sid)
                .and_then(|s| s.rooms.into_iter().min()),
            Err(status) => {
                warn!(code = ?status.code(), message = status.message(), "sessions lookup failed");
                None
            }
        };
        let room = room.unwrap_or_else(|| LOBBY.to_owned());
        self.rooms().insert(key, room.clone());
        room
    }

    async fn handle(&self, req: &EventRequest) -> Outcome {
        let args: Vec<Value> =
            serde_json::from_str(&req.args_json).map_err(|_| "arguments are not JSON")?;
        let arg = args.into_iter().next().unwrap_or(Value::Null);
        match req.event.as_str() {
            "say" => self.say(req, &arg).await,
            "whisper" => self.whisper(req, &arg).await,
            "join" => self.join(req, &arg).await,
            "who" => self.who(req).await,
            other => Err(format!(
                "unknown event {other:?}: the chat knows say, whisper, join and who"
            )),
        }
    }

    async fn say(&self, req: &EventRequest, arg: &Value) -> Outcome {
        let text = text_of(arg)?;
        let room = self.room_of(req).await;
        let args = json!([{ "from": req.user, "room": room, "text": text }]);
        let reply = self
            .emit(&req.namespace, to_room(&room), "said", args, PUSH_TIMEOUT)
            .await
            .map_err(|s| push_failed("Emit", s))?;
        Ok(json!({ "room": room, "delivered": reply.sockets }))
    }

    async fn whisper(&self, req: &EventRequest, arg: &Value) -> Outcome {
        let to = field(arg, "to")?;
        if !valid_name(to) {
            return Err(format!("no such user: {to:?}"));
        }
        let text = text_of(arg)?;
        let args = json!([{ "from": req.user, "to": to, "text": text }]);
        let reply = self
            .emit(&req.namespace, to_user(to), "whispered", args, PUSH_TIMEOUT)
            .await
            .map_err(|s| push_failed("Emit", s))?;
        if reply.sockets == 0 {
            return Err(format!("{to} is not online"));
        }
        Ok(json!({ "to": to, "delivered": reply.sockets }))
    }

    async fn join(&self, req: &EventRequest, arg: &Value) -> Outcome {
        let room = field(arg, "room")?;
        if !valid_room(room) {
            return Err(format!(
                "room must be a non-empty string of at most {MAX_ROOM} characters"
            ));
        }
        let old = self.room_of(req).await;
        if old == room {
            return Ok(json!({ "room": room, "from": old }));
        }
        let change = |room: &str| {
            with_timeout(
                RoomsChange {
                    namespace: req.namespace.clone(),
                    target: to_sid(&req.sid),
                    rooms: vec![room.to_owned()],
                },
                PUSH_TIMEOUT,
            )
        };
        // Join first: a failure leaves the user where it was. Once the join
        // is answered, emits to the new room reach the socket from any node.
        self.push
            .clone()
            .join_rooms(change(room))
            .await
            .map_err(|s| push_failed("JoinRooms", s))?;
        self.rooms()
            .insert((req.sid.clone(), req.namespace.clone()), room.to_owned());
        self.push
            .clone()
            .leave_rooms(change(&old))
            .await
            .map_err(|s| push_failed("LeaveRooms", s))?;
        self.notice(&req.namespace, &old, "left", &req.user).await;
        self.notice(&req.namespace, room, "joined", &req.user).await;
        info!(user = req.user, from = old, to = room, "moved");
        Ok(json!({ "room": room, "from": old }))
    }

    async fn who(&self, req: &EventRequest) -> Outcome {
        let room = self.room_of(req).await;
        let mut users = BTreeSet::new();
        let mut page_token = String::new();
        loop {
            let page = SessionsRequest {
                namespace: req.namespace.clone(),
                room: room.clone(),
                user: String::new(),
                page_size: 1000,
                page_token,
            };
            let page = self
                .push
                .clone()
                .sessions(with_timeout(page, PUSH_TIMEOUT))
                .await
                .map_err(|s| push_failed("Sessions", s))?
                .into_inner();
            users.extend(page.sessions.into_iter().map(|s| s.user));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        users.remove("");
        Ok(json!({ "room": room, "users": users }))
    }
}

#[tonic::async_trait]
impl Upstream for Chat {
    async fn on_connect(
        &self,
        request: Request<ConnectRequest>,
    ) -> Result<Response<ConnectReply>, Status> {
        let req = request.into_inner();
        let auth: Value = serde_json::from_str(&req.auth_json).unwrap_or(Value::Null);
        let name = auth
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| valid_name(n));
        let Some(name) = name else {
            info!(
                sid = req.sid,
                remote = req.remote_addr,
                "connect denied: bad name"
            );
            return Ok(Response::new(ConnectReply {
                decision: Some(Decision::Deny(Deny {
                    message: BAD_NAME.into(),
                    data_json: json!({ "field": "name", "max": MAX_NAME }).to_string(),
                })),
            }));
        };
        // Tell the lobby before the socket is in it (so the newcomer does
        // not hear of itself).
        self.notice(&req.namespace, LOBBY, "joined", name).await;
        self.rooms()
            .insert((req.sid.clone(), req.namespace.clone()), LOBBY.to_owned());
        info!(user = name, sid = req.sid, node = req.node_id, "connected");
        Ok(Response::new(ConnectReply {
            decision: Some(Decision::Allow(Allow {
                user: name.to_owned(),
                rooms: vec![LOBBY.to_owned()],
                data: Default::default(),
            })),
        }))
    }

    async fn on_event(
        &self,
        request: Request<EventRequest>,
    ) -> Result<Response<EventReply>, Status> {
        let req = request.into_inner();
        let outcome = self.handle(&req).await;
        if let Err(error) = &outcome {
            debug!(user = req.user, event = req.event, error, "event refused");
        }
        Ok(Response::new(EventReply {
            ack_args_json: if req.wants_ack {
                ack_json(&outcome)
            } else {
                String::new()
            },
            ack_attachments: Vec::new(),
        }))
    }

    async fn on_disconnect(
        &self,
        request: Request<DisconnectNotice>,
    ) -> Result<Response<DisconnectNoticeReply>, Status> {
        let req = request.into_inner();
        let room = self
            .rooms()
            .remove(&(req.sid.clone(), req.namespace.clone()));
        info!(user = req.user, reason = req.reason, "disconnected");
        if let Some(room) = room {
            self.notice(&req.namespace, &room, "left", &req.user).await;
        }
        Ok(Response::new(DisconnectNoticeReply {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_rooms() {
        assert!(valid_name("alice"));
        assert!(valid_name("Zoë de la Cruz"));
        assert!(valid_name(&"x".repeat(32)));
        assert!(valid_name(&"é".repeat(32)), "characters, not bytes");
        assert!(!valid_name(&"x".repeat(33)));
        assert!(!valid_name(""));
        assert!(!valid_name("   "));
        assert!(!valid_name("a\nb"));
        assert!(!valid_room("\u{1}user:alice"), "hidden rooms");
        assert!(valid_room("dev"));
    }

    #[test]
    fn acks() {
        let parse = |s: String| serde_json::from_str::<Value>(&s).expect("json");
        assert_eq!(
            parse(ack_json(&Ok(json!({"room": "lobby", "delivered": 3})))),
            json!([{"ok": true, "room": "lobby", "delivered": 3}])
        );
        assert_eq!(
            parse(ack_json(&Err("nope".into()))),
            json!([{"ok": false, "error": "nope"}])
        );
    }

    #[test]
    fn tokens() {
        assert!(Bearer::new("s3cret").is_ok());
        assert!(Bearer::new("").is_err());
        assert!(Bearer::new("bad\ntoken").is_err());
    }
}
