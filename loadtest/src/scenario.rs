//! Scenario runner: many participants in one process, joined at a bounded rate,
//! speakers talking for a fixed time, listeners measuring; the result is a
//! [`Report`] (delivery, loss, latency and join-time percentiles). Used by the smoke
//! test and by the harness binary. Acts only over the wire (WebSocket + WebRTC).
//!
//! Roles follow the server's rules: the first speaker of each room must be its owner
//! (a moderator, who joins unmuted); every other speaker joins as a listener, is
//! promoted by the owner with `set_role`, answers the renegotiation and unmutes.
//! Delivery is measured over a window that starts once everyone is in and ends after
//! the speakers stop and a short drain: for every (listener, speaker) pair, packets
//! received from that speaker divided by packets the speaker sent in the window
//! (speakers are counted through the shared [`SendRegistry`]). Latency percentiles
//! cover the window only. Only the first
//! `slot_count` speakers of a room can be heard by everyone, so rooms with more
//! speakers than slots should use speaker turns (not implemented yet) to be measured.

use crate::audio::{Tone, VoiceLike};
use crate::peer::PeerConfig;
use crate::protocol::{ClientMessage, ParticipantId, Role};
use crate::registry::SendRegistry;
use crate::session::{Session, SessionConfig};
use crate::stats::percentile;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One room of a scenario; tokens are the participants' access tokens.
#[derive(Clone, Debug)]
pub struct RoomPlan {
    pub room_id: String,
    /// First = the room owner.
    pub speakers: Vec<String>,
    pub listeners: Vec<String>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub ws_url: String,
    pub rooms: Vec<RoomPlan>,
    /// Measurement window once everyone has joined.
    pub duration: Duration,
    /// Joins per second across the whole scenario (so the harness does not measure its
    /// own stampede).
    pub join_rate: f64,
    /// 0 = steady tone; otherwise the voice-like signal's pause ratio (DTX in pauses).
    pub pause_ratio: f64,
    /// Listeners decode Opus (costs CPU; needed for frequency checks).
    pub decode: bool,
    pub interceptors: bool,
    pub step_timeout: Duration,
}

impl Scenario {
    pub fn new(ws_url: impl Into<String>, rooms: Vec<RoomPlan>, duration: Duration) -> Self {
        Self {
            ws_url: ws_url.into(),
            rooms,
            duration,
            join_rate: 20.0,
            pause_ratio: 0.0,
            decode: false,
            interceptors: true,
            step_timeout: Duration::from_secs(15),
        }
    }
}

/// Distribution summary in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Percentiles {
    /// From microsecond samples.
    pub fn from_us(samples: &[u32]) -> Self {
        let ms = |p: f64| percentile(samples, p).map(|us| f64::from(us) / 1000.0);
        Self {
            samples: samples.len(),
            p50_ms: ms(50.0),
            p95_ms: ms(95.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
        }
    }
}

/// Delivery from one speaker to one listener over the window.
#[derive(Clone, Debug, Serialize)]
pub struct PairDelivery {
    pub room_id: String,
    pub speaker: u64,
    pub listener: u64,
    pub sent: u64,
    pub received: u64,
}

impl PairDelivery {
    pub fn delivered_pct(&self) -> f64 {
        if self.sent == 0 {
            100.0
        } else {
            100.0 * self.received.min(self.sent) as f64 / self.sent as f64
        }
    }
}

/// The outcome of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub rooms: usize,
    pub speakers: usize,
    pub listeners: usize,
    pub window_secs: f64,
    pub packets_sent: u64,
    pub packets_expected: u64,
    pub packets_received: u64,
    /// received / expected over all pairs, percent.
    pub delivered_pct: f64,
    /// Worst pair, percent.
    pub worst_pair_pct: f64,
    pub latency: Percentiles,
    /// Token to first audio packet, listeners only.
    pub join: Percentiles,
    /// RFC 3550 jitter, worst listener stream, milliseconds.
    pub max_jitter_ms: f64,
    pub pairs: Vec<PairDelivery>,
}

impl Report {
    /// Builds the summary from per-pair results and raw samples.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        rooms: usize,
        speakers: usize,
        listeners: usize,
        window: Duration,
        packets_sent: u64,
        pairs: Vec<PairDelivery>,
        latency_us: &[u32],
        join_us: &[u32],
        max_jitter: Duration,
    ) -> Self {
        let expected: u64 = pairs.iter().map(|p| p.sent).sum();
        let received: u64 = pairs.iter().map(|p| p.received.min(p.sent)).sum();
        Self {
            rooms,
            speakers,
            listeners,
            window_secs: window.as_secs_f64(),
            packets_sent,
            packets_expected: expected,
            packets_received: received,
            delivered_pct: if expected == 0 {
                100.0
            } else {
                100.0 * received as f64 / expected as f64
            },
            worst_pair_pct: pairs
                .iter()
                .map(PairDelivery::delivered_pct)
                .fold(100.0, f64::min),
            latency: Percentiles::from_us(latency_us),
            join: Percentiles::from_us(join_us),
            max_jitter_ms: max_jitter.as_secs_f64() * 1000.0,
            pairs,
        }
    }

    /// Human-readable table.
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"));
        format!(
            "rooms {} | speakers {} | listeners {} | window {:.1}s\n\
             delivered {:.2}% (worst pair {:.2}%) | received {} of {} expected | sent {}\n\
             latency ms p50 {} p95 {} p99 {} max {} | jitter max {:.1} ms\n\
             join ms p50 {} p99 {} (n={})",
            self.rooms,
            self.speakers,
            self.listeners,
            self.window_secs,
            self.delivered_pct,
            self.worst_pair_pct,
            self.packets_received,
            self.packets_expected,
            self.packets_sent,
            f(self.latency.p50_ms),
            f(self.latency.p95_ms),
            f(self.latency.p99_ms),
            f(self.latency.max_ms),
            self.max_jitter_ms,
            f(self.join.p50_ms),
            f(self.join.p99_ms),
            self.join.samples,
        )
    }
}

struct Joined {
    room: usize,
    session: Session,
    id: ParticipantId,
    speaker: bool,
}

/// Paces joins: at most `rate` per second.
struct Pacer {
    interval: Duration,
    next: tokio::time::Instant,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        Self {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: tokio::time::Instant::now(),
        }
    }

    async fn wait(&mut self) {
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now().max(self.next) + self.interval;
    }
}

/// Runs the scenario to completion (bounded: joins by `step_timeout` each, then the
/// window, then a 1 s drain) and leaves every session.
pub async fn run(sc: &Scenario) -> Result<Report> {
    if sc.rooms.iter().any(|r| r.speakers.is_empty()) {
        return Err(Error::Invalid(
            "every room needs its owner as first speaker".into(),
        ));
    }
    let registry = Arc::new(SendRegistry::default());
    let peer_cfg = PeerConfig {
        decode: sc.decode,
        interceptors: sc.interceptors,
        registry: Some(registry.clone()),
        ..Default::default()
    };
    let mut pacer = Pacer::new(sc.join_rate);
    let mut joined: Vec<Joined> = Vec::new();
    let mut owners: HashMap<usize, usize> = HashMap::new();
    let mut speaker_n = 0u32;

    let result = async {
        // Speakers first (owner first), so listeners' join time ends at real audio.
        for (ri, room) in sc.rooms.iter().enumerate() {
            for (si, token) in room.speakers.iter().enumerate() {
                pacer.wait().await;
                let freq = 300.0 + 70.0 * f64::from(speaker_n);
                let source: Box<dyn crate::audio::SignalSource> = if sc.pause_ratio > 0.0 {
                    Box::new(VoiceLike::new(
                        freq,
                        0.5,
                        u64::from(speaker_n) + 1,
                        sc.pause_ratio,
                    ))
                } else {
                    Box::new(Tone::new(freq, 0.5))
                };
                speaker_n += 1;
                let mut cfg = SessionConfig::new(&sc.ws_url, token.clone(), &room.room_id);
                cfg.peer = peer_cfg.clone();
                cfg.step_timeout = sc.step_timeout;
                cfg.publish = Some(source);
                let session = Session::connect(cfg).await?;
                let id = session
                    .participant_id()
                    .ok_or_else(|| Error::Protocol("joined without an id".into()))?;
                if si == 0 {
                    if session.me().map(|m| m.role) != Some(Role::Moderator) {
                        return Err(Error::Invalid(format!(
                            "first speaker of room {} is not its owner",
                            room.room_id
                        )));
                    }
                    owners.insert(ri, joined.len());
                } else {
                    promote(&joined[owners[&ri]].session, &session, id, sc.step_timeout).await?;
                }
                joined.push(Joined {
                    room: ri,
                    session,
                    id,
                    speaker: true,
                });
            }
        }
        for (ri, room) in sc.rooms.iter().enumerate() {
            for token in &room.listeners {
                pacer.wait().await;
                let mut cfg = SessionConfig::new(&sc.ws_url, token.clone(), &room.room_id);
                cfg.peer = peer_cfg.clone();
                cfg.step_timeout = sc.step_timeout;
                let session = Session::connect(cfg).await?;
                let id = session
                    .participant_id()
                    .ok_or_else(|| Error::Protocol("joined without an id".into()))?;
                joined.push(Joined {
                    room: ri,
                    session,
                    id,
                    speaker: false,
                });
            }
        }

        // Join times: listeners' token-to-first-audio (bounded wait for stragglers).
        let mut join_us = Vec::new();
        for j in joined.iter().filter(|j| !j.speaker) {
            let d = j.session.wait_first_audio(sc.step_timeout).await?;
            join_us.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
        }

        // Window start: snapshot counters.
        let sent_before: HashMap<ParticipantId, u64> = joined
            .iter()
            .filter(|j| j.speaker)
            .map(|j| (j.id, registry.sent_count(j.id)))
            .collect();
        let recv_before = received_counts(&joined);
        // Latency is reported for the window only: joins (DTLS handshakes) load the
        // machine and would otherwise dominate the tail.
        for j in &joined {
            if let Some(p) = j.session.peer() {
                p.clear_latency();
            }
        }
        let window_start = Instant::now();
        tokio::time::sleep(sc.duration).await;
        for j in joined.iter().filter(|j| j.speaker) {
            j.session.stop_publishing();
        }
        let window = window_start.elapsed();
        let sent_after: HashMap<ParticipantId, u64> = joined
            .iter()
            .filter(|j| j.speaker)
            .map(|j| (j.id, registry.sent_count(j.id)))
            .collect();
        // Drain: what was sent in the window may still be in flight.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let recv_after = received_counts(&joined);

        let mut pairs = Vec::new();
        let mut latency_us = Vec::new();
        let mut max_jitter = Duration::ZERO;
        for l in joined.iter().filter(|j| !j.speaker) {
            if let Some(p) = l.session.peer() {
                let snap = p.snapshot();
                for st in snap.sources.values() {
                    latency_us.extend_from_slice(st.latency_samples_us());
                }
                for s in &snap.slots {
                    max_jitter = max_jitter.max(s.stats.jitter());
                }
            }
            for s in joined.iter().filter(|s| s.speaker && s.room == l.room) {
                let sent = sent_after
                    .get(&s.id)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(sent_before.get(&s.id).copied().unwrap_or(0));
                let key = (l.id, s.id);
                let received = recv_after
                    .get(&key)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(recv_before.get(&key).copied().unwrap_or(0));
                pairs.push(PairDelivery {
                    room_id: sc.rooms[l.room].room_id.clone(),
                    speaker: s.id.0,
                    listener: l.id.0,
                    sent,
                    received,
                });
            }
        }
        let total_sent = sent_after
            .values()
            .sum::<u64>()
            .saturating_sub(sent_before.values().sum::<u64>());
        Ok(Report::from_parts(
            sc.rooms.len(),
            joined.iter().filter(|j| j.speaker).count(),
            joined.iter().filter(|j| !j.speaker).count(),
            window,
            total_sent,
            pairs,
            &latency_us,
            &join_us,
            max_jitter,
        ))
    }
    .await;

    for j in joined {
        j.session.leave().await;
    }
    result
}

/// (listener, speaker) -> packets received so far.
fn received_counts(joined: &[Joined]) -> HashMap<(ParticipantId, ParticipantId), u64> {
    let mut out = HashMap::new();
    for l in joined.iter().filter(|j| !j.speaker) {
        if let Some(p) = l.session.peer() {
            for (src, st) in p.snapshot().sources {
                out.insert((l.id, src), st.packets);
            }
        }
    }
    out
}

/// The owner promotes `id`; the promoted session answers the renegotiation in the
/// background (and starts its held signal), then unmutes (promoted speakers start muted).
async fn promote(
    owner: &Session,
    speaker: &Session,
    id: ParticipantId,
    deadline: Duration,
) -> Result<()> {
    let answered = speaker.offers_answered();
    owner
        .send(&ClientMessage::SetRole {
            participant_id: id,
            role: Role::Speaker,
        })
        .await?;
    crate::within(deadline, "the promotion's renegotiation", async {
        while speaker.offers_answered() <= answered
            || speaker.peer().is_some_and(|p| p.send_params().is_none())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    })
    .await?;
    speaker.unmute().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_sums_pairs_and_finds_the_worst() {
        let pairs = vec![
            PairDelivery {
                room_id: "r".into(),
                speaker: 1,
                listener: 2,
                sent: 100,
                received: 100,
            },
            PairDelivery {
                room_id: "r".into(),
                speaker: 1,
                listener: 3,
                sent: 100,
                received: 90,
            },
            // Late packets from before the window cannot push a pair above 100%.
            PairDelivery {
                room_id: "r".into(),
                speaker: 4,
                listener: 3,
                sent: 50,
                received: 52,
            },
        ];
        let r = Report::from_parts(
            1,
            2,
            2,
            Duration::from_secs(2),
            150,
            pairs,
            &[1000, 2000, 3000, 4000],
            &[500_000],
            Duration::from_millis(3),
        );
        assert_eq!(r.packets_expected, 250);
        assert_eq!(r.packets_received, 240);
        assert!((r.delivered_pct - 96.0).abs() < 1e-9);
        assert!((r.worst_pair_pct - 90.0).abs() < 1e-9);
        assert_eq!(r.latency.p50_ms, Some(2.0));
        assert_eq!(r.latency.max_ms, Some(4.0));
        assert_eq!(r.join.p99_ms, Some(500.0));
        assert!(r.table().contains("delivered 96.00%"));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["packets_expected"], 250);
    }

    #[test]
    fn empty_report_is_not_a_division_by_zero() {
        let r = Report::from_parts(0, 0, 0, Duration::ZERO, 0, vec![], &[], &[], Duration::ZERO);
        assert_eq!(r.delivered_pct, 100.0);
        assert_eq!(r.latency, Percentiles::default());
    }

    #[tokio::test]
    async fn pacer_spaces_joins_at_the_rate() {
        let mut p = Pacer::new(50.0);
        let t0 = tokio::time::Instant::now();
        for _ in 0..5 {
            p.wait().await;
        }
        // The first join is immediate, the next four 20 ms apart; timers never fire
        // early, and the upper bound only guards against a busy machine's worst case.
        let e = t0.elapsed();
        assert!(
            e >= Duration::from_millis(80) && e < Duration::from_secs(2),
            "{e:?}"
        );
        // Nonsense rates fall back to 1/s rather than dividing by zero.
        assert_eq!(Pacer::new(0.0).interval, Duration::from_secs(1));
        assert_eq!(Pacer::new(f64::NAN).interval, Duration::from_secs(1));
    }
}
