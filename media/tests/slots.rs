//! Large-room behaviour over real WebRTC: more speakers than slots, the loudest are heard,
//! and a slot switch keeps the outgoing stream continuous and decodable.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{Client, Events, dominant_tone, join, test_config, wait_until};
use media::{ParticipantId, RoomKey, Sfu, SfuEvent};

const CONNECT: Duration = Duration::from_secs(15);
const TONES: [f64; 5] = [400.0, 520.0, 680.0, 820.0, 1000.0];
const LOUD: u8 = 10; // -10 dBov
const QUIET: u8 = 70; // -70 dBov: below the speaking threshold

fn pid(i: usize) -> ParticipantId {
    ParticipantId(i as u64 + 1)
}

/// Which speakers' tones the listener currently hears, judged on the last 0.4 s per stream.
fn heard_now(c: &Client) -> Vec<(String, Option<f64>)> {
    c.with_streams(|streams| {
        let mut v: Vec<_> = streams
            .values()
            .map(|r| {
                let tail = &r.pcm[r.pcm.len().saturating_sub(19_200)..];
                (r.track_id.clone(), dominant_tone(tail, &TONES))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    })
}

fn hears(c: &Client, tones: &[f64]) -> bool {
    let now = heard_now(c);
    tones
        .iter()
        .all(|t| now.iter().any(|(_, h)| *h == Some(*t)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_speakers_three_slots_loudest_heard_and_switch_is_seamless() -> Result<()> {
    let (sfu, rx) = Sfu::start(test_config())?;
    let events = Events::spawn(rx);
    let room = RoomKey(5);
    let mut speakers = Vec::new();
    for i in 0..TONES.len() {
        speakers.push(join(&sfu, room, pid(i), true, true, &format!("speaker{i}")).await?);
    }
    let mut listener = join(&sfu, room, ParticipantId(100), false, false, "listener").await?;
    for c in speakers.iter_mut().chain(std::iter::once(&mut listener)) {
        c.wait_connected(CONNECT).await?;
    }
    // Speakers 0..=2 loud, 3 and 4 quiet.
    for (i, s) in speakers.iter_mut().enumerate() {
        s.start_tone(TONES[i], if i < 3 { LOUD } else { QUIET })
            .await?;
    }
    let first = wait_until(
        Duration::from_secs(15),
        "the three loud speakers heard",
        || hears(&listener, &TONES[..3]),
    )
    .await;
    if first.is_err() {
        eprintln!("heard {:?} events {:?}", heard_now(&listener), events.all());
    }
    first?;
    assert_eq!(
        listener.with_streams(|s| s.len()),
        3,
        "three slots, three streams"
    );
    let (slots, spare) = sfu.slot_map(room).await?.expect("room exists");
    assert_eq!(slots.iter().flatten().count(), 3);
    assert!(
        slots.iter().flatten().all(|p| p.0 <= 3),
        "the loud three hold the slots: {slots:?}"
    );
    assert!(
        spare.is_some_and(|p| p.0 >= 4),
        "a quiet one is the spare: {spare:?}"
    );
    assert_eq!(sfu.slot_map(RoomKey(404)).await?, None);
    wait_until(
        Duration::from_secs(10),
        "active speakers: the loud three",
        || {
            events.count(|e| match e {
                SfuEvent::ActiveSpeakers { room: r, speakers } => {
                    *r == room
                        && speakers.len() == 3
                        && speakers
                            .iter()
                            .all(|(p, l)| p.0 <= 3 && *l > 0.0 && *l <= 1.0)
                }
                _ => false,
            }) > 0
        },
    )
    .await?;

    // Speaker 4 starts talking loudly, speaker 0 falls silent: slot of 0 goes to 4.
    speakers[4].set_tone_level(0);
    speakers[0].set_tone_level(127);
    let switched = wait_until(
        Duration::from_secs(10),
        "speaker 4 replaces speaker 0",
        || hears(&listener, &[TONES[1], TONES[2], TONES[4]]),
    )
    .await;
    if switched.is_err() {
        eprintln!("heard {:?} events {:?}", heard_now(&listener), events.all());
    }
    switched?;
    assert!(
        events.count(
            |e| matches!(e, SfuEvent::SlotsChanged { room: r, slots, .. }
            if *r == room && slots.contains(&Some(pid(4))) && !slots.contains(&Some(pid(0))))
        ) > 0,
        "a SlotsChanged event announced the switch: {:?}",
        events.all()
    );
    // Let a few more packets arrive after the switch, then check every slot's continuity.
    let total = listener.received_total();
    wait_until(
        Duration::from_secs(5),
        "more audio after the switch",
        || listener.received_total() >= total + 30,
    )
    .await?;
    for s in &mut speakers {
        s.stop_tone().await;
    }
    listener.with_streams(|streams| {
        assert_eq!(
            streams.len(),
            3,
            "still exactly three streams (no renegotiation)"
        );
        for r in streams.values() {
            assert_eq!(r.decode_errors, 0, "{}: decodable", r.track_id);
            for w in r.seqs.windows(2) {
                assert_eq!(
                    w[1],
                    w[0].wrapping_add(1),
                    "{}: no sequence gap",
                    r.track_id
                );
            }
            for w in r.timestamps.windows(2) {
                let step = w[1].wrapping_sub(w[0]);
                assert!(
                    step > 0 && step < 48_000 * 5,
                    "{}: monotonic ts, step {step}",
                    r.track_id
                );
            }
        }
    });
    Ok(())
}
