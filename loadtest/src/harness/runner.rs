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

mod listeners;
mod pacer;
mod window;

use super::HarnessError;
use super::auth::Tokens;
use super::http::{self, BaseUrl};
use super::metrics::{self, ServerSnapshot};
use super::report::StepReport;
use super::scenario::Scenario;
use crate::audio::{SignalSource, VoiceLike};
use crate::peer::PeerConfig;
use crate::protocol::{ClientMessage, ParticipantId, Role};
use crate::registry::SendRegistry;
use crate::session::{DEFAULT_WS_PATH, Session, SessionConfig, ws_url};
use crate::signal::Auth;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use listeners::{Harvest, JoinCtx, JoinLog, ListenerPos};
use pacer::Pacer;

/// How often the delivery sampler looks at every listener.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Longest wait for a promoted speaker's renegotiation.
const PROMOTION_WAIT: Duration = Duration::from_secs(15);
/// Most nodes a target may have.
pub const MAX_NODES: usize = 64;

/// One server of the target: the only one, or one node of a cluster.
#[derive(Clone, Debug)]
pub struct Node {
    /// As given (`http://host:port`), for the report.
    pub url: String,
    pub base: BaseUrl,
    pub addr: SocketAddr,
    pub ws_url: String,
    /// The node's process id when it runs on this machine: its CPU and memory are then
    /// read from `/proc/<pid>` (10 ms resolution) instead of `/metrics` (which has
    /// microseconds, but only from servers with `chorus_process_cpu_seconds_total`).
    pub server_pid: Option<u32>,
}

impl Node {
    async fn scrape(&self, metrics_path: &str) -> Option<ServerSnapshot> {
        match metrics::scrape(self.addr, &self.base.host, metrics_path).await {
            Ok(mut s) => {
                if let Some(pid) = self.server_pid {
                    let pid = pid.to_string();
                    if let (Some(cpu), Some(rss)) = (
                        metrics::proc_cpu_seconds(&pid),
                        metrics::proc_rss_bytes(&pid),
                    ) {
                        s.cpu_seconds = Some(cpu);
                        s.rss_bytes = Some(rss);
                        s.anon_rss_bytes = metrics::proc_anon_rss_bytes(&pid);
                        s.cpu_source = "proc";
                    }
                }
                Some(s)
            }
            Err(e) => {
                tracing::warn!(node = %self.url, error = %e, "cannot read the server's /metrics");
                None
            }
        }
    }
}

/// The server under test: one node, or several nodes of a cluster sharing rooms
/// (through Redis, with the node-to-node media relay, and one store).
pub struct Target {
    /// At least one. Rooms are created through the first (so the store the nodes share
    /// must make them known to every node), and phone logins go through it; listeners
    /// are spread over all nodes round-robin.
    pub nodes: Vec<Node>,
    pub metrics_path: String,
    pub tokens: Arc<Tokens>,
    /// Bound on each network step of a join.
    pub step_timeout: Duration,
    /// Speakers too are spread round-robin (speaker `s` of a room on node `s mod n`);
    /// by default they all join the first node, so every other node hears them only
    /// through the relay.
    pub spread_speakers: bool,
}

impl Target {
    /// One server at `url` (refusing non-loopback targets unless `allow_remote`).
    pub async fn new(
        url: &str,
        allow_remote: bool,
        tokens: super::auth::TokenSource,
    ) -> Result<Self, HarnessError> {
        Self::cluster(&[url], allow_remote, tokens).await
    }

    /// The nodes of a cluster at `urls`, in order (the first creates the rooms).
    pub async fn cluster(
        urls: &[&str],
        allow_remote: bool,
        tokens: super::auth::TokenSource,
    ) -> Result<Self, HarnessError> {
        if urls.is_empty() {
            return Err(HarnessError::Config("no server URL".into()));
        }
        if urls.len() > MAX_NODES {
            return Err(HarnessError::Config(format!(
                "at most {MAX_NODES} server URLs, got {}",
                urls.len()
            )));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(urls.len());
        for url in urls {
            let url = url.trim();
            let base = BaseUrl::parse(url)?;
            let addr = base.resolve(allow_remote).await?;
            // The same server twice would count its figures twice.
            if let Some(other) = nodes.iter().find(|n| n.addr == addr) {
                return Err(HarnessError::Config(format!(
                    "{url} and {} are the same server ({addr})",
                    other.url
                )));
            }
            nodes.push(Node {
                url: url.to_owned(),
                ws_url: ws_url(url, DEFAULT_WS_PATH),
                base,
                addr,
                server_pid: None,
            });
        }
        let first = &nodes[0];
        Ok(Self {
            tokens: Arc::new(Tokens::new(tokens, &first.base, first.addr)),
            nodes,
            metrics_path: "/metrics".to_owned(),
            step_timeout: Duration::from_secs(15),
            spread_speakers: false,
        })
    }

    /// Sets the nodes' process ids, in the order of the nodes (CPU and RSS from
    /// `/proc`): none, or one per node.
    pub fn with_server_pids(mut self, pids: &[u32]) -> Result<Self, HarnessError> {
        if !pids.is_empty() && pids.len() != self.nodes.len() {
            return Err(HarnessError::Config(format!(
                "{} server pids for {} server URLs: give one per URL, in the same order",
                pids.len(),
                self.nodes.len()
            )));
        }
        for (n, pid) in self.nodes.iter_mut().zip(pids) {
            n.server_pid = Some(*pid);
        }
        Ok(self)
    }

    /// The node rooms are created through.
    pub fn first(&self) -> &Node {
        &self.nodes[0]
    }

    /// The node of the `i`-th listener of a room.
    fn listener_node(&self, i: usize) -> usize {
        i % self.nodes.len()
    }

    /// The node of speaker `s` of a room (0 is the owner).
    fn speaker_node(&self, s: usize) -> usize {
        if self.spread_speakers {
            s % self.nodes.len()
        } else {
            0
        }
    }

    /// Every node's figures, in order (`None` where `/metrics` could not be read).
    async fn scrape(&self) -> Vec<Option<ServerSnapshot>> {
        futures::future::join_all(self.nodes.iter().map(|n| n.scrape(&self.metrics_path))).await
    }

    /// `POST /api/rooms` as the owner; returns the room id.
    async fn create_room(&self, token: &str, topic: &str) -> Result<String, HarnessError> {
        let first = self.first();
        let r = http::request(
            first.addr,
            &first.base.host,
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
    /// The node it joined through.
    node: usize,
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
    /// How a speaker (`listener` false) or a listener joins room `room` through `node`.
    fn session_config(
        &self,
        token: String,
        room: usize,
        node: usize,
        listener: bool,
    ) -> SessionConfig {
        let mut cfg =
            SessionConfig::new(&self.target.nodes[node].ws_url, token, &self.room_ids[room]);
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
        baseline: Vec<Option<ServerSnapshot>>,
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
            let step = self.measure(per_room, &baseline).await;
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
                let node = self.target.speaker_node(s);
                let cfg = self.session_config(token, r, node, false).speaking(Turned {
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
                    node,
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
            for i in have..per_room {
                let pos = Arc::new(ListenerPos {
                    room: r,
                    node: self.target.listener_node(i),
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
            let session_cfg = self.session_config(String::new(), pos.room, pos.node, true);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::TokenSource;

    fn mint() -> TokenSource {
        TokenSource::Mint {
            secret: b"unit-test-secret".to_vec(),
            ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_cluster_target_places_listeners_round_robin_and_speakers_on_the_first_node() {
        let t = Target::cluster(
            &[
                "http://127.0.0.1:5601",
                "http://127.0.0.1:5602",
                " http://127.0.0.1:5603",
            ],
            false,
            mint(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.nodes.len(), 3);
        assert_eq!(t.first().addr.port(), 5601);
        assert_eq!(t.nodes[2].ws_url, "ws://127.0.0.1:5603/ws");
        let placed: Vec<usize> = (0..7).map(|i| t.listener_node(i)).collect();
        assert_eq!(placed, [0, 1, 2, 0, 1, 2, 0]);
        assert!((0..5).all(|s| t.speaker_node(s) == 0));
        let t = Target {
            spread_speakers: true,
            ..t
        };
        assert_eq!(
            (0..4).map(|s| t.speaker_node(s)).collect::<Vec<_>>(),
            [0, 1, 2, 0]
        );
        let t = t
            .with_server_pids(&[7, 8, 9])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.nodes[1].server_pid, Some(8));
        assert!(t.with_server_pids(&[7]).is_err(), "one pid for three nodes");
    }

    #[tokio::test]
    async fn a_cluster_target_refuses_no_url_the_same_server_twice_and_remote_nodes() {
        assert!(Target::cluster(&[], false, mint()).await.is_err());
        let twice = Target::cluster(
            &["http://127.0.0.1:5601", "http://127.0.0.1:5601/"],
            false,
            mint(),
        )
        .await;
        assert!(
            twice
                .as_ref()
                .err()
                .is_some_and(|e| e.to_string().contains("same server")),
            "{:?}",
            twice.err()
        );
        assert!(
            Target::cluster(
                &["http://127.0.0.1:5601", "http://10.1.2.3:5602"],
                false,
                mint()
            )
            .await
            .is_err()
        );
        let one = Target::new("http://127.0.0.1:5601", false, mint())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((one.nodes.len(), one.listener_node(5)), (1, 0));
    }
}
