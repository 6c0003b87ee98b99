//! Participant lifecycle over real WebRTC: server-enforced mute, refusal of a listener's
//! media and promotion, leave, a killed client, a client that never connects.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{Client, Events, dominant_tone, join, sdp_mids, test_config, wait_until};
use media::{DisconnectReason, ParticipantId, RoomKey, Sfu, SfuConfig, SfuEvent};

const CONNECT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_speaker_is_silenced_and_resumes_on_unmute() -> Result<()> {
    let (sfu, rx) = Sfu::start(test_config())?;
    let _events = Events::spawn(rx);
    let room = RoomKey(1);
    let speaker_id = ParticipantId(1);
    let mut speaker = join(&sfu, room, speaker_id, true, true, "speaker").await?;
    let mut listener = join(&sfu, room, ParticipantId(2), false, false, "listener").await?;
    speaker.wait_connected(CONNECT).await?;
    listener.wait_connected(CONNECT).await?;
    speaker.start_tone(440.0, 10).await?;
    wait_until(CONNECT, "audio before mute", || {
        listener.received_total() >= 25
    })
    .await?;

    sfu.set_muted(speaker_id, true);
    let muted_at = Instant::now();
    let dropped_before = sfu.stats().dropped_muted;
    // 0.5 s of the speaker's packets reach the server and are dropped there...
    wait_until(
        Duration::from_secs(10),
        "25 packets dropped as muted",
        || sfu.stats().dropped_muted >= dropped_before + 25,
    )
    .await?;
    // ...and none reached the listener (allowing 100 ms for packets already in flight).
    let leaked = listener.with_streams(|s| {
        s.values()
            .map(|r| r.packets_since(muted_at + Duration::from_millis(100)))
            .sum::<u64>()
    });
    assert_eq!(leaked, 0, "a muted speaker's packets must not be forwarded");

    sfu.set_muted(speaker_id, false);
    let before = listener.received_total();
    wait_until(
        Duration::from_secs(10),
        "audio resumes after unmute",
        || listener.received_total() >= before + 25,
    )
    .await?;
    let tone = listener.with_streams(|s| {
        s.values()
            .map(|r| dominant_tone(&r.pcm, &[440.0, 660.0]))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        tone,
        vec![Some(440.0)],
        "one continuous slot, still the speaker's tone"
    );
    speaker.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_media_is_refused_until_promoted() -> Result<()> {
    let (sfu, rx) = Sfu::start(test_config())?;
    let events = Events::spawn(rx);
    let room = RoomKey(2);
    let rogue_id = ParticipantId(10);
    // The rogue listener attaches a microphone although the server offered none.
    let mut rogue = join(&sfu, room, rogue_id, false, true, "rogue").await?;
    let mut other = join(&sfu, room, ParticipantId(11), false, false, "other").await?;
    rogue.wait_connected(CONNECT).await?;
    other.wait_connected(CONNECT).await?;
    rogue.start_tone(660.0, 5).await?;
    let refused = wait_until(
        Duration::from_secs(10),
        "MediaRefused for the rogue",
        || events.count(|e| *e == SfuEvent::MediaRefused { pid: rogue_id }) == 1,
    )
    .await;
    if refused.is_err() {
        eprintln!("stats {:?} sent {}", sfu.stats(), rogue.tone_sent());
    }
    refused?;
    wait_until(Duration::from_secs(10), "several packets refused", || {
        sfu.stats().dropped_not_publisher >= 10
    })
    .await?;
    assert_eq!(
        other.received_total(),
        0,
        "nothing of the rogue was forwarded"
    );
    assert_eq!(
        events.count(|e| matches!(e, SfuEvent::MediaRefused { .. })),
        1,
        "refusal is reported once, not per packet"
    );

    // Promotion renegotiates; the client answers the new offer and is then heard.
    let offer = sfu.set_can_publish(rogue_id, true).await?;
    ensure!(
        offer.sdp.matches("a=recvonly").count() == 1,
        "mic line is now recvonly"
    );
    let answer = rogue.answer(&offer.sdp, true).await?;
    sfu.accept_answer(rogue_id, answer).await?;
    wait_until(
        Duration::from_secs(10),
        "the promoted speaker is heard",
        || {
            other.with_streams(|s| {
                s.values().any(|r| {
                    r.packets >= 25 && dominant_tone(&r.pcm, &[440.0, 660.0]) == Some(660.0)
                })
            })
        },
    )
    .await?;
    assert_eq!(sfu.stats().publishers, 1);

    // Demotion stops forwarding again (and a new refusal is reported for the new role).
    let offer = sfu.set_can_publish(rogue_id, false).await?;
    let answer = rogue.answer(&offer.sdp, true).await?;
    sfu.accept_answer(rogue_id, answer).await?;
    assert_eq!(sfu.stats().publishers, 0);
    rogue.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_and_killed_client_are_cleaned_up() -> Result<()> {
    let cfg = SfuConfig {
        peer_timeout: Duration::from_secs(2),
        ..test_config()
    };
    let (sfu, rx) = Sfu::start(cfg)?;
    let events = Events::spawn(rx);
    let room = RoomKey(3);
    let mut speaker = join(&sfu, room, ParticipantId(1), true, true, "speaker").await?;
    let mut listener = join(&sfu, room, ParticipantId(2), false, false, "listener").await?;

    // The victim's driver runs on its own runtime so it can be killed without a goodbye.
    let victim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let victim_id = ParticipantId(3);
    let mut victim = victim_rt
        .spawn(async { Client::new("victim").await })
        .await??;
    let offer = sfu.join(room, victim_id, false).await?;
    let answer = victim.answer(&offer.sdp, false).await?;
    sfu.accept_answer(victim_id, answer).await?;

    for c in [&mut speaker, &mut listener, &mut victim] {
        c.wait_connected(CONNECT).await?;
    }
    speaker.start_tone(440.0, 10).await?;
    wait_until(CONNECT, "victim receives audio", || {
        victim.received_total() >= 10
    })
    .await?;
    assert_eq!(sfu.stats().participants, 3);

    // Killed: the runtime vanishes with the client's sockets; no DTLS close, no leave.
    victim_rt.shutdown_background();
    std::mem::forget(victim); // its handles point into the dead runtime
    let killed_at = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "victim reported Disconnected(Timeout)",
        || {
            events.count(|e| {
                *e == SfuEvent::Disconnected {
                    pid: victim_id,
                    reason: DisconnectReason::Timeout,
                }
            }) == 1
        },
    )
    .await?;
    // The timeout runs from the victim's last datagram, which may precede the kill by up to
    // its RTCP/consent interval (~1 s), more when this machine starved its runtime: only a
    // removal long before the 2 s peer timeout would be wrong. (A live peer that is never
    // removed is `ice_lite.rs`'s consent test.)
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "not before peer_timeout: {took:?}"
    );
    assert_eq!(sfu.stats().participants, 2);
    // The others are unaffected.
    let before = listener.received_total();
    wait_until(Duration::from_secs(5), "listener still hears", || {
        listener.received_total() >= before + 10
    })
    .await?;

    // Leave: gone at once, no Disconnected event (signaling asked for it).
    sfu.leave(ParticipantId(2));
    sfu.leave(ParticipantId(1));
    sfu.leave(ParticipantId(1)); // twice is harmless
    wait_until(Duration::from_secs(5), "all maps empty", || {
        let s = sfu.stats();
        s.participants == 0
            && s.publishers == 0
            && s.connected == 0
            && s.rooms == 0
            && s.remote_addrs == 0
            && s.ufrags == 0
    })
    .await?;
    assert_eq!(
        events.count(|e| matches!(e, SfuEvent::Disconnected { .. })),
        1,
        "leave is not reported as a disconnect"
    );
    speaker.close().await?;
    listener.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_that_never_connects_is_removed() -> Result<()> {
    let cfg = SfuConfig {
        connect_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let (sfu, rx) = Sfu::start(cfg)?;
    let events = Events::spawn(rx);
    let _offer = sfu.join(RoomKey(4), ParticipantId(5), true).await?;
    assert_eq!(sfu.stats().participants, 1);
    wait_until(Duration::from_secs(10), "NeverConnected", || {
        events.count(|e| {
            *e == SfuEvent::Disconnected {
                pid: ParticipantId(5),
                reason: DisconnectReason::NeverConnected,
            }
        }) == 1
    })
    .await?;
    let s = sfu.stats();
    assert_eq!(
        (s.participants, s.rooms, s.ufrags, s.publishers),
        (0, 0, 0, 0),
        "{s:?}"
    );
    // The id is free again.
    let _ = sfu.join(RoomKey(4), ParticipantId(5), true).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_are_counted_and_ignored() -> Result<()> {
    let (sfu, rx) = Sfu::start(test_config())?;
    let _events = Events::spawn(rx);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let target = sfu.local_addr();
    // Truncated STUN, a STUN binding request for an unknown ufrag, DTLS and RTP from a stranger,
    // an empty datagram, and junk.
    let mut stun = vec![0u8, 1, 0, 12, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[1u8; 12]);
    stun.extend_from_slice(&[0, 6, 0, 7]);
    stun.extend_from_slice(b"nope:me\0");
    for d in [
        &[0u8, 1, 0][..],
        &stun[..],
        &[22u8, 254, 253, 0, 0][..],
        &[0x80u8, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1][..],
        &[][..],
        &[0xffu8; 40][..],
    ] {
        sock.send_to(d, target).await?;
    }
    wait_until(Duration::from_secs(5), "all six accounted for", || {
        let s = sfu.stats();
        s.malformed + s.unknown_source == 6
    })
    .await?;
    // Still serving.
    let offer = sfu.join(RoomKey(1), ParticipantId(1), true).await?;
    ensure!(!offer.sdp.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_gives_new_credentials_and_media_keeps_flowing() -> Result<()> {
    let (sfu, rx) = Sfu::start(test_config())?;
    let _events = Events::spawn(rx);
    let room = RoomKey(6);
    let mut speaker = join(&sfu, room, ParticipantId(1), true, true, "speaker").await?;
    let listener_id = ParticipantId(2);
    let mut listener = Client::new("listener").await?;
    let first = sfu.join(room, listener_id, false).await?;
    let answer = listener.answer(&first.sdp, false).await?;
    sfu.accept_answer(listener_id, answer).await?;
    speaker.wait_connected(CONNECT).await?;
    listener.wait_connected(CONNECT).await?;
    speaker.start_tone(440.0, 10).await?;
    wait_until(CONNECT, "audio before restart", || {
        listener.received_total() >= 10
    })
    .await?;

    let restart = sfu.restart_ice(listener_id).await?;
    let ufrag = |sdp: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .map(str::to_owned)
    };
    assert_ne!(
        ufrag(&first.sdp),
        ufrag(&restart.sdp),
        "new ICE credentials"
    );
    assert_eq!(restart.slot_mids, first.slot_mids, "same layout");
    let answer = listener.answer(&restart.sdp, false).await?;
    sfu.accept_answer(listener_id, answer).await?;
    let before = listener.received_total();
    wait_until(Duration::from_secs(10), "audio after restart", || {
        listener.received_total() >= before + 25
    })
    .await?;
    let s = sfu.stats();
    assert_eq!(
        (s.participants, s.ufrags),
        (2, 2),
        "old ufrag forgotten: {s:?}"
    );
    speaker.close().await?;
    Ok(())
}

/// The `a=mid` values of an SDP's m-sections, in order, and its BUNDLE group line.
fn sections(sdp: &str) -> (Vec<&str>, Option<&str>) {
    let mids = sdp_mids(sdp);
    let bundle = sdp.lines().find(|l| l.starts_with("a=group:BUNDLE"));
    (mids, bundle)
}

/// The engine has `rtc` give back idle buffers (and the text of an offer already applied)
/// once per report interval; negotiations after that start from a new offer and still
/// work: an ICE restart of one listener, the promotion of another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renegotiation_works_after_idle_buffers_were_released() -> Result<()> {
    let (sfu, rx) = Sfu::start(test_config())?;
    let _events = Events::spawn(rx);
    let room = RoomKey(7);
    let mut speaker = join(&sfu, room, ParticipantId(1), true, true, "speaker").await?;
    let promoted_id = ParticipantId(2);
    let mut promoted = join(&sfu, room, promoted_id, false, true, "promoted").await?;
    let restarted_id = ParticipantId(3);
    let mut restarted = Client::new("restarted").await?;
    let first_offer = sfu.join(room, restarted_id, false).await?;
    let answer = restarted.answer(&first_offer.sdp, false).await?;
    sfu.accept_answer(restarted_id, answer).await?;
    speaker.wait_connected(CONNECT).await?;
    promoted.wait_connected(CONNECT).await?;
    restarted.wait_connected(CONNECT).await?;
    speaker.start_tone(440.0, 20).await?;
    // Refused until the promotion below, like any listener's media.
    promoted.start_tone(660.0, 10).await?;
    // Only the two listeners' slots are active, so sender reports count their
    // housekeeping rounds (one report each per round, and each round releases the
    // connection's idle buffers): four means both have been through at least one.
    wait_until(
        Duration::from_secs(15),
        "two housekeeping rounds of the listeners",
        || sfu.stats().sender_reports >= 4,
    )
    .await?;

    let restart = sfu.restart_ice(restarted_id).await?;
    // A new offer keeps the negotiated m-sections, in order, and their BUNDLE group
    // (JSEP 5.2.2): rtc builds it from the parsed current descriptions, which the
    // release dropped and had to parse again.
    assert_eq!(
        sections(&restart.sdp),
        sections(&first_offer.sdp),
        "the ICE restart offer changed the negotiated m-sections:\n{}",
        restart.sdp
    );
    let answer = restarted.answer(&restart.sdp, false).await?;
    sfu.accept_answer(restarted_id, answer).await?;
    let before = restarted.received_total();
    wait_until(Duration::from_secs(10), "audio after the restart", || {
        restarted.received_total() >= before + 25
    })
    .await?;

    let offer = sfu.set_can_publish(promoted_id, true).await?;
    assert_eq!(
        sections(&offer.sdp),
        sections(&first_offer.sdp),
        "the promotion offer changed the negotiated m-sections:\n{}",
        offer.sdp
    );
    let answer = promoted.answer(&offer.sdp, true).await?;
    sfu.accept_answer(promoted_id, answer).await?;
    wait_until(
        Duration::from_secs(10),
        "the promoted listener is heard",
        || {
            restarted.with_streams(|s| {
                s.values().any(|r| {
                    r.packets >= 25 && dominant_tone(&r.pcm, &[440.0, 660.0]) == Some(660.0)
                })
            })
        },
    )
    .await?;
    speaker.close().await?;
    promoted.close().await?;
    restarted.close().await?;
    Ok(())
}
