//! The session table and the request entry point: every HTTP request for
//! an Engine.IO path comes here, is checked the way the reference server
//! checks it, and goes to the polling or WebSocket transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{debug, trace};

use super::errors::RequestError;
use super::handler::{EngineHandler, Message};
use super::packet::{Frame, Packet};
use super::payload::{decode_item, decode_payload, PayloadItem};
use super::query::EngineQuery;
use super::session::{
    CloseReason, Handshake, PollGuard, PollOutcome, PostGuard, Session, SessionRef, TransportKind,
};
use super::sid::Sid;
use super::websocket;

pub type Body = Full<Bytes>;

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
    /// WebSocket write buffer threshold per connection.
    pub ws_write_buffer: usize,
    /// Most packets in one polling answer (0: no limit). python-engineio
    /// refuses answers of more than 16 packets and drops the session.
    pub max_poll_packets: usize,
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
            ws_write_buffer: 0,
            max_poll_packets: 16,
        }
    }
}

pub struct Engine<H: EngineHandler> {
    config: EngineConfig,
    handler: H,
    sessions: RwLock<HashMap<Sid, SessionRef<H::Data>>>,
}

impl<H: EngineHandler> Engine<H> {
    pub fn new(config: EngineConfig, handler: H) -> Arc<Self> {
        Arc::new(Engine {
            config,
            handler,
            sessions: RwLock::new(HashMap::new()),
        })
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

    pub fn session_count(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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
        for session in sessions {
            session.close(reason);
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
            Err(err) if is_upgrade => upgrade_error(err),
            Err(err) => error_response(err),
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
            let session = Sid::parse(sid)
                .and_then(|sid| self.session(&sid))
                .ok_or(RequestError::UnknownSid)?;
            if query.eio.as_deref() != Some("4") {
                return Err(RequestError::BadRequest);
            }
            if is_upgrade {
                if transport != TransportKind::WebSocket {
                    return Err(RequestError::BadRequest);
                }
                return self.upgrade_existing(req, session);
            }
            if session.transport() != transport {
                return Err(RequestError::BadRequest);
            }
            return match *req.method() {
                Method::GET => self.poll(&session).await,
                Method::POST => self.post(&session, req).await,
                // The reference's polling transport answers other methods
                // with a bare 500 and leaves the session alone.
                _ => Ok(status_only(StatusCode::INTERNAL_SERVER_ERROR)),
            };
        }

        // Handshake.
        if req.method() != Method::GET {
            return Err(RequestError::BadHandshakeMethod);
        }
        if transport == TransportKind::WebSocket && !is_upgrade {
            return Err(RequestError::BadRequest);
        }
        if query.eio.as_deref() != Some("4") {
            return Err(RequestError::UnsupportedProtocolVersion);
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
                let session = self.open_session(TransportKind::Polling, handshake);
                // The open packet is the first thing queued: answer with it
                // right away.
                self.poll(&session).await
            }
            TransportKind::WebSocket => self.upgrade_direct(req, handshake),
        }
    }

    /// Creates a session, queues its open packet and starts its lifecycle.
    fn open_session(
        self: &Arc<Self>,
        transport: TransportKind,
        handshake: Handshake,
    ) -> SessionRef<H::Data> {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let sid = loop {
            let sid = Sid::random();
            if !sessions.contains_key(&sid) {
                break sid;
            }
        };
        let session = Arc::new(Session::new(
            sid,
            transport,
            self.config.max_queued_bytes,
            handshake,
            H::Data::default(),
        ));
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
        debug!(sid = %sid, transport = transport.as_str(), "session opened");
        self.handler.on_open(&session);
        let engine = self.clone();
        let lifecycle_session = session.clone();
        tokio::spawn(async move { engine.lifecycle(lifecycle_session).await });
        session
    }

    /// Heartbeats until the session closes, then removes it and tells the
    /// handler. Every session has exactly one of these tasks.
    async fn lifecycle(self: Arc<Self>, session: SessionRef<H::Data>) {
        let reason = self.heartbeat(&session).await;
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session.sid());
        debug!(sid = %session.sid(), %reason, "session closed");
        self.handler.on_close(&session, reason);
    }

    async fn heartbeat(&self, session: &SessionRef<H::Data>) -> CloseReason {
        // The layer above may want one check a while after the open (the
        // Socket.IO connect timeout); done here, it costs no extra task.
        let mut open_check = self.handler.open_timeout().map(|t| Instant::now() + t);
        loop {
            let deadline = Instant::now() + self.config.ping_interval;
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

    // ----- polling ---------------------------------------------------------

    async fn poll(&self, session: &SessionRef<H::Data>) -> Result<Response<Body>, RequestError> {
        if let Err(overlap) = session.begin_poll() {
            if overlap {
                // A second concurrent GET: the reference closes the session
                // (the pending GET gets a close packet) and answers a bare
                // 400.
                session.close(CloseReason::TransportError);
                return Ok(status_only(StatusCode::BAD_REQUEST));
            }
            return Err(RequestError::BadRequest);
        }
        let _guard = PollGuard(session);
        loop {
            if let PollOutcome::Payload(payload) =
                session.poll_outcome(self.config.max_poll_packets)
            {
                trace!(sid = %session.sid(), bytes = payload.len(), "poll answered");
                return Ok(payload_response(payload));
            }
            session.writer_event().await;
        }
    }

    async fn post(
        &self,
        session: &SessionRef<H::Data>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, RequestError> {
        if let Err(overlap) = session.begin_post() {
            if overlap {
                session.close(CloseReason::TransportError);
                return Ok(status_only(StatusCode::BAD_REQUEST));
            }
            return Err(RequestError::BadRequest);
        }
        let _guard = PostGuard(session);
        let binary_body = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
            v.as_bytes()
                .eq_ignore_ascii_case(b"application/octet-stream")
        });
        if binary_body {
            // Engine.IO v4 polling bodies are text; the reference closes
            // the session ("invalid content").
            session.close(CloseReason::TransportError);
            return Ok(status_only(StatusCode::BAD_REQUEST));
        }
        let too_large = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > self.config.max_payload as u64);
        if too_large {
            return Ok(status_only(StatusCode::PAYLOAD_TOO_LARGE));
        }
        let body = match Limited::new(req.into_body(), self.config.max_payload)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                if err.is::<http_body_util::LengthLimitError>() {
                    return Ok(status_only(StatusCode::PAYLOAD_TOO_LARGE));
                }
                // The client went away mid-body.
                session.close(CloseReason::TransportError);
                return Err(RequestError::BadRequest);
            }
        };
        // Packets are applied in order up to the first malformed one, which
        // closes the session; the POST itself is still answered `ok`, as
        // the reference server does.
        for item in decode_payload(&body) {
            let result = match item {
                Ok(PayloadItem::Packet(packet)) => {
                    self.on_packet(session, packet, TransportKind::Polling)
                }
                Ok(PayloadItem::Binary(data)) => {
                    self.handler.on_message(session, Message::Binary(data));
                    Ok(())
                }
                Err(err) => {
                    debug!(sid = %session.sid(), %err, "bad polling payload");
                    Err(CloseReason::ParseError)
                }
            };
            if let Err(reason) = result {
                session.close(reason);
            }
            if session.is_closed() {
                break;
            }
        }
        Ok(ok_response())
    }

    /// Applies one packet from the client.
    pub(crate) fn on_packet(
        &self,
        session: &SessionRef<H::Data>,
        packet: Packet<'_>,
        via: TransportKind,
    ) -> Result<(), CloseReason> {
        match packet {
            Packet::Pong => session.on_pong(),
            Packet::Message(text) => self.handler.on_message(session, Message::Text(text)),
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
        match decode_item(text) {
            Ok(PayloadItem::Packet(packet)) => {
                self.on_packet(session, packet, TransportKind::WebSocket)
            }
            Ok(PayloadItem::Binary(data)) => {
                self.handler.on_message(session, Message::Binary(data));
                Ok(())
            }
            Err(_) => Err(CloseReason::ParseError),
        }
    }

    // ----- websocket -------------------------------------------------------

    fn upgrade_existing(
        self: &Arc<Self>,
        req: Request<Incoming>,
        session: SessionRef<H::Data>,
    ) -> Result<Response<Body>, RequestError> {
        let accept = websocket_accept_key(req.headers()).ok_or(RequestError::BadRequest)?;
        if !session.attach_websocket() {
            // Already upgraded, upgrading, or closed.
            return Err(RequestError::BadRequest);
        }
        let engine = self.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => websocket::run_upgrade(engine, session, upgraded).await,
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
    ) -> Result<Response<Body>, RequestError> {
        let accept = websocket_accept_key(req.headers()).ok_or(RequestError::BadRequest)?;
        let engine = self.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let session = engine.open_session(TransportKind::WebSocket, handshake);
                    websocket::run_direct(engine, session, upgraded).await
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

fn payload_response(payload: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::new(payload));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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
    resp
}

/// The reference server's answer to a refused WebSocket upgrade: a plain
/// 400 with the message as text, and the connection closed.
fn upgrade_error(err: RequestError) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from(err.to_string())));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
