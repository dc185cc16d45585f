//! Each member's share of the gateways' consistent hash ring, for the
//! dashboard.
//!
//! The gateways (`gateway/src/cluster/ring.rs`) put every active member on
//! a `hashring::HashRing` as [`VNODES`] virtual nodes, each hashed as
//! `(node id bytes, replica u32)` with the crate's default hasher, and give
//! a sid to the first virtual node at or after the hash of its bytes
//! (wrapping around). This module places the same points with the same
//! hasher and measures, exactly, the part of the 64-bit hash space each
//! member owns: the share of all sids that map to it (a gateway opening a
//! session draws 1 / share sids on average until one maps to itself). The
//! coordinator does not depend on the gateway crate; the tests check that
//! both agree key by key.

use std::hash::{BuildHasher, Hash, Hasher};

use hashring::DefaultHashBuilder;

/// Virtual nodes per member, as the gateways use
/// (`ringway_gateway::cluster::ring::DEFAULT_VNODES`).
pub const VNODES: u32 = 256;

/// A virtual node, hashed exactly as the gateways' `VNode`.
struct VNode<'a> {
    node: &'a str,
    replica: u32,
}

impl Hash for VNode<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.node.as_bytes().hash(state);
        self.replica.hash(state);
    }
}

/// The ring's points: (hash, member index), sorted by hash.
pub struct RingShares {
    members: Vec<String>,
    points: Vec<(u64, usize)>,
}

impl RingShares {
    /// The ring over `members` (sorted and deduplicated, as the gateways
    /// do), `vnodes` points each (at least 1).
    pub fn new<'a>(members: impl IntoIterator<Item = &'a str>, vnodes: u32) -> RingShares {
        let mut members: Vec<String> = members.into_iter().map(str::to_owned).collect();
        members.sort();
        members.dedup();
        let vnodes = vnodes.max(1);
        let mut points = Vec::with_capacity(members.len() * vnodes as usize);
        for (index, node) in members.iter().enumerate() {
            for replica in 0..vnodes {
                let hash = DefaultHashBuilder.hash_one(VNode { node, replica });
                points.push((hash, index));
            }
        }
        // Stable, by hash only: the order `hashring` keeps for equal hashes.
        points.sort_by_key(|&(hash, _)| hash);
        RingShares { members, points }
    }

    /// The member that owns `key` (a sid), as a gateway would find it.
    pub fn owner(&self, key: &str) -> Option<&str> {
        if self.points.is_empty() {
            return None;
        }
        let hash = DefaultHashBuilder.hash_one(key.as_bytes());
        let at = self.points.partition_point(|&(point, _)| point < hash);
        let (_, index) = self.points[at % self.points.len()];
        Some(&self.members[index])
    }

    /// Every member with the fraction of the hash space it owns (they sum
    /// to 1 when the ring is not empty), sorted by node id.
    pub fn shares(&self) -> Vec<(String, f64)> {
        const SPACE: f64 = 18_446_744_073_709_551_616.0; // 2^64
        let mut owned = vec![0u128; self.members.len()];
        let Some(&(last, _)) = self.points.last() else {
            return Vec::new();
        };
        // A point owns the hashes after the previous point, up to itself;
        // the first one also owns those after the last point (wrapping).
        let mut previous: Option<u64> = None;
        for &(hash, index) in &self.points {
            owned[index] += match previous {
                Some(p) => u128::from(hash - p),
                None => (1u128 << 64) - u128::from(last) + u128::from(hash),
            };
            previous = Some(hash);
        }
        self.members
            .iter()
            .zip(owned)
            .map(|(node, n)| (node.clone(), n as f64 / SPACE))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use hashring::HashRing;

    use super::*;

    /// The gateways' ring, as written in `gateway/src/cluster/ring.rs`.
    #[derive(Clone, PartialEq, Eq)]
    struct GatewayVNode {
        node: Arc<str>,
        replica: u32,
    }

    impl Hash for GatewayVNode {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.node.as_bytes().hash(state);
            self.replica.hash(state);
        }
    }

    fn gateway_ring(members: &[&str], vnodes: u32) -> HashRing<GatewayVNode> {
        let mut members: Vec<Arc<str>> = members.iter().map(|m| Arc::from(*m)).collect();
        members.sort();
        members.dedup();
        let mut ring = HashRing::new();
        ring.batch_add(
            members
                .iter()
                .flat_map(|node| {
                    (0..vnodes).map(move |replica| GatewayVNode {
                        node: node.clone(),
                        replica,
                    })
                })
                .collect(),
        );
        ring
    }

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

    fn share_of(shares: &[(String, f64)], node: &str) -> f64 {
        shares
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, s)| *s)
            .expect("member has a share")
    }

    /// Same owner as the gateways' ring for 100,000 keys, and each
    /// member's fraction of those keys close to its computed share.
    #[test]
    fn agrees_with_the_gateways_ring_key_by_key() {
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
            let theirs = gateway_ring(members, VNODES);
            let ours = RingShares::new(members.iter().copied(), VNODES);
            let samples = 100_000;
            let mut counts: HashMap<String, usize> = HashMap::new();
            for key in keys(samples) {
                let expected = theirs.get(&key.as_bytes()).map(|v| v.node.to_string());
                let got = ours.owner(&key).map(str::to_owned);
                assert_eq!(got, expected, "owner of {key} with {members:?}");
                *counts.entry(got.unwrap_or_default()).or_default() += 1;
            }
            let shares = ours.shares();
            assert_eq!(shares.len(), members.len());
            let sum: f64 = shares.iter().map(|(_, s)| s).sum();
            assert!((sum - 1.0).abs() < 1e-12, "shares sum to {sum}");
            for (node, share) in &shares {
                let sampled = counts.get(node).copied().unwrap_or(0) as f64 / samples as f64;
                // 100,000 samples: the standard error is below 0.0016.
                assert!(
                    (sampled - share).abs() < 0.008,
                    "{node}: computed {share:.4}, sampled {sampled:.4}"
                );
            }
        }
    }

    /// The numbers for a fixed member list (they change only if the
    /// gateways' hashing changes, which would move every session).
    #[test]
    fn shares_of_a_fixed_member_list() {
        let shares = RingShares::new(["n3", "n1", "n2", "n1"], VNODES).shares();
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
        // The gateways' ring gives those members the same fractions of
        // 100,000 sid-like keys (within sampling error).
        let ring = gateway_ring(&["n1", "n2", "n3"], VNODES);
        let mut n1 = 0usize;
        for key in keys(100_000) {
            if ring.get(&key.as_bytes()).is_some_and(|v| &*v.node == "n1") {
                n1 += 1;
            }
        }
        let sampled = n1 as f64 / 100_000.0;
        assert!(
            (sampled - share_of(&shares, "n1")).abs() < 0.008,
            "n1 sampled {sampled}"
        );
        let alone = RingShares::new(["solo"], VNODES).shares();
        assert_eq!(alone, [("solo".to_string(), 1.0)]);
        let one_point = RingShares::new(["solo"], 1).shares();
        assert_eq!(one_point, [("solo".to_string(), 1.0)]);
        assert!(RingShares::new([], VNODES).shares().is_empty());
        assert_eq!(RingShares::new([], VNODES).owner("x"), None);
    }
}
