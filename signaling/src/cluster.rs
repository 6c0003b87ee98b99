//! Scale-out: what signaling needs to run one room across several nodes, as ports.
//!
//! Each node owns the participants whose WebSocket it holds ("local"), and mirrors
//! the participants of other nodes ("remote") from a shared store: their entries in a
//! per-room roster, and the events nodes publish when something changes (see
//! docs/ARCHITECTURE.md, *Running several nodes*). The binary implements
//! [`ClusterStore`] over Redis (`src/cluster_redis.rs`) and [`MediaRelay`] over the
//! SFU's relay; without `REDIS_URL` neither exists and signaling is single-node.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::SignalingError;
use media::RoomKey;

use crate::ports::AuthUser;
use crate::protocol::{Participant, ParticipantId, RemovedUser, Role, ServerMessage, SpeakerLevel};

/// Participant ids minted by one node are `pid_base + n`: the store hands each node a
/// base that no live node uses, so ids stay unique across the cluster. Bases are
/// multiples of this (2^32 participants per node run), and stay below 2^53 so that
/// JavaScript reads them exactly.
pub const PID_BLOCK: u64 = 1 << 32;
/// Number of distinct bases (2^53 / 2^32).
pub const PID_BASES: u64 = 1 << 21;
// The largest id a node can mint stays exact in JavaScript.
const _: () = assert!((PID_BASES - 1) * PID_BLOCK + (PID_BLOCK - 1) < (1u64 << 53));

/// A participant's place as other nodes see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterParticipant {
    pub room_id: String,
    /// The node holding its WebSocket (and its audio).
    pub node: String,
    pub info: Participant,
    pub user_id: String,
    pub name: String,
    pub avatar: Option<String>,
    /// Lets the participant resume its place on any node (the store is trusted
    /// infrastructure, as the database is).
    pub resume_token: String,
}

impl ClusterParticipant {
    pub fn user(&self) -> AuthUser {
        AuthUser {
            user_id: self.user_id.clone(),
            name: self.name.clone(),
            avatar: self.avatar.clone(),
        }
    }
}

/// What a moderator on one node asks of the node that holds the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// The sender checked the moderator's rights; `by_owner` carries what the
    /// owner-only rules need.
    SetRole {
        role: Role,
        by_owner: bool,
    },
    Mute,
    Remove,
}

/// What nodes tell each other (published to every node; a node ignores its own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A participant joined, changed (role, mute, hand, call) or moved to another node.
    Upsert { participant: ClusterParticipant },
    Left {
        room_id: String,
        participant_id: ParticipantId,
    },
    /// A message for everyone in the room (chat, deletions, call notices).
    Broadcast {
        room_id: String,
        message: ServerMessage,
    },
    /// For the node that holds `target`.
    Command {
        node: String,
        room_id: String,
        target: ParticipantId,
        command: Command,
    },
    /// The room's removed users after a change.
    RemovedUsers {
        room_id: String,
        users: Vec<RemovedUser>,
    },
    /// One node's loudest local speakers, for the room's authority to merge.
    NodeSpeakers {
        room_id: String,
        node: String,
        speakers: Vec<SpeakerLevel>,
    },
    /// The authority's merged active speakers of the room.
    RoomSpeakers {
        room_id: String,
        speakers: Vec<SpeakerLevel>,
    },
    /// The room was ended or deleted.
    CloseRoom { room_id: String, reason: String },
}

impl ClusterEvent {
    pub fn room_id(&self) -> &str {
        match self {
            ClusterEvent::Upsert { participant } => &participant.room_id,
            ClusterEvent::Left { room_id, .. }
            | ClusterEvent::Broadcast { room_id, .. }
            | ClusterEvent::Command { room_id, .. }
            | ClusterEvent::RemovedUsers { room_id, .. }
            | ClusterEvent::NodeSpeakers { room_id, .. }
            | ClusterEvent::RoomSpeakers { room_id, .. }
            | ClusterEvent::CloseRoom { room_id, .. } => room_id,
        }
    }
}

/// What the store delivers to signaling.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterInput {
    /// Another node's event.
    Event(Box<ClusterEvent>),
    /// This node's heartbeat was written. `fresh` when the store did not have it any
    /// more (first beat, a restarted store, or this node was presumed dead): everything
    /// this node owns must be written again and the mirrors reloaded.
    Heartbeat { fresh: bool },
    /// The event subscription was (re)established: events may have been missed, so
    /// the mirrors are reloaded.
    Subscribed,
}

/// The shared store of a cluster: rosters, liveness, leases and the event bus.
/// Calls are bounded by the implementation (a store that does not answer is an
/// error, never a hang).
#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// This node's id (unique among live nodes).
    fn node_id(&self) -> &str;
    /// First participant id this node mints (see [`PID_BLOCK`]).
    fn pid_base(&self) -> u64;
    /// Publishes to every other node, in order of the calls.
    async fn publish(&self, event: &ClusterEvent) -> Result<(), SignalingError>;
    /// Writes a local participant into its room's roster.
    async fn save_participant(&self, p: &ClusterParticipant) -> Result<(), SignalingError>;
    /// Removes a participant from its room's roster.
    async fn delete_participant(
        &self,
        room_id: &str,
        pid: ParticipantId,
    ) -> Result<(), SignalingError>;
    /// The room's roster, every node's participants.
    async fn room_participants(
        &self,
        room_id: &str,
    ) -> Result<Vec<ClusterParticipant>, SignalingError>;
    async fn save_removed(
        &self,
        room_id: &str,
        users: &[RemovedUser],
    ) -> Result<(), SignalingError>;
    async fn removed_users(&self, room_id: &str) -> Result<Vec<RemovedUser>, SignalingError>;
    /// Those of `nodes` whose heartbeat has not expired.
    async fn live_nodes(&self, nodes: &[String]) -> Result<HashSet<String>, SignalingError>;
    /// Takes the room's authority lease if it is free, or renews it if this node holds
    /// it; true when this node is the authority.
    async fn claim_authority(&self, room_id: &str) -> Result<bool, SignalingError>;
    /// Publishes (or, with `None`, withdraws) this node's media relay address for a
    /// room.
    async fn set_relay_addr(
        &self,
        room_id: &str,
        addr: Option<SocketAddr>,
    ) -> Result<(), SignalingError>;
    /// Every node's relay address for the room.
    async fn relay_addrs(
        &self,
        room_id: &str,
    ) -> Result<HashMap<String, SocketAddr>, SignalingError>;
    /// Events of other nodes, heartbeats and resubscriptions (one consumer).
    fn inputs(&self) -> BoxStream<'static, ClusterInput>;
}

/// The key every node of a cluster gives a room: the first 8 bytes of the SHA-256 of its
/// id, big-endian. The media relay names rooms by key between nodes.
pub fn cluster_room_key(room_id: &str) -> RoomKey {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(room_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    RoomKey(u64::from_be_bytes(first))
}

/// The SFU's relay between nodes, as signaling drives it: a node with speakers in a
/// room forwards their audio to the relay address of every other node with
/// participants in it.
pub trait MediaRelay: Send + Sync + 'static {
    /// This node's relay socket for the room, if relaying is on.
    fn relay_local_addr(&self, room: RoomKey) -> Option<SocketAddr>;
    /// Forward the room's audio to another node's relay socket.
    fn relay_add_subscriber(&self, room: RoomKey, node_addr: SocketAddr);
    fn relay_remove_subscriber(&self, room: RoomKey, node_addr: SocketAddr);
}

/// What [`crate::Signaling::with_cluster`] needs.
#[derive(Clone)]
pub struct Cluster {
    pub store: std::sync::Arc<dyn ClusterStore>,
    pub relay: std::sync::Arc<dyn MediaRelay>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_tagged_json() {
        let e = ClusterEvent::Command {
            node: "n1".into(),
            room_id: "r".into(),
            target: ParticipantId(PID_BLOCK + 3),
            command: Command::SetRole {
                role: Role::Speaker,
                by_owner: false,
            },
        };
        let s = serde_json::to_string(&e).expect("ser");
        assert!(s.contains(r#""type":"command""#), "{s}");
        assert_eq!(serde_json::from_str::<ClusterEvent>(&s).expect("de"), e);
        assert!(serde_json::from_str::<ClusterEvent>(r#"{"type":"nope"}"#).is_err());
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn a_rooms_key_is_the_same_everywhere_and_differs_between_rooms() {
        // Pinned: nodes built from different versions must agree.
        assert_eq!(cluster_room_key("abc"), RoomKey(0xba78_16bf_8f01_cfea));
        assert_eq!(cluster_room_key("room-1"), cluster_room_key("room-1"));
        assert_ne!(cluster_room_key("room-1"), cluster_room_key("room-2"));
    }
}
