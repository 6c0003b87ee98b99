//! Property tests of media's public parsers and per-packet logic on arbitrary input:
//! the audio-level header-extension parser (bytes straight from the network, after
//! SRTP), the router fed arbitrary sequences of joins, leaves, mutes, role changes,
//! packets and ticks, and the slot rewriter fed arbitrary RTP header sequences. None
//! may panic, and each keeps its invariants.
//!
//! A short run is part of the suite; `FUZZ_CASES=<n>` runs `n` inputs per property
//! (the long run recorded in BENCHMARKS.md). STUN demultiplexing and RTCP handling are
//! private to the engine and cannot be driven from here.

use std::time::{Duration, Instant};

use media::ParticipantId;
use media::RoomKey;
use media::level::{AudioLevel, audio_level_from_extension_block, audio_level_from_rtp};
use media::rewrite::{RtpIn, SlotRewriter};
use media::router::{Route, Router, RouterConfig};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs for regression files; failures print their
        // minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// RTP packets that are often well-formed up to the extension block: version 2, the
/// X bit, CSRCs, a one- or two-byte profile, and an arbitrary block and length word.
fn rtp_like() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        any::<bool>(),
        0u8..16,
        prop::sample::select(&[0xBEDEu16, 0x1000, 0x1001, 0x0000, 0xFFFF][..]),
        any::<u16>(),
        0u16..8,
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(b1, x, cc, profile, words, small_words, body)| {
            let mut p = vec![0x80 | if x { 0x10 } else { 0 } | cc, b1];
            p.extend_from_slice(&[0; 10]);
            p.extend(std::iter::repeat_n(0xAB, 4 * usize::from(cc)));
            p.extend_from_slice(&profile.to_be_bytes());
            let words = if words % 2 == 0 { small_words } else { words };
            p.extend_from_slice(&words.to_be_bytes());
            p.extend_from_slice(&body);
            p
        })
}

#[derive(Clone, Debug)]
enum Op {
    Join { pid: u64, room: u64, publish: bool },
    Leave { pid: u64 },
    Mute { pid: u64, muted: bool },
    Publish { pid: u64, can: bool },
    Packet { pid: u64, level: Option<u8> },
    Advance { ms: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    let pid = 0u64..12;
    prop_oneof![
        (pid.clone(), 0u64..3, any::<bool>()).prop_map(|(pid, room, publish)| Op::Join {
            pid,
            room,
            publish
        }),
        pid.clone().prop_map(|pid| Op::Leave { pid }),
        (pid.clone(), any::<bool>()).prop_map(|(pid, muted)| Op::Mute { pid, muted }),
        (pid.clone(), any::<bool>()).prop_map(|(pid, can)| Op::Publish { pid, can }),
        (pid, proptest::option::of(any::<u8>()))
            .prop_map(|(pid, level)| Op::Packet { pid, level })
            .boxed(),
        (0u16..700).prop_map(|ms| Op::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn the_audio_level_parser_takes_any_bytes(
        packet in prop_oneof![rtp_like(), prop::collection::vec(any::<u8>(), 0..80)],
        ext_id in 0u8..16,
    ) {
        if let Some(AudioLevel { dbov, .. }) = audio_level_from_rtp(&packet, ext_id) {
            prop_assert!(dbov <= 127);
            prop_assert!(ext_id != 0);
        }
    }

    #[test]
    fn the_extension_block_parser_takes_any_block(
        profile in prop_oneof![Just(0xBEDEu16), Just(0x1000u16), any::<u16>()],
        block in prop::collection::vec(any::<u8>(), 0..64),
        ext_id in any::<u8>(),
    ) {
        let _ = audio_level_from_extension_block(profile, &block, ext_id);
    }

    #[test]
    fn the_router_survives_any_sequence_of_events_and_never_echoes_a_publisher(
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let start = Instant::now();
        let mut now = start;
        let mut router: Router<u64> = Router::new(RouterConfig::default(), now);
        for op in ops {
            match op {
                Op::Join { pid, room, publish } => {
                    let _ = router.add_participant(ParticipantId(pid), RoomKey(room), publish, pid, now);
                }
                Op::Leave { pid } => {
                    router.remove_participant(ParticipantId(pid), now);
                }
                Op::Mute { pid, muted } => {
                    let _ = router.set_muted(ParticipantId(pid), muted, now);
                }
                Op::Publish { pid, can } => {
                    let _ = router.set_can_publish(ParticipantId(pid), can, now);
                }
                Op::Packet { pid, level } => {
                    let level = level.map(|b| AudioLevel { dbov: b & 0x7F, voice: b & 0x80 != 0 });
                    let room = router.room_of(ParticipantId(pid));
                    if let Route::Forward(fanout) = router.on_packet(ParticipantId(pid), level, now) {
                        let deliveries: Vec<_> = fanout.collect();
                        for d in &deliveries {
                            prop_assert_ne!(d.subscriber, ParticipantId(pid), "a publisher hears itself");
                            prop_assert_eq!(d.data, d.subscriber.0);
                            prop_assert!(d.slot < 16);
                        }
                        prop_assert!(room.is_some());
                    }
                }
                Op::Advance { ms } => {
                    now += Duration::from_millis(u64::from(ms));
                    if now >= router.poll_timeout() {
                        router.tick(now);
                    }
                    while router.poll_event().is_some() {}
                }
            }
        }
    }

    #[test]
    fn the_slot_rewriter_keeps_one_continuous_stream_for_any_packets(
        packets in prop::collection::vec(
            (0u64..3, 0u32..3, any::<u16>(), any::<u32>(), any::<bool>(), 0u16..100, 0u16..40),
            1..200,
        ),
    ) {
        const OUT: u32 = 0xC0FFEE;
        let mut rw = SlotRewriter::new(OUT);
        let mut now = Instant::now();
        let mut last: Option<(u64, u32)> = None;
        let mut seq = 1000u16;
        let mut ts = 5000u32;
        for (source, ssrc, jump, raw_ts, marker, step, gap_ms) in packets {
            // Mostly a plausible stream (small steps), sometimes anything at all.
            if jump % 7 == 0 { seq = jump; ts = raw_ts; } else {
                seq = seq.wrapping_add(step);
                ts = ts.wrapping_add(u32::from(step) * 960);
            }
            now += Duration::from_millis(u64::from(gap_ms));
            let high_before = rw.highest_seq();
            let pkt = RtpIn { source: ParticipantId(source), ssrc, seq, ts, marker };
            let switched = last.is_some_and(|l| l != (source, ssrc));
            if let Ok(out) = rw.rewrite(pkt, now) {
                prop_assert_eq!(out.ssrc, OUT);
                if switched && let Some(high) = high_before {
                    prop_assert_eq!(out.seq, high.wrapping_add(1), "a new source continues the numbering");
                    prop_assert!(out.marker, "a new source starts a talkspurt");
                }
                if let (Some(before), Some(after)) = (high_before, rw.highest_seq()) {
                    prop_assert!(after.wrapping_sub(before) as i16 >= 0, "highest seq went back");
                }
                prop_assert_eq!(rw.current_source(), Some((ParticipantId(source), ssrc)));
            }
            last = Some((source, ssrc));
        }
    }
}
