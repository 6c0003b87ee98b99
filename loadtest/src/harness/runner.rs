//! Runs one scenario against a server, over the wire only: creates the rooms over HTTP
//! as each room's owner, joins speakers and listeners through the WebSocket and WebRTC
//! at a paced rate, has the owner promote the other speakers, then measures one window
//! (or one per ramp step) and leaves.
//!
//! Delivery is judged against what the server is meant to send. A listener hears the
//! speakers in its audio slots (the server forwards the loudest few), so a sampler
//! looks every [`SAMPLE_EVERY`] at each listener's slot map, its per-speaker packet
//! counts and each speaker's sent count (from the shared send-time registry). For
//! every interval in which a speaker sat in the listener's slots at both ends, the
//! packets that speaker sent are expected and those the listener got from it are
//! received. Intervals around a slot switch, a join or a leave are left out (a switch
//! legitimately drops the new speaker's first packets). Packets in flight at an
//! interval's edges cancel out over consecutive intervals.

use super::HarnessError;
use super::auth::Tokens;
use super::http::{self, BaseUrl};
use super::metrics::{self, ServerSnapshot};
use super::report::{JoinPhases, JoinStats, ServerFigures, StepReport, summarize_ms};
use super::scenario::Scenario;
use crate::audio::{SignalSource, VoiceLike};
use crate::peer::PeerConfig;
use crate::protocol::{ClientMessage, ParticipantId, Role};
use crate::registry::SendRegistry;
use crate::session::{DEFAULT_WS_PATH, Session, SessionConfig, ws_url};
use crate::signal::Auth;
use crate::stats::StreamStats;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the delivery sampler looks at every listener.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Longest wait for a listener's first audio packet after it connected.
const FIRST_AUDIO_WAIT: Duration = Duration::from_secs(15);
/// Longest wait for a promoted speaker's renegotiation.
const PROMOTION_WAIT: Duration = Duration::from_secs(15);
/// Join errors kept verbatim in the report.
const MAX_ERRORS_KEPT: usize = 10;

/// The server under test.
pub struct Target {
    pub base: BaseUrl,
    pub addr: SocketAddr,
    pub ws_url: String,
    pub metrics_path: String,
    pub tokens: Arc<Tokens>,
    /// Bound on each network step of a join.
    pub step_timeout: Duration,
    /// The server's process id when it runs on this machine: its CPU and memory are
    /// then read from `/proc/<pid>` (10 ms resolution) instead of `/metrics` (which
    /// has microseconds, but only from servers with `chorus_process_cpu_seconds_total`).
    pub server_pid: Option<u32>,
}

impl Target {
    /// Resolves `url` (refusing non-loopback targets unless `allow_remote`).
    pub async fn new(
        url: &str,
        allow_remote: bool,
        tokens: super::auth::TokenSource,
    ) -> Result<Self, HarnessError> {
        let base = BaseUrl::parse(url)?;
        let addr = base.resolve(allow_remote).await?;
        Ok(Self {
            ws_url: ws_url(url, DEFAULT_WS_PATH),
            tokens: Arc::new(Tokens::new(tokens, &base, addr)),
            base,
            addr,
            metrics_path: "/metrics".to_owned(),
            step_timeout: Duration::from_secs(15),
            server_pid: None,
        })
    }

    async fn scrape(&self) -> Option<ServerSnapshot> {
        match metrics::scrape(self.addr, &self.base.host, &self.metrics_path).await {
            Ok(mut s) => {
                if let Some(pid) = self.server_pid {
                    let pid = pid.to_string();
                    if let (Some(cpu), Some(rss)) = (
                        metrics::proc_cpu_seconds(&pid),
                        metrics::proc_rss_bytes(&pid),
                    ) {
                        s.cpu_seconds = Some(cpu);
                        s.rss_bytes = Some(rss);
                        s.cpu_source = "proc";
                    }
                }
                Some(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the server's /metrics");
                None
            }
        }
    }

    /// `POST /api/rooms` as the owner; returns the room id.
    async fn create_room(&self, token: &str, topic: &str) -> Result<String, HarnessError> {
        let r = http::request(
            self.addr,
            &self.base.host,
            "POST",
            "/api/rooms",
            Some(token),
            Some(&serde_json::json!({ "topic": topic, "roomType": "open" })),
            Duration::from_secs(10),
        )
        .await?;
        if r.status != 201 {
            return Err(HarnessError::Http(format!(
                "POST /api/rooms: HTTP {}: {}",
                r.status,
                r.text()
            )));
        }
        #[derive(serde::Deserialize)]
        struct Room {
            id: String,
        }
        Ok(r.json::<Room>()?.id)
    }
}

/// What a run reports while it goes (the binary draws a progress bar from it).
pub trait Progress: Send + Sync {
    fn phase(&self, what: &str, total: u64);
    fn set(&self, done: u64, message: &str);
}

/// Progress that goes nowhere (tests).
pub struct NoProgress;
impl Progress for NoProgress {
    fn phase(&self, _: &str, _: u64) {}
    fn set(&self, _: u64, _: &str) {}
}

/// Token bucket of one: joins start at most `rate` per second, however slow they are.
struct Pacer {
    next: Mutex<tokio::time::Instant>,
    interval: Duration,
}

impl Pacer {
    /// Nonsense rates (zero, negative, NaN) fall back to one join per second rather
    /// than panicking; `Scenario::validate` refuses them before a run anyway.
    fn new(rate: f64) -> Self {
        let interval =
            Duration::try_from_secs_f64(1.0 / rate).unwrap_or_else(|_| Duration::from_secs(1));
        Self {
            next: Mutex::new(tokio::time::Instant::now()),
            interval: if interval.is_zero() {
                Duration::from_secs(1)
            } else {
                interval
            },
        }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock();
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// A voice that only talks while its turn flag is set (silence otherwise, so DTX).
struct Turned {
    voice: VoiceLike,
    active: Arc<AtomicBool>,
    /// Set by the runner around measurement edges: every speaker falls silent.
    quiet: Arc<AtomicBool>,
}

impl SignalSource for Turned {
    fn fill(&mut self, out: &mut [i16]) {
        if self.active.load(Ordering::Relaxed) && !self.quiet.load(Ordering::Relaxed) {
            self.voice.fill(out);
        } else {
            out.fill(0);
        }
    }
}

struct SpeakerRun {
    session: Session,
    pid: ParticipantId,
    active: Arc<AtomicBool>,
}

/// One listener position; the session in it changes when it churns.
struct ListenerPos {
    room: usize,
    session: Mutex<Option<Arc<Session>>>,
    /// Bumped on every leave and join, so the sampler skips intervals that span one.
    generation: AtomicU64,
}

/// Final statistics of a listener session that left (churn).
struct Harvest {
    pos: usize,
    generation: u64,
    sources: HashMap<ParticipantId, StreamStats>,
}

/// Per listener and source, where the counters stood when a window began.
#[derive(Clone, Copy, Default)]
struct Mark {
    packets: u64,
    latency_samples: usize,
    lost: i64,
    expected: u64,
}

#[derive(Default)]
struct JoinLog {
    times_ms: Vec<f64>,
    /// Milestones of each successful join, ms after its start: WebSocket open, `joined`,
    /// first `offer`, media connected.
    phases_ms: [Vec<f64>; 4],
    failures: u64,
    no_audio: u64,
    errors: Vec<String>,
}

impl JoinLog {
    fn fail(&mut self, e: impl std::fmt::Display) {
        self.failures += 1;
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(e.to_string());
        }
    }
}

struct Run<'a> {
    target: &'a Target,
    sc: &'a Scenario,
    progress: &'a dyn Progress,
    registry: Arc<SendRegistry>,
    pacer: Arc<Pacer>,
    room_ids: Vec<String>,
    speakers: Vec<Vec<SpeakerRun>>,
    listeners: Vec<Arc<ListenerPos>>,
    harvests: Arc<Mutex<Vec<Harvest>>>,
    joins: Arc<Mutex<JoinLog>>,
    quiet: Arc<AtomicBool>,
}

/// The result of a scenario: one step (a ramp has several).
#[derive(Debug, serde::Serialize)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub steps: Vec<StepReport>,
    /// For a ramp: the most listeners at which delivery and latency still held.
    pub capacity_listeners: Option<usize>,
    /// Joins that failed during setup (rooms, speakers); listener join failures are
    /// counted in each step.
    pub setup_errors: Vec<String>,
}

/// Runs `sc` against `target`.
pub async fn run_scenario(
    target: &Target,
    sc: &Scenario,
    progress: &dyn Progress,
) -> Result<ScenarioReport, HarnessError> {
    sc.validate()?;
    let baseline = target.scrape().await;
    let mut run = Run {
        target,
        sc,
        progress,
        registry: Arc::new(SendRegistry::default()),
        pacer: Arc::new(Pacer::new(sc.join_rate)),
        room_ids: Vec::new(),
        speakers: Vec::new(),
        listeners: Vec::new(),
        harvests: Arc::default(),
        joins: Arc::default(),
        quiet: Arc::default(),
    };
    let result = run.go(baseline).await;
    run.teardown().await;
    result
}

impl Run<'_> {
    /// How a speaker (`listener` false) or a listener joins room `room`.
    fn session_config(&self, token: String, room: usize, listener: bool) -> SessionConfig {
        let mut cfg = SessionConfig::new(&self.target.ws_url, token, &self.room_ids[room]);
        cfg.auth = Auth::Bearer(match &cfg.auth {
            Auth::Bearer(t) => t.clone(),
            _ => String::new(),
        });
        cfg.step_timeout = self.target.step_timeout;
        cfg.peer = PeerConfig {
            registry: Some(self.registry.clone()),
            interceptors: self.sc.interceptors,
            decode: false,
            ..PeerConfig::default()
        };
        if listener {
            cfg.engine = self.sc.listener_engine;
        }
        cfg
    }

    async fn go(
        &mut self,
        baseline: Option<ServerSnapshot>,
    ) -> Result<ScenarioReport, HarnessError> {
        let sc = self.sc;
        self.setup_rooms_and_speakers().await?;
        let steps: Vec<usize> = match sc.ramp {
            Some(r) => (0..)
                .map(|i| r.start + i * r.step)
                .take_while(|n| *n <= r.max)
                .collect(),
            None => vec![sc.listeners],
        };
        let mut reports = Vec::new();
        let mut capacity = None;
        for (i, &per_room) in steps.iter().enumerate() {
            *self.joins.lock() = JoinLog::default();
            self.join_listeners(per_room).await;
            if !sc.settle.is_zero() {
                self.progress.phase("settling", 0);
                tokio::time::sleep(sc.settle).await;
            }
            let step = self.measure(per_room, baseline).await;
            let ok = sc.ramp.is_none_or(|r| {
                step.delivered.is_some_and(|d| d >= r.min_delivery)
                    && step
                        .latency_ms
                        .p99
                        .is_some_and(|p| p <= r.max_p99.as_secs_f64() * 1e3)
                    && step.joins.failures == 0
            });
            if sc.ramp.is_some() && ok {
                capacity = Some(per_room);
            }
            tracing::info!(step = i, listeners = per_room, ok, "step done");
            reports.push(step);
            if !ok {
                break;
            }
        }
        Ok(ScenarioReport {
            scenario: sc.clone(),
            steps: reports,
            capacity_listeners: capacity,
            setup_errors: Vec::new(),
        })
    }

    /// Rooms (as their owners), owners as first speakers, other speakers promoted.
    async fn setup_rooms_and_speakers(&mut self) -> Result<(), HarnessError> {
        let sc = self.sc;
        self.progress
            .phase("joining speakers", (sc.rooms * sc.speakers) as u64);
        let mut owner_tokens = Vec::new();
        for r in 0..sc.rooms {
            let token = self.target.tokens.token().await?;
            let id = self
                .target
                .create_room(&token, &format!("loadtest {} room {r}", sc.name))
                .await?;
            self.room_ids.push(id);
            owner_tokens.push(token);
        }
        let mut done = 0u64;
        for (r, owner_token) in owner_tokens.into_iter().enumerate() {
            let mut speakers = Vec::new();
            for s in 0..sc.speakers {
                self.pacer.wait().await;
                let token = if s == 0 {
                    owner_token.clone()
                } else {
                    self.target.tokens.token().await?
                };
                let active = Arc::new(AtomicBool::new(sc.turns.is_none_or(|t| s < t.count)));
                let voice = VoiceLike::new(
                    220.0 + 55.0 * s as f64,
                    0.5,
                    (r * 1000 + s) as u64 + 1,
                    sc.pause_ratio,
                );
                let cfg = self.session_config(token, r, false).speaking(Turned {
                    voice,
                    active: active.clone(),
                    quiet: self.quiet.clone(),
                });
                let session = Session::connect(cfg).await.map_err(|e| {
                    HarnessError::Setup(format!("speaker {s} of room {r} could not join: {e}"))
                })?;
                let pid = session
                    .participant_id()
                    .ok_or_else(|| HarnessError::Setup("server sent no participant id".into()))?;
                if s > 0 {
                    let owner: &SpeakerRun = speakers
                        .first()
                        .ok_or_else(|| HarnessError::Setup("room has no owner session".into()))?;
                    owner
                        .session
                        .send(&ClientMessage::SetRole {
                            participant_id: pid,
                            role: Role::Speaker,
                        })
                        .await
                        .map_err(|e| HarnessError::Setup(format!("set_role: {e}")))?;
                }
                speakers.push(SpeakerRun {
                    session,
                    pid,
                    active,
                });
                done += 1;
                self.progress.set(done, "");
            }
            self.speakers.push(speakers);
        }
        // Promotions renegotiate; publishing starts once the mic may send.
        let deadline = tokio::time::Instant::now() + PROMOTION_WAIT;
        for (r, room) in self.speakers.iter().enumerate() {
            for (s, sp) in room.iter().enumerate() {
                loop {
                    let ready = sp.session.peer().is_some_and(|p| p.send_params().is_some());
                    if ready {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(HarnessError::Setup(format!(
                            "speaker {s} of room {r} was not able to publish within {PROMOTION_WAIT:?} \
                             (promotion or renegotiation failed: {:?})",
                            sp.session.last_error()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // A listener joins muted and a promotion keeps it so (the server's
                // rule): the promoted speaker unmutes itself, as a person would.
                if sp.session.me().is_some_and(|m| m.muted) {
                    sp.session.unmute().await.map_err(|e| {
                        HarnessError::Setup(format!("speaker {s} of room {r} cannot unmute: {e}"))
                    })?;
                }
                while sp.session.me().is_none_or(|m| m.muted) {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(HarnessError::Setup(format!(
                            "speaker {s} of room {r} is still muted after unmuting"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        if let Some(turns) = sc.turns {
            self.spawn_turns(turns);
        }
        Ok(())
    }

    /// Rotates which speakers talk, room by room.
    fn spawn_turns(&self, turns: super::scenario::Turns) {
        let flags: Vec<Vec<Arc<AtomicBool>>> = self
            .speakers
            .iter()
            .map(|room| room.iter().map(|s| s.active.clone()).collect())
            .collect();
        tokio::spawn(async move {
            let mut offset = 0usize;
            let mut tick = tokio::time::interval(turns.period);
            tick.tick().await;
            loop {
                tick.tick().await;
                offset += turns.count;
                let mut alive = false;
                for room in &flags {
                    let n = room.len();
                    for (i, f) in room.iter().enumerate() {
                        let on = (0..turns.count.min(n)).any(|k| (offset + k) % n == i);
                        f.store(on, Ordering::Relaxed);
                        alive |= Arc::strong_count(f) > 1;
                    }
                }
                // Every speaker is gone: the run is over.
                if !alive {
                    return;
                }
            }
        });
    }

    /// Joins listeners until every room has `per_room`.
    async fn join_listeners(&mut self, per_room: usize) {
        let sc = self.sc;
        let mut new_positions = Vec::new();
        for r in 0..sc.rooms {
            let have = self.listeners.iter().filter(|l| l.room == r).count();
            for _ in have..per_room {
                let pos = Arc::new(ListenerPos {
                    room: r,
                    session: Mutex::new(None),
                    generation: AtomicU64::new(0),
                });
                self.listeners.push(pos.clone());
                new_positions.push(pos);
            }
        }
        // Interleave rooms so every room fills at the same pace.
        new_positions.sort_by_key(|p| p.room);
        let total = new_positions.len() as u64;
        self.progress.phase("joining listeners", total);
        let mut set = tokio::task::JoinSet::new();
        for pos in new_positions {
            let cfg = JoinCtx {
                pacer: self.pacer.clone(),
                joins: self.joins.clone(),
            };
            let session_cfg = self.session_config(String::new(), pos.room, true);
            let tokens_fut = self.target.tokens.token();
            self.pacer.wait().await;
            let token = tokens_fut.await;
            set.spawn(async move { cfg.join(pos, session_cfg, token, false).await });
            self.progress.set(
                (self.listeners.len() as u64).saturating_sub(total) + set.len() as u64,
                "",
            );
        }
        let mut done = 0;
        while set.join_next().await.is_some() {
            done += 1;
            let j = self.joins.lock();
            self.progress.set(
                done,
                &format!("{} failed, {} without audio", j.failures, j.no_audio),
            );
        }
    }

    /// One measured window at the current size.
    async fn measure(&mut self, per_room: usize, baseline: Option<ServerSnapshot>) -> StepReport {
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
        let mut state = SamplerState::default();
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
        let mut live = 0usize;
        for (i, l) in self.listeners.iter().enumerate() {
            let s = l.session.lock().clone();
            if let Some(s) = s
                && let Some(p) = s.media()
            {
                live += 1;
                let g = l.generation.load(Ordering::Relaxed);
                account(i, g, &p.snapshot().sources);
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
        let (server, harness_cpu) = (
            ServerFigures::from_snapshots(
                baseline,
                server_before,
                server_after,
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
                    state.expected += s1.saturating_sub(*s0);
                    state.received += rx.saturating_sub(prx);
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
            .map(|p| self.session_config(String::new(), p.room, true))
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

    async fn teardown(&mut self) {
        self.progress.phase("leaving", 0);
        let mut set = tokio::task::JoinSet::new();
        for l in self.listeners.drain(..) {
            if let Some(s) = l.session.lock().take()
                && let Ok(s) = Arc::try_unwrap(s)
            {
                set.spawn(s.leave());
            }
        }
        for room in self.speakers.drain(..) {
            for s in room {
                set.spawn(s.session.leave());
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while set.join_next().await.is_some() {}
        })
        .await;
        set.abort_all();
    }
}

#[derive(Default)]
struct SamplerState {
    prev: Vec<Option<ListenerSample>>,
    prev_sent: Option<HashMap<ParticipantId, u64>>,
    expected: u64,
    received: u64,
}

impl SamplerState {
    fn delivered(&self) -> Option<f64> {
        (self.expected > 0).then(|| self.received as f64 / self.expected as f64)
    }
}

struct ListenerSample {
    generation: u64,
    recv: Vec<(ParticipantId, u64)>,
}

struct JoinCtx {
    pacer: Arc<Pacer>,
    joins: Arc<Mutex<JoinLog>>,
}

impl JoinCtx {
    /// Connects a listener into `pos` and waits for its first audio (the join time).
    async fn join(
        &self,
        pos: Arc<ListenerPos>,
        mut cfg: SessionConfig,
        token: Result<String, HarnessError>,
        paced: bool,
    ) {
        if paced {
            self.pacer.wait().await;
        }
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                self.joins.lock().fail(e);
                return;
            }
        };
        cfg.auth = Auth::Bearer(token);
        let session = match Session::connect(cfg).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.joins.lock().fail(format!("listener join: {e}"));
                return;
            }
        };
        *pos.session.lock() = Some(session.clone());
        pos.generation.fetch_add(1, Ordering::Relaxed);
        match session.wait_first_audio(FIRST_AUDIO_WAIT).await {
            Ok(t) => {
                let tm = session.timings();
                let since = |i: Option<Instant>| {
                    i.map(|i| i.saturating_duration_since(tm.started).as_secs_f64() * 1e3)
                };
                let mut j = self.joins.lock();
                j.times_ms.push(t.as_secs_f64() * 1e3);
                let phases = [
                    tm.ws_connected,
                    tm.joined_room,
                    tm.offer_received,
                    tm.media_connected,
                ];
                for (k, p) in phases.into_iter().enumerate() {
                    if let Some(ms) = since(p) {
                        j.phases_ms[k].push(ms);
                    }
                }
            }
            Err(_) => self.joins.lock().no_audio += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pacer_spaces_joins_at_the_rate() {
        let p = Pacer::new(50.0);
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
        for rate in [0.0, -3.0, f64::NAN, f64::INFINITY] {
            assert_eq!(Pacer::new(rate).interval, Duration::from_secs(1), "{rate}");
        }
    }
}
