//! The session table and the request entry point: every HTTP request for
//! an Engine.IO path comes here, is checked the way the reference server
//! checks it, and goes to the polling or WebSocket transport.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{debug, trace, Instrument};

use super::admission::{Admission, AdmissionConfig, Refusal};
use super::body::{Body, Receipt};
use super::directory::{
    Directory, ForwardedAnswer, ForwardedRequest, Handover, Located, SessionSnapshot,
};
use super::errors::{DecodeError, RequestError};
use super::handler::{EngineHandler, Message};
use super::packet::{Frame, Packet};
use super::payload::{decode_for, decode_item_for, PayloadItem, PollBody};
use super::protocol::{Framing, Protocol};
use super::query::EngineQuery;
use super::session::{
    BeginError, CloseReason, Handshake, HeldAnswer, PollGuard, PollOutcome, PostGuard, Refused,
    Session, SessionRef, TransportKind,
};
use super::sid::{Sid, SidKey};
use super::websocket;
use ringway_telemetry::{attr, seconds};

use crate::metrics::metrics;

mod mobility;
mod polling;

pub use mobility::NotHandedOff;
use polling::PostBody;

/// Engine.IO settings; defaults are the reference server's.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Largest message or POST body accepted (the reference's
    /// maxHttpBufferSize).
    pub max_payload: usize,
    /// How long a WebSocket may take to finish an upgrade.
    pub upgrade_timeout: Duration,
    /// Bound of each session's outgoing queue, in bytes; past it the
    /// session is closed as a slow consumer.
    pub max_queued_bytes: usize,
    /// WebSocket read buffer per connection (grows for large messages).
    pub ws_read_buffer: usize,
    /// WebSocket write buffer threshold per connection: the frames of one
    /// batch are written together until they exceed it.
    pub ws_write_buffer: usize,
    /// Shortest time between two writes to one WebSocket (zero: none).
    pub ws_write_interval: Duration,
    /// Most packets in one polling answer (0: no limit). python-engineio
    /// refuses answers of more than 16 packets and drops the session.
    pub max_poll_packets: usize,
    /// Signs this cluster's session ids; a request with another id is
    /// refused before anything else.
    pub sid_key: SidKey,
    /// Sessions per node and per client address, handshake rates.
    pub admission: AdmissionConfig,
    /// Longest a POST body may take to arrive.
    pub body_timeout: Duration,
    /// Bytes of POST bodies being read at once, node-wide; a POST waits
    /// (within its body timeout) for its share.
    pub max_body_buffer: usize,
    /// Engine.IO v3 handshakes (`EIO=3`, Socket.IO v2 clients) are taken
    /// (the reference's `allowEIO3`); without it they get "Unsupported
    /// protocol version".
    pub allow_eio3: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            upgrade_timeout: Duration::from_millis(10_000),
            max_queued_bytes: 4 << 20,
            ws_read_buffer: 1024,
            ws_write_buffer: 16 << 10,
            ws_write_interval: Duration::ZERO,
            max_poll_packets: 16,
            sid_key: SidKey::random(),
            admission: AdmissionConfig::default(),
            body_timeout: Duration::from_secs(10),
            max_body_buffer: 64 << 20,
            allow_eio3: false,
        }
    }
}

/// How long requests that still come here follow a session handed off
/// to another node.
const MOVED_MEMORY: Duration = Duration::from_secs(60);
/// How long a request waits for a handoff in progress to finish.
const MOVE_WAIT: Duration = Duration::from_secs(2);
/// Longest a forwarded poll's answer to a request without a stamp is
/// held for its forwarding node's receipt; past it, its packets go back to
/// the queue. (The receipt comes within a millisecond, or the forwarder's
/// connection breaks.) A stamped request's answer is settled by the
/// client's next request instead ([`Session::settle_by_request`]).
pub const HOLD_WAIT: Duration = Duration::from_secs(3);
/// Longest a polling session closed for its client between two GETs waits
/// for the next GET to carry the close packet.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// How long a polling session closed by its client's close packet (in a
/// POST) is still found by a GET, which gets a noop: the client sent that
/// GET before the close, on another connection, and it was processed
/// after it. Later GETs find no session, as from the reference.
const CLIENT_CLOSE_GRACE: Duration = Duration::from_millis(50);
/// How long a poll that began while a WebSocket was attached waits, once
/// the probe is answered, for the `5` before it gets its noop: the
/// reference's upgrade check interval.
const UPGRADE_TICK: Duration = Duration::from_millis(100);

/// Polling requests held open by the sessions of an engine.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeldRequests {
    /// GETs waiting for packets.
    pub polls: u64,
    /// POSTs being read or applied.
    pub posts: u64,
}

pub struct Engine<H: EngineHandler> {
    config: EngineConfig,
    handler: H,
    directory: Arc<dyn Directory<H::Snapshot>>,
    sessions: RwLock<HashMap<Sid, SessionRef<H::Data>>>,
    /// Sessions handed off lately, and the node they went to.
    moved: Mutex<HashMap<Sid, (String, Instant)>>,
    /// Sessions being taken over from another node right now.
    arriving: Mutex<HashSet<Sid>>,
    /// Notified when a take-over ends (the session arrived, or not).
    arrivals: tokio::sync::Notify,
    /// Every session was closed (shutdown): none waits for its client to
    /// fetch the close packet any more.
    closing_all: AtomicBool,
    /// Who may open a session.
    admission: Admission,
    /// The POST bodies being read, in KiB (see `EngineConfig::max_body_buffer`).
    body_budget: Arc<tokio::sync::Semaphore>,
}

impl<H: EngineHandler> Engine<H> {
    pub fn new(
        config: EngineConfig,
        handler: H,
        directory: Arc<dyn Directory<H::Snapshot>>,
    ) -> Arc<Self> {
        let budget = (config.max_body_buffer.max(config.max_payload) / 1024).max(1);
        Arc::new(Engine {
            admission: Admission::new(config.admission),
            body_budget: Arc::new(tokio::sync::Semaphore::new(budget)),
            config,
            handler,
            directory,
            sessions: RwLock::new(HashMap::new()),
            moved: Mutex::new(HashMap::new()),
            arriving: Mutex::new(HashSet::new()),
            arrivals: tokio::sync::Notify::new(),
            closing_all: AtomicBool::new(false),
        })
    }

    /// Who may open a session (its state, for tests and metrics).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Ids of every live session here.
    pub fn sids(&self) -> Vec<Sid> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// A live session. A closed one is gone for everyone at once, even
    /// before its lifecycle task has removed it from the table.
    pub fn session(&self, sid: &Sid) -> Option<SessionRef<H::Data>> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(sid)
            .filter(|session| !session.is_closed())
            .cloned()
    }

    /// A live session, or one closed for its client that has not fetched
    /// the close packet yet: what a polling GET or POST is served.
    fn polling_session(&self, sid: &Sid) -> Option<SessionRef<H::Data>> {
        self.session(sid).or_else(|| {
            self.sessions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(sid)
                .filter(|session| session.owes_close_packet())
                .cloned()
        })
    }

    pub fn session_count(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Live sessions here by transport: (polling, websocket).
    pub fn transport_counts(&self) -> (u64, u64) {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        let websocket = sessions
            .values()
            .filter(|s| s.transport() == TransportKind::WebSocket)
            .count() as u64;
        (sessions.len() as u64 - websocket, websocket)
    }

    /// Polling requests held here right now: GETs pending until there is
    /// something to send, and POSTs being read or applied.
    pub fn held_requests(&self) -> HeldRequests {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        let mut held = HeldRequests::default();
        for session in sessions.values() {
            held.polls += u64::from(session.is_polling());
            held.posts += u64::from(session.is_posting());
        }
        held
    }

    /// Closes every session (server shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let sessions: Vec<_> = self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        self.closing_all.store(true, Ordering::SeqCst);
        for session in sessions {
            session.close(reason);
            session.wake_lifecycle();
        }
    }

    /// Handles one HTTP request for this engine's path.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        remote_addr: SocketAddr,
    ) -> Response<Body> {
        let is_upgrade = is_websocket_upgrade(&req);
        match self.route(req, remote_addr, is_upgrade).await {
            Ok(resp) => resp,
            Err(err) => {
                debug!(error = %err, upgrade = is_upgrade, "request refused");
                metrics()
                    .request_errors
                    .add(1, &attr("error", err.to_string()));
                if is_upgrade {
                    upgrade_error(err)
                } else {
                    error_response(err)
                }
            }
        }
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        remote_addr: SocketAddr,
        is_upgrade: bool,
    ) -> Result<Response<Body>, RequestError> {
        let raw_query = req.uri().query().unwrap_or("").to_owned();
        let query = EngineQuery::parse(&raw_query);
        let transport = match query.transport.as_deref() {
            Some("polling") => TransportKind::Polling,
            Some("websocket") => TransportKind::WebSocket,
            _ => return Err(RequestError::UnknownTransport),
        };

        // An empty sid counts as none (a new handshake), as in the reference.
        if let Some(sid) = query.sid.as_deref().filter(|s| !s.is_empty()) {
            // An id this cluster did not sign is unknown everywhere: no
            // lookup, no body read.
            let sid = Sid::parse(sid)
                .filter(|sid| sid.is_signed_by(&self.config.sid_key))
                .ok_or(RequestError::UnknownSid)?;
            let found = if is_upgrade {
                self.session(&sid)
            } else {
                self.polling_session(&sid)
            };
            let Some(session) = found else {
                return self
                    .route_elsewhere(sid, req, raw_query.clone(), &query, transport, is_upgrade)
                    .await;
            };
            // Every request of a session speaks its handshake's revision.
            if !session.protocol().matches(query.eio.as_deref()) {
                return Err(RequestError::BadRequest);
            }
            if is_upgrade {
                if transport != TransportKind::WebSocket {
                    return Err(RequestError::BadRequest);
                }
                let framing = Framing::of(session.protocol(), query.b64.as_deref());
                return self.upgrade_existing(req, session, framing);
            }
            let method = req.method().clone();
            let body = (method == Method::POST).then(|| PostBody::of(req));
            return self
                .serve_polling(&session, transport, method, body, &raw_query, false)
                .await;
        }

        // Handshake.
        if req.method() != Method::GET {
            return Err(RequestError::BadHandshakeMethod);
        }
        if !self.directory.open_for_handshakes() {
            return Err(RequestError::Unavailable);
        }
        if transport == TransportKind::WebSocket && !is_upgrade {
            return Err(RequestError::BadRequest);
        }
        let protocol = match query.eio.as_deref().and_then(Protocol::from_eio) {
            Some(Protocol::V4) => Protocol::V4,
            Some(Protocol::V3) if self.config.allow_eio3 => Protocol::V3,
            _ => return Err(RequestError::UnsupportedProtocolVersion),
        };
        let framing = Framing::of(protocol, query.b64.as_deref());
        if let Err(refusal) = self.admission.admit(
            remote_addr.ip(),
            self.session_count(),
            Instant::now().into_std(),
        ) {
            metrics()
                .limit_refusals
                .add(1, &attr("limit", refusal.as_str()));
            return Err(match refusal {
                Refusal::NodeFull | Refusal::TooManyAddresses => RequestError::ServerFull,
                Refusal::AddressFull => RequestError::TooManySessions,
                Refusal::AddressRate => RequestError::TooManyHandshakes,
            });
        }
        let handshake = Handshake {
            remote_addr,
            query: raw_query.clone(),
            raw_headers: Handshake::pack_headers(req.headers()),
            issued_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        match transport {
            TransportKind::Polling => {
                let session = self.open_session(TransportKind::Polling, handshake, framing);
                // The open packet is the first thing queued: answer with it
                // right away.
                self.poll(&session, &raw_query, false).await
            }
            TransportKind::WebSocket => self.upgrade_direct(req, handshake, framing),
        }
    }

    /// Serves a request that came with its body already read (forwarded,
    /// or routed back here), with the checks of a local request.
    async fn serve_here(
        &self,
        session: &SessionRef<H::Data>,
        request: ForwardedRequest,
        hold: bool,
    ) -> Result<Response<Body>, RequestError> {
        // The forwarded query carries the client's `EIO`: the owner checks
        // it against the session's revision, as for a local request.
        let query = EngineQuery::parse(&request.query);
        if !session.protocol().matches(query.eio.as_deref()) {
            return Err(RequestError::BadRequest);
        }
        let transport = match query.transport.as_deref() {
            Some("polling") => TransportKind::Polling,
            Some("websocket") => TransportKind::WebSocket,
            _ => return Err(RequestError::UnknownTransport),
        };
        let body = PostBody::Read {
            body: request.body,
            binary: request.binary_body,
        };
        let body = (request.method == Method::POST).then_some(body);
        self.serve_polling(
            session,
            transport,
            request.method,
            body,
            &request.query,
            hold,
        )
        .await
    }

    /// Creates a session, queues its open packet and starts its lifecycle.
    fn open_session(
        self: &Arc<Self>,
        transport: TransportKind,
        handshake: Handshake,
        framing: Framing,
    ) -> SessionRef<H::Data> {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let _span = tracing::info_span!("handshake", transport = transport.as_str()).entered();
        // The sid carries a point of this node's part of the ring, so
        // that any node finds the owner without I/O while membership holds
        // still: one draw, no retries (but for an id already taken, which
        // 88 random bits make a formality).
        let placement = self.directory.placement();
        let sid = loop {
            let sid = match placement {
                Some(point) => Sid::signed_at(&self.config.sid_key, point),
                None => Sid::signed(&self.config.sid_key),
            };
            if !sessions.contains_key(&sid) {
                break sid;
            }
        };
        let session = Arc::new(
            Session::new(
                sid,
                transport,
                self.config.max_queued_bytes,
                handshake,
                H::Data::default(),
            )
            .with_framing(framing),
        );
        sessions.insert(sid, session.clone());
        drop(sessions);

        let open = Frame::open(
            sid.as_str(),
            transport == TransportKind::Polling,
            self.config.ping_interval.as_millis() as u64,
            self.config.ping_timeout.as_millis() as u64,
            self.config.max_payload,
        );
        // A fresh session cannot be closed or full yet.
        let _ = session.send(open);
        self.directory.opened(sid, session.epoch());
        metrics()
            .handshakes
            .add(1, &attr("transport", transport.as_str()));
        debug!(sid = %sid, transport = transport.as_str(), eio = %framing.protocol, "session opened");
        self.handler.on_open(&session);
        let first_ping = self.config.ping_interval;
        let engine = self.clone();
        let lifecycle_session = session.clone();
        tokio::spawn(async move { engine.lifecycle(lifecycle_session, first_ping).await });
        session
    }

    /// Heartbeats until the session closes, then removes it and tells the
    /// handler. Every session has exactly one of these tasks.
    async fn lifecycle(self: Arc<Self>, session: SessionRef<H::Data>, first_ping: Duration) {
        let reason = self.heartbeat(&session, first_ping).await;
        // A polling client closed between two GETs still finds the session
        // with its next one, which carries the close packet; within a
        // bound. The layer above is told at once.
        let lingers = session.owes_close_packet();
        if !lingers {
            self.forget(&session);
        }
        debug!(sid = %session.sid(), %reason, "session closed");
        metrics()
            .session_closes
            .add(1, &attr("reason", reason.as_str()));
        self.directory
            .closed(session.sid(), session.epoch(), reason);
        self.handler.on_close(&session, reason);
        if lingers {
            let bound = match reason {
                CloseReason::TransportClose => CLIENT_CLOSE_GRACE,
                _ => CLOSE_LINGER,
            };
            let until = Instant::now() + bound;
            while session.owes_close_packet()
                && !self.closing_all.load(Ordering::SeqCst)
                && Instant::now() < until
            {
                tokio::select! {
                    _ = sleep_until(until) => {}
                    _ = session.lifecycle_event() => {}
                }
            }
            self.forget(&session);
        }
    }

    fn forget(&self, session: &SessionRef<H::Data>) {
        let removed = self
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session.sid());
        if removed.is_some() {
            self.admission.closed(session.handshake().remote_addr.ip());
        }
    }

    async fn heartbeat(&self, session: &SessionRef<H::Data>, first_ping: Duration) -> CloseReason {
        // The layer above may want one check a while after the open (the
        // Socket.IO connect timeout); done here, it costs no extra task.
        let mut open_check = self.handler.open_timeout().map(|t| Instant::now() + t);
        if session.protocol() == Protocol::V3 {
            return self.heartbeat_v3(session, open_check).await;
        }
        let mut interval = first_ping;
        loop {
            let deadline = Instant::now() + interval;
            interval = self.config.ping_interval;
            loop {
                let check_at = open_check.unwrap_or(deadline).min(deadline);
                tokio::select! {
                    _ = sleep_until(check_at) => {
                        if open_check.is_some_and(|at| at <= Instant::now()) {
                            open_check = None;
                            self.handler.on_open_timeout(session);
                            continue;
                        }
                        break;
                    }
                    _ = session.lifecycle_event() => {
                        if let Some(reason) = session.close_reason() {
                            return reason;
                        }
                    }
                }
            }
            if session.ping().is_err() {
                return session
                    .close_reason()
                    .unwrap_or(CloseReason::TransportClose);
            }
            let deadline = Instant::now() + self.config.ping_timeout;
            loop {
                tokio::select! {
                    _ = sleep_until(deadline) => {
                        session.close(CloseReason::PingTimeout);
                        return session.close_reason().unwrap_or(CloseReason::PingTimeout);
                    }
                    _ = session.lifecycle_event() => {
                        if let Some(reason) = session.close_reason() {
                            return reason;
                        }
                        if !session.awaiting_pong() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Engine.IO v3: the client pings, the server only answers (see
    /// [`Engine::on_packet`]). The session ends when no ping came within
    /// pingInterval + pingTimeout (the reference's v3 timeout), counted
    /// from the open (or the takeover here) and from each ping.
    async fn heartbeat_v3(
        &self,
        session: &SessionRef<H::Data>,
        mut open_check: Option<Instant>,
    ) -> CloseReason {
        let timeout = self.config.ping_interval + self.config.ping_timeout;
        let mut deadline = Instant::now() + timeout;
        loop {
            let check_at = open_check.unwrap_or(deadline).min(deadline);
            tokio::select! {
                _ = sleep_until(check_at) => {
                    if open_check.is_some_and(|at| at <= Instant::now()) {
                        open_check = None;
                        self.handler.on_open_timeout(session);
                        continue;
                    }
                    if Instant::now() >= deadline {
                        session.close(CloseReason::PingTimeout);
                        return session.close_reason().unwrap_or(CloseReason::PingTimeout);
                    }
                }
                _ = session.lifecycle_event() => {
                    if let Some(reason) = session.close_reason() {
                        return reason;
                    }
                    if session.take_client_ping() {
                        deadline = Instant::now() + timeout;
                    }
                }
            }
        }
    }

    /// A WebSocket binary message: the data as is in v4; in v3 the packet
    /// type byte (a message) comes first.
    pub(crate) fn on_binary_frame(
        &self,
        session: &SessionRef<H::Data>,
        data: Bytes,
    ) -> Result<(), CloseReason> {
        let data = match session.protocol() {
            Protocol::V4 => data,
            Protocol::V3 => super::payload_v3::decode_binary_message(&data)
                .map_err(|_| CloseReason::ParseError)?,
        };
        self.on_binary(session, data);
        Ok(())
    }

    /// A binary message from the client.
    pub(crate) fn on_binary(&self, session: &SessionRef<H::Data>, data: bytes::Bytes) {
        metrics().messages_in.add(1, &[]);
        metrics().bytes_in(data.len() as u64);
        self.handler.on_message(session, Message::Binary(data));
    }

    /// Applies one packet from the client.
    pub(crate) fn on_packet(
        &self,
        session: &SessionRef<H::Data>,
        packet: Packet<'_>,
        via: TransportKind,
    ) -> Result<(), CloseReason> {
        let v3 = session.protocol() == Protocol::V3;
        match packet {
            // v3 heartbeats go client -> server: a ping is answered, a
            // pong is the wrong direction (as the reference:
            // "invalid heartbeat direction").
            Packet::Ping if v3 => {
                if session.on_client_ping().is_err() {
                    return Err(session
                        .close_reason()
                        .unwrap_or(CloseReason::TransportError));
                }
            }
            Packet::Pong if v3 => return Err(CloseReason::TransportError),
            Packet::Pong => session.on_pong(),
            Packet::Message(text) => {
                metrics().messages_in.add(1, &[]);
                metrics().bytes_in(text.len() as u64);
                self.handler.on_message(session, Message::Text(text))
            }
            // Only polling honours the close packet; a WebSocket client
            // closes its socket instead (the reference ignores `1` there).
            Packet::Close if via == TransportKind::Polling => {
                return Err(CloseReason::TransportClose)
            }
            // v4 heartbeats go server -> client only; a probe belongs to
            // the upgrade handshake, not to an established transport.
            Packet::Ping | Packet::PingProbe => return Err(CloseReason::TransportError),
            Packet::Close | Packet::PongProbe | Packet::Upgrade | Packet::Noop => {}
        }
        Ok(())
    }

    /// Applies one WebSocket text frame (`b` + base64 is binary there too).
    pub(crate) fn on_text_frame(
        &self,
        session: &SessionRef<H::Data>,
        text: &str,
    ) -> Result<(), CloseReason> {
        match decode_item_for(session.protocol(), text) {
            Ok(PayloadItem::Packet(packet)) => {
                self.on_packet(session, packet, TransportKind::WebSocket)
            }
            Ok(PayloadItem::Binary(data)) => {
                self.on_binary(session, data);
                Ok(())
            }
            Err(_) => Err(CloseReason::ParseError),
        }
    }

    // ----- websocket -------------------------------------------------------

    /// Whether a request's `EIO` names a revision this node takes.
    fn speaks(&self, eio: Option<&str>) -> bool {
        match eio.and_then(Protocol::from_eio) {
            Some(Protocol::V4) => true,
            Some(Protocol::V3) => self.config.allow_eio3,
            None => false,
        }
    }

    /// `framing`: how the WebSocket carries binary (v3: `b64` of the
    /// upgrade request, as the reference's transport reads it).
    fn upgrade_existing(
        self: &Arc<Self>,
        req: Request<Incoming>,
        session: SessionRef<H::Data>,
        framing: Framing,
    ) -> Result<Response<Body>, RequestError> {
        let accept = websocket_accept_key(req.headers()).ok_or(RequestError::BadRequest)?;
        if let Err(refused) = session.attach_websocket() {
            if refused == Refused::Closed {
                return Err(RequestError::BadRequest);
            }
            // Upgraded or upgrading already: as the reference server, the
            // second WebSocket completes its handshake and is closed at
            // once; the session goes on over its transport.
            tokio::spawn(async move {
                if let Ok(upgraded) = hyper::upgrade::on(req).await {
                    websocket::refuse(upgraded).await;
                }
            });
            return Ok(switching_protocols(accept));
        }
        let engine = self.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => websocket::run_upgrade(engine, session, upgraded, framing).await,
                Err(err) => {
                    debug!(%err, "websocket upgrade failed");
                    session.detach_websocket();
                }
            }
        });
        Ok(switching_protocols(accept))
    }

    fn upgrade_direct(
        self: &Arc<Self>,
        req: Request<Incoming>,
        handshake: Handshake,
        framing: Framing,
    ) -> Result<Response<Body>, RequestError> {
        let accept = websocket_accept_key(req.headers()).ok_or(RequestError::BadRequest)?;
        let engine = self.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let session = engine.open_session(TransportKind::WebSocket, handshake, framing);
                    websocket::run_direct(engine, session, upgraded, framing).await
                }
                Err(err) => debug!(%err, "websocket upgrade failed"),
            }
        });
        Ok(switching_protocols(accept))
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn websocket_accept_key(headers: &HeaderMap) -> Option<HeaderValue> {
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    if !version_ok {
        return None;
    }
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}

fn switching_protocols(accept: HeaderValue) -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

fn ok_response() -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(b"ok")));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = status;
    resp
}

/// The reference server's JSON error answer for plain HTTP requests.
pub fn error_response(err: RequestError) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from(err.body())));
    *resp.status_mut() = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if err.closes_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The reference server's answer to a refused WebSocket upgrade: a plain
/// 400 with the message as text, and the connection closed. A limit keeps
/// its own status (429, 503) so that clients and balancers can tell.
fn upgrade_error(err: RequestError) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from(err.to_string())));
    *resp.status_mut() = match err.status() {
        429 | 503 => StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST),
        _ => StatusCode::BAD_REQUEST,
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
