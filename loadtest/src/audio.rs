//! Audio for the test client: signal generators, Opus encode/decode, and the
//! measurements tests make on decoded audio (RFC 6464 level, RMS, dominant frequency).
//!
//! Everything is 48 kHz mono, 20 ms frames (960 samples), the shape WebRTC audio takes.

use crate::Error;
use bytes::Bytes;

/// Opus RTP clock rate and the PCM sample rate used throughout.
pub const SAMPLE_RATE: u32 = 48_000;
/// One frame is 20 ms.
pub const FRAME_MS: u32 = 20;
/// Samples per 20 ms frame at 48 kHz (also the RTP timestamp step per frame).
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE / 1000 * FRAME_MS) as usize;
/// RFC 6464 level for digital silence (-127 dBov is the floor).
pub const LEVEL_SILENCE: u8 = 127;

/// Something that produces PCM frame after frame.
pub trait SignalSource: Send {
    /// Fills `out` (one frame of [`FRAME_SAMPLES`]) with the next samples.
    fn fill(&mut self, out: &mut [i16]);
}

/// A steady sine tone.
#[derive(Clone, Debug)]
pub struct Tone {
    freq: f64,
    amplitude: f64,
    phase: f64,
}

impl Tone {
    /// `amplitude` is relative to full scale (0..=1).
    pub fn new(freq: f64, amplitude: f64) -> Self {
        Self {
            freq,
            amplitude: amplitude.clamp(0.0, 1.0),
            phase: 0.0,
        }
    }

    fn next_sample(&mut self, gain: f64) -> i16 {
        let v = (self.phase * std::f64::consts::TAU).sin() * self.amplitude * gain;
        self.phase = (self.phase + self.freq / f64::from(SAMPLE_RATE)).fract();
        (v * f64::from(i16::MAX)) as i16
    }
}

impl SignalSource for Tone {
    fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            *s = self.next_sample(1.0);
        }
    }
}

/// Digital silence (lets DTX stop the stream).
#[derive(Clone, Copy, Debug, Default)]
pub struct Silence;

impl SignalSource for Silence {
    fn fill(&mut self, out: &mut [i16]) {
        out.fill(0);
    }
}

/// A voice-like signal: a tone whose amplitude follows syllables (about 4-5 per
/// second, smooth attack and decay) grouped into talk spurts separated by pauses of
/// real silence, so Opus DTX kicks in between spurts as it does for speech. The
/// pattern is pseudo-random but deterministic per seed, so runs are repeatable.
#[derive(Clone, Debug)]
pub struct VoiceLike {
    tone: Tone,
    rng: u64,
    /// Samples left in the current phase (a syllable, a gap between syllables, or a pause).
    remaining: u32,
    /// Length of the current syllable, for its envelope.
    syllable_len: u32,
    state: VoiceState,
    /// Syllables left in the current talk spurt.
    syllables_left: u32,
    /// Fraction of time paused, roughly (0 = talks all the time).
    pause_ratio: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VoiceState {
    Syllable,
    Gap,
    Pause,
}

impl VoiceLike {
    /// `freq` is the carrier tone (each speaker gets its own so listeners can tell
    /// them apart); `pause_ratio` in 0..=0.9 sets roughly how much of the time is silence.
    pub fn new(freq: f64, amplitude: f64, seed: u64, pause_ratio: f64) -> Self {
        let mut v = Self {
            tone: Tone::new(freq, amplitude),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            remaining: 0,
            syllable_len: 1,
            state: VoiceState::Pause,
            syllables_left: 0,
            pause_ratio: pause_ratio.clamp(0.0, 0.9),
        };
        v.start_spurt();
        v
    }

    fn rand_unit(&mut self) -> f64 {
        // xorshift64*: plenty for an envelope, and no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn ms(ms: f64) -> u32 {
        (ms * f64::from(SAMPLE_RATE) / 1000.0) as u32
    }

    fn start_spurt(&mut self) {
        self.syllables_left = 4 + (self.rand_unit() * 8.0) as u32;
        self.start_syllable();
    }

    fn start_syllable(&mut self) {
        self.state = VoiceState::Syllable;
        self.syllable_len = Self::ms(120.0 + self.rand_unit() * 120.0).max(1);
        self.remaining = self.syllable_len;
    }

    fn advance_phase(&mut self) {
        match self.state {
            VoiceState::Syllable => {
                self.syllables_left = self.syllables_left.saturating_sub(1);
                if self.syllables_left == 0 && self.pause_ratio > 0.0 {
                    self.state = VoiceState::Pause;
                    // A spurt lasts about 2 s; size the pause to hit the requested ratio.
                    let mean_pause = 2000.0 * self.pause_ratio / (1.0 - self.pause_ratio);
                    self.remaining = Self::ms(mean_pause * (0.5 + self.rand_unit())).max(1);
                } else {
                    if self.syllables_left == 0 {
                        self.syllables_left = 4 + (self.rand_unit() * 8.0) as u32;
                    }
                    self.state = VoiceState::Gap;
                    self.remaining = Self::ms(30.0 + self.rand_unit() * 50.0).max(1);
                }
            }
            VoiceState::Gap => self.start_syllable(),
            VoiceState::Pause => self.start_spurt(),
        }
    }
}

impl SignalSource for VoiceLike {
    fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            while self.remaining == 0 {
                self.advance_phase();
            }
            let gain = match self.state {
                VoiceState::Syllable => {
                    // Raised-cosine envelope over the syllable.
                    let pos = f64::from(self.syllable_len - self.remaining)
                        / f64::from(self.syllable_len);
                    0.5 - 0.5 * (pos * std::f64::consts::TAU).cos()
                }
                // Low murmur between syllables, true silence in pauses.
                VoiceState::Gap => 0.05,
                VoiceState::Pause => 0.0,
            };
            *s = if self.state == VoiceState::Pause {
                0
            } else {
                self.tone.next_sample(gain)
            };
            self.remaining -= 1;
        }
    }
}

/// One encoded 20 ms frame.
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    /// The Opus packet.
    pub payload: Bytes,
    /// True when the encoder is in DTX and this frame need not be sent (a packet of at
    /// most 2 bytes); senders skip it, and the RTP timestamp still advances.
    pub dtx: bool,
    /// RFC 6464 level of the PCM that was encoded (0 loud .. 127 silent).
    pub level: u8,
}

/// Opus encoder as a WebRTC sender configures it: 48 kHz mono VoIP, in-band FEC, DTX.
pub struct OpusEncoder {
    enc: opus::Encoder,
    buf: Vec<u8>,
}

impl OpusEncoder {
    /// In-band FEC and DTX on, 32 kb/s, expecting some loss (which FEC needs to be used).
    pub fn new() -> Result<Self, Error> {
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        enc.set_bitrate(opus::Bitrate::Bits(32_000))?;
        enc.set_inband_fec(true)?;
        enc.set_packet_loss_perc(10)?;
        enc.set_dtx(true)?;
        Ok(Self {
            enc,
            buf: vec![0; 1500],
        })
    }

    /// Encodes one frame of exactly [`FRAME_SAMPLES`] samples.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<EncodedFrame, Error> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(Error::Invalid(format!(
                "opus frame must be {FRAME_SAMPLES} samples, got {}",
                pcm.len()
            )));
        }
        let n = self.enc.encode(pcm, &mut self.buf)?;
        Ok(EncodedFrame {
            payload: Bytes::copy_from_slice(&self.buf[..n]),
            dtx: n <= 2,
            level: audio_level(pcm),
        })
    }
}

/// Opus decoder for one stream (state carries across packets, so one per RTP stream).
pub struct OpusDecoder {
    dec: opus::Decoder,
    pcm: Vec<i16>,
}

impl OpusDecoder {
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            dec: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
            // 120 ms is the longest Opus packet.
            pcm: vec![0; SAMPLE_RATE as usize * 120 / 1000],
        })
    }

    /// Decodes one packet; the returned PCM is valid until the next call.
    /// A malformed packet is an error, not a panic.
    pub fn decode(&mut self, payload: &[u8]) -> Result<&[i16], Error> {
        let n = self.dec.decode(payload, &mut self.pcm, false)?;
        Ok(&self.pcm[..n.min(self.pcm.len())])
    }
}

/// RFC 6464 audio level of a PCM block: -dBov of its RMS, 0 (full scale) to 127
/// (silence), computed as WebRTC senders do (full-scale sine is 3).
pub fn audio_level(pcm: &[i16]) -> u8 {
    let r = rms(pcm);
    if r <= 0.0 {
        return LEVEL_SILENCE;
    }
    let dbov = 20.0 * r.log10();
    (-dbov).round().clamp(0.0, f64::from(LEVEL_SILENCE)) as u8
}

/// Encodes the one-byte RFC 6464 extension payload (V flag + level).
pub fn encode_audio_level(level: u8, voice: bool) -> u8 {
    (u8::from(voice) << 7) | level.min(LEVEL_SILENCE)
}

/// Parses the RFC 6464 extension payload: `(level, voice)`; `None` if empty.
pub fn parse_audio_level(ext: &[u8]) -> Option<(u8, bool)> {
    let b = *ext.first()?;
    Some((b & 0x7f, b & 0x80 != 0))
}

/// RMS relative to full scale (0..=1 for a square wave at full scale).
pub fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm
        .iter()
        .map(|&s| {
            let x = f64::from(s) / 32768.0;
            x * x
        })
        .sum();
    (sum / pcm.len() as f64).sqrt()
}

/// Power of `freq` in `pcm` by the Goertzel algorithm (normalised by length).
pub fn goertzel_power(pcm: &[i16], freq: f64, sample_rate: u32) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let w = std::f64::consts::TAU * freq / f64::from(sample_rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = f64::from(x) / 32768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let p = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    p / (pcm.len() as f64 * pcm.len() as f64)
}

/// Frames quieter than this RMS are ignored when looking for the dominant frequency,
/// so DTX comfort noise and pauses do not dilute the estimate.
const ACTIVE_RMS: f64 = 0.005;

/// Dominant frequency of the audible parts of `pcm` (Hz), or `None` when it is
/// (nearly) silent. Coarse Goertzel scan (50..4000 Hz, 10 Hz steps) on a short window,
/// then a fine scan (0.25 Hz steps) around the peak over up to one second of audio.
pub fn dominant_frequency(pcm: &[i16], sample_rate: u32) -> Option<f64> {
    let frame = (sample_rate / 50) as usize;
    let active: Vec<i16> = pcm
        .chunks(frame.max(1))
        .filter(|c| rms(c) > ACTIVE_RMS)
        .flatten()
        .copied()
        .collect();
    if active.len() < frame * 2 {
        return None;
    }
    let fine_window = &active[active.len().saturating_sub(sample_rate as usize)..];
    let coarse_window = &fine_window[..fine_window.len().min(sample_rate as usize / 10)];
    let mut best = (0.0, 0.0);
    let mut f = 50.0;
    while f <= 4000.0 {
        let p = goertzel_power(coarse_window, f, sample_rate);
        if p > best.1 {
            best = (f, p);
        }
        f += 10.0;
    }
    let mut fine = (best.0, 0.0);
    let mut f = best.0 - 12.0;
    while f <= best.0 + 12.0 {
        let p = goertzel_power(fine_window, f, sample_rate);
        if p > fine.1 {
            fine = (f, p);
        }
        f += 0.25;
    }
    Some(fine.0)
}

/// Zero-crossing estimate of the frequency of a (mostly) pure tone: cheap, used as a
/// cross-check on [`dominant_frequency`]. `None` for silence.
pub fn zero_crossing_frequency(pcm: &[i16], sample_rate: u32) -> Option<f64> {
    if rms(pcm) < ACTIVE_RMS || pcm.len() < 2 {
        return None;
    }
    // Hysteresis so low-level noise around zero does not add crossings.
    let threshold = (rms(pcm) * 32768.0 * 0.2) as i32;
    let mut positive = i32::from(pcm[0]) > 0;
    let mut crossings = 0u32;
    let (mut first, mut last) = (None, 0usize);
    for (i, &s) in pcm.iter().enumerate() {
        let s = i32::from(s);
        if positive && s < -threshold {
            positive = false;
        } else if !positive && s > threshold {
            positive = true;
            crossings += 1;
            first.get_or_insert(i);
            last = i;
        }
    }
    let first = first?;
    if crossings < 2 || last <= first {
        return None;
    }
    Some(f64::from(crossings - 1) * f64::from(sample_rate) / (last - first) as f64)
}

/// The last `capacity` samples of a stream, for frequency checks.
#[derive(Clone, Debug)]
pub struct PcmRing {
    buf: std::collections::VecDeque<i16>,
    capacity: usize,
}

impl PcmRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: std::collections::VecDeque::with_capacity(capacity.min(1 << 20)),
            capacity,
        }
    }

    pub fn push(&mut self, pcm: &[i16]) {
        if self.capacity == 0 {
            return;
        }
        let pcm = &pcm[pcm.len().saturating_sub(self.capacity)..];
        let overflow = (self.buf.len() + pcm.len()).saturating_sub(self.capacity);
        self.buf.drain(..overflow.min(self.buf.len()));
        self.buf.extend(pcm.iter().copied());
    }

    pub fn to_vec(&self) -> Vec<i16> {
        self.buf.iter().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_decode(src: &mut dyn SignalSource, frames: usize) -> (Vec<i16>, usize) {
        let mut enc = OpusEncoder::new().expect("encoder");
        let mut dec = OpusDecoder::new().expect("decoder");
        let mut pcm = vec![0i16; FRAME_SAMPLES];
        let mut out = Vec::new();
        let mut sent = 0;
        for _ in 0..frames {
            src.fill(&mut pcm);
            let f = enc.encode(&pcm).expect("encode");
            if !f.dtx {
                sent += 1;
                out.extend_from_slice(dec.decode(&f.payload).expect("decode"));
            }
        }
        (out, sent)
    }

    #[test]
    fn tone_survives_opus_and_is_detected_within_a_few_hz() {
        for freq in [220.0, 440.0, 660.0, 1000.0, 1500.0] {
            let (pcm, _) = encode_decode(&mut Tone::new(freq, 0.5), 50);
            let got = dominant_frequency(&pcm, SAMPLE_RATE).expect("tone is audible");
            assert!(
                (got - freq).abs() < 3.0,
                "sent {freq} Hz, detected {got} Hz"
            );
            let zc = zero_crossing_frequency(&pcm[pcm.len() / 2..], SAMPLE_RATE).expect("zc");
            assert!(
                (zc - freq).abs() < 10.0,
                "sent {freq} Hz, zero crossings say {zc} Hz"
            );
        }
    }

    #[test]
    fn voice_like_signal_keeps_its_carrier_frequency() {
        let (pcm, _) = encode_decode(&mut VoiceLike::new(523.0, 0.6, 7, 0.3), 150);
        let got = dominant_frequency(&pcm, SAMPLE_RATE).expect("voice is audible");
        assert!((got - 523.0).abs() < 4.0, "detected {got} Hz");
    }

    #[test]
    fn silence_has_no_dominant_frequency() {
        assert_eq!(dominant_frequency(&vec![0; 48_000], SAMPLE_RATE), None);
        assert_eq!(zero_crossing_frequency(&vec![0; 4800], SAMPLE_RATE), None);
    }

    #[test]
    fn audio_level_follows_rfc6464_dbov() {
        assert_eq!(audio_level(&vec![0; FRAME_SAMPLES]), LEVEL_SILENCE);
        assert_eq!(audio_level(&[]), LEVEL_SILENCE);
        // Full-scale square wave: 0 dBov.
        let square: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|i| if i % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        assert_eq!(audio_level(&square), 0);
        // Full-scale sine: -3 dBov; half amplitude: -9 dBov; 1/100: -43 dBov.
        let mut pcm = vec![0; FRAME_SAMPLES];
        Tone::new(1000.0, 1.0).fill(&mut pcm);
        assert_eq!(audio_level(&pcm), 3);
        Tone::new(1000.0, 0.5).fill(&mut pcm);
        assert_eq!(audio_level(&pcm), 9);
        Tone::new(1000.0, 0.01).fill(&mut pcm);
        assert_eq!(audio_level(&pcm), 43);
    }

    #[test]
    fn audio_level_extension_byte_round_trips() {
        assert_eq!(encode_audio_level(30, true), 0x80 | 30);
        assert_eq!(parse_audio_level(&[0x80 | 30]), Some((30, true)));
        assert_eq!(parse_audio_level(&[127]), Some((127, false)));
        assert_eq!(encode_audio_level(200, false), 127);
        assert_eq!(parse_audio_level(&[]), None);
    }

    #[test]
    fn dtx_sends_far_fewer_packets_in_silence_than_in_speech() {
        let (_, tone_sent) = encode_decode(&mut Tone::new(440.0, 0.5), 100);
        let (_, silence_sent) = encode_decode(&mut Silence, 100);
        assert_eq!(tone_sent, 100, "a steady tone is sent every frame");
        assert!(
            silence_sent < 20,
            "DTX should suppress most silent frames, sent {silence_sent}/100"
        );
    }

    #[test]
    fn voice_like_signal_pauses_long_enough_for_dtx() {
        let (_, sent) = encode_decode(&mut VoiceLike::new(440.0, 0.5, 3, 0.5), 500);
        assert!(
            sent < 450,
            "pauses should let DTX drop frames, sent {sent}/500"
        );
        assert!(
            sent > 150,
            "talk spurts should still be sent, sent {sent}/500"
        );
    }

    #[test]
    fn encoder_rejects_wrong_frame_size_and_decoder_rejects_garbage() {
        let mut enc = OpusEncoder::new().expect("encoder");
        assert!(enc.encode(&[0; 100]).is_err());
        let mut dec = OpusDecoder::new().expect("decoder");
        // TOC for code 3 (arbitrary frames) with a frame count of 0 is invalid.
        assert!(dec.decode(&[0x03, 0x00]).is_err());
    }

    #[test]
    fn pcm_ring_keeps_only_the_newest_samples() {
        let mut r = PcmRing::new(5);
        r.push(&[1, 2, 3]);
        r.push(&[4, 5, 6, 7]);
        assert_eq!(r.to_vec(), vec![3, 4, 5, 6, 7]);
        r.push(&[8, 9, 10, 11, 12, 13]);
        assert_eq!(r.to_vec(), vec![9, 10, 11, 12, 13]);
    }
}
