//! The client peer against the in-process SFU stand-in (tests/common): negotiation of
//! the server's layout, slot reception with per-slot tone detection, publishing with
//! the audio-level extension, and renegotiation (role change, ICE restart).

mod common;

use common::{StandIn, boxed, eventually};
use loadtest::audio::Tone;
use loadtest::peer::{ClientPeer, PeerConfig, media_direction};
use loadtest::protocol::ParticipantId;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

async fn connect(standin: &StandIn, client: &ClientPeer, publish: bool) -> anyhow::Result<()> {
    let (sdp, layout) = standin.offer(false).await?;
    let answer = client.answer_offer(&sdp, &layout, publish).await?;
    standin.accept_answer(answer).await?;
    client.wait_connected(T).await?;
    standin.wait_connected(T).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_receives_every_slot_and_hears_the_right_tone_in_each() -> anyhow::Result<()> {
    let standin = StandIn::new(3, false).await?;
    let client = ClientPeer::new(PeerConfig {
        decode: true,
        ..Default::default()
    })
    .await?;
    connect(&standin, &client, false).await?;
    let speakers = [ParticipantId(11), ParticipantId(22), ParticipantId(33)];
    client.set_slot_map(&speakers.map(Some));

    let freqs = [300.0, 500.0, 800.0];
    let frames = 100;
    standin.send_tones(&freqs, frames).await?;
    let snap = client
        .wait_until(T, "98% of every slot's packets", |s| {
            s.slots.len() == 3 && s.slots.iter().all(|sl| sl.stats.packets >= 98)
        })
        .await?;

    for (i, slot) in snap.slots.iter().enumerate() {
        let sent = standin.slots[i]
            .sent
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(sent, frames as u64);
        assert!(
            slot.stats.packets * 100 >= sent * 98,
            "slot {i}: {} of {sent}",
            slot.stats.packets
        );
        assert_eq!(slot.stats.ts_backwards, 0, "slot {i}");
        assert_eq!(slot.stats.ssrc_changes, 0, "slot {i}");
        assert_eq!(slot.stats.duplicates, 0, "slot {i}");
        assert_eq!(slot.decode_errors, 0, "slot {i}");
        assert!(
            slot.stats.audio_level_packets > 0,
            "slot {i} carried no audio level"
        );
        let f = client.slot_frequency(i).expect("slot audible");
        assert!(
            (f - freqs[i]).abs() < 4.0,
            "slot {i}: expected {} Hz, heard {f} Hz",
            freqs[i]
        );
        // Attributed to the participant the slot map names.
        let by_source = client
            .source_frequency(speakers[i])
            .expect("source audible");
        assert!(
            (by_source - freqs[i]).abs() < 4.0,
            "source {i}: heard {by_source} Hz"
        );
        assert_eq!(snap.sources[&speakers[i]].packets, slot.stats.packets);
    }
    assert_eq!(snap.unknown_mid_packets, 0);
    assert_eq!(snap.unattributed, 0);
    assert!(client.first_packet_at().is_some());
    client.close().await;
    standin.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_receives_the_clients_tone_with_the_audio_level_extension() -> anyhow::Result<()> {
    let standin = StandIn::new(2, true).await?;
    let client = ClientPeer::new(PeerConfig::default()).await?;
    let (sdp, layout) = standin.offer(false).await?;
    let answer = client.answer_offer(&sdp, &layout, true).await?;
    assert_eq!(
        media_direction(&answer, &layout.publish_mid),
        Some("sendonly")
    );
    for mid in &layout.slot_mids {
        assert_eq!(media_direction(&answer, mid), Some("recvonly"));
    }
    assert!(answer.contains("urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
    standin.accept_answer(answer).await?;
    client.wait_connected(T).await?;
    let params = client.send_params().expect("mic negotiated for sending");
    // The stand-in's numbering, not the client's defaults (111 / 1).
    assert_eq!(params.payload_type, 109);
    assert_eq!(params.audio_level_id, Some(2));

    client
        .start_publishing(boxed(Tone::new(440.0, 0.5)), None)
        .await?;
    let rx = standin.mic_rx.clone();
    eventually(T, "60 packets at the stand-in", || rx.lock().packets >= 60).await?;
    client.stop_publishing();

    {
        let m = rx.lock();
        assert_eq!(
            m.with_level, m.packets,
            "every packet carries the audio level"
        );
        // A 0.5-amplitude sine is -9 dBov.
        let steady = &m.levels[m.levels.len() / 2..];
        assert!(
            steady.iter().all(|&l| (8..=10).contains(&l)),
            "levels {steady:?}"
        );
        assert!(m.payload_types.iter().all(|&pt| pt == params.payload_type));
        let f = loadtest::audio::dominant_frequency(&m.pcm.to_vec(), 48_000).expect("audible");
        assert!((f - 440.0).abs() < 3.0, "stand-in heard {f} Hz");
        let c = client.send_counters();
        assert!(c.packets.load(std::sync::atomic::Ordering::Relaxed) >= 60);
        assert_eq!(c.write_errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
    client.close().await;
    standin.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_promoted_by_renegotiation_starts_publishing() -> anyhow::Result<()> {
    let standin = StandIn::new(2, false).await?;
    let client = ClientPeer::new(PeerConfig::default()).await?;
    let (sdp, layout) = standin.offer(false).await?;
    assert_eq!(media_direction(&sdp, &layout.publish_mid), Some("inactive"));
    let answer = client.answer_offer(&sdp, &layout, true).await?;
    assert_eq!(
        media_direction(&answer, &layout.publish_mid),
        Some("inactive")
    );
    standin.accept_answer(answer).await?;
    client.wait_connected(T).await?;
    assert_eq!(
        client.send_params(),
        None,
        "a listener's mic is not negotiated"
    );

    // The stand-in promotes: same m-lines, microphone now recvonly.
    standin.set_mic_can_publish(true).await?;
    let (sdp2, layout2) = standin.offer(false).await?;
    assert_eq!(layout2, layout, "renegotiation keeps the mids");
    assert_eq!(
        media_direction(&sdp2, &layout.publish_mid),
        Some("recvonly")
    );
    let answer2 = client.answer_offer(&sdp2, &layout2, true).await?;
    assert_eq!(
        media_direction(&answer2, &layout.publish_mid),
        Some("sendonly")
    );
    standin.accept_answer(answer2).await?;
    assert!(client.send_params().is_some());

    client
        .start_publishing(boxed(Tone::new(660.0, 0.5)), None)
        .await?;
    let rx = standin.mic_rx.clone();
    eventually(T, "promoted client's audio", || rx.lock().packets >= 40).await?;
    let f = loadtest::audio::dominant_frequency(&rx.lock().pcm.to_vec(), 48_000).expect("audible");
    assert!((f - 660.0).abs() < 3.0, "heard {f} Hz");
    client.close().await;
    standin.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_offer_is_answered_and_media_keeps_flowing() -> anyhow::Result<()> {
    let standin = StandIn::new(1, false).await?;
    let client = ClientPeer::new(PeerConfig::default()).await?;
    connect(&standin, &client, false).await?;
    standin.send_tones(&[400.0], 10).await?;
    client
        .wait_until(T, "packets before restart", |s| {
            s.slots.first().is_some_and(|sl| sl.stats.packets >= 9)
        })
        .await?;

    let (sdp, layout) = standin.offer(true).await?;
    let answer = client.answer_offer(&sdp, &layout, false).await?;
    standin.accept_answer(answer).await?;
    client.wait_connected(T).await?;
    standin.send_tones(&[400.0], 25).await?;
    let snap = client
        .wait_until(T, "packets after restart", |s| {
            s.slots.first().is_some_and(|sl| sl.stats.packets >= 33)
        })
        .await?;
    assert_eq!(snap.slots[0].stats.ts_backwards, 0);
    client.close().await;
    standin.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_with_publish_mid_among_slots_is_refused_not_panicked() -> anyhow::Result<()> {
    let standin = StandIn::new(1, true).await?;
    let client = ClientPeer::new(PeerConfig::default()).await?;
    let (sdp, mut layout) = standin.offer(false).await?;
    layout.slot_mids.push(layout.publish_mid.clone());
    assert!(client.answer_offer(&sdp, &layout, true).await.is_err());
    let (_, layout) = standin.offer(false).await?;
    assert!(client.answer_offer("not sdp", &layout, true).await.is_err());
    client.close().await;
    standin.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_listener_sends_rtp_although_its_mic_line_is_inactive() -> anyhow::Result<()> {
    let standin = StandIn::new(1, false).await?;
    let client = ClientPeer::new(PeerConfig {
        ignore_publish_refusal: true,
        ..Default::default()
    })
    .await?;
    let (sdp, layout) = standin.offer(false).await?;
    let answer = client.answer_offer(&sdp, &layout, true).await?;
    // The lie the server must see through.
    assert_eq!(
        media_direction(&answer, &layout.publish_mid),
        Some("sendonly")
    );
    standin.accept_answer(answer).await?;
    client.wait_connected(T).await?;
    assert!(client.send_params().is_some());
    client
        .start_publishing(boxed(Tone::new(440.0, 0.5)), None)
        .await?;
    let c = client.send_counters();
    eventually(T, "RTP handed to the connection", || {
        c.packets.load(std::sync::atomic::Ordering::Relaxed) >= 20
    })
    .await?;
    assert_eq!(c.write_errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    // The stack accepted and counted them as sent (outbound-rtp packetsSent). The
    // stand-in, being rtc too, drops media on its inactive line, so it cannot confirm.
    let sent = client.outbound_packets_sent().await;
    assert!(sent >= 20, "outbound-rtp packetsSent {sent}");
    client.close().await;
    standin.close().await;
    Ok(())
}
