//! The room index: for each namespace and room, the other nodes that have
//! members in it, learnt from their announcements on the ordered delivery
//! streams. A room emit goes only to those nodes.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, RwLock};

use ringway_proto::cluster::v1::{RoomChange, RoomSnapshot};

type Rooms = HashMap<String, HashMap<String, HashSet<String>>>;

/// What other nodes have.
#[derive(Default)]
pub struct RoomIndex {
    rooms: RwLock<Rooms>,
}

impl RoomIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rooms> {
        self.rooms.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn apply(&self, node: &str, change: &RoomChange) {
        let mut rooms = self.write();
        Self::apply_locked(&mut rooms, node, change);
    }

    fn apply_locked(rooms: &mut Rooms, node: &str, change: &RoomChange) {
        if change.joined {
            rooms
                .entry(change.namespace.clone())
                .or_default()
                .entry(change.room.clone())
                .or_default()
                .insert(node.to_owned());
            return;
        }
        if let Some(ns) = rooms.get_mut(&change.namespace) {
            if let Some(nodes) = ns.get_mut(&change.room) {
                nodes.remove(node);
                if nodes.is_empty() {
                    ns.remove(&change.room);
                }
            }
            if ns.is_empty() {
                rooms.remove(&change.namespace);
            }
        }
    }

    /// Replaces everything known of `node` by its snapshot.
    pub fn replace(&self, node: &str, snapshot: &RoomSnapshot) {
        let mut rooms = self.write();
        Self::forget_locked(&mut rooms, node);
        for change in &snapshot.rooms {
            Self::apply_locked(&mut rooms, node, change);
        }
    }

    /// A node left the cluster.
    pub fn forget(&self, node: &str) {
        Self::forget_locked(&mut self.write(), node);
    }

    fn forget_locked(rooms: &mut Rooms, node: &str) {
        rooms.retain(|_, ns| {
            ns.retain(|_, nodes| {
                nodes.remove(node);
                !nodes.is_empty()
            });
            !ns.is_empty()
        });
    }

    /// Rooms of `namespace` with members on other nodes.
    /// Calls `f` with every room of `namespace` that other nodes
    /// announced, under the index's read lock: `f` must not call back.
    pub fn for_each_room(&self, namespace: &str, mut f: impl FnMut(&str)) {
        let index = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        if let Some(rooms) = index.get(namespace) {
            for name in rooms.keys() {
                f(name);
            }
        }
    }

    /// How many rooms of each namespace each other node has members in,
    /// as announced: (node, namespace, rooms).
    pub fn counts(&self) -> Vec<(String, String, u64)> {
        let index = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let mut counts: HashMap<(&str, &str), u64> = HashMap::new();
        for (namespace, rooms) in index.iter() {
            for nodes in rooms.values() {
                for node in nodes {
                    *counts
                        .entry((node.as_str(), namespace.as_str()))
                        .or_default() += 1;
                }
            }
        }
        counts
            .into_iter()
            .map(|((node, ns), n)| (node.to_owned(), ns.to_owned(), n))
            .collect()
    }

    /// The nodes with members in any of `rooms` of `namespace`.
    pub fn nodes_for(&self, namespace: &str, rooms: &[String]) -> Vec<String> {
        let index = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let Some(ns) = index.get(namespace) else {
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
}
