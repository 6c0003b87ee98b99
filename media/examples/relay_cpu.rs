//! CPU cost of the node-to-node relay per packet, on one core, without sockets: what the
//! sending media thread adds per relayed packet (header, plain RTP, HMAC-SHA256 tag: one
//! encode, then a copy per subscribing node) and what the receiving media thread adds
//! before the usual fan-out (tag check, freshness, replay window, RTP parse). A typical
//! Opus voice payload (80 bytes, 32 kbit/s at 20 ms) by default.
//!
//! `cargo run --release -p media --example relay_cpu -- [packets] [payload bytes]`
//! (defaults 1000000 80).

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use media::level::AudioLevel;
use media::relay::{RelayKey, RelayReceiver, RelaySender, RtpFields};
use media::{ParticipantId, RelaySecret, RoomKey};
use rtc::shared::marshal::Unmarshal;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let packets: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let payload_len: usize = args.next().map_or(Ok(80), |a| a.parse())?;
    let key = RelayKey::new(&RelaySecret::new(
        b"benchmark-secret-0123456789abcdef".to_vec(),
    )?);
    let room = RoomKey(1);
    let node: std::net::SocketAddr = "10.0.0.2:7782".parse()?;
    let mut sender = RelaySender::new(key.clone(), 7);
    if !sender.add(room, node) {
        bail!("subscription refused");
    }
    let payload = vec![0x5Au8; payload_len];
    let level = Some(AudioLevel {
        dbov: 30,
        voice: true,
    });
    let wall = 1_700_000_000_000_000u64;

    // Sending: encode and tag each packet; keep the datagrams for the receiving half.
    let mut datagrams: Vec<Vec<u8>> = Vec::with_capacity(packets as usize);
    let started = Instant::now();
    for i in 0..packets {
        let fields = RtpFields {
            marker: false,
            payload_type: 111,
            seq: i as u16,
            ts: (i as u32).wrapping_mul(960),
            ssrc: 0x1234_5678,
        };
        sender.send(
            room,
            ParticipantId(3),
            level,
            &fields,
            &payload,
            wall,
            |d, _| datagrams.push(d.to_vec()),
        );
    }
    let send_ns = started.elapsed().as_nanos() as f64 / packets as f64;

    // Receiving: every check the engine makes before routing, and the RTP parse.
    let mut receiver = RelayReceiver::new(key);
    let now = Instant::now();
    let started = Instant::now();
    let mut accepted = 0u64;
    for d in &datagrams {
        let (h, rtp) = receiver
            .accept(d, now, wall)
            .map_err(|e| anyhow::anyhow!("refused: {e:?}"))?;
        let packet = rtc::rtp::Packet::unmarshal(&mut &rtp[..]).context("rtp")?;
        black_box((h, packet));
        accepted += 1;
    }
    let recv_ns = started.elapsed().as_nanos() as f64 / packets as f64;
    let size = datagrams.first().map_or(0, Vec::len);
    println!(
        "relay, {packets} packets of {payload_len} B payload ({size} B datagrams, {} B over the payload):",
        size - payload_len
    );
    println!("  send (encode + HMAC-SHA256, one node): {send_ns:.0} ns/packet");
    println!(
        "  receive (tag, freshness, replay, RTP parse): {recv_ns:.0} ns/packet ({accepted} accepted)"
    );
    Ok(())
}
