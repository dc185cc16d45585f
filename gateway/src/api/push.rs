//! The `Push` service: backends push to clients, manage rooms, disconnect
//! and look at presence through any gateway. The gateway that takes a call
//! applies it to its own sockets and fans it out, once, to the nodes that
//! may have sockets of the target (`Node.Local`), then sums the answers.

use std::collections::BTreeMap;

use crate::socketio::JoinError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::StreamExt;
use ringway_proto::cluster::v1::{local_request, Disposition, LocalReply, LocalRequest};
use ringway_proto::v1::push_server::Push;
use ringway_proto::v1::{
    target, DisconnectReply, DisconnectRequest, EmitReply, EmitRequest, EmitWithAckReply,
    EmitWithAckRequest, NodeStats, PresenceReply, PresenceRequest, RoomsChange, RoomsChangeReply,
    RoomsReply, RoomsRequest, SessionInfo, SessionsReply, SessionsRequest, StatsReply,
    StatsRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, Instrument};

use super::page::{self, FirstAfter};
use crate::cluster::convert::{self, ProtoFrame};
use crate::cluster::Cluster;
use crate::engineio::{BoxFuture, Engine, Frame, Located, Sid};
use crate::socketio::packet::RESERVED_EVENTS;
use crate::socketio::{
    is_hidden_room, user_room, AckError, Application, Namespace, Payload, Recovery, SocketIo,
    SocketRef, Target,
};

/// The event a client gets with the reason of a `Push.Disconnect`.
pub const DISCONNECT_NOTICE: &str = "ringway:disconnect";

/// How long packets for a session moving here wait for its install.
const SESSION_FRAMES_WAIT: Duration = Duration::from_secs(1);

/// Emits of one `EmitStream` finished side by side (recovery log only).
const STREAM_WINDOW: usize = 256;

/// An emit, checked and begun.
enum Begun {
    /// Appended to the recovery log; the rest of the call.
    Logged(BoxFuture<'static, Result<EmitReply, Status>>),
    /// To be sent to the nodes.
    Direct(EmitRequest, ringway_proto::v1::Target),
}

type EmitResult = Result<EmitReply, Status>;

/// Sends a stream answer; false when the stream is over (the caller stops
/// at the first failed emit, or when the client went away).
async fn send_reply(tx: &mpsc::Sender<EmitResult>, reply: EmitResult) -> bool {
    let failed = reply.is_err();
    tx.send(reply).await.is_ok() && !failed
}

/// Sends every pending reply, in order; false once the stream is over.
async fn send_pending<F: std::future::Future<Output = EmitResult>>(
    tx: &mpsc::Sender<EmitResult>,
    pending: &mut futures_util::stream::FuturesOrdered<F>,
) -> bool {
    while let Some(reply) = pending.next().await {
        if !send_reply(tx, reply).await {
            return false;
        }
    }
    true
}

fn record_push(started: std::time::Instant) {
    crate::telemetry::metrics().push_duration.record(
        crate::telemetry::seconds(started),
        &crate::telemetry::attr("method", "emit"),
    );
}

async fn timed(finish: BoxFuture<'static, EmitResult>, started: std::time::Instant) -> EmitResult {
    let reply = finish.await;
    record_push(started);
    reply
}

/// Longest wait for an ack (`EmitWithAckRequest.timeout_ms`).
const MAX_ACK_TIMEOUT_MS: u32 = 300_000;
const DEFAULT_ACK_TIMEOUT_MS: u32 = 5_000;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Applies Push operations to the sockets of this node.
pub struct LocalPush<A: Application> {
    engine: Arc<Engine<SocketIo<A>>>,
}

/// What a Push operation is for, on one node.
enum Scope {
    /// One session: `None` when it is not here.
    Session(Option<Vec<SocketRef>>),
    /// Sockets of the namespace matching a target.
    Sockets(Vec<SocketRef>),
}

fn namespace_name(ns: &str) -> &str {
    if ns.is_empty() {
        "/"
    } else {
        ns
    }
}

fn target_of(t: &Option<ringway_proto::v1::Target>) -> Result<&ringway_proto::v1::Target, Status> {
    t.as_ref()
        .filter(|t| t.to.is_some())
        .ok_or_else(|| Status::invalid_argument("a target is required"))
}

fn parse_sid(sid: &str) -> Result<Sid, Status> {
    Sid::parse(sid).ok_or_else(|| Status::not_found(format!("unknown session {sid:?}")))
}

/// Checks an event name and its arguments.
fn payload(event: &str, args_json: &str, attachments: &[Bytes]) -> Result<Payload, Status> {
    if event.is_empty() || RESERVED_EVENTS.contains(&event) {
        return Err(Status::invalid_argument(format!(
            "invalid event name {event:?} (empty or reserved)"
        )));
    }
    let json = if args_json.trim().is_empty() {
        "[]".to_owned()
    } else {
        args_json.to_owned()
    };
    if !json.trim_start().starts_with('[') {
        return Err(Status::invalid_argument("args_json must be a JSON array"));
    }
    let payload = Payload::checked(json, attachments.to_vec())
        .map_err(|err| Status::invalid_argument(format!("args_json: {err}")))?;
    let array = serde_json::from_str::<serde_json::Value>(payload.json())
        .map(|v| v.is_array())
        .unwrap_or(false);
    if !array {
        return Err(Status::invalid_argument("args_json must be a JSON array"));
    }
    Ok(payload)
}

fn served(sockets: u64) -> LocalReply {
    LocalReply {
        disposition: Disposition::Served as i32,
        sockets,
        ..LocalReply::default()
    }
}

fn not_here() -> LocalReply {
    LocalReply {
        disposition: Disposition::Unknown as i32,
        ..LocalReply::default()
    }
}

impl<A: Application> crate::cluster::service::LocalOps for LocalPush<A> {
    fn apply(&self, request: LocalRequest) -> BoxFuture<'_, Result<LocalReply, Status>> {
        Box::pin(LocalPush::apply(self, request))
    }
}

impl<A: Application> LocalPush<A> {
    pub fn new(engine: Arc<Engine<SocketIo<A>>>) -> Arc<Self> {
        Arc::new(LocalPush { engine })
    }

    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.engine.handler().namespace(namespace_name(name))
    }

    /// The sockets an operation is for, here.
    fn scope(&self, ns: &str, target: &ringway_proto::v1::Target) -> Result<Scope, Status> {
        let ns_name = namespace_name(ns);
        let except = target.except_rooms.clone();
        let socket_target = |rooms: Vec<String>| Target {
            rooms,
            except_rooms: except.clone(),
            except_socket: None,
        };
        let in_ns = |t: Target| {
            self.namespace(ns_name)
                .map(|n| n.sockets_of(&t))
                .unwrap_or_default()
        };
        Ok(match target.to.as_ref() {
            Some(target::To::Sid(sid)) => {
                let sid = parse_sid(sid)?;
                Scope::Session(self.engine.session(&sid).map(|session| {
                    session
                        .data()
                        .socket(ns_name)
                        .into_iter()
                        .filter(|s| {
                            let excluded = s.rooms().iter().any(|r| except.contains(r));
                            !excluded
                        })
                        .collect()
                }))
            }
            Some(target::To::User(user)) => {
                Scope::Sockets(in_ns(socket_target(vec![user_room(user)])))
            }
            Some(target::To::Rooms(list)) => {
                if list.rooms.is_empty() {
                    return Err(Status::invalid_argument("rooms: at least one room"));
                }
                Scope::Sockets(in_ns(socket_target(list.rooms.clone())))
            }
            Some(target::To::Namespace(_)) => Scope::Sockets(in_ns(socket_target(Vec::new()))),
            Some(target::To::Everyone(_)) => Scope::Sockets(
                self.engine
                    .handler()
                    .namespaces()
                    .iter()
                    .flat_map(|n| n.sockets_of(&socket_target(Vec::new())))
                    .collect(),
            ),
            None => return Err(Status::invalid_argument("a target is required")),
        })
    }

    /// Runs `f` on every socket in scope; the reply counts them.
    fn each(&self, scope: Scope, mut f: impl FnMut(&SocketRef) -> bool) -> LocalReply {
        let sockets = match scope {
            Scope::Session(None) => return not_here(),
            Scope::Session(Some(sockets)) | Scope::Sockets(sockets) => sockets,
        };
        served(sockets.iter().filter(|s| f(s)).count() as u64)
    }

    pub async fn apply(&self, request: LocalRequest) -> Result<LocalReply, Status> {
        match request.op {
            Some(local_request::Op::Emit(req)) => self.emit(&req),
            Some(local_request::Op::EmitWithAck(req)) => self.emit_with_ack(req).await,
            Some(local_request::Op::Join(req)) => self.rooms(&req, true).await,
            Some(local_request::Op::Leave(req)) => self.rooms(&req, false).await,
            Some(local_request::Op::Disconnect(req)) => self.disconnect(&req),
            Some(local_request::Op::Sessions(req)) => Ok(self.sessions(&req)),
            Some(local_request::Op::Presence(req)) => Ok(self.presence(&req)),
            Some(local_request::Op::Count(req)) => self.count(&req),
            Some(local_request::Op::Evict(evict)) => {
                let evict = convert::evict_from(evict);
                Ok(served(u64::from(self.engine.handler().evict(&evict))))
            }
            Some(local_request::Op::SessionFrames(req)) => {
                let frames: Option<Vec<Frame>> =
                    req.frames.into_iter().map(Frame::from_proto).collect();
                let Some(frames) = frames else {
                    return Err(Status::invalid_argument("session frames: not UTF-8 text"));
                };
                let Some(sid) = Sid::parse(&req.sid) else {
                    return Ok(served(0));
                };
                // Sent as the session moves: this node may still be
                // installing it.
                let deadline = tokio::time::Instant::now() + SESSION_FRAMES_WAIT;
                let session = loop {
                    match self.engine.session(&sid) {
                        Some(session) => break Some(session),
                        None if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        None => break None,
                    }
                };
                let queued = session.is_some_and(|s| s.send_all(frames).is_ok());
                Ok(served(u64::from(queued)))
            }
            Some(local_request::Op::Ack(answer)) => {
                let answer = convert::moved_ack_answer_from(answer);
                match self.engine.handler().resolve_moved_ack(answer) {
                    Ok(resolved) => Ok(served(u64::from(resolved))),
                    Err(err) => Err(Status::invalid_argument(format!("moved ack: {err}"))),
                }
            }
            Some(local_request::Op::Stats(_)) => {
                let (polling, websocket) = self.engine.transport_counts();
                Ok(LocalReply {
                    polling_sessions: polling,
                    websocket_sessions: websocket,
                    ..served(0)
                })
            }
            None => Err(Status::invalid_argument("empty operation")),
        }
    }

    fn emit(&self, req: &EmitRequest) -> Result<LocalReply, Status> {
        let target = target_of(&req.target)?;
        let args = payload(&req.event, &req.args_json, &req.attachments)?;
        let scope = self.scope(&req.namespace, target)?;
        if self.recovery().is_some() && !req.volatile {
            // Through the recovery log: the socket gets it with its offset.
            return Ok(self.each(scope, |socket| socket.emit(&req.event, &args).is_ok()));
        }
        // Encoded once per namespace, the same bytes for every socket.
        let mut encoded: BTreeMap<String, Vec<crate::engineio::Frame>> = BTreeMap::new();
        Ok(self.each(scope, |socket| {
            let ns = socket.namespace();
            let frames = encoded
                .entry(ns.name().to_owned())
                .or_insert_with(|| ns.parser().encode_event(ns.name(), &req.event, &args, None));
            if req.volatile && !socket.session().queue_is_empty() {
                return false;
            }
            socket.send_frames(frames.iter().cloned())
        }))
    }

    /// The sockets here an emit reaches (the emit itself is in the
    /// recovery log, appended by the node that took the call).
    fn count(&self, req: &EmitRequest) -> Result<LocalReply, Status> {
        let target = target_of(&req.target)?;
        let scope = self.scope(&req.namespace, target)?;
        Ok(self.each(scope, |_| true))
    }

    pub fn recovery(&self) -> Option<&Arc<Recovery>> {
        self.engine.handler().recovery()
    }

    async fn emit_with_ack(&self, req: EmitWithAckRequest) -> Result<LocalReply, Status> {
        let args = payload(&req.event, &req.args_json, &req.attachments)?;
        let sid = parse_sid(&req.sid)?;
        let Some(session) = self.engine.session(&sid) else {
            return Ok(not_here());
        };
        let Some(socket) = session.data().socket(namespace_name(&req.namespace)) else {
            return Err(Status::not_found(format!(
                "session {} has no socket in {}",
                req.sid,
                namespace_name(&req.namespace)
            )));
        };
        let timeout_ms = match req.timeout_ms {
            0 => DEFAULT_ACK_TIMEOUT_MS,
            t => t.min(MAX_ACK_TIMEOUT_MS),
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        match socket.emit_with_ack(&req.event, &args, timeout).await {
            Ok(answer) => Ok(LocalReply {
                ack: Some(EmitWithAckReply {
                    args_json: answer.json().to_owned(),
                    attachments: answer.attachments().to_vec(),
                }),
                ..served(1)
            }),
            Err(AckError::Timeout) => Err(Status::deadline_exceeded(format!(
                "no ack within {timeout_ms} ms"
            ))),
            Err(AckError::Disconnected) => Err(Status::aborted(
                "the socket disconnected before acknowledging",
            )),
            Err(AckError::Send(err)) => Err(Status::not_found(format!("session gone: {err}"))),
        }
    }

    async fn rooms(&self, req: &RoomsChange, join: bool) -> Result<LocalReply, Status> {
        let target = target_of(&req.target)?;
        if !matches!(target.to, Some(target::To::Sid(_) | target::To::User(_))) {
            return Err(Status::invalid_argument(
                "rooms change: target a sid or a user",
            ));
        }
        check_rooms(&req.rooms)?;
        let scope = self.scope(&req.namespace, target)?;
        let mut receipts = Vec::new();
        let mut refused = None;
        let reply = self.each(scope, |socket| {
            for room in &req.rooms {
                if join {
                    match socket.join(room) {
                        Ok(receipt) => receipts.extend(receipt),
                        Err(err) => refused = Some(err),
                    }
                } else {
                    socket.leave(room);
                }
            }
            true
        });
        // Answered once every node knows of rooms new here, as a client's
        // join is.
        for receipt in receipts {
            receipt.await;
        }
        match refused {
            Some(err @ JoinError::TooManyRooms { .. }) => Err(Status::resource_exhausted(format!(
                "a socket refused the join: {err}"
            ))),
            Some(err) => Err(Status::invalid_argument(format!("join refused: {err}"))),
            None => Ok(reply),
        }
    }

    fn disconnect(&self, req: &DisconnectRequest) -> Result<LocalReply, Status> {
        let target = target_of(&req.target)?;
        if !matches!(target.to, Some(target::To::Sid(_) | target::To::User(_))) {
            return Err(Status::invalid_argument(
                "disconnect: target a sid or a user",
            ));
        }
        let scope = self.scope(&req.namespace, target)?;
        // The reason, for the client: an event just before the DISCONNECT
        // (the protocol's DISCONNECT carries none).
        let notice = (!req.reason.is_empty())
            .then(|| Payload::from_values(&[serde_json::Value::String(req.reason.clone())]));
        Ok(self.each(scope, |socket| {
            debug!(socket = %socket.id(), reason = %req.reason, "disconnected by the API");
            let notice = notice.as_ref().map(|args| (DISCONNECT_NOTICE, args));
            socket.end(notice, req.close_session);
            true
        }))
    }

    fn sessions(&self, req: &SessionsRequest) -> LocalReply {
        let ns = namespace_name(&req.namespace);
        let Some(namespace) = self.namespace(ns) else {
            return served(0);
        };
        let target = if !req.user.is_empty() {
            Target::room(user_room(&req.user))
        } else if !req.room.is_empty() {
            Target::room(req.room.clone())
        } else {
            Target::all()
        };
        // One more than the page, so the caller knows whether more follow;
        // only the page's sockets are looked at closely.
        let page = page_size(req.page_size) as usize;
        let token = Sid::parse(&req.page_token);
        let mut first = FirstAfter::new(token.as_ref(), page + 1);
        namespace.for_each_target(&target, |s| {
            if req.user.is_empty() || s.user().unwrap_or("") == req.user {
                first.offer(s.session().sid(), || s.clone());
            }
        });
        let sessions = first
            .into_sorted()
            .into_iter()
            .map(|(sid, s)| SessionInfo {
                sid: sid.to_string(),
                socket_id: s.id().to_string(),
                user: s.user().unwrap_or("").to_owned(),
                node_id: String::new(),
                transport: s.session().transport().as_str().to_owned(),
                rooms: s.public_rooms(),
            })
            .collect();
        LocalReply {
            sessions,
            ..served(0)
        }
    }

    fn presence(&self, req: &PresenceRequest) -> LocalReply {
        let namespace = self.namespace(&req.namespace);
        let counts = req
            .rooms
            .iter()
            .map(|room| {
                let n = namespace.as_ref().map_or(0, |ns| ns.room_size(room)) as u64;
                (room.clone(), n)
            })
            .collect();
        LocalReply {
            counts,
            ..served(0)
        }
    }
}

fn page_size(asked: u32) -> u32 {
    match asked {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn check_rooms(rooms: &[String]) -> Result<(), Status> {
    if rooms.is_empty() {
        return Err(Status::invalid_argument("at least one room"));
    }
    if let Some(room) = rooms.iter().find(|r| r.is_empty() || is_hidden_room(r)) {
        return Err(Status::invalid_argument(format!(
            "invalid room name {room:?}"
        )));
    }
    Ok(())
}

/// The `Push` service of one gateway, for the whole cluster.
pub struct PushService<A: Application> {
    local: Arc<LocalPush<A>>,
    cluster: Arc<Cluster>,
    max_payload: usize,
}

impl<A: Application> PushService<A> {
    pub fn new(local: Arc<LocalPush<A>>, cluster: Arc<Cluster>, max_payload: usize) -> Self {
        PushService {
            local,
            cluster,
            max_payload,
        }
    }

    /// Runs an operation for one session, wherever it lives.
    async fn on_session(&self, sid: &str, request: LocalRequest) -> Result<LocalReply, Status> {
        let parsed = parse_sid(sid)?;
        let reply = self.local.apply(request.clone()).await?;
        if reply.disposition != Disposition::Unknown as i32 {
            return Ok(reply);
        }
        let routed = self
            .cluster
            .route(parsed, None, move |peer| {
                let request = request.clone();
                async move {
                    match peer.local(request).await {
                        Ok(reply) => Ok(match Disposition::try_from(reply.disposition) {
                            Ok(Disposition::Served) => Located::Served(Ok(reply)),
                            Ok(Disposition::Moved) if !reply.moved_to.is_empty() => {
                                Located::Moved(reply.moved_to)
                            }
                            _ => Located::Unknown,
                        }),
                        // The owner answered with an error of the
                        // operation itself (timeout, bad argument).
                        Err(status) if status.code() != tonic::Code::Unavailable => {
                            Ok(Located::Served(Err(status)))
                        }
                        Err(status) => {
                            ringway_telemetry::warn_every!(Duration::from_secs(10), peer = peer.node_id(), %status, "push to a peer failed");
                            Ok(Located::Unknown)
                        }
                    }
                }
            })
            .await;
        match routed {
            Ok(result) => result,
            Err(_) => Err(Status::not_found(format!("unknown session {sid:?}"))),
        }
    }

    /// Runs an operation here and on `nodes`, concurrently; the replies of
    /// the nodes that answered.
    async fn fan_out(
        &self,
        nodes: Vec<String>,
        request: LocalRequest,
    ) -> Result<Vec<LocalReply>, Status> {
        let here = self.local.apply(request.clone());
        let remote = nodes
            .into_iter()
            .filter(|n| n != self.cluster.node_id())
            .filter_map(|n| self.cluster.peer_for(&n))
            .map(|peer| {
                let request = request.clone();
                async move {
                    match peer.local(request).await {
                        Ok(reply) => Some(reply),
                        Err(status) => {
                            ringway_telemetry::warn_every!(Duration::from_secs(10), peer = peer.node_id(), %status, "push to a peer failed");
                            None
                        }
                    }
                }
            });
        let (here, remote) = tokio::join!(here, join_all(remote));
        let mut replies = vec![here?];
        replies.extend(remote.into_iter().flatten());
        Ok(replies)
    }

    /// The nodes that may hold sockets of a target.
    async fn nodes_for(&self, ns: &str, target: &ringway_proto::v1::Target) -> Vec<String> {
        let ns = namespace_name(ns);
        match target.to.as_ref() {
            // Users' rooms are not announced: the registry says.
            Some(target::To::User(user)) => self.cluster.user_nodes(ns, user).await,
            Some(target::To::Rooms(list)) => self.cluster.room_nodes(ns, &list.rooms),
            _ => self.cluster.peer_ids(),
        }
    }

    async fn emit_one(&self, req: EmitRequest) -> Result<EmitReply, Status> {
        let started = std::time::Instant::now();
        let result = self.emit_inner(req).await;
        record_push(started);
        result
    }

    async fn emit_inner(&self, req: EmitRequest) -> Result<EmitReply, Status> {
        match self.begin_emit(req)? {
            Begun::Logged(finish) => finish.await,
            Begun::Direct(req, target) => self.emit_direct(req, target).await,
        }
    }

    /// Checks an emit and, when it goes through the recovery log, appends
    /// it at once (so emits begun in order are in the log in that order);
    /// what is left to await is the rest of the call.
    fn begin_emit(&self, req: EmitRequest) -> Result<Begun, Status> {
        let target = target_of(&req.target)?.clone();
        let args = payload(&req.event, &req.args_json, &req.attachments)?;
        // Measured in the wire form the clients get.
        let parser = self.local.engine.handler().parser();
        let size: usize = parser
            .encode_event(namespace_name(&req.namespace), &req.event, &args, None)
            .iter()
            .map(|f| f.wire_len())
            .sum();
        if size > self.max_payload {
            return Err(Status::resource_exhausted(format!(
                "the event is {size} bytes, over the {} byte limit",
                self.max_payload
            )));
        }
        if !namespace_name(&req.namespace).starts_with('/') {
            return Err(Status::invalid_argument("a namespace starts with '/'"));
        }
        let logged = self.local.recovery().filter(|_| !req.volatile).cloned();
        match logged {
            Some(recovery) if !matches!(target.to, Some(target::To::Sid(_))) => Ok(Begun::Logged(
                self.emit_logged(&recovery, req, &target, args)?,
            )),
            _ => Ok(Begun::Direct(req, target)),
        }
    }

    /// Without the log: the emit itself goes to the nodes (`Node.Local`).
    async fn emit_direct(
        &self,
        req: EmitRequest,
        target: ringway_proto::v1::Target,
    ) -> Result<EmitReply, Status> {
        let skip_count = req.skip_count;
        let request = LocalRequest {
            op: Some(local_request::Op::Emit(req.clone())),
        };
        if let Some(target::To::Sid(sid)) = target.to.as_ref() {
            let reply = self.on_session(sid, request).await?;
            // With recovery on, the owner logs it without confirming.
            return Ok(EmitReply {
                sockets: if skip_count { 0 } else { reply.sockets },
                nodes: u32::from(!skip_count),
                durable: false,
            });
        }
        let replies = self
            .fan_out(self.nodes_for(&req.namespace, &target).await, request)
            .await?;
        // The nodes deliver it themselves: their counts come with it, and
        // are left out when not asked for.
        let reply = if skip_count {
            EmitReply::default()
        } else {
            EmitReply {
                sockets: replies.iter().map(|r| r.sockets).sum(),
                nodes: replies.iter().filter(|r| r.sockets > 0).count() as u32,
                durable: false,
            }
        };
        debug!(sockets = reply.sockets, nodes = reply.nodes, "pushed");
        Ok(reply)
    }

    /// With recovery on: one entry in the log (every node delivers it to
    /// its sockets), appended now; the call is answered once it is durable,
    /// with the sockets the nodes count.
    fn emit_logged(
        &self,
        recovery: &Recovery,
        req: EmitRequest,
        target: &ringway_proto::v1::Target,
        args: Payload,
    ) -> Result<BoxFuture<'static, Result<EmitReply, Status>>, Status> {
        let ns = namespace_name(&req.namespace);
        let rooms = match target.to.as_ref() {
            Some(target::To::User(user)) => vec![user_room(user)],
            Some(target::To::Rooms(list)) if list.rooms.is_empty() => {
                return Err(Status::invalid_argument("rooms: at least one room"));
            }
            Some(target::To::Rooms(list)) => list.rooms.clone(),
            _ => Vec::new(),
        };
        let socket_target = Target {
            rooms,
            except_rooms: target.except_rooms.clone(),
            except_socket: None,
        };
        let mut entry = crate::socketio::LogEntry::emit(ns, &socket_target, &req.event, &args);
        if matches!(target.to, Some(target::To::Everyone(_))) {
            // Every namespace of every node.
            entry.namespace.clear();
        }
        let durable = recovery.append_confirmed(entry);
        if req.skip_count {
            // Nobody else is asked anything.
            return Ok(Box::pin(async move {
                Ok(EmitReply {
                    sockets: 0,
                    nodes: 0,
                    durable: durable.await.unwrap_or(false),
                })
            }));
        }
        let target = target.clone();
        // The nodes only count: the payload travels in the log.
        let namespace = req.namespace.clone();
        let count = LocalRequest {
            op: Some(local_request::Op::Count(EmitRequest {
                args_json: String::new(),
                attachments: Vec::new(),
                ..req
            })),
        };
        let service = self.clone();
        Ok(Box::pin(async move {
            let nodes = service.nodes_for(&namespace, &target).await;
            let (replies, durable) = tokio::join!(service.fan_out(nodes, count), durable);
            let durable = durable.unwrap_or(false);
            if !durable {
                debug!("push not durable: delivered without the recovery log, or its replicas did not confirm");
            }
            let replies = replies?;
            Ok(EmitReply {
                sockets: replies.iter().map(|r| r.sockets).sum(),
                nodes: replies.iter().filter(|r| r.sockets > 0).count() as u32,
                durable,
            })
        }))
    }

    async fn change(&self, req: RoomsChange, join: bool) -> Result<RoomsChangeReply, Status> {
        let target = target_of(&req.target)?.clone();
        check_rooms(&req.rooms)?;
        let op = if join {
            local_request::Op::Join(req.clone())
        } else {
            local_request::Op::Leave(req.clone())
        };
        let request = LocalRequest { op: Some(op) };
        let sockets = self
            .session_or_user(&req.namespace, &target, request, "rooms change")
            .await?;
        Ok(RoomsChangeReply { sockets })
    }

    /// Runs an operation that takes a `sid` or a `user` target; the
    /// sockets it changed.
    async fn session_or_user(
        &self,
        ns: &str,
        target: &ringway_proto::v1::Target,
        request: LocalRequest,
        what: &str,
    ) -> Result<u64, Status> {
        match target.to.as_ref() {
            Some(target::To::Sid(sid)) => Ok(self.on_session(sid, request).await?.sockets),
            Some(target::To::User(_)) => Ok(self
                .fan_out(self.nodes_for(ns, target).await, request)
                .await?
                .iter()
                .map(|r| r.sockets)
                .sum()),
            _ => Err(Status::invalid_argument(format!(
                "{what}: target a sid or a user"
            ))),
        }
    }
}

type ServiceResult<T> = Result<Response<T>, Status>;

impl<A: Application> Clone for PushService<A> {
    fn clone(&self) -> Self {
        PushService {
            local: self.local.clone(),
            cluster: self.cluster.clone(),
            max_payload: self.max_payload,
        }
    }
}

#[tonic::async_trait]
impl<A: Application> Push for PushService<A> {
    async fn emit(&self, request: Request<EmitRequest>) -> ServiceResult<EmitReply> {
        let span = tracing::info_span!("push.emit");
        crate::telemetry::continue_trace(&request, &span);
        let reply = self.emit_one(request.into_inner()).instrument(span).await?;
        Ok(Response::new(reply))
    }

    type EmitStreamStream = ReceiverStream<Result<EmitReply, Status>>;

    async fn emit_stream(
        &self,
        request: Request<Streaming<EmitRequest>>,
    ) -> ServiceResult<Self::EmitStreamStream> {
        let mut stream = request.into_inner();
        // A small window: a publisher that reads no replies, or that is
        // faster than the cluster, is held back by gRPC flow control.
        let (tx, rx) = mpsc::channel(32);
        let service = self.clone();
        tokio::spawn(async move {
            // Emits through the recovery log are appended in the stream's
            // order as they arrive, so up to STREAM_WINDOW of them are
            // finished side by side (answers still in order). Others run
            // one at a time: their order on every node is their order here.
            let mut pending = futures_util::stream::FuturesOrdered::new();
            loop {
                let next = tokio::select! {
                    biased;
                    Some(reply) = pending.next(), if !pending.is_empty() => {
                        if !send_reply(&tx, reply).await {
                            return;
                        }
                        continue;
                    }
                    next = stream.message(), if pending.len() < STREAM_WINDOW => next,
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%status, "emit stream ended");
                        break;
                    }
                };
                let started = std::time::Instant::now();
                match service.begin_emit(req) {
                    Ok(Begun::Logged(finish)) => pending.push_back(timed(finish, started)),
                    Ok(Begun::Direct(req, target)) => {
                        if !send_pending(&tx, &mut pending).await {
                            return;
                        }
                        let reply = service.emit_direct(req, target).await;
                        record_push(started);
                        if !send_reply(&tx, reply).await {
                            return;
                        }
                    }
                    Err(status) => {
                        if send_pending(&tx, &mut pending).await {
                            let _ = tx.send(Err(status)).await;
                        }
                        return;
                    }
                }
            }
            send_pending(&tx, &mut pending).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn emit_with_ack(
        &self,
        request: Request<EmitWithAckRequest>,
    ) -> ServiceResult<EmitWithAckReply> {
        let req = request.into_inner();
        payload(&req.event, &req.args_json, &req.attachments)?;
        let sid = req.sid.clone();
        let reply = self
            .on_session(
                &sid,
                LocalRequest {
                    op: Some(local_request::Op::EmitWithAck(req)),
                },
            )
            .await?;
        reply
            .ack
            .map(Response::new)
            .ok_or_else(|| Status::internal("no ack in the owner's answer"))
    }

    async fn join_rooms(&self, request: Request<RoomsChange>) -> ServiceResult<RoomsChangeReply> {
        Ok(Response::new(
            self.change(request.into_inner(), true).await?,
        ))
    }

    async fn leave_rooms(&self, request: Request<RoomsChange>) -> ServiceResult<RoomsChangeReply> {
        Ok(Response::new(
            self.change(request.into_inner(), false).await?,
        ))
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> ServiceResult<DisconnectReply> {
        let req = request.into_inner();
        let target = target_of(&req.target)?.clone();
        let local = LocalRequest {
            op: Some(local_request::Op::Disconnect(req.clone())),
        };
        let sockets = self
            .session_or_user(&req.namespace, &target, local, "disconnect")
            .await?;
        Ok(Response::new(DisconnectReply { sockets }))
    }

    async fn sessions(&self, request: Request<SessionsRequest>) -> ServiceResult<SessionsReply> {
        let req = request.into_inner();
        if !req.page_token.is_empty() && Sid::parse(&req.page_token).is_none() {
            return Err(Status::invalid_argument(
                "page_token: not one this API gave",
            ));
        }
        let ns = namespace_name(&req.namespace).to_owned();
        let nodes = if !req.user.is_empty() {
            self.cluster.user_nodes(&ns, &req.user).await
        } else if !req.room.is_empty() {
            self.cluster
                .room_nodes(&ns, std::slice::from_ref(&req.room))
        } else {
            self.cluster.peer_ids()
        };
        let page = page_size(req.page_size) as usize;
        let request = LocalRequest {
            op: Some(local_request::Op::Sessions(req)),
        };
        let here = self.cluster.node_id().to_owned();
        let mut all: Vec<SessionInfo> = Vec::new();
        // Replies come back in node order: the local one first.
        let mut nodes_order = vec![here.clone()];
        nodes_order.extend(nodes.iter().filter(|n| **n != here).cloned());
        for (reply, node) in self
            .fan_out(nodes, request)
            .await?
            .into_iter()
            .zip(nodes_order)
        {
            all.extend(reply.sessions.into_iter().map(|mut s| {
                if s.node_id.is_empty() {
                    s.node_id = node.clone();
                }
                s
            }));
        }
        // Each node sent at most a page and one: the merge sorts that.
        all.sort_by(|a, b| a.sid.cmp(&b.sid));
        let (sessions, next_page_token) = page::cut(all, page, |s| s.sid.clone());
        Ok(Response::new(SessionsReply {
            sessions,
            next_page_token,
        }))
    }

    /// The rooms this node knows of (its own and the other nodes', as
    /// announced), a page at a time, without listing them all.
    async fn rooms(&self, request: Request<RoomsRequest>) -> ServiceResult<RoomsReply> {
        let req = request.into_inner();
        let ns = namespace_name(&req.namespace).to_owned();
        let page = page_size(req.page_size) as usize;
        let token = (!req.page_token.is_empty()).then_some(&req.page_token);
        let mut first: FirstAfter<'_, String, ()> = FirstAfter::new(token, page + 1);
        let mut offer = |name: &str| {
            if !is_hidden_room(name) && first.wants(name) {
                first.offer(name.to_owned(), || ());
            }
        };
        if let Some(namespace) = self.local.namespace(&ns) {
            namespace.for_each_room_name(&mut offer);
        }
        self.cluster.rooms().for_each_room(&ns, &mut offer);
        let rooms: Vec<String> = first.into_sorted().into_iter().map(|(r, ())| r).collect();
        let (rooms, next_page_token) = page::cut(rooms, page, String::clone);
        Ok(Response::new(RoomsReply {
            rooms,
            next_page_token,
        }))
    }

    async fn presence(&self, request: Request<PresenceRequest>) -> ServiceResult<PresenceReply> {
        let req = request.into_inner();
        let ns = namespace_name(&req.namespace).to_owned();
        let nodes = self.cluster.room_nodes(&ns, &req.rooms);
        let rooms = req.rooms.clone();
        let replies = self
            .fan_out(
                nodes,
                LocalRequest {
                    op: Some(local_request::Op::Presence(req)),
                },
            )
            .await?;
        let mut counts: std::collections::HashMap<String, u64> =
            rooms.into_iter().map(|r| (r, 0)).collect();
        for reply in replies {
            for (room, n) in reply.counts {
                *counts.entry(room).or_default() += n;
            }
        }
        Ok(Response::new(PresenceReply { counts }))
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> ServiceResult<StatsReply> {
        let view = self.cluster.view();
        let request = LocalRequest {
            op: Some(local_request::Op::Stats(StatsRequest {})),
        };
        let calls = view.members.iter().map(|member| {
            let request = request.clone();
            async move {
                let reply = if member.node_id == self.cluster.node_id() {
                    self.local.apply(request).await.ok()
                } else {
                    match self.cluster.peer_for(&member.node_id) {
                        Some(peer) => peer.local(request).await.ok(),
                        None => None,
                    }
                };
                NodeStats {
                    node_id: member.node_id.clone(),
                    http_addr: member.http_addr.clone(),
                    grpc_addr: member.grpc_addr.clone(),
                    polling_sessions: reply.as_ref().map_or(0, |r| r.polling_sessions),
                    websocket_sessions: reply.as_ref().map_or(0, |r| r.websocket_sessions),
                    reachable: reply.is_some(),
                }
            }
        });
        let nodes = join_all(calls).await;
        Ok(Response::new(StatsReply {
            epoch: view.epoch,
            nodes,
        }))
    }
}

/// Bearer-token check of every `Push` call.
#[derive(Clone)]
pub struct ApiAuth {
    tokens: Arc<[String]>,
    /// A verified client certificate is enough (`--api-tls-client-ca`:
    /// the TLS layer checked it against the backends' CA).
    client_certificates: bool,
}

impl ApiAuth {
    pub fn new(tokens: Vec<String>) -> ApiAuth {
        ApiAuth {
            tokens: tokens.into(),
            client_certificates: false,
        }
    }

    /// Also accepts callers with a client certificate the TLS layer
    /// verified.
    pub fn with_client_certificates(mut self) -> ApiAuth {
        self.client_certificates = true;
        self
    }
}

/// Compares without leaking where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for ApiAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.client_certificates && request.peer_certs().is_some_and(|certs| !certs.is_empty()) {
            return Ok(request);
        }
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated("missing bearer token"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization is not a bearer token"))?;
        if self
            .tokens
            .iter()
            .any(|t| same_secret(t.as_bytes(), token.as_bytes()))
        {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid token"))
        }
    }
}
