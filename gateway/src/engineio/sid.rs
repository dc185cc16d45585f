//! Session ids: 20 URL-safe characters from 120 random bits, like the
//! reference server's. Fixed size, so they hash and copy cheaply.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;

pub const SID_LEN: usize = 20;

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
    fn rejects_foreign_ids() {
        assert_eq!(Sid::parse("nope"), None);
        assert_eq!(Sid::parse("aaaaaaaaaaaaaaaaaaa="), None);
        assert_eq!(Sid::parse("ééééééééééé"), None);
        assert_eq!(Sid::parse(""), None);
    }
}
