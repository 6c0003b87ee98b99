//! Joining a room (directory check, resume of a held place, the per-user cap on places)
//! and leaving it.

use crate::config::SignalingConfig;
use crate::error::SignalingError;
use crate::ports::RoomAccess;
use crate::protocol::{ErrorCode, Participant, ParticipantId, Role, ServerMessage};
use crate::rooms::{CallPhase, Part, Room, State};

use super::{Handled, MAX_JOIN_RECHECKS, Refusal, Session, new_resume_token};

impl Session {
    /// The directory's verdict on joining `room_id`; a refusal when it says no.
    async fn check_join(&self, room_id: &str) -> Result<RoomAccess, Refusal> {
        match self
            .inner
            .ports
            .directory
            .check_join(room_id, &self.user)
            .await
        {
            Ok(a) => Ok(a),
            Err(SignalingError::RoomNotFound) => {
                Err(Refusal::fatal(ErrorCode::NotFound, "room not found"))
            }
            Err(SignalingError::Forbidden(why)) => {
                tracing::debug!(reason = %why, "join refused");
                Err(Refusal::fatal(
                    ErrorCode::Forbidden,
                    "you may not join this room",
                ))
            }
            Err(SignalingError::Unauthorized) => {
                Err(Refusal::fatal(ErrorCode::Unauthorized, "session expired"))
            }
            Err(e) => Err(Refusal::internal("room lookup", &e)),
        }
    }

    pub(super) async fn join_room(
        &mut self,
        room_id: String,
        resume_token: Option<String>,
    ) -> Handled {
        if self.current().is_ok() {
            return Err(Refusal::new(
                ErrorCode::InvalidState,
                "already in a room; send leave_room first",
            ));
        }
        if room_id.is_empty() || room_id.len() > self.inner.cfg.max_room_id_len {
            return Err(Refusal::new(ErrorCode::BadMessage, "invalid roomId"));
        }
        let mut rechecks = 0;
        // Places of this user freed to stay within the per-user cap (finished below,
        // outside the state lock).
        let mut evicted = Vec::new();
        // Cluster mode: the room as the other nodes have it, and a place of this user
        // held (or left behind) by another node that the resume token names.
        let adoptable = self
            .inner
            .load_room_from_cluster(&room_id, resume_token.as_deref(), &self.user.user_id)
            .await;
        loop {
            let closures_seen = self.inner.state.lock().closures;
            let access = self.check_join(&room_id).await?;
            let cfg = &self.inner.cfg;
            let mut st = self.inner.state.lock();
            // A room was closed (deleted) while the directory was asked: ask again,
            // so this join cannot re-create a room deleted in the meantime. Bounded:
            // under a storm of closures elsewhere the last answer stands.
            if st.closures != closures_seen && rechecks < MAX_JOIN_RECHECKS {
                rechecks += 1;
                continue;
            }
            if let Some(token) = resume_token.as_deref()
                && let Some(pid) = st.resume.get(token).copied()
                && st
                    .parts
                    .get(&pid)
                    .is_some_and(|p| p.user.user_id == self.user.user_id && p.room_id == room_id)
            {
                let new_token = new_resume_token();
                st.resume.remove(token);
                st.resume.insert(new_token.clone(), pid);
                let Some(part) = st.parts.get_mut(&pid) else {
                    return Err(Refusal::new(ErrorCode::Internal, "resume failed"));
                };
                if let Some(old) = part.conn.take() {
                    // The old socket has not noticed it is dead yet: retire it.
                    old.cancel.cancel();
                }
                part.conn = Some(self.conn.clone());
                part.detach_gen += 1;
                part.resume_token = new_token.clone();
                let you = part.info.clone();
                let you_moderate = you.role == Role::Moderator;
                let call = (part.call == CallPhase::InCall).then_some(part.media_connected);
                self.pid = Some(pid);
                self.send(&ServerMessage::Joined {
                    room_id: room_id.clone(),
                    you,
                    resume_token: new_token,
                    resumed: true,
                    ice_servers: cfg.ice_servers.clone(),
                    slot_count: cfg.slot_count,
                });
                self.send(&ServerMessage::OnlineUsers {
                    participants: st.participants_of(&room_id),
                });
                if let Some(connected) = call {
                    self.send(&ServerMessage::CallState { connected });
                    st.send_slots(&room_id, Some(pid));
                }
                if you_moderate && st.removed.contains_key(&room_id) {
                    self.send(&st.removed_message(&room_id));
                }
                return Ok(());
            }
            if let Some(found) = &adoptable
                && st.rooms.contains_key(&room_id)
            {
                // Resumed on this node: the place comes over with its id and role;
                // its old node lets go when it sees the move.
                let pid = found.info.participant_id;
                let token = new_resume_token();
                let mut info = found.info.clone();
                info.in_call = false;
                if let Some(old) = st.parts.remove(&pid) {
                    st.resume.remove(&old.resume_token);
                }
                if let Some(room) = st.rooms.get_mut(&room_id) {
                    room.owner_user_id = access.owner_user_id.clone();
                    room.members.insert(pid);
                }
                st.parts.insert(
                    pid,
                    Part {
                        info: info.clone(),
                        user: self.user.clone(),
                        room_id: room_id.clone(),
                        conn: Some(self.conn.clone()),
                        resume_token: token.clone(),
                        call: CallPhase::Idle,
                        media_connected: false,
                        had_media: true,
                        detach_gen: 0,
                        remote: None,
                    },
                );
                st.resume.insert(token.clone(), pid);
                self.pid = Some(pid);
                self.send(&ServerMessage::Joined {
                    room_id: room_id.clone(),
                    you: info.clone(),
                    resume_token: token,
                    resumed: true,
                    ice_servers: cfg.ice_servers.clone(),
                    slot_count: cfg.slot_count,
                });
                self.send(&ServerMessage::OnlineUsers {
                    participants: st.participants_of(&room_id),
                });
                if info.role == Role::Moderator && st.removed.contains_key(&room_id) {
                    self.send(&st.removed_message(&room_id));
                }
                st.broadcast(
                    &room_id,
                    &ServerMessage::ParticipantUpdated { participant: info },
                    Some(pid),
                );
                tracing::info!(pid = pid.0, "place resumed from another node");
                return Ok(());
            }

            if st.is_removed(&room_id, &self.user.user_id) {
                return Err(Refusal::fatal(
                    ErrorCode::Removed,
                    "a moderator removed you from this room; the host can let you back in",
                ));
            }
            let is_owner = self.user.user_id == access.owner_user_id;
            let evict = places_to_free(&st, &room_id, &self.user.user_id, cfg)?;
            // The owner (the room's moderator) is never locked out of their own room.
            if !is_owner
                && st.rooms.get(&room_id).is_some_and(|r| {
                    r.members.len().saturating_sub(evict.len()) >= cfg.max_participants
                })
            {
                return Err(Refusal::fatal(ErrorCode::RoomFull, "the room is full"));
            }
            for old in evict {
                if let Some(part) = st.remove_and_announce(old) {
                    tracing::debug!(pid = old.0, "place over the per-user cap freed");
                    evicted.push(part);
                }
            }
            let pid = self.inner.next_pid();
            let role = if is_owner {
                Role::Moderator
            } else {
                Role::Listener
            };
            let info = Participant {
                participant_id: pid,
                user_id: self.user.user_id.clone(),
                name: self.user.name.clone(),
                avatar: self.user.avatar.clone(),
                role,
                muted: !role.can_publish(),
                hand_raised: false,
                in_call: false,
            };
            let token = new_resume_token();
            if !st.rooms.contains_key(&room_id) {
                let key = self.inner.room_key_for(&room_id, &st.room_by_key);
                st.room_by_key.insert(key, room_id.clone());
                let mut room = Room::new(key, access.owner_user_id.clone(), cfg.slot_count);
                room.loaded = true;
                st.rooms.insert(room_id.clone(), room);
            }
            if let Some(room) = st.rooms.get_mut(&room_id) {
                room.owner_user_id = access.owner_user_id.clone();
                room.members.insert(pid);
            }
            st.parts.insert(
                pid,
                Part {
                    info: info.clone(),
                    user: self.user.clone(),
                    room_id: room_id.clone(),
                    conn: Some(self.conn.clone()),
                    resume_token: token.clone(),
                    call: CallPhase::Idle,
                    media_connected: false,
                    had_media: false,
                    detach_gen: 0,
                    remote: None,
                },
            );
            st.resume.insert(token.clone(), pid);
            self.pid = Some(pid);
            self.send(&ServerMessage::Joined {
                room_id: room_id.clone(),
                you: info.clone(),
                resume_token: token,
                resumed: false,
                ice_servers: cfg.ice_servers.clone(),
                slot_count: cfg.slot_count,
            });
            self.send(&ServerMessage::OnlineUsers {
                participants: st.participants_of(&room_id),
            });
            let speakers = st
                .rooms
                .get(&room_id)
                .map(|r| r.speakers.clone())
                .unwrap_or_default();
            if !speakers.is_empty() {
                self.send(&ServerMessage::ActiveSpeakers { speakers });
            }
            if role == Role::Moderator && st.removed.contains_key(&room_id) {
                self.send(&st.removed_message(&room_id));
            }
            st.broadcast(
                &room_id,
                &ServerMessage::ParticipantJoined { participant: info },
                Some(pid),
            );
            break;
        }
        for part in &evicted {
            self.inner.after_removal(part);
        }
        if let Err(e) = self.inner.ports.chat.touch_room(&room_id).await {
            tracing::warn!(error = %e, "failed to record room activity");
        }
        Ok(())
    }

    pub(super) fn leave_room(&mut self) -> Handled {
        let (pid, _) = self.current()?;
        self.inner.remove_participant(pid);
        self.pid = None;
        Ok(())
    }
}

/// The places of `user_id` in `room_id` to free so one more fits under the per-user
/// cap: the oldest places waiting for a resume (a reloaded tab's old place). A refusal
/// when every place of theirs is live.
fn places_to_free(
    st: &State,
    room_id: &str,
    user_id: &str,
    cfg: &SignalingConfig,
) -> Result<Vec<ParticipantId>, Refusal> {
    let Some(room) = st.rooms.get(room_id) else {
        return Ok(Vec::new());
    };
    let cap = cfg.max_places_per_user.max(1);
    // Members are ordered by participant id, which grows with time: oldest first.
    let mine: Vec<(ParticipantId, bool)> = room
        .members
        .iter()
        .filter_map(|pid| {
            let p = st.parts.get(pid)?;
            // The cap is per node: another node's places of this user are its own.
            (p.is_local() && p.user.user_id == user_id).then_some((*pid, p.conn.is_none()))
        })
        .collect();
    if mine.len() < cap {
        return Ok(Vec::new());
    }
    let excess = mine.len() + 1 - cap;
    let resumable: Vec<ParticipantId> = mine
        .iter()
        .filter(|(_, resumable)| *resumable)
        .map(|(pid, _)| *pid)
        .take(excess)
        .collect();
    if resumable.len() < excess {
        return Err(Refusal::fatal(
            ErrorCode::TooManyTabs,
            format!("you are in this room in {cap} tabs already; close one to join here"),
        ));
    }
    Ok(resumable)
}
