//! The polling transport: a GET waits for packets to send (held while a
//! forwarding node confirms delivery), a POST's body is read within its
//! bounds and its packets are handed to the layer above in order.

use super::*;

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
pub(super) enum ReadError {
    TooLarge,
    Aborted,
    /// It did not arrive within the body timeout.
    TimedOut,
    /// No share of the body buffer came free within the body timeout.
    Busy,
}

/// The answer to a body that could not be read, for a request that
/// still gets one.
pub(super) fn read_error_response(err: ReadError) -> Result<Response<Body>, RequestError> {
    match err {
        ReadError::TooLarge => Ok(status_only(StatusCode::PAYLOAD_TOO_LARGE)),
        ReadError::Aborted => Err(RequestError::BadRequest),
        ReadError::TimedOut => Err(RequestError::BodyTimeout),
        ReadError::Busy => Err(RequestError::Busy),
    }
}

impl PostBody {
    pub(super) fn of(req: Request<Incoming>) -> PostBody {
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

    pub(super) fn binary(&self) -> bool {
        match self {
            PostBody::Stream { binary, .. } | PostBody::Read { binary, .. } => *binary,
        }
    }

    /// What the body may cost while it is read, in KiB: its announced
    /// length, else the limit.
    pub(super) fn reservation(&self, limit: usize) -> u32 {
        let bytes = match self {
            PostBody::Read { .. } => 0,
            PostBody::Stream { length, .. } => length.map_or(limit as u64, |l| l.min(limit as u64)),
        };
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    pub(super) async fn read(self, limit: usize) -> Result<Bytes, ReadError> {
        match self {
            PostBody::Read { body, .. } if body.len() > limit => Err(ReadError::TooLarge),
            PostBody::Read { body, .. } => Ok(body),
            PostBody::Stream { length, body, .. } if length.is_some_and(|l| l > limit as u64) => {
                discard_in_background(body, length.unwrap_or(u64::MAX), limit);
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

/// Announced bodies up to this many times `maxPayload` are read and
/// dropped after their 413 (larger ones: the connection is closed).
const DISCARD_FACTOR: u64 = 4;
/// How long a refused body may take to arrive before its connection is
/// closed.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(10);

/// A body too large to take, answered 413 at once: what the client still
/// sends is read and dropped (bounded in size and time, nothing kept), so
/// that the client finishes its request and reads the 413, as from the
/// reference server, rather than meeting a reset connection mid-upload.
fn discard_in_background(body: Incoming, length: u64, limit: usize) {
    if length > (limit as u64).saturating_mul(DISCARD_FACTOR) {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let _ = tokio::time::timeout(DISCARD_TIMEOUT, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

pub(super) fn payload_response(payload: PollBody) -> Response<Body> {
    answer_response(payload, None)
}

/// A poll's answer whose body carries `receipt` (a held answer of a
/// forwarded poll).
fn answer_response(payload: PollBody, receipt: Option<Receipt>) -> Response<Body> {
    let mut resp = Response::new(Body::with_receipt(payload.bytes, receipt));
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

impl<H: EngineHandler> Engine<H> {
    /// Reads a POST body within the body timeout, holding its share of the
    /// node's body buffer meanwhile: a client that sends slowly or not at
    /// all costs bounded memory and is cut off.
    pub(super) async fn read_body(&self, body: PostBody) -> Result<Bytes, ReadError> {
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

    /// A polling request of a session held here: the same checks and
    /// answers whether it landed here or was forwarded by another node.
    pub(super) async fn serve_polling(
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

    /// A polling GET. `hold`: it was forwarded by a node that confirms
    /// delivery, so the answer is held until it does.
    pub(super) async fn poll(
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
                    // The forwarding node reports whether it reached its
                    // client: the receipt the body carries settles it.
                    let held = session.clone();
                    let receipt =
                        Receipt::new(move |delivered| held.forwarder_settles(id, delivered));
                    return Ok(answer_response(payload, Some(receipt)));
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

    pub(super) async fn post(
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
}
