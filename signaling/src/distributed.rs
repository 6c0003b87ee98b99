//! Cluster mode: keeps this node's mirrors of other nodes' participants in step with
//! the shared store, publishes this node's changes, applies other nodes' commands, and
//! does the room authority's work (dropping the participants of dead nodes, merging
//! active speakers). Only runs when `Signaling::with_cluster` was used.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::cluster::{ClusterEvent, ClusterInput, ClusterParticipant, ClusterStore, Command};
use crate::protocol::{ParticipantId, Role, ServerMessage, SpeakerLevel};
use crate::rooms::{CallPhase, Outbound, Part, Remote, Room, State};
use crate::server::Inner;
use media::RoomKey;

/// Close code for a socket whose place moved to another node.
const CLOSE_MOVED: u16 = 4000;
const CLOSE_POLICY: u16 = 1008;

/// Writes and publishes this node's changes in the order they happened.
pub(crate) async fn publisher(
    inner: Weak<Inner>,
    store: Arc<dyn ClusterStore>,
    mut rx: UnboundedReceiver<Outbound>,
) {
    while let Some(op) = rx.recv().await {
        // A local participant joined, entered the call or changed role: the room's relay
        // (this node's address, its subscriptions) is brought up to date first, so the
        // other nodes find this node's relay address when the change reaches them and
        // audio flows at once instead of from the next heartbeat.
        // Other changes (hands, mutes, names) cannot change the relay: the heartbeat's
        // reconciliation is enough for them, and for a speaker leaving the call.
        if let Outbound::Event(event) = &op
            && let ClusterEvent::Upsert { participant } = &**event
            && let Some(inner) = inner.upgrade()
            && (!inner.relay_address_published(&participant.room_id)
                || (participant.info.role.can_publish() && participant.info.in_call))
        {
            inner
                .reconcile_relay_rooms(std::slice::from_ref(&participant.room_id), false)
                .await;
        }
        let done = match &op {
            Outbound::Forget { room_id, pid } => store.delete_participant(room_id, *pid).await,
            Outbound::Event(event) => {
                let stored = match &**event {
                    ClusterEvent::Upsert { participant } => {
                        store.save_participant(participant).await
                    }
                    ClusterEvent::Left {
                        room_id,
                        participant_id,
                    } => store.delete_participant(room_id, *participant_id).await,
                    ClusterEvent::RemovedUsers { room_id, users } => {
                        store.save_removed(room_id, users).await
                    }
                    _ => Ok(()),
                };
                match stored {
                    Ok(()) => store.publish(event).await,
                    Err(e) => Err(e),
                }
            }
        };
        // A lost write is repaired by a resync once the store answers again.
        if let Err(e) = done {
            tracing::warn!(error = %e, "cluster store write failed");
            if let Some(inner) = inner.upgrade() {
                inner.resync_needed.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Consumes the store's inputs: other nodes' events, heartbeats, resubscriptions.
pub(crate) async fn input_pump(inner: Weak<Inner>, mut inputs: BoxStream<'static, ClusterInput>) {
    while let Some(input) = inputs.next().await {
        let Some(inner) = inner.upgrade() else {
            break;
        };
        match input {
            ClusterInput::Event(event) => {
                // A participant of a node new to the room: if this node should relay the
                // room's speakers there, do so now (once the change is applied). Other
                // changes of known nodes' participants cannot change the relay.
                let changed = match &*event {
                    ClusterEvent::Upsert { participant }
                        if !inner.room_has_node(&participant.room_id, &participant.node) =>
                    {
                        Some(participant.room_id.clone())
                    }
                    _ => None,
                };
                inner.on_cluster_event(*event);
                if let Some(room_id) = changed {
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        inner
                            .reconcile_relay_rooms(std::slice::from_ref(&room_id), false)
                            .await;
                    });
                }
            }
            ClusterInput::Heartbeat { fresh } => {
                if inner.resync_needed.swap(false, Ordering::Relaxed) || fresh {
                    inner.resync();
                    inner.reload_rooms().await;
                }
                inner.tick().await;
            }
            ClusterInput::Subscribed => inner.reload_rooms().await,
        }
    }
}

/// A node's speaker report; on the room's authority, merged and published.
pub(crate) fn node_speakers(
    st: &mut State,
    room_id: &str,
    node: &str,
    speakers: Vec<SpeakerLevel>,
) {
    let Some(room) = st.rooms.get_mut(room_id) else {
        return;
    };
    if !room.authority {
        if st.cluster.as_ref().is_some_and(|c| c.node == node) {
            st.publish(ClusterEvent::NodeSpeakers {
                room_id: room_id.to_owned(),
                node: node.to_owned(),
                speakers,
            });
        }
        return;
    }
    room.node_speakers.insert(node.to_owned(), speakers);
    let mut merged: Vec<SpeakerLevel> = Vec::new();
    for list in room.node_speakers.values() {
        for s in list {
            if room.members.contains(&s.participant_id)
                && !merged.iter().any(|m| m.participant_id == s.participant_id)
            {
                merged.push(s.clone());
            }
        }
    }
    merged.sort_by(|a, b| b.level.total_cmp(&a.level));
    if merged == room.speakers {
        return;
    }
    st.publish(ClusterEvent::RoomSpeakers {
        room_id: room_id.to_owned(),
        speakers: merged.clone(),
    });
    room_speakers(st, room_id, merged);
}

fn room_speakers(st: &mut State, room_id: &str, speakers: Vec<SpeakerLevel>) {
    if let Some(r) = st.rooms.get_mut(room_id) {
        r.speakers = speakers.clone();
    }
    st.broadcast(room_id, &ServerMessage::ActiveSpeakers { speakers }, None);
}

/// Inserts or updates the mirror of another node's participant; everyone here sees
/// the change. A participant of this node that another node now holds (resumed
/// there) is let go: its socket closes, its audio here ends, without a
/// `participant_left`.
fn upsert_mirror(inner: &Inner, st: &mut State, p: ClusterParticipant) {
    let pid = p.info.participant_id;
    if !st.rooms.contains_key(&p.room_id) {
        let key = inner.room_key_for(&p.room_id, &st.room_by_key);
        st.room_by_key.insert(key, p.room_id.clone());
        st.rooms.insert(
            p.room_id.clone(),
            Room::new(key, String::new(), inner.cfg.slot_count),
        );
    }
    let remote = Remote {
        node: p.node.clone(),
        unconfirmed: false,
        orphan_since: None,
    };
    let existed = match st.parts.get_mut(&pid) {
        Some(part) if part.room_id == p.room_id => {
            if part.is_local() {
                st.resume.remove(&part.resume_token);
                if let Some(conn) = part.conn.take() {
                    conn.close(CLOSE_MOVED, "moved to another node");
                }
                if part.call != CallPhase::Idle {
                    inner.ports.media.leave(pid);
                }
                part.call = CallPhase::Idle;
                part.media_connected = false;
                tracing::info!(pid = pid.0, node = %p.node, "place resumed on another node");
            }
            let changed = part.info != p.info;
            part.info = p.info.clone();
            part.remote = Some(remote.clone());
            part.resume_token = p.resume_token.clone();
            Some(changed)
        }
        Some(_) => return,
        None => None,
    };
    match existed {
        Some(false) => {}
        Some(true) => st.broadcast(
            &p.room_id,
            &ServerMessage::ParticipantUpdated {
                participant: p.info.clone(),
            },
            None,
        ),
        None => {
            let user = p.user();
            st.parts.insert(
                pid,
                Part {
                    info: p.info.clone(),
                    user,
                    room_id: p.room_id.clone(),
                    conn: None,
                    resume_token: p.resume_token.clone(),
                    call: CallPhase::Idle,
                    media_connected: false,
                    had_media: false,
                    detach_gen: 0,
                    remote: Some(remote),
                },
            );
            if let Some(room) = st.rooms.get_mut(&p.room_id) {
                room.members.insert(pid);
            }
            st.broadcast(
                &p.room_id,
                &ServerMessage::ParticipantJoined {
                    participant: p.info,
                },
                Some(pid),
            );
        }
    }
}

impl Inner {
    fn node(&self) -> Option<&str> {
        self.cluster.as_ref().map(|c| c.store.node_id())
    }

    /// If `target` is another node's participant, asks that node to apply `command`
    /// and returns true; false for a participant of this node.
    pub(crate) fn command_remote(&self, target: ParticipantId, command: Command) -> bool {
        let st = self.state.lock();
        let Some(part) = st.parts.get(&target) else {
            return false;
        };
        let Some(remote) = &part.remote else {
            return false;
        };
        st.publish(ClusterEvent::Command {
            node: remote.node.clone(),
            room_id: part.room_id.clone(),
            target,
            command,
        });
        true
    }

    /// Cluster mode, before a join: reads the room's roster if this node does not know
    /// the room fully yet, and returns the roster entry of another node that
    /// `resume_token` names for `user_id` (the place to adopt), if any.
    pub(crate) async fn load_room_from_cluster(
        &self,
        room_id: &str,
        resume_token: Option<&str>,
        user_id: &str,
    ) -> Option<ClusterParticipant> {
        let c = self.cluster.as_ref()?;
        let (loaded, local_token) = {
            let st = self.state.lock();
            (
                st.rooms.get(room_id).is_some_and(|r| r.loaded),
                resume_token.is_some_and(|t| st.resume.contains_key(t)),
            )
        };
        let wants_adoption = resume_token.is_some() && !local_token;
        if loaded && !wants_adoption {
            return None;
        }
        let roster = match c.store.room_participants(room_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading the room's roster failed");
                return None;
            }
        };
        let removed = c.store.removed_users(room_id).await.unwrap_or_default();
        let node = c.store.node_id();
        let adopt = resume_token.and_then(|t| {
            roster
                .iter()
                .find(|p| {
                    wants_adoption && p.resume_token == t && p.user_id == user_id && p.node != node
                })
                .cloned()
        });
        let mut st = self.state.lock();
        self.merge_roster(&mut st, room_id, roster, removed);
        adopt
    }

    /// Replaces what this node knows of `room_id` from other nodes with the roster:
    /// entries are added or updated; mirrors missing from it are marked unconfirmed
    /// (dropped after the resume grace unless an event confirms them).
    fn merge_roster(
        &self,
        st: &mut State,
        room_id: &str,
        roster: Vec<ClusterParticipant>,
        removed: Vec<crate::protocol::RemovedUser>,
    ) {
        let Some(node) = self.node() else {
            return;
        };
        let mut seen = HashSet::new();
        for p in roster {
            if p.node == node || p.room_id != room_id {
                continue;
            }
            seen.insert(p.info.participant_id);
            upsert_mirror(self, st, p);
        }
        let Some(room) = st.rooms.get_mut(room_id) else {
            return;
        };
        room.loaded = true;
        let members: Vec<ParticipantId> = room.members.iter().copied().collect();
        for pid in members {
            if let Some(r) = st.parts.get_mut(&pid).and_then(|p| p.remote.as_mut())
                && !seen.contains(&pid)
            {
                r.unconfirmed = true;
            }
        }
        if !removed.is_empty() {
            st.removed.insert(room_id.to_owned(), removed);
        }
    }

    /// Re-reads the roster of every room this node knows (after missed events).
    pub(crate) async fn reload_rooms(&self) {
        let Some(c) = &self.cluster else {
            return;
        };
        let rooms: Vec<String> = self.state.lock().rooms.keys().cloned().collect();
        for room_id in rooms {
            let roster = match c.store.room_participants(&room_id).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading a room's roster failed");
                    return;
                }
            };
            let removed = c.store.removed_users(&room_id).await.unwrap_or_default();
            let mut st = self.state.lock();
            self.merge_roster(&mut st, &room_id, roster, removed);
        }
    }

    /// Writes everything this node owns again (the store lost it or us).
    pub(crate) fn resync(&self) {
        let st = self.state.lock();
        let local: Vec<ParticipantId> = st
            .parts
            .iter()
            .filter(|(_, p)| p.is_local())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in local {
            st.publish_part(pid);
        }
        for room_id in st.removed.keys() {
            st.publish_removed(room_id);
        }
        tracing::info!("cluster state written again");
    }

    pub(crate) fn on_cluster_event(self: &Arc<Self>, event: ClusterEvent) {
        let Some(node) = self.node().map(str::to_owned) else {
            return;
        };
        match event {
            ClusterEvent::Upsert { participant } => {
                if participant.node == node {
                    return;
                }
                let mut st = self.state.lock();
                upsert_mirror(self, &mut st, participant);
            }
            ClusterEvent::Left {
                room_id,
                participant_id,
            } => {
                let mut st = self.state.lock();
                match st.parts.get(&participant_id) {
                    // Ours: someone presumed it gone; say again that it is here.
                    Some(p) if p.is_local() => st.publish_part(participant_id),
                    Some(p) if p.room_id == room_id => {
                        st.remove_and_announce(participant_id);
                    }
                    _ => {}
                }
            }
            ClusterEvent::Broadcast { room_id, message } => {
                self.state.lock().broadcast(&room_id, &message, None);
            }
            ClusterEvent::Command {
                node: target_node,
                room_id,
                target,
                command,
            } => {
                if target_node == node {
                    self.apply_command(&room_id, target, command);
                }
            }
            ClusterEvent::RemovedUsers { room_id, users } => {
                let mut st = self.state.lock();
                if users.is_empty() {
                    st.removed.remove(&room_id);
                } else {
                    st.removed.insert(room_id.clone(), users);
                }
                st.send_removed_to_moderators(&room_id);
            }
            ClusterEvent::NodeSpeakers {
                room_id,
                node: from,
                speakers,
            } => {
                node_speakers(&mut self.state.lock(), &room_id, &from, speakers);
            }
            ClusterEvent::RoomSpeakers { room_id, speakers } => {
                room_speakers(&mut self.state.lock(), &room_id, speakers);
            }
            ClusterEvent::CloseRoom { room_id, reason } => {
                self.close_room_here(&room_id, &reason);
            }
        }
    }

    /// A moderator on another node acts on one of this node's participants (the rights
    /// were checked there).
    fn apply_command(self: &Arc<Self>, room_id: &str, target: ParticipantId, command: Command) {
        let local = self
            .state
            .lock()
            .parts
            .get(&target)
            .is_some_and(|p| p.is_local() && p.room_id == room_id);
        if !local {
            return;
        }
        match command {
            Command::Mute => {
                let mut st = self.state.lock();
                let Some(part) = st.parts.get_mut(&target) else {
                    return;
                };
                if part.info.muted {
                    return;
                }
                part.info.muted = true;
                if part.call == CallPhase::InCall {
                    self.ports.media.set_muted(target, true);
                }
                let info = part.info.clone();
                st.broadcast(
                    room_id,
                    &ServerMessage::ParticipantUpdated { participant: info },
                    None,
                );
            }
            Command::SetRole { role, by_owner } => {
                let inner = self.clone();
                tokio::spawn(async move {
                    if let Err(r) =
                        crate::session::apply_set_role(&inner, target, role, by_owner, false).await
                    {
                        tracing::debug!(refusal = ?r, "role change from another node refused");
                    }
                });
            }
            Command::Remove => {
                {
                    let st = self.state.lock();
                    if let Some(conn) = st.parts.get(&target).and_then(|p| p.conn.as_ref()) {
                        conn.send(&ServerMessage::Removed {
                            reason: "removed by a moderator".into(),
                        });
                        conn.close(CLOSE_POLICY, "removed");
                    }
                }
                self.remove_participant(target);
            }
        }
    }

    /// Every heartbeat: claims or renews the authority of each known room, drops the
    /// mirrors of participants whose node died (or that the store forgot) once the
    /// resume grace is over, and keeps the media relay subscriptions in step.
    pub(crate) async fn tick(self: &Arc<Self>) {
        let Some(c) = &self.cluster else {
            return;
        };
        let (rooms, nodes) = {
            let st = self.state.lock();
            let rooms: Vec<String> = st.rooms.keys().cloned().collect();
            let nodes: HashSet<String> = st
                .parts
                .values()
                .filter_map(|p| p.remote.as_ref().map(|r| r.node.clone()))
                .collect();
            (rooms, nodes)
        };
        let nodes: Vec<String> = nodes.into_iter().collect();
        let live = match c.store.live_nodes(&nodes).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading live nodes failed");
                return;
            }
        };
        let mut authority = HashMap::new();
        for room_id in &rooms {
            match c.store.claim_authority(room_id).await {
                Ok(a) => {
                    authority.insert(room_id.clone(), a);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a room's authority failed");
                    return;
                }
            }
        }
        let now = Instant::now();
        let grace = self.cfg.resume_grace;
        let mut expired = Vec::new();
        {
            let mut st = self.state.lock();
            for (room_id, a) in &authority {
                if let Some(r) = st.rooms.get_mut(room_id) {
                    if *a && !r.authority {
                        tracing::debug!(room = %room_id, "this node is the room's authority");
                    }
                    r.authority = *a;
                }
            }
            for (pid, part) in st.parts.iter_mut() {
                let Some(r) = part.remote.as_mut() else {
                    continue;
                };
                let orphan = r.unconfirmed || !live.contains(&r.node);
                if !orphan {
                    r.orphan_since = None;
                    continue;
                }
                let since = *r.orphan_since.get_or_insert(now);
                if now.duration_since(since) >= grace {
                    expired.push((*pid, part.room_id.clone()));
                }
            }
            for (pid, room_id) in expired {
                let is_authority = st.rooms.get(&room_id).is_some_and(|r| r.authority);
                let Some(part) = st.remove_and_announce(pid) else {
                    continue;
                };
                tracing::info!(pid = pid.0, "participant of a lost node dropped");
                if is_authority {
                    // The authority cleans the store and hands moderation over.
                    st.publish(ClusterEvent::Left {
                        room_id: room_id.clone(),
                        participant_id: pid,
                    });
                    if part.info.role == Role::Moderator {
                        st.hand_over_moderation(&room_id);
                    }
                }
            }
        }
        self.reconcile_relay_rooms(&rooms, true).await;
    }

    /// A node with speakers in a room sends their audio to every other node with
    /// participants in it; each node publishes its relay address per room. Runs every
    /// heartbeat for every room (`all`: the relays of rooms not in `rooms` are dropped),
    /// and at once for a room whose participants changed.
    async fn reconcile_relay_rooms(&self, rooms: &[String], all: bool) {
        let Some(c) = &self.cluster else {
            return;
        };
        let _one_at_a_time = self.relay_reconcile.lock().await;
        for room_id in rooms {
            let (key, has_local, publishes, remote_nodes) = {
                let st = self.state.lock();
                let Some(room) = st.rooms.get(room_id) else {
                    continue;
                };
                let mut has_local = false;
                let mut publishes = false;
                let mut remote_nodes = HashSet::new();
                for p in room.members.iter().filter_map(|pid| st.parts.get(pid)) {
                    match &p.remote {
                        None => {
                            has_local = true;
                            publishes |= p.info.role.can_publish() && p.call == CallPhase::InCall;
                        }
                        Some(r) => {
                            remote_nodes.insert(r.node.clone());
                        }
                    }
                }
                (room.key, has_local, publishes, remote_nodes)
            };
            let mine = if has_local {
                c.relay.relay_local_addr(key)
            } else {
                None
            };
            let previous = self.relay_published(room_id, mine);
            if previous != Some(mine)
                && let Err(e) = c.store.set_relay_addr(room_id, mine).await
            {
                tracing::warn!(error = %e, "publishing the relay address failed");
            }
            let wanted: HashSet<SocketAddr> = if publishes && !remote_nodes.is_empty() {
                match c.store.relay_addrs(room_id).await {
                    Ok(addrs) => addrs
                        .into_iter()
                        .filter(|(n, _)| remote_nodes.contains(n))
                        .map(|(_, a)| a)
                        .collect(),
                    Err(_) => continue,
                }
            } else {
                HashSet::new()
            };
            self.set_relay_subscribers(room_id, key, wanted);
        }
        if all {
            self.forget_relays_of_gone_rooms(rooms);
        }
    }

    /// Whether this node has published a relay address for the room.
    fn relay_address_published(&self, room_id: &str) -> bool {
        self.relays
            .lock()
            .get(room_id)
            .is_some_and(|r| matches!(r.published, Some(Some(_))))
    }

    /// Whether a participant of `node` is a member of the room here already.
    fn room_has_node(&self, room_id: &str, node: &str) -> bool {
        let st = self.state.lock();
        st.rooms.get(room_id).is_some_and(|room| {
            room.members.iter().any(|pid| {
                st.parts
                    .get(pid)
                    .and_then(|p| p.remote.as_ref())
                    .is_some_and(|r| r.node == node)
            })
        })
    }

    fn relay_published(
        &self,
        room_id: &str,
        addr: Option<SocketAddr>,
    ) -> Option<Option<SocketAddr>> {
        let mut relays = self.relays.lock();
        let entry = relays.entry(room_id.to_owned()).or_default();
        let before = entry.published;
        entry.published = Some(addr);
        before
    }

    fn set_relay_subscribers(&self, room_id: &str, key: RoomKey, wanted: HashSet<SocketAddr>) {
        let Some(c) = &self.cluster else {
            return;
        };
        let mut relays = self.relays.lock();
        let entry = relays.entry(room_id.to_owned()).or_default();
        entry.key = Some(key);
        for gone in entry.subscribers.difference(&wanted) {
            c.relay.relay_remove_subscriber(key, *gone);
        }
        for new in wanted.difference(&entry.subscribers) {
            c.relay.relay_add_subscriber(key, *new);
        }
        entry.subscribers = wanted;
    }

    fn forget_relays_of_gone_rooms(&self, rooms: &[String]) {
        let Some(c) = &self.cluster else {
            return;
        };
        let mut relays = self.relays.lock();
        relays.retain(|room_id, entry| {
            if rooms.contains(room_id) {
                return true;
            }
            if let Some(key) = entry.key {
                for addr in &entry.subscribers {
                    c.relay.relay_remove_subscriber(key, *addr);
                }
            }
            false
        });
    }
}

/// What this node did about one room's media relay.
#[derive(Debug, Default)]
pub(crate) struct RelayState {
    pub(crate) key: Option<RoomKey>,
    /// The relay address last published for the room.
    pub(crate) published: Option<Option<SocketAddr>>,
    /// Other nodes' relay sockets this node forwards the room's speakers to.
    pub(crate) subscribers: HashSet<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::ClusterLink;

    fn level(pid: u64, level: f32) -> SpeakerLevel {
        SpeakerLevel {
            participant_id: ParticipantId(pid),
            level,
        }
    }

    fn state(node: &str) -> (State, tokio::sync::mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut st = State {
            cluster: Some(ClusterLink {
                node: node.into(),
                tx,
            }),
            ..State::default()
        };
        let mut room = Room::new(RoomKey(1), "owner".into(), 3);
        room.members
            .extend([ParticipantId(1), ParticipantId(2), ParticipantId(3)]);
        st.rooms.insert("r".into(), room);
        (st, rx)
    }

    #[test]
    fn the_authority_merges_every_nodes_speakers_loudest_first() {
        let (mut st, mut rx) = state("a");
        st.rooms.get_mut("r").expect("room").authority = true;
        node_speakers(&mut st, "r", "a", vec![level(1, 0.2)]);
        node_speakers(&mut st, "r", "b", vec![level(2, 0.9), level(99, 1.0)]);
        assert_eq!(
            st.rooms["r"].speakers,
            vec![level(2, 0.9), level(1, 0.2)],
            "merged, loudest first, non-members ignored"
        );
        let mut published = Vec::new();
        while let Ok(Outbound::Event(e)) = rx.try_recv() {
            published.push(*e);
        }
        assert!(matches!(
            published.last(),
            Some(ClusterEvent::RoomSpeakers { speakers, .. }) if speakers.len() == 2
        ));
    }

    #[test]
    fn a_node_that_is_not_the_authority_only_reports_its_own_speakers() {
        let (mut st, mut rx) = state("a");
        node_speakers(&mut st, "r", "a", vec![level(1, 0.5)]);
        node_speakers(&mut st, "r", "b", vec![level(2, 0.9)]);
        assert!(st.rooms["r"].speakers.is_empty());
        let Ok(Outbound::Event(e)) = rx.try_recv() else {
            panic!("the own report is published");
        };
        let ClusterEvent::NodeSpeakers { node, speakers, .. } = *e else {
            panic!("node speakers expected");
        };
        assert_eq!((node.as_str(), speakers), ("a", vec![level(1, 0.5)]));
        assert!(
            rx.try_recv().is_err(),
            "another node's report is not relayed"
        );
    }
}
