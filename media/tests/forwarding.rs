//! Real WebRTC over loopback: async `webrtc` clients answer the SFU's offers, speakers send
//! Opus sine tones, listeners decode what arrives per slot.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{Client, Events, dominant_tone, join, test_config, wait_until};
use media::{ParticipantId, RoomKey, Sfu, SfuEvent};

const CONNECT: Duration = Duration::from_secs(15);
const TONES: [f64; 3] = [440.0, 660.0, 990.0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_bind_error_and_bad_config_is_refused() -> Result<()> {
    let (sfu, _rx) = Sfu::start(test_config())?;
    let taken = media::SfuConfig {
        bind: sfu.local_addr(),
        ..test_config()
    };
    assert!(matches!(Sfu::start(taken), Err(media::MediaError::Bind(_))));
    let bad = media::SfuConfig {
        slots: 0,
        ..test_config()
    };
    assert!(matches!(Sfu::start(bad), Err(media::MediaError::Config(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_has_the_fixed_audio_layout() -> Result<()> {
    let (sfu, _rx) = Sfu::start(test_config())?;
    let offer = sfu.join(RoomKey(1), ParticipantId(1), true).await?;
    ensure!(offer.slot_mids.len() == 3, "three slot m-lines: {offer:?}");
    ensure!(offer.publish_mid != offer.slot_mids[0]);
    let sdp = &offer.sdp;
    ensure!(sdp.contains("a=ice-lite"), "server is ICE-lite");
    ensure!(sdp.contains("useinbandfec=1") && sdp.contains("usedtx=1"));
    ensure!(sdp.contains("urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
    ensure!(sdp.matches("a=sendonly").count() == 3 && sdp.matches("a=recvonly").count() == 1);
    ensure!(
        !sdp.contains("VP8") && !sdp.contains("transport-cc"),
        "audio only, no TWCC"
    );
    let listener = sfu.join(RoomKey(1), ParticipantId(2), false).await?;
    ensure!(
        listener.sdp.matches("a=inactive").count() == 1,
        "listener mic is inactive"
    );
    // One DTLS certificate for the whole SFU: both offers carry the same fingerprint.
    let fingerprint = |sdp: &str| {
        sdp.lines()
            .find(|l| l.starts_with("a=fingerprint:sha-256 "))
            .map(str::to_owned)
    };
    ensure!(fingerprint(sdp).is_some(), "no sha-256 fingerprint: {sdp}");
    ensure!(
        fingerprint(sdp) == fingerprint(&listener.sdp),
        "certificate per peer"
    );
    assert!(matches!(
        sfu.join(RoomKey(1), ParticipantId(2), false).await,
        Err(media::MediaError::AlreadyJoined(_))
    ));
    assert!(matches!(
        sfu.accept_answer(ParticipantId(2), "not sdp".into()).await,
        Err(media::MediaError::BadAnswer(_))
    ));
    assert!(matches!(
        sfu.accept_answer(ParticipantId(99), String::new()).await,
        Err(media::MediaError::UnknownParticipant(_))
    ));
    Ok(())
}

/// 3 speakers, 10 pure listeners: every listener (and every speaker, for the two others)
/// receives >= 98% of each speaker's packets and decodes each to its speaker's tone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_hears_every_speaker_at_the_right_pitch() -> Result<()> {
    let (sfu, rx) = Sfu::start(test_config())?;
    let events = Events::spawn(rx);
    let room = RoomKey(7);
    let mut speakers = Vec::new();
    for (i, _) in TONES.iter().enumerate() {
        let pid = ParticipantId(i as u64 + 1);
        speakers.push(join(&sfu, room, pid, true, true, &format!("speaker{i}")).await?);
    }
    let mut listeners = Vec::new();
    for i in 0..10u64 {
        let pid = ParticipantId(100 + i);
        listeners.push(join(&sfu, room, pid, false, false, &format!("listener{i}")).await?);
    }
    for c in speakers.iter_mut().chain(listeners.iter_mut()) {
        c.wait_connected(CONNECT).await?;
    }
    wait_until(CONNECT, "13 Connected events", || {
        events.count(|e| matches!(e, SfuEvent::Connected { .. })) == 13
    })
    .await?;

    for (s, f) in speakers.iter_mut().zip(TONES) {
        s.start_tone(f, 20).await?;
    }
    // 3 s of audio from each speaker.
    wait_until(
        Duration::from_secs(20),
        "150 frames sent by every speaker",
        || speakers.iter().all(|s| s.tone_sent() >= 150),
    )
    .await?;
    for s in &mut speakers {
        s.stop_tone().await;
    }
    let sent: Vec<u64> = speakers.iter().map(Client::tone_sent).collect();

    // Each receiver must end up with >= 98% of each audible speaker's packets.
    let audible = |me: Option<usize>| -> Vec<(f64, u64)> {
        TONES
            .iter()
            .zip(&sent)
            .enumerate()
            .filter(|(i, _)| Some(*i) != me)
            .map(|(_, (f, n))| (*f, *n))
            .collect()
    };
    let heard = |c: &Client| -> Vec<(Option<f64>, u64, u64)> {
        c.with_streams(|streams| {
            streams
                .values()
                .map(|r| (dominant_tone(&r.pcm, &TONES), r.packets, r.decode_errors))
                .collect()
        })
    };
    let receivers: Vec<(&Client, Option<usize>)> = listeners
        .iter()
        .map(|l| (l, None))
        .chain(speakers.iter().enumerate().map(|(i, s)| (s, Some(i))))
        .collect();
    let complete = |c: &Client, me: Option<usize>| {
        let h = heard(c);
        audible(me).iter().all(|(f, n)| {
            h.iter()
                .any(|(tone, got, _)| *tone == Some(*f) && *got * 100 >= n * 98)
        })
    };
    let result = wait_until(Duration::from_secs(10), "98% delivery everywhere", || {
        receivers.iter().all(|(c, me)| complete(c, *me))
    })
    .await;
    if result.is_err() {
        for (c, me) in &receivers {
            eprintln!(
                "{} (me {me:?}) heard {:?}, expected {:?}",
                c.name,
                heard(c),
                audible(*me)
            );
        }
        eprintln!("stats {:?}", sfu.stats());
    }
    result?;
    for (c, me) in &receivers {
        let h = heard(c);
        assert_eq!(
            h.len(),
            audible(*me).len(),
            "{}: one stream per audible speaker",
            c.name
        );
        assert!(
            h.iter().all(|(_, _, errors)| *errors == 0),
            "{}: all packets decode",
            c.name
        );
        // Nobody hears themself.
        if let Some(i) = me {
            assert!(
                h.iter().all(|(tone, _, _)| *tone != Some(TONES[*i])),
                "{} heard itself",
                c.name
            );
        }
    }
    let stats = sfu.stats();
    // Each speaker's packets go to 10 listeners and the 2 other speakers.
    let expected_forwards: u64 = sent.iter().map(|n| n * 12 * 98 / 100).sum();
    assert!(stats.rtp_forwarded >= expected_forwards, "{stats:?}");
    assert_eq!(stats.malformed, 0);
    assert!(
        stats.rtcp_received > 0,
        "receiver/sender reports flow: {stats:?}"
    );
    let _ = Instant::now();
    Ok(())
}

/// Wildcard bind with announced addresses (the 1:1 NAT / multi-interface shape): the
/// candidates carry the announced IPs and media flows through the one socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_bind_with_announced_ips_carries_media() -> Result<()> {
    let cfg = media::SfuConfig {
        bind: "0.0.0.0:0".parse()?,
        announce_ips: vec!["127.0.0.1".parse()?, "127.0.0.2".parse()?],
        ..test_config()
    };
    let (sfu, _rx) = Sfu::start(cfg)?;
    let offer = sfu.join(RoomKey(9), ParticipantId(1), true).await?;
    // The room's media thread's port, whichever thread holds it.
    let port = sfu
        .local_addrs()
        .iter()
        .map(|a| a.port())
        .find(|p| offer.sdp.contains(&format!("127.0.0.1 {p} typ host")))
        .ok_or_else(|| anyhow::anyhow!("no candidate on a media port: {}", offer.sdp))?;
    ensure!(offer.sdp.contains(&format!("127.0.0.2 {port} typ host")));
    let mut speaker = Client::new("speaker").await?;
    let answer = speaker.answer(&offer.sdp, true).await?;
    sfu.accept_answer(ParticipantId(1), answer).await?;
    let mut listener = join(&sfu, RoomKey(9), ParticipantId(2), false, false, "listener").await?;
    speaker.wait_connected(CONNECT).await?;
    listener.wait_connected(CONNECT).await?;
    speaker.start_tone(440.0, 10).await?;
    wait_until(CONNECT, "audio through the wildcard socket", || {
        listener.received_total() >= 25
    })
    .await?;
    speaker.close().await?;
    Ok(())
}
