//! A namespace: its connected sockets and its rooms. Room emits are
//! encoded once and the same bytes queued on every receiving session.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::debug;

use ringway_engineio::{Frame, Sid};

use super::fabric::{Fabric, RoomReceipt};
use super::log::LogEntry;
use super::packet::Payload;
use super::parser::Parser;
use super::socket::{RecoverySink, Socket, SocketRef};
pub use super::target::Target;

type Members = HashMap<Sid, SocketRef>;

/// Whether a registered socket is this very socket (not another copy
/// with the same id).
fn is_this(registered: Option<&SocketRef>, socket: &Socket) -> bool {
    registered.is_some_and(|r| std::ptr::eq(r.as_ref(), socket))
}

pub struct Namespace {
    limits: SocketLimits,
    /// The wire form its packets are written in.
    parser: Parser,
    name: Box<str>,
    fabric: Arc<dyn Fabric>,
    /// With connection state recovery on, emits go through its log.
    recovery: Option<Arc<dyn RecoverySink>>,
    sockets: RwLock<Members>,
    rooms: RwLock<HashMap<Box<str>, Members>>,
}

/// What a client may do with sockets of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Most rooms per socket (0: no limit).
    pub max_rooms_per_socket: usize,
    /// Longest room name, in bytes.
    pub max_room_name: usize,
    /// Longest event name a client may send, in bytes.
    pub max_event_name: usize,
    /// Refused CONNECTs per session before it is closed (0: no limit).
    pub max_failed_connects: usize,
}

impl Default for SocketLimits {
    fn default() -> Self {
        SocketLimits {
            max_rooms_per_socket: 1_000,
            max_room_name: 256,
            max_event_name: 256,
            max_failed_connects: 10,
        }
    }
}

impl Namespace {
    pub fn new(
        name: &str,
        fabric: Arc<dyn Fabric>,
        recovery: Option<Arc<dyn RecoverySink>>,
        limits: SocketLimits,
        parser: Parser,
    ) -> Arc<Namespace> {
        Arc::new(Namespace {
            limits,
            parser,
            name: name.into(),
            fabric,
            recovery,
            sockets: RwLock::new(HashMap::new()),
            rooms: RwLock::new(HashMap::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What clients may do with its sockets.
    pub fn limits(&self) -> SocketLimits {
        self.limits
    }

    /// The wire form of its packets (the gateway's `--parser`).
    pub fn parser(&self) -> Parser {
        self.parser
    }

    /// The seam to the other nodes.
    pub(crate) fn fabric(&self) -> &Arc<dyn Fabric> {
        &self.fabric
    }

    pub fn recovery(&self) -> Option<&Arc<dyn RecoverySink>> {
        self.recovery.as_ref()
    }

    fn sockets(&self) -> RwLockReadGuard<'_, Members> {
        self.sockets.read().unwrap_or_else(|e| e.into_inner())
    }

    fn sockets_mut(&self) -> RwLockWriteGuard<'_, Members> {
        self.sockets.write().unwrap_or_else(|e| e.into_inner())
    }

    fn rooms(&self) -> RwLockReadGuard<'_, HashMap<Box<str>, Members>> {
        self.rooms.read().unwrap_or_else(|e| e.into_inner())
    }

    fn rooms_mut(&self) -> RwLockWriteGuard<'_, HashMap<Box<str>, Members>> {
        self.rooms.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn socket(&self, id: &Sid) -> Option<SocketRef> {
        self.sockets().get(id).cloned()
    }

    pub fn socket_count(&self) -> usize {
        self.sockets().len()
    }

    /// Calls `f` with the name of every room with members here (hidden
    /// rooms too), under the rooms' read lock: `f` must not call back.
    pub fn for_each_room_name(&self, mut f: impl FnMut(&str)) {
        for name in self.rooms().keys() {
            f(name);
        }
    }

    /// How many rooms have members here (not the hidden ones).
    pub fn room_count(&self) -> usize {
        self.rooms()
            .keys()
            .filter(|r| !super::socket::is_hidden_room(r))
            .count()
    }

    /// Every socket the target reaches here.
    pub fn sockets_of(&self, target: &Target) -> Vec<SocketRef> {
        let mut out = Vec::new();
        self.for_each_target(target, |s| out.push(s.clone()));
        out
    }

    pub fn room_size(&self, room: &str) -> usize {
        self.rooms().get(room).map_or(0, HashMap::len)
    }

    pub(crate) fn insert(&self, socket: SocketRef) {
        let id = socket.id();
        let displaced = self.sockets_mut().insert(id, socket.clone());
        if displaced.is_some_and(|d| !Arc::ptr_eq(&d, &socket)) {
            // Harmless now (see `remove`), but worth seeing.
            debug!(socket = %id, "another copy of this socket was still here (its session not closed yet): replaced");
        }
    }

    /// Removes a socket from the namespace and from every room it is in.
    /// Only this very socket: another copy with the same id installed here
    /// since (its client recovered it here, or its session moved here,
    /// while the copy of the session it left was still open) stays. Ids
    /// alone would let the old copy, whenever its session ends, take the
    /// live one out of its rooms, and its client would silently receive
    /// nothing more.
    pub(crate) fn remove(&self, socket: &Socket) {
        {
            let mut sockets = self.sockets_mut();
            if is_this(sockets.get(&socket.id()), socket) {
                sockets.remove(&socket.id());
            }
        }
        let rooms = socket.take_rooms();
        if rooms.is_empty() {
            return;
        }
        let mut map = self.rooms_mut();
        for room in rooms {
            self.leave_locked(&mut map, socket, &room);
        }
    }

    pub(crate) fn join(&self, socket: &SocketRef, room: &str) -> Option<RoomReceipt> {
        let mut map = self.rooms_mut();
        let members = map.entry(room.into()).or_default();
        let first = members.is_empty();
        members.insert(socket.id(), socket.clone());
        // Under the lock: announcements of one room stay in order.
        first
            .then(|| self.fabric.room_changed(&self.name, room, true))
            .flatten()
    }

    pub(crate) fn leave(&self, socket: &Socket, room: &str) {
        let mut map = self.rooms_mut();
        self.leave_locked(&mut map, socket, room);
    }

    fn leave_locked(&self, map: &mut HashMap<Box<str>, Members>, socket: &Socket, room: &str) {
        if let Some(members) = map.get_mut(room) {
            // Another copy with this id is not this socket's to remove.
            if !is_this(members.get(&socket.id()), socket) {
                return;
            }
            members.remove(&socket.id());
            if members.is_empty() {
                map.remove(room);
                // Nobody waits for a departure: a stale entry elsewhere
                // only costs a message this node drops.
                let _ = self.fabric.room_changed(&self.name, room, false);
            }
        }
    }

    /// Emits an event to the target on every node; returns how many
    /// sockets of this node it was queued on (with recovery on: how many
    /// it targets here; every node delivers it once it is in the log). The
    /// packet is encoded once.
    pub fn emit(&self, target: &Target, event: &str, args: &Payload) -> usize {
        if let Some(recovery) = &self.recovery {
            let mut reached = 0;
            self.for_each_target(target, |_| reached += 1);
            recovery.append(LogEntry::emit(&self.name, target, event, args));
            return reached;
        }
        let frames = self.parser.encode_event(&self.name, event, args, None);
        self.fabric.publish(&self.name, target, &frames);
        self.send_frames(target, &frames)
    }

    /// Queues already-encoded frames on every socket of the target on this
    /// node (only).
    pub fn send_frames(&self, target: &Target, frames: &[Frame]) -> usize {
        let mut sent = 0;
        self.for_each_target(target, |socket| {
            if socket.send_frames(frames.iter().cloned()) {
                sent += 1;
            }
        });
        let m = super::metrics::metrics();
        m.messages_out.add(sent as u64, &[]);
        if sent > 0 {
            let bytes: usize = frames.iter().map(Frame::wire_len).sum();
            m.bytes_out((bytes * sent) as u64);
        }
        sent
    }

    /// Queues a recoverable event on every socket of the target here: the
    /// frames with its offset for sockets whose clients keep offsets, the
    /// `plain` ones (made once, if needed) for the others (Socket.IO v2
    /// clients, which have no connection state recovery).
    pub(crate) fn send_recoverable(
        &self,
        target: &Target,
        with_offset: &[Frame],
        plain: impl FnOnce() -> Vec<Frame>,
    ) -> usize {
        let mut plain = Some(plain);
        let mut plain_frames: Vec<Frame> = Vec::new();
        let mut sent = 0;
        let mut bytes = 0;
        self.for_each_target(target, |socket| {
            let frames: &[Frame] = if socket.takes_offsets() {
                with_offset
            } else {
                if let Some(make) = plain.take() {
                    plain_frames = make();
                }
                &plain_frames
            };
            if socket.send_frames(frames.iter().cloned()) {
                sent += 1;
                bytes += frames.iter().map(Frame::wire_len).sum::<usize>();
            }
        });
        let m = super::metrics::metrics();
        m.messages_out.add(sent as u64, &[]);
        if sent > 0 {
            m.bytes_out(bytes as u64);
        }
        sent
    }

    /// Calls `f` once for every socket the target reaches.
    pub fn for_each_target(&self, target: &Target, mut f: impl FnMut(&SocketRef)) {
        let excluded = self.excluded(target);
        let skip = |id: &Sid| excluded.contains(id) || target.except_socket.as_ref() == Some(id);
        if target.rooms.is_empty() {
            for (id, socket) in self.sockets().iter() {
                if !skip(id) {
                    f(socket);
                }
            }
            return;
        }
        let rooms = self.rooms();
        let single = target.rooms.len() == 1;
        let mut seen: HashSet<Sid> = HashSet::new();
        for room in &target.rooms {
            if let Some(members) = rooms.get(room.as_str()) {
                for (id, socket) in members {
                    if !skip(id) && (single || seen.insert(*id)) {
                        f(socket);
                    }
                }
            } else if let Some(id) = Sid::parse(room) {
                // Every socket is implicitly in a room named by its id.
                if let Some(socket) = self.sockets().get(&id) {
                    if !skip(&id) && (single || seen.insert(id)) {
                        f(socket);
                    }
                }
            }
        }
    }

    fn excluded(&self, target: &Target) -> HashSet<Sid> {
        let mut excluded = HashSet::new();
        if target.except_rooms.is_empty() {
            return excluded;
        }
        let rooms = self.rooms();
        for room in &target.except_rooms {
            if let Some(members) = rooms.get(room.as_str()) {
                excluded.extend(members.keys().copied());
            } else if let Some(id) = Sid::parse(room) {
                excluded.insert(id);
            }
        }
        excluded
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::client::ClientState;
    use crate::store::Offset;
    use ringway_engineio::{Handshake, Session, SessionRef, TransportKind};

    /// A WebSocket session of this process, for sockets in unit tests.
    pub(crate) fn test_session() -> SessionRef<ClientState> {
        Arc::new(Session::new(
            Sid::random(),
            TransportKind::WebSocket,
            1 << 20,
            Handshake {
                remote_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                query: String::new(),
                raw_headers: "".into(),
                issued_ms: 0,
            },
            ClientState::default(),
        ))
    }

    fn socket(ns: &Arc<Namespace>) -> SocketRef {
        let socket = Socket::new(ns.clone(), test_session(), "{}".into(), None, None);
        ns.insert(socket.clone());
        socket
    }

    fn reached(ns: &Namespace, target: &Target) -> Vec<Sid> {
        let mut ids = Vec::new();
        ns.for_each_target(target, |s| ids.push(s.id()));
        ids.sort();
        ids
    }

    fn sorted(mut ids: Vec<Sid>) -> Vec<Sid> {
        ids.sort();
        ids
    }

    /// `/` on one node, default limits and parser.
    fn local_namespace() -> Arc<Namespace> {
        Namespace::new(
            "/",
            Arc::new(crate::LocalFabric),
            None,
            Default::default(),
            Parser::Default,
        )
    }

    #[test]
    fn targets_rooms_unions_and_exclusions() {
        let ns = local_namespace();
        let [a, b, c, d] = [socket(&ns), socket(&ns), socket(&ns), socket(&ns)];
        a.join("r1").expect("join");
        b.join("r1").expect("join");
        b.join("r2").expect("join");
        c.join("r2").expect("join");
        c.join("vip").expect("join");
        let everyone = sorted(vec![a.id(), b.id(), c.id(), d.id()]);
        assert_eq!(reached(&ns, &Target::all()), everyone);
        assert_eq!(
            reached(&ns, &Target::room("r1")),
            sorted(vec![a.id(), b.id()])
        );
        // Several rooms: each member once.
        let both = Target {
            rooms: vec!["r1".into(), "r2".into()],
            ..Target::default()
        };
        assert_eq!(reached(&ns, &both), sorted(vec![a.id(), b.id(), c.id()]));
        // Except rooms and except socket.
        let except = Target {
            rooms: vec!["r1".into(), "r2".into()],
            except_rooms: vec!["vip".into()],
            except_socket: Some(a.id()),
        };
        assert_eq!(reached(&ns, &except), vec![b.id()]);
        // Everyone but a room.
        let all_but = Target {
            except_rooms: vec!["r2".into()],
            ..Target::default()
        };
        assert_eq!(reached(&ns, &all_but), sorted(vec![a.id(), d.id()]));
        // A socket id is a room of its own.
        assert_eq!(
            reached(&ns, &Target::room(d.id().to_string())),
            vec![d.id()]
        );
        // Unknown rooms reach nobody.
        assert!(reached(&ns, &Target::room("nope")).is_empty());
    }

    /// Two copies of one socket on a node: the copy of a session its
    /// client left (still open here: its evict missed, or its recovery
    /// was still being installed when the next one looked) and the copy
    /// its client recovered or moved here since. The old copy ending, when
    /// its session times out, leaves the live one in its namespace and
    /// rooms: before, it took it out by id and its client silently received
    /// nothing more.
    #[test]
    fn an_old_copy_of_a_socket_ending_leaves_the_live_copy_in_its_rooms() {
        let ns = local_namespace();
        let id = Sid::random();
        let copy = |ns: &Arc<Namespace>| {
            let s = Socket::restored(
                ns.clone(),
                test_session(),
                id,
                "{}".into(),
                None,
                None,
                0,
                None,
            );
            s.set_rooms(vec![("r".into(), Offset::ZERO)]);
            ns.insert(s.clone());
            s.attach_rooms();
            s
        };
        let old = copy(&ns);
        let live = copy(&ns);
        assert!(old.detach());
        assert!(ns.socket(&id).is_some_and(|s| Arc::ptr_eq(&s, &live)));
        assert_eq!(reached(&ns, &Target::room("r")), vec![id]);
        assert_eq!(
            ns.sockets_of(&Target::room("r"))[0].session().sid(),
            live.session().sid()
        );
        // The live copy itself still leaves and ends as before.
        live.leave("r");
        assert_eq!(ns.room_size("r"), 0);
        assert!(live.detach());
        assert!(ns.socket(&id).is_none());
    }

    #[test]
    fn leaving_and_disconnecting_update_the_rooms() {
        let ns = local_namespace();
        let a = socket(&ns);
        let b = socket(&ns);
        a.join("r").expect("join");
        b.join("r").expect("join");
        a.join("r").expect("join"); // joining twice is one membership
        assert_eq!(ns.room_size("r"), 2);
        a.leave("r");
        assert_eq!(reached(&ns, &Target::room("r")), vec![b.id()]);
        b.detach();
        assert_eq!(ns.room_size("r"), 0);
        assert_eq!(ns.room_count(), 0);
        assert_eq!(ns.socket_count(), 1);
        // A room emit is queued once per receiver, on the shared bytes.
        let n = ns.emit(&Target::all(), "hi", &crate::Payload::empty());
        assert_eq!(n, 1);
    }

    #[test]
    fn joins_keep_to_the_limits() {
        let ns = Namespace::new(
            "/",
            Arc::new(crate::LocalFabric),
            None,
            SocketLimits {
                max_rooms_per_socket: 2,
                max_room_name: 8,
                ..SocketLimits::default()
            },
            Parser::Default,
        );
        let a = socket(&ns);
        a.join("one").expect("join");
        a.join("two").expect("join");
        // Already in it: not a new room.
        a.join("two").expect("join again");
        assert_eq!(
            a.join("three").err(),
            Some(crate::JoinError::TooManyRooms { max: 2 })
        );
        a.leave("one");
        assert_eq!(
            a.join("123456789").err(),
            Some(crate::JoinError::NameTooLong { max: 8 })
        );
        assert_eq!(a.join("\u{1}user:x").err(), Some(crate::JoinError::Hidden));
        a.join("three").expect("room for it again");
        let mut rooms = a.rooms();
        rooms.sort();
        assert_eq!(rooms, ["three", "two"]);
    }
}
