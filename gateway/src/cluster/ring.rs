//! The consistent hash ring over the active members, with virtual nodes:
//! every gateway builds the same ring from the same view, so any node
//! finds the owner of a new session's sid without I/O.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashring::HashRing;

/// Virtual nodes per member: with 256 the most loaded of 3 or 10 members
/// owns well under 1.25x the mean (see the tests).
pub const DEFAULT_VNODES: u32 = 256;

#[derive(Clone, PartialEq, Eq)]
struct VNode {
    node: Arc<str>,
    replica: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.node.as_bytes().hash(state);
        self.replica.hash(state);
    }
}

pub struct Ring {
    ring: HashRing<VNode>,
    members: Vec<Arc<str>>,
}

impl Ring {
    pub fn new<'a>(members: impl IntoIterator<Item = &'a str>, vnodes: u32) -> Ring {
        let mut members: Vec<Arc<str>> = members.into_iter().map(Arc::from).collect();
        members.sort();
        members.dedup();
        let mut ring = HashRing::new();
        let vnodes = vnodes.max(1);
        ring.batch_add(
            members
                .iter()
                .flat_map(|node| {
                    (0..vnodes).map(move |replica| VNode {
                        node: node.clone(),
                        replica,
                    })
                })
                .collect(),
        );
        Ring { ring, members }
    }

    /// The member that owns `key`; `None` when the ring is empty.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.ring.get(&key.as_bytes()).map(|v| v.node.as_ref())
    }

    pub fn members(&self) -> &[Arc<str>] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::engineio::Sid;

    /// Share of 200,000 random sids per member: the most loaded member
    /// owns at most 1.25x the mean.
    fn max_over_mean(nodes: usize) -> f64 {
        let names: Vec<String> = (0..nodes).map(|i| format!("gateway-{i}")).collect();
        let ring = Ring::new(names.iter().map(String::as_str), DEFAULT_VNODES);
        let samples = 200_000;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for _ in 0..samples {
            let sid = Sid::random();
            *counts.entry(ring.owner(sid.as_str()).unwrap()).or_default() += 1;
        }
        assert_eq!(counts.len(), nodes, "every member owns something");
        let mean = samples as f64 / nodes as f64;
        *counts.values().max().unwrap() as f64 / mean
    }

    #[test]
    fn balance_with_3_and_10_members() {
        let three = max_over_mean(3);
        let ten = max_over_mean(10);
        assert!(three <= 1.25, "3 members: max/mean {three:.3}");
        assert!(ten <= 1.25, "10 members: max/mean {ten:.3}");
    }

    #[test]
    fn every_node_builds_the_same_ring_and_changes_move_little() {
        let a = Ring::new(["n1", "n2", "n3"], DEFAULT_VNODES);
        let b = Ring::new(["n3", "n1", "n2", "n1"], DEFAULT_VNODES);
        let four = Ring::new(["n1", "n2", "n3", "n4"], DEFAULT_VNODES);
        let mut moved = 0;
        for _ in 0..10_000 {
            let sid = Sid::random();
            assert_eq!(a.owner(sid.as_str()), b.owner(sid.as_str()));
            let before = a.owner(sid.as_str()).unwrap();
            let after = four.owner(sid.as_str()).unwrap();
            if before != after {
                // Only keys that go to the new member move.
                assert_eq!(after, "n4");
                moved += 1;
            }
        }
        // About a quarter of the keys move to the new member.
        assert!((1500..3500).contains(&moved), "moved {moved}");
        assert!(Ring::new([], DEFAULT_VNODES).owner("x").is_none());
    }
}
