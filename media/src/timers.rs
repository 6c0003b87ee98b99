//! The deadline heap over all connections.
//!
//! Each connection has one "next deadline" (the earlier of `rtc`'s `poll_timeout` and our own
//! housekeeping); rescheduling pushes a new entry and bumps the connection's generation so the
//! old entry is skipped when it surfaces (lazy deletion). Popping due entries is O(log n) per
//! entry, so a wakeup costs nothing per idle connection, unlike a linear scan.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Identifies the connection a timer belongs to, and which scheduling of it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    pub(crate) slot: u32,
    pub(crate) generation: u64,
}

#[derive(Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
}

impl TimerHeap {
    pub(crate) fn push(&mut self, at: Instant, key: TimerKey) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest deadline, stale or not (a stale one only causes a spurious wakeup).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the next entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerKey> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, k))| k),
            _ => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drops stale entries when they dominate the heap, so memory stays proportional to the
    /// number of live connections.
    pub(crate) fn compact(&mut self, is_live: impl Fn(TimerKey) -> bool) {
        let heap = std::mem::take(&mut self.heap);
        self.heap = heap
            .into_iter()
            .filter(|Reverse((_, k))| is_live(*k))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_only_due_entries_in_deadline_order() {
        let t0 = Instant::now();
        let mut h = TimerHeap::default();
        let k = |slot| TimerKey {
            slot,
            generation: 0,
        };
        h.push(t0 + Duration::from_millis(30), k(3));
        h.push(t0 + Duration::from_millis(10), k(1));
        h.push(t0 + Duration::from_millis(20), k(2));
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(h.pop_due(t0), None);
        let now = t0 + Duration::from_millis(25);
        assert_eq!(h.pop_due(now), Some(k(1)));
        assert_eq!(h.pop_due(now), Some(k(2)));
        assert_eq!(h.pop_due(now), None);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn compact_drops_stale_generations() {
        let t0 = Instant::now();
        let mut h = TimerHeap::default();
        for g in 0..10 {
            h.push(
                t0,
                TimerKey {
                    slot: 1,
                    generation: g,
                },
            );
        }
        h.compact(|k| k.generation == 9);
        assert_eq!(h.len(), 1);
    }
}
