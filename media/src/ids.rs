//! Typed identifiers the media crate shares with its callers, and a cheap hasher for them.
//!
//! Both ids are opaque numbers allocated by signaling: media knows nothing of users or
//! of signaling's string room ids. They are keys of the router's per-packet lookups, so
//! [`IdHashBuilder`] replaces SipHash (whose denial-of-service resistance buys nothing
//! for server-allocated numbers) with a single multiply.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// One per signaling connection (two browser tabs of one user are two participants).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

/// A room as media sees it; signaling maps its string room ids to these.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey(pub u64);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Multiplicative (Fibonacci) hasher for small integer keys such as [`ParticipantId`].
///
/// Ids are allocated by our own signaling, not chosen by clients, so flooding a bucket
/// is not possible and the per-packet lookup can skip SipHash's cost. Sequential ids
/// spread well: the multiply moves entropy into the high bits hashbrown uses as tags.
#[derive(Default, Clone, Copy, Debug)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys that are not plain integers; still correct, just slower.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// `BuildHasher` for `HashMap<ParticipantId, _, IdHashBuilder>` and friends.
pub type IdHashBuilder = BuildHasherDefault<IdHasher>;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_hash_to_distinct_values() {
        let b = IdHashBuilder::default();
        let hashes: HashSet<u64> = (0..10_000u64)
            .map(|i| b.hash_one(ParticipantId(i)))
            .collect();
        assert_eq!(hashes.len(), 10_000);
    }

    #[test]
    fn ids_display_with_a_kind_prefix() {
        assert_eq!(ParticipantId(7).to_string(), "p7");
        assert_eq!(RoomKey(3).to_string(), "r3");
    }
}
