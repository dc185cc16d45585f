//! The room index: for each namespace and room, the other nodes that have
//! members in it, learnt from their announcements on the ordered delivery
//! streams. A room emit goes only to those nodes.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, RwLock};

use ringway_proto::cluster::v1::{RoomChange, RoomSnapshot};

type Rooms = HashMap<String, HashMap<String, HashSet<String>>>;

/// The index, both ways: by room (what emits read) and by node (so that
/// forgetting a node touches its rooms only, not the whole index under
/// the write lock that emits wait on).
#[derive(Default)]
struct Index {
    rooms: Rooms,
    by_node: HashMap<String, HashSet<(String, String)>>,
}

/// What other nodes have.
#[derive(Default)]
pub struct RoomIndex {
    rooms: RwLock<Index>,
}

impl Index {
    fn apply(&mut self, node: &str, change: &RoomChange) {
        let key = (change.namespace.clone(), change.room.clone());
        if change.joined {
            self.rooms
                .entry(change.namespace.clone())
                .or_default()
                .entry(change.room.clone())
                .or_default()
                .insert(node.to_owned());
            self.by_node.entry(node.to_owned()).or_default().insert(key);
            return;
        }
        self.remove(node, &change.namespace, &change.room);
        if let Some(mine) = self.by_node.get_mut(node) {
            mine.remove(&key);
            if mine.is_empty() {
                self.by_node.remove(node);
            }
        }
    }

    /// Takes `node` out of one room (not out of `by_node`).
    fn remove(&mut self, node: &str, namespace: &str, room: &str) {
        if let Some(ns) = self.rooms.get_mut(namespace) {
            if let Some(nodes) = ns.get_mut(room) {
                nodes.remove(node);
                if nodes.is_empty() {
                    ns.remove(room);
                }
            }
            if ns.is_empty() {
                self.rooms.remove(namespace);
            }
        }
    }

    fn forget(&mut self, node: &str) {
        for (namespace, room) in self.by_node.remove(node).unwrap_or_default() {
            self.remove(node, &namespace, &room);
        }
    }
}

impl RoomIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.rooms.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.rooms.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn apply(&self, node: &str, change: &RoomChange) {
        self.write().apply(node, change);
    }

    /// Replaces everything known of `node` by its snapshot.
    pub fn replace(&self, node: &str, snapshot: &RoomSnapshot) {
        let mut index = self.write();
        index.forget(node);
        for change in &snapshot.rooms {
            index.apply(node, change);
        }
    }

    /// A node left the cluster: in time proportional to its rooms.
    pub fn forget(&self, node: &str) {
        self.write().forget(node);
    }

    /// Calls `f` with every room of `namespace` that other nodes
    /// announced, under the index's read lock: `f` must not call back.
    pub fn for_each_room(&self, namespace: &str, mut f: impl FnMut(&str)) {
        let index = self.read();
        if let Some(rooms) = index.rooms.get(namespace) {
            for name in rooms.keys() {
                f(name);
            }
        }
    }

    /// How many rooms of each namespace each other node has members in,
    /// as announced: (node, namespace, rooms).
    pub fn counts(&self) -> Vec<(String, String, u64)> {
        let index = self.read();
        let mut counts: HashMap<(&str, &str), u64> = HashMap::new();
        for (node, rooms) in &index.by_node {
            for (namespace, _) in rooms {
                *counts
                    .entry((node.as_str(), namespace.as_str()))
                    .or_default() += 1;
            }
        }
        counts
            .into_iter()
            .map(|((node, ns), n)| (node.to_owned(), ns.to_owned(), n))
            .collect()
    }

    /// The nodes with members in any of `rooms` of `namespace`.
    pub fn nodes_for(&self, namespace: &str, rooms: &[String]) -> Vec<String> {
        let index = self.read();
        let Some(ns) = index.rooms.get(namespace) else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for room in rooms {
            if let Some(nodes) = ns.get(room) {
                for node in nodes {
                    if !out.contains(node) {
                        out.push(node.clone());
                    }
                }
            }
        }
        out
    }
}

/// The rooms this node has members in, for the snapshot that opens each
/// delivery stream.
#[derive(Default)]
pub struct LocalRooms {
    rooms: Mutex<HashSet<(String, String)>>,
}

impl LocalRooms {
    fn lock(&self) -> MutexGuard<'_, HashSet<(String, String)>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, namespace: &str, room: &str, present: bool) {
        let key = (namespace.to_owned(), room.to_owned());
        let mut rooms = self.lock();
        if present {
            rooms.insert(key);
        } else {
            rooms.remove(&key);
        }
    }

    pub fn snapshot(&self) -> RoomSnapshot {
        RoomSnapshot {
            rooms: self
                .lock()
                .iter()
                .map(|(namespace, room)| RoomChange {
                    namespace: namespace.clone(),
                    room: room.clone(),
                    joined: true,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(room: &str, joined: bool) -> RoomChange {
        RoomChange {
            namespace: "/".into(),
            room: room.into(),
            joined,
        }
    }

    #[test]
    fn index_follows_announcements_snapshots_and_departures() {
        let index = RoomIndex::default();
        index.apply("b", &change("r", true));
        index.apply("c", &change("r", true));
        index.apply("c", &change("s", true));
        let mut nodes = index.nodes_for("/", &["r".into(), "s".into()]);
        nodes.sort();
        assert_eq!(nodes, vec!["b", "c"]);
        index.apply("b", &change("r", false));
        assert_eq!(index.nodes_for("/", &["r".into()]), vec!["c"]);
        // A snapshot replaces what was known of the node.
        index.replace(
            "c",
            &RoomSnapshot {
                rooms: vec![change("t", true)],
            },
        );
        assert!(index.nodes_for("/", &["r".into(), "s".into()]).is_empty());
        assert_eq!(index.nodes_for("/", &["t".into()]), vec!["c"]);
        index.forget("c");
        assert!(index.nodes_for("/", &["t".into()]).is_empty());
        assert!(index.nodes_for("/other", &["t".into()]).is_empty());
    }

    /// Forgetting a node leaves the others' rooms whole, and the two
    /// directions of the index agree after any sequence.
    #[test]
    fn forgetting_a_node_touches_its_rooms_only() {
        let index = RoomIndex::default();
        for i in 0..100 {
            index.apply("a", &change(&format!("r{i}"), true));
            if i % 2 == 0 {
                index.apply("b", &change(&format!("r{i}"), true));
            }
        }
        index.apply("a", &change("r0", false));
        index.apply("a", &change("r0", false));
        index.forget("a");
        assert!(index.nodes_for("/", &["r1".into()]).is_empty());
        assert_eq!(index.nodes_for("/", &["r0".into()]), vec!["b"]);
        assert_eq!(index.counts(), vec![("b".into(), "/".into(), 50)]);
        let inner = index.read();
        assert!(!inner.by_node.contains_key("a"));
        let rooms: usize = inner.rooms.values().map(HashMap::len).sum();
        assert_eq!(rooms, 50);
        drop(inner);
        index.forget("b");
        assert!(index.read().rooms.is_empty());
        assert!(index.read().by_node.is_empty());
    }
}
