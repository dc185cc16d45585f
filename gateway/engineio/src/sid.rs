//! Session ids: 20 URL-safe characters (15 bytes), like the reference
//! server's. Fixed size, so they hash and copy cheaply.
//!
//! A session's id is signed ([`SidKey`]): 11 random bytes (88 bits), then
//! the first 4 bytes of an HMAC-SHA256 of them under the cluster's key. A
//! request with an id this cluster did not make is refused at once, with
//! no lookup and before its body is read. Socket ids (the same type) are
//! plain random ids.
//!
//! In a cluster the first 8 of the random bytes are a point of the hash
//! ring that the node which made the session owns ([`Sid::signed_at`]):
//! every node reads the owner from the id (`ringway_ring::sid_point`). The
//! point is itself a uniform draw over the node's part of the ring, so the
//! id stays unguessable; the tag covers it.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

pub const SID_LEN: usize = 20;
/// Random bytes of a signed sid; the rest of its 15 is the tag.
const SIGNED_RANDOM: usize = 11;

/// The key that signs session ids: the same on every node of a cluster
/// (kept in Redis), random for a node alone.
#[derive(Clone)]
pub struct SidKey(Hmac<Sha256>);

impl fmt::Debug for SidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SidKey(..)")
    }
}

impl SidKey {
    pub fn new(key: &[u8; 32]) -> SidKey {
        match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mac) => SidKey(mac),
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }

    /// A key of this process only.
    pub fn random() -> SidKey {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SidKey::new(&key)
    }

    fn tag(&self, random: &[u8]) -> [u8; 4] {
        let mut mac = self.0.clone();
        mac.update(random);
        let full = mac.finalize().into_bytes();
        [full[0], full[1], full[2], full[3]]
    }
}

impl Default for SidKey {
    fn default() -> Self {
        SidKey::random()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid([u8; SID_LEN]);

impl Sid {
    /// A fresh unguessable id from the thread's CSPRNG.
    pub fn random() -> Sid {
        let mut raw = [0u8; 15];
        rand::rng().fill_bytes(&mut raw);
        let mut out = [0u8; SID_LEN];
        // 15 bytes encode to exactly 20 base64 characters without padding.
        let n = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut out)
            .unwrap_or_default();
        debug_assert_eq!(n, SID_LEN);
        Sid(out)
    }

    /// A fresh session id signed with `key`.
    pub fn signed(key: &SidKey) -> Sid {
        Sid::signed_at(key, rand::rng().next_u64())
    }

    /// A fresh session id signed with `key` whose first 8 bytes are
    /// `point` (big-endian): the ring point that names its owner.
    pub fn signed_at(key: &SidKey, point: u64) -> Sid {
        let mut raw = [0u8; 15];
        raw[..8].copy_from_slice(&point.to_be_bytes());
        rand::rng().fill_bytes(&mut raw[8..SIGNED_RANDOM]);
        let tag = key.tag(&raw[..SIGNED_RANDOM]);
        raw[SIGNED_RANDOM..].copy_from_slice(&tag);
        let mut out = [0u8; SID_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut out)
            .unwrap_or_default();
        debug_assert_eq!(n, SID_LEN);
        Sid(out)
    }

    /// Whether `key` signed this id (in time independent of where a
    /// forged tag differs).
    pub fn is_signed_by(&self, key: &SidKey) -> bool {
        let mut raw = [0u8; 15];
        match URL_SAFE_NO_PAD.decode_slice(self.0, &mut raw) {
            Ok(15) => {}
            _ => return false,
        }
        let tag = key.tag(&raw[..SIGNED_RANDOM]);
        tag.iter()
            .zip(&raw[SIGNED_RANDOM..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Parses an id from a request. Anything that is not 20 URL-safe
    /// characters cannot be one of ours.
    pub fn parse(s: &str) -> Option<Sid> {
        let bytes = s.as_bytes();
        if bytes.len() != SID_LEN
            || !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        let mut out = [0u8; SID_LEN];
        out.copy_from_slice(bytes);
        Some(Sid(out))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked in `parse`, produced by base64).
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_parse_back_and_differ() {
        let a = Sid::random();
        let b = Sid::random();
        assert_ne!(a, b);
        assert_eq!(Sid::parse(a.as_str()), Some(a));
        assert_eq!(a.as_str().len(), SID_LEN);
    }

    #[test]
    fn signed_ids_verify_under_their_key_only() {
        let key = SidKey::new(&[1; 32]);
        let other = SidKey::new(&[2; 32]);
        let sid = Sid::signed(&key);
        assert_eq!(sid.as_str().len(), SID_LEN);
        assert!(sid.is_signed_by(&key));
        assert!(!sid.is_signed_by(&other));
        // Any change of one character breaks the tag.
        let text = sid.as_str().to_owned();
        for i in 0..SID_LEN {
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = Sid::parse(std::str::from_utf8(&bytes).expect("ascii")).expect("parses");
            assert!(!changed.is_signed_by(&key), "{i}");
        }
        // Random ids almost never carry a valid tag (odds 2^-32 each).
        let forged = (0..1000)
            .filter(|_| Sid::random().is_signed_by(&key))
            .count();
        assert_eq!(forged, 0);
    }

    #[test]
    fn rejects_foreign_ids() {
        assert_eq!(Sid::parse("nope"), None);
        assert_eq!(Sid::parse("aaaaaaaaaaaaaaaaaaa="), None);
        assert_eq!(Sid::parse("ééééééééééé"), None);
        assert_eq!(Sid::parse(""), None);
    }
}
