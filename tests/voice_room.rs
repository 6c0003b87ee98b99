//! Voice rooms end to end: the real Chorus server in-process on loopback, and real
//! WebRTC clients (the load-test client on the async `webrtc` crate, real Opus tones
//! with the RFC 6464 audio-level extension) as speakers and listeners.
//!
//! What a listener heard is counted per speaker from the `slots` messages' mapping and
//! decoded to check each speaker's tone. Tests share one lock so that only one room
//! of WebRTC peers runs at a time on a small machine; every wait has a deadline.

mod support;

use std::collections::HashSet;
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

/// Waits until what `listeners` have heard from `from` stops changing (every packet
/// already on its way has landed, even if the receiving tasks were starved for a
/// moment): three polls 150 ms apart with equal totals. Returns the total. A stream
/// that keeps flowing never settles: that is an error.
async fn settle(listeners: &[&Session], from: &[ParticipantId]) -> anyhow::Result<u64> {
    let total = || -> u64 {
        listeners
            .iter()
            .map(|l| from.iter().map(|p| heard(l, *p)).sum::<u64>())
            .sum()
    };
    let end = tokio::time::Instant::now() + STEP;
    let mut last = total();
    let mut stable = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = total();
        if now == last {
            stable += 1;
            if stable == 3 {
                return Ok(now);
            }
        } else {
            stable = 0;
        }
        ensure!(
            tokio::time::Instant::now() < end,
            "packets from {from:?} kept arriving (never settled)"
        );
        last = now;
    }
}

/// Waits until `listener` has heard `n` more packets from `from` (audio flows).
async fn hears(listener: &Session, from: ParticipantId, n: u64) -> anyhow::Result<()> {
    let start = heard(listener, from);
    eventually(STEP, "audio from the speaker", || {
        (heard(listener, from) >= start + n).then_some(())
    })
    .await
    .with_context(|| format!("heard {} of {n} new packets", heard(listener, from) - start))
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
    let all: Vec<&Session> = listeners.iter().collect();
    settle(&all, &spk).await?;
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
            // The same from the sequence numbers over the whole call (immune to when
            // the counters were read), and nothing forwarded twice.
            let st = &l.peer().context("peer")?.snapshot().sources[p];
            assert!(
                st.packets as f64 >= 0.98 * st.expected() as f64,
                "listener {li}, speaker {si}: {} received, {} lost",
                st.packets,
                st.lost
            );
            assert_eq!(st.duplicates, 0, "listener {li}, speaker {si}: duplicates");
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
    let mut quiet_before = Vec::new();
    for l in &listeners {
        quiet_before.push(settle(&[l], &spk[3..]).await?);
    }
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
    let mut demoted = Vec::new();
    for l in &listeners {
        demoted.push(settle(&[l], &[spk[2]]).await?);
    }
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

/// After the server acted on a mute or demotion (the sync point): once the packets
/// already on their way have landed, the speaker's next second of audio (it goes on
/// sending) reaches `listener` not at all.
async fn assert_silenced(
    listener: &Session,
    from: ParticipantId,
    speaker_sent: impl Fn() -> u64,
    what: &str,
) -> anyhow::Result<()> {
    let settled = settle(&[listener], &[from])
        .await
        .with_context(|| what.to_owned())?;
    let start = speaker_sent();
    eventually(STEP, "the silenced speaker to send on", || {
        (speaker_sent() >= start + 50).then_some(())
    })
    .await?;
    let later = settle(&[listener], &[from])
        .await
        .with_context(|| what.to_owned())?;
    assert_eq!(later, settled, "{what}: packets kept arriving");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_speakers_packets_stop_and_resume_on_unmute_self_and_by_moderator()
-> anyhow::Result<()> {
    let _serial = MEDIA.lock().await;
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("mute-owner", "open").await?;
    let owner = s.joiner("mute-owner", &room).no_call().connect().await?;
    let a = join_speaker(&s, &owner, &room, "mute-speaker", Tone::new(440.0, 0.5)).await?;
    let a_id = pid(&a)?;
    let ls = join_listeners(&s, &room, "mute-listener", 1).await?;
    let l = &ls[0];
    let a_sent = || sent(&a);
    hears(l, a_id, 45)
        .await
        .context("not hearing the speaker")?;

    // Self mute: the client keeps sending; the server stops forwarding.
    let dropped0 = s.server().sfu.stats().dropped_muted;
    a.mute().await?;
    eventually(STEP, "the mute to take effect", || {
        a.me().is_some_and(|me| me.muted).then_some(())
    })
    .await?;
    assert_silenced(l, a_id, a_sent, "self-muted").await?;
    assert!(s.server().sfu.stats().dropped_muted >= dropped0 + 50);
    eventually(STEP, "the listener to see the speaker muted", || {
        l.participants()
            .iter()
            .any(|p| p.participant_id == a_id && p.muted)
            .then_some(())
    })
    .await?;

    a.unmute().await?;
    eventually(STEP, "audio to resume after unmute", || {
        (heard(l, a_id) > 0 && a.me().is_some_and(|me| !me.muted)).then_some(())
    })
    .await?;
    hears(l, a_id, 45)
        .await
        .context("not resumed after unmute")?;

    // A moderator mutes the speaker; the speaker may unmute again.
    owner
        .send(&ClientMessage::MuteParticipant {
            participant_id: a_id,
        })
        .await?;
    eventually(STEP, "the moderator's mute to take effect", || {
        a.me().is_some_and(|me| me.muted).then_some(())
    })
    .await?;
    assert_silenced(l, a_id, a_sent, "muted by the moderator").await?;
    a.unmute().await?;
    eventually(STEP, "the speaker to unmute", || {
        a.me().is_some_and(|me| !me.muted).then_some(())
    })
    .await?;
    hears(l, a_id, 40)
        .await
        .context("not resumed after the moderator's mute was lifted")?;
    assert_frequency(
        l.peer().context("peer")?.source_frequency(a_id),
        440.0,
        "after unmute",
    );
    s.stop().await;
    Ok(())
}

/// A client that answers offers only when told to, so it can ignore a demotion and go
/// on sending: what a modified client could do.
struct RogueClient {
    id: ParticipantId,
    sender: loadtest::signal::SignalSender,
    receiver: loadtest::signal::SignalReceiver,
    peer: ClientPeer,
}

impl RogueClient {
    async fn join(s: &TestServer, user: &str, room: &str) -> anyhow::Result<Self> {
        let SignalClient {
            sender,
            mut receiver,
        } = SignalClient::connect(&s.ws, &Auth::Bearer(s.token(user)), STEP).await?;
        sender
            .send(&ClientMessage::JoinRoom {
                room_id: room.to_owned(),
                resume_token: None,
            })
            .await?;
        let id = receiver
            .wait_for(STEP, |m| match m {
                ServerMessage::Joined { you, .. } => Some(you.participant_id),
                _ => None,
            })
            .await?;
        let peer = ClientPeer::new(PeerConfig::default()).await?;
        sender.send(&ClientMessage::JoinCall).await?;
        let mut me = Self {
            id,
            sender,
            receiver,
            peer,
        };
        me.answer_next_offer().await?;
        me.peer.wait_connected(STEP).await?;
        Ok(me)
    }

    async fn next_offer(&mut self) -> anyhow::Result<(String, OfferLayout)> {
        Ok(self
            .receiver
            .wait_for(STEP, |m| match m {
                ServerMessage::Offer {
                    sdp,
                    publish_mid,
                    slot_mids,
                } => Some((
                    sdp.clone(),
                    OfferLayout {
                        publish_mid: publish_mid.clone(),
                        slot_mids: slot_mids.clone(),
                    },
                )),
                _ => None,
            })
            .await?)
    }

    async fn answer_next_offer(&mut self) -> anyhow::Result<()> {
        let (sdp, layout) = self.next_offer().await?;
        let answer = self.peer.answer_offer(&sdp, &layout, true).await?;
        self.sender
            .send(&ClientMessage::Answer { sdp: answer })
            .await?;
        Ok(())
    }

    fn sent(&self) -> u64 {
        self.peer.send_counters().packets.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_cannot_publish_until_promoted_and_a_demoted_client_that_keeps_sending_is_dropped()
-> anyhow::Result<()> {
    let _serial = MEDIA.lock().await;
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("role-owner", "open").await?;
    let owner = s.joiner("role-owner", &room).no_call().connect().await?;
    let ls = join_listeners(&s, &room, "role-listener", 1).await?;
    let m = &ls[0];

    // A listener who wants to speak: its mic line is not negotiated for sending, and
    // unmuting is refused.
    let mut hopeful = s
        .joiner("role-hopeful", &room)
        .speaking(Tone::new(350.0, 0.5))
        .connect()
        .await?;
    let hopeful_id = pid(&hopeful)?;
    assert!(hopeful.peer().context("peer")?.send_params().is_none());
    hopeful.unmute().await?;
    let code = expect_event(
        &mut hopeful,
        "the refusal of a listener's unmute",
        |m| match m {
            ServerMessage::Error { code, .. } => Some(*code),
            _ => None,
        },
    )
    .await?;
    assert_eq!(code, ErrorCode::Forbidden);

    // Promotion renegotiates; the new speaker publishes and is heard.
    let offers = hopeful.offers_answered();
    promote(&owner, &hopeful).await?;
    assert!(
        hopeful.offers_answered() > offers,
        "promotion did not renegotiate"
    );
    hears(m, hopeful_id, 45).await.context("audio flows")?;
    assert_frequency(
        m.peer().context("peer")?.source_frequency(hopeful_id),
        350.0,
        "the promoted speaker",
    );

    // A client that publishes, is demoted, ignores the new offer and keeps sending.
    let mut rogue = RogueClient::join(&s, "role-rogue", &room).await?;
    owner
        .send(&ClientMessage::SetRole {
            participant_id: rogue.id,
            role: Role::Speaker,
        })
        .await?;
    rogue.answer_next_offer().await?;
    rogue.sender.send(&ClientMessage::Unmute).await?;
    let rogue_id = rogue.id;
    rogue
        .receiver
        .wait_for(STEP, |m| match m {
            ServerMessage::ParticipantUpdated { participant }
                if participant.participant_id == rogue_id && !participant.muted =>
            {
                Some(())
            }
            _ => None,
        })
        .await?;
    rogue
        .peer
        .start_publishing(Box::new(Tone::new(900.0, 0.5)), Some(rogue_id))
        .await?;
    hears(m, rogue_id, 45).await.context("audio flows")?;

    let metric_before = metric(
        &s.metrics().await?,
        "chorus_media_packets_dropped_total{reason=\"not_publisher\"}",
    );
    owner
        .send(&ClientMessage::SetRole {
            participant_id: rogue_id,
            role: Role::Listener,
        })
        .await?;
    // The demotion's offer is the sync point: the SFU already refuses this client's media.
    let _ignored = rogue.next_offer().await?;
    assert!(
        rogue.peer.send_params().is_some(),
        "the rogue should still send"
    );
    assert_silenced(m, rogue_id, || rogue.sent(), "demoted client").await?;
    // The server tells the client, once, why its media is dropped.
    let refusal = rogue
        .receiver
        .wait_for(STEP, |m| match m {
            ServerMessage::Error { code, .. } => Some(*code),
            _ => None,
        })
        .await?;
    assert_eq!(refusal, ErrorCode::Forbidden);
    assert!(s.server().sfu.stats().dropped_not_publisher >= 50);
    let metric_after = metric(
        &s.metrics().await?,
        "chorus_media_packets_dropped_total{reason=\"not_publisher\"}",
    );
    assert!(
        metric_after >= metric_before + 50.0,
        "not_publisher drops in /metrics: {metric_before} -> {metric_after}"
    );
    // The honest speaker is still heard.
    hears(m, hopeful_id, 20).await.context("audio flows")?;
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_participant_is_gone_for_everyone_with_its_socket_and_audio() -> anyhow::Result<()>
{
    let _serial = MEDIA.lock().await;
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("rm-owner", "open").await?;
    let mut owner = s.joiner("rm-owner", &room).no_call().connect().await?;
    let mut a = join_speaker(&s, &owner, &room, "rm-speaker-a", Tone::new(300.0, 0.5)).await?;
    let b = join_speaker(&s, &owner, &room, "rm-speaker-b", Tone::new(600.0, 0.5)).await?;
    let (a_id, b_id) = (pid(&a)?, pid(&b)?);
    let mut ls = join_listeners(&s, &room, "rm-listener", 2).await?;
    for l in &ls {
        hears(l, a_id, 45).await.context("audio flows")?;
    }
    assert_eq!(s.server().sfu.stats().participants, 4);

    owner
        .send(&ClientMessage::RemoveParticipant {
            participant_id: a_id,
        })
        .await?;
    let reason = expect_event(&mut a, "removed", |m| match m {
        ServerMessage::Removed { reason } => Some(reason.clone()),
        _ => None,
    })
    .await?;
    assert!(!reason.is_empty());
    eventually(STEP, "the removed participant's socket to close", || {
        a.is_closed().then_some(())
    })
    .await?;
    for (i, l) in ls.iter_mut().enumerate() {
        expect_event(l, &format!("participant_left at listener {i}"), |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == a_id)
                .then_some(())
        })
        .await?;
        assert!(l.participants().iter().all(|p| p.participant_id != a_id));
    }
    expect_event(&mut owner, "participant_left at the moderator", |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == a_id)
            .then_some(())
    })
    .await?;
    eventually(STEP, "the SFU to forget the removed participant", || {
        (s.server().sfu.stats().participants == 3).then_some(())
    })
    .await?;
    // Its audio is gone while the other speaker goes on being heard.
    for l in &ls {
        let a_before = settle(&[l], &[a_id]).await?;
        hears(l, b_id, 45).await.context("the other speaker")?;
        assert_eq!(heard(l, a_id), a_before, "removed speaker still heard");
    }
    let snap = s
        .server()
        .signaling
        .room_snapshot(&room)
        .context("room snapshot")?;
    assert_eq!(snap.total_people, 4, "owner, speaker b and two listeners");
    drop(a);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_is_cleaned_up_after_the_resume_grace() -> anyhow::Result<()> {
    let _serial = MEDIA.lock().await;
    let s = TestServer::start(&["--resume-grace-secs", "2", "--peer-timeout-secs", "2"]).await?;
    let room = s.create_room("kill-owner", "open").await?;
    let owner = s.joiner("kill-owner", &room).no_call().connect().await?;
    let a = join_speaker(&s, &owner, &room, "kill-speaker-a", Tone::new(300.0, 0.5)).await?;
    let b = join_speaker(&s, &owner, &room, "kill-speaker-b", Tone::new(600.0, 0.5)).await?;
    let (a_id, b_id) = (pid(&a)?, pid(&b)?);
    let mut ls = join_listeners(&s, &room, "kill-listener", 1).await?;
    hears(&ls[0], a_id, 45).await.context("audio flows")?;
    let stats = s.server().sfu.stats();
    assert_eq!((stats.participants, stats.publishers), (3, 2));

    // No leave_call, no leave_room: the tasks and sockets just go.
    let killed_at = Instant::now();
    a.kill().await;
    let l = &mut ls[0];
    expect_event(l, "participant_left for the killed client", |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == a_id)
            .then_some(())
    })
    .await?;
    let after = killed_at.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "left after {after:?}: the resume grace (2 s) was not honoured"
    );
    eventually(
        STEP,
        "the SFU to drop the killed client's media state",
        || {
            let st = s.server().sfu.stats();
            (st.participants == 2 && st.publishers == 1 && st.remote_addrs == 2 && st.ufrags == 2)
                .then_some(())
        },
    )
    .await
    .with_context(|| format!("{:?}", s.server().sfu.stats()))?;
    let snap = s
        .server()
        .signaling
        .room_snapshot(&room)
        .context("room snapshot")?;
    assert_eq!((snap.total_people, snap.reconnecting), (3, 0));
    assert!(l.participants().iter().all(|p| p.participant_id != a_id));
    // The room goes on.
    let l = &ls[0];
    hears(l, b_id, 45).await.context("audio flows")?;
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_media_vanishes_is_dropped_from_the_call_after_the_peer_timeout()
-> anyhow::Result<()> {
    let _serial = MEDIA.lock().await;
    let s = TestServer::start(&["--peer-timeout-secs", "2"]).await?;
    let room = s.create_room("vanish-owner", "open").await?;
    let mut owner = s.joiner("vanish-owner", &room).no_call().connect().await?;
    let rogue = RogueClient::join(&s, "vanish-client", &room).await?;
    let id = rogue.id;
    eventually(STEP, "the client's media to connect", || {
        (s.server().sfu.stats().connected == 1).then_some(())
    })
    .await?;
    let disconnects = s.server().sfu.stats().disconnects;

    // The WebRTC side disappears without a goodbye; the WebSocket stays up.
    let RogueClient {
        sender,
        mut receiver,
        peer,
        ..
    } = rogue;
    drop(peer);
    let vanished_at = Instant::now();
    receiver
        .wait_for(STEP, |m| {
            matches!(m, ServerMessage::CallState { connected: false }).then_some(())
        })
        .await
        .context("call_state connected=false")?;
    let after = vanished_at.elapsed();
    eventually(STEP, "the SFU to drop the vanished peer", || {
        let st = s.server().sfu.stats();
        (st.participants == 0 && st.remote_addrs == 0 && st.ufrags == 0).then_some(())
    })
    .await
    .with_context(|| format!("{:?}", s.server().sfu.stats()))?;
    assert!(
        s.server().sfu.stats().disconnects > disconnects,
        "removed by the SFU's timeout, not by a goodbye"
    );
    assert!(after >= Duration::from_secs(1), "dropped after {after:?}");
    // Still in the room, out of the call, for everyone.
    expect_event(&mut owner, "the participant shown out of the call", |m| {
        matches!(m, ServerMessage::ParticipantUpdated { participant }
            if participant.participant_id == id && !participant.in_call)
        .then_some(())
    })
    .await?;
    sender.send(&ClientMessage::Ping).await?;
    receiver
        .wait_for(STEP, |m| matches!(m, ServerMessage::Pong).then_some(()))
        .await?;
    s.stop().await;
    Ok(())
}

/// Every `chorus_*` metric family the server exposes, from the `# TYPE` lines.
fn metric_families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("chorus_"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_live_call_and_every_family_is_documented() -> anyhow::Result<()> {
    let _serial = MEDIA.lock().await;
    let s = TestServer::start(&[]).await?;
    let room = s.create_room("metrics-owner", "open").await?;
    let owner = s
        .joiner("metrics-owner", &room)
        .speaking(Tone::new(440.0, 0.5))
        .connect()
        .await?;
    let speaker = pid(&owner)?;
    let listeners = join_listeners(&s, &room, "metrics-listener", 2).await?;
    for l in &listeners {
        hears(l, speaker, 25).await?;
    }

    let m = s.metrics().await?;
    let v = |series: &str| metric(&m, series);
    // Three peer connections joined: three join latencies, each well under the
    // connect timeout, in a cumulative histogram.
    let joins = v("chorus_join_duration_seconds_count");
    assert_eq!(joins, 3.0, "join count:\n{m}");
    assert_eq!(v("chorus_join_duration_seconds_bucket{le=\"+Inf\"}"), joins);
    let sum = v("chorus_join_duration_seconds_sum");
    assert!(sum > 0.0 && sum < 3.0 * 15.0, "join sum {sum}");
    assert!(
        v("chorus_join_duration_seconds_bucket{le=\"5\"}") >= joins - 0.5,
        "a loopback join took over 5 s:\n{m}"
    );
    // One publisher heard by two listeners (the owner hears nobody: nobody hears themself).
    assert_eq!(v("chorus_media_publishers"), 1.0);
    assert_eq!(v("chorus_media_subscriptions"), 2.0, "subscriptions:\n{m}");
    assert_eq!(v("chorus_participants{role=\"listener\"}"), 2.0);
    assert_eq!(v("chorus_participants{role=\"moderator\"}"), 1.0);
    assert_eq!(v("chorus_ws_connections"), 3.0);
    assert!(v("chorus_media_packets_total{direction=\"forwarded\"}") >= 50.0);
    assert!(v("chorus_media_bytes_total{direction=\"received\"}") > 0.0);
    // The store was timed: the room was created and looked up for each join.
    assert!(v("chorus_store_operation_duration_seconds_count{op=\"create_room\"}") >= 1.0);
    assert!(v("chorus_store_operation_duration_seconds_count{op=\"get_room\"}") >= 3.0);
    // CPU with sub-second resolution, agreeing with the whole-second counter.
    let precise = v("chorus_process_cpu_seconds_total");
    let coarse = v("process_cpu_seconds_total");
    assert!(precise > 0.0 && precise.fract() != 0.0, "cpu {precise}");
    assert!((precise - coarse).abs() < 2.0, "cpu {precise} vs {coarse}");
    assert!(!m.contains(&room), "a room id leaked into a label");

    // Operators read the README's table: every family must be in it.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))?;
    let families = metric_families(&m);
    assert!(families.len() >= 20, "{families:?}");
    for f in &families {
        assert!(
            readme.contains(&format!("`{f}")),
            "{f} is exposed but not documented in README.md"
        );
    }

    // Everyone leaves: the gauges return to zero.
    for l in listeners {
        l.leave().await;
    }
    owner.leave().await;
    eventually_async(STEP, "media gauges back to zero", || async {
        let m = s.metrics().await.ok()?;
        (metric(&m, "chorus_media_subscriptions") == 0.0
            && metric(&m, "chorus_media_participants") == 0.0
            && metric(&m, "chorus_media_publishers") == 0.0)
            .then_some(())
    })
    .await?;
    s.stop().await;
    Ok(())
}
