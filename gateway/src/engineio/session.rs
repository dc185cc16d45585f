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

use bytes::Bytes;
use http::HeaderMap;
use thiserror::Error;
use tokio::sync::Notify;

use super::packet::Frame;
use super::payload::encode_payload;
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

/// Why a polling GET or POST cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeginError {
    /// Not a polling session (any more): a plain bad request.
    NotPolling,
    /// One is already pending: the session must be closed.
    Overlap,
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
#[derive(Debug)]
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

struct State {
    transport: TransportKind,
    upgrade: UpgradeState,
    queue: VecDeque<Frame>,
    queued_bytes: usize,
    /// A polling GET is pending.
    polling: bool,
    /// A polling POST is being read or processed.
    posting: bool,
    awaiting_pong: bool,
    /// A handoff to another node has begun: no new GET or POST starts here.
    moving: bool,
    close: Option<CloseReason>,
    /// The node the session was handed off to.
    moved_to: Option<Box<str>>,
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
    max_queued_bytes: usize,
    handshake: Handshake,
    data: D,
}

/// What a pending poll should answer, decided under the session lock.
pub(crate) enum PollOutcome {
    /// Nothing to send yet: wait for the writer notification.
    Wait,
    /// The payload to answer with.
    Payload(Bytes),
}

impl<D> Session<D> {
    pub(crate) fn new(
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
                queue: queue.into(),
                queued_bytes,
                polling: false,
                posting: false,
                awaiting_pong,
                moving: false,
                close: None,
                moved_to: None,
            }),
            writer: Notify::new(),
            lifecycle: Notify::new(),
            max_queued_bytes,
            handshake,
            data,
        }
    }

    fn with_transport(self, transport: TransportKind) -> Self {
        self.lock().transport = transport;
        self
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
        self.lock().moved_to.clone()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close
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
            st.close = Some(CloseReason::SlowConsumer);
            drop(st);
            self.wake_all();
            return Err(SendError::QueueFull);
        }
        drop(st);
        self.writer.notify_one();
        Ok(())
    }

    /// Closes the session. The first reason wins; the lifecycle task then
    /// removes it from the engine and tells the application.
    pub fn close(&self, reason: CloseReason) {
        let mut st = self.lock();
        if st.close.is_some() {
            return;
        }
        st.close = Some(reason);
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

    pub(crate) async fn lifecycle_event(&self) {
        self.lifecycle.notified().await
    }

    pub(crate) async fn writer_event(&self) {
        self.writer.notified().await
    }

    // ----- polling ---------------------------------------------------------

    /// Registers a polling GET.
    pub(crate) fn begin_poll(&self) -> Result<(), BeginError> {
        let mut st = self.lock();
        if st.moving {
            return Err(BeginError::Moving);
        }
        if st.transport != TransportKind::Polling || st.upgrade == UpgradeState::Done {
            return Err(BeginError::NotPolling);
        }
        if st.polling {
            return Err(BeginError::Overlap);
        }
        st.polling = true;
        Ok(())
    }

    pub(crate) fn end_poll(&self) {
        self.lock().polling = false;
    }

    /// Decides what a pending poll answers now: at most `max_packets`
    /// packets (0: no limit), the rest stays queued for the next poll.
    pub(crate) fn poll_outcome(&self, max_packets: usize) -> PollOutcome {
        let mut st = self.lock();
        let take = if max_packets == 0 {
            st.queue.len()
        } else {
            st.queue.len().min(max_packets)
        };
        if let Some(reason) = st.close {
            // The client's own close packet releases its pending poll with
            // a noop; any other close sends a close packet, after what was
            // still queued (as much as one answer holds).
            let last = if matches!(reason, CloseReason::TransportClose | CloseReason::HandedOff) {
                Frame::NOOP
            } else {
                Frame::CLOSE
            };
            let room = if max_packets == 0 {
                usize::MAX
            } else {
                max_packets - 1
            };
            let take = st.queue.len().min(room);
            let mut frames: Vec<Frame> = st.queue.drain(..take).collect();
            st.queue.clear();
            st.queued_bytes = 0;
            frames.push(Frame::control(last));
            return PollOutcome::Payload(encode_payload(&frames));
        }
        // Once the probe is answered the queue belongs to the WebSocket:
        // the poll only gets a noop, so nothing goes out twice or is lost
        // on a transport the client is leaving.
        if matches!(st.upgrade, UpgradeState::Probing | UpgradeState::Done) {
            return PollOutcome::Payload(Bytes::from_static(Frame::NOOP.as_bytes()));
        }
        if take > 0 {
            let payload = encode_payload(st.queue.iter().take(take));
            let released: usize = st
                .queue
                .drain(..take)
                .map(|f| f.wire_len() + FRAME_OVERHEAD)
                .sum();
            st.queued_bytes = st.queued_bytes.saturating_sub(released);
            return PollOutcome::Payload(payload);
        }
        PollOutcome::Wait
    }

    pub(crate) fn begin_post(&self) -> Result<(), BeginError> {
        let mut st = self.lock();
        if st.moving {
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
    }

    // ----- handoff ---------------------------------------------------------

    /// Starts a handoff: no new GET or POST begins here. False if the
    /// session cannot move (closed, not polling, upgrading, or already
    /// moving).
    pub(crate) fn begin_move(&self) -> bool {
        let mut st = self.lock();
        if st.close.is_some()
            || st.moving
            || st.transport != TransportKind::Polling
            || st.upgrade != UpgradeState::None
        {
            return false;
        }
        st.moving = true;
        true
    }

    /// A handoff of this session has begun.
    pub(crate) fn is_moving(&self) -> bool {
        self.lock().moving
    }

    /// A POST is being applied (the handoff waits for it).
    pub(crate) fn is_posting(&self) -> bool {
        self.lock().posting
    }

    /// Ends a handoff that could not finish: the session stays here.
    pub(crate) fn cancel_move(&self) {
        self.lock().moving = false;
    }

    /// Finishes a handoff: takes what is queued and closes the session
    /// here as handed off (a pending poll gets a noop).
    pub(crate) fn take_for_move(&self, new_owner: &str) -> (Vec<Frame>, bool) {
        let mut st = self.lock();
        st.moved_to = Some(new_owner.into());
        let frames: Vec<Frame> = st.queue.drain(..).collect();
        st.queued_bytes = 0;
        let awaiting = st.awaiting_pong;
        if st.close.is_none() {
            st.close = Some(CloseReason::HandedOff);
        }
        drop(st);
        self.wake_all();
        (frames, awaiting)
    }

    // ----- upgrade ---------------------------------------------------------

    /// Attaches a WebSocket for an upgrade. Only one may try at a time,
    /// and only on a polling session.
    pub(crate) fn attach_websocket(&self) -> bool {
        let mut st = self.lock();
        if st.close.is_some()
            || st.transport != TransportKind::Polling
            || st.upgrade != UpgradeState::None
        {
            return false;
        }
        st.upgrade = UpgradeState::Attached;
        true
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
    /// even without a probe first). False if the session is gone.
    pub(crate) fn complete_upgrade(&self) -> bool {
        let mut st = self.lock();
        if st.close.is_some()
            || !matches!(st.upgrade, UpgradeState::Attached | UpgradeState::Probing)
        {
            return false;
        }
        st.upgrade = UpgradeState::Done;
        st.transport = TransportKind::WebSocket;
        drop(st);
        // A poll still pending must be released, and the WebSocket writer
        // must flush what was queued during the upgrade.
        self.wake_writers();
        true
    }

    /// Takes every queued frame for the WebSocket writer. Returns the
    /// close reason once the session is closed (after the last frames).
    pub(crate) fn drain_for_websocket(&self, out: &mut Vec<Frame>) -> Option<CloseReason> {
        let mut st = self.lock();
        out.extend(st.queue.drain(..));
        st.queued_bytes = 0;
        st.close
    }
}

/// Resets the "GET pending" flag however the poll ends (answered, or the
/// client went away and hyper dropped the future).
pub(crate) struct PollGuard<'a, D>(pub(crate) &'a Session<D>);

impl<D> Drop for PollGuard<'_, D> {
    fn drop(&mut self) {
        self.0.end_poll();
    }
}

pub(crate) struct PostGuard<'a, D>(pub(crate) &'a Session<D>);

impl<D> Drop for PostGuard<'_, D> {
    fn drop(&mut self) {
        self.0.end_post();
    }
}

pub type SessionRef<D> = Arc<Session<D>>;
