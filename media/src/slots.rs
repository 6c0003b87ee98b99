//! Per-room slot allocation: which publishers occupy a room's N outgoing audio slots,
//! who is the spare, and the ordered active-speaker list.
//!
//! The room-level map follows the contract in MEDIA-API.md: `slots[i]` is forwarded in
//! slot i to everyone, `spare` is the next-loudest candidate, and a participant whose own
//! id is in `slots[j]` receives `spare` in slot j instead, so nobody hears themself and
//! the N slots still carry the N loudest *other* speakers. One map per room (not per
//! subscriber) keeps the state and the signaling O(slots), whatever the room size.
//!
//! Stickiness: a holder keeps its slot until a challenger is *clearly* louder (by
//! `margin` on the 0..=1 level scale) and speaking, at every decision for `sustain`;
//! only then does the challenger replace the quietest holder. The same rule guards the
//! spare. The comparison is deliberately asymmetric: the holder is judged on its
//! smoothed level (whose slow release bridges pauses between words), the challenger on
//! its mean level over the last interval (which has no tail). A burst therefore only
//! counts during the intervals it falls into: with the defaults (300 ms interval, 600 ms
//! sustain = three consecutive decisions) an interjection of up to 300 ms can never
//! switch a slot, however loud, and two speakers of equal loudness never flap. Vacancies (a holder left, was muted or lost the right to publish) are
//! filled at once, preferring the spare, because an empty slot carries nothing.
//! With no more candidates than slots every candidate holds a slot, and nothing ever
//! switches. Nothing here reads the clock: decisions take `now`.

use std::time::{Duration, Instant};

use crate::ids::ParticipantId;

/// Tuning of the slot allocator.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotConfig {
    /// Outgoing audio slots per subscriber (MEDIA-API.md `SfuConfig::slots`).
    pub slots: usize,
    /// How much louder (0..=1 scale, see `level`) a challenger must be. 0.08 is about
    /// 6 dB: twice the amplitude, a difference listeners clearly hear.
    pub margin: f32,
    /// How long the challenger must stay clearly louder before it takes over.
    pub sustain: Duration,
}

impl Default for SlotConfig {
    fn default() -> Self {
        SlotConfig {
            slots: 3,
            margin: 0.08,
            sustain: Duration::from_millis(600),
        }
    }
}

/// One publisher that may occupy a slot (publishing allowed and not muted), with its
/// smoothed level at the decision time.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Candidate {
    pub pid: ParticipantId,
    /// Smoothed level, 0..=1 (`LevelMeter::level`): bridges the pauses between words,
    /// so holders and the spare are judged on it.
    pub level: f32,
    /// Mean level over the last decision interval, 0..=1 (`LevelMeter::take_window`):
    /// no tail after a burst, so challengers are judged on it.
    pub recent: f32,
    /// Whether the publisher currently counts as speaking; only speakers may challenge.
    pub speaking: bool,
}

/// A challenger that has been clearly louder than its target since `since`.
#[derive(Copy, Clone, Debug, PartialEq)]
struct Challenge {
    pid: ParticipantId,
    since: Instant,
}

/// The slot map of one room and the state its hysteresis needs.
#[derive(Clone, Debug)]
pub struct SlotAllocator {
    cfg: SlotConfig,
    slots: Vec<Option<ParticipantId>>,
    spare: Option<ParticipantId>,
    slot_challenge: Option<Challenge>,
    spare_challenge: Option<Challenge>,
}

impl SlotAllocator {
    pub fn new(cfg: SlotConfig) -> Self {
        SlotAllocator {
            slots: vec![None; cfg.slots],
            spare: None,
            slot_challenge: None,
            spare_challenge: None,
            cfg,
        }
    }

    pub fn config(&self) -> &SlotConfig {
        &self.cfg
    }

    /// `slots[i]`: the publisher forwarded in slot i to everyone else.
    pub fn slots(&self) -> &[Option<ParticipantId>] {
        &self.slots
    }

    /// The next-loudest candidate, heard in slot j by the holder of slot j.
    pub fn spare(&self) -> Option<ParticipantId> {
        self.spare
    }

    /// The slot `pid` holds, if any.
    pub fn slot_of(&self, pid: ParticipantId) -> Option<usize> {
        self.slots.iter().position(|s| *s == Some(pid))
    }

    /// What `subscriber` hears in slot `j` under the room map (nobody hears themself).
    pub fn source_for(&self, subscriber: ParticipantId, j: usize) -> Option<ParticipantId> {
        match self.slots.get(j).copied().flatten() {
            Some(holder) if holder == subscriber => self.spare.filter(|s| *s != subscriber),
            other => other,
        }
    }

    /// Whether any state (slots, spare, pending challenges) refers to `pid`.
    pub fn mentions(&self, pid: ParticipantId) -> bool {
        self.holds(pid)
            || self.spare == Some(pid)
            || self.slot_challenge.is_some_and(|c| c.pid == pid)
            || self.spare_challenge.is_some_and(|c| c.pid == pid)
    }

    /// Drops `pid` from the map at once (left, muted, demoted) and fills the vacancy from
    /// `candidates` (which must no longer contain `pid`). Returns whether the map changed.
    pub fn remove(&mut self, pid: ParticipantId, candidates: &[Candidate]) -> bool {
        let mut changed = false;
        for s in self.slots.iter_mut() {
            if *s == Some(pid) {
                *s = None;
                changed = true;
            }
        }
        if self.spare == Some(pid) {
            self.spare = None;
            changed = true;
        }
        for c in [&mut self.slot_challenge, &mut self.spare_challenge] {
            if c.is_some_and(|c| c.pid == pid) {
                *c = None;
            }
        }
        self.refill(candidates) || changed
    }

    /// Membership changed (someone became a candidate or stopped being one): removes
    /// holders that are no longer candidates and fills vacancies, without any
    /// hysteresis. Returns whether the map changed.
    pub fn refill(&mut self, candidates: &[Candidate]) -> bool {
        let mut changed = false;
        let is_candidate = |p: ParticipantId| candidates.iter().any(|c| c.pid == p);
        for s in self.slots.iter_mut() {
            if s.is_some_and(|p| !is_candidate(p)) {
                *s = None;
                changed = true;
            }
        }
        if self.spare.is_some_and(|p| !is_candidate(p)) {
            self.spare = None;
            changed = true;
        }
        for j in 0..self.slots.len() {
            if self.slots[j].is_some() {
                continue;
            }
            // The spare is by definition the next in line for a vacancy.
            let next = self
                .spare
                .take()
                .or_else(|| self.loudest_outsider(candidates, false, |c| c.level));
            match next {
                Some(p) => {
                    self.slots[j] = Some(p);
                    changed = true;
                }
                None => break,
            }
        }
        if self.spare.is_none() {
            self.spare = self.loudest_outsider(candidates, false, |c| c.level);
            changed |= self.spare.is_some();
        }
        if self
            .slot_challenge
            .is_some_and(|c| !is_candidate(c.pid) || self.holds(c.pid))
        {
            self.slot_challenge = None;
        }
        if self
            .spare_challenge
            .is_some_and(|c| !is_candidate(c.pid) || self.holds(c.pid))
        {
            self.spare_challenge = None;
        }
        changed
    }

    /// The periodic decision (every `speaker_interval`): refill, then let at most one
    /// challenger take a slot and one take the spare position. Returns whether the map
    /// changed.
    pub fn decide(&mut self, now: Instant, candidates: &[Candidate]) -> bool {
        let mut changed = self.refill(candidates);
        let level_of = |p: ParticipantId| {
            candidates
                .iter()
                .find(|c| c.pid == p)
                .map_or(0.0, |c| c.level)
        };
        let recent_of = |p: ParticipantId| {
            candidates
                .iter()
                .find(|c| c.pid == p)
                .map_or(0.0, |c| c.recent)
        };

        // Slots: the loudest speaking outsider (the spare included) against the
        // quietest holder.
        let quietest = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(j, s)| s.map(|p| (j, level_of(p))))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let challenger = self.loudest_outsider(candidates, true, |c| c.recent);
        let mut swapped = false;
        match (quietest, challenger) {
            (Some((j, q_level)), Some(c)) if recent_of(c) >= q_level + self.cfg.margin => {
                if Self::sustained(&mut self.slot_challenge, c, now, self.cfg.sustain) {
                    let displaced = self.slots[j].replace(c);
                    if self.spare == Some(c) {
                        // The displaced holder is usually the next loudest: it becomes the
                        // spare rather than leaving the position empty.
                        self.spare = displaced;
                    }
                    self.slot_challenge = None;
                    self.spare_challenge = None;
                    changed = true;
                    swapped = true;
                }
            }
            _ => self.slot_challenge = None,
        }
        if swapped {
            changed |= self.refill(candidates);
            return changed;
        }

        // Spare: the loudest speaking outsider other than the spare against the spare.
        if let Some(spare) = self.spare {
            let challenger = candidates
                .iter()
                .filter(|c| c.speaking && c.pid != spare && !self.holds(c.pid))
                .fold(None::<Candidate>, |best, c| match best {
                    Some(b) if b.recent >= c.recent => Some(b),
                    _ => Some(*c),
                });
            match challenger {
                Some(c) if c.recent >= level_of(spare) + self.cfg.margin => {
                    if Self::sustained(&mut self.spare_challenge, c.pid, now, self.cfg.sustain) {
                        self.spare = Some(c.pid);
                        self.spare_challenge = None;
                        changed = true;
                    }
                }
                _ => self.spare_challenge = None,
            }
        }
        changed
    }

    /// Records that `pid` is clearly louder now; true once it has been for `sustain`.
    fn sustained(
        state: &mut Option<Challenge>,
        pid: ParticipantId,
        now: Instant,
        sustain: Duration,
    ) -> bool {
        let since = match *state {
            Some(c) if c.pid == pid => c.since,
            _ => {
                *state = Some(Challenge { pid, since: now });
                now
            }
        };
        now.saturating_duration_since(since) >= sustain
    }

    fn holds(&self, pid: ParticipantId) -> bool {
        self.slots.contains(&Some(pid))
    }

    /// The loudest candidate holding no slot (the spare included) by `key`, optionally
    /// only among those speaking. Ties go to the earlier candidate, for determinism.
    fn loudest_outsider(
        &self,
        candidates: &[Candidate],
        speaking_only: bool,
        key: impl Fn(&Candidate) -> f32,
    ) -> Option<ParticipantId> {
        candidates
            .iter()
            .filter(|c| (!speaking_only || c.speaking) && !self.holds(c.pid))
            .fold(None::<&Candidate>, |best, c| match best {
                Some(b) if key(b) >= key(c) => Some(b),
                _ => Some(c),
            })
            .map(|c| c.pid)
    }
}

/// The ordered list of a room's speaking publishers (loudest first), reported to
/// signaling only when the set or the order changes.
#[derive(Clone, Debug)]
pub struct ActiveSpeakers {
    max: usize,
    current: Vec<(ParticipantId, f32)>,
    scratch: Vec<(ParticipantId, f32)>,
}

impl ActiveSpeakers {
    /// `max` bounds the list (and the event's size) in rooms where many talk at once.
    pub fn new(max: usize) -> Self {
        ActiveSpeakers {
            max,
            current: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Loudest first, with the levels of the latest update.
    pub fn current(&self) -> &[(ParticipantId, f32)] {
        &self.current
    }

    /// Recomputes the list from the room's candidates; true when the set or order of
    /// speakers changed (level changes alone do not count).
    pub fn update(&mut self, candidates: &[Candidate]) -> bool {
        self.scratch.clear();
        self.scratch.extend(
            candidates
                .iter()
                .filter(|c| c.speaking)
                .map(|c| (c.pid, c.level)),
        );
        self.scratch
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        self.scratch.truncate(self.max);
        let changed = self.scratch.len() != self.current.len()
            || self
                .scratch
                .iter()
                .zip(&self.current)
                .any(|(a, b)| a.0 != b.0);
        std::mem::swap(&mut self.scratch, &mut self.current);
        changed
    }

    /// Forgets `pid` at once (it left); true when it was listed.
    pub fn remove(&mut self, pid: ParticipantId) -> bool {
        let before = self.current.len();
        self.current.retain(|(p, _)| *p != pid);
        before != self.current.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn p(n: u64) -> ParticipantId {
        ParticipantId(n)
    }

    fn c(n: u64, level: f32) -> Candidate {
        Candidate {
            pid: p(n),
            level,
            recent: level,
            speaking: level > 0.3,
        }
    }

    fn alloc(n: usize) -> SlotAllocator {
        SlotAllocator::new(SlotConfig {
            slots: n,
            ..SlotConfig::default()
        })
    }

    const TICK: Duration = Duration::from_millis(300);

    /// Everyone a participant hears: the sources of all its slots.
    fn heard_by(a: &SlotAllocator, sub: ParticipantId) -> Vec<ParticipantId> {
        let mut v: Vec<_> = (0..a.slots().len())
            .filter_map(|j| a.source_for(sub, j))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rooms_with_at_most_n_candidates_put_everyone_in_a_slot() {
        let mut a = alloc(3);
        let now = Instant::now();
        assert!(a.decide(now, &[c(1, 0.0), c(2, 0.0)]));
        assert_eq!(a.spare(), None);
        assert!(a.slot_of(p(1)).is_some() && a.slot_of(p(2)).is_some());
        let cands = [c(1, 0.0), c(2, 0.9), c(3, 0.1)];
        a.decide(now + TICK, &cands);
        for x in 1..=3 {
            assert!(a.slot_of(p(x)).is_some());
            let heard = heard_by(&a, p(x));
            let others: Vec<_> = (1..=3).filter(|y| *y != x).map(p).collect();
            assert_eq!(heard, others, "everyone hears everyone else");
        }
        // Levels changing wildly never switch anything in a small room.
        let before = a.slots().to_vec();
        for i in 0..50u32 {
            let l = (i % 2) as f32;
            assert!(!a.decide(now + TICK * (i + 2), &[c(1, l), c(2, 1.0 - l), c(3, 0.5)]));
        }
        assert_eq!(a.slots(), &before[..]);
    }

    #[test]
    fn more_than_n_candidates_fill_slots_loudest_first_and_pick_a_spare() {
        let mut a = alloc(3);
        let now = Instant::now();
        let cands = [c(1, 0.1), c(2, 0.9), c(3, 0.5), c(4, 0.7), c(5, 0.6)];
        a.decide(now, &cands);
        let mut held: Vec<_> = a.slots().iter().flatten().copied().collect();
        held.sort();
        assert_eq!(held, vec![p(2), p(4), p(5)]);
        assert_eq!(a.spare(), Some(p(3)));
    }

    #[test]
    fn nobody_hears_themself_and_holders_hear_the_spare() {
        let mut a = alloc(3);
        let now = Instant::now();
        let cands = [c(1, 0.9), c(2, 0.8), c(3, 0.7), c(4, 0.6), c(5, 0.1)];
        a.decide(now, &cands);
        for x in 1..=6u64 {
            let heard = heard_by(&a, p(x));
            assert!(!heard.contains(&p(x)), "{x} hears itself");
            assert_eq!(heard.len(), 3, "{x} hears three sources");
        }
        assert_eq!(heard_by(&a, p(1)), vec![p(2), p(3), p(4)]);
        assert_eq!(heard_by(&a, p(6)), vec![p(1), p(2), p(3)]);
    }

    #[test]
    fn a_brief_louder_blip_does_not_switch() {
        let mut a = alloc(1);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.5), c(2, 0.4)]);
        assert_eq!(a.slots(), &[Some(p(1))]);
        // one decision where 2 is much louder, then back to quieter
        assert!(!a.decide(t + TICK, &[c(1, 0.5), c(2, 0.9)]));
        assert!(!a.decide(t + TICK * 2, &[c(1, 0.5), c(2, 0.45)]));
        assert!(!a.decide(t + TICK * 3, &[c(1, 0.5), c(2, 0.9)]));
        assert!(!a.decide(t + TICK * 4, &[c(1, 0.5), c(2, 0.45)]));
        assert_eq!(a.slots(), &[Some(p(1))]);
    }

    #[test]
    fn a_sustained_louder_challenger_takes_the_quietest_slot() {
        let mut a = alloc(2);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.6), c(2, 0.5), c(3, 0.4)]);
        let quiet_slot = a.slot_of(p(2));
        let loud = [c(1, 0.6), c(2, 0.5), c(3, 0.9)];
        assert!(!a.decide(t + TICK, &loud));
        assert!(!a.decide(t + TICK * 2, &loud), "300 ms < sustain");
        assert!(a.decide(t + TICK * 3, &loud), "600 ms >= sustain");
        assert_eq!(
            a.slot_of(p(3)),
            quiet_slot,
            "takes the quietest holder's slot"
        );
        assert!(a.slot_of(p(1)).is_some(), "louder holder keeps its slot");
        assert_eq!(
            a.spare(),
            Some(p(2)),
            "the displaced holder becomes the spare"
        );
    }

    #[test]
    fn a_louder_but_not_speaking_challenger_never_switches() {
        let mut a = alloc(1);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.1), c(2, 0.0)]);
        let noisy = Candidate {
            pid: p(2),
            level: 0.25,
            recent: 0.25,
            speaking: false,
        };
        for i in 1..20 {
            assert!(!a.decide(t + TICK * i, &[c(1, 0.1), noisy]));
        }
        assert_eq!(a.slots(), &[Some(p(1))]);
    }

    #[test]
    fn challengers_are_judged_on_recent_level_and_holders_on_smoothed_level() {
        let mut a = alloc(1);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.5), c(2, 0.4)]);
        // 2's smoothed level still carries a burst's tail, but its recent level does not
        let tail = Candidate {
            pid: p(2),
            level: 0.9,
            recent: 0.45,
            speaking: true,
        };
        // 1 paused within the interval: recent is low, smoothed level bridges the pause
        let pausing = Candidate {
            pid: p(1),
            level: 0.5,
            recent: 0.1,
            speaking: true,
        };
        for i in 1..10 {
            assert!(!a.decide(t + TICK * i, &[pausing, tail]));
        }
        assert_eq!(a.slots(), &[Some(p(1))]);
        // clearly louder recently and for long enough: switches
        let talking = Candidate {
            recent: 0.7,
            ..tail
        };
        let mut switched = false;
        for i in 10..13 {
            switched |= a.decide(t + TICK * i, &[pausing, talking]);
        }
        assert!(switched);
        assert_eq!(a.slots(), &[Some(p(2))]);
    }

    #[test]
    fn two_equal_speakers_never_flap() {
        let mut a = alloc(1);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.6), c(2, 0.6)]);
        let holder = a.slots()[0];
        let mut switches = 0;
        for i in 1..200u32 {
            // levels wobble around each other within the margin...
            let w = if i % 3 == 0 { 0.03 } else { -0.03 };
            if a.decide(t + TICK * i, &[c(1, 0.6 + w), c(2, 0.6 - w)]) {
                switches += 1;
            }
        }
        for i in 200..400u32 {
            // ...or beyond it, but taking turns faster than the sustain time
            let w = if i % 2 == 0 { 0.1 } else { -0.1 };
            if a.decide(t + TICK * i, &[c(1, 0.6 + w), c(2, 0.6 - w)]) {
                switches += 1;
            }
        }
        assert_eq!(switches, 0);
        assert_eq!(a.slots()[0], holder);
    }

    #[test]
    fn switching_back_needs_the_same_sustained_margin() {
        let mut a = alloc(1);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.6), c(2, 0.3)]);
        let mut now = t;
        for _ in 0..3 {
            now += TICK;
            a.decide(now, &[c(1, 0.3), c(2, 0.8)]);
        }
        assert_eq!(a.slots(), &[Some(p(2))]);
        // 1 is now only slightly louder: stays with 2
        for _ in 0..10 {
            now += TICK;
            assert!(!a.decide(now, &[c(1, 0.85), c(2, 0.8)]));
        }
        assert_eq!(a.slots(), &[Some(p(2))]);
    }

    #[test]
    fn a_leaving_holder_frees_its_slot_for_the_spare_immediately() {
        let mut a = alloc(2);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.9), c(2, 0.8), c(3, 0.7), c(4, 0.2)]);
        assert_eq!(a.spare(), Some(p(3)));
        let slot = a.slot_of(p(1));
        assert!(a.remove(p(1), &[c(2, 0.8), c(3, 0.7), c(4, 0.2)]));
        assert_eq!(a.slot_of(p(3)), slot, "spare moves into the vacancy");
        assert_eq!(a.spare(), Some(p(4)), "next loudest becomes the spare");
        assert!(a.slot_of(p(1)).is_none());
    }

    #[test]
    fn removing_the_last_outsider_clears_the_spare() {
        let mut a = alloc(2);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.9), c(2, 0.8), c(3, 0.7)]);
        assert!(a.remove(p(3), &[c(1, 0.9), c(2, 0.8)]));
        assert_eq!(a.spare(), None);
        assert!(
            !a.remove(p(9), &[c(1, 0.9), c(2, 0.8)]),
            "unknown id changes nothing"
        );
    }

    #[test]
    fn a_challenger_that_leaves_mid_challenge_is_forgotten() {
        let mut a = alloc(1);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.3), c(2, 0.2), c(3, 0.1)]);
        a.decide(t + TICK, &[c(1, 0.3), c(2, 0.2), c(3, 0.9)]);
        a.remove(p(3), &[c(1, 0.3), c(2, 0.2)]);
        // 3 comes back 600 ms after its challenge began: its streak starts over, so no
        // switch yet (it would have switched had the streak survived the removal)
        a.refill(&[c(1, 0.3), c(2, 0.2), c(3, 0.9)]);
        assert!(!a.decide(t + TICK * 3, &[c(1, 0.3), c(2, 0.2), c(3, 0.9)]));
        assert_eq!(a.slots(), &[Some(p(1))]);
    }

    #[test]
    fn spare_follows_the_clearly_louder_outsider_after_sustain() {
        let mut a = alloc(1);
        let t = Instant::now();
        a.decide(t, &[c(1, 0.9), c(2, 0.5), c(3, 0.4)]);
        assert_eq!(a.spare(), Some(p(2)));
        let cands = [c(1, 0.95), c(2, 0.4), c(3, 0.7)];
        assert!(!a.decide(t + TICK, &cands));
        assert!(!a.decide(t + TICK * 2, &cands));
        assert!(a.decide(t + TICK * 3, &cands));
        assert_eq!(a.spare(), Some(p(3)));
        assert_eq!(a.slots(), &[Some(p(1))]);
    }

    #[test]
    fn zero_slots_never_panics() {
        let mut a = alloc(0);
        assert!(a.decide(Instant::now(), &[c(1, 0.9)]));
        assert_eq!(a.spare(), Some(p(1)));
        assert_eq!(a.source_for(p(2), 0), None);
    }

    #[test]
    fn active_speakers_are_ordered_and_change_only_on_set_or_order() {
        let mut s = ActiveSpeakers::new(8);
        assert!(
            !s.update(&[c(1, 0.1)]),
            "nobody speaking, empty list unchanged"
        );
        assert!(s.update(&[c(1, 0.5), c(2, 0.8), c(3, 0.1)]));
        assert_eq!(
            s.current().iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![p(2), p(1)]
        );
        assert!(
            !s.update(&[c(1, 0.55), c(2, 0.85)]),
            "levels alone do not count"
        );
        assert!(s.update(&[c(1, 0.9), c(2, 0.85)]), "order changed");
        assert!(s.update(&[c(2, 0.85)]), "set changed");
        assert!(s.remove(p(2)));
        assert!(s.current().is_empty());
        assert!(!s.remove(p(2)));
    }

    #[test]
    fn active_speakers_list_is_bounded() {
        let mut s = ActiveSpeakers::new(4);
        let cands: Vec<_> = (0..20).map(|i| c(i, 0.4 + i as f32 / 100.0)).collect();
        s.update(&cands);
        assert_eq!(s.current().len(), 4);
        assert_eq!(s.current()[0].0, p(19));
    }
}
