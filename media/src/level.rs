//! RFC 6464 audio levels: parsing the client-to-mixer header extension out of RTP
//! packets, and smoothing the per-packet values into a per-publisher level and a
//! "speaking" notion that the slot allocator and the active-speaker events use.
//!
//! Parsing works on raw bytes (a whole RTP packet, an RFC 8285 extension block, or one
//! extension element's payload), never allocates and never panics: anything malformed
//! or truncated yields `None`.
//!
//! Smoothing ([`LevelMeter`]) is an exponential moving average over *linear amplitude*
//! (not over dBov). Averaging in dB would let a stretch of near-silence drag a talker
//! down as much as a stretch of speech lifts them up; in amplitude the loud parts of
//! speech dominate, which matches what listeners perceive as "who is talking". The
//! average is a leaky integrator with a fast attack and a slower release, evaluated in
//! continuous time: every packet covers one frame (20 ms for Opus as negotiated by
//! browsers), and any time beyond that since the previous packet counts as silence.
//! That is what makes Opus DTX work: during silence DTX sends one packet every ~400 ms,
//! and a publisher that stops sending altogether simply decays towards silence as
//! `now` advances, without needing a packet to arrive. Nothing here reads the clock.
//!
//! The V (voice activity) bit is parsed and reported but not trusted: browsers commonly
//! leave it unset, so "speaking" is derived from the smoothed level instead, with a
//! hangover so that the gaps between words do not toggle it.

use std::time::{Duration, Instant};

/// RFC 8285 one-byte header-extension profile.
pub const PROFILE_ONE_BYTE: u16 = 0xBEDE;
/// RFC 8285 two-byte header-extension profile (the low 4 bits are "appbits").
pub const PROFILE_TWO_BYTE: u16 = 0x1000;

/// The quietest level RFC 6464 can express (-127 dBov, digital silence).
pub const SILENT_DBOV: u8 = 127;

/// Levels below this many dB under overload map to 0 on the 0..=1 scale; the scale is
/// linear in dB above it. 80 dB spans everything from a quiet room with noise
/// suppression to a clipping microphone.
const LEVEL_RANGE_DB: f32 = 80.0;

/// One RFC 6464 audio-level value as carried in a packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AudioLevel {
    /// Level in -dBov: 0 is the loudest, 127 is silence.
    pub dbov: u8,
    /// The V flag: the sender's voice-activity detector claims speech.
    pub voice: bool,
}

impl AudioLevel {
    /// Parses the payload of one audio-level extension element (one byte is used; a
    /// longer payload, which some senders pad to, is accepted).
    pub fn from_payload(payload: &[u8]) -> Option<AudioLevel> {
        let b = *payload.first()?;
        Some(AudioLevel {
            dbov: b & 0x7F,
            voice: b & 0x80 != 0,
        })
    }
}

/// Finds the audio level in a whole (unencrypted, i.e. after SRTP) RTP packet.
///
/// `ext_id` is the id negotiated for `urn:ietf:params:rtp-hdrext:ssrc-audio-level`.
/// Returns `None` when the packet has no such extension or is malformed.
pub fn audio_level_from_rtp(packet: &[u8], ext_id: u8) -> Option<AudioLevel> {
    let first = *packet.first()?;
    if first >> 6 != 2 || first & 0x10 == 0 {
        return None; // not RTP version 2, or no header extension
    }
    let csrc_count = usize::from(first & 0x0F);
    let ext_start = 12 + 4 * csrc_count;
    let profile = u16::from_be_bytes([*packet.get(ext_start)?, *packet.get(ext_start + 1)?]);
    let words = u16::from_be_bytes([*packet.get(ext_start + 2)?, *packet.get(ext_start + 3)?]);
    let body_start = ext_start + 4;
    let block = packet.get(body_start..body_start + 4 * usize::from(words))?;
    audio_level_from_extension_block(profile, block, ext_id)
}

/// Finds the audio level in an RFC 8285 header-extension block (the bytes after the
/// profile and length words), in either the one-byte or the two-byte form.
pub fn audio_level_from_extension_block(
    profile: u16,
    block: &[u8],
    ext_id: u8,
) -> Option<AudioLevel> {
    find_extension(profile, block, ext_id).and_then(AudioLevel::from_payload)
}

/// Returns the payload of extension element `ext_id` in an RFC 8285 block.
fn find_extension(profile: u16, block: &[u8], ext_id: u8) -> Option<&[u8]> {
    if ext_id == 0 {
        return None; // id 0 is padding in both forms, never a real extension
    }
    let mut i = 0usize;
    if profile == PROFILE_ONE_BYTE {
        while i < block.len() {
            let b = block[i];
            if b == 0 {
                i += 1; // padding byte
                continue;
            }
            let id = b >> 4;
            if id == 15 {
                return None; // RFC 8285: id 15 means stop parsing this block
            }
            let len = usize::from(b & 0x0F) + 1;
            let data = block.get(i + 1..i + 1 + len)?;
            if id == ext_id {
                return Some(data);
            }
            i += 1 + len;
        }
        None
    } else if profile & 0xFFF0 == PROFILE_TWO_BYTE {
        while i < block.len() {
            let id = block[i];
            if id == 0 {
                i += 1; // padding byte
                continue;
            }
            let len = usize::from(*block.get(i + 1)?);
            let data = block.get(i + 2..i + 2 + len)?;
            if id == ext_id {
                return Some(data);
            }
            i += 2 + len;
        }
        None
    } else {
        None
    }
}

/// Tuning of the level smoother. The defaults suit Opus at 20 ms frames.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelConfig {
    /// Audio duration one packet carries; time beyond it between packets is silence.
    pub frame: Duration,
    /// Time constant while the level rises: short, so a new talker is noticed quickly.
    pub attack: Duration,
    /// Time constant while the level falls and during gaps: longer, so the pauses
    /// between words do not make a talker look silent.
    pub release: Duration,
    /// Smoothed level (in -dBov) at or above which a publisher counts as speaking.
    pub speaking_dbov: u8,
    /// How long "speaking" persists after the level was last above the threshold.
    pub hangover: Duration,
}

impl Default for LevelConfig {
    fn default() -> Self {
        LevelConfig {
            frame: Duration::from_millis(20),
            attack: Duration::from_millis(80),
            release: Duration::from_millis(300),
            speaking_dbov: 50,
            hangover: Duration::from_millis(300),
        }
    }
}

/// Precomputed constants derived from a [`LevelConfig`], shared by every meter so the
/// per-packet update is a table lookup and a multiply-add (no `powf`, no `exp` unless
/// there was a gap).
#[derive(Clone, Debug)]
pub struct LevelSmoothing {
    cfg: LevelConfig,
    /// Linear amplitude of each -dBov value 0..=127.
    amplitude: [f32; 128],
    attack_alpha: f32,
    release_alpha: f32,
    /// 1 / release time constant in seconds, for decaying over gaps.
    release_rate: f32,
    speaking_amp: f32,
}

impl LevelSmoothing {
    pub fn new(cfg: LevelConfig) -> Self {
        let mut amplitude = [0f32; 128];
        for (dbov, a) in amplitude.iter_mut().enumerate() {
            *a = 10f32.powf(-(dbov as f32) / 20.0);
        }
        // Digital silence is exactly zero so a silent publisher can reach level 0.
        amplitude[usize::from(SILENT_DBOV)] = 0.0;
        let frame = cfg.frame.as_secs_f32().max(1e-4);
        let alpha = |tau: Duration| 1.0 - (-frame / tau.as_secs_f32().max(1e-4)).exp();
        LevelSmoothing {
            attack_alpha: alpha(cfg.attack),
            release_alpha: alpha(cfg.release),
            release_rate: 1.0 / cfg.release.as_secs_f32().max(1e-4),
            speaking_amp: amplitude[usize::from(cfg.speaking_dbov.min(126))],
            amplitude,
            cfg,
        }
    }

    pub fn config(&self) -> &LevelConfig {
        &self.cfg
    }

    /// Decay factor for the silence after a packet's own frame.
    fn gap_decay(&self, since_last: Duration) -> f32 {
        let silent = since_last.saturating_sub(self.cfg.frame);
        if silent.is_zero() {
            1.0
        } else {
            (-silent.as_secs_f32() * self.release_rate).exp()
        }
    }
}

impl Default for LevelSmoothing {
    fn default() -> Self {
        LevelSmoothing::new(LevelConfig::default())
    }
}

/// Maps a linear amplitude to the 0..=1 scale used in events (linear in dB over
/// [`LEVEL_RANGE_DB`]).
pub fn amplitude_to_unit(amp: f32) -> f32 {
    if amp.is_nan() || amp <= 0.0 {
        return 0.0;
    }
    let db = 20.0 * amp.log10();
    (1.0 + db / LEVEL_RANGE_DB).clamp(0.0, 1.0)
}

/// Maps a -dBov value to the 0..=1 scale (for callers that want an unsmoothed level).
pub fn dbov_to_unit(dbov: u8) -> f32 {
    if dbov >= SILENT_DBOV {
        return 0.0;
    }
    (1.0 - f32::from(dbov) / LEVEL_RANGE_DB).clamp(0.0, 1.0)
}

/// Per-publisher smoothed level. Small (24 bytes of state plus two instants) and
/// allocation-free; the constants live in a shared [`LevelSmoothing`].
#[derive(Clone, Debug, Default)]
pub struct LevelMeter {
    /// Smoothed linear amplitude as of `last`.
    amp: f32,
    /// When the last packet was observed.
    last: Option<Instant>,
    /// Speaking until this instant (hangover included).
    speaking_until: Option<Instant>,
    /// V flag of the last packet, for diagnostics.
    last_voice: bool,
    /// Sum of raw (unsmoothed) packet amplitudes since the last `take_window`.
    window_sum: f32,
    /// Packets in that sum.
    window_packets: u32,
}

impl LevelMeter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one packet's level. Cheap: call it for every packet.
    pub fn observe(&mut self, s: &LevelSmoothing, level: AudioLevel, now: Instant) {
        if let Some(last) = self.last {
            // A packet older than the previous one (time going backwards in a test or a
            // reordered batch) decays nothing.
            self.amp *= s.gap_decay(now.saturating_duration_since(last));
        }
        let sample = s.amplitude[usize::from(level.dbov.min(SILENT_DBOV))];
        let alpha = if sample > self.amp {
            s.attack_alpha
        } else {
            s.release_alpha
        };
        self.amp += alpha * (sample - self.amp);
        self.last = Some(match self.last {
            Some(last) if last > now => last,
            _ => now,
        });
        self.last_voice = level.voice;
        self.window_sum += sample;
        self.window_packets = self.window_packets.saturating_add(1);
        // Speaking lasts while packets are loud themselves, plus the hangover for the gaps
        // between words. Keyed on the smoothed level, the indicator lingered for the slow
        // release's whole decay (~1 s) after someone stopped.
        if sample >= s.speaking_amp && s.speaking_amp > 0.0 {
            self.speaking_until = Some(now + s.cfg.hangover);
        }
    }

    /// Smoothed linear amplitude at `now` (decayed over the time since the last packet).
    pub fn amplitude(&self, s: &LevelSmoothing, now: Instant) -> f32 {
        match self.last {
            None => 0.0,
            Some(last) => self.amp * s.gap_decay(now.saturating_duration_since(last)),
        }
    }

    /// Smoothed level at `now` on the 0..=1 scale.
    pub fn level(&self, s: &LevelSmoothing, now: Instant) -> f32 {
        amplitude_to_unit(self.amplitude(s, now))
    }

    /// Whether the publisher counts as speaking at `now` (hangover included).
    pub fn speaking(&self, now: Instant) -> bool {
        self.speaking_until.is_some_and(|until| now < until)
    }

    /// The V flag of the most recent packet.
    pub fn last_voice_flag(&self) -> bool {
        self.last_voice
    }

    /// Mean raw level (0..=1) over the window of length `window` that ends now, then
    /// starts a new window. Frames without a packet count as silence, so DTX and a
    /// publisher that stopped sending read low. Unlike the smoothed [`LevelMeter::level`]
    /// it has no tail: a burst affects only the windows it falls into, which is what
    /// the slot allocator needs to judge challengers (see `slots`).
    pub fn take_window(&mut self, s: &LevelSmoothing, window: Duration) -> f32 {
        let frames = (window.as_secs_f32() / s.cfg.frame.as_secs_f32().max(1e-4)).max(1.0);
        // More packets than frames (a jitter burst) must not inflate the mean.
        let divisor = frames.max(self.window_packets as f32);
        let mean = self.window_sum / divisor;
        self.window_sum = 0.0;
        self.window_packets = 0;
        amplitude_to_unit(mean)
    }

    /// Mean raw level of the current window so far, without resetting it.
    pub fn peek_window(&self, s: &LevelSmoothing, window: Duration) -> f32 {
        let mut copy = self.clone();
        copy.take_window(s, window)
    }

    /// Forgets everything (e.g. on mute, so an unmuted publisher starts from silence).
    pub fn reset(&mut self) {
        *self = LevelMeter::default();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Builds an RTP packet with the given CSRC count and a raw extension block.
    fn rtp(csrcs: u8, profile: u16, block: &[u8]) -> Vec<u8> {
        assert_eq!(block.len() % 4, 0);
        let mut p = vec![0x90 | csrcs, 111, 0x12, 0x34, 0, 0, 0x03, 0xC0, 1, 2, 3, 4];
        for i in 0..csrcs {
            p.extend_from_slice(&[0, 0, 0, i]);
        }
        p.extend_from_slice(&profile.to_be_bytes());
        p.extend_from_slice(&((block.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(block);
        p.extend_from_slice(&[0xAA; 40]); // Opus payload
        p
    }

    #[test]
    fn parses_one_byte_form_level_and_voice_flag() {
        // id 1 len 1 (0x10) level 0x80|42 ; padding to 4 bytes
        let p = rtp(0, 0xBEDE, &[0x10, 0x80 | 42, 0, 0]);
        assert_eq!(
            audio_level_from_rtp(&p, 1),
            Some(AudioLevel {
                dbov: 42,
                voice: true
            })
        );
    }

    #[test]
    fn parses_one_byte_form_after_other_extensions_and_csrcs() {
        // id 3 (abs-send-time, 3 bytes), padding, id 5 audio level 17 without V.
        let block = [0x32, 1, 2, 3, 0, 0x50, 17, 0];
        let p = rtp(2, 0xBEDE, &block);
        assert_eq!(
            audio_level_from_rtp(&p, 5),
            Some(AudioLevel {
                dbov: 17,
                voice: false
            })
        );
        assert_eq!(audio_level_from_rtp(&p, 4), None);
    }

    #[test]
    fn parses_two_byte_form_including_appbits_profile() {
        // id 20 len 3 (other), id 1 len 1 level 90
        let block = [20, 3, 9, 9, 9, 1, 1, 90];
        for profile in [0x1000u16, 0x1003] {
            let p = rtp(0, profile, &block);
            assert_eq!(
                audio_level_from_rtp(&p, 1),
                Some(AudioLevel {
                    dbov: 90,
                    voice: false
                })
            );
        }
        // a zero-length element of the wanted id carries no level
        let p = rtp(0, 0x1000, &[1, 0, 0, 0]);
        assert_eq!(audio_level_from_rtp(&p, 1), None);
    }

    #[test]
    fn one_byte_id_15_stops_parsing() {
        let p = rtp(0, 0xBEDE, &[0xF0, 0x10, 5, 0]);
        assert_eq!(audio_level_from_rtp(&p, 1), None);
    }

    #[test]
    fn unknown_profile_and_missing_extension_bit_yield_none() {
        let p = rtp(0, 0xABCD, &[0x10, 5, 0, 0]);
        assert_eq!(audio_level_from_rtp(&p, 1), None);
        let mut q = rtp(0, 0xBEDE, &[0x10, 5, 0, 0]);
        q[0] &= !0x10;
        assert_eq!(audio_level_from_rtp(&q, 1), None);
        let mut v1 = rtp(0, 0xBEDE, &[0x10, 5, 0, 0]);
        v1[0] = (v1[0] & 0x3F) | 0x40;
        assert_eq!(audio_level_from_rtp(&v1, 1), None);
    }

    #[test]
    fn malformed_and_truncated_input_never_panics_and_yields_none() {
        let good = rtp(1, 0xBEDE, &[0x10, 33, 0, 0]);
        assert!(audio_level_from_rtp(&good, 1).is_some());
        // every truncation that cuts into the header or extension block
        for len in 0..(12 + 4 + 4 + 4) {
            assert_eq!(audio_level_from_rtp(&good[..len], 1), None, "len {len}");
        }
        // extension length claims more words than present
        let mut long = good.clone();
        long[18] = 0xFF;
        long[19] = 0xFF;
        long.truncate(24);
        assert_eq!(audio_level_from_rtp(&long, 1), None);
        // element lengths that run past the block
        assert_eq!(audio_level_from_extension_block(0xBEDE, &[0x2F], 2), None);
        assert_eq!(audio_level_from_extension_block(0x1000, &[2], 2), None);
        assert_eq!(
            audio_level_from_extension_block(0x1000, &[2, 200, 1], 2),
            None
        );
        assert_eq!(audio_level_from_extension_block(0xBEDE, &[], 1), None);
        assert_eq!(
            audio_level_from_extension_block(0xBEDE, &[0x10, 1], 0),
            None
        );
        assert_eq!(AudioLevel::from_payload(&[]), None);
    }

    #[test]
    fn fuzzed_bytes_never_panic() {
        // Deterministic xorshift so the test is reproducible.
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = [0u8; 64];
        for _ in 0..50_000 {
            let len = (next() % 64) as usize;
            for b in buf.iter_mut().take(len) {
                *b = next() as u8;
            }
            // Bias towards plausible headers so the extension parser is exercised.
            if len > 0 && next() % 2 == 0 {
                buf[0] = 0x90 | (buf[0] & 0x03);
            }
            if len > 16 && next() % 2 == 0 {
                let profile: u16 = if next() % 2 == 0 { 0xBEDE } else { 0x1000 };
                let off = 12 + 4 * usize::from(buf[0] & 0x0F);
                if off + 4 <= len {
                    buf[off..off + 2].copy_from_slice(&profile.to_be_bytes());
                }
            }
            let id = (next() % 16) as u8;
            if let Some(l) = audio_level_from_rtp(&buf[..len], id) {
                assert!(l.dbov <= 127);
            }
        }
    }

    fn t0() -> Instant {
        Instant::now()
    }

    const FRAME: Duration = Duration::from_millis(20);

    fn lvl(dbov: u8) -> AudioLevel {
        AudioLevel { dbov, voice: false }
    }

    /// Feeds `n` packets at `dbov`, one per frame, starting at `start`; returns the time
    /// of the last packet.
    fn feed(m: &mut LevelMeter, s: &LevelSmoothing, start: Instant, n: u32, dbov: u8) -> Instant {
        let mut t = start;
        for i in 0..n {
            t = start + FRAME * i;
            m.observe(s, lvl(dbov), t);
        }
        t
    }

    #[test]
    fn steady_speech_converges_to_its_level() {
        let s = LevelSmoothing::default();
        let mut m = LevelMeter::new();
        let t = feed(&mut m, &s, t0(), 100, 30);
        let got = m.level(&s, t);
        assert!((got - dbov_to_unit(30)).abs() < 0.01, "{got}");
        assert!(m.speaking(t));
    }

    #[test]
    fn louder_speech_ranks_higher() {
        let s = LevelSmoothing::default();
        let (mut a, mut b) = (LevelMeter::new(), LevelMeter::new());
        let start = t0();
        let ta = feed(&mut a, &s, start, 50, 20);
        let tb = feed(&mut b, &s, start, 50, 40);
        assert_eq!(ta, tb);
        assert!(a.level(&s, ta) > b.level(&s, tb) + 0.2);
    }

    #[test]
    fn attack_is_faster_than_release() {
        let s = LevelSmoothing::default();
        let start = t0();
        let mut m = LevelMeter::new();
        let t = feed(&mut m, &s, start, 5, 30); // 100 ms of speech from silence
        assert!(m.speaking(t), "a new talker is noticed within 100 ms");
        let mut m2 = LevelMeter::new();
        let t = feed(&mut m2, &s, start, 200, 30);
        let loud = m2.amplitude(&s, t);
        let t = feed(&mut m2, &s, t + FRAME, 5, 127); // 100 ms of silence packets
        assert!(
            m2.amplitude(&s, t) > loud * 0.6,
            "a short pause keeps most of the level"
        );
    }

    #[test]
    fn silent_publisher_stays_at_zero() {
        let s = LevelSmoothing::default();
        let mut m = LevelMeter::new();
        let t = feed(&mut m, &s, t0(), 50, 127);
        assert_eq!(m.level(&s, t), 0.0);
        assert!(!m.speaking(t));
        assert_eq!(LevelMeter::new().level(&s, t), 0.0);
    }

    #[test]
    fn publisher_that_stops_sending_decays_to_silence_over_time() {
        let s = LevelSmoothing::default();
        let mut m = LevelMeter::new();
        let t = feed(&mut m, &s, t0(), 100, 25);
        let at_stop = m.level(&s, t);
        let later = m.level(&s, t + Duration::from_millis(500));
        let much_later = m.level(&s, t + Duration::from_secs(5));
        assert!(later < at_stop, "{later} < {at_stop}");
        assert_eq!(much_later, 0.0);
        assert!(m.speaking(t + Duration::from_millis(250)), "hangover");
        assert!(
            !m.speaking(t + Duration::from_millis(400)),
            "hangover expired"
        );
    }

    #[test]
    fn speaking_ends_within_the_hangover_of_the_last_loud_frame_and_spans_word_gaps() {
        let s = LevelSmoothing::default();
        let mut m = LevelMeter::new();
        // Loud talk for 2 s, then silent frames (the client keeps sending, as without DTX).
        let t = feed(&mut m, &s, t0(), 100, 20);
        assert!(m.speaking(t));
        let mut now = t;
        let mut ended = None;
        for _ in 0..100 {
            now += Duration::from_millis(20);
            m.observe(
                &s,
                AudioLevel {
                    dbov: 127,
                    voice: false,
                },
                now,
            );
            if ended.is_none() && !m.speaking(now) {
                ended = Some(now - t);
            }
        }
        let ended = ended.expect("stops speaking");
        assert!(
            ended <= Duration::from_millis(320),
            "indicator lingered {ended:?} after the talker stopped"
        );
        // A 200 ms pause between words keeps the talker speaking throughout.
        let mut m = LevelMeter::new();
        let mut now = feed(&mut m, &s, t0(), 50, 20);
        for _ in 0..10 {
            now += Duration::from_millis(20);
            m.observe(
                &s,
                AudioLevel {
                    dbov: 127,
                    voice: false,
                },
                now,
            );
            assert!(m.speaking(now), "a word gap is not the end of speech");
        }
    }

    #[test]
    fn dtx_silence_with_sparse_packets_decays_like_silence() {
        let s = LevelSmoothing::default();
        let mut m = LevelMeter::new();
        let mut t = feed(&mut m, &s, t0(), 100, 25);
        // DTX: one comfort-noise packet every 400 ms at -90 dBov.
        for _ in 0..10 {
            t += Duration::from_millis(400);
            m.observe(&s, lvl(90), t);
        }
        assert!(m.level(&s, t) < dbov_to_unit(70), "{}", m.level(&s, t));
        assert!(!m.speaking(t));
    }

    #[test]
    fn bursty_arrival_does_not_overshoot() {
        let s = LevelSmoothing::default();
        let mut m = LevelMeter::new();
        let start = t0();
        // 50 packets all arriving at the same instant (a jitter burst)
        for _ in 0..50 {
            m.observe(&s, lvl(30), start);
        }
        assert!(m.level(&s, start) <= dbov_to_unit(30) + 1e-4);
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let s = LevelSmoothing::default();
        let mut m = LevelMeter::new();
        let start = t0() + Duration::from_secs(10);
        m.observe(&s, lvl(30), start);
        m.observe(&s, lvl(30), start - Duration::from_secs(5));
        assert!(m.level(&s, start - Duration::from_secs(9)) > 0.0);
    }

    #[test]
    fn window_level_counts_missing_frames_as_silence_and_has_no_tail() {
        let s = LevelSmoothing::default();
        let mut m = LevelMeter::new();
        let win = Duration::from_millis(300);
        let t = feed(&mut m, &s, t0(), 15, 30); // a full window of speech
        assert!((m.take_window(&s, win) - dbov_to_unit(30)).abs() < 1e-3);
        // next window: a loud 100 ms burst, then nothing
        let t = feed(&mut m, &s, t + FRAME, 5, 10);
        let burst = m.take_window(&s, win);
        assert!(
            burst < dbov_to_unit(10) && burst > dbov_to_unit(30),
            "{burst}"
        );
        // the window after the burst reads silent although the EMA still has a tail
        assert_eq!(m.take_window(&s, win), 0.0);
        assert!(m.level(&s, t + Duration::from_millis(150)) > dbov_to_unit(30));
        // a jitter burst of 40 packets in one window does not exceed the packets' level
        for _ in 0..40 {
            m.observe(&s, lvl(30), t);
        }
        assert!(m.peek_window(&s, win) <= dbov_to_unit(30) + 1e-4);
        assert!(m.take_window(&s, win) > 0.0, "peek does not reset");
    }

    #[test]
    fn reset_forgets_level_and_speaking() {
        let s = LevelSmoothing::default();
        let mut m = LevelMeter::new();
        let t = feed(&mut m, &s, t0(), 50, 20);
        m.reset();
        assert_eq!(m.level(&s, t), 0.0);
        assert!(!m.speaking(t));
    }

    #[test]
    fn unit_scale_is_monotonic_and_bounded() {
        let mut prev = f32::INFINITY;
        for dbov in 0..=127u8 {
            let u = dbov_to_unit(dbov);
            assert!((0.0..=1.0).contains(&u));
            assert!(u <= prev);
            prev = u;
        }
        assert_eq!(amplitude_to_unit(1.0), 1.0);
        assert_eq!(amplitude_to_unit(2.0), 1.0);
        assert_eq!(amplitude_to_unit(f32::NAN), 0.0);
        assert!((amplitude_to_unit(10f32.powf(-2.0)) - dbov_to_unit(40)).abs() < 1e-4);
    }
}
