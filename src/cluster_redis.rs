//! `signaling::cluster::ClusterStore` over Redis: how the nodes of a cluster share
//! rooms (`REDIS_URL`). Only started when `REDIS_URL` is set.
//!
//! Keys (all under `chorus:`), every one of them either refreshed by a heartbeat with
//! a TTL or bounded by an expiry, so a dead node leaves nothing behind for long:
//!
//! - `node:{node}`: the node's heartbeat, `PX CLUSTER_NODE_TTL_MS`, written every
//!   `CLUSTER_HEARTBEAT_MS`. A node whose key expired is dead.
//! - `pid:{n}`: the participant-id block `n` this node mints from, same TTL.
//! - `room:{room}:parts`: the room's roster, a hash participant id -> JSON
//!   (`ClusterParticipant`); expires a day after its last write.
//! - `room:{room}:removed`: the users a moderator removed (JSON), same expiry.
//! - `room:{room}:authority`: the node holding the room's authority lease, same TTL
//!   as a heartbeat, renewed by its holder each beat.
//! - `room:{room}:relay`: a hash node -> that node's media relay address for the room.
//!
//! Events go over one pub/sub channel, `chorus:events`, as JSON `{from, event}`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use signaling::SignalingError;
use signaling::cluster::{
    ClusterEvent, ClusterInput, ClusterParticipant, ClusterStore, PID_BASES, PID_BLOCK,
};
use signaling::protocol::{ParticipantId, RemovedUser};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "chorus:events";
/// Rosters and removed lists outlive their last write by this much at most (a whole
/// cluster that stopped leaves nothing forever).
const ROOM_KEY_TTL_MS: u64 = 24 * 3600 * 1000;
/// Bound on one Redis call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Claims the room's authority if free, renews it if held by this node.
const CLAIM_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    event: ClusterEvent,
}

/// Cluster settings from the configuration.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub redis_url: String,
    pub node_id: String,
    pub heartbeat: Duration,
    pub node_ttl: Duration,
}

/// The Redis adapter. Cheap to share (`Arc`); its heartbeat and subscription tasks
/// stop with the server's shutdown token.
pub struct RedisCluster {
    node: String,
    pid_base: u64,
    conn: ConnectionManager,
    node_ttl: Duration,
    claim: redis::Script,
    /// Taken by the one consumer of `inputs()`.
    inputs: Mutex<Option<mpsc::UnboundedReceiver<ClusterInput>>>,
}

fn backend(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::Backend(format!("redis: {e}"))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn parts_key(room: &str) -> String {
    format!("chorus:room:{room}:parts")
}

impl RedisCluster {
    /// Connects (lazily: a Redis that is down at start is waited for, not fatal),
    /// claims a participant-id block and starts the heartbeat and subscription tasks.
    pub async fn start(
        settings: ClusterSettings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(
            settings.heartbeat < settings.node_ttl,
            "CLUSTER_HEARTBEAT_MS must be below CLUSTER_NODE_TTL_MS"
        );
        let client = redis::Client::open(settings.redis_url.as_str()).context("REDIS_URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .context("Redis connection")?;
        let (block, claimed) = claim_pid_block(&mut conn, &settings).await;
        if !claimed {
            tracing::warn!("Redis unreachable at start: participant ids from a random block");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(RedisCluster {
            node: settings.node_id.clone(),
            pid_base: block * PID_BLOCK,
            conn: conn.clone(),
            node_ttl: settings.node_ttl,
            claim: redis::Script::new(CLAIM_SCRIPT),
            inputs: Mutex::new(Some(rx)),
        });
        tokio::spawn(heartbeat(
            conn,
            settings.clone(),
            block,
            tx.clone(),
            shutdown.clone(),
        ));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        tokio::spawn(subscribe(
            client,
            settings.node_id.clone(),
            tx,
            subscribed_tx,
            shutdown,
        ));
        // Serve only once other nodes' events arrive, so that nothing published right
        // after this node starts is missed (bounded: a Redis that is down is waited
        // for in the background).
        if tokio::time::timeout(CALL_TIMEOUT, subscribed)
            .await
            .is_err()
        {
            tracing::warn!("not subscribed to cluster events yet; starting anyway");
        }
        tracing::info!(node = %settings.node_id, "cluster mode: rooms shared through Redis");
        Ok(cluster)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SignalingError> {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(r) => r.map_err(backend),
            Err(_) => Err(backend("timed out")),
        }
    }
}

/// Picks a participant-id block no live node holds (`SET NX` with the heartbeat TTL).
async fn claim_pid_block(conn: &mut ConnectionManager, s: &ClusterSettings) -> (u64, bool) {
    let mut block = 1;
    for _ in 0..16 {
        block = rand::random_range(1..PID_BASES);
        let set: Result<redis::RedisResult<Option<String>>, _> = tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("SET")
                .arg(format!("chorus:pid:{block}"))
                .arg(&s.node_id)
                .arg("NX")
                .arg("PX")
                .arg(ms(s.node_ttl))
                .query_async(conn),
        )
        .await;
        match set {
            Ok(Ok(Some(_))) => return (block, true),
            Ok(Ok(None)) => continue,
            _ => return (block, false),
        }
    }
    (block, false)
}

/// Writes the node's heartbeat every `heartbeat`; reports each beat, `fresh` when the
/// key was gone (first beat, Redis restarted or lost it, or the node was presumed
/// dead) so that signaling writes its state again.
async fn heartbeat(
    mut conn: ConnectionManager,
    s: ClusterSettings,
    block: u64,
    tx: mpsc::UnboundedSender<ClusterInput>,
    shutdown: CancellationToken,
) {
    let key = format!("chorus:node:{}", s.node_id);
    let ttl = ms(s.node_ttl);
    let mut interval = tokio::time::interval(s.heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let beat = async {
            let renewed: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg("1")
                .arg("XX")
                .arg("PX")
                .arg(ttl)
                .query_async(&mut conn)
                .await?;
            if renewed.is_none() {
                let () = redis::cmd("SET")
                    .arg(&key)
                    .arg("1")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut conn)
                    .await?;
            }
            let () = redis::cmd("SET")
                .arg(format!("chorus:pid:{block}"))
                .arg(&s.node_id)
                .arg("PX")
                .arg(ttl)
                .query_async(&mut conn)
                .await?;
            redis::RedisResult::Ok(renewed.is_none())
        };
        match tokio::time::timeout(CALL_TIMEOUT, beat).await {
            Ok(Ok(fresh)) => {
                if failing {
                    tracing::info!("Redis reachable again");
                    failing = false;
                }
                if tx.send(ClusterInput::Heartbeat { fresh }).is_err() {
                    break;
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                    failing = true;
                }
            }
            Err(_) => {
                if !failing {
                    tracing::warn!("cluster heartbeat timed out");
                    failing = true;
                }
            }
        }
    }
    // A clean stop lets the other nodes know at once.
    let _ = tokio::time::timeout(CALL_TIMEOUT, conn.del::<_, ()>(&key)).await;
}

/// Keeps a subscription to the events channel, reconnecting with a backoff; reports
/// each (re)subscription, as events may have been missed meanwhile.
async fn subscribe(
    client: redis::Client,
    node: String,
    tx: mpsc::UnboundedSender<ClusterInput>,
    first: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let mut first = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(CHANNEL).await?;
            redis::RedisResult::Ok(ps)
        };
        let ps = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(CALL_TIMEOUT, connected) => r,
        };
        match ps {
            Ok(Ok(mut ps)) => {
                backoff = Duration::from_millis(100);
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
                if tx.send(ClusterInput::Subscribed).is_err() {
                    return;
                }
                let mut messages = ps.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else {
                        tracing::warn!("Redis subscription lost; reconnecting");
                        break;
                    };
                    let envelope: Envelope = match serde_json::from_slice(msg.get_payload_bytes()) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed cluster event ignored");
                            continue;
                        }
                    };
                    if envelope.from != node
                        && tx
                            .send(ClusterInput::Event(Box::new(envelope.event)))
                            .is_err()
                    {
                        return;
                    }
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "Redis subscription failed"),
            Err(_) => tracing::debug!("Redis subscription timed out"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[async_trait]
impl ClusterStore for RedisCluster {
    fn node_id(&self) -> &str {
        &self.node
    }

    fn pid_base(&self) -> u64 {
        self.pid_base
    }

    async fn publish(&self, event: &ClusterEvent) -> Result<(), SignalingError> {
        let payload = serde_json::to_string(&Envelope {
            from: self.node.clone(),
            event: event.clone(),
        })
        .map_err(backend)?;
        let mut c = self.conn.clone();
        self.bounded(c.publish::<_, _, ()>(CHANNEL, payload)).await
    }

    async fn save_participant(&self, p: &ClusterParticipant) -> Result<(), SignalingError> {
        let json = serde_json::to_string(p).map_err(backend)?;
        let key = parts_key(&p.room_id);
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.hset(&key, p.info.participant_id.0, json)
            .ignore()
            .pexpire(&key, ROOM_KEY_TTL_MS as i64)
            .ignore();
        self.bounded(pipe.query_async::<()>(&mut c)).await
    }

    async fn delete_participant(
        &self,
        room_id: &str,
        pid: ParticipantId,
    ) -> Result<(), SignalingError> {
        let mut c = self.conn.clone();
        self.bounded(c.hdel::<_, _, ()>(parts_key(room_id), pid.0))
            .await
    }

    async fn room_participants(
        &self,
        room_id: &str,
    ) -> Result<Vec<ClusterParticipant>, SignalingError> {
        let mut c = self.conn.clone();
        let all: HashMap<String, String> = self.bounded(c.hgetall(parts_key(room_id))).await?;
        Ok(all
            .values()
            .filter_map(|v| match serde_json::from_str(v) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "malformed roster entry ignored");
                    None
                }
            })
            .collect())
    }

    async fn save_removed(
        &self,
        room_id: &str,
        users: &[RemovedUser],
    ) -> Result<(), SignalingError> {
        let key = format!("chorus:room:{room_id}:removed");
        let mut c = self.conn.clone();
        if users.is_empty() {
            return self.bounded(c.del::<_, ()>(key)).await;
        }
        let json = serde_json::to_string(users).map_err(backend)?;
        self.bounded(c.pset_ex::<_, _, ()>(key, json, ROOM_KEY_TTL_MS))
            .await
    }

    async fn removed_users(&self, room_id: &str) -> Result<Vec<RemovedUser>, SignalingError> {
        let mut c = self.conn.clone();
        let json: Option<String> = self
            .bounded(c.get(format!("chorus:room:{room_id}:removed")))
            .await?;
        Ok(json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default())
    }

    async fn live_nodes(&self, nodes: &[String]) -> Result<HashSet<String>, SignalingError> {
        if nodes.is_empty() {
            return Ok(HashSet::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| format!("chorus:node:{n}")).collect();
        let mut c = self.conn.clone();
        let beats: Vec<Option<String>> = self
            .bounded(redis::cmd("MGET").arg(&keys).query_async(&mut c))
            .await?;
        Ok(nodes
            .iter()
            .zip(beats)
            .filter(|(_, b)| b.is_some())
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn claim_authority(&self, room_id: &str) -> Result<bool, SignalingError> {
        let mut c = self.conn.clone();
        let mut inv = self.claim.prepare_invoke();
        inv.key(format!("chorus:room:{room_id}:authority"))
            .arg(&self.node)
            .arg(ms(self.node_ttl));
        let held: i64 = self.bounded(inv.invoke_async(&mut c)).await?;
        Ok(held == 1)
    }

    async fn set_relay_addr(
        &self,
        room_id: &str,
        addr: Option<SocketAddr>,
    ) -> Result<(), SignalingError> {
        let key = format!("chorus:room:{room_id}:relay");
        let mut c = self.conn.clone();
        match addr {
            Some(a) => {
                let mut pipe = redis::pipe();
                pipe.hset(&key, &self.node, a.to_string())
                    .ignore()
                    .pexpire(&key, ROOM_KEY_TTL_MS as i64)
                    .ignore();
                self.bounded(pipe.query_async::<()>(&mut c)).await
            }
            None => self.bounded(c.hdel::<_, _, ()>(key, &self.node)).await,
        }
    }

    async fn relay_addrs(
        &self,
        room_id: &str,
    ) -> Result<HashMap<String, SocketAddr>, SignalingError> {
        let mut c = self.conn.clone();
        let all: HashMap<String, String> = self
            .bounded(c.hgetall(format!("chorus:room:{room_id}:relay")))
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(n, a)| a.parse().ok().map(|a| (n, a)))
            .collect())
    }

    fn inputs(&self) -> BoxStream<'static, ClusterInput> {
        match self.inputs.lock().take() {
            Some(rx) => {
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|i| (i, rx)) },
                )
                .boxed()
            }
            None => futures::stream::empty().boxed(),
        }
    }
}

/// The default node id: the host name and a random suffix, so two processes on one
/// host differ.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "chorus".to_owned());
    format!("{host}-{:06x}", rand::random_range(0..0x100_0000u32))
}
