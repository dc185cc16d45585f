//! Sessions moving between nodes, the engine's side: a request for a
//! session that is not here goes to its owner through the [`Directory`]
//! (forwarded, or the session taken over for a WebSocket upgrade), and
//! this node serves what other nodes forward to it or hands its sessions
//! over. The calls between nodes are the cluster's (the gateway's
//! `cluster/`); what crosses is plain data ([`Handover`], [`Located`]).

use super::polling::read_error_response;
use super::*;

/// Why a session could not be handed off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotHandedOff {
    /// Upgrading, already on WebSocket, moving, or the layer above is
    /// busy with it.
    #[error("the session cannot be handed off now")]
    Busy,
}

/// Gives a handoff up on drop unless the session was taken.
pub(super) struct MoveGuard<'a, D>(&'a Session<D>);

impl<D> Drop for MoveGuard<'_, D> {
    fn drop(&mut self) {
        if !self.0.is_closed() {
            self.0.cancel_move();
        }
    }
}

/// The client's answer built from what the owner node answered.
pub(super) fn forwarded_response(answer: ForwardedAnswer) -> Response<Body> {
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
pub(super) fn forwarded_answer(resp: Response<Body>) -> ForwardedAnswer {
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

impl<H: EngineHandler> Engine<H> {
    /// The node a session was handed off to, if that happened lately.
    pub(super) fn moved_to(&self, sid: &Sid) -> Option<String> {
        let moved = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        moved
            .get(sid)
            .filter(|(_, at)| at.elapsed() < MOVED_MEMORY)
            .map(|(node, _)| node.clone())
    }

    pub(super) fn remember_move(&self, sid: Sid, node: &str) {
        let mut moved = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        moved.retain(|_, (_, at)| at.elapsed() < MOVED_MEMORY);
        moved.insert(sid, (node.to_owned(), Instant::now()));
    }

    pub(super) fn is_arriving(&self, sid: &Sid) -> bool {
        self.arriving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(sid)
    }

    /// A request for a session this node does not hold: forwarded to its
    /// owner, or (a WebSocket upgrade) the session is taken over.
    pub(super) async fn route_elsewhere(
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

    pub(super) async fn forward(
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

    /// A request met a session in the middle of a handoff: waits for it to
    /// finish and follows the session to its new node.
    pub(super) async fn follow_move(
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
        // Its receipt is the one its body carries: the answer is held
        // here (a GET's), or (the session moved on) by the node it was
        // relayed from.
        Located::Served(forwarded_answer(resp))
    }

    /// The session if it is here, waiting a little if it is being taken
    /// over right now (a request forwarded by its old owner can overtake
    /// the end of the handoff).
    pub(super) async fn local_or_arriving(&self, sid: &Sid) -> Option<SessionRef<H::Data>> {
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
        if let Err(refused) = session.begin_move() {
            debug!(sid = %sid, %refused, "handoff refused");
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
        // answered): wait for it within the same bound; it tells when it
        // is done (`Session::upper_changed`).
        // The move is remembered before the session is closed here: a
        // request that meets it gone then always finds where it went.
        let mut moved = None;
        let mut take = || {
            self.remember_move(sid, new_owner);
            moved = Some(session.take_for_move(new_owner));
        };
        let exported = || match self.handler.export(&session, &mut take) {
            Ok(state) => Some(Some(state)),
            Err(_) if session.is_closed() => Some(None),
            Err(_) => None,
        };
        let Some(Some(upper)) = session.wait_until(deadline, exported).await else {
            return Err(NotHandedOff::Busy);
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
    pub(super) async fn take_over(
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

    pub(super) fn adopt(
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
}
