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
    BeginError, CloseReason, Handshake, HeldAnswer, PollGuard, PollOutcome, PostGuard, Session,
    SessionRef, TransportKind,
};
use super::sid::{Sid, SidKey};
use super::websocket;
use ringway_telemetry::{attr, seconds};

use crate::metrics::metrics;

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

/// Marks a poll's answer that its session holds under this id.
#[derive(Debug, Clone, Copy)]
struct HeldId(u64);

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

/// The body of a polling POST: still on the connection, or already read
/// (forwarded by another node).
pub(crate) enum PostBody {
    Stream {
        body: Incoming,
        binary: bool,
        length: Option<u64>,
    },
    Read {
        body: Bytes,
        binary: bool,
    },
}

/// Why a POST body could not be read.
enum ReadError {
    TooLarge,
    Aborted,
    /// It did not arrive within the body timeout.
    TimedOut,
    /// No share of the body buffer came free within the body timeout.
    Busy,
}

/// The answer to a body that could not be read, for a request that
/// still gets one.
fn read_error_response(err: ReadError) -> Result<Response<Body>, RequestError> {
    match err {
        ReadError::TooLarge => Ok(status_only(StatusCode::PAYLOAD_TOO_LARGE)),
        ReadError::Aborted => Err(RequestError::BadRequest),
        ReadError::TimedOut => Err(RequestError::BodyTimeout),
        ReadError::Busy => Err(RequestError::Busy),
    }
}

impl PostBody {
    fn of(req: Request<Incoming>) -> PostBody {
        let binary = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
            v.as_bytes()
                .eq_ignore_ascii_case(b"application/octet-stream")
        });
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        PostBody::Stream {
            body: req.into_body(),
            binary,
            length,
        }
    }

    fn binary(&self) -> bool {
        match self {
            PostBody::Stream { binary, .. } | PostBody::Read { binary, .. } => *binary,
        }
    }

    /// What the body may cost while it is read, in KiB: its announced
    /// length, else the limit.
    fn reservation(&self, limit: usize) -> u32 {
        let bytes = match self {
            PostBody::Read { .. } => 0,
            PostBody::Stream { length, .. } => length.map_or(limit as u64, |l| l.min(limit as u64)),
        };
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    async fn read(self, limit: usize) -> Result<Bytes, ReadError> {
        match self {
            PostBody::Read { body, .. } if body.len() > limit => Err(ReadError::TooLarge),
            PostBody::Read { body, .. } => Ok(body),
            PostBody::Stream { length, .. } if length.is_some_and(|l| l > limit as u64) => {
                Err(ReadError::TooLarge)
            }
            PostBody::Stream { body, .. } => match Limited::new(body, limit).collect().await {
                Ok(collected) => Ok(collected.to_bytes()),
                Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                    Err(ReadError::TooLarge)
                }
                Err(_) => Err(ReadError::Aborted),
            },
        }
    }
}

impl<H: EngineHandler> Engine<H> {
    /// Reads a POST body within the body timeout, holding its share of the
    /// node's body buffer meanwhile: a client that sends slowly or not at
    /// all costs bounded memory and is cut off.
    async fn read_body(&self, body: PostBody) -> Result<Bytes, ReadError> {
        if let PostBody::Read { .. } = body {
            return body.read(self.config.max_payload).await;
        }
        let deadline = Instant::now() + self.config.body_timeout;
        let total = (self.config.max_body_buffer.max(self.config.max_payload) / 1024).max(1);
        let share = body
            .reservation(self.config.max_payload)
            .min(u32::try_from(total).unwrap_or(u32::MAX));
        let permit = match tokio::time::timeout_at(
            deadline,
            self.body_budget.clone().acquire_many_owned(share),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                metrics()
                    .limit_refusals
                    .add(1, &attr("limit", "body_buffer"));
                return Err(ReadError::Busy);
            }
        };
        let read = tokio::time::timeout_at(deadline, body.read(self.config.max_payload)).await;
        drop(permit);
        match read {
            Ok(result) => result,
            Err(_) => {
                metrics()
                    .limit_refusals
                    .add(1, &attr("limit", "body_timeout"));
                Err(ReadError::TimedOut)
            }
        }
    }

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

    /// The node a session was handed off to, if that happened lately.
    fn moved_to(&self, sid: &Sid) -> Option<String> {
        let moved = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        moved
            .get(sid)
            .filter(|(_, at)| at.elapsed() < MOVED_MEMORY)
            .map(|(node, _)| node.clone())
    }

    fn remember_move(&self, sid: Sid, node: &str) {
        let mut moved = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        moved.retain(|_, (_, at)| at.elapsed() < MOVED_MEMORY);
        moved.insert(sid, (node.to_owned(), Instant::now()));
    }

    fn is_arriving(&self, sid: &Sid) -> bool {
        self.arriving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(sid)
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

    /// A polling request of a session held here: the same checks and
    /// answers whether it landed here or was forwarded by another node.
    async fn serve_polling(
        &self,
        session: &SessionRef<H::Data>,
        transport: TransportKind,
        method: Method,
        body: Option<PostBody>,
        raw_query: &str,
        hold: bool,
    ) -> Result<Response<Body>, RequestError> {
        if session.transport() != transport {
            return Err(RequestError::BadRequest);
        }
        match (method, body) {
            (Method::GET, _) => self.poll(session, raw_query, hold).await,
            (Method::POST, Some(body)) => self.post(session, body, raw_query).await,
            // The reference's polling transport answers other methods
            // with a bare 500 and leaves the session alone.
            _ => Ok(status_only(StatusCode::INTERNAL_SERVER_ERROR)),
        }
    }

    /// A request for a session this node does not hold: forwarded to its
    /// owner, or (a WebSocket upgrade) the session is taken over.
    async fn route_elsewhere(
        self: &Arc<Self>,
        sid: Sid,
        req: Request<Incoming>,
        raw_query: String,
        query: &EngineQuery<'_>,
        transport: TransportKind,
        is_upgrade: bool,
    ) -> Result<Response<Body>, RequestError> {
        let hint = self.moved_to(&sid);
        if is_upgrade {
            if !self.speaks(query.eio.as_deref()) || transport != TransportKind::WebSocket {
                return Err(RequestError::BadRequest);
            }
            websocket_accept_key(req.headers()).ok_or(RequestError::BadRequest)?;
            let session = self.take_over(sid, hint).await?;
            // The session came with its revision: the upgrade must match
            // it (it stays here, polling, if not).
            if !session.protocol().matches(query.eio.as_deref()) {
                return Err(RequestError::BadRequest);
            }
            let framing = Framing::of(session.protocol(), query.b64.as_deref());
            return self.upgrade_existing(req, session, framing);
        }
        let method = req.method().clone();
        let body = if method == Method::POST {
            PostBody::of(req)
        } else {
            PostBody::Read {
                body: Bytes::new(),
                binary: false,
            }
        };
        // Being taken over here right now: a POST waits for it and is
        // served here. A GET goes to the owner all the same: it may be
        // what the owner's handoff waits for (its stamp settles the answer
        // the owner still holds), and it follows the session here.
        if method == Method::POST && self.is_arriving(&sid) {
            if let Some(session) = self.local_or_arriving(&sid).await {
                if !session.protocol().matches(query.eio.as_deref()) {
                    return Err(RequestError::BadRequest);
                }
                let body = (method == Method::POST).then_some(body);
                return Box::pin(
                    self.serve_polling(&session, transport, method, body, &raw_query, false),
                )
                .await;
            }
        }
        self.forward(sid, hint, method, body, raw_query).await
    }

    async fn forward(
        &self,
        sid: Sid,
        hint: Option<String>,
        method: Method,
        body: PostBody,
        query: String,
    ) -> Result<Response<Body>, RequestError> {
        let binary_body = body.binary();
        let body = match self.read_body(body).await {
            Ok(body) => body,
            Err(err) => return read_error_response(err),
        };
        let request = ForwardedRequest {
            method,
            query,
            body,
            binary_body,
        };
        let started = std::time::Instant::now();
        let method = request.method.as_str().to_owned();
        let span = tracing::info_span!("forward", method = %method);
        let answer = self
            .directory
            .forward(sid, hint, request.clone())
            .instrument(span)
            .await;
        metrics().forwards.add(1, &attr("method", method.clone()));
        metrics()
            .forward_duration
            .record(seconds(started), &attr("method", method));
        match answer {
            Ok(answer) => Ok(forwarded_response(answer)),
            // The session may have moved here meanwhile (a handoff to this
            // node finishing while the owner already answered "moved
            // here").
            Err(RequestError::UnknownSid) => match self.local_or_arriving(&sid).await {
                Some(session) => Box::pin(self.serve_here(&session, request, false)).await,
                None => Err(RequestError::UnknownSid),
            },
            Err(err) => Err(err),
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

    /// A request met a session in the middle of a handoff: waits for it to
    /// finish and follows the session to its new node.
    async fn follow_move(
        &self,
        sid: Sid,
        method: Method,
        body: PostBody,
        query: &str,
        hold: bool,
    ) -> Result<Response<Body>, RequestError> {
        let deadline = Instant::now() + MOVE_WAIT;
        loop {
            if let Some(node) = self.moved_to(&sid) {
                return self
                    .forward(sid, Some(node), method, body, query.to_owned())
                    .await;
            }
            match self.session(&sid) {
                // The handoff was given up: serve here after all.
                Some(session) if !session.is_moving() => {
                    return Box::pin(self.serve_polling(
                        &session,
                        TransportKind::Polling,
                        method,
                        Some(body),
                        query,
                        hold,
                    ))
                    .await;
                }
                // Look again when the move ends (done, or given up).
                Some(session) if Instant::now() < deadline => {
                    let ended = || (!session.is_moving() || session.is_closed()).then_some(());
                    session.wait_until(deadline, ended).await;
                }
                _ => return Err(RequestError::UnknownSid),
            }
        }
    }

    // ----- cluster: the owner's side --------------------------------------

    /// Serves a polling request another node forwarded here. With `hold`
    /// (the forwarding node confirms delivery), a GET's answer comes with
    /// a receipt to settle with what the forwarder tells: until then the
    /// session holds its packets, and takes them back unless delivered.
    pub async fn serve_forwarded(
        &self,
        sid: Sid,
        request: ForwardedRequest,
        hold: bool,
    ) -> Located<ForwardedAnswer> {
        let here = match self.polling_session(&sid) {
            Some(session) => Some(session),
            None => self.local_or_arriving(&sid).await,
        };
        let Some(session) = here else {
            return match self.moved_to(&sid) {
                Some(node) => Located::Moved(node),
                None => Located::Unknown,
            };
        };
        let hold = hold && request.method == Method::GET;
        let resp = self
            .serve_here(&session, request, hold)
            .await
            .unwrap_or_else(|err| {
                debug!(sid = %sid, error = %err, "forwarded request refused");
                error_response(err)
            });
        let held = resp.extensions().get::<HeldId>().copied();
        let mut answer = forwarded_answer(resp);
        // Held here, or (the session moved on) by the node this answer
        // was relayed from.
        if let Some(HeldId(id)) = held {
            answer.receipt = Some(Receipt::new(move |delivered| {
                session.forwarder_settles(id, delivered)
            }));
        }
        Located::Served(answer)
    }

    /// The session if it is here, waiting a little if it is being taken
    /// over right now (a request forwarded by its old owner can overtake
    /// the end of the handoff).
    async fn local_or_arriving(&self, sid: &Sid) -> Option<SessionRef<H::Data>> {
        let deadline = Instant::now() + MOVE_WAIT;
        loop {
            // Registered before looking: an arrival in between is seen.
            let arrived = self.arrivals.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(session) = self.session(sid) {
                return Some(session);
            }
            if !self.is_arriving(sid) {
                return None;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.session(sid);
            }
        }
    }

    /// Hands a session held here over to `new_owner`: waits for a POST
    /// being applied, exports the state, answers the pending poll with a
    /// noop and closes the session here as handed off.
    pub async fn hand_off(
        &self,
        sid: Sid,
        new_owner: &str,
    ) -> Result<Located<Handover<H::Snapshot>>, NotHandedOff> {
        let Some(session) = self.session(&sid) else {
            return Ok(match self.moved_to(&sid) {
                Some(node) => Located::Moved(node),
                None => Located::Unknown,
            });
        };
        if !session.begin_move() {
            return Err(NotHandedOff::Busy);
        }
        // However this ends short of the move (refused, or the call
        // cancelled because the caller went away), the session stays here.
        let _staying = MoveGuard(&session);
        let deadline = Instant::now() + MOVE_WAIT;
        // A forwarded poll's answer whose fate is not known yet: the
        // client's next GET (or, without stamps, the forwarder's receipt)
        // tells, and the packets are either delivered or back in the queue
        // to export. (No poll takes packets while moving.) Still held at
        // the bound: the session stays, as for a POST.
        let settled = || (!session.holds_answer()).then_some(());
        if session.wait_until(deadline, settled).await.is_none() {
            return Err(NotHandedOff::Busy);
        }
        // A POST still uploading: moving now would lose it. Still there
        // at the bound: the session stays; the upgrade is refused (the
        // client keeps polling).
        let posted = || (!session.is_posting()).then_some(());
        if session.wait_until(deadline, posted).await.is_none() {
            return Err(NotHandedOff::Busy);
        }
        // The layer above may be busy for a moment (a CONNECT being
        // answered): wait for it within the same bound.
        // The move is remembered before the session is closed here: a
        // request that meets it gone then always finds where it went.
        let mut moved = None;
        let mut take = || {
            self.remember_move(sid, new_owner);
            moved = Some(session.take_for_move(new_owner));
        };
        let upper = loop {
            match self.handler.export(&session, &mut take) {
                Ok(state) => break state,
                // The layer above tells nothing when it is done (its
                // CONNECTs take a round trip to the application at most):
                // look again shortly.
                Err(_) if Instant::now() < deadline && !session.is_closed() => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(_) => return Err(NotHandedOff::Busy),
            }
        };
        let (queue, awaiting_pong) = match moved {
            Some(moved) => moved,
            None => {
                self.remember_move(sid, new_owner);
                session.take_for_move(new_owner)
            }
        };
        metrics().handoffs.add(1, &attr("direction", "out"));
        let handshake = session.handshake();
        debug!(sid = %sid, to = new_owner, queued = queue.len(), "session handed off");
        Ok(Located::Served(Handover {
            epoch: session.epoch(),
            session: SessionSnapshot {
                sid,
                handshake: handshake.clone(),
                queue,
                awaiting_pong,
                protocol: session.protocol(),
                base64: session.framing().base64,
                upper,
            },
        }))
    }

    /// Takes a session over from its owner and installs it here.
    async fn take_over(
        self: &Arc<Self>,
        sid: Sid,
        hint: Option<String>,
    ) -> Result<SessionRef<H::Data>, RequestError> {
        self.arriving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid);
        let started = std::time::Instant::now();
        let span = tracing::info_span!("handoff");
        let result = match self.directory.take_over(sid, hint).instrument(span).await {
            Ok(taken) => self.adopt(sid, taken),
            Err(err) => Err(err),
        };
        self.arriving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sid);
        self.arrivals.notify_waiters();
        if result.is_ok() {
            metrics().handoffs.add(1, &attr("direction", "in"));
            metrics().handoff_duration.record(seconds(started), &[]);
        }
        result
    }

    fn adopt(
        self: &Arc<Self>,
        sid: Sid,
        taken: Handover<H::Snapshot>,
    ) -> Result<SessionRef<H::Data>, RequestError> {
        let Handover {
            session: state,
            epoch,
        } = taken;
        // A revision this node does not take (a v3 session offered to a
        // node without --allow-eio3): the session cannot live here.
        if state.protocol == Protocol::V3 && !self.config.allow_eio3 {
            return Err(RequestError::BadRequest);
        }
        let framing = match state.protocol {
            Protocol::V4 => Framing::V4,
            Protocol::V3 => Framing::v3(state.base64),
        };
        let handshake = state.handshake;
        let queue = state.queue.into_iter().collect();
        let session = Arc::new(
            Session::restored(
                sid,
                epoch + 1,
                self.config.max_queued_bytes,
                handshake,
                H::Data::default(),
                queue,
                state.awaiting_pong,
            )
            .with_framing(framing),
        );
        if self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&sid)
        {
            return Err(RequestError::BadRequest);
        }
        // The layer above's state goes in before the session is in the
        // table: a request that finds it there (a POST that waited for
        // the handoff) must find its sockets too. Dispatched into a
        // session without them, its packets were for a namespace not
        // joined, and the session was closed on its client.
        self.handler.restore(&session, state.upper);
        {
            let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
            if sessions.contains_key(&sid) {
                drop(sessions);
                session.close(CloseReason::TransportError);
                self.handler.on_close(&session, CloseReason::TransportError);
                return Err(RequestError::BadRequest);
            }
            sessions.insert(sid, session.clone());
        }
        self.admission.adopted(
            session.handshake().remote_addr.ip(),
            Instant::now().into_std(),
        );
        self.directory.opened(sid, session.epoch());
        debug!(sid = %sid, epoch = session.epoch(), "session taken over");
        // The old owner's last ping may be up to a ping interval old: ping
        // sooner, so the client's ping timer never runs out across a move.
        let first_ping = self.config.ping_interval / 2;
        let engine = self.clone();
        let lifecycle_session = session.clone();
        tokio::spawn(async move { engine.lifecycle(lifecycle_session, first_ping).await });
        Ok(session)
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
        // The sid must map to this node on the ring, so that any node
        // finds the owner without I/O while membership holds still.
        // (With n members a try succeeds with odds 1/n; past 256 tries the
        // ring is taken as a hint only.)
        let mut tries = 0u32;
        let sid = loop {
            let sid = Sid::signed(&self.config.sid_key);
            tries += 1;
            if !sessions.contains_key(&sid) && (tries > 256 || self.directory.accepts(&sid)) {
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

    // ----- polling ---------------------------------------------------------

    /// A polling GET. `hold`: it was forwarded by a node that confirms
    /// delivery, so the answer is held until it does.
    async fn poll(
        &self,
        session: &SessionRef<H::Data>,
        raw_query: &str,
        hold: bool,
    ) -> Result<Response<Body>, RequestError> {
        let arrived = Instant::now();
        let mut watched = None;
        let gen = loop {
            // The previous answer may still be held: this GET's stamp
            // tells its fate; without stamps it waits for the forwarding
            // node's receipt, up to the bound.
            if let HeldAnswer::Unknown(id) = session.settle_by_request(raw_query) {
                if *watched.get_or_insert(id) == id && arrived.elapsed() >= HOLD_WAIT {
                    session.settle_held(id, false);
                }
            }
            match session.begin_poll(raw_query) {
                Ok(gen) => break gen,
                Err(BeginError::Unconfirmed) => {
                    // Look again when the held answer is settled, or when
                    // the bound for settling it here passes.
                    let (bound, now) = (arrived + HOLD_WAIT, Instant::now());
                    let until = if now < bound { bound } else { now + HOLD_WAIT };
                    let settled = || (!session.holds_answer()).then_some(());
                    session.wait_until(until, settled).await;
                }
                Err(BeginError::Overlap) => {
                    // A second concurrent GET: the reference closes the
                    // session (the pending GET gets a close packet) and
                    // answers a bare 400.
                    session.close(CloseReason::TransportError);
                    return Ok(status_only(StatusCode::BAD_REQUEST));
                }
                Err(BeginError::Moving) => {
                    let empty = PostBody::Read {
                        body: Bytes::new(),
                        binary: false,
                    };
                    return self
                        .follow_move(session.sid(), Method::GET, empty, raw_query, hold)
                        .await;
                }
                Err(BeginError::NotPolling) => return Err(RequestError::BadRequest),
            }
        };
        let _guard = PollGuard(session, gen);
        let hold = hold.then_some(raw_query);
        let mut upgrade_tick = None;
        loop {
            match session.poll_outcome(gen, self.config.max_poll_packets, hold) {
                PollOutcome::Payload(payload) => {
                    trace!(sid = %session.sid(), bytes = payload.bytes.len(), "poll answered");
                    return Ok(payload_response(payload));
                }
                PollOutcome::Held(payload, id) => {
                    trace!(sid = %session.sid(), bytes = payload.bytes.len(), "forwarded poll answered");
                    let mut resp = payload_response(payload);
                    resp.extensions_mut().insert(HeldId(id));
                    return Ok(resp);
                }
                // Nobody waits for this answer any more.
                PollOutcome::Superseded => {
                    return Ok(payload_response(
                        session.encode(&[Frame::control(Frame::NOOP)]),
                    ))
                }
                PollOutcome::Wait => session.writer_event().await,
                // Sent around the client's `2probe` and `5`, processed
                // before them on another thread: answered as the
                // reference's single thread would, after the `5` (code 3)
                // or, without one, with a noop at its upgrade tick.
                PollOutcome::AwaitUpgrade => {
                    let tick = *upgrade_tick.get_or_insert_with(|| Instant::now() + UPGRADE_TICK);
                    tokio::select! {
                        _ = session.writer_event() => {}
                        _ = sleep_until(tick) => session.release_late_poll(gen),
                    }
                }
                PollOutcome::Upgraded => return Err(RequestError::BadRequest),
            }
        }
    }

    async fn post(
        &self,
        session: &SessionRef<H::Data>,
        body: PostBody,
        raw_query: &str,
    ) -> Result<Response<Body>, RequestError> {
        match session.begin_post() {
            Ok(()) => {}
            Err(BeginError::Overlap) => {
                session.close(CloseReason::TransportError);
                return Ok(status_only(StatusCode::BAD_REQUEST));
            }
            Err(BeginError::Moving) => {
                return self
                    .follow_move(session.sid(), Method::POST, body, raw_query, false)
                    .await;
            }
            Err(BeginError::NotPolling | BeginError::Unconfirmed) => {
                return Err(RequestError::BadRequest)
            }
        }
        let _guard = PostGuard(session);
        let binary = body.binary();
        if binary && session.protocol() == Protocol::V4 {
            // Engine.IO v4 polling bodies are text; the reference closes
            // the session ("invalid content"). (v3 has a binary form.)
            session.close(CloseReason::TransportError);
            return Ok(status_only(StatusCode::BAD_REQUEST));
        }
        let body = match self.read_body(body).await {
            Ok(body) => body,
            Err(err @ (ReadError::Aborted | ReadError::TimedOut)) => {
                // The client went away mid-body, or stalled.
                session.close(CloseReason::TransportError);
                return read_error_response(err);
            }
            Err(err) => return read_error_response(err),
        };
        // Packets are applied in order up to the first malformed one, which
        // closes the session; the POST itself is still answered `ok`, as
        // the reference server does.
        for item in decode_for(session.protocol(), &body, binary) {
            // Nothing is applied to a closed session (one waiting for its
            // client to fetch the close packet).
            if session.is_closed() {
                break;
            }
            let result = match item {
                Ok(PayloadItem::Packet(packet)) => {
                    self.on_packet(session, packet, TransportKind::Polling)
                }
                Ok(PayloadItem::Binary(data)) => {
                    self.on_binary(session, data);
                    Ok(())
                }
                // The reference decodes these leniently (U+FFFD, bad
                // base64 characters dropped) and hands the garbage on;
                // its Socket.IO layer then closes the session gracefully.
                // Ringway hands nothing on, and closes the same way.
                Err(err @ (DecodeError::InvalidUtf8 | DecodeError::InvalidBase64)) => {
                    debug!(sid = %session.sid(), %err, "bad polling payload");
                    session.close_for_client(CloseReason::ParseError);
                    break;
                }
                Err(err) => {
                    debug!(sid = %session.sid(), %err, "bad polling payload");
                    Err(CloseReason::ParseError)
                }
            };
            match result {
                Err(CloseReason::TransportClose) => session.close_by_client(),
                Err(reason) => session.close(reason),
                Ok(()) => {}
            }
        }
        Ok(ok_response())
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
        if !session.attach_websocket() {
            if session.is_closed() {
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

fn payload_response(payload: PollBody) -> Response<Body> {
    let mut resp = Response::new(Body::new(payload.bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if payload.binary {
            "application/octet-stream"
        } else {
            "text/plain; charset=UTF-8"
        }),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Why a session could not be handed off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotHandedOff {
    /// Upgrading, already on WebSocket, moving, or the layer above is
    /// busy with it.
    #[error("the session cannot be handed off now")]
    Busy,
}

/// Gives a handoff up on drop unless the session was taken.
struct MoveGuard<'a, D>(&'a Session<D>);

impl<D> Drop for MoveGuard<'_, D> {
    fn drop(&mut self) {
        if !self.0.is_closed() {
            self.0.cancel_move();
        }
    }
}

/// The client's answer built from what the owner node answered.
fn forwarded_response(answer: ForwardedAnswer) -> Response<Body> {
    let mut resp = Response::new(Body::with_receipt(answer.body, answer.receipt));
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&answer.content_type) {
        if !answer.content_type.is_empty() {
            h.insert(header::CONTENT_TYPE, value);
        }
    }
    if answer.status == 200 {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A local answer, packed for the node that forwarded the request, with
/// the receipt its body carries (an answer relayed from a further node).
fn forwarded_answer(resp: Response<Body>) -> ForwardedAnswer {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (body, receipt) = resp.into_body().into_parts();
    ForwardedAnswer {
        status,
        content_type,
        body,
        receipt,
    }
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
