//! Rooms' live state: who is in which room, with which role, on which connection, in
//! the call or not; and the fan-out of server messages to connections.
//!
//! Everything here is synchronous and runs under one mutex that is never held across
//! an await. Broadcasts serialise a message once and hand the same bytes (a
//! ref-counted `Utf8Bytes`) to every recipient's bounded queue; a recipient whose
//! queue is full is disconnected instead of stalling the room.

use std::collections::{BTreeSet, HashMap};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use media::RoomKey;

use crate::cluster::{ClusterEvent, ClusterParticipant, Command};
use crate::ports::AuthUser;
use crate::protocol::{Participant, ParticipantId, RemovedUser, Role, ServerMessage, SpeakerLevel};

/// At most this many removed users are remembered per room; past it the earliest
/// removal is forgotten (bounds memory against a moderator removing without end).
pub(crate) const MAX_REMOVED_PER_ROOM: usize = 1000;

/// What a connection's writer task sends.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Text(Utf8Bytes),
    /// Flush what came before, send a close frame, end the connection.
    Close {
        code: u16,
        reason: &'static str,
    },
}

/// The sending half of one WebSocket connection.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    /// Unique per socket; lets a stale socket's cleanup recognise that a resumed
    /// participant has moved to a newer socket.
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Outgoing>,
    /// Cancelling ends both halves of the connection.
    pub(crate) cancel: CancellationToken,
}

impl Conn {
    /// Queues bytes without waiting; a full queue means the client does not keep up,
    /// so it is disconnected (it may resume within the grace period).
    pub(crate) fn push(&self, text: Utf8Bytes) {
        match self.tx.try_send(Outgoing::Text(text)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    conn = self.id,
                    "outgoing queue full; disconnecting slow client"
                );
                self.cancel.cancel();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub(crate) fn send(&self, msg: &ServerMessage) {
        if let Some(text) = encode(msg) {
            self.push(text);
        }
    }

    /// Queues a close after everything already queued (e.g. after `removed`).
    pub(crate) fn close(&self, code: u16, reason: &'static str) {
        if self.tx.try_send(Outgoing::Close { code, reason }).is_err() {
            self.cancel.cancel();
        }
    }
}

pub(crate) fn encode(msg: &ServerMessage) -> Option<Utf8Bytes> {
    match serde_json::to_string(msg) {
        Ok(s) => Some(Utf8Bytes::from(s)),
        Err(e) => {
            tracing::error!(error = %e, "failed to serialise a server message");
            None
        }
    }
}

/// Call membership of a participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallPhase {
    Idle,
    /// `media.join` is in flight (the participant's own session awaits it).
    Joining,
    /// Media has (or had, until it says otherwise) a peer connection for it.
    InCall,
}

#[derive(Debug)]
pub(crate) struct Part {
    pub(crate) info: Participant,
    pub(crate) user: AuthUser,
    pub(crate) room_id: String,
    /// `None` while the socket is gone and the resume grace runs.
    pub(crate) conn: Option<Conn>,
    pub(crate) resume_token: String,
    pub(crate) call: CallPhase,
    /// Media reported ICE+DTLS up for the current peer connection.
    pub(crate) media_connected: bool,
    /// Media was connected at some point of this place's life: a place that never had
    /// audio gets the short resume grace (`unconnected_grace`).
    pub(crate) had_media: bool,
    /// Bumped on every detach/attach so a stale grace timer does nothing.
    pub(crate) detach_gen: u64,
    /// Set when another node holds this participant (cluster mode): this entry only
    /// mirrors it, with no socket and no media here.
    pub(crate) remote: Option<Remote>,
}

/// A participant held by another node, as mirrored here.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub(crate) node: String,
    /// Its roster entry was missing when the roster was last read (e.g. after a
    /// store restart) and no event confirmed it since.
    pub(crate) unconfirmed: bool,
    /// Since when its node is dead or the entry unconfirmed; past the resume grace
    /// the mirror is dropped (nobody resumed it elsewhere).
    pub(crate) orphan_since: Option<Instant>,
}

impl Part {
    pub(crate) fn is_local(&self) -> bool {
        self.remote.is_none()
    }

    /// A local place whose socket is gone and which may still be resumed.
    pub(crate) fn is_detached(&self) -> bool {
        self.remote.is_none() && self.conn.is_none()
    }

    pub(crate) fn cluster_view(&self, node: &str) -> ClusterParticipant {
        ClusterParticipant {
            room_id: self.room_id.clone(),
            node: node.to_owned(),
            info: self.info.clone(),
            user_id: self.user.user_id.clone(),
            name: self.user.name.clone(),
            avatar: self.user.avatar.clone(),
            resume_token: self.resume_token.clone(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) key: RoomKey,
    pub(crate) owner_user_id: String,
    pub(crate) members: BTreeSet<ParticipantId>,
    /// Latest room-level slot map from media, personalised per recipient on send.
    pub(crate) slots: Vec<Option<ParticipantId>>,
    pub(crate) spare: Option<ParticipantId>,
    pub(crate) speakers: Vec<SpeakerLevel>,
    /// Cluster mode: the roster was read from the store (a room first seen through an
    /// event is only partly known until then).
    pub(crate) loaded: bool,
    /// Cluster mode: this node holds the room's authority lease.
    pub(crate) authority: bool,
    /// Cluster mode, on the authority: each node's latest loudest local speakers.
    pub(crate) node_speakers: HashMap<String, Vec<SpeakerLevel>>,
}

impl Room {
    pub(crate) fn new(key: RoomKey, owner_user_id: String, slot_count: usize) -> Self {
        Room {
            key,
            owner_user_id,
            members: Default::default(),
            slots: vec![None; slot_count],
            spare: None,
            speakers: Vec::new(),
            loaded: false,
            authority: false,
            node_speakers: HashMap::new(),
        }
    }
}

/// What the cluster publisher task does, in order.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Written to the store where it says so (rosters, removed lists), then published.
    Event(Box<ClusterEvent>),
    /// Drops a local participant's roster entry without telling anyone (the room was
    /// closed, which every node learns by itself).
    Forget { room_id: String, pid: ParticipantId },
}

/// State's link to the cluster publisher (cluster mode only).
#[derive(Debug)]
pub(crate) struct ClusterLink {
    pub(crate) node: String,
    pub(crate) tx: mpsc::UnboundedSender<Outbound>,
}

/// All live rooms and participants of this server.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) rooms: HashMap<String, Room>,
    pub(crate) room_by_key: HashMap<RoomKey, String>,
    pub(crate) parts: HashMap<ParticipantId, Part>,
    pub(crate) resume: HashMap<String, ParticipantId>,
    /// Bumped by every `close_room`, live or not: a join that asked the directory
    /// before a close and arrives after it asks again, so a room deleted meanwhile
    /// is not re-created by a join it had allowed a moment earlier.
    pub(crate) closures: u64,
    /// Per room id, the users a moderator removed, in removal order. Kept while the
    /// room empties and fills again (so a removed user stays out until a moderator
    /// lets them back in); dropped when the room is closed (ended or deleted). In
    /// memory: a server restart forgets it.
    pub(crate) removed: HashMap<String, Vec<RemovedUser>>,
    /// Cluster mode: where changes of local participants and rooms are published.
    pub(crate) cluster: Option<ClusterLink>,
}

/// Cheap live view of a room for the control plane's listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSnapshot {
    /// Participants present (connections, so two tabs count twice).
    pub total_people: usize,
    /// User ids of participants who may speak (moderators and speakers), each once,
    /// in join order.
    pub speakers: Vec<String>,
    /// Of `total_people`, how many lost their socket and may still resume.
    pub reconnecting: usize,
}

/// Live counts for metrics (bounded: no room or user ids).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalingStats {
    /// Open, authenticated WebSocket connections.
    pub connections: u64,
    /// Rooms with at least one participant.
    pub rooms: u64,
    pub moderators: u64,
    pub speakers: u64,
    pub listeners: u64,
    /// Participants in the call (with a peer connection).
    pub in_call: u64,
    /// Participants whose socket dropped and who may still resume.
    pub reconnecting: u64,
}

impl State {
    /// Counts for `Signaling::stats` (connections are filled in by the caller).
    pub(crate) fn stats(&self) -> SignalingStats {
        let mut s = SignalingStats {
            rooms: self.rooms.len() as u64,
            ..SignalingStats::default()
        };
        // This node's participants only: every node reports its own.
        for p in self.parts.values().filter(|p| p.is_local()) {
            match p.info.role {
                crate::protocol::Role::Moderator => s.moderators += 1,
                crate::protocol::Role::Speaker => s.speakers += 1,
                crate::protocol::Role::Listener => s.listeners += 1,
            }
            if p.call == CallPhase::InCall {
                s.in_call += 1;
            }
            if p.conn.is_none() {
                s.reconnecting += 1;
            }
        }
        s
    }

    /// Sends `msg` to every connected member of `room_id` except `except`, serialising
    /// it once.
    pub(crate) fn broadcast(
        &self,
        room_id: &str,
        msg: &ServerMessage,
        except: Option<ParticipantId>,
    ) {
        // A change of one of this node's participants is every node's news.
        if let ServerMessage::ParticipantJoined { participant }
        | ServerMessage::ParticipantUpdated { participant } = msg
        {
            self.publish_part(participant.participant_id);
        }
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let Some(bytes) = encode(msg) else {
            return;
        };
        for pid in &room.members {
            if Some(*pid) == except {
                continue;
            }
            if let Some(conn) = self.parts.get(pid).and_then(|p| p.conn.as_ref()) {
                conn.push(bytes.clone());
            }
        }
    }

    /// Cluster mode: queues `event` for the other nodes (no-op on a single node).
    pub(crate) fn publish(&self, event: ClusterEvent) {
        if let Some(c) = &self.cluster {
            let _ = c.tx.send(Outbound::Event(Box::new(event)));
        }
    }

    /// Cluster mode: publishes the current state of a local participant.
    pub(crate) fn publish_part(&self, pid: ParticipantId) {
        if let Some(c) = &self.cluster
            && let Some(p) = self.parts.get(&pid)
            && p.is_local()
        {
            let _ = c.tx.send(Outbound::Event(Box::new(ClusterEvent::Upsert {
                participant: p.cluster_view(&c.node),
            })));
        }
    }

    /// `broadcast`, and in cluster mode the same message on every other node.
    pub(crate) fn announce(&self, room_id: &str, msg: ServerMessage) {
        self.broadcast(room_id, &msg, None);
        self.publish(ClusterEvent::Broadcast {
            room_id: room_id.to_owned(),
            message: msg,
        });
    }

    /// Cluster mode: publishes the room's removed-users list after a change.
    pub(crate) fn publish_removed(&self, room_id: &str) {
        self.publish(ClusterEvent::RemovedUsers {
            room_id: room_id.to_owned(),
            users: self.removed.get(room_id).cloned().unwrap_or_default(),
        });
    }

    pub(crate) fn send_to(&self, pid: ParticipantId, msg: &ServerMessage) {
        if let Some(conn) = self.parts.get(&pid).and_then(|p| p.conn.as_ref()) {
            conn.send(msg);
        }
    }

    /// Whether a moderator removed `user_id` from `room_id` (and did not let them back).
    pub(crate) fn is_removed(&self, room_id: &str, user_id: &str) -> bool {
        self.removed
            .get(room_id)
            .is_some_and(|l| l.iter().any(|u| u.user_id == user_id))
    }

    /// Records a removal (once per user), bounded by `MAX_REMOVED_PER_ROOM`.
    pub(crate) fn add_removed(&mut self, room_id: &str, user: RemovedUser) {
        let list = self.removed.entry(room_id.to_owned()).or_default();
        if list.iter().any(|u| u.user_id == user.user_id) {
            return;
        }
        if list.len() >= MAX_REMOVED_PER_ROOM {
            list.remove(0);
        }
        list.push(user);
    }

    /// Lets a removed user back in; false if they were not on the list.
    pub(crate) fn let_back_in(&mut self, room_id: &str, user_id: &str) -> bool {
        let Some(list) = self.removed.get_mut(room_id) else {
            return false;
        };
        let before = list.len();
        list.retain(|u| u.user_id != user_id);
        let changed = list.len() != before;
        if list.is_empty() {
            self.removed.remove(room_id);
        }
        changed
    }

    /// The removed-users list of `room_id`, as `removed_users` for moderators.
    pub(crate) fn removed_message(&self, room_id: &str) -> ServerMessage {
        ServerMessage::RemovedUsers {
            users: self.removed.get(room_id).cloned().unwrap_or_default(),
        }
    }

    /// Sends the room's removed-users list to each connected moderator in it.
    pub(crate) fn send_removed_to_moderators(&self, room_id: &str) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let Some(bytes) = encode(&self.removed_message(room_id)) else {
            return;
        };
        for pid in &room.members {
            if let Some(p) = self.parts.get(pid)
                && p.info.role == Role::Moderator
                && let Some(conn) = &p.conn
            {
                conn.push(bytes.clone());
            }
        }
    }

    pub(crate) fn participants_of(&self, room_id: &str) -> Vec<Participant> {
        let Some(room) = self.rooms.get(room_id) else {
            return Vec::new();
        };
        room.members
            .iter()
            .filter_map(|pid| self.parts.get(pid).map(|p| p.info.clone()))
            .collect()
    }

    /// Removes a participant from its room and the indexes; drops the room when it
    /// empties. Returns the removed entry.
    pub(crate) fn remove_part(&mut self, pid: ParticipantId) -> Option<Part> {
        let part = self.parts.remove(&pid)?;
        if part.is_local() {
            self.resume.remove(&part.resume_token);
            self.publish(ClusterEvent::Left {
                room_id: part.room_id.clone(),
                participant_id: pid,
            });
        }
        let empty = match self.rooms.get_mut(&part.room_id) {
            Some(room) => {
                room.members.remove(&pid);
                room.members.is_empty()
            }
            None => false,
        };
        if empty && let Some(room) = self.rooms.remove(&part.room_id) {
            self.room_by_key.remove(&room.key);
        }
        Some(part)
    }

    /// After a moderator left `room_id` for good: if no moderator is left among the
    /// members, the earliest-joined speaker becomes one (announced as
    /// `participant_updated`), so the room is never without moderation while someone
    /// is on stage. The owner gets the role back on their next join as always.
    pub(crate) fn hand_over_moderation(&mut self, room_id: &str) -> Option<ParticipantId> {
        let room = self.rooms.get(room_id)?;
        let parts = &self.parts;
        let role_of = |pid: &ParticipantId| parts.get(pid).map(|p| p.info.role);
        if room
            .members
            .iter()
            .any(|pid| role_of(pid) == Some(Role::Moderator))
        {
            return None;
        }
        // Members are ordered by participant id, which grows with every join.
        let heir = room
            .members
            .iter()
            .copied()
            .find(|pid| role_of(pid) == Some(Role::Speaker))?;
        if let Some(remote) = self.parts.get(&heir).and_then(|p| p.remote.clone()) {
            // Its node applies the change and tells everyone.
            self.publish(ClusterEvent::Command {
                node: remote.node,
                room_id: room_id.to_owned(),
                target: heir,
                command: Command::SetRole {
                    role: Role::Moderator,
                    by_owner: true,
                },
            });
            return Some(heir);
        }
        let part = self.parts.get_mut(&heir)?;
        part.info.role = Role::Moderator;
        let info = part.info.clone();
        self.broadcast(
            room_id,
            &ServerMessage::ParticipantUpdated { participant: info },
            None,
        );
        self.send_removed_to_moderators(room_id);
        Some(heir)
    }

    /// `remove_part`, and everyone left in the room sees `participant_left`. The caller
    /// finishes with `Inner::after_removal` once the state lock is released.
    pub(crate) fn remove_and_announce(&mut self, pid: ParticipantId) -> Option<Part> {
        let part = self.remove_part(pid)?;
        self.broadcast(
            &part.room_id,
            &ServerMessage::ParticipantLeft {
                participant_id: pid,
            },
            None,
        );
        Some(part)
    }

    /// Empties and drops a live room at once: queues `farewell` (serialised once) and
    /// then a close on every connected member, and removes every member, connected or
    /// waiting to resume, so none can resume into it. Returns the removed entries.
    pub(crate) fn close_room(
        &mut self,
        room_id: &str,
        farewell: &ServerMessage,
        close_code: u16,
        close_reason: &'static str,
    ) -> Vec<Part> {
        self.closures = self.closures.wrapping_add(1);
        self.removed.remove(room_id);
        let Some(room) = self.rooms.remove(room_id) else {
            return Vec::new();
        };
        self.room_by_key.remove(&room.key);
        let bytes = encode(farewell);
        let mut removed = Vec::with_capacity(room.members.len());
        for pid in room.members {
            let Some(part) = self.parts.remove(&pid) else {
                continue;
            };
            if !part.is_local() {
                continue;
            }
            self.resume.remove(&part.resume_token);
            if let Some(c) = &self.cluster {
                let _ = c.tx.send(Outbound::Forget {
                    room_id: room_id.to_owned(),
                    pid,
                });
            }
            if let Some(conn) = &part.conn {
                if let Some(bytes) = &bytes {
                    conn.push(bytes.clone());
                }
                conn.close(close_code, close_reason);
            }
            removed.push(part);
        }
        removed
    }

    pub(crate) fn snapshot(&self, room_id: &str) -> Option<RoomSnapshot> {
        let room = self.rooms.get(room_id)?;
        let mut speakers: Vec<String> = Vec::new();
        let mut reconnecting = 0;
        for p in room.members.iter().filter_map(|pid| self.parts.get(pid)) {
            if p.is_detached() {
                reconnecting += 1;
            }
            if p.info.role.can_publish() && !speakers.contains(&p.info.user_id) {
                speakers.push(p.info.user_id.clone());
            }
        }
        Some(RoomSnapshot {
            total_people: room.members.len(),
            speakers,
            reconnecting,
        })
    }

    /// Sends each in-call member of the room its personal view of the room's slots.
    /// The common view is serialised once; only the few participants who are
    /// themselves in a slot get their own message.
    pub(crate) fn send_slots(&self, room_id: &str, only: Option<ParticipantId>) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let common = ServerMessage::Slots {
            slots: room.slots.clone(),
        };
        let Some(common_bytes) = encode(&common) else {
            return;
        };
        for pid in &room.members {
            if only.is_some_and(|o| o != *pid) {
                continue;
            }
            let Some(part) = self.parts.get(pid) else {
                continue;
            };
            if part.call != CallPhase::InCall {
                continue;
            }
            let Some(conn) = &part.conn else {
                continue;
            };
            if room.slots.contains(&Some(*pid)) {
                conn.send(&ServerMessage::Slots {
                    slots: personal_slots(&room.slots, room.spare, *pid),
                });
            } else {
                conn.push(common_bytes.clone());
            }
        }
    }
}

/// The slot view of participant `me`: where the room map has `me` itself, `me` hears
/// the spare (next-loudest) speaker instead, as media's router does.
pub(crate) fn personal_slots(
    slots: &[Option<ParticipantId>],
    spare: Option<ParticipantId>,
    me: ParticipantId,
) -> Vec<Option<ParticipantId>> {
    slots
        .iter()
        .map(|s| if *s == Some(me) { spare } else { *s })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(id: &str) -> RemovedUser {
        RemovedUser {
            user_id: id.into(),
            name: id.into(),
            avatar: None,
        }
    }

    #[test]
    fn the_removed_list_is_once_per_user_bounded_and_emptied_by_letting_back_in() {
        let mut st = State::default();
        st.add_removed("r", removed("u1"));
        st.add_removed("r", removed("u1"));
        assert_eq!(st.removed["r"].len(), 1);
        assert!(st.is_removed("r", "u1") && !st.is_removed("r2", "u1"));
        for i in 0..MAX_REMOVED_PER_ROOM + 5 {
            st.add_removed("r", removed(&format!("x{i}")));
        }
        assert_eq!(st.removed["r"].len(), MAX_REMOVED_PER_ROOM);
        assert!(
            !st.is_removed("r", "u1"),
            "the earliest removal is forgotten first"
        );
        assert!(st.let_back_in("r", "x10"));
        assert!(!st.let_back_in("r", "x10"));
        assert!(!st.is_removed("r", "x10"));
        let ServerMessage::RemovedUsers { users } = st.removed_message("r") else {
            panic!("removed_users expected");
        };
        assert_eq!(users.len(), MAX_REMOVED_PER_ROOM - 1);
        // Closing the room (ended or deleted) forgets its list.
        let bye = ServerMessage::Removed {
            reason: "room deleted".into(),
        };
        st.close_room("r", &bye, 1000, "closed");
        assert!(!st.removed.contains_key("r"));
    }

    #[test]
    fn a_participant_in_a_slot_hears_the_spare_there_and_others_see_the_room_map() {
        let p = ParticipantId;
        let slots = vec![Some(p(1)), Some(p(2)), None];
        assert_eq!(
            personal_slots(&slots, Some(p(9)), p(2)),
            vec![Some(p(1)), Some(p(9)), None]
        );
        assert_eq!(personal_slots(&slots, Some(p(9)), p(5)), slots);
        assert_eq!(
            personal_slots(&slots, None, p(1)),
            vec![None, Some(p(2)), None]
        );
    }
}
