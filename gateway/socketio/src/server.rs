//! Socket.IO on top of Engine.IO: decodes packets, reassembles binary
//! ones, runs namespace CONNECTs through the application, and routes
//! events and acks to sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tracing::debug;

use super::snapshot::ClientSnapshot;
use tokio::sync::oneshot;

use super::store::Offset;
use ringway_engineio::{CloseReason, EngineHandler, Frame, Message, NotMovable, SessionRef, Sid};
use ringway_telemetry::attr;

use super::app::{Application, ConnectRequest, Event, Grant, Refusal};
use super::client::{ClientState, ConnectRefused, Partial, UnexpectedAttachment};
use super::fabric::{Evict, Fabric, MovedAckAnswer};
use super::log::LogEntry;
use super::namespace::{Namespace, SocketLimits};
use super::packet::{decode, Packet, PacketError, Payload};
use super::parser::Parser;
use super::recovery::{Install, Missed, NamespaceSource, Recovery, RecoveryAsk};
use super::socket::{
    is_hidden_room, user_room, AckSender, AckWaiters, AwaitedAck, DisconnectReason, Socket,
    SocketRecovery, SocketRef,
};
use super::v2;

#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// A session that joins no namespace within this time is closed (the
    /// reference's connectTimeout).
    pub connect_timeout: Duration,
    /// What clients may do with sockets (rooms, names, CONNECTs).
    pub limits: SocketLimits,
    /// The wire form of every namespace (`--parser`).
    pub parser: Parser,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            connect_timeout: Duration::from_millis(45_000),
            limits: SocketLimits::default(),
            parser: Parser::Default,
        }
    }
}

/// The namespaces of this node (shared with the recovery deliverer).
struct Namespaces {
    fabric: Arc<dyn Fabric>,
    recovery: Option<Arc<Recovery>>,
    limits: SocketLimits,
    parser: Parser,
    map: RwLock<HashMap<Box<str>, Arc<Namespace>>>,
}

impl NamespaceSource for Namespaces {
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

impl Namespaces {
    fn get_or_create(&self, name: &str) -> Arc<Namespace> {
        if let Some(ns) = self.namespace(name) {
            return ns;
        }
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.into())
            .or_insert_with(|| {
                Namespace::new(
                    name,
                    self.fabric.clone(),
                    self.recovery
                        .clone()
                        .map(|r| r as Arc<dyn super::socket::RecoverySink>),
                    self.limits,
                    self.parser,
                )
            })
            .clone()
    }
}

/// Longest a moved socket keeps an ack owed to another node (the API
/// waits at most 300 s).
const MAX_MOVED_ACK_MS: u64 = 600_000;

pub struct SocketIo<A: Application> {
    app: Arc<A>,
    config: SocketIoConfig,
    fabric: Arc<dyn Fabric>,
    recovery: Option<Arc<Recovery>>,
    namespaces: Arc<Namespaces>,
    /// Waiters of emits with ack made here for sockets whose sessions
    /// moved to other nodes since, by socket id: the client's answer comes
    /// back from there. A waiter that gave up (its timeout) is swept out.
    moved_acks: Mutex<HashMap<Sid, AckWaiters>>,
}

impl<A: Application> SocketIo<A> {
    /// With `recovery`, connection state recovery is on (its tasks start
    /// here, so this needs the runtime).
    pub fn new(
        app: Arc<A>,
        config: SocketIoConfig,
        fabric: Arc<dyn Fabric>,
        recovery: Option<Arc<Recovery>>,
    ) -> SocketIo<A> {
        let namespaces = Arc::new(Namespaces {
            fabric: fabric.clone(),
            recovery: recovery.clone(),
            limits: config.limits,
            parser: config.parser,
            map: RwLock::new(HashMap::new()),
        });
        if let Some(recovery) = &recovery {
            recovery.start(namespaces.clone(), fabric.clone());
        }
        SocketIo {
            app,
            config,
            fabric,
            recovery,
            namespaces,
            moved_acks: Mutex::new(HashMap::new()),
        }
    }

    pub fn app(&self) -> &Arc<A> {
        &self.app
    }

    pub fn recovery(&self) -> Option<&Arc<Recovery>> {
        self.recovery.as_ref()
    }

    /// The wire form every namespace speaks.
    pub fn parser(&self) -> Parser {
        self.config.parser
    }

    /// The namespace, if any client ever joined it.
    pub fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.namespace(name)
    }

    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.namespaces.namespaces()
    }

    fn namespace_or_create(&self, name: &str) -> Arc<Namespace> {
        self.namespaces.get_or_create(name)
    }

    /// A recoverable emit another node could not log: delivered here too.
    pub fn deliver_unlogged(&self, entry: LogEntry) {
        if let Some(recovery) = &self.recovery {
            recovery.deliver_unlogged(entry);
        }
    }

    /// Drops a socket that its client recovered on another node (the
    /// application sees nothing: the socket lives on there). False if it
    /// is not here.
    pub fn evict(&self, evict: &Evict) -> bool {
        let Some(id) = Sid::parse(&evict.socket_id) else {
            return false;
        };
        let Some(socket) = self
            .namespace(&evict.namespace)
            .and_then(|ns| ns.socket(&id))
            .filter(|s| s.session().sid().as_str() == evict.sid)
        else {
            return false;
        };
        evict_local(&socket);
        true
    }

    /// A client's answer, on the node its session moved to, to an emit
    /// with ack made here: resolves the waiter (still on the socket if
    /// the move is not finished here). False if nobody waits for it.
    pub fn resolve_moved_ack(&self, answer: MovedAckAnswer) -> Result<bool, PacketError> {
        let Some(id) = Sid::parse(&answer.socket_id) else {
            return Ok(false);
        };
        let payload = Payload::checked(answer.args_json, answer.attachments)?;
        // Under the table's lock, as the move of the waiters into it.
        let mut table = self.moved_acks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiters) = table.get_mut(&id) {
            if let Some(waiter) = waiters.remove(&answer.id) {
                if waiters.is_empty() {
                    table.remove(&id);
                }
                return Ok(waiter.resolve(payload));
            }
        }
        // The move is not finished here: the waiter is still on the socket
        // (of that very session).
        let socket = self
            .namespace(&answer.namespace)
            .and_then(|ns| ns.socket(&id))
            .filter(|s| s.session().sid().as_str() == answer.sid);
        Ok(socket.is_some_and(|s| s.on_ack(answer.id, payload).is_none()))
    }

    /// The session of `socket` moved away: its ack waiters wait on here.
    fn park_ack_waiters(&self, socket: &SocketRef) {
        let mut table = self.moved_acks.lock().unwrap_or_else(|e| e.into_inner());
        let waiters = socket.take_ack_waiters();
        let now = std::time::Instant::now();
        table.retain(|_, waiters| {
            waiters.retain(|_, w| w.waits(now));
            !waiters.is_empty()
        });
        if !waiters.is_empty() {
            // Moved away and back before: earlier waiters stay parked too.
            table.entry(socket.id()).or_default().extend(waiters);
        }
    }

    fn dispatch(
        &self,
        session: &SessionRef<ClientState>,
        packet: Packet<'_>,
        attachments: Vec<Bytes>,
        binary: bool,
    ) {
        let state = session.data();
        let v2 = v2::is_v2(session);
        let nsp = match &packet {
            // A v2 client's CONNECT has its query in the namespace part.
            Packet::Connect { nsp, .. } if v2 => {
                let (nsp, query) = v2::namespace(nsp);
                return self.connect(session, nsp, &v2::auth(query));
            }
            Packet::Connect { nsp, auth } => {
                return self.connect(session, nsp, auth.unwrap_or("{}"));
            }
            Packet::Disconnect { nsp }
            | Packet::Event { nsp, .. }
            | Packet::Ack { nsp, .. }
            | Packet::ConnectError { nsp } => *nsp,
        };
        let nsp = if v2 { v2::namespace(nsp).0 } else { nsp };
        let Some(socket) = state.socket(nsp) else {
            // The reference closes a client that talks to a namespace it
            // has not joined; while a CONNECT is being decided, the packet
            // is only dropped.
            if !state.is_connecting(nsp) {
                self.parse_error(session, "packet for a namespace not joined");
            }
            return;
        };
        let args = |args: String| {
            if binary {
                Payload::checked(args, attachments)
            } else {
                Ok(Payload::from_json_array(args))
            }
        };
        match packet {
            Packet::Connect { .. } => {}
            Packet::Disconnect { .. } => {
                state.remove_socket(&socket);
                if let Some(recovery) = &self.recovery {
                    recovery.forget(&socket, false);
                }
                if socket.detach() {
                    self.app
                        .on_disconnect(&socket, DisconnectReason::ClientNamespaceDisconnect);
                }
            }
            Packet::Event { id, name, .. } if name.len() > self.config.limits.max_event_name => {
                ringway_engineio::metrics::metrics()
                    .limit_refusals
                    .add(1, &attr("limit", "event_name"));
                if let Some(id) = id {
                    let error = format!(
                        r#"[{{"error":"event name longer than {} bytes"}}]"#,
                        self.config.limits.max_event_name
                    );
                    let _ =
                        AckSender::new(socket.clone(), id).send(&Payload::from_json_array(error));
                }
            }
            Packet::Event {
                id,
                name,
                args: raw,
                ..
            } => match args(raw) {
                Ok(args) => {
                    let ack = id.map(|id| AckSender::new(socket.clone(), id));
                    self.app.on_event(&socket, Event { name, args }, ack);
                }
                Err(err) => self.parse_error(session, err),
            },
            Packet::Ack { id, args: raw, .. } => match (args(raw), id) {
                (Ok(args), Some(id)) => {
                    if let Some((node, args)) = socket.on_ack(id, args) {
                        let (args_json, attachments) = args.into_parts();
                        let answer = MovedAckAnswer {
                            namespace: socket.namespace().name().to_owned(),
                            socket_id: socket.id().to_string(),
                            id,
                            args_json,
                            attachments,
                            sid: session.sid().to_string(),
                        };
                        if *node == *self.fabric.node_id() {
                            // Moved away and back: the waiter is parked here.
                            let _ = self.resolve_moved_ack(answer);
                        } else {
                            self.fabric.moved_ack(&node, answer);
                        }
                    }
                }
                (Ok(_), None) => {}
                (Err(err), _) => self.parse_error(session, err),
            },
            // Only servers send CONNECT_ERROR.
            Packet::ConnectError { .. } => self.parse_error(session, "CONNECT_ERROR from a client"),
        }
    }

    /// A message under the msgpack parser: every packet is one binary
    /// message, whole (no attachments follow); a text message is a parse
    /// error, as for the reference (its decoder fails on a string).
    fn on_msgpack(&self, session: &SessionRef<ClientState>, message: Message<'_>) {
        let data = match message {
            Message::Binary(data) => data,
            Message::Text(_) => return self.parse_error(session, PacketError::TextWithMsgpack),
        };
        let mut decoded = match super::msgpack::decode(&data) {
            Ok(decoded) => decoded,
            Err(err) => return self.parse_error(session, err),
        };
        let (packet, attachments) = decoded.take();
        let binary = !attachments.is_empty();
        self.dispatch(session, packet, attachments, binary);
    }

    fn parse_error(&self, session: &SessionRef<ClientState>, err: impl std::fmt::Display) {
        debug!(sid = %session.sid(), %err, "bad socket.io packet");
        session.close_for_client(CloseReason::ParseError);
    }

    fn connect(&self, session: &SessionRef<ClientState>, nsp: &str, auth: &str) {
        if !self.app.has_namespace(nsp) {
            let _ = session.send(self.config.parser.encode_connect_error(
                nsp,
                "Invalid namespace",
                None,
            ));
            failed_connect(session, self.config.limits);
            return;
        }
        match session.data().begin_connect(nsp) {
            Ok(()) => {}
            // A second CONNECT to a joined namespace breaks the protocol.
            Err(ConnectRefused::Joined) => {
                return self.parse_error(session, "namespace joined twice")
            }
            Err(ConnectRefused::Busy) => return,
        }
        // With recovery on, the client's `pid` and `offset` are ours: the
        // application sees the rest of its CONNECT payload. (A v2 client
        // cannot recover: its payload is its query, left as it is.)
        let (auth, ask) = match &self.recovery {
            Some(_) if !v2::is_v2(session) => super::recovery::split_auth(auth),
            _ => (auth.to_owned(), None),
        };
        let request = ConnectRequest {
            namespace: nsp.to_owned(),
            auth: auth.clone(),
            session: session.clone(),
        };
        let mut decision = self.app.authorize(request);
        // Most decisions are immediate (the echo application, JWT): no
        // task, unless a recovery has to read the store.
        if ask.is_none() {
            if let Some(result) = (&mut decision).now_or_never() {
                return self.finish_connect(session, nsp, &auth, result);
            }
        }
        // An asynchronous decision (an upstream hook) or a recovery
        // finishes in its own task.
        let app = self.app.clone();
        let ns = self.namespace_or_create(nsp);
        let session = session.clone();
        let recovery = self.recovery.clone();
        tokio::spawn(async move {
            let result = decision.await;
            match (result, ask, &recovery) {
                (Ok(grant), Some(ask), Some(recovery)) => {
                    connect_or_recover(&app, &ns, &session, &auth, grant, ask, recovery).await
                }
                (result, _, _) => {
                    finish_connect(&app, &ns, &session, &auth, result, recovery.as_ref())
                }
            }
        });
    }

    fn finish_connect(
        &self,
        session: &SessionRef<ClientState>,
        nsp: &str,
        auth: &str,
        result: Result<Grant, Refusal>,
    ) {
        let ns = self.namespace_or_create(nsp);
        finish_connect(
            &self.app,
            &ns,
            session,
            auth,
            result,
            self.recovery.as_ref(),
        );
    }
}

/// Counts a refused CONNECT of `session`; past the limit the session is
/// closed (a client that keeps asking costs nothing more).
fn failed_connect(session: &SessionRef<ClientState>, limits: SocketLimits) {
    let failed = session.data().connect_failed();
    if limits.max_failed_connects > 0 && failed > limits.max_failed_connects {
        ringway_engineio::metrics::metrics()
            .limit_refusals
            .add(1, &attr("limit", "failed_connects"));
        debug!(sid = %session.sid(), failed, "too many refused CONNECTs: closing");
        session.close_for_client(CloseReason::ParseError);
    }
}

fn finish_connect<A: Application>(
    app: &Arc<A>,
    ns: &Arc<Namespace>,
    session: &SessionRef<ClientState>,
    auth: &str,
    result: Result<Grant, Refusal>,
    recovery: Option<&Arc<Recovery>>,
) {
    let grant = match result {
        Ok(grant) => grant,
        Err(refusal) => {
            let frame = if v2::is_v2(session) {
                v2::connect_error(ns.name(), &refusal.message, refusal.data.as_ref())
            } else {
                ns.parser()
                    .encode_connect_error(ns.name(), &refusal.message, refusal.data.as_ref())
            };
            let _ = session.send(frame);
            connect_ended(session, ns.name());
            failed_connect(session, ns.limits());
            return;
        }
    };
    if let Some(recovery) = recovery {
        return finish_recoverable(app, ns, session, auth, grant, recovery);
    }
    let socket = Socket::new(
        ns.clone(),
        session.clone(),
        auth.into(),
        grant.user.map(String::into_boxed_str),
        grant.data,
    );
    ns.insert(socket.clone());
    let user_room = socket.user().map(super::socket::user_room);
    let receipts: Vec<_> = grant
        .rooms
        .iter()
        .filter_map(|room| match socket.join(room) {
            Ok(receipt) => receipt,
            Err(err) => {
                debug!(room, %err, "initial room refused");
                None
            }
        })
        .chain(user_room.and_then(|room| socket.join_any(&room)))
        .collect();
    let answer = if v2::is_v2(session) {
        v2::connected(ns.name())
    } else {
        ns.parser()
            .encode_connect(ns.name(), &format!("{{\"sid\":\"{}\"}}", socket.id()))
    };
    let (ns, session) = (ns.clone(), session.clone());
    // The namespace stays "connecting" (so the session is not handed off)
    // until its answer is queued.
    let connected = move |app: &A| {
        if !session.data().join_connecting(socket.clone()) {
            // The session closed while the CONNECT was being decided.
            connect_ended(&session, ns.name());
            socket.detach();
            return;
        }
        let answered = socket.connected() && session.send(answer).is_ok();
        connect_ended(&session, ns.name());
        if answered {
            app.on_connect(&socket);
        }
    };
    if receipts.is_empty() {
        return connected(app);
    }
    // Rooms new on this node: answer the CONNECT once every node knows of
    // them, so emits into them from anywhere reach the new socket.
    let app = app.clone();
    tokio::spawn(async move {
        for receipt in receipts {
            receipt.await;
        }
        connected(&app);
    });
}

/// A fresh socket with recovery on. Under the deliverer's gate, at one
/// position of the log: the socket and its initial rooms go in, it joins
/// its session's sockets and its CONNECT answer (with the pid) is queued,
/// so no event of the log can reach the client before the answer and none
/// after that position is missed. Its state is written right after (the
/// answer does not wait for it: a node killed within that write leaves a
/// pid that cannot be recovered, and that client gets a fresh socket).
/// Rooms need no confirmation from the other nodes: every node reads the
/// log. A v2 client's socket is only tracked (no pid, no offsets, nothing
/// stored): it gets its events from the log all the same.
fn finish_recoverable<A: Application>(
    app: &Arc<A>,
    ns: &Arc<Namespace>,
    session: &SessionRef<ClientState>,
    auth: &str,
    grant: Grant,
    recovery: &Arc<Recovery>,
) {
    let v2 = v2::is_v2(session);
    let socket = {
        let gate = recovery.gate();
        let at = *gate;
        let socket_recovery = if v2 {
            SocketRecovery::tracked(at)
        } else {
            SocketRecovery::fresh(at)
        };
        let socket = Socket::restored(
            ns.clone(),
            session.clone(),
            Sid::random(),
            auth.into(),
            grant.user.map(String::into_boxed_str),
            grant.data,
            0,
            Some(socket_recovery),
        );
        let mut rooms: Vec<(String, Offset)> = Vec::new();
        let named = grant.rooms.into_iter().filter(|r| !is_hidden_room(r));
        for room in named.chain(socket.user().map(user_room)) {
            if !rooms.iter().any(|(r, _)| *r == room) {
                rooms.push((room, at));
            }
        }
        socket.set_rooms(rooms);
        ns.insert(socket.clone());
        socket.attach_rooms();
        if !session.data().join_connecting(socket.clone()) {
            // The session closed while the CONNECT was being decided.
            connect_ended(session, ns.name());
            socket.detach();
            return;
        }
        let answer = if v2 {
            v2::connected(ns.name())
        } else {
            let pid = socket
                .recovery()
                .map(|r| r.pid.to_string())
                .unwrap_or_default();
            let answer = format!("{{\"sid\":\"{}\",\"pid\":\"{pid}\"}}", socket.id());
            ns.parser().encode_connect(ns.name(), &answer)
        };
        let answered = session.send(answer).is_ok();
        connect_ended(session, ns.name());
        if !answered {
            return;
        }
        socket
    };
    recovery.save(&socket);
    app.on_connect(&socket);
}

/// A CONNECT that asks to recover: the socket comes back if it can, else a
/// fresh one (as the reference does).
async fn connect_or_recover<A: Application>(
    app: &Arc<A>,
    ns: &Arc<Namespace>,
    session: &SessionRef<ClientState>,
    auth: &str,
    grant: Grant,
    ask: RecoveryAsk,
    recovery: &Arc<Recovery>,
) {
    let outcome = recover(recovery, ns, session, auth, &grant, &ask).await;
    let label = match &outcome {
        Ok(_) => "recovered",
        Err(missed) => missed.as_str(),
    };
    super::metrics::metrics()
        .recoveries
        .add(1, &ringway_telemetry::attr("outcome", label));
    match outcome {
        Ok(socket) => {
            debug!(sid = %session.sid(), socket = %socket.id(), "socket recovered");
            app.on_connect(&socket);
        }
        Err(missed) => {
            debug!(sid = %session.sid(), reason = missed.as_str(), "not recovered: fresh socket");
            finish_connect(app, ns, session, auth, Ok(grant), Some(recovery));
        }
    }
}

async fn recover(
    recovery: &Arc<Recovery>,
    ns: &Arc<Namespace>,
    session: &SessionRef<ClientState>,
    auth: &str,
    grant: &Grant,
    ask: &RecoveryAsk,
) -> Result<SocketRef, Missed> {
    let (generation, state) = recovery.load(&ask.pid).await?.ok_or(Missed::UnknownPid)?;
    // Never someone else's socket: same namespace, same user as the
    // application just decided.
    if state.namespace != ns.name() || state.user != grant.user {
        return Err(Missed::Mismatch);
    }
    let id = Sid::parse(&state.socket_id).ok_or(Missed::Mismatch)?;
    let started_at = Offset::parse(&state.started_at).ok_or(Missed::Mismatch)?;
    let from = match &ask.offset {
        None => started_at,
        Some(offset) => Offset::parse(offset).ok_or(Missed::BadOffset)?,
    };
    let socket = Socket::restored(
        ns.clone(),
        session.clone(),
        id,
        auth.into(),
        state.user.clone().map(String::into_boxed_str),
        (!state.data.is_empty()).then(|| state.data.clone()),
        0,
        Some(SocketRecovery::restored(
            &ask.pid,
            generation + 1,
            started_at,
        )),
    );
    socket.set_rooms(
        state
            .rooms
            .iter()
            .filter_map(|r| Some((r.room.clone(), Offset::parse(&r.since)?)))
            .collect(),
    );
    recovery.take_over(&socket, generation).await?;
    // A copy the old node may still hold goes away (before this one is
    // installed: both have the same id).
    if state.node == recovery.node_id() {
        if let Some(old) = ns.socket(&id) {
            evict_local(&old);
        }
    } else if let Some(fabric) = recovery.fabric().filter(|_| !state.node.is_empty()) {
        fabric.evict(
            &state.node,
            Evict {
                sid: state.sid.clone(),
                namespace: state.namespace.clone(),
                socket_id: state.socket_id.clone(),
            },
        );
    }
    let answer = format!("{{\"sid\":\"{}\",\"pid\":\"{}\"}}", id, ask.pid);
    let (done, installed) = oneshot::channel();
    // The deliverer adds the socket to its session right before the
    // answer goes out (the namespace is "connecting" until then).
    let answer = ns.parser().encode_connect(ns.name(), &answer);
    let answering = socket.clone();
    recovery.install(Install {
        socket: socket.clone(),
        from,
        check: true,
        first: Some(Box::new(move || answer_connect(&answering, answer))),
        done: Some(done),
    });
    if installed.await.unwrap_or(false) {
        return Ok(socket);
    }
    // Not covered: the fresh socket that follows takes the namespace.
    recovery.moved_away(&socket);
    socket.detach();
    Err(Missed::NotCovered)
}

/// Ends an accepted CONNECT whose answer goes out now: the socket joins
/// its session's sockets, then the answer is queued, then the namespace
/// stops "connecting". False if the session closed meanwhile.
fn answer_connect(socket: &SocketRef, answer: Frame) -> bool {
    let session = socket.session();
    let answered = session.data().join_connecting(socket.clone()) && session.send(answer).is_ok();
    connect_ended(session, socket.namespace().name());
    answered
}

/// A CONNECT of this session ended (answered, refused, or its session
/// closed): the namespace stops "connecting", and a handoff waiting for
/// it looks again.
fn connect_ended(session: &SessionRef<ClientState>, nsp: &str) {
    session.data().end_connect(nsp);
    session.upper_changed();
}

/// Drops a socket here without telling the application: its client
/// recovered it elsewhere. Its session closes if nothing is left on it.
fn evict_local(socket: &SocketRef) {
    let session = socket.session().clone();
    session.data().remove_socket(socket);
    if let Some(recovery) = socket.namespace().recovery() {
        recovery.moved_away(socket);
    }
    socket.detach();
    if session.data().sockets().is_empty() {
        session.close(CloseReason::ForcedClose);
    }
}

impl<A: Application> EngineHandler for SocketIo<A> {
    type Data = ClientState;
    type Snapshot = ClientSnapshot;

    /// A Socket.IO v2 client (Engine.IO v3) is joined to `/` at once,
    /// with the payload `{}`: it never asks (the reference does the same).
    fn on_open(&self, session: &SessionRef<ClientState>) {
        if v2::is_v2(session) {
            self.connect(session, "/", "{}");
        }
    }

    fn open_timeout(&self) -> Option<Duration> {
        Some(self.config.connect_timeout)
    }

    /// A session that joined no namespace in time is closed (the
    /// reference's connectTimeout), so bare handshakes hold nothing.
    fn on_open_timeout(&self, session: &SessionRef<ClientState>) {
        if !session.data().ever_joined() {
            debug!(sid = %session.sid(), "no namespace joined in time");
            session.close_for_client(CloseReason::ForcedClose);
        }
    }

    fn on_message(&self, session: &SessionRef<ClientState>, message: Message<'_>) {
        if self.config.parser == Parser::Msgpack {
            return self.on_msgpack(session, message);
        }
        let state = session.data();
        match message {
            Message::Text(text) => {
                if state.has_partial() {
                    return self.parse_error(session, PacketError::UnexpectedText);
                }
                let packet = match decode(text) {
                    Ok(packet) => packet,
                    Err(err) => return self.parse_error(session, err),
                };
                let expected = packet.attachments();
                if expected == 0 {
                    return self.dispatch(session, packet, Vec::new(), false);
                }
                let partial = match packet {
                    Packet::Event {
                        nsp,
                        id,
                        name,
                        args,
                        ..
                    } => Partial {
                        nsp: nsp.to_owned(),
                        id,
                        name: Some(name),
                        args,
                        expected,
                        received: Vec::with_capacity(expected),
                    },
                    Packet::Ack { nsp, id, args, .. } => Partial {
                        nsp: nsp.to_owned(),
                        id,
                        name: None,
                        args,
                        expected,
                        received: Vec::with_capacity(expected),
                    },
                    _ => return,
                };
                state.start_partial(partial);
            }
            Message::Binary(data) => match state.push_attachment(data) {
                Err(UnexpectedAttachment) => {
                    self.parse_error(session, PacketError::UnexpectedBinary)
                }
                Ok(None) => {}
                Ok(Some(partial)) => {
                    let Partial {
                        nsp,
                        id,
                        name,
                        args,
                        expected,
                        received,
                    } = *partial;
                    let packet = match name {
                        Some(name) => Packet::Event {
                            nsp: &nsp,
                            id,
                            name,
                            args,
                            attachments: expected,
                        },
                        None => Packet::Ack {
                            nsp: &nsp,
                            id,
                            args,
                            attachments: expected,
                        },
                    };
                    self.dispatch(session, packet, received, true);
                }
            },
        }
    }

    fn on_close(&self, session: &SessionRef<ClientState>, reason: CloseReason) {
        for socket in session.data().close() {
            if reason == CloseReason::HandedOff {
                self.park_ack_waiters(&socket);
            }
            if let Some(recovery) = &self.recovery {
                match reason {
                    CloseReason::HandedOff => recovery.moved_away(&socket),
                    _ => recovery.forget(&socket, super::recovery::recoverable(reason)),
                }
            }
            // A session handed off lives on elsewhere: its sockets leave
            // this node without the application seeing a disconnect.
            if socket.detach() && reason != CloseReason::HandedOff {
                self.app
                    .on_disconnect(&socket, DisconnectReason::Session(reason));
            }
        }
    }

    /// With recovery on, under the deliverer's gate: the queue taken with
    /// the state holds every entry up to the position sent, none after.
    fn export(
        &self,
        session: &SessionRef<ClientState>,
        take: &mut dyn FnMut(),
    ) -> Result<Option<ClientSnapshot>, NotMovable> {
        let gate = self.recovery.as_ref().map(|r| r.gate());
        let mut state = session
            .data()
            .export(self.fabric.node_id())
            .ok_or(NotMovable)?;
        if let Some(position) = gate.as_deref() {
            state.position = position.to_string();
        }
        take();
        // Emits with ack made since the export are in the queue taken.
        session
            .data()
            .refresh_acks(&mut state, self.fabric.node_id());
        Ok(Some(state))
    }

    fn restore(&self, session: &SessionRef<ClientState>, state: Option<ClientSnapshot>) {
        let Some(state) = state else {
            return;
        };
        let client = session.data();
        client.restore_flags(state.ever_joined, state.partial);
        let from = self.recovery.as_ref().zip(Offset::parse(&state.position));
        // A v2 client's sockets have no pid: tracked in the log all the same.
        let v2 = v2::is_v2(session);
        for s in state.sockets {
            let Some(id) = Sid::parse(&s.id) else {
                debug!(sid = %session.sid(), "handed-off socket with a bad id dropped");
                continue;
            };
            let ns = self.namespace_or_create(&s.namespace);
            let moved = from
                .filter(|_| !s.pid.is_empty() || v2)
                .map(|(recovery, from)| {
                    let started_at = Offset::parse(&s.started_at).unwrap_or(from);
                    (
                        recovery,
                        from,
                        SocketRecovery::restored(&s.pid, s.generation, started_at),
                    )
                });
            let (moved, socket_recovery) = match moved {
                Some((recovery, from, r)) => (Some((recovery, from)), Some(r)),
                None => (None, None),
            };
            let socket = Socket::restored(
                ns.clone(),
                session.clone(),
                id,
                s.auth.into_boxed_str(),
                s.user.map(String::into_boxed_str),
                (!s.data.is_empty()).then_some(s.data),
                s.next_ack_id,
                socket_recovery,
            );
            let now = std::time::Instant::now();
            socket.set_moved_acks(
                s.moved_acks
                    .into_iter()
                    .filter(|a| !a.node.is_empty() && a.expires_in_ms > 0)
                    .map(|a| AwaitedAck {
                        id: a.id,
                        node: a.node.into_boxed_str(),
                        deadline: now
                            + Duration::from_millis(a.expires_in_ms.min(MAX_MOVED_ACK_MS)),
                    }),
            );
            client.add_restored(socket.clone());
            match moved {
                Some((recovery, from)) => {
                    // Into the namespace after what the old owner had
                    // delivered (the queue that came with the session).
                    let since = s
                        .room_since
                        .iter()
                        .map(|o| Offset::parse(o).unwrap_or(from));
                    socket.set_rooms(
                        s.rooms
                            .into_iter()
                            .zip(since.chain(std::iter::repeat(from)))
                            .collect(),
                    );
                    recovery.save(&socket);
                    recovery.install(Install {
                        socket,
                        from,
                        check: false,
                        first: None,
                        done: None,
                    });
                }
                None => {
                    ns.insert(socket.clone());
                    for room in &s.rooms {
                        socket.join_any(room);
                    }
                }
            }
        }
    }
}
