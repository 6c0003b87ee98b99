//! Receive-side statistics for one RTP stream: what a listener counts to judge the
//! SFU (packets, bytes, loss, duplicates, reordering, timestamp monotonicity, RFC 3550
//! jitter, arrival times, end-to-end latency). Pure logic fed with packet fields and
//! arrival instants, so tests can feed it synthetic packets.

use std::time::{Duration, Instant};

/// How many recent sequence numbers are remembered to tell a duplicate from a late packet.
const SEQ_WINDOW: u64 = 128;
/// Latency samples kept per stream (reservoir beyond this), bounding memory.
const MAX_LATENCY_SAMPLES: usize = 20_000;

/// Statistics of one received RTP stream.
#[derive(Clone, Debug)]
pub struct StreamStats {
    /// RTP clock rate, for jitter in seconds.
    clock_rate: u32,
    pub packets: u64,
    /// Payload bytes (RTP payload only, no headers).
    pub bytes: u64,
    pub first_arrival: Option<Instant>,
    pub last_arrival: Option<Instant>,
    /// Packets never seen so far (gaps in the sequence, minus late arrivals that filled them).
    pub lost: i64,
    /// Number of forward jumps in the sequence (each gap counts once).
    pub gap_events: u64,
    /// Largest single forward gap (packets missing).
    pub max_gap: u64,
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number (filled a gap late).
    pub reordered: u64,
    /// In-order packets whose RTP timestamp went backwards from the previous one.
    pub ts_backwards: u64,
    /// Times the SSRC changed mid-stream (an SFU slot must keep its SSRC).
    pub ssrc_changes: u64,
    /// Times the tracking base was reset on purpose (e.g. a source moved slots).
    pub resets: u64,
    /// RFC 3550 interarrival jitter, in timestamp units.
    jitter: f64,
    ssrc: Option<u32>,
    /// Extended highest sequence number seen.
    highest: Option<u64>,
    /// Bitmap of the last SEQ_WINDOW sequence numbers (bit i = highest - i seen).
    seen: u128,
    last_ts: u32,
    last_transit: Option<f64>,
    /// Reference instant for arrival times in timestamp units.
    epoch: Option<Instant>,
    /// Number of packets that carried an audio-level extension.
    pub audio_level_packets: u64,
    pub last_audio_level: Option<u8>,
    latency_us: Vec<u32>,
    latency_seen: u64,
}

impl StreamStats {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            packets: 0,
            bytes: 0,
            first_arrival: None,
            last_arrival: None,
            lost: 0,
            gap_events: 0,
            max_gap: 0,
            duplicates: 0,
            reordered: 0,
            ts_backwards: 0,
            ssrc_changes: 0,
            resets: 0,
            jitter: 0.0,
            ssrc: None,
            highest: None,
            seen: 0,
            last_ts: 0,
            last_transit: None,
            epoch: None,
            audio_level_packets: 0,
            last_audio_level: None,
            latency_us: Vec::new(),
            latency_seen: 0,
        }
    }

    /// Forgets sequence/timestamp continuity (counters stay): the next packet starts a
    /// new segment. Used when a source's packets legitimately jump (it moved slots).
    pub fn reset_sequence_base(&mut self) {
        self.highest = None;
        self.seen = 0;
        self.last_transit = None;
        self.resets += 1;
    }

    /// Records one packet.
    pub fn on_packet(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        payload_len: usize,
        arrival: Instant,
    ) {
        if let Some(prev) = self.ssrc
            && prev != ssrc
        {
            self.ssrc_changes += 1;
            self.highest = None;
            self.seen = 0;
            self.last_transit = None;
        }
        self.ssrc = Some(ssrc);
        self.packets += 1;
        self.bytes += payload_len as u64;
        self.first_arrival.get_or_insert(arrival);
        self.last_arrival = Some(arrival);

        let in_order = match self.highest {
            None => {
                self.highest = Some(u64::from(seq) + (1 << 16));
                self.seen = 1;
                true
            }
            Some(highest) => {
                let ext = extend_seq(highest, seq);
                if ext > highest {
                    let gap = ext - highest - 1;
                    if gap > 0 {
                        self.lost += gap as i64;
                        self.gap_events += 1;
                        self.max_gap = self.max_gap.max(gap);
                    }
                    let shift = ext - highest;
                    self.seen = if shift >= SEQ_WINDOW {
                        0
                    } else {
                        self.seen << shift
                    };
                    self.seen |= 1;
                    self.highest = Some(ext);
                    true
                } else {
                    let back = highest - ext;
                    if back < SEQ_WINDOW && self.seen & (1u128 << back) != 0 {
                        self.duplicates += 1;
                        // A duplicate adds nothing to the stream; undo its count.
                        self.packets -= 1;
                        self.bytes -= payload_len as u64;
                        return;
                    }
                    if back < SEQ_WINDOW {
                        self.seen |= 1u128 << back;
                    }
                    self.reordered += 1;
                    self.lost -= 1;
                    false
                }
            }
        };

        if in_order {
            if self.packets > 1
                && self.last_transit.is_some()
                && (ts.wrapping_sub(self.last_ts) as i32) < 0
            {
                self.ts_backwards += 1;
            }
            self.last_ts = ts;
        }

        // RFC 3550 A.8: jitter from the transit-time differences.
        let epoch = *self.epoch.get_or_insert(arrival);
        let arrival_ts =
            arrival.saturating_duration_since(epoch).as_secs_f64() * f64::from(self.clock_rate);
        let transit = arrival_ts - f64::from(ts);
        if let Some(last) = self.last_transit {
            let mut d = (transit - last).abs();
            // A 32-bit timestamp wrap shows up as a huge difference; ignore that sample.
            if d > f64::from(u32::MAX) / 2.0 {
                d = self.jitter;
            }
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// Records the RFC 6464 level carried by a packet.
    pub fn on_audio_level(&mut self, level: u8) {
        self.audio_level_packets += 1;
        self.last_audio_level = Some(level);
    }

    /// Records one end-to-end latency sample.
    pub fn on_latency(&mut self, latency: Duration) {
        let us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        self.latency_seen += 1;
        if self.latency_us.len() < MAX_LATENCY_SAMPLES {
            self.latency_us.push(us);
        } else {
            // Deterministic reservoir-ish replacement keeps memory bounded.
            let i = (self.latency_seen.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
                % MAX_LATENCY_SAMPLES;
            self.latency_us[i] = us;
        }
    }

    /// Forgets latency samples (e.g. to measure only a steady-state window).
    pub fn clear_latency(&mut self) {
        self.latency_us.clear();
        self.latency_seen = 0;
    }

    /// RFC 3550 jitter in seconds.
    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64((self.jitter / f64::from(self.clock_rate)).max(0.0))
    }

    /// Latency samples in microseconds (unsorted).
    pub fn latency_samples_us(&self) -> &[u32] {
        &self.latency_us
    }

    /// Latency percentile (0..=100) from the kept samples.
    pub fn latency_percentile(&self, p: f64) -> Option<Duration> {
        percentile(&self.latency_us, p).map(|us| Duration::from_micros(u64::from(us)))
    }

    /// Expected packets from the sequence span (received + still missing).
    pub fn expected(&self) -> u64 {
        (self.packets as i64 + self.lost).max(0) as u64
    }
}

/// Value at percentile `p` (0..=100) of `samples`, nearest-rank.
pub fn percentile(samples: &[u32], p: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1).min(v.len() - 1)).copied()
}

/// Extends a 16-bit sequence number to 64 bits, choosing the value closest to `highest`.
fn extend_seq(highest: u64, seq: u16) -> u64 {
    let base = highest & !0xffff;
    let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
    let mut best = base + u64::from(seq);
    let mut best_d = u64::MAX;
    for c in candidates {
        let v = c.wrapping_add(u64::from(seq));
        let d = v.abs_diff(highest);
        if d < best_d {
            best_d = d;
            best = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS_STEP: u32 = 960;

    fn feed(stats: &mut StreamStats, start: Instant, pkts: &[(u16, u32)]) {
        for (i, &(seq, ts)) in pkts.iter().enumerate() {
            stats.on_packet(
                1,
                seq,
                ts,
                100,
                start + Duration::from_millis(20 * i as u64),
            );
        }
    }

    #[test]
    fn clean_stream_has_no_loss_no_duplicates_and_zero_jitter() {
        let mut s = StreamStats::new(48_000);
        let t0 = Instant::now();
        let pkts: Vec<(u16, u32)> = (0..100u16).map(|i| (i, u32::from(i) * TS_STEP)).collect();
        feed(&mut s, t0, &pkts);
        assert_eq!(s.packets, 100);
        assert_eq!(s.bytes, 10_000);
        assert_eq!(s.lost, 0);
        assert_eq!(s.gap_events, 0);
        assert_eq!(s.duplicates, 0);
        assert_eq!(s.ts_backwards, 0);
        assert!(
            s.jitter() < Duration::from_micros(100),
            "jitter {:?}",
            s.jitter()
        );
        assert_eq!(s.expected(), 100);
    }

    #[test]
    fn injected_sequence_gap_is_counted_as_loss() {
        let mut s = StreamStats::new(48_000);
        let pkts = [(10, 0), (11, 960), (15, 4800), (16, 5760)];
        feed(&mut s, Instant::now(), &pkts);
        assert_eq!(s.lost, 3);
        assert_eq!(s.gap_events, 1);
        assert_eq!(s.max_gap, 3);
        assert_eq!(s.expected(), 7);
    }

    #[test]
    fn late_packet_fills_its_gap_and_duplicate_is_not_counted_twice() {
        let mut s = StreamStats::new(48_000);
        let pkts = [(1, 0), (3, 1920), (2, 960), (3, 1920), (4, 2880)];
        feed(&mut s, Instant::now(), &pkts);
        assert_eq!(s.lost, 0);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.packets, 4);
    }

    #[test]
    fn timestamp_going_backwards_is_detected() {
        let mut s = StreamStats::new(48_000);
        let pkts = [(1, 9600), (2, 10560), (3, 960), (4, 1920)];
        feed(&mut s, Instant::now(), &pkts);
        assert_eq!(s.ts_backwards, 1);
        assert_eq!(s.lost, 0);
    }

    #[test]
    fn sequence_and_timestamp_wraparound_are_not_errors() {
        let mut s = StreamStats::new(48_000);
        let pkts = [
            (65534, u32::MAX - 959 - 960),
            (65535, u32::MAX - 959),
            (0, 0),
            (1, 960),
        ];
        feed(&mut s, Instant::now(), &pkts);
        assert_eq!(s.lost, 0);
        assert_eq!(s.ts_backwards, 0);
        assert_eq!(s.duplicates, 0);
    }

    #[test]
    fn dtx_timestamp_jump_is_not_loss_or_backwards() {
        let mut s = StreamStats::new(48_000);
        // Sequence continuous, timestamp skips 2 s of silence.
        let pkts = [(1, 0), (2, 960), (3, 960 + 96_000), (4, 1920 + 96_000)];
        feed(&mut s, Instant::now(), &pkts);
        assert_eq!(s.lost, 0);
        assert_eq!(s.ts_backwards, 0);
    }

    #[test]
    fn jitter_grows_with_irregular_arrivals() {
        let mut s = StreamStats::new(48_000);
        let t0 = Instant::now();
        for i in 0..200u32 {
            let wobble = if i % 2 == 0 { 0 } else { 10 };
            s.on_packet(
                1,
                i as u16,
                i * TS_STEP,
                10,
                t0 + Duration::from_millis(u64::from(i) * 20 + wobble),
            );
        }
        let j = s.jitter();
        assert!(
            j > Duration::from_millis(5) && j < Duration::from_millis(15),
            "jitter {j:?}"
        );
    }

    #[test]
    fn ssrc_change_is_counted_and_does_not_look_like_loss() {
        let mut s = StreamStats::new(48_000);
        let t0 = Instant::now();
        s.on_packet(1, 100, 0, 10, t0);
        s.on_packet(2, 5000, 77, 10, t0);
        s.on_packet(2, 5001, 1037, 10, t0);
        assert_eq!(s.ssrc_changes, 1);
        assert_eq!(s.lost, 0);
    }

    #[test]
    fn latency_percentiles_use_nearest_rank() {
        let mut s = StreamStats::new(48_000);
        for ms in 1..=100u64 {
            s.on_latency(Duration::from_millis(ms));
        }
        assert_eq!(s.latency_percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(s.latency_percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(
            s.latency_percentile(100.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(percentile(&[], 50.0), None);
    }
}
