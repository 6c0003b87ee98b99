//! Voice rooms end to end: the real Chorus server in-process on loopback, and real
//! WebRTC clients (the load-test client on the async `webrtc` crate, real Opus tones
//! with the RFC 6464 audio-level extension) as speakers and listeners.
//!
//! What a listener heard is counted per speaker from the `slots` messages' mapping and
//! decoded to check each speaker's tone. Tests share one lock so that only one room
//! of WebRTC peers runs at a time on a small machine; every wait has a deadline.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use loadtest::audio::Tone;
use loadtest::peer::{ClientPeer, OfferLayout, PeerConfig};
use loadtest::protocol::{ClientMessage, ErrorCode, ParticipantId, Role, ServerMessage};
use loadtest::session::Session;
use loadtest::signal::{Auth, SignalClient};
use support::*;

/// One room of WebRTC peers at a time.
static MEDIA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pid(s: &Session) -> anyhow::Result<ParticipantId> {
    s.participant_id().context("participant id")
}

fn sent(s: &Session) -> u64 {
    s.peer()
        .map_or(0, |p| p.send_counters().packets.load(Ordering::Relaxed))
}

fn heard(listener: &Session, from: ParticipantId) -> u64 {
    listener.peer().map_or(0, |p| p.packets_from(from))
}

/// The moderator makes `target` a speaker; the new speaker (who starts muted, as
/// docs/PROTOCOL.md says) unmutes once the promotion reached it; waits until its
/// client publishes.
async fn promote(moderator: &Session, target: &Session) -> anyhow::Result<()> {
    moderator
        .send(&ClientMessage::SetRole {
            participant_id: pid(target)?,
            role: Role::Speaker,
        })
        .await?;
    eventually(STEP, "the promotion to reach the new speaker", || {
        target
            .me()
            .is_some_and(|me| me.role == Role::Speaker)
            .then_some(())
    })
    .await?;
    target.unmute().await?;
    eventually(STEP, "the new speaker to be unmuted and publishing", || {
        (target.me().is_some_and(|me| !me.muted) && sent(target) > 0).then_some(())
    })
    .await
}

/// Waits until `speaker` has sent `n` more packets than now (audio time passing,
/// measured by the sender itself rather than a sleep).
async fn let_speak(speaker: &Session, n: u64) -> anyhow::Result<()> {
    let start = sent(speaker);
    eventually(STEP, "the speaker to send more audio", || {
        (sent(speaker) >= start + n).then_some(())
    })
    .await
}

/// Waits until what `listeners` have heard stops changing (all in-flight packets
/// landed): two polls 200 ms apart with equal totals.
async fn settle(listeners: &[Session], from: &[ParticipantId]) -> anyhow::Result<()> {
    let total = || -> u64 {
        listeners
            .iter()
            .map(|l| from.iter().map(|p| heard(l, *p)).sum::<u64>())
            .sum()
    };
    let end = tokio::time::Instant::now() + STEP;
    let mut last = total();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = total();
        if now == last {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < end,
            "receive counts never settled"
        );
        last = now;
    }
}

async fn join_listeners(
    s: &TestServer,
    room: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<Session>> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let j = s.joiner(&format!("{prefix}-{i}"), room).decoding();
        tasks.spawn(async move { (i, j.connect().await) });
    }
    let mut out: Vec<(usize, Session)> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (i, s) = r?;
        out.push((i, s?));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

async fn join_speaker(
    s: &TestServer,
    owner: &Session,
    room: &str,
    user: &str,
    source: impl loadtest::audio::SignalSource + 'static,
) -> anyhow::Result<Session> {
    let sp = s.joiner(user, room).speaking(source).connect().await?;
    ensure!(
        sent(&sp) == 0,
        "a listener's client published before promotion"
    );
    promote(owner, &sp).await?;
    Ok(sp)
}

fn assert_frequency(got: Option<f64>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no audible audio decoded"));
    assert!(
        (got - want).abs() < 5.0,
        "{what}: decoded {got:.1} Hz, expected {want} Hz"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_speakers_reach_ten_listeners_with_98_percent_of_packets_and_the_right_tones()
-> anyhow::Result<()> {
    let _serial = MEDIA.lock().await;
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("big-owner", "open").await?;
    let owner = s.joiner("big-owner", &room).no_call().connect().await?;

    let freqs = [300.0, 500.0, 700.0];
    let mut speakers = Vec::new();
    for (i, f) in freqs.iter().enumerate() {
        speakers.push(
            join_speaker(
                &s,
                &owner,
                &room,
                &format!("big-speaker-{i}"),
                Tone::new(*f, 0.5),
            )
            .await?,
        );
    }
    let spk: Vec<ParticipantId> = speakers.iter().map(pid).collect::<anyhow::Result<_>>()?;
    let listeners = join_listeners(&s, &room, "big-listener", 10).await?;

    // Everyone hears everyone (3 speakers, 3 slots: no switching needed).
    for (i, l) in listeners.iter().enumerate() {
        l.peer()
            .context("listener peer")?
            .wait_until(STEP, "audio from every speaker", |snap| {
                spk.iter()
                    .all(|p| snap.sources.get(p).is_some_and(|st| st.packets >= 25))
            })
            .await
            .with_context(|| format!("listener {i}"))?;
        let slots: HashSet<ParticipantId> = l.slots().into_iter().flatten().collect();
        assert_eq!(
            slots,
            spk.iter().copied().collect::<HashSet<_>>(),
            "listener {i} slots"
        );
    }
    assert_eq!(s.server().sfu.stats().participants, 13);

    // Measure a window: packets sent by each speaker against packets each listener
    // attributed to that speaker.
    let sent0: Vec<u64> = speakers.iter().map(sent).collect();
    let heard0: Vec<Vec<u64>> = listeners
        .iter()
        .map(|l| spk.iter().map(|p| heard(l, *p)).collect())
        .collect();
    for sp in &speakers {
        let_speak(sp, 200).await?;
    }
    for sp in &speakers {
        sp.stop_publishing();
    }
    settle(&listeners, &spk).await?;
    let sent1: Vec<u64> = speakers.iter().map(sent).collect();
    for (li, l) in listeners.iter().enumerate() {
        for (si, p) in spk.iter().enumerate() {
            let n_sent = sent1[si] - sent0[si];
            let n_heard = heard(l, *p) - heard0[li][si];
            let ratio = n_heard as f64 / n_sent as f64;
            assert!(
                ratio >= 0.98,
                "listener {li} heard {n_heard} of {n_sent} packets from speaker {si} ({:.1}%)",
                ratio * 100.0
            );
            // Not more than was sent either (no duplicates forwarded), allowing for the
            // packets in flight when the window opened.
            assert!(
                n_heard <= n_sent + 3,
                "listener {li}: {n_heard} > {n_sent} from {si}"
            );
            assert_frequency(
                l.peer().context("peer")?.source_frequency(*p),
                freqs[si],
                &format!("listener {li}, speaker {si}"),
            );
        }
        let snap = l.peer().context("peer")?.snapshot();
        assert_eq!(snap.unknown_mid_packets, 0);
        for slot in &snap.slots {
            assert_eq!(slot.decode_errors, 0, "listener {li} slot {}", slot.mid);
            assert_eq!(
                slot.stats.ts_backwards, 0,
                "listener {li} slot {}",
                slot.mid
            );
        }
    }
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_speakers_three_slots_hear_the_loudest_and_switch_cleanly_when_a_quiet_one_gets_loud()
-> anyhow::Result<()> {
    let _serial = MEDIA.lock().await;
    let s = TestServer::start(&["--audio-slots", "3"]).await?;
    let room = s.create_room("slots-owner", "open").await?;
    let owner = s.joiner("slots-owner", &room).no_call().connect().await?;

    // Loudest first; the last is quiet until it is turned up.
    let freqs = [300.0, 420.0, 540.0, 660.0, 780.0];
    let amps = [0.6, 0.4, 0.25, 0.08, 0.04];
    let mut speakers = Vec::new();
    let mut volumes = Vec::new();
    for i in 0..5 {
        let (tone, vol) = AdjustableTone::new(freqs[i], amps[i]);
        speakers.push(join_speaker(&s, &owner, &room, &format!("slots-speaker-{i}"), tone).await?);
        volumes.push(vol);
    }
    let spk: Vec<ParticipantId> = speakers.iter().map(pid).collect::<anyhow::Result<_>>()?;
    let listeners = join_listeners(&s, &room, "slots-listener", 3).await?;
    let top3: HashSet<ParticipantId> = spk[..3].iter().copied().collect();

    // The three loudest fill the slots, and only they are heard.
    for (i, l) in listeners.iter().enumerate() {
        l.peer()
            .context("peer")?
            .wait_until(STEP, "audio from the three loudest", |snap| {
                spk[..3]
                    .iter()
                    .all(|p| snap.sources.get(p).is_some_and(|st| st.packets >= 25))
            })
            .await
            .with_context(|| format!("listener {i}"))?;
        let slots: HashSet<ParticipantId> = l.slots().into_iter().flatten().collect();
        assert_eq!(slots, top3, "listener {i} slots before the switch");
    }
    let quiet_before: Vec<u64> = listeners
        .iter()
        .map(|l| heard(l, spk[3]) + heard(l, spk[4]))
        .collect();
    let_speak(&speakers[4], 50).await?;
    for (i, l) in listeners.iter().enumerate() {
        assert_eq!(
            heard(l, spk[3]) + heard(l, spk[4]),
            quiet_before[i],
            "listener {i} heard a speaker who is not among the three loudest"
        );
    }

    // The quietest becomes the loudest: it takes the slot of the quietest of the three.
    volumes[4].set(0.9);
    let want: HashSet<ParticipantId> = [spk[0], spk[1], spk[4]].into_iter().collect();
    for (i, l) in listeners.iter().enumerate() {
        eventually(STEP, "the slots message to show the new loudest", || {
            let now: HashSet<ParticipantId> = l.slots().into_iter().flatten().collect();
            (now == want).then_some(())
        })
        .await
        .with_context(|| format!("listener {i}: slots {:?}", l.slots()))?;
    }
    // Two seconds of the new speaker fill the decoded-audio window.
    for l in &listeners {
        let start = heard(l, spk[4]);
        l.peer()
            .context("peer")?
            .wait_until(STEP, "the new loudest speaker's audio", |snap| {
                snap.sources
                    .get(&spk[4])
                    .is_some_and(|st| st.packets >= start + 100)
            })
            .await?;
    }
    let demoted: Vec<u64> = listeners.iter().map(|l| heard(l, spk[2])).collect();
    let_speak(&speakers[4], 50).await?;
    for (i, l) in listeners.iter().enumerate() {
        assert_eq!(
            heard(l, spk[2]),
            demoted[i],
            "listener {i} still hears the speaker who lost its slot"
        );
        let slot_of_new = l
            .slots()
            .iter()
            .position(|p| *p == Some(spk[4]))
            .context("new speaker's slot")?;
        let peer = l.peer().context("peer")?;
        assert_frequency(
            peer.slot_frequency(slot_of_new),
            freqs[4],
            &format!("listener {i}, slot {slot_of_new} after the switch"),
        );
        for (k, p) in [spk[0], spk[1]].iter().enumerate() {
            assert_frequency(
                peer.source_frequency(*p),
                freqs[k],
                &format!("listener {i}, speaker {k}"),
            );
        }
        // Each slot stayed one continuous RTP stream across the switch.
        let snap = peer.snapshot();
        assert_eq!(snap.slots.len(), 3, "listener {i}");
        for (k, slot) in snap.slots.iter().enumerate() {
            let st = &slot.stats;
            assert!(st.packets > 0, "listener {i} slot {k} empty");
            assert_eq!(st.ssrc_changes, 0, "listener {i} slot {k}: SSRC changed");
            assert_eq!(
                st.gap_events, 0,
                "listener {i} slot {k}: sequence gaps ({st:?})"
            );
            assert_eq!(st.duplicates, 0, "listener {i} slot {k}: duplicates");
            assert_eq!(st.reordered, 0, "listener {i} slot {k}: reordered");
            assert_eq!(
                st.ts_backwards, 0,
                "listener {i} slot {k}: timestamp went back"
            );
            assert_eq!(slot.decode_errors, 0, "listener {i} slot {k}: undecodable");
        }
    }
    s.stop().await;
    Ok(())
}
