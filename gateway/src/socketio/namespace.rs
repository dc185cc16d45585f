//! A namespace: its connected sockets and its rooms. Room emits are
//! encoded once and the same bytes queued on every receiving session.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::engineio::{Frame, Sid};

use super::packet::{encode_event, Payload};
use super::socket::{Socket, SocketRef};

type Members = HashMap<Sid, SocketRef>;

pub struct Namespace {
    name: Box<str>,
    sockets: RwLock<Members>,
    rooms: RwLock<HashMap<Box<str>, Members>>,
}

/// Who a broadcast reaches inside one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// Rooms to reach; empty means every socket of the namespace. A room
    /// named like a socket id reaches that socket, as in the reference.
    pub rooms: Vec<String>,
    /// Sockets in any of these rooms are skipped.
    pub except_rooms: Vec<String>,
    /// This socket is skipped (the sender, for `socket.broadcast`).
    pub except_socket: Option<Sid>,
}

impl Target {
    pub fn room(room: impl Into<String>) -> Target {
        Target {
            rooms: vec![room.into()],
            ..Target::default()
        }
    }

    pub fn all() -> Target {
        Target::default()
    }
}

impl Namespace {
    pub fn new(name: &str) -> Arc<Namespace> {
        Arc::new(Namespace {
            name: name.into(),
            sockets: RwLock::new(HashMap::new()),
            rooms: RwLock::new(HashMap::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
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

    pub fn room_names(&self) -> Vec<String> {
        self.rooms().keys().map(|r| r.to_string()).collect()
    }

    pub fn room_size(&self, room: &str) -> usize {
        self.rooms().get(room).map_or(0, HashMap::len)
    }

    pub(crate) fn insert(&self, socket: SocketRef) {
        self.sockets_mut().insert(socket.id(), socket);
    }

    /// Removes a socket from the namespace and from every room it is in.
    pub(crate) fn remove(&self, socket: &Socket) {
        self.sockets_mut().remove(&socket.id());
        let rooms = socket.take_rooms();
        if rooms.is_empty() {
            return;
        }
        let mut map = self.rooms_mut();
        for room in rooms {
            if let Some(members) = map.get_mut(room.as_ref()) {
                members.remove(&socket.id());
                if members.is_empty() {
                    map.remove(room.as_ref());
                }
            }
        }
    }

    pub(crate) fn join(&self, socket: &SocketRef, room: &str) {
        self.rooms_mut()
            .entry(room.into())
            .or_default()
            .insert(socket.id(), socket.clone());
    }

    pub(crate) fn leave(&self, socket: &Socket, room: &str) {
        let mut map = self.rooms_mut();
        if let Some(members) = map.get_mut(room) {
            members.remove(&socket.id());
            if members.is_empty() {
                map.remove(room);
            }
        }
    }

    /// Emits an event to the target; returns how many sockets it was
    /// queued on. The packet is encoded once.
    pub fn emit(&self, target: &Target, event: &str, args: &Payload) -> usize {
        let frames = encode_event(&self.name, event, args, None);
        self.send_frames(target, &frames)
    }

    /// Queues already-encoded frames on every socket of the target.
    pub fn send_frames(&self, target: &Target, frames: &[Frame]) -> usize {
        let mut sent = 0;
        self.for_each_target(target, |socket| {
            if socket.send_frames(frames.iter().cloned()) {
                sent += 1;
            }
        });
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
