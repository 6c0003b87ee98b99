//! Outgoing RTP stream rewriting for one (subscriber, slot) leg.
//!
//! A slot carries whichever publisher the router currently maps onto it, but the
//! browser must see one continuous, valid RTP stream per m-line: one SSRC, sequence
//! numbers without artificial gaps, timestamps that never jump backwards. A
//! [`SlotRewriter`] owns that illusion. It works on header fields only (`seq`, `ts`,
//! `ssrc`, marker), so the I/O side applies the result to whatever packet struct the
//! WebRTC stack uses; it never allocates and never reads the clock.
//!
//! Rules:
//! - The outgoing SSRC is fixed per leg.
//! - Within one source, the source's own sequence and timestamp deltas are preserved:
//!   real loss stays visible to the receiver (as a gap it can conceal or NACK), and
//!   reordered packets keep their place. Duplicates are dropped (a 64-packet history
//!   remembers what went out), as are packets older than the point where this source
//!   took the slot (they belong to a stream the receiver never saw).
//! - When the source changes, the sequence number continues at highest-sent + 1 and the
//!   timestamp at highest-sent + the wall time elapsed since then at the clock rate (at
//!   least one frame, so two streams never share a timestamp). The first packet after a
//!   switch carries the marker bit, which tells the receiver's jitter buffer a new
//!   talkspurt starts.
//! - A jump of more than [`RESYNC_JUMP`] within one source (a restarted sender) is
//!   treated like a switch rather than as loss or an ancient packet, and so is a run of
//!   [`RESYNC_OLD_STREAK`] consecutive packets all further back than the history (a
//!   sender that restarted a little behind its old numbering): otherwise every packet
//!   would be dropped as old until the new numbering caught up.

use std::time::{Duration, Instant};

use crate::ids::ParticipantId;

/// Opus RTP clock rate.
pub const OPUS_CLOCK_RATE: u32 = 48_000;
/// One 20 ms Opus frame at 48 kHz.
pub const OPUS_FRAME_TICKS: u32 = 960;
/// Sequence jumps larger than this within one source re-anchor the stream. 3000
/// packets is a minute of 20 ms audio: far beyond any reordering or loss burst.
pub const RESYNC_JUMP: u16 = 3000;
/// Consecutive packets further back than the history that re-anchor the stream.
pub const RESYNC_OLD_STREAK: u8 = 3;
/// How far back (in packets) duplicates and late packets are recognised.
const HISTORY: u32 = 64;
/// Upper bound of the timestamp advance on a switch: more than 2^31 would look like a
/// step backwards to a receiver comparing timestamps with wrapping arithmetic.
const MAX_TS_ADVANCE: u64 = (u32::MAX / 4) as u64;

/// The header fields of an incoming packet that rewriting needs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpIn {
    /// The publisher the packet came from.
    pub source: ParticipantId,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
}

/// The header fields to write into the outgoing packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpOut {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
}

/// Why a packet was not forwarded on this leg.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RewriteDrop {
    /// Already forwarded.
    Duplicate,
    /// Older than the switch point or than the duplicate history.
    TooOld,
}

/// Mapping state for the source currently in the slot.
#[derive(Copy, Clone, Debug)]
struct Source {
    pid: ParticipantId,
    ssrc: u32,
    /// out seq = in seq + seq_offset (wrapping).
    seq_offset: u16,
    /// out ts = in ts + ts_offset (wrapping).
    ts_offset: u32,
    /// Highest incoming seq seen from this source.
    highest_in: u16,
    /// Bit i set: `highest_in - i` has been forwarded.
    seen: u64,
    /// How many sequence steps `highest_in` is past the first packet (saturating):
    /// anything further back predates the switch.
    advanced: u32,
    /// Consecutive packets seen further back than the history.
    old_streak: u8,
}

/// Rewrites one (subscriber, slot) leg. About 80 bytes; one per subscriber per slot.
#[derive(Clone, Debug)]
pub struct SlotRewriter {
    out_ssrc: u32,
    clock_rate: u32,
    frame_ticks: u32,
    source: Option<Source>,
    /// Highest outgoing seq and its timestamp, and when it went out.
    high: Option<(u16, u32, Instant)>,
    forwarded: u64,
}

impl SlotRewriter {
    /// A leg for Opus (48 kHz, 20 ms frames) with the leg's fixed outgoing SSRC.
    pub fn new(out_ssrc: u32) -> Self {
        Self::with_clock(out_ssrc, OPUS_CLOCK_RATE, OPUS_FRAME_TICKS)
    }

    /// A leg for another clock rate / frame size.
    pub fn with_clock(out_ssrc: u32, clock_rate: u32, frame_ticks: u32) -> Self {
        SlotRewriter {
            out_ssrc,
            clock_rate,
            frame_ticks,
            source: None,
            high: None,
            forwarded: 0,
        }
    }

    pub fn out_ssrc(&self) -> u32 {
        self.out_ssrc
    }

    /// The publisher (and its SSRC) currently mapped onto this leg.
    pub fn current_source(&self) -> Option<(ParticipantId, u32)> {
        self.source.map(|s| (s.pid, s.ssrc))
    }

    /// Packets forwarded so far (for sender reports).
    pub fn packets_forwarded(&self) -> u64 {
        self.forwarded
    }

    /// Highest outgoing sequence number sent so far.
    pub fn highest_seq(&self) -> Option<u16> {
        self.high.map(|h| h.0)
    }

    /// The RTP timestamp corresponding to `now` on this leg (for sender reports):
    /// the highest sent timestamp advanced by the wall time since it was sent.
    pub fn rtp_ts_at(&self, now: Instant) -> Option<u32> {
        self.high
            .map(|(_, ts, at)| ts.wrapping_add(self.ticks(now.saturating_duration_since(at))))
    }

    /// Maps an outgoing sequence number (e.g. from a subscriber's NACK) back to the
    /// current source's sequence number, if it belongs to the current source's run.
    pub fn source_seq(&self, out_seq: u16) -> Option<(ParticipantId, u32, u16)> {
        let s = self.source?;
        let in_seq = out_seq.wrapping_sub(s.seq_offset);
        let back = s.highest_in.wrapping_sub(in_seq);
        (u32::from(back) <= s.advanced).then_some((s.pid, s.ssrc, in_seq))
    }

    /// Rewrites one packet for this leg. `now` is the time it is being forwarded.
    pub fn rewrite(&mut self, pkt: RtpIn, now: Instant) -> Result<RtpOut, RewriteDrop> {
        let Some(mut s) = self
            .source
            .filter(|s| s.pid == pkt.source && s.ssrc == pkt.ssrc)
        else {
            return Ok(self.switch_to(pkt, now));
        };
        let diff = pkt.seq.wrapping_sub(s.highest_in) as i16;
        if diff == 0 {
            return Err(RewriteDrop::Duplicate);
        }
        if diff.unsigned_abs() > RESYNC_JUMP {
            return Ok(self.switch_to(pkt, now));
        }
        let out = RtpOut {
            ssrc: self.out_ssrc,
            seq: pkt.seq.wrapping_add(s.seq_offset),
            ts: pkt.ts.wrapping_add(s.ts_offset),
            marker: pkt.marker,
        };
        if diff > 0 {
            let step = u32::from(diff.unsigned_abs());
            s.seen = if step >= HISTORY { 0 } else { s.seen << step };
            s.seen |= 1;
            s.highest_in = pkt.seq;
            s.advanced = s.advanced.saturating_add(step);
            self.high = Some((out.seq, out.ts, now));
        } else {
            let back = u32::from(diff.unsigned_abs());
            if back >= HISTORY {
                s.old_streak = s.old_streak.saturating_add(1);
                if s.old_streak >= RESYNC_OLD_STREAK {
                    return Ok(self.switch_to(pkt, now));
                }
                self.source = Some(s);
                return Err(RewriteDrop::TooOld);
            }
            if back > s.advanced {
                return Err(RewriteDrop::TooOld);
            }
            let bit = 1u64 << back;
            if s.seen & bit != 0 {
                return Err(RewriteDrop::Duplicate);
            }
            s.seen |= bit;
        }
        s.old_streak = 0;
        self.source = Some(s);
        self.forwarded += 1;
        Ok(out)
    }

    /// Starts a new run for `pkt`'s source, continuing the outgoing stream.
    fn switch_to(&mut self, pkt: RtpIn, now: Instant) -> RtpOut {
        let (seq, ts) = match self.high {
            // First packet ever on this leg: pass the source's numbering through.
            None => (pkt.seq, pkt.ts),
            Some((seq, ts, at)) => {
                let elapsed = self.ticks(now.saturating_duration_since(at));
                (
                    seq.wrapping_add(1),
                    ts.wrapping_add(elapsed.max(self.frame_ticks)),
                )
            }
        };
        self.source = Some(Source {
            pid: pkt.source,
            ssrc: pkt.ssrc,
            seq_offset: seq.wrapping_sub(pkt.seq),
            ts_offset: ts.wrapping_sub(pkt.ts),
            highest_in: pkt.seq,
            seen: 1,
            advanced: 0,
            old_streak: 0,
        });
        self.high = Some((seq, ts, now));
        self.forwarded += 1;
        RtpOut {
            ssrc: self.out_ssrc,
            seq,
            ts,
            marker: true,
        }
    }

    fn ticks(&self, d: Duration) -> u32 {
        let t = d.as_micros().saturating_mul(u128::from(self.clock_rate)) / 1_000_000;
        t.min(u128::from(MAX_TS_ADVANCE)) as u32
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const OUT: u32 = 0xC0FFEE;
    const FRAME: Duration = Duration::from_millis(20);

    fn pkt(src: u64, seq: u16, ts: u32) -> RtpIn {
        RtpIn {
            source: ParticipantId(src),
            ssrc: 1000 + src as u32,
            seq,
            ts,
            marker: false,
        }
    }

    #[test]
    fn first_packet_passes_numbering_through_with_marker_and_leg_ssrc() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        let o = r.rewrite(pkt(1, 500, 7000), t).unwrap();
        assert_eq!(
            o,
            RtpOut {
                ssrc: OUT,
                seq: 500,
                ts: 7000,
                marker: true
            }
        );
        let o = r.rewrite(pkt(1, 501, 7960), t + FRAME).unwrap();
        assert_eq!((o.seq, o.ts, o.marker), (501, 7960, false));
        assert_eq!(r.current_source(), Some((ParticipantId(1), 1001)));
    }

    #[test]
    fn switch_continues_seq_by_one_and_ts_by_elapsed_wall_time() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, 10, 100), t).unwrap();
        // B arrives 100 ms later with unrelated numbering
        let o = r.rewrite(pkt(2, 40_000, 9_999_999), t + FRAME * 5).unwrap();
        assert_eq!(o.seq, 11);
        assert_eq!(o.ts, 100 + 4800);
        assert!(o.marker);
        // B's own deltas preserved afterwards
        let o = r
            .rewrite(pkt(2, 40_001, 9_999_999 + 960), t + FRAME * 6)
            .unwrap();
        assert_eq!((o.seq, o.ts, o.marker), (12, 100 + 4800 + 960, false));
    }

    #[test]
    fn switch_advances_ts_by_at_least_one_frame() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, 10, 100), t).unwrap();
        let o = r
            .rewrite(pkt(2, 1, 1), t + Duration::from_millis(3))
            .unwrap();
        assert_eq!(o.ts, 100 + 960);
        let o = r.rewrite(pkt(1, 11, 1060), t).unwrap(); // time going backwards
        assert_eq!(o.ts, 100 + 960 + 960);
        assert_eq!(o.seq, 12);
    }

    #[test]
    fn loss_within_a_source_stays_a_visible_gap() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, 10, 0), t).unwrap();
        let o = r.rewrite(pkt(1, 13, 2880), t + FRAME * 3).unwrap();
        assert_eq!((o.seq, o.ts), (13, 2880));
    }

    #[test]
    fn reordered_packets_keep_their_place_and_duplicates_are_dropped() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, 10, 0), t).unwrap();
        r.rewrite(pkt(1, 12, 1920), t).unwrap();
        let late = r.rewrite(pkt(1, 11, 960), t).unwrap();
        assert_eq!((late.seq, late.ts), (11, 960));
        assert_eq!(r.rewrite(pkt(1, 11, 960), t), Err(RewriteDrop::Duplicate));
        assert_eq!(r.rewrite(pkt(1, 12, 1920), t), Err(RewriteDrop::Duplicate));
        assert_eq!(r.rewrite(pkt(1, 10, 0), t), Err(RewriteDrop::Duplicate));
        assert_eq!(r.packets_forwarded(), 3);
    }

    #[test]
    fn packets_older_than_the_switch_point_are_dropped() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, 10, 0), t).unwrap();
        r.rewrite(pkt(2, 500, 0), t + FRAME).unwrap();
        assert_eq!(
            r.rewrite(pkt(2, 499, 0), t + FRAME),
            Err(RewriteDrop::TooOld)
        );
        r.rewrite(pkt(2, 502, 1920), t + FRAME).unwrap();
        // 501 is after the switch point: forwarded late in its place
        let o = r.rewrite(pkt(2, 501, 960), t + FRAME).unwrap();
        assert_eq!(o.seq, 12);
    }

    #[test]
    fn packets_beyond_the_history_are_dropped_as_too_old() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        for i in 0..100u16 {
            r.rewrite(pkt(1, i, u32::from(i) * 960), t).unwrap();
        }
        assert_eq!(r.rewrite(pkt(1, 20, 0), t), Err(RewriteDrop::TooOld));
    }

    #[test]
    fn a_restarted_source_with_a_huge_jump_is_resynchronised() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, 30_000, 5000), t).unwrap();
        let o = r.rewrite(pkt(1, 7, 123), t + FRAME).unwrap();
        assert_eq!((o.seq, o.ts, o.marker), (30_001, 5960, true));
        let o = r.rewrite(pkt(1, 8, 123 + 960), t + FRAME * 2).unwrap();
        assert_eq!(o.seq, 30_002);
    }

    #[test]
    fn a_source_restarting_a_little_behind_is_resynchronised_after_a_few_packets() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        for i in 0..200u16 {
            r.rewrite(pkt(1, 1000 + i, u32::from(i) * 960), t).unwrap();
        }
        // restarts 500 packets behind: a lone straggler is dropped...
        assert_eq!(r.rewrite(pkt(1, 700, 0), t), Err(RewriteDrop::TooOld));
        // ...a forwarded packet in between resets the count...
        r.rewrite(pkt(1, 1200, 200 * 960), t + FRAME).unwrap();
        assert_eq!(r.rewrite(pkt(1, 701, 0), t), Err(RewriteDrop::TooOld));
        assert_eq!(r.rewrite(pkt(1, 702, 960), t), Err(RewriteDrop::TooOld));
        // ...and the third in a row re-anchors the stream
        let o = r.rewrite(pkt(1, 703, 1920), t + FRAME * 2).unwrap();
        assert_eq!((o.seq, o.marker), (1201, true));
        let o = r.rewrite(pkt(1, 704, 2880), t + FRAME * 3).unwrap();
        assert_eq!((o.seq, o.marker), (1202, false));
    }

    #[test]
    fn same_participant_with_a_new_ssrc_is_a_switch() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, 10, 0), t).unwrap();
        let mut p = pkt(1, 11, 960);
        p.ssrc = 77;
        let o = r.rewrite(p, t + FRAME).unwrap();
        assert!(o.marker);
        assert_eq!(o.seq, 11);
    }

    #[test]
    fn seq_and_ts_wrap_around_cleanly_across_switches() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, u16::MAX - 1, u32::MAX - 960), t).unwrap();
        let o = r.rewrite(pkt(1, u16::MAX, u32::MAX), t + FRAME).unwrap();
        assert_eq!((o.seq, o.ts), (u16::MAX, u32::MAX));
        let o = r.rewrite(pkt(2, 5, 5), t + FRAME * 2).unwrap();
        assert_eq!((o.seq, o.ts), (0, 959));
        let o = r.rewrite(pkt(2, 6, 965), t + FRAME * 3).unwrap();
        assert_eq!((o.seq, o.ts), (1, 1919));
        // the source itself wrapping
        let mut r = SlotRewriter::new(OUT);
        r.rewrite(pkt(3, u16::MAX, u32::MAX - 100), t).unwrap();
        let o = r.rewrite(pkt(3, 0, 859), t + FRAME).unwrap();
        assert_eq!((o.seq, o.ts), (0, 859));
        assert_eq!(
            r.rewrite(pkt(3, u16::MAX, 0), t),
            Err(RewriteDrop::Duplicate)
        );
    }

    #[test]
    fn nack_maps_back_only_within_the_current_run() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, 10, 0), t).unwrap();
        r.rewrite(pkt(2, 900, 0), t + FRAME).unwrap(); // out 11
        r.rewrite(pkt(2, 902, 1920), t + FRAME * 3).unwrap(); // out 13
        assert_eq!(r.source_seq(12), Some((ParticipantId(2), 1002, 901)));
        assert_eq!(r.source_seq(11), Some((ParticipantId(2), 1002, 900)));
        assert_eq!(r.source_seq(10), None, "belongs to the previous source");
    }

    #[test]
    fn sender_report_timestamp_follows_wall_time() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        assert_eq!(r.rtp_ts_at(t), None);
        r.rewrite(pkt(1, 10, 1000), t).unwrap();
        assert_eq!(
            r.rtp_ts_at(t + Duration::from_millis(500)),
            Some(1000 + 24_000)
        );
    }

    #[test]
    fn very_long_idle_gap_caps_the_timestamp_step_below_half_the_space() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        r.rewrite(pkt(1, 10, 0), t).unwrap();
        let o = r
            .rewrite(pkt(2, 0, 0), t + Duration::from_secs(100_000))
            .unwrap();
        assert!(o.ts > 0 && o.ts < 1 << 31);
    }

    #[test]
    fn many_switches_without_loss_give_consecutive_seqs_and_increasing_ts() {
        let mut r = SlotRewriter::new(OUT);
        let t = Instant::now();
        let mut src_seq = [u16::MAX - 3, 100, 40_000];
        let mut src_ts = [u32::MAX - 5000, 7, 3_000_000_000];
        let mut prev: Option<RtpOut> = None;
        for i in 0..20_000u32 {
            let s = ((i / 7) % 3) as usize; // a switch every 7 packets
            let o = r
                .rewrite(pkt(s as u64, src_seq[s], src_ts[s]), t + FRAME * i)
                .unwrap();
            src_seq[s] = src_seq[s].wrapping_add(1);
            src_ts[s] = src_ts[s].wrapping_add(960);
            if let Some(p) = prev {
                assert_eq!(o.seq, p.seq.wrapping_add(1), "packet {i}");
                let step = o.ts.wrapping_sub(p.ts) as i32;
                assert!(step >= 960, "packet {i}: ts step {step}");
                assert_eq!(o.marker, i % 7 == 0, "packet {i}");
            }
            prev = Some(o);
        }
    }

    /// Deterministic xorshift for the property test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random sources, switches, loss, reordering, duplicates and wraparound: the output
    /// must never repeat a sequence number, must continue with +1 at every switch, must
    /// keep each source's own gaps, and must have timestamps that never go backwards in
    /// sequence order.
    #[test]
    fn random_packet_sequences_produce_one_continuous_stream() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut r = SlotRewriter::new(OUT);
            // per source: next seq and ts, starting near the wrap points
            let mut next: Vec<(u16, u32)> = (0..4)
                .map(|_| {
                    (
                        u16::MAX - rng.below(200) as u16,
                        u32::MAX - rng.below(500_000) as u32,
                    )
                })
                .collect();
            let mut now = Instant::now();
            let mut current = 0usize;
            // extended outgoing seq -> extended outgoing ts, for the checks
            let mut out: std::collections::BTreeMap<i64, i64> = Default::default();
            let mut ext_seq: Option<(u16, i64)> = None;
            let mut ext_ts: Option<(u32, i64)> = None;
            let mut pending: Vec<RtpIn> = Vec::new();
            let mut last_in: Option<RtpIn> = None;
            for _ in 0..3000 {
                now += Duration::from_millis(rng.below(40));
                if rng.below(50) == 0 {
                    current = rng.below(4) as usize;
                    pending.clear(); // the router stops routing the old source
                }
                let (seq, ts) = next[current];
                let lost = rng.below(10) == 0;
                next[current] = (seq.wrapping_add(1), ts.wrapping_add(960));
                if lost {
                    continue;
                }
                let p = pkt(current as u64, seq, ts);
                let mut batch = vec![p];
                if rng.below(8) == 0 {
                    pending.push(p); // delay this one
                    batch.clear();
                } else if rng.below(8) == 0 && !pending.is_empty() {
                    batch.append(&mut pending);
                }
                if rng.below(10) == 0
                    && let Some(d) = last_in
                {
                    batch.push(d); // duplicate
                }
                last_in = Some(p);
                for p in batch {
                    if p.source != ParticipantId(current as u64) {
                        continue;
                    }
                    let prev_high = r.highest_seq();
                    let prev_src = r.current_source();
                    let Ok(o) = r.rewrite(p, now) else { continue };
                    assert_eq!(o.ssrc, OUT);
                    let es = match ext_seq {
                        None => 0,
                        Some((s, e)) => e + i64::from(o.seq.wrapping_sub(s) as i16),
                    };
                    let et = match ext_ts {
                        None => 0,
                        Some((t, e)) => e + i64::from(o.ts.wrapping_sub(t) as i32),
                    };
                    if ext_seq.is_none_or(|(_, e)| es > e) {
                        ext_seq = Some((o.seq, es));
                        ext_ts = Some((o.ts, et));
                    }
                    if (prev_src != r.current_source() || o.marker)
                        && let Some(h) = prev_high
                    {
                        assert_eq!(o.seq, h.wrapping_add(1), "seed {seed}: switch gap");
                    }
                    assert!(out.insert(es, et).is_none(), "seed {seed}: repeated seq");
                }
            }
            let v: Vec<_> = out.into_iter().collect();
            for w in v.windows(2) {
                assert!(w[1].1 >= w[0].1, "seed {seed}: ts backwards {w:?}");
                // 960 per sequence step within a run, at least one frame at a switch
                assert!(
                    w[1].1 - w[0].1 >= 960 * (w[1].0 - w[0].0),
                    "seed {seed}: ts step too small {w:?}"
                );
            }
            assert!(v.len() > 1000, "seed {seed}: forwarded {}", v.len());
        }
    }
}
