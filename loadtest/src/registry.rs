//! The send-time registry: how a listener learns who sent a packet and when, without
//! putting anything in the payload.
//!
//! The SFU rewrites SSRC, sequence numbers and timestamps per slot but forwards the
//! Opus payload byte for byte. Speakers and listeners of a test or load run live in one
//! process, so each speaker records `fingerprint(payload) -> (speaker, send instant)`
//! here as it sends, and each listener looks the fingerprint up on arrival: that gives
//! end-to-end latency on one clock and an attribution to the speaker that does not
//! depend on the timing of the `slots` signaling message. Payloads stay real,
//! decodable Opus.
//!
//! Entries expire after a TTL (default 10 s) and each shard is capped, so memory stays
//! bounded however long a run lasts. A fingerprint seen from two different speakers
//! within the TTL (e.g. identical DTX frames) is marked ambiguous and never attributed.

use crate::protocol::ParticipantId;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Per-shard cap: 16 x 65536 entries is ~20 minutes of 50 packets/s from 1000 speakers
/// at the default TTL, far more than any run on this machine produces.
const MAX_PER_SHARD: usize = 1 << 16;

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// None once two speakers produced the same fingerprint.
    source: Option<ParticipantId>,
    sent_at: Instant,
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Entry>,
    order: VecDeque<(Instant, u64)>,
}

/// Shared by every speaker and listener of one process.
pub struct SendRegistry {
    shards: Vec<Mutex<Shard>>,
    ttl: Duration,
    sent: Mutex<HashMap<ParticipantId, u64>>,
}

impl Default for SendRegistry {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

/// 64-bit FNV-1a of the payload.
pub fn fingerprint(payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in payload {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl SendRegistry {
    pub fn new(ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            ttl,
            sent: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, fp: u64) -> &Mutex<Shard> {
        &self.shards[(fp as usize) % SHARDS]
    }

    /// A speaker calls this for every packet it sends.
    pub fn record(&self, source: ParticipantId, payload: &[u8], sent_at: Instant) {
        *self.sent.lock().entry(source).or_insert(0) += 1;
        let fp = fingerprint(payload);
        let mut shard = self.shard(fp).lock();
        while let Some(&(t, old)) = shard.order.front() {
            let expired = sent_at.saturating_duration_since(t) > self.ttl;
            if !expired && shard.order.len() < MAX_PER_SHARD {
                break;
            }
            shard.order.pop_front();
            if shard.map.get(&old).is_some_and(|e| e.sent_at <= t) {
                shard.map.remove(&old);
            }
        }
        let entry = match shard.map.get(&fp) {
            Some(e) if e.source != Some(source) => Entry {
                source: None,
                sent_at,
            },
            _ => Entry {
                source: Some(source),
                sent_at,
            },
        };
        shard.map.insert(fp, entry);
        shard.order.push_back((sent_at, fp));
    }

    /// A listener calls this on arrival: the speaker and send instant of this payload,
    /// if it is known and unambiguous.
    pub fn lookup(&self, payload: &[u8]) -> Option<(ParticipantId, Instant)> {
        let fp = fingerprint(payload);
        let shard = self.shard(fp).lock();
        let e = shard.map.get(&fp)?;
        Some((e.source?, e.sent_at))
    }

    /// Packets recorded for `source` so far (what a listener should have received).
    pub fn sent_count(&self, source: ParticipantId) -> u64 {
        self.sent.lock().get(&source).copied().unwrap_or(0)
    }

    /// Entries currently held (for tests and memory checks).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_maps_back_to_speaker_and_send_time() {
        let r = SendRegistry::default();
        let t = Instant::now();
        r.record(ParticipantId(1), b"hello", t);
        r.record(ParticipantId(2), b"world", t + Duration::from_millis(20));
        assert_eq!(r.lookup(b"hello"), Some((ParticipantId(1), t)));
        assert_eq!(
            r.lookup(b"world"),
            Some((ParticipantId(2), t + Duration::from_millis(20)))
        );
        assert_eq!(r.lookup(b"other"), None);
        assert_eq!(r.sent_count(ParticipantId(1)), 1);
        assert_eq!(r.sent_count(ParticipantId(3)), 0);
    }

    #[test]
    fn same_payload_from_two_speakers_is_ambiguous() {
        let r = SendRegistry::default();
        let t = Instant::now();
        r.record(ParticipantId(1), &[0xf8], t);
        r.record(ParticipantId(2), &[0xf8], t);
        assert_eq!(r.lookup(&[0xf8]), None);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let r = SendRegistry::new(Duration::from_secs(1));
        let t = Instant::now();
        for i in 0..100u32 {
            r.record(ParticipantId(1), &i.to_be_bytes(), t);
        }
        assert_eq!(r.len(), 100);
        // Recording far in the future evicts the old entries of each shard it touches.
        for i in 100..1000u32 {
            r.record(
                ParticipantId(1),
                &i.to_be_bytes(),
                t + Duration::from_secs(5),
            );
        }
        assert_eq!(r.lookup(&0u32.to_be_bytes()), None);
        assert_eq!(r.len(), 900);
    }
}
