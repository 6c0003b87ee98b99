//! What a client received, per slot and per speaker: the accounting both client engines
//! share (the async [`crate::peer::ClientPeer`] and the sans-I/O
//! [`crate::listener::RtcListener`]), so that a run measures the same thing whichever
//! engine carried the packets.
//!
//! A packet is attributed to a speaker by the send-time registry when there is one (exact,
//! and it gives latency), else by the slot map from the server's `slots` message.

use crate::audio::{self, OpusDecoder, PcmRing};
use crate::protocol::ParticipantId;
use crate::registry::SendRegistry;
use crate::stats::StreamStats;
use rtc::rtp;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Receive statistics of one slot (the raw stream the SFU sends on that m-line).
#[derive(Clone, Debug)]
pub struct SlotSnapshot {
    pub mid: String,
    pub stats: StreamStats,
    /// Who the `slots` message says is in this slot now.
    pub source: Option<ParticipantId>,
    pub decode_errors: u64,
}

/// Everything received so far (without PCM; see [`crate::peer::ClientPeer::source_pcm`]).
#[derive(Clone, Debug, Default)]
pub struct RxSnapshot {
    pub slots: Vec<SlotSnapshot>,
    /// Per speaker, attributed by the registry when present, else by the slot map.
    pub sources: HashMap<ParticipantId, StreamStats>,
    /// Packets whose speaker could not be determined.
    pub unattributed: u64,
    /// Packets on an m-line that is not a slot (a server bug).
    pub unknown_mid_packets: u64,
    /// Packets where the slot map and the registry disagreed about the speaker
    /// (normal for a few packets around a switch; many means stale `slots` messages).
    pub attribution_mismatches: u64,
    pub first_packet_at: Option<Instant>,
}

struct SlotRx {
    mid: String,
    stats: StreamStats,
    decoder: Option<OpusDecoder>,
    pcm: PcmRing,
    decode_errors: u64,
    last_source: Option<ParticipantId>,
}

struct SourceRx {
    stats: StreamStats,
    pcm: PcmRing,
    last_slot: Option<usize>,
}

/// The receive side's books. Not synchronised: each engine keeps it behind its own lock.
pub(crate) struct Reception {
    slot_map: Vec<Option<ParticipantId>>,
    slots: Vec<SlotRx>,
    sources: HashMap<ParticipantId, SourceRx>,
    unattributed: u64,
    unknown_mid_packets: u64,
    attribution_mismatches: u64,
    first_packet_at: Option<Instant>,
    /// Decode Opus and keep PCM (tests that check what was heard); load runs leave it off.
    decode: bool,
    /// PCM kept per slot and per source, in samples (0 without `decode`).
    pcm_samples: usize,
    registry: Option<Arc<SendRegistry>>,
}

impl Reception {
    pub(crate) fn new(
        decode: bool,
        pcm_keep: Duration,
        registry: Option<Arc<SendRegistry>>,
    ) -> Self {
        let pcm_samples = if decode {
            (pcm_keep.as_secs_f64() * f64::from(audio::SAMPLE_RATE)) as usize
        } else {
            0
        };
        Self {
            slot_map: Vec::new(),
            slots: Vec::new(),
            sources: HashMap::new(),
            unattributed: 0,
            unknown_mid_packets: 0,
            attribution_mismatches: 0,
            first_packet_at: None,
            decode,
            pcm_samples,
            registry,
        }
    }

    /// Who is in which slot (the server's `slots` message).
    pub(crate) fn set_slot_map(&mut self, slots: &[Option<ParticipantId>]) {
        self.slot_map.clear();
        self.slot_map.extend_from_slice(slots);
    }

    /// A new offer's layout has `n` slots (the map is kept for the slots that remain).
    pub(crate) fn resize_slot_map(&mut self, n: usize) {
        self.slot_map.resize(n, None);
    }

    /// Accounts one RTP packet received on slot `slot` (`None`: not a slot m-line).
    /// `slot_mid` names a slot the first time it is seen. Returns true for the very first
    /// packet on any slot.
    pub(crate) fn on_rtp(
        &mut self,
        slot: Option<usize>,
        slot_mid: impl Fn(usize) -> String,
        level_id: Option<u8>,
        pkt: &rtp::Packet,
        now: Instant,
    ) -> bool {
        let Some(slot) = slot else {
            self.unknown_mid_packets += 1;
            return false;
        };
        let first = self.first_packet_at.is_none();
        if first {
            self.first_packet_at = Some(now);
        }
        while self.slots.len() <= slot {
            self.slots.push(SlotRx {
                mid: slot_mid(self.slots.len()),
                stats: StreamStats::new(audio::SAMPLE_RATE),
                decoder: None,
                pcm: PcmRing::new(self.pcm_samples),
                decode_errors: 0,
                last_source: None,
            });
        }
        let h = &pkt.header;
        let level = level_id
            .and_then(|id| h.get_extension(id))
            .and_then(|b| audio::parse_audio_level(&b));
        let registered = self.registry.as_ref().and_then(|r| r.lookup(&pkt.payload));
        let by_slot = self.slot_map.get(slot).copied().flatten();
        if let (Some((a, _)), Some(b)) = (registered, by_slot)
            && a != b
        {
            self.attribution_mismatches += 1;
        }
        let source = registered.map(|(p, _)| p).or(by_slot);
        let latency = registered.map(|(_, sent)| now.saturating_duration_since(sent));

        let s = &mut self.slots[slot];
        s.stats.on_packet(
            h.ssrc,
            h.sequence_number,
            h.timestamp,
            pkt.payload.len(),
            now,
        );
        if let Some((lvl, _)) = level {
            s.stats.on_audio_level(lvl);
        }
        if let Some(l) = latency {
            s.stats.on_latency(l);
        }
        let switched = s.last_source != source;
        s.last_source = source;
        let mut pcm: Option<Vec<i16>> = None;
        if self.decode && !pkt.payload.is_empty() {
            if s.decoder.is_none() {
                s.decoder = OpusDecoder::new().ok();
            }
            if let Some(d) = s.decoder.as_mut() {
                match d.decode(&pkt.payload) {
                    Ok(p) => {
                        s.pcm.push(p);
                        pcm = Some(p.to_vec());
                    }
                    Err(_) => s.decode_errors += 1,
                }
            }
        }
        let Some(source) = source else {
            self.unattributed += 1;
            return first;
        };
        let pcm_samples = self.pcm_samples;
        let src = self.sources.entry(source).or_insert_with(|| SourceRx {
            stats: StreamStats::new(audio::SAMPLE_RATE),
            pcm: PcmRing::new(pcm_samples),
            last_slot: None,
        });
        // The slot's sequence space is shared by whoever occupies it: when this source
        // (re)enters a slot its numbering legitimately jumps, which is not loss.
        if src.last_slot.is_some() && (src.last_slot != Some(slot) || switched) {
            src.stats.reset_sequence_base();
        }
        src.last_slot = Some(slot);
        src.stats.on_packet(
            h.ssrc,
            h.sequence_number,
            h.timestamp,
            pkt.payload.len(),
            now,
        );
        if let Some((lvl, _)) = level {
            src.stats.on_audio_level(lvl);
        }
        if let Some(l) = latency {
            src.stats.on_latency(l);
        }
        if let Some(p) = pcm {
            src.pcm.push(&p);
        }
        first
    }

    pub(crate) fn snapshot(&self) -> RxSnapshot {
        RxSnapshot {
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| SlotSnapshot {
                    mid: s.mid.clone(),
                    stats: s.stats.clone(),
                    source: self.slot_map.get(i).copied().flatten(),
                    decode_errors: s.decode_errors,
                })
                .collect(),
            sources: self
                .sources
                .iter()
                .map(|(k, v)| (*k, v.stats.clone()))
                .collect(),
            unattributed: self.unattributed,
            unknown_mid_packets: self.unknown_mid_packets,
            attribution_mismatches: self.attribution_mismatches,
            first_packet_at: self.first_packet_at,
        }
    }

    /// Forgets the latency samples kept so far (slots and sources).
    pub(crate) fn clear_latency(&mut self) {
        for s in &mut self.slots {
            s.stats.clear_latency();
        }
        for s in self.sources.values_mut() {
            s.stats.clear_latency();
        }
    }

    pub(crate) fn packets_from(&self, source: ParticipantId) -> u64 {
        self.sources.get(&source).map_or(0, |s| s.stats.packets)
    }

    pub(crate) fn source_pcm(&self, source: ParticipantId) -> Vec<i16> {
        self.sources
            .get(&source)
            .map(|s| s.pcm.to_vec())
            .unwrap_or_default()
    }

    pub(crate) fn slot_pcm(&self, i: usize) -> Vec<i16> {
        self.slots
            .get(i)
            .map(|s| s.pcm.to_vec())
            .unwrap_or_default()
    }
}
