//! One Engine.IO session: its outgoing queue, which transport carries it,
//! the upgrade state and the close reason.
//!
//! Any task may queue packets (`send`); exactly one writer drains the queue
//! at a time: the pending polling GET, or the WebSocket task once the
//! upgrade is done. The queue is bounded in bytes: a client that stops
//! reading is closed as a slow consumer instead of growing memory.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use http::HeaderMap;
use thiserror::Error;
use tokio::sync::Notify;

use super::packet::Frame;
use super::payload::{encode_for, PollBody};
use super::protocol::{Framing, Protocol};
use super::sid::Sid;

/// Bytes charged per queued frame on top of its payload, for the queue
/// bookkeeping itself, so that floods of tiny packets are bounded too.
const FRAME_OVERHEAD: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Polling,
    WebSocket,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Polling => "polling",
            TransportKind::WebSocket => "websocket",
        }
    }
}

/// Why a session ended. The strings are the reference server's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed (close packet, WebSocket closed, connection lost).
    TransportClose,
    /// The transport failed or the client broke the protocol at the
    /// transport level (overlapping polls, ping from client).
    TransportError,
    /// A packet could not be decoded.
    ParseError,
    /// No pong within pingTimeout.
    PingTimeout,
    /// The application closed the session.
    ForcedClose,
    /// The server is shutting down.
    ServerShutdown,
    /// The outgoing queue hit its bound: the client does not read.
    SlowConsumer,
    /// Another node took the session over (a WebSocket upgrade landed
    /// there): it lives on, elsewhere.
    HandedOff,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError => "transport error",
            CloseReason::ParseError => "parse error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ForcedClose => "forced close",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::HandedOff => "handed off",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session refused a transition.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    #[error("the session is closed")]
    Closed,
    #[error("the session is moving to another node")]
    Moving,
    /// A WebSocket is attached, or the session upgraded already.
    #[error("the session is upgrading or upgraded")]
    Upgrading,
    /// `5` without a WebSocket upgrade under way.
    #[error("no upgrade under way")]
    NoUpgrade,
}

/// Why a polling GET or POST cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeginError {
    /// Not a polling session (any more): a plain bad request.
    NotPolling,
    /// One is already pending: the session must be closed.
    Overlap,
    /// The answer of a forwarded poll is not known delivered yet, and this
    /// GET could not tell (no stamps): it waits for the forwarding node to
    /// tell (or for the bound).
    Unconfirmed,
    /// The session is being handed off to another node: the request
    /// waits and follows it there.
    Moving,
}

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    #[error("session closed")]
    Closed,
    #[error("outgoing queue full: slow consumer disconnected")]
    QueueFull,
}

/// Where the upgrade to WebSocket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeState {
    /// Polling, no WebSocket attached.
    None,
    /// A WebSocket is attached and waiting for `2probe`.
    Attached,
    /// `2probe` answered: pending polls are answered with noop.
    Probing,
    /// `5` received: the WebSocket carries the session.
    Done,
}

/// What the client sent to open the session, kept for the application
/// (Socket.IO handshake data, upstream hooks).
#[derive(Debug, Clone)]
pub struct Handshake {
    pub remote_addr: SocketAddr,
    /// The raw query string of the handshake request.
    pub query: String,
    /// The request headers, `name: value` lines in one string: compact for
    /// sessions that live for hours (see [`Handshake::headers`]).
    pub raw_headers: Box<str>,
    /// Milliseconds since the Unix epoch.
    pub issued_ms: u64,
}

impl Handshake {
    /// Keeps the headers of a request in one owned allocation. (hyper's
    /// header values are slices of the connection's 8 KiB read buffer:
    /// keeping those would keep the whole buffer alive per session.)
    pub fn pack_headers(headers: &HeaderMap) -> Box<str> {
        let mut out = String::new();
        for (name, value) in headers {
            out.push_str(name.as_str());
            out.push_str(": ");
            out.push_str(&String::from_utf8_lossy(value.as_bytes()));
            out.push('\n');
        }
        out.into_boxed_str()
    }

    /// The request headers as `(lower-case name, value)` pairs, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.raw_headers
            .lines()
            .filter_map(|line| line.split_once(": "))
    }

    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Where the session lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ownership {
    /// Served here.
    Here,
    /// A handoff to another node has begun: no new GET or POST starts
    /// here ([`Session::begin_move`]; [`Session::cancel_move`] goes back).
    Moving,
    /// Handed off to this node ([`Session::take_for_move`]).
    Moved(Box<str>),
}

/// The one polling GET a session may have pending (the one of
/// generation `State::poll_gen`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PollSlot {
    Idle,
    Pending {
        /// The request's `t` stamp.
        stamp: Option<Box<str>>,
        /// It began while a WebSocket was attached (its probe on the way
        /// or answered): the client sent it around its `2probe` or `5`, on
        /// another connection. It is answered after the `5` as a request
        /// after the upgrade (code 3), or with a noop after the reference's
        /// upgrade tick ([`Session::release_late_poll`]).
        late: bool,
    },
}

/// A closed session, and what its client is still owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Closed {
    reason: CloseReason,
    /// Closed by the layer above for a client that still polls: it is
    /// owed the close packet, which its next GET carries.
    owed: bool,
    /// The close came with no GET pending: the GET that carries the close
    /// packet puts a noop before it (`6`, `1`), as the reference server's
    /// closing polling transport answers its next request.
    noop_first: bool,
}

impl Closed {
    fn plain(reason: CloseReason) -> Closed {
        Closed {
            reason,
            owed: false,
            noop_first: false,
        }
    }
}

struct State {
    transport: TransportKind,
    upgrade: UpgradeState,
    ownership: Ownership,
    poll: PollSlot,
    /// The generation of the latest GET begun: a retry of the same
    /// request (same stamp) replaces the pending one, whose requester is
    /// gone, under a new generation.
    poll_gen: u64,
    queue: VecDeque<Frame>,
    queued_bytes: usize,
    /// A polling POST is being read or processed.
    posting: bool,
    awaiting_pong: bool,
    /// Engine.IO v3: a ping came from the client since the lifecycle task
    /// last looked (it restarts the heartbeat timeout).
    client_pinged: bool,
    close: Option<Closed>,
    /// The answer of a forwarded poll, kept until it is known whether it
    /// reached the client.
    unconfirmed: Option<Unconfirmed>,
    /// Ids for held answers.
    held: u64,
}

impl State {
    fn is_moving(&self) -> bool {
        self.ownership != Ownership::Here
    }

    fn is_polling(&self) -> bool {
        matches!(self.poll, PollSlot::Pending { .. })
    }

    /// Poll `gen` is the one pending.
    fn is_pending(&self, gen: u64) -> bool {
        self.poll_gen == gen && self.is_polling()
    }

    /// Poll `gen` is pending and began while a WebSocket was attached.
    fn is_late(&self, gen: u64) -> bool {
        self.poll_gen == gen && matches!(self.poll, PollSlot::Pending { late: true, .. })
    }
}

/// The packets of a forwarded poll's answer, and what identifies the
/// client's request that gets them.
struct Unconfirmed {
    id: u64,
    frames: Vec<Frame>,
    /// The request's cache-busting `t` parameter, when it has one: a GET
    /// repeating it is the same request retried (the answer never reached
    /// the client), one with another stamp comes after the client read it.
    stamp: Option<Box<str>>,
    /// What the forwarding node said of it (delivered or not), kept for
    /// a next GET that has no stamp to tell.
    forwarder: Option<bool>,
}

/// A held answer, as a new GET sees it ([`Session::settle_by_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeldAnswer {
    None,
    /// Held, and this GET cannot tell its fate (no stamps to compare).
    Unknown(u64),
}

/// The `t` parameter the official clients add to every polling request.
fn request_stamp(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("t="))
        .filter(|stamp| !stamp.is_empty())
}

/// One session. Shared by its transports, its lifecycle task and the
/// application through `Arc`.
pub struct Session<D> {
    sid: Sid,
    /// The registry epoch of this ownership: 1 for a new session, one more
    /// at each handoff.
    epoch: u64,
    state: Mutex<State>,
    /// Wakes the current writer (pending GET or WebSocket task).
    writer: Notify,
    /// Wakes the lifecycle task: a pong arrived or the session closed.
    lifecycle: Notify,
    /// Wakes whoever waits for the session's state to change (a handoff
    /// waiting for a POST or a held answer, a request waiting for a move
    /// to end): [`Session::wait_until`].
    changed: Notify,
    max_queued_bytes: usize,
    handshake: Handshake,
    /// The revision the session speaks, and how its polling answers carry
    /// binary (fixed at the handshake).
    framing: Framing,
    data: D,
}

/// What a pending poll should answer, decided under the session lock.
pub(crate) enum PollOutcome {
    /// Nothing to send yet: wait for the writer notification.
    Wait,
    /// The payload to answer with.
    Payload(PollBody),
    /// The payload of a forwarded poll, kept under this id until its
    /// delivery is confirmed ([`Session::settle_held`]).
    Held(PollBody, u64),
    /// A retry of the same request took this poll's place: answer nothing
    /// from the queue.
    Superseded,
    /// A poll that began while a WebSocket was attached, its probe now
    /// answered: it waits for the `5` (or the upgrade tick).
    AwaitUpgrade,
    /// That poll, the upgrade now done: answered as any polling request
    /// after the upgrade.
    Upgraded,
}

impl<D> Session<D> {
    /// A session on its own: the engine opens its sessions itself; the
    /// layers above build one for their unit tests.
    pub fn new(
        sid: Sid,
        transport: TransportKind,
        max_queued_bytes: usize,
        handshake: Handshake,
        data: D,
    ) -> Self {
        Self::restored(sid, 1, max_queued_bytes, handshake, data, Vec::new(), false)
            .with_transport(transport)
    }

    /// A polling session taken over from another node, with what it had
    /// queued and its heartbeat state.
    pub(crate) fn restored(
        sid: Sid,
        epoch: u64,
        max_queued_bytes: usize,
        handshake: Handshake,
        data: D,
        queue: Vec<Frame>,
        awaiting_pong: bool,
    ) -> Self {
        let queued_bytes = queue.iter().map(|f| f.wire_len() + FRAME_OVERHEAD).sum();
        Session {
            sid,
            epoch,
            state: Mutex::new(State {
                transport: TransportKind::Polling,
                upgrade: UpgradeState::None,
                ownership: Ownership::Here,
                poll: PollSlot::Idle,
                poll_gen: 0,
                queue: queue.into(),
                queued_bytes,
                posting: false,
                awaiting_pong,
                client_pinged: false,
                close: None,
                unconfirmed: None,
                held: 0,
            }),
            writer: Notify::new(),
            lifecycle: Notify::new(),
            changed: Notify::new(),
            max_queued_bytes,
            handshake,
            framing: Framing::V4,
            data,
        }
    }

    fn with_transport(self, transport: TransportKind) -> Self {
        self.lock().transport = transport;
        self
    }

    /// The session speaks this revision (v4 unless set).
    pub(crate) fn with_framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// The Engine.IO revision of the session: the layer above reads it
    /// (Socket.IO v2 clients speak Engine.IO v3).
    pub fn protocol(&self) -> Protocol {
        self.framing.protocol
    }

    /// How polling answers are framed.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Frames as one polling answer of this session.
    pub(crate) fn encode(&self, frames: &[Frame]) -> PollBody {
        encode_for(self.framing, frames)
    }

    pub fn sid(&self) -> Sid {
        self.sid
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn data(&self) -> &D {
        &self.data
    }

    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module;
        // the state stays consistent field by field, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn transport(&self) -> TransportKind {
        self.lock().transport
    }

    /// Nothing waits to be sent (a volatile emit goes out only then).
    pub fn queue_is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().close.is_some()
    }

    /// The node this session was handed off to, once it was.
    pub fn moved_to(&self) -> Option<Box<str>> {
        match &self.lock().ownership {
            Ownership::Moved(node) => Some(node.clone()),
            Ownership::Here | Ownership::Moving => None,
        }
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close.map(|c| c.reason)
    }

    /// Closed with [`Session::close_for_client`] while polling, and no GET
    /// has carried the close packet out yet.
    pub(crate) fn owes_close_packet(&self) -> bool {
        let st = self.lock();
        st.close.is_some_and(|c| c.owed) && st.upgrade != UpgradeState::Done
    }

    pub(crate) fn wake_lifecycle(&self) {
        self.lifecycle.notify_one();
    }

    /// Queues one packet for the client.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.send_all([frame])
    }

    /// Queues packets that must go out together and in order (a Socket.IO
    /// packet and its binary attachments).
    pub fn send_all(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), SendError> {
        let mut st = self.lock();
        if st.close.is_some() {
            return Err(SendError::Closed);
        }
        for frame in frames {
            st.queued_bytes += frame.wire_len() + FRAME_OVERHEAD;
            st.queue.push_back(frame);
        }
        if st.queued_bytes > self.max_queued_bytes {
            st.queue.clear();
            st.queued_bytes = 0;
            st.close = Some(Closed::plain(CloseReason::SlowConsumer));
            drop(st);
            self.wake_all();
            return Err(SendError::QueueFull);
        }
        drop(st);
        self.writer.notify_one();
        Ok(())
    }

    /// Closes the session at once, as the engine does on its own errors (a
    /// malformed Engine.IO packet, a ping timeout, overlapping polls): the
    /// next GET finds no session (code 1), as from the reference. The
    /// first reason wins; the lifecycle task then removes it from the
    /// engine and tells the application.
    pub fn close(&self, reason: CloseReason) {
        self.close_with(reason, false)
    }

    /// Closes the session for a client that goes on polling, as the layer
    /// above closes it (the application's `disconnect(true)`, a malformed
    /// Socket.IO packet, a namespace not joined in time): the reference's
    /// graceful close. With no GET pending the session enters a closing
    /// state: it is still found by the next GET, which gets what was
    /// queued, a noop and the close packet (the client then sees
    /// "transport close", not an unknown sid); only then, or after a
    /// bound, is the sid unknown. A pending GET gets what was queued and
    /// the close packet.
    pub fn close_for_client(&self, reason: CloseReason) {
        self.close_with(reason, true)
    }

    /// The client's close packet in a POST: closed at once for the
    /// layers above, but a GET that raced it (sent before it, on another
    /// connection, processed after it on another thread) still finds the
    /// session for a moment and gets the noop a pending GET gets, rather
    /// than an unknown sid (see `CLIENT_CLOSE_GRACE` in the engine).
    pub(crate) fn close_by_client(&self) {
        self.close_with(CloseReason::TransportClose, true)
    }

    fn close_with(&self, reason: CloseReason, owed: bool) {
        let mut st = self.lock();
        if st.close.is_some() {
            return;
        }
        let owed = owed && st.transport == TransportKind::Polling;
        st.close = Some(Closed {
            reason,
            owed,
            noop_first: owed && !st.is_polling(),
        });
        // What was queued before the close still goes out (a pending poll
        // gets it before the close packet); only a slow consumer's queue
        // is dropped, and that happened when it overflowed.
        drop(st);
        self.wake_all();
    }

    fn wake_all(&self) {
        self.wake_writers();
        self.lifecycle.notify_one();
    }

    /// Wakes every writer waiting now and leaves a permit for the next one:
    /// used on state changes (close, upgrade) where a pending poll and the
    /// WebSocket task may both need to look again.
    fn wake_writers(&self) {
        self.writer.notify_waiters();
        self.writer.notify_one();
        self.changed.notify_waiters();
    }

    /// The layer above's state changed in a way its
    /// [`EngineHandler::export`] looks at (a CONNECT ended): a handoff
    /// waiting for it looks again.
    ///
    /// [`EngineHandler::export`]: crate::EngineHandler::export
    pub fn upper_changed(&self) {
        self.changed.notify_waiters();
    }

    /// Waits until `ready` gives a value, looking again at each change of
    /// the session's state (a POST ended, an answer settled, a move begun
    /// or given up, the close), not on a timer; `None` if it still gives
    /// none at `deadline`.
    pub(crate) async fn wait_until<T>(
        &self,
        deadline: tokio::time::Instant,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        loop {
            // Registered before looking, so a change in between is not
            // missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(value) = ready() {
                return Some(value);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return ready();
            }
        }
    }

    // ----- heartbeat -------------------------------------------------------

    /// Queues a ping and starts waiting for its pong.
    pub(crate) fn ping(&self) -> Result<(), SendError> {
        self.lock().awaiting_pong = true;
        self.send(Frame::control(Frame::PING))
    }

    pub(crate) fn on_pong(&self) {
        let mut st = self.lock();
        if st.awaiting_pong {
            st.awaiting_pong = false;
            drop(st);
            self.lifecycle.notify_one();
        }
    }

    pub(crate) fn awaiting_pong(&self) -> bool {
        self.lock().awaiting_pong
    }

    /// Engine.IO v3: the client pinged; the pong is queued and the
    /// heartbeat timeout starts again.
    pub(crate) fn on_client_ping(&self) -> Result<(), SendError> {
        self.send(Frame::control(Frame::PONG))?;
        self.lock().client_pinged = true;
        self.lifecycle.notify_one();
        Ok(())
    }

    /// Whether the client pinged since the last call (v3).
    pub(crate) fn take_client_ping(&self) -> bool {
        std::mem::take(&mut self.lock().client_pinged)
    }

    pub(crate) async fn lifecycle_event(&self) {
        self.lifecycle.notified().await
    }

    pub(crate) async fn writer_event(&self) {
        self.writer.notified().await
    }

    // ----- polling ---------------------------------------------------------

    /// Registers a polling GET; returns its generation. A GET that
    /// repeats the stamp of the pending one is that request retried by a
    /// proxy after the node carrying it failed: it takes the pending
    /// one's place instead of closing the session as an overlap.
    pub(crate) fn begin_poll(&self, query: &str) -> Result<u64, BeginError> {
        let mut st = self.lock();
        if st.is_moving() {
            return Err(BeginError::Moving);
        }
        if st.transport != TransportKind::Polling || st.upgrade == UpgradeState::Done {
            return Err(BeginError::NotPolling);
        }
        let stamp = request_stamp(query);
        if let PollSlot::Pending { stamp: pending, .. } = &st.poll {
            if stamp.is_none() || pending.as_deref() != stamp {
                return Err(BeginError::Overlap);
            }
            // The same request retried: it takes the pending one's place
            // (and is not a late one).
            st.poll_gen += 1;
            let gen = st.poll_gen;
            st.poll = PollSlot::Pending {
                stamp: stamp.map(Into::into),
                late: false,
            };
            drop(st);
            self.wake_writers();
            return Ok(gen);
        }
        if st.unconfirmed.is_some() {
            return Err(BeginError::Unconfirmed);
        }
        st.poll_gen += 1;
        let gen = st.poll_gen;
        st.poll = PollSlot::Pending {
            stamp: stamp.map(Into::into),
            late: matches!(st.upgrade, UpgradeState::Attached | UpgradeState::Probing),
        };
        Ok(gen)
    }

    /// The upgrade tick passed for poll `gen` (one that began while a
    /// WebSocket was attached) with no `5`: it gets its noop.
    pub(crate) fn release_late_poll(&self, gen: u64) {
        let mut st = self.lock();
        if st.poll_gen == gen {
            if let PollSlot::Pending { late, .. } = &mut st.poll {
                *late = false;
            }
        }
    }

    /// What a new GET tells of a held answer, settled here. A client
    /// sends its next GET only once the previous one completed, each with
    /// a fresh stamp: another stamp means the client read the answer
    /// (delivered). A proxy passes a request on to another node only when
    /// the first gave no response at all: the same stamp means the answer
    /// never reached the client (taken back, and this GET gets it). Without
    /// stamps to compare, the forwarder's word decides, once it came.
    pub(crate) fn settle_by_request(&self, query: &str) -> HeldAnswer {
        let st = self.lock();
        let Some(held) = st.unconfirmed.as_ref() else {
            return HeldAnswer::None;
        };
        let id = held.id;
        let delivered = match (held.stamp.as_deref(), request_stamp(query)) {
            (Some(stamp), Some(other)) => stamp != other,
            // This GET cannot tell: the forwarder's word, once it came.
            _ => match held.forwarder {
                Some(delivered) => delivered,
                None => return HeldAnswer::Unknown(id),
            },
        };
        drop(st);
        self.settle_held(id, delivered);
        HeldAnswer::None
    }

    /// What the forwarding node tells of held answer `id`: that hyper took
    /// its bytes for the client's connection (`true`), or not (`false`:
    /// its call ended or broke without saying so, or it said nothing in
    /// time). For an answer to a stamped request this settles nothing:
    /// the forwarder may die between its write and its receipt (the
    /// client has the packets though the owner is told nothing), or
    /// between a receipt sent first and the write (the proxy then retries
    /// the request elsewhere, though the owner was told "delivered"). The
    /// client's next request tells which ([`Session::settle_by_request`]);
    /// the forwarder's word is kept for a next request without a stamp.
    /// The answer to a request without a stamp is settled by it at once.
    pub(crate) fn forwarder_settles(&self, id: u64, delivered: bool) {
        let mut st = self.lock();
        match st.unconfirmed.as_mut() {
            Some(held) if held.id == id && held.stamp.is_some() => {
                held.forwarder = Some(delivered);
            }
            _ => {
                drop(st);
                self.settle_held(id, delivered);
            }
        }
    }

    /// Whether a forwarded poll's answer awaits news of its fate.
    pub(crate) fn holds_answer(&self) -> bool {
        self.lock().unconfirmed.is_some()
    }

    /// Ends the hold of answer `id`: delivered, it is forgotten; not
    /// delivered, its packets go back to the head of the queue, ahead of
    /// anything queued since, for the next poll (or the transport that
    /// follows). An id already settled is ignored.
    pub(crate) fn settle_held(&self, id: u64, delivered: bool) {
        let mut st = self.lock();
        let held = match st.unconfirmed.take() {
            Some(held) if held.id == id => held,
            other => {
                st.unconfirmed = other;
                return;
            }
        };
        if !delivered && st.close.is_none() {
            crate::metrics::metrics().poll_answers_retaken.add(1, &[]);
            for frame in held.frames.into_iter().rev() {
                st.queued_bytes += frame.wire_len() + FRAME_OVERHEAD;
                st.queue.push_front(frame);
            }
        }
        drop(st);
        self.wake_writers();
    }

    pub(crate) fn end_poll(&self, gen: u64) {
        let mut st = self.lock();
        if st.is_pending(gen) {
            st.poll = PollSlot::Idle;
        }
    }

    /// Decides what a pending poll answers now: at most `max_packets`
    /// packets (0: no limit), the rest stays queued for the next poll.
    /// `hold`: the request's raw query when a forwarding node answers the
    /// client; the packets are then kept until it confirms delivery.
    pub(crate) fn poll_outcome(
        &self,
        gen: u64,
        max_packets: usize,
        hold: Option<&str>,
    ) -> PollOutcome {
        let mut st = self.lock();
        if st.poll_gen != gen {
            return PollOutcome::Superseded;
        }
        // Moving: the queue goes with the session; this poll gets the
        // handed-off noop (or the queue back if the move is given up).
        if st.is_moving() && st.close.is_none() {
            return PollOutcome::Wait;
        }
        let take = if max_packets == 0 {
            st.queue.len()
        } else {
            st.queue.len().min(max_packets)
        };
        if let Some(closed) = st.close {
            // The client's own close packet releases its pending poll with
            // a noop; any other close sends a close packet, after what was
            // still queued (as much as one answer holds).
            let last = if matches!(
                closed.reason,
                CloseReason::TransportClose | CloseReason::HandedOff
            ) {
                Frame::NOOP
            } else {
                Frame::CLOSE
            };
            let noop = last == Frame::CLOSE && closed.noop_first && max_packets != 1;
            let room = if max_packets == 0 {
                usize::MAX
            } else {
                max_packets.saturating_sub(1 + usize::from(noop))
            };
            let take = st.queue.len().min(room);
            let mut frames: Vec<Frame> = st.queue.drain(..take).collect();
            st.queue.clear();
            st.queued_bytes = 0;
            if noop {
                frames.push(Frame::control(Frame::NOOP));
            }
            frames.push(Frame::control(last));
            if closed.owed {
                st.close = Some(Closed {
                    owed: false,
                    ..closed
                });
                drop(st);
                self.lifecycle.notify_one();
            }
            return PollOutcome::Payload(self.encode(&frames));
        }
        // Once the probe is answered the queue belongs to the WebSocket:
        // the poll only gets a noop, so nothing goes out twice or is lost
        // on a transport the client is leaving.
        if st.is_late(gen) {
            match st.upgrade {
                UpgradeState::Probing => return PollOutcome::AwaitUpgrade,
                UpgradeState::Done => return PollOutcome::Upgraded,
                _ => {}
            }
        }
        if matches!(st.upgrade, UpgradeState::Probing | UpgradeState::Done) {
            return PollOutcome::Payload(self.encode(&[Frame::control(Frame::NOOP)]));
        }
        if take == 0 {
            return PollOutcome::Wait;
        }
        let frames: Vec<Frame> = st.queue.drain(..take).collect();
        let released: usize = frames.iter().map(|f| f.wire_len() + FRAME_OVERHEAD).sum();
        st.queued_bytes = st.queued_bytes.saturating_sub(released);
        let payload = self.encode(&frames);
        let Some(query) = hold else {
            return PollOutcome::Payload(payload);
        };
        st.held += 1;
        let id = st.held;
        st.unconfirmed = Some(Unconfirmed {
            id,
            frames,
            stamp: request_stamp(query).map(Into::into),
            forwarder: None,
        });
        PollOutcome::Held(payload, id)
    }

    pub(crate) fn begin_post(&self) -> Result<(), BeginError> {
        let mut st = self.lock();
        if st.is_moving() {
            return Err(BeginError::Moving);
        }
        if st.transport != TransportKind::Polling || st.upgrade == UpgradeState::Done {
            return Err(BeginError::NotPolling);
        }
        if st.posting {
            return Err(BeginError::Overlap);
        }
        st.posting = true;
        Ok(())
    }

    pub(crate) fn end_post(&self) {
        self.lock().posting = false;
        self.changed.notify_waiters();
    }

    // ----- handoff ---------------------------------------------------------

    /// Starts a handoff: no new GET or POST begins here.
    pub(crate) fn begin_move(&self) -> Result<(), Refused> {
        let mut st = self.lock();
        if st.close.is_some() {
            return Err(Refused::Closed);
        }
        if st.is_moving() {
            return Err(Refused::Moving);
        }
        if st.transport != TransportKind::Polling || st.upgrade != UpgradeState::None {
            return Err(Refused::Upgrading);
        }
        st.ownership = Ownership::Moving;
        Ok(())
    }

    /// A handoff of this session has begun (or is done).
    pub(crate) fn is_moving(&self) -> bool {
        self.lock().is_moving()
    }

    /// A POST is being applied (the handoff waits for it).
    pub(crate) fn is_posting(&self) -> bool {
        self.lock().posting
    }

    /// A polling GET is pending (held open until there is something to
    /// send).
    pub(crate) fn is_polling(&self) -> bool {
        self.lock().is_polling()
    }

    /// Ends a handoff that could not finish: the session stays here.
    pub(crate) fn cancel_move(&self) {
        let mut st = self.lock();
        if st.ownership == Ownership::Moving {
            st.ownership = Ownership::Here;
        }
        drop(st);
        self.wake_writers();
    }

    /// Finishes a handoff: takes what is queued and closes the session
    /// here as handed off (a pending poll gets a noop).
    pub(crate) fn take_for_move(&self, new_owner: &str) -> (Vec<Frame>, bool) {
        let mut st = self.lock();
        st.ownership = Ownership::Moved(new_owner.into());
        let frames: Vec<Frame> = st.queue.drain(..).collect();
        st.queued_bytes = 0;
        let awaiting = st.awaiting_pong;
        if st.close.is_none() {
            st.close = Some(Closed::plain(CloseReason::HandedOff));
        }
        drop(st);
        self.wake_all();
        (frames, awaiting)
    }

    // ----- upgrade ---------------------------------------------------------

    /// Attaches a WebSocket for an upgrade. Only one may try at a time,
    /// and only on a polling session.
    pub(crate) fn attach_websocket(&self) -> Result<(), Refused> {
        let mut st = self.lock();
        if st.close.is_some() {
            return Err(Refused::Closed);
        }
        if st.transport != TransportKind::Polling || st.upgrade != UpgradeState::None {
            return Err(Refused::Upgrading);
        }
        st.upgrade = UpgradeState::Attached;
        Ok(())
    }

    /// The upgrade attempt failed or timed out: the session goes on polling.
    pub(crate) fn detach_websocket(&self) {
        let mut st = self.lock();
        if st.upgrade != UpgradeState::Done {
            st.upgrade = UpgradeState::None;
        }
    }

    /// `2probe` answered: pending and new polls get a noop so the client
    /// pauses polling.
    pub(crate) fn probing(&self) {
        let mut st = self.lock();
        if st.upgrade == UpgradeState::Attached {
            st.upgrade = UpgradeState::Probing;
        }
        drop(st);
        self.wake_writers();
    }

    /// `5` received: the WebSocket takes over (the reference accepts it
    /// even without a probe first).
    pub(crate) fn complete_upgrade(&self) -> Result<(), Refused> {
        let mut st = self.lock();
        if st.close.is_some() {
            return Err(Refused::Closed);
        }
        if !matches!(st.upgrade, UpgradeState::Attached | UpgradeState::Probing) {
            return Err(Refused::NoUpgrade);
        }
        st.upgrade = UpgradeState::Done;
        st.transport = TransportKind::WebSocket;
        // A client sends `5` only once its last poll completed with the
        // packets it carried (an error there closes the client instead):
        // an answer still held reached it.
        st.unconfirmed = None;
        drop(st);
        // A poll still pending must be released, and the WebSocket writer
        // must flush what was queued during the upgrade.
        self.wake_writers();
        Ok(())
    }

    /// Takes every queued frame for the WebSocket writer. Returns the
    /// close reason once the session is closed (after the last frames).
    /// (No forwarded poll's answer is held any more: `5` settled it.)
    pub(crate) fn drain_for_websocket(&self, out: &mut Vec<Frame>) -> Option<CloseReason> {
        let mut st = self.lock();
        out.extend(st.queue.drain(..));
        st.queued_bytes = 0;
        st.close.map(|c| c.reason)
    }
}

/// Resets the "GET pending" flag however the poll ends (answered, or the
/// client went away and hyper dropped the future).
pub(crate) struct PollGuard<'a, D>(pub(crate) &'a Session<D>, pub(crate) u64);

impl<D> Drop for PollGuard<'_, D> {
    fn drop(&mut self) {
        self.0.end_poll(self.1);
    }
}

pub(crate) struct PostGuard<'a, D>(pub(crate) &'a Session<D>);

impl<D> Drop for PostGuard<'_, D> {
    fn drop(&mut self) {
        self.0.end_post();
    }
}

pub type SessionRef<D> = Arc<Session<D>>;

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;

    use super::*;

    fn polling_session() -> Session<()> {
        let handshake = Handshake {
            remote_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            query: String::new(),
            raw_headers: "".into(),
            issued_ms: 0,
        };
        Session::new(
            Sid::random(),
            TransportKind::Polling,
            1 << 20,
            handshake,
            (),
        )
    }

    fn payload(outcome: PollOutcome) -> (Bytes, Option<u64>) {
        match outcome {
            PollOutcome::Payload(body) => (body.bytes, None),
            PollOutcome::Held(body, id) => (body.bytes, Some(id)),
            PollOutcome::Wait => panic!("nothing to answer"),
            PollOutcome::Superseded => panic!("superseded"),
            PollOutcome::AwaitUpgrade | PollOutcome::Upgraded => panic!("upgrading"),
        }
    }

    /// A forwarded GET: begun, answered with what is queued, held, ended.
    fn forwarded_poll(session: &Session<()>, query: &str) -> (Bytes, u64) {
        let gen = session.begin_poll(query).expect("a poll begins");
        let (bytes, id) = payload(session.poll_outcome(gen, 0, Some(query)));
        session.end_poll(gen);
        (bytes, id.expect("a forwarded poll's answer is held"))
    }

    fn local_poll(session: &Session<()>, query: &str) -> Bytes {
        let gen = session.begin_poll(query).expect("a poll begins");
        let (bytes, id) = payload(session.poll_outcome(gen, 0, None));
        session.end_poll(gen);
        assert_eq!(id, None, "a local poll's answer is not held");
        bytes
    }

    #[test]
    fn a_held_answer_not_delivered_goes_back_ahead_of_what_came_since() {
        let s = polling_session();
        s.send(Frame::message("a")).unwrap();
        s.send(Frame::message("b")).unwrap();
        let (bytes, id) = forwarded_poll(&s, "sid=x");
        assert_eq!(&bytes[..], b"4a\x1e4b");
        // The next GET waits while the answer is held.
        assert_eq!(s.begin_poll("sid=x"), Err(BeginError::Unconfirmed));
        s.send(Frame::message("c")).unwrap();
        s.settle_held(id, false);
        // Settling again (the stream's end after the receipt) is ignored.
        s.settle_held(id, false);
        assert_eq!(&local_poll(&s, "sid=x")[..], b"4a\x1e4b\x1e4c");
    }

    #[test]
    fn a_held_answer_delivered_is_forgotten() {
        let s = polling_session();
        s.send(Frame::message("a")).unwrap();
        let (_, id) = forwarded_poll(&s, "sid=x");
        s.settle_held(id, true);
        s.settle_held(id, false);
        assert!(!s.holds_answer());
        s.send(Frame::message("b")).unwrap();
        assert_eq!(&local_poll(&s, "sid=x")[..], b"4b");
    }

    #[test]
    fn the_request_stamp_of_the_next_get_settles_a_held_answer() {
        let s = polling_session();
        // The same stamp: the proxy retried the request, the client never
        // got the answer.
        s.send(Frame::message("a")).unwrap();
        forwarded_poll(&s, "sid=x&t=one");
        assert_eq!(s.settle_by_request("sid=x&t=one"), HeldAnswer::None);
        assert!(!s.holds_answer());
        assert_eq!(&local_poll(&s, "sid=x&t=one")[..], b"4a");
        // Another stamp: the client read it and asks for more.
        s.send(Frame::message("b")).unwrap();
        forwarded_poll(&s, "sid=x&t=two");
        assert_eq!(s.settle_by_request("sid=x&t=three"), HeldAnswer::None);
        s.send(Frame::message("c")).unwrap();
        assert_eq!(&local_poll(&s, "sid=x&t=three")[..], b"4c");
        // An empty stamp is no stamp.
        s.send(Frame::message("e")).unwrap();
        let (_, id) = forwarded_poll(&s, "sid=x&t=");
        assert_eq!(s.settle_by_request("sid=x&t="), HeldAnswer::Unknown(id));
        s.settle_held(id, false);
        assert_eq!(&local_poll(&s, "sid=x&t=")[..], b"4e");
        // No stamp on either side: nothing is known, it stays held.
        s.send(Frame::message("d")).unwrap();
        let (_, id) = forwarded_poll(&s, "sid=x");
        assert_eq!(s.settle_by_request("sid=x&t=four"), HeldAnswer::Unknown(id));
        assert!(s.holds_answer());
        s.settle_held(id, false);
        assert_eq!(&local_poll(&s, "sid=x&t=four")[..], b"4d");
    }

    #[test]
    fn a_retried_get_takes_the_place_of_the_pending_one() {
        let s = polling_session();
        let first = s.begin_poll("sid=x&t=one").expect("first GET");
        // Another request while one is pending is an overlap...
        assert_eq!(s.begin_poll("sid=x&t=two"), Err(BeginError::Overlap));
        assert_eq!(s.begin_poll("sid=x"), Err(BeginError::Overlap));
        // ...but the same request again replaces it.
        let retry = s.begin_poll("sid=x&t=one").expect("the retry");
        s.send(Frame::message("a")).unwrap();
        assert!(matches!(
            s.poll_outcome(first, 0, None),
            PollOutcome::Superseded
        ));
        // The replaced GET ending does not end the retry.
        s.end_poll(first);
        assert_eq!(s.begin_poll("sid=x&t=two"), Err(BeginError::Overlap));
        let (bytes, _) = payload(s.poll_outcome(retry, 0, None));
        assert_eq!(&bytes[..], b"4a");
        s.end_poll(retry);
    }

    #[test]
    fn transitions_say_why_they_are_refused() {
        let s = polling_session();
        assert_eq!(s.complete_upgrade(), Err(Refused::NoUpgrade));
        assert_eq!(s.begin_move(), Ok(()));
        assert_eq!(s.begin_move(), Err(Refused::Moving));
        assert!(s.is_moving());
        s.cancel_move();
        assert!(!s.is_moving());
        assert_eq!(s.attach_websocket(), Ok(()));
        assert_eq!(s.attach_websocket(), Err(Refused::Upgrading));
        assert_eq!(s.begin_move(), Err(Refused::Upgrading));
        s.detach_websocket();
        let (_, _) = s.take_for_move("n2");
        assert_eq!(s.moved_to().as_deref(), Some("n2"));
        assert!(s.is_moving(), "moved: no request starts here any more");
        assert_eq!(s.begin_move(), Err(Refused::Closed));
        assert_eq!(s.attach_websocket(), Err(Refused::Closed));
        assert_eq!(s.close_reason(), Some(CloseReason::HandedOff));
    }

    #[test]
    fn a_poll_pending_while_the_session_moves_takes_nothing() {
        let s = polling_session();
        let gen = s.begin_poll("sid=x").expect("a poll begins");
        assert_eq!(s.begin_move(), Ok(()));
        s.send(Frame::message("a")).unwrap();
        assert!(matches!(
            s.poll_outcome(gen, 0, Some("sid=x")),
            PollOutcome::Wait
        ));
        // The move given up: the poll gets the queue after all.
        s.cancel_move();
        let (bytes, _) = payload(s.poll_outcome(gen, 0, None));
        assert_eq!(&bytes[..], b"4a");
        // The move done: the queue goes along, the poll gets a noop.
        s.send(Frame::message("b")).unwrap();
        assert_eq!(s.begin_move(), Ok(()));
        let (frames, _) = s.take_for_move("n2");
        assert_eq!(frames, vec![Frame::message("b")]);
        let (bytes, _) = payload(s.poll_outcome(gen, 0, None));
        assert_eq!(&bytes[..], b"6");
    }

    /// The forwarding node is killed after writing the answer to its
    /// client, before its receipt left: its call breaks. The client read
    /// the answer and polls again (a new stamp): nothing goes out twice.
    #[test]
    fn a_forwarder_killed_between_its_write_and_its_receipt_sends_nothing_twice() {
        let s = polling_session();
        s.send(Frame::message("a")).unwrap();
        let (_, id) = forwarded_poll(&s, "sid=x&t=one");
        s.forwarder_settles(id, false);
        assert!(s.holds_answer(), "the broken call alone settles nothing");
        s.send(Frame::message("b")).unwrap();
        assert_eq!(s.settle_by_request("sid=x&t=two"), HeldAnswer::None);
        assert_eq!(&local_poll(&s, "sid=x&t=two")[..], b"4b");
        // A next GET without a stamp cannot tell: the forwarder's word.
        s.send(Frame::message("c")).unwrap();
        let (_, id) = forwarded_poll(&s, "sid=x&t=three");
        s.forwarder_settles(id, false);
        s.send(Frame::message("d")).unwrap();
        assert_eq!(s.settle_by_request("sid=x"), HeldAnswer::None);
        assert_eq!(&local_poll(&s, "sid=x")[..], b"4c\x1e4d");
    }

    /// The forwarding node's receipt left before its write, then it was
    /// killed: the proxy never got the answer and retries the request (the
    /// same stamp) through another node, which gets the packets.
    #[test]
    fn a_receipt_that_left_before_a_write_that_never_happened_loses_nothing() {
        let s = polling_session();
        s.send(Frame::message("a")).unwrap();
        let (_, id) = forwarded_poll(&s, "sid=x&t=one");
        s.forwarder_settles(id, true);
        assert!(s.holds_answer(), "the receipt alone settles nothing");
        s.send(Frame::message("b")).unwrap();
        assert_eq!(s.settle_by_request("sid=x&t=one"), HeldAnswer::None);
        assert_eq!(&local_poll(&s, "sid=x&t=one")[..], b"4a\x1e4b");
        // Without a stamp the receipt is all there is.
        s.send(Frame::message("c")).unwrap();
        let (_, id) = forwarded_poll(&s, "sid=x");
        s.forwarder_settles(id, true);
        assert!(!s.holds_answer());
    }

    /// A client sends `5` only once its last poll completed: the answer
    /// still held reached it, and the WebSocket sends what follows only.
    #[test]
    fn the_upgrade_settles_a_held_answer_as_delivered() {
        let s = polling_session();
        s.send(Frame::message("a")).unwrap();
        let (_, id) = forwarded_poll(&s, "sid=x&t=one");
        s.forwarder_settles(id, false);
        assert_eq!(s.attach_websocket(), Ok(()));
        s.probing();
        assert_eq!(s.complete_upgrade(), Ok(()));
        assert!(!s.holds_answer());
        s.send(Frame::message("b")).unwrap();
        let mut out = Vec::new();
        s.drain_for_websocket(&mut out);
        assert_eq!(out, vec![Frame::message("b")]);
        // A late receipt changes nothing.
        s.settle_held(id, false);
        s.drain_for_websocket(&mut out);
        assert_eq!(out, vec![Frame::message("b")]);
    }
}
