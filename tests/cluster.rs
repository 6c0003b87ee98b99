//! Several Chorus nodes sharing rooms through Redis (`REDIS_URL`): a real
//! `redis-server` on a loopback port and three `chorus` processes sharing one SQLite
//! database, with participants of one room spread over the three. Each node is a
//! child process so that one can be killed with SIGKILL.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use api::auth::{JwtSecrets, TokenService};
use api::clock::SystemClock;
use api::store::{SqliteStore, UserId, UserStore};
use loadtest::audio::Tone;
use loadtest::peer::PeerConfig;
use loadtest::protocol::{ClientMessage, Participant, ParticipantId, Role, ServerMessage};
use loadtest::session::{DEFAULT_WS_PATH, Session, SessionConfig, ws_url};
use loadtest::signal::{Auth, SignalClient};
use support::{ACCESS_SECRET, ChildServer, REFRESH_SECRET, STEP, TempDir, http};

/// Resume grace of the nodes: long enough for a client to come back through another
/// node on a busy machine, short enough for a test.
const GRACE_SECS: u64 = 8;
/// The node-to-node media relay's shared secret (test value).
const RELAY_SECRET: &str = "cluster-test-relay-secret-0123456789";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `redis-server` on a loopback port, without persistence (a restart loses
/// everything, the worst case for recovery). Killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Redis {
    fn start() -> anyhow::Result<Self> {
        let mut r = Redis {
            child: None,
            port: free_port()?,
            dir: TempDir::new()?,
        };
        r.spawn()?;
        Ok(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package `redis-server`)")?;
        self.child = Some(child);
        let end = std::time::Instant::now() + STEP;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if std::time::Instant::now() > end {
                bail!("redis-server did not listen on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The keys matching `pattern`.
    async fn keys(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let client = redis::Client::open(self.url())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut c).await?;
        Ok(keys)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis, three nodes over one database, tokens and users.
struct Cluster {
    redis: Redis,
    nodes: Vec<Option<ChildServer>>,
    store: SqliteStore,
    tokens: TokenService,
    /// The shared data directory (SQLite), removed on drop.
    _dir: TempDir,
}

impl Cluster {
    async fn start(n: usize) -> anyhow::Result<Self> {
        support::init_logging();
        let redis = Redis::start()?;
        let dir = TempDir::new()?;
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(Some(Self::node(&redis, &dir, i)?));
        }
        let store = SqliteStore::open(dir.0.join("chorus.sqlite3")).await?;
        let tokens = TokenService::new(
            &JwtSecrets {
                access: ACCESS_SECRET.as_bytes().to_vec(),
                refresh: REFRESH_SECRET.as_bytes().to_vec(),
            },
            Arc::new(SystemClock),
        );
        Ok(Cluster {
            redis,
            nodes,
            store,
            tokens,
            _dir: dir,
        })
    }

    fn node(redis: &Redis, dir: &TempDir, i: usize) -> anyhow::Result<ChildServer> {
        let url = redis.url();
        let id = format!("node{i}");
        let grace = GRACE_SECS.to_string();
        ChildServer::start(
            None,
            &[
                "--redis-url",
                &url,
                "--node-id",
                &id,
                "--cluster-heartbeat-ms",
                "200",
                "--cluster-node-ttl-ms",
                "1000",
                "--resume-grace-secs",
                &grace,
                "--unconnected-grace-secs",
                &grace,
                "--insecure-cookies",
                "--relay-secret",
                RELAY_SECRET,
                "--relay-port",
                "0",
                "--jwt-access-token-secret",
                ACCESS_SECRET,
                "--jwt-refresh-token-secret",
                REFRESH_SECRET,
            ],
            dir,
        )
    }

    fn addr(&self, i: usize) -> std::net::SocketAddr {
        self.nodes[i].as_ref().expect("node running").addr
    }

    fn pid(&self, i: usize) -> u32 {
        self.nodes[i].as_ref().expect("node running").pid()
    }

    fn token(&self, user: &str) -> String {
        self.tokens
            .issue_access(
                &UserId::parse(user).expect("a valid user id"),
                None,
                time::OffsetDateTime::now_utc(),
                time::Duration::hours(1),
            )
            .expect("minting a token")
    }

    async fn user(&self, phone: &str, name: &str) -> anyhow::Result<String> {
        let u = self
            .store
            .find_or_create_user(phone, time::OffsetDateTime::now_utc())
            .await?;
        self.store.activate_user(&u.id, name, None).await?;
        Ok(u.id.into_string())
    }

    async fn room(&self, owner: &str) -> anyhow::Result<String> {
        let body = serde_json::json!({ "topic": "cluster", "roomType": "open" });
        let r = http(
            self.addr(0),
            "POST",
            "/api/rooms",
            Some(&self.token(owner)),
            Some(&body.to_string()),
        )
        .await?;
        anyhow::ensure!(r.status == 201, "create room: {} {}", r.status, r.body);
        Ok(r.json()?["id"].as_str().context("room id")?.to_owned())
    }

    async fn join(&self, node: usize, user: &str, room: &str) -> anyhow::Result<Peer> {
        Peer::join(self.addr(node), &self.token(user), room, None).await
    }

    /// A WebRTC participant (the load harness's client) on `node`: a speaker when
    /// `tone` is given (it publishes once promoted and unmuted), else a listener that
    /// counts what it hears per speaker.
    async fn media_peer(
        &self,
        node: usize,
        user: &str,
        room: &str,
        tone: Option<f64>,
    ) -> anyhow::Result<Session> {
        let base = format!("http://{}", self.addr(node));
        let mut cfg = SessionConfig::new(ws_url(&base, DEFAULT_WS_PATH), self.token(user), room);
        cfg.step_timeout = STEP;
        cfg.peer = PeerConfig::default();
        if let Some(f) = tone {
            cfg.publish = Some(Box::new(Tone::new(f, 0.5)));
        }
        Session::connect(cfg).await.context("media participant")
    }

    /// SIGKILL: no goodbye to Redis or to the sockets.
    fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }
}

/// One participant's socket and the room as it sees it.
struct Peer {
    sig: SignalClient,
    me: Participant,
    resume: String,
    roster: BTreeMap<ParticipantId, Participant>,
}

impl Peer {
    async fn join(
        addr: std::net::SocketAddr,
        token: &str,
        room: &str,
        resume: Option<&str>,
    ) -> anyhow::Result<Self> {
        let url = ws_url(&format!("http://{addr}"), DEFAULT_WS_PATH);
        let mut sig = SignalClient::connect(&url, &Auth::Bearer(token.to_owned()), STEP).await?;
        sig.send(&ClientMessage::JoinRoom {
            room_id: room.to_owned(),
            resume_token: resume.map(str::to_owned),
        })
        .await?;
        let (me, new_token, resumed) = sig
            .wait_for(STEP, |m| match m {
                ServerMessage::Joined {
                    you,
                    resume_token,
                    resumed,
                    ..
                } => Some((you.clone(), resume_token.clone(), *resumed)),
                _ => None,
            })
            .await?;
        anyhow::ensure!(
            resumed == resume.is_some(),
            "resumed: {resumed}, with a resume token: {}",
            resume.is_some()
        );
        let resume = new_token;
        let mut p = Peer {
            sig,
            me,
            resume,
            roster: BTreeMap::new(),
        };
        let list = p
            .sig
            .wait_for(STEP, |m| match m {
                ServerMessage::OnlineUsers { participants } => Some(participants.clone()),
                _ => None,
            })
            .await?;
        p.roster = list.into_iter().map(|x| (x.participant_id, x)).collect();
        Ok(p)
    }

    fn pid(&self) -> ParticipantId {
        self.me.participant_id
    }

    fn apply(&mut self, m: &ServerMessage) {
        match m {
            ServerMessage::OnlineUsers { participants } => {
                self.roster = participants
                    .iter()
                    .map(|x| (x.participant_id, x.clone()))
                    .collect();
            }
            ServerMessage::ParticipantJoined { participant }
            | ServerMessage::ParticipantUpdated { participant } => {
                if participant.participant_id == self.me.participant_id {
                    self.me = participant.clone();
                }
                self.roster
                    .insert(participant.participant_id, participant.clone());
            }
            ServerMessage::ParticipantLeft { participant_id } => {
                self.roster.remove(participant_id);
            }
            _ => {}
        }
    }

    /// Waits until `cond` holds for the room as this participant sees it.
    async fn until_roster(
        &mut self,
        what: &str,
        cond: impl Fn(&BTreeMap<ParticipantId, Participant>) -> bool,
    ) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + STEP;
        while !cond(&self.roster) {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let m =
                self.sig.recv(left).await.with_context(|| {
                    format!("waiting for {what}; roster {:?}", self.roster.keys())
                })?;
            self.apply(&m);
        }
        Ok(())
    }

    /// Waits for a message `pick` accepts (the roster follows the others).
    async fn until_msg<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> anyhow::Result<T> {
        let end = tokio::time::Instant::now() + STEP;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let m = self
                .sig
                .recv(left)
                .await
                .with_context(|| format!("waiting for {what}"))?;
            self.apply(&m);
            if let Some(t) = pick(&m) {
                return Ok(t);
            }
        }
    }

    async fn send(&self, m: ClientMessage) -> anyhow::Result<()> {
        Ok(self.sig.send(&m).await?)
    }

    /// Waits until the socket is closed by the other end.
    async fn until_closed(&mut self) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + STEP;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.sig.recv(left).await {
                Ok(m) => self.apply(&m),
                Err(loadtest::Error::Timeout { .. }) => bail!("the socket stayed open"),
                Err(_) => return Ok(()),
            }
        }
    }
}

fn same_people(peers: &[ParticipantId]) -> impl Fn(&BTreeMap<ParticipantId, Participant>) -> bool {
    let want: Vec<ParticipantId> = peers.to_vec();
    move |r| r.len() == want.len() && want.iter().all(|p| r.contains_key(p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_on_three_nodes_see_one_list_and_one_chat() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let owner = c.user("+14155550201", "Olivia").await?;
    let bob = c.user("+14155550202", "Bob").await?;
    let cara = c.user("+14155550203", "Cara").await?;
    let room = c.room(&owner).await?;

    let mut o = c.join(0, &owner, &room).await?;
    let mut b = c.join(1, &bob, &room).await?;
    let mut k = c.join(2, &cara, &room).await?;
    let all = [o.pid(), b.pid(), k.pid()];
    assert_eq!(
        all.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3,
        "participant ids are unique across nodes: {all:?}"
    );
    for (who, p) in [("owner", &mut o), ("bob", &mut b), ("cara", &mut k)] {
        p.until_roster(&format!("three participants at {who}"), same_people(&all))
            .await?;
        assert_eq!(p.roster[&all[0]].role, Role::Moderator, "at {who}");
        assert_eq!(p.roster[&all[2]].name, "Cara", "at {who}");
    }

    // Chat sent on node 2 reaches the room on every node, once, as stored.
    k.send(ClientMessage::SendMessage {
        message: "hello from node 2".into(),
    })
    .await?;
    let mut ids = Vec::new();
    for (who, p) in [("owner", &mut o), ("bob", &mut b), ("cara", &mut k)] {
        let m = p
            .until_msg(&format!("the message at {who}"), |m| match m {
                ServerMessage::ReceiveMessage { message } => Some(message.clone()),
                _ => None,
            })
            .await?;
        assert_eq!(m.message, "hello from node 2");
        assert_eq!(m.username, "Cara");
        ids.push(m.id);
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");

    // A hand raised on node 1 is seen on nodes 0 and 2; leaving is seen everywhere.
    b.send(ClientMessage::RaiseHand).await?;
    let bp = b.pid();
    for p in [&mut o, &mut k] {
        p.until_roster("bob's raised hand", |r| {
            r.get(&bp).is_some_and(|x| x.hand_raised)
        })
        .await?;
    }
    b.send(ClientMessage::LeaveRoom).await?;
    for p in [&mut o, &mut k] {
        p.until_roster("bob gone", |r| !r.contains_key(&bp)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_on_one_node_promotes_mutes_and_removes_someone_on_another()
-> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let owner = c.user("+14155550301", "Olivia").await?;
    let bob = c.user("+14155550302", "Bob").await?;
    let cara = c.user("+14155550303", "Cara").await?;
    let room = c.room(&owner).await?;
    let mut o = c.join(0, &owner, &room).await?;
    let mut b = c.join(1, &bob, &room).await?;
    let mut k = c.join(2, &cara, &room).await?;
    let (bp, all) = (b.pid(), [o.pid(), b.pid(), k.pid()]);
    o.until_roster("everyone at the owner", same_people(&all))
        .await?;

    o.send(ClientMessage::SetRole {
        participant_id: bp,
        role: Role::Speaker,
    })
    .await?;
    b.until_msg("bob's own promotion", |m| match m {
        ServerMessage::ParticipantUpdated { participant }
            if participant.participant_id == bp && participant.role == Role::Speaker =>
        {
            Some(())
        }
        _ => None,
    })
    .await?;
    k.until_roster("bob a speaker, at cara", |r| {
        r.get(&bp).is_some_and(|x| x.role == Role::Speaker)
    })
    .await?;

    b.send(ClientMessage::Unmute).await?;
    o.until_roster("bob unmuted", |r| r.get(&bp).is_some_and(|x| !x.muted))
        .await?;
    o.send(ClientMessage::MuteParticipant { participant_id: bp })
        .await?;
    for p in [&mut b, &mut k] {
        p.until_roster("bob muted by the owner", |r| {
            r.get(&bp).is_some_and(|x| x.muted)
        })
        .await?;
    }

    // Cara, a listener on node 2, may not moderate Bob on node 1.
    k.send(ClientMessage::MuteParticipant { participant_id: bp })
        .await?;
    let code = k
        .until_msg("cara's refusal", |m| match m {
            ServerMessage::Error { code, .. } => Some(*code),
            _ => None,
        })
        .await?;
    assert_eq!(code, loadtest::protocol::ErrorCode::Forbidden);

    o.send(ClientMessage::RemoveParticipant { participant_id: bp })
        .await?;
    b.until_msg("bob's removal", |m| {
        matches!(m, ServerMessage::Removed { .. }).then_some(())
    })
    .await?;
    b.until_closed().await?;
    for p in [&mut o, &mut k] {
        p.until_roster("bob gone", |r| !r.contains_key(&bp)).await?;
    }
    // Removed means removed on every node: Bob cannot walk back in through node 2.
    let again = Peer::join(c.addr(2), &c.token(&bob), &room, None).await;
    let err = again
        .err()
        .context("a removed user joined through another node")?;
    assert!(format!("{err:#}").contains("removed"), "{err:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_of_a_killed_node_resume_on_another_keeping_their_role() -> anyhow::Result<()>
{
    let mut c = Cluster::start(3).await?;
    let owner = c.user("+14155550401", "Olivia").await?;
    let bob = c.user("+14155550402", "Bob").await?;
    let dan = c.user("+14155550403", "Dan").await?;
    let room = c.room(&owner).await?;
    let mut o = c.join(0, &owner, &room).await?;
    let mut b = c.join(1, &bob, &room).await?;
    let mut d = c.join(1, &dan, &room).await?;
    let (bp, dp) = (b.pid(), d.pid());
    o.until_roster("everyone", same_people(&[o.pid(), bp, dp]))
        .await?;
    o.send(ClientMessage::SetRole {
        participant_id: bp,
        role: Role::Speaker,
    })
    .await?;
    b.until_msg("bob promoted", |m| match m {
        ServerMessage::ParticipantUpdated { participant }
            if participant.participant_id == bp && participant.role == Role::Speaker =>
        {
            Some(())
        }
        _ => None,
    })
    .await?;
    // Node 1 tells Bob before its publisher has stored the change in Redis; the owner
    // on node 0 hears of it only after it is stored. Killing node 1 in between would
    // lose a promotion that was never stored (seen once in 3 runs of this file).
    o.until_roster("bob a speaker, at the owner", |r| {
        r.get(&bp).is_some_and(|x| x.role == Role::Speaker)
    })
    .await?;

    let t0 = std::time::Instant::now();
    c.kill(1);
    b.until_closed().await?;
    d.until_closed().await?;

    // Bob comes back through node 2 with his resume token: same place, same role.
    let resumed = Peer::join(c.addr(2), &c.token(&bob), &room, Some(&b.resume)).await?;
    assert_eq!(resumed.pid(), bp, "the same place");
    assert_eq!(resumed.me.role, Role::Speaker, "the role survives the node");
    assert!(
        resumed.roster.contains_key(&o.pid()),
        "{:?}",
        resumed.roster.keys()
    );
    // Dan does not come back: after the grace, nobody sees him any more.
    o.until_roster("dan dropped after the grace", |r| {
        !r.contains_key(&dp) && r.contains_key(&bp)
    })
    .await?;
    assert!(
        t0.elapsed() >= Duration::from_secs(GRACE_SECS),
        "dropped before the resume grace: {:?}",
        t0.elapsed()
    );
    assert_eq!(o.roster[&bp].role, Role::Speaker);
    // The dead node's heartbeat expired; the live ones beat.
    let beats = c.redis.keys("chorus:node:*").await?;
    assert!(
        !beats.contains(&"chorus:node:node1".to_owned()),
        "{beats:?}"
    );
    assert!(beats.contains(&"chorus:node:node2".to_owned()), "{beats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_from_a_redis_restart_without_restarting() -> anyhow::Result<()> {
    let mut c = Cluster::start(2).await?;
    let owner = c.user("+14155550501", "Olivia").await?;
    let bob = c.user("+14155550502", "Bob").await?;
    let cara = c.user("+14155550503", "Cara").await?;
    let room = c.room(&owner).await?;
    let mut o = c.join(0, &owner, &room).await?;
    let mut b = c.join(1, &bob, &room).await?;
    let all = [o.pid(), b.pid()];
    o.until_roster("both", same_people(&all)).await?;

    c.redis.kill();
    c.redis.spawn()?;
    // Both nodes beat again into the new, empty Redis.
    support::eventually_async(STEP, "both heartbeats in the new Redis", || async {
        let beats = c.redis.keys("chorus:node:*").await.ok()?;
        (beats.len() == 2).then_some(())
    })
    .await?;

    // Everything Redis held is rebuilt by the nodes: a newcomer on node 1 sees the
    // owner of node 0, the owner sees the newcomer, and chat flows both ways.
    let mut k =
        support::eventually_async(STEP, "a join after the restart that sees node 0", || {
            let c = &c;
            let (cara, room) = (&cara, &room);
            let owner_pid = all[0];
            async move {
                let p = c.join(1, cara, room).await.ok()?;
                p.roster.contains_key(&owner_pid).then_some(p)
            }
        })
        .await?;
    let kp = k.pid();
    o.until_roster("cara at the owner", |r| r.contains_key(&kp))
        .await?;
    b.until_roster("cara at bob", |r| r.contains_key(&kp))
        .await?;
    o.send(ClientMessage::SendMessage {
        message: "after the restart".into(),
    })
    .await?;
    for p in [&mut b, &mut k] {
        let m = p
            .until_msg("the owner's message", |m| match m {
                ServerMessage::ReceiveMessage { message } => Some(message.message.clone()),
                _ => None,
            })
            .await?;
        assert_eq!(m, "after the restart");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speakers_on_two_nodes_are_heard_by_listeners_on_every_node() -> anyhow::Result<()> {
    let c = Cluster::start(3).await?;
    let owner = c.user("+14155550401", "Olivia").await?;
    let room = c.room(&owner).await?;
    let o = c.join(0, &owner, &room).await?;
    let mut speakers = Vec::new();
    for (node, (phone, f)) in [("+14155550402", 440.0), ("+14155550403", 660.0)]
        .into_iter()
        .enumerate()
    {
        let user = c.user(phone, &format!("Speaker {node}")).await?;
        let sp = c.media_peer(node, &user, &room, Some(f)).await?;
        let pid = sp.participant_id().context("speaker id")?;
        o.send(ClientMessage::SetRole {
            participant_id: pid,
            role: Role::Speaker,
        })
        .await?;
        support::eventually(STEP, "the promotion to reach the speaker", || {
            sp.me()
                .is_some_and(|me| me.role == Role::Speaker)
                .then_some(())
        })
        .await?;
        sp.unmute().await?;
        speakers.push((pid, sp));
    }
    let mut listeners = Vec::new();
    for node in 0..3 {
        let user = c
            .user(&format!("+1415555041{node}"), &format!("Listener {node}"))
            .await?;
        listeners.push((node, c.media_peer(node, &user, &room, None).await?));
    }
    // Every listener, on every node, hears both speakers: the one on its own node
    // directly, the other one relayed from the speaker's node.
    for (node, l) in &listeners {
        for (pid, _) in &speakers {
            let from = *pid;
            support::eventually(STEP, "audio from every speaker", || {
                (l.peer()?.packets_from(from) >= 50).then_some(())
            })
            .await
            .with_context(|| format!("listener on node {node} hearing {from:?}"))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_does_not_interrupt_the_audio_between_the_others() -> anyhow::Result<()> {
    let mut c = Cluster::start(3).await?;
    let owner = c.user("+14155550501", "Olivia").await?;
    let room = c.room(&owner).await?;
    let o = c.join(0, &owner, &room).await?;
    let speaker = c.user("+14155550502", "Sam").await?;
    let sp = c.media_peer(0, &speaker, &room, Some(520.0)).await?;
    let spid = sp.participant_id().context("speaker id")?;
    o.send(ClientMessage::SetRole {
        participant_id: spid,
        role: Role::Speaker,
    })
    .await?;
    support::eventually(STEP, "the promotion to reach the speaker", || {
        sp.me()
            .is_some_and(|me| me.role == Role::Speaker)
            .then_some(())
    })
    .await?;
    sp.unmute().await?;
    let mut listeners = Vec::new();
    for node in [1, 2] {
        let user = c
            .user(&format!("+1415555051{node}"), &format!("Listener {node}"))
            .await?;
        let l = c.media_peer(node, &user, &room, None).await?;
        support::eventually(STEP, "audio at every listener", || {
            (l.peer()?.packets_from(spid) >= 50).then_some(())
        })
        .await
        .with_context(|| format!("listener on node {node}"))?;
        listeners.push(l);
    }

    // Node 2 dies (whichever node held the room's authority, the room goes on): the
    // listener on node 1 keeps hearing the speaker on node 0 through the relay.
    c.kill(2);
    let l1 = &listeners[0];
    let before = l1.peer().context("peer")?.packets_from(spid);
    support::eventually(STEP, "audio to go on after the kill", || {
        (l1.peer()?.packets_from(spid) >= before + 150).then_some(())
    })
    .await?;
    // No gap over 1 s (50 packets of 20 ms) in what reached the listener, counted
    // by RTP sequence numbers, so a busy test machine cannot fake or hide one.
    let snap = l1.peer().context("peer")?.snapshot();
    for slot in &snap.slots {
        assert!(
            slot.stats.max_gap < 50,
            "slot {} lost {} packets in a row",
            slot.mid,
            slot.stats.max_gap
        );
    }
    Ok(())
}

/// The load harness over two nodes, as `chorus-loadtest --url A,B --server-pid P,Q` runs
/// it: the room is created through node 0, both speakers join node 0 and the listeners
/// alternate between the nodes, so node 1's listeners hear only what the relay brings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_harness_spreads_listeners_over_two_nodes_and_node_1_hears_through_the_relay()
-> anyhow::Result<()> {
    use loadtest::harness::{NoProgress, Scenario, Target, TokenSource, run_scenario};
    let c = Cluster::start(2).await?;
    let urls: Vec<String> = (0..2).map(|i| format!("http://{}", c.addr(i))).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let target = Target::cluster(
        &urls,
        false,
        TokenSource::Mint {
            secret: ACCESS_SECRET.as_bytes().to_vec(),
            ttl: Duration::from_secs(600),
        },
    )
    .await?
    .with_server_pids(&[c.pid(0), c.pid(1)])?;
    let sc = Scenario {
        name: "cluster".into(),
        speakers: 2,
        listeners: 8,
        duration: Duration::from_secs(4),
        settle: Duration::from_secs(1),
        ..Scenario::smoke()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(90),
        run_scenario(&target, &sc, &NoProgress),
    )
    .await
    .context("the run did not finish in 90 s")??;
    println!("{}", loadtest::harness::render_table(&report));
    let step = report.steps.first().context("no step measured")?;
    assert_eq!(step.joins.failures, 0, "{:?}", step.joins.errors);
    assert_eq!(
        step.joins.count, 8,
        "every listener heard audio: {:?}",
        step.joins
    );
    assert_eq!(step.listeners_live, 8);
    let delivered = step.delivered.unwrap_or(0.0);
    assert!(delivered >= 0.99, "delivered {:.3}%", delivered * 100.0);

    let [n0, n1] = &step.nodes[..] else {
        bail!("{} node reports", step.nodes.len());
    };
    assert_eq!((n0.speakers, n0.listeners_live), (2, 4));
    assert_eq!((n1.speakers, n1.listeners_live), (0, 4));
    // Node 1 has no speaker: its listeners' audio all came through the relay, and it
    // reached them as completely as node 0's listeners got theirs.
    let d1 = n1.delivered.unwrap_or(0.0);
    assert!(d1 >= 0.99, "node 1 delivered {:.3}%", d1 * 100.0);
    // 4 listeners x 2 speakers x 50 packets/s x 4 s is 1,600; allow for the edges.
    assert!(
        n1.expected >= 1_000,
        "only {} expected on node 1",
        n1.expected
    );
    // Both speakers hold slots, so every packet they sent crossed once (not once per
    // listener) from node 0 to node 1.
    let sent: u64 = step.speaker_packets_sent.iter().sum();
    let relayed_in = n1.server.relay_received.unwrap_or(0.0);
    let relayed_out = n0.server.relay_sent.unwrap_or(0.0);
    assert!(
        relayed_in >= 0.95 * sent as f64 && relayed_in <= 1.05 * sent as f64 + 20.0,
        "node 1 accepted {relayed_in} relay datagrams for {sent} packets sent"
    );
    assert!(
        relayed_out >= relayed_in,
        "node 0 sent {relayed_out}, node 1 accepted {relayed_in}"
    );
    assert_eq!(
        n0.server.relay_received,
        Some(0.0),
        "nothing to relay to node 0"
    );
    assert_eq!(
        n1.server.relay_sent,
        Some(0.0),
        "nothing to relay from node 1"
    );
    let fwd1 = n1.server.packets_forwarded.unwrap_or(0.0);
    assert!(
        fwd1 >= 0.9 * n1.received as f64,
        "node 1 forwarded {fwd1}, its listeners got {}",
        n1.received
    );
    // The summed figures add the two processes, read from /proc.
    assert_eq!(step.server.cpu_source, "proc");
    let (c0, c1) = (
        n0.server.cpu_seconds.unwrap_or(0.0),
        n1.server.cpu_seconds.unwrap_or(0.0),
    );
    let total = step.server.cpu_seconds.unwrap_or(0.0);
    assert!(c0 > 0.0 && c1 > 0.0, "cpu {c0} + {c1}");
    assert!((total - (c0 + c1)).abs() < 1e-6, "{total} != {c0} + {c1}");
    let rss = step.server.rss_bytes.unwrap_or(0.0);
    assert!(
        (rss - n0.server.rss_bytes.unwrap_or(0.0) - n1.server.rss_bytes.unwrap_or(0.0)).abs() < 1.0,
        "summed rss {rss}"
    );
    Ok(())
}
