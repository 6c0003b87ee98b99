//! One measured window: the delivery sampler, the listeners' stream statistics within the
//! window, the server's and the harness's own figures before and after it, and the
//! listener churn that runs during it.

use super::listeners::{Harvest, JoinCtx, ListenerPos};
use super::{Run, SAMPLE_EVERY};
use crate::harness::metrics::{self, ServerSnapshot};
use crate::harness::report::{
    JoinPhases, JoinStats, NodeReport, ServerFigures, StepReport, summarize_ms,
};
use crate::protocol::ParticipantId;
use crate::session::SessionConfig;
use crate::stats::StreamStats;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Per listener and source, where the counters stood when a window began.
#[derive(Clone, Copy, Default)]
struct Mark {
    packets: u64,
    latency_samples: usize,
    lost: i64,
    expected: u64,
}

impl Run<'_> {
    /// One measured window at the current size.
    pub(super) async fn measure(
        &mut self,
        per_room: usize,
        baseline: &[Option<ServerSnapshot>],
    ) -> StepReport {
        let sc = self.sc;
        let marks = self.marks();
        let sent_before = self.sent_counts();
        let harvest_from = self.harvests.lock().len();
        let server_before = self.target.scrape().await;
        let own_before = metrics::own_cpu_seconds();
        let udp_before = metrics::udp_rcvbuf_errors();
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));

        let churn = if sc.churn > 0.0 {
            Some(self.spawn_churn(stop.clone()))
        } else {
            None
        };

        // The delivery sampler.
        self.progress
            .phase("measuring", sc.duration.as_secs().max(1));
        let mut state = SamplerState::new(self.target.nodes.len());
        // The first and last samples are taken with every speaker silent and nothing
        // in flight, so packets crossing the window's edges cannot skew delivery.
        self.quiesce().await;
        self.sample(&mut state);
        self.quiet.store(false, Ordering::Relaxed);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample(&mut state);
            let el = started.elapsed();
            let d = state
                .delivered()
                .map_or("-".to_owned(), |d| format!("{:.2}%", d * 100.0));
            self.progress.set(
                el.as_secs(),
                &format!("delivered {d}, {} listeners", self.listeners.len()),
            );
            if el >= sc.duration {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(c) = churn {
            let _ = c.await;
        }
        self.quiesce().await;
        self.sample(&mut state);
        self.quiet.store(false, Ordering::Relaxed);
        let window = started.elapsed().as_secs_f64();
        let sent_after = self.sent_counts();
        let speaker_packets_sent: Vec<u64> = sent_after
            .iter()
            .zip(&sent_before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let own_after = metrics::own_cpu_seconds();
        let udp_after = metrics::udp_rcvbuf_errors();
        let server_after = self.target.scrape().await;

        // Stream statistics within the window.
        let mut lat: Vec<f64> = Vec::new();
        let mut jitters: Vec<f64> = Vec::new();
        let (mut lost, mut seq_expected, mut rx_packets) = (0i64, 0u64, 0u64);
        let mut account =
            |pos: usize, generation: u64, sources: &HashMap<ParticipantId, StreamStats>| {
                for (pid, st) in sources {
                    let m = marks
                        .get(&(pos, generation, *pid))
                        .copied()
                        .unwrap_or_default();
                    let samples = st.latency_samples_us();
                    let from = if m.latency_samples <= samples.len() && samples.len() < 20_000 {
                        m.latency_samples
                    } else {
                        0
                    };
                    lat.extend(samples[from..].iter().map(|us| f64::from(*us) / 1e3));
                    lost += st.lost - m.lost;
                    rx_packets += st.packets.saturating_sub(m.packets);
                    seq_expected += st.expected().saturating_sub(m.expected);
                    if st.packets > 0 {
                        jitters.push(st.jitter().as_secs_f64() * 1e3);
                    }
                }
            };
        for h in self.harvests.lock()[harvest_from..].iter() {
            account(h.pos, h.generation, &h.sources);
        }
        let nodes = self.target.nodes.len();
        let mut live_on = vec![0usize; nodes];
        for (i, l) in self.listeners.iter().enumerate() {
            let s = l.session.lock().clone();
            if let Some(s) = s
                && let Some(p) = s.media()
            {
                if let Some(n) = live_on.get_mut(l.node) {
                    *n += 1;
                }
                let g = l.generation.load(Ordering::Relaxed);
                account(i, g, &p.snapshot().sources);
            }
        }
        let live: usize = live_on.iter().sum();
        let mut speakers_on = vec![0usize; nodes];
        for s in self.speakers.iter().flatten() {
            if let Some(n) = speakers_on.get_mut(s.node) {
                *n += 1;
            }
        }
        let speakers = sc.rooms * sc.speakers;
        let participants = speakers + live;
        let joins = {
            let j = self.joins.lock();
            JoinStats {
                count: j.times_ms.len() as u64,
                failures: j.failures,
                no_audio: j.no_audio,
                ms: summarize_ms(&j.times_ms),
                phases_p50_ms: JoinPhases {
                    ws_connected: summarize_ms(&j.phases_ms[0]).p50,
                    joined_room: summarize_ms(&j.phases_ms[1]).p50,
                    offer_received: summarize_ms(&j.phases_ms[2]).p50,
                    media_connected: summarize_ms(&j.phases_ms[3]).p50,
                },
                errors: j.errors.clone(),
            }
        };
        let node_reports: Vec<NodeReport> = if nodes > 1 {
            (0..nodes)
                .map(|k| {
                    let (expected, received) = state.by_node[k];
                    NodeReport {
                        url: self.target.nodes[k].url.clone(),
                        speakers: speakers_on[k],
                        listeners_live: live_on[k],
                        expected,
                        received,
                        delivered: (expected > 0).then(|| received as f64 / expected as f64),
                        server: ServerFigures::from_snapshots(
                            baseline.get(k).copied().flatten(),
                            server_before.get(k).copied().flatten(),
                            server_after.get(k).copied().flatten(),
                            window,
                            speakers_on[k] + live_on[k],
                        ),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let (server, harness_cpu) = (
            ServerFigures::from_snapshots(
                ServerSnapshot::total(baseline),
                ServerSnapshot::total(&server_before),
                ServerSnapshot::total(&server_after),
                window,
                participants,
            ),
            match (own_before, own_after) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
        );
        StepReport {
            listeners_per_room: per_room,
            listeners_live: live,
            participants,
            window_secs: window,
            speaker_packets_sent,
            expected: state.expected,
            received: state.received,
            delivered: state.delivered(),
            seq_loss: (seq_expected > 0).then(|| lost.max(0) as f64 / seq_expected as f64),
            latency_ms: summarize_ms(&lat),
            jitter_ms: summarize_ms(&jitters),
            joins,
            server,
            nodes: node_reports,
            harness_cpu_seconds: harness_cpu,
            harness_cpu_percent: harness_cpu.map(|c| c / window * 100.0),
            harness_packets_received: rx_packets,
            harness_cpu_us_per_received_packet: harness_cpu
                .filter(|_| rx_packets > 0)
                .map(|c| c * 1e6 / rx_packets as f64),
            harness_rss_bytes: metrics::own_rss_bytes(),
            udp_rcvbuf_errors: match (udp_before, udp_after) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
        }
    }

    /// Silences every speaker and waits until nothing is being sent (Opus DTX takes a
    /// few frames) and what was sent has had time to arrive. Bounded.
    async fn quiesce(&self) {
        self.quiet.store(true, Ordering::Relaxed);
        let end = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut last = self.sent_counts();
        let mut stable_since = tokio::time::Instant::now();
        while tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.sent_counts();
            if now != last {
                last = now;
                stable_since = tokio::time::Instant::now();
            } else if stable_since.elapsed() >= Duration::from_millis(300) {
                break;
            }
        }
    }

    /// Packets each speaker has sent so far (room by room, speaker by speaker).
    fn sent_counts(&self) -> Vec<u64> {
        self.speakers
            .iter()
            .flatten()
            .map(|s| self.registry.sent_count(s.pid))
            .collect()
    }

    /// Where every live listener's counters stand now.
    fn marks(&self) -> HashMap<(usize, u64, ParticipantId), Mark> {
        let mut out = HashMap::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let s = l.session.lock().clone();
            let Some(s) = s else { continue };
            let Some(p) = s.media() else { continue };
            let g = l.generation.load(Ordering::Relaxed);
            for (pid, st) in p.snapshot().sources {
                out.insert(
                    (i, g, pid),
                    Mark {
                        packets: st.packets,
                        latency_samples: st.latency_samples_us().len(),
                        lost: st.lost,
                        expected: st.expected(),
                    },
                );
            }
        }
        out
    }

    fn sample(&self, state: &mut SamplerState) {
        let mut sent: HashMap<ParticipantId, u64> = HashMap::new();
        for room in &self.speakers {
            for s in room {
                sent.insert(s.pid, self.registry.sent_count(s.pid));
            }
        }
        let mut now: Vec<Option<ListenerSample>> = Vec::with_capacity(self.listeners.len());
        for l in &self.listeners {
            let s = l.session.lock().clone();
            let sample = s.and_then(|s| {
                let p = s.media()?;
                let in_slots: Vec<ParticipantId> = s.slots().into_iter().flatten().collect();
                let recv = in_slots
                    .iter()
                    .map(|pid| (*pid, p.packets_from(*pid)))
                    .collect();
                Some(ListenerSample {
                    generation: l.generation.load(Ordering::Relaxed),
                    node: l.node,
                    recv,
                })
            });
            now.push(sample);
        }
        if let Some(prev_sent) = &state.prev_sent {
            for (i, cur) in now.iter().enumerate() {
                let (Some(cur), Some(Some(prev))) = (cur, state.prev.get(i)) else {
                    continue;
                };
                if cur.generation != prev.generation {
                    continue;
                }
                for (pid, rx) in &cur.recv {
                    let Some(prx) = prev.recv.iter().find(|(p, _)| p == pid).map(|(_, r)| *r)
                    else {
                        continue;
                    };
                    let (Some(s1), Some(s0)) = (sent.get(pid), prev_sent.get(pid)) else {
                        continue;
                    };
                    let (e, r) = (s1.saturating_sub(*s0), rx.saturating_sub(prx));
                    state.expected += e;
                    state.received += r;
                    if let Some(n) = state.by_node.get_mut(cur.node) {
                        n.0 += e;
                        n.1 += r;
                    }
                }
            }
        }
        state.prev = now;
        state.prev_sent = Some(sent);
    }

    /// Listeners leave and rejoin, spread evenly over the window.
    fn spawn_churn(&self, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
        let n = ((self.listeners.len() as f64) * self.sc.churn).round() as usize;
        let every = self.sc.duration.div_f64((n + 1) as f64);
        let mut order: Vec<Arc<ListenerPos>> = self.listeners.clone();
        // A fixed, spread-out order: every k-th listener.
        order.sort_by_key(|p| Arc::as_ptr(p) as usize % 7919);
        let ctx = JoinCtx {
            pacer: self.pacer.clone(),
            joins: self.joins.clone(),
        };
        let configs: Vec<SessionConfig> = order
            .iter()
            .take(n)
            .map(|p| self.session_config(String::new(), p.room, p.node, true))
            .collect();
        let index: HashMap<usize, usize> = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, p)| (Arc::as_ptr(p) as usize, i))
            .collect();
        let harvests = self.harvests.clone();
        let tokens = self.target.tokens.clone();
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for (pos, cfg) in order.into_iter().zip(configs) {
                tokio::time::sleep(every).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // The token is obtained before leaving, so the gap is only the rejoin.
                let token = tokens.token().await;
                let taken = pos.session.lock().take();
                pos.generation.fetch_add(1, Ordering::Relaxed);
                if let Some(s) = taken {
                    if let (Some(p), Some(&i)) =
                        (s.media(), index.get(&(Arc::as_ptr(&pos) as usize)))
                    {
                        harvests.lock().push(Harvest {
                            pos: i,
                            generation: pos.generation.load(Ordering::Relaxed) - 1,
                            sources: p.snapshot().sources,
                        });
                    }
                    if let Ok(s) = Arc::try_unwrap(s) {
                        s.leave().await;
                    }
                }
                let ctx = JoinCtx {
                    pacer: ctx.pacer.clone(),
                    joins: ctx.joins.clone(),
                };
                set.spawn(async move { ctx.join(pos, cfg, token, true).await });
            }
            while set.join_next().await.is_some() {}
        })
    }
}

struct SamplerState {
    prev: Vec<Option<ListenerSample>>,
    prev_sent: Option<HashMap<ParticipantId, u64>>,
    expected: u64,
    received: u64,
    /// (expected, received) of the listeners of each node.
    by_node: Vec<(u64, u64)>,
}

impl SamplerState {
    fn new(nodes: usize) -> Self {
        Self {
            prev: Vec::new(),
            prev_sent: None,
            expected: 0,
            received: 0,
            by_node: vec![(0, 0); nodes],
        }
    }

    fn delivered(&self) -> Option<f64> {
        (self.expected > 0).then(|| self.received as f64 / self.expected as f64)
    }
}

struct ListenerSample {
    generation: u64,
    node: usize,
    recv: Vec<(ParticipantId, u64)>,
}
