//! The deliverer: one task per node reads the log in order and delivers
//! each entry to this node's sockets (with its offset), and puts sockets
//! in at a position of the log (a recovery, a handoff): what the log holds
//! after it that targets the socket first, then the live entries.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::replay::{payload_of, replay};
use super::{Install, NamespaceSource, Recovery, PENDING_WAIT, REPLAY_PAGE, UNLOGGED};
use crate::log::{Control, LogEntry};
use crate::namespace::Namespace;
use crate::socket::SocketRef;
use crate::store::{Offset, Record, StoreError, Tail};
use crate::target::Target;
use ringway_engineio::Sid;

pub(super) enum Command {
    Install(Install),
    Unlogged(LogEntry),
}

impl Recovery {
    /// Puts a socket into its namespace at a log position (see
    /// [`Install`]).
    pub(crate) fn install(&self, install: Install) {
        self.command(Command::Install(install));
    }

    pub(super) async fn deliver(
        self: Arc<Self>,
        mut tail: Tail,
        mut commands: mpsc::Receiver<Command>,
        namespaces: Arc<dyn NamespaceSource>,
    ) {
        let mut pending: Vec<(Install, tokio::time::Instant)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut installs = Vec::new();
                    let mut next = Some(cmd);
                    while let Some(cmd) = next.take() {
                        match cmd {
                            Command::Install(i) => installs.push(i),
                            Command::Unlogged(entry) => {
                                let _gate = self.gate();
                                deliver_entry(&*namespaces, &entry, UNLOGGED);
                            }
                        }
                        next = commands.try_recv().ok();
                    }
                    if !installs.is_empty() {
                        self.install_batch(installs, &mut pending).await;
                    }
                }
                batch = tail.batches.recv() => {
                    let Some(batch) = batch else {
                        warn!("recovery log: the tail ended");
                        return;
                    };
                    self.deliver_batch(&*namespaces, batch, &mut pending);
                }
                _ = tick.tick() => {
                    // Sockets waiting for an offset this node never reached.
                    let now = tokio::time::Instant::now();
                    let (late, wait): (Vec<_>, Vec<_>) =
                        pending.drain(..).partition(|(_, since)| now.duration_since(*since) > PENDING_WAIT);
                    pending = wait;
                    if !late.is_empty() {
                        let _gate = self.gate();
                        for (install, _) in late {
                            debug!(socket = %install.socket.id(), from = %install.from, "installed without reaching its offset");
                            admit(install);
                        }
                    }
                }
            }
        }
    }

    fn deliver_batch(
        &self,
        namespaces: &dyn NamespaceSource,
        batch: Vec<Record>,
        pending: &mut Vec<(Install, tokio::time::Instant)>,
    ) {
        for record in batch {
            let entry = self.codec.decode_entry(&record.data);
            let mut position = self.gate();
            if record.offset <= *position {
                continue;
            }
            // Sockets waiting for a position before this entry take it.
            release_where(pending, |from| from < record.offset);
            if let Some(entry) = &entry {
                deliver_entry(namespaces, entry, &record.offset.to_string());
            }
            *position = record.offset;
            release_where(pending, |from| from <= record.offset);
        }
    }

    async fn install_batch(
        &self,
        installs: Vec<Install>,
        pending: &mut Vec<(Install, tokio::time::Instant)>,
    ) {
        // The position only moves in this task: it holds while we read.
        let position = self.position();
        let Some(min_from) = installs.iter().map(|i| i.from).min() else {
            return;
        };
        let shared = self.read_after(min_from, position).await;
        for mut install in installs {
            let own;
            let read = match &shared {
                Err(_) => None,
                Ok(r) if r.covered || !install.check || install.from == min_from => Some(r),
                Ok(_) => {
                    // Not covered from the earliest: maybe from this one.
                    own = self.read_after(install.from, position).await;
                    own.as_ref().ok()
                }
            };
            let Some(read) = read else {
                fail(install);
                continue;
            };
            if install.check && (!read.covered || install.from > read.last) {
                fail(install);
                continue;
            }
            if install.from > position {
                // Ahead of this node's deliverer: wait for it.
                pending.push((install, tokio::time::Instant::now()));
                continue;
            }
            let _gate = self.gate();
            let (missed, ended) = replay(
                self.codec.as_ref(),
                &install.socket,
                install.from,
                &read.records,
            );
            if install.check && ended.is_some() {
                // The server disconnected this socket while its client was
                // away: not recoverable (a fresh socket, as the reference).
                fail(install);
                continue;
            }
            if !send_first(&mut install) {
                fail(install);
                continue;
            }
            let replayed = missed
                .into_iter()
                .map(|frames| install.socket.send_frames(frames))
                .filter(|sent| *sent)
                .count();
            if replayed > 0 {
                crate::metrics::metrics().replayed.add(replayed as u64, &[]);
            }
            let socket = install.socket.clone();
            release(install);
            if let Some(control) = ended {
                // A handed-over socket the server ended on the way.
                end_by(&socket, &control);
            }
        }
    }

    /// Everything after `after` up to `until`, page by page, within the
    /// replay bound.
    async fn read_after(&self, after: Offset, until: Offset) -> Result<Replay, StoreError> {
        let mut out = Replay {
            records: Vec::new(),
            covered: true,
            last: Offset::ZERO,
        };
        let mut from = after;
        loop {
            let left = self.config.max_replay.saturating_sub(out.records.len());
            let range = match self.store.range(from, until, left.min(REPLAY_PAGE)).await {
                Ok(range) => range,
                Err(err) => {
                    ringway_telemetry::warn_every!(std::time::Duration::from_secs(10), %err, "recovery log: range read failed");
                    return Err(err);
                }
            };
            if from == after {
                out.covered = range.covered;
                out.last = range.last;
            }
            let got = range.records.len();
            if let Some(last) = range.records.last() {
                from = last.offset;
            }
            out.records.extend(range.records);
            if range.complete || from >= until {
                return Ok(out);
            }
            if out.records.len() >= self.config.max_replay || got == 0 {
                // More than the bound: a replay that long is not offered.
                out.covered = false;
                return Ok(out);
            }
        }
    }
}

/// What a catch-up read gave.
struct Replay {
    records: Vec<Record>,
    covered: bool,
    last: Offset,
}

fn release_where(pending: &mut Vec<(Install, tokio::time::Instant)>, due: impl Fn(Offset) -> bool) {
    if pending.is_empty() {
        return;
    }
    let mut i = 0;
    while i < pending.len() {
        if due(pending[i].0.from) {
            let (install, _) = pending.swap_remove(i);
            admit(install);
        } else {
            i += 1;
        }
    }
}

/// Sends a waiting socket its first packet and puts it in (the caller
/// holds the gate).
fn admit(mut install: Install) {
    if send_first(&mut install) {
        release(install);
    } else {
        fail(install);
    }
}

/// The CONNECT answer of a recovery (the server's completion: the socket
/// joins its session, then the answer is queued). False if the session
/// closed.
fn send_first(install: &mut Install) -> bool {
    match install.first.take() {
        Some(first) => first(),
        None => true,
    }
}

/// An install that cannot be done. A recovery's caller answers with a
/// fresh socket; a socket handed over from another node cannot be caught
/// up, so its session closes and the client reconnects (recovering from
/// its offset once the log answers again).
pub(super) fn fail(install: Install) {
    if !install.check && install.socket.connected() {
        warn!(socket = %install.socket.id(), "a handed-over socket could not be caught up: closing its session");
        install
            .socket
            .session()
            .close(ringway_engineio::CloseReason::TransportError);
    }
    if let Some(done) = install.done {
        let _ = done.send(false);
    }
}

/// Puts an installed socket into its namespace and rooms (the caller
/// holds the gate; its first packet is sent).
fn release(install: Install) {
    let ok = install.socket.connected();
    if ok {
        install.socket.namespace().insert(install.socket.clone());
        install.socket.attach_rooms();
    }
    if let Some(done) = install.done {
        let _ = done.send(ok);
    }
}

/// The entry's target inside its namespace.
fn target_of(entry: &LogEntry) -> Target {
    Target {
        rooms: entry.rooms.clone(),
        except_rooms: entry.except_rooms.clone(),
        except_socket: Sid::parse(&entry.except_socket),
    }
}

/// Delivers one entry to the sockets of this node it targets.
fn deliver_entry(namespaces: &dyn NamespaceSource, entry: &LogEntry, offset: &str) {
    if entry.control != Control::None {
        apply_control(namespaces, entry);
        return;
    }
    let target = target_of(entry);
    let args = payload_of(entry);
    let deliver = |ns: &Namespace| {
        let parser = ns.parser();
        let frames = parser.encode_recoverable(ns.name(), &entry.event, &args, offset);
        ns.send_recoverable(&target, &frames, || {
            parser.encode_event(ns.name(), &entry.event, &args, None)
        });
    };
    if entry.namespace.is_empty() {
        for ns in namespaces.namespaces() {
            deliver(&ns);
        }
    } else if let Some(ns) = namespaces.namespace(&entry.namespace) {
        deliver(&ns);
    }
}

/// Ends the sockets of this node a control entry names.
fn apply_control(namespaces: &dyn NamespaceSource, entry: &LogEntry) {
    let Some(ns) = namespaces.namespace(&entry.namespace) else {
        return;
    };
    for id in entry.rooms.iter().filter_map(|id| Sid::parse(id)) {
        if let Some(socket) = ns.socket(&id) {
            end_by(&socket, entry);
        }
    }
}

/// Ends a socket as the control entry says (see [`apply_control`]).
pub(super) fn end_by(socket: &SocketRef, entry: &LogEntry) {
    let notice = (!entry.event.is_empty()).then(|| payload_of(entry));
    socket.end_now(
        notice.as_ref().map(|args| (entry.event.as_str(), args)),
        entry.control == Control::CloseSession,
    );
}
