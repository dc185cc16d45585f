//! The consistent hash ring over the active members, with virtual nodes.
//!
//! Every gateway builds the same ring from the same member list, so any
//! node finds the owner of a new session's sid without I/O. A member is
//! placed on a `hashring::HashRing` as [`DEFAULT_VNODES`] virtual nodes,
//! each hashed as `(node id bytes, replica u32)` with the crate's default
//! hasher; a key belongs to the first virtual node at or after the hash
//! of its bytes (wrapping around).
//!
//! [`Ring::shares`] measures, exactly, the part of the 64-bit hash space
//! each member owns (the coordinator's dashboard shows it): the share of
//! all sids that map to that member.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use hashring::{DefaultHashBuilder, HashRing};

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

/// The ring over a set of members.
pub struct Ring {
    ring: HashRing<VNode>,
    members: Vec<Arc<str>>,
    vnodes: u32,
}

impl Ring {
    /// The ring over `members` (sorted and deduplicated, so every node
    /// builds the same ring from the same set), `vnodes` points each (at
    /// least 1).
    pub fn new<'a>(members: impl IntoIterator<Item = &'a str>, vnodes: u32) -> Ring {
        let mut members: Vec<Arc<str>> = members.into_iter().map(Arc::from).collect();
        members.sort();
        members.dedup();
        let vnodes = vnodes.max(1);
        let mut ring = HashRing::new();
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
        Ring {
            ring,
            members,
            vnodes,
        }
    }

    /// The member that owns `key`; `None` when the ring is empty.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.ring.get(&key.as_bytes()).map(|v| v.node.as_ref())
    }

    /// The members, sorted.
    pub fn members(&self) -> &[Arc<str>] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member with the fraction of the hash space it owns (they sum
    /// to 1 when the ring is not empty), sorted by node id.
    pub fn shares(&self) -> Vec<(String, f64)> {
        const SPACE: f64 = 18_446_744_073_709_551_616.0; // 2^64
                                                         // The points `HashRing` keeps, placed with the same hasher (it
                                                         // does not expose them): (hash, member index), sorted by hash,
                                                         // stable as `HashRing` keeps equal hashes.
        let mut points: Vec<(u64, usize)> =
            Vec::with_capacity(self.members.len() * self.vnodes as usize);
        for (index, node) in self.members.iter().enumerate() {
            for replica in 0..self.vnodes {
                let vnode = VNode {
                    node: node.clone(),
                    replica,
                };
                points.push((DefaultHashBuilder.hash_one(&vnode), index));
            }
        }
        points.sort_by_key(|&(hash, _)| hash);
        let Some(&(last, _)) = points.last() else {
            return Vec::new();
        };
        // A point owns the hashes after the previous point, up to itself;
        // the first one also owns those after the last point (wrapping).
        let mut owned = vec![0u128; self.members.len()];
        let mut previous: Option<u64> = None;
        for &(hash, index) in &points {
            owned[index] += match previous {
                Some(p) => u128::from(hash - p),
                None => (1u128 << 64) - u128::from(last) + u128::from(hash),
            };
            previous = Some(hash);
        }
        self.members
            .iter()
            .zip(owned)
            .map(|(node, n)| (node.to_string(), n as f64 / SPACE))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Deterministic sid-like keys: 20 URL-safe characters from splitmix64.
    fn keys(n: usize) -> impl Iterator<Item = String> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut state: u64 = 0x5eed_1234_abcd_0001;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n).map(move |_| {
            (0..20)
                .map(|_| ALPHABET[(next() % 64) as usize] as char)
                .collect()
        })
    }

    fn counts(ring: &Ring, samples: usize) -> HashMap<&str, usize> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for key in keys(samples) {
            *counts.entry(ring.owner(&key).unwrap()).or_default() += 1;
        }
        counts
    }

    /// The most loaded member owns at most 1.25x the mean of 200,000 keys.
    #[test]
    fn balance_with_3_and_10_members() {
        for nodes in [3, 10] {
            let names: Vec<String> = (0..nodes).map(|i| format!("gateway-{i}")).collect();
            let ring = Ring::new(names.iter().map(String::as_str), DEFAULT_VNODES);
            let samples = 200_000;
            let counts = counts(&ring, samples);
            assert_eq!(counts.len(), nodes, "every member owns something");
            let mean = samples as f64 / nodes as f64;
            let worst = *counts.values().max().unwrap() as f64 / mean;
            assert!(worst <= 1.25, "{nodes} members: max/mean {worst:.3}");
        }
    }

    #[test]
    fn every_node_builds_the_same_ring_and_changes_move_little() {
        let a = Ring::new(["n1", "n2", "n3"], DEFAULT_VNODES);
        let b = Ring::new(["n3", "n1", "n2", "n1"], DEFAULT_VNODES);
        let four = Ring::new(["n1", "n2", "n3", "n4"], DEFAULT_VNODES);
        let mut moved = 0;
        for key in keys(10_000) {
            assert_eq!(a.owner(&key), b.owner(&key));
            let before = a.owner(&key).unwrap();
            let after = four.owner(&key).unwrap();
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

    /// Each member's fraction of 100,000 keys looked up is close to its
    /// computed share: the shares describe the lookups.
    #[test]
    fn shares_match_the_lookups() {
        for members in [
            &["n1"][..],
            &["n1", "n2", "n3"],
            &[
                "gateway-0",
                "gateway-1",
                "gateway-2",
                "gateway-3",
                "gateway-4",
            ],
        ] {
            let ring = Ring::new(members.iter().copied(), DEFAULT_VNODES);
            let samples = 100_000;
            let counts = counts(&ring, samples);
            let shares = ring.shares();
            assert_eq!(shares.len(), members.len());
            let sum: f64 = shares.iter().map(|(_, s)| s).sum();
            assert!((sum - 1.0).abs() < 1e-12, "shares sum to {sum}");
            for (node, share) in &shares {
                let sampled =
                    counts.get(node.as_str()).copied().unwrap_or(0) as f64 / samples as f64;
                // 100,000 samples: the standard error is below 0.0016.
                assert!(
                    (sampled - share).abs() < 0.008,
                    "{node}: computed {share:.4}, sampled {sampled:.4}"
                );
            }
        }
    }

    /// The numbers for a fixed member list: they change only if the
    /// hashing changes, which would move every session of a cluster
    /// whose nodes run different versions.
    #[test]
    fn shares_of_a_fixed_member_list() {
        let shares = Ring::new(["n3", "n1", "n2", "n1"], DEFAULT_VNODES).shares();
        let rounded: Vec<(String, String)> = shares
            .iter()
            .map(|(n, s)| (n.clone(), format!("{s:.4}")))
            .collect();
        assert_eq!(
            rounded,
            [
                ("n1".to_string(), "0.3295".to_string()),
                ("n2".to_string(), "0.3137".to_string()),
                ("n3".to_string(), "0.3568".to_string()),
            ]
        );
        assert_eq!(
            Ring::new(["solo"], DEFAULT_VNODES).shares(),
            [("solo".to_string(), 1.0)]
        );
        assert_eq!(Ring::new(["solo"], 1).shares(), [("solo".to_string(), 1.0)]);
        assert!(Ring::new([], DEFAULT_VNODES).shares().is_empty());
    }
}
