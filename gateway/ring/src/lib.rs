//! The consistent hash ring over the active members, with virtual nodes.
//!
//! Every gateway builds the same ring from the same member list, so any
//! node finds the owner of a new session's sid without I/O. A member is
//! placed on a `hashring::HashRing` as [`DEFAULT_VNODES`] virtual nodes,
//! each hashed as `(node id bytes, replica u32)` with the crate's default
//! hasher; a key belongs to the first virtual node at or after the hash
//! of its bytes (wrapping around).
//!
//! A session id carries its own point on the ring (its first 64 bits,
//! [`sid_point`]), so a node places a new session on itself in one step:
//! [`Ring::point_in`] draws a point of the node's segments, the engine
//! writes it into the sid, and every node finds the owner with
//! [`Ring::owner_of_sid`] (a binary search) without I/O. Other keys are
//! hashed ([`Ring::owner`]).
//!
//! [`Ring::shares`] measures, exactly, the part of the 64-bit hash space
//! each member owns (the coordinator's dashboard shows it).

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
    /// Every virtual node's point with its member's index, sorted by
    /// point (stable, as `HashRing` keeps equal hashes).
    points: Vec<(u64, usize)>,
    /// Per member: its segments as (first point, owned length up to and
    /// including this segment), for draws by binary search.
    segments: Vec<Vec<(u64, u128)>>,
}

/// The length of segment `i` of a member's cumulative list.
fn segment_len(segments: &[(u64, u128)], i: usize) -> u128 {
    let before = if i == 0 { 0 } else { segments[i - 1].1 };
    segments[i].1 - before
}

/// Every segment of the ring as (member index, (first point, length)): a
/// virtual node at `h` owns the points after the previous virtual node's,
/// up to and including `h` (the first one also the points after the last
/// one, wrapping). Empty segments (equal points) are left out.
fn segment_list(points: &[(u64, usize)]) -> impl Iterator<Item = (usize, (u64, u128))> + '_ {
    let last = points.last().map_or(0, |&(h, _)| h);
    points
        .iter()
        .enumerate()
        .filter_map(move |(i, &(hash, index))| {
            let previous = if i == 0 { last } else { points[i - 1].0 };
            let len = if i == 0 {
                (1u128 << 64) - u128::from(last) + u128::from(hash)
            } else {
                u128::from(hash - previous)
            };
            (len > 0).then_some((index, (previous.wrapping_add(1), len)))
        })
}

/// The point a session id carries: the first 64 bits its characters
/// encode (URL-safe base64, most significant bit first; the first 8 of
/// the sid's 15 bytes). `None` for anything that is not 11 such
/// characters or more.
pub fn sid_point(sid: &str) -> Option<u64> {
    let digits = sid.as_bytes().get(..11)?;
    let mut bits: u128 = 0;
    for &c in digits {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u128::from(value);
    }
    // 66 bits read; the point is the first 64.
    Some((bits >> 2) as u64)
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
        let mut points: Vec<(u64, usize)> = Vec::with_capacity(members.len() * vnodes as usize);
        for (index, node) in members.iter().enumerate() {
            for replica in 0..vnodes {
                let vnode = VNode {
                    node: node.clone(),
                    replica,
                };
                points.push((DefaultHashBuilder.hash_one(&vnode), index));
            }
        }
        points.sort_by_key(|&(hash, _)| hash);
        let mut segments: Vec<Vec<(u64, u128)>> = vec![Vec::new(); members.len()];
        for (index, (first, len)) in segment_list(&points) {
            let list = &mut segments[index];
            let before = list.last().map_or(0, |&(_, upto)| upto);
            list.push((first, before + len));
        }
        Ring {
            ring,
            members,
            points,
            segments,
        }
    }

    /// The member that owns `key` (hashed); `None` when the ring is empty.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.ring.get(&key.as_bytes()).map(|v| v.node.as_ref())
    }

    /// The member that owns `point`: the first virtual node at or after
    /// it, wrapping around; `None` when the ring is empty.
    pub fn owner_at(&self, point: u64) -> Option<&str> {
        let after = self.points.partition_point(|&(hash, _)| hash < point);
        let &(_, index) = self.points.get(after).or_else(|| self.points.first())?;
        Some(&self.members[index])
    }

    /// The member that owns a session id: by the point it carries
    /// ([`sid_point`]), or by its hash if it carries none.
    pub fn owner_of_sid(&self, sid: &str) -> Option<&str> {
        match sid_point(sid) {
            Some(point) => self.owner_at(point),
            None => self.owner(sid),
        }
    }

    /// A point that `node` owns, drawn from `random` (uniform over the
    /// node's part of the hash space when `random` is uniform): what a
    /// node writes into a new session id so that every node finds it
    /// there. In time linear in the virtual nodes of the ring, with no
    /// retries; `None` if `node` is not a member.
    pub fn point_in(&self, node: &str, random: u64) -> Option<u64> {
        let index = self.members.iter().position(|m| **m == *node)?;
        let segments = &self.segments[index];
        let &(_, owned) = segments.last()?;
        // A uniform draw over the owned length (the 64 random bits scaled:
        // a bias below 2^-64 per point), then the segment it falls in.
        let at = (u128::from(random) * owned) >> 64;
        let i = segments.partition_point(|&(_, upto)| upto <= at);
        let &(first, upto) = segments.get(i)?;
        let start = upto - segment_len(segments, i);
        Some(first.wrapping_add((at - start) as u64))
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
        let owned = self
            .segments
            .iter()
            .map(|list| list.last().map_or(0, |&(_, upto)| upto));
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

    /// splitmix64: deterministic draws for the placement tests.
    fn draws(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// A sid-like string carrying `point` (its first 64 bits), the rest
    /// of its 20 characters arbitrary.
    fn sid_at(point: u64) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bits = u128::from(point) << 2;
        let mut sid: String = (0..11)
            .rev()
            .map(|i| ALPHABET[((bits >> (6 * i)) & 63) as usize] as char)
            .collect();
        sid.push_str("AbCdEfGhI");
        sid
    }

    #[test]
    fn sids_carry_their_point() {
        assert_eq!(sid_point("AAAAAAAAAAAxxxxxxxxx"), Some(0));
        assert_eq!(sid_point("___________xxxxxxxxx"), Some(u64::MAX));
        // 0x01 then zeros: the first byte is the top of the point.
        assert_eq!(sid_point("AQAAAAAAAAAAAAAAAAAA"), Some(1 << 56));
        for point in [0, 1, 42, 1 << 63, u64::MAX - 1, 0x0123_4567_89ab_cdef] {
            assert_eq!(sid_point(&sid_at(point)), Some(point));
        }
        assert_eq!(sid_point("short"), None);
        assert_eq!(sid_point("AAAAAAAAAA=AAAAAAAAA"), None);
        assert_eq!(sid_point("AAAAAAAAAAé"), None);
    }

    #[test]
    fn owner_at_agrees_with_the_hashed_lookup() {
        let ring = Ring::new(["n1", "n2", "n3"], DEFAULT_VNODES);
        for key in keys(20_000) {
            let point = DefaultHashBuilder.hash_one(key.as_bytes());
            assert_eq!(ring.owner_at(point), ring.owner(&key), "{key}");
        }
        assert_eq!(Ring::new([], DEFAULT_VNODES).owner_at(7), None);
        assert_eq!(Ring::new(["solo"], 1).owner_at(u64::MAX), Some("solo"));
    }

    /// Every point drawn for a node is the node's, at 3, 10 and 200
    /// members, and the draws spread over its whole part of the space.
    #[test]
    fn placement_lands_on_the_node_in_one_draw() {
        let mut next = draws(7);
        for n in [1, 3, 10, 200] {
            let names: Vec<String> = (0..n).map(|i| format!("gateway-{i}")).collect();
            let ring = Ring::new(names.iter().map(String::as_str), DEFAULT_VNODES);
            for name in names.iter().step_by((n / 10).max(1)) {
                let mut segments_hit = std::collections::HashSet::new();
                for _ in 0..2_000 {
                    let point = ring.point_in(name, next()).expect("a member");
                    assert_eq!(ring.owner_at(point), Some(name.as_str()), "{n} members");
                    let sid = sid_at(point);
                    assert_eq!(ring.owner_of_sid(&sid), Some(name.as_str()));
                    // Which of the ring's points owns it: the segment.
                    segments_hit.insert(ring.points.partition_point(|&(h, _)| h < point));
                }
                // 2,000 draws over 256 segments of unequal length: most
                // segments are hit.
                assert!(
                    segments_hit.len() > 200,
                    "{n} members: {}",
                    segments_hit.len()
                );
            }
            assert_eq!(ring.point_in("not-a-member", next()), None);
        }
        // The extremes of the draw stay in the node's segments.
        let ring = Ring::new(["a", "b", "c"], DEFAULT_VNODES);
        for node in ["a", "b", "c"] {
            for random in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                let point = ring.point_in(node, random).expect("a member");
                assert_eq!(ring.owner_at(point), Some(node));
            }
        }
    }

    /// Draws are uniform over the node's share: its segments are hit in
    /// proportion to their length.
    #[test]
    fn placement_is_uniform_over_the_nodes_share() {
        let ring = Ring::new(["n1", "n2", "n3"], 4);
        let mut next = draws(11);
        let index = ring.members.iter().position(|m| &**m == "n2").unwrap();
        let segments: Vec<(u64, u128)> = (0..ring.segments[index].len())
            .map(|i| {
                (
                    ring.segments[index][i].0,
                    segment_len(&ring.segments[index], i),
                )
            })
            .collect();
        let owned: u128 = segments.iter().map(|&(_, len)| len).sum();
        let samples = 100_000;
        let mut hits = vec![0usize; segments.len()];
        for _ in 0..samples {
            let point = ring.point_in("n2", next()).unwrap();
            let offset = |first: u64| point.wrapping_sub(first) as u128;
            let i = segments
                .iter()
                .position(|&(first, len)| offset(first) < len)
                .expect("in a segment");
            hits[i] += 1;
        }
        for (&(_, len), &hit) in segments.iter().zip(&hits) {
            let expected = len as f64 / owned as f64;
            let got = hit as f64 / samples as f64;
            assert!(
                (got - expected).abs() < 0.01,
                "{got:.4} against {expected:.4}"
            );
        }
    }

    /// At 200 members: a member leaving moves only its own sessions; a
    /// member joining takes about 1/201 of everyone's; each node's
    /// sessions are placed by one draw (no retries).
    #[test]
    fn two_hundred_members_move_little() {
        let names: Vec<String> = (0..200).map(|i| format!("gateway-{i:03}")).collect();
        let ring = Ring::new(names.iter().map(String::as_str), DEFAULT_VNODES);
        let mut next = draws(3);
        let placed: Vec<(String, String)> = (0..20_000)
            .map(|i| {
                let node = &names[i % names.len()];
                (node.clone(), sid_at(ring.point_in(node, next()).unwrap()))
            })
            .collect();
        let without: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "gateway-042")
            .collect();
        let smaller = Ring::new(without.iter().copied(), DEFAULT_VNODES);
        for (node, sid) in &placed {
            if node != "gateway-042" {
                assert_eq!(smaller.owner_of_sid(sid), Some(node.as_str()));
            }
        }
        let with: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .chain(["gateway-new"])
            .collect();
        let larger = Ring::new(with.iter().copied(), DEFAULT_VNODES);
        let moved = placed
            .iter()
            .filter(|(node, sid)| larger.owner_of_sid(sid) != Some(node.as_str()))
            .inspect(|(_, sid)| assert_eq!(larger.owner_of_sid(sid), Some("gateway-new")))
            .count();
        // 20,000 / 201 is about 100.
        assert!((40..200).contains(&moved), "moved {moved}");
    }
}
