//! Micro-benchmark of the SFU's per-packet logic (router decision + fan-out + RTP header
//! rewrite per receiver), without sockets or crypto. Plain `std::time::Instant`, no
//! criterion. Run: `cargo run --release -p media --example route_bench`.
//!
//! What it shows: the cost per forwarded packet of "who receives what" and of the
//! rewrite, and that the per-packet decision does not grow with the room.

use std::hint::black_box;
use std::time::{Duration, Instant};

use media::ids::{ParticipantId, RoomKey};
use media::level::{AudioLevel, LevelMeter};
use media::rewrite::{RtpIn, SlotRewriter};
use media::router::{Route, Router, RouterConfig};

const ROOM: RoomKey = RoomKey(1);
const SPEAKERS: u64 = 4;

/// Builds a room with 4 speakers (3 in slots, 1 spare) and `listeners` listeners; the
/// router's per-participant data is the index of its legs in `legs`.
fn room(listeners: u64, now: Instant) -> (Router<usize>, Vec<[SlotRewriter; 3]>) {
    let mut r: Router<usize> = Router::new(RouterConfig::default(), now);
    let mut legs = Vec::new();
    for n in 0..SPEAKERS + listeners {
        let i = legs.len();
        legs.push([0u32, 1, 2].map(|s| SlotRewriter::new((n as u32) << 2 | s)));
        r.add_participant(ParticipantId(n), ROOM, n < SPEAKERS, i, now)
            .expect("fresh id");
    }
    while r.poll_event().is_some() {}
    (r, legs)
}

fn forward_bench(listeners: u64) {
    let t0 = Instant::now();
    let (mut r, mut legs) = room(listeners, t0);
    let level = Some(AudioLevel {
        dbov: 30,
        voice: true,
    });
    let frames = (2_000_000 / listeners.max(1)).clamp(20, 20_000) as u32;
    let mut deliveries = 0u64;
    let mut rewritten = 0u64;
    let start = Instant::now();
    for f in 0..frames {
        let now = t0 + Duration::from_millis(20) * f;
        for s in 0..SPEAKERS {
            let pid = ParticipantId(s);
            let pkt = RtpIn {
                source: pid,
                ssrc: 1000 + s as u32,
                seq: f as u16,
                ts: f * 960,
                marker: false,
            };
            if let Route::Forward(fanout) = r.on_packet(pid, level, now) {
                for d in fanout {
                    deliveries += 1;
                    if let Ok(out) = legs[d.data][d.slot].rewrite(pkt, now) {
                        black_box(out);
                        rewritten += 1;
                    }
                }
            }
        }
        if now >= r.poll_timeout() {
            r.tick(now);
            while r.poll_event().is_some() {}
        }
    }
    let el = start.elapsed();
    println!(
        "room of {:>5} listeners: {:>9} deliveries, {:>6.1} ns per forwarded packet \
         (decision + fan-out + rewrite), {} rewritten",
        listeners,
        deliveries,
        el.as_nanos() as f64 / deliveries.max(1) as f64,
        rewritten
    );
}

fn decision_bench(listeners: u64) {
    let t0 = Instant::now();
    let (mut r, _legs) = room(listeners, t0);
    let level = Some(AudioLevel {
        dbov: 60,
        voice: false,
    });
    // Speaker 3 is the spare; add an outsider (not in a slot, not spare) and time its
    // packets: pure decision cost, no fan-out.
    let outsider = ParticipantId(1_000_000);
    r.add_participant(outsider, ROOM, true, 0, t0)
        .expect("fresh id");
    let n = 2_000_000u32;
    let start = Instant::now();
    for i in 0..n {
        let now = t0 + Duration::from_micros(u64::from(i));
        black_box(matches!(r.on_packet(outsider, level, now), Route::Drop(_)));
    }
    println!(
        "room of {:>5} listeners: {:>6.1} ns per routing decision without fan-out",
        listeners,
        start.elapsed().as_nanos() as f64 / f64::from(n)
    );
}

fn main() {
    println!(
        "sizes: SlotRewriter {} B, LevelMeter {} B (per listener: 3 rewriters + router entry)",
        std::mem::size_of::<SlotRewriter>(),
        std::mem::size_of::<LevelMeter>()
    );
    for l in [10, 100, 1000, 5000] {
        forward_bench(l);
    }
    for l in [10, 5000] {
        decision_bench(l);
    }
}
