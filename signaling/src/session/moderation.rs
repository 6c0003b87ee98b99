//! Participant state changes: self mute and hand, and what moderators may do (roles,
//! mute, removal, letting a removed user back in).

use std::sync::Arc;

use crate::cluster::Command;
use crate::protocol::{ErrorCode, ParticipantId, RemovedUser, Role, ServerMessage};
use crate::rooms::{CallPhase, Part};
use crate::server::Inner;

use super::call::offer_message;
use super::{CLOSE_POLICY, Handled, Refusal, Session};

impl Session {
    /// Applies `change` to participant `pid` and broadcasts the result.
    fn update_and_broadcast(
        &self,
        pid: ParticipantId,
        change: impl FnOnce(&mut Part) -> Handled,
    ) -> Handled {
        let mut st = self.inner.state.lock();
        let Some(part) = st.parts.get_mut(&pid) else {
            return Err(Refusal::new(ErrorCode::NotFound, "no such participant"));
        };
        let was_muted = part.info.muted;
        change(part)?;
        if part.info.muted != was_muted && part.call == CallPhase::InCall {
            // Under the lock so concurrent mute changes reach media in state order.
            self.inner.ports.media.set_muted(pid, part.info.muted);
        }
        let (info, room_id) = (part.info.clone(), part.room_id.clone());
        st.broadcast(
            &room_id,
            &ServerMessage::ParticipantUpdated { participant: info },
            None,
        );
        Ok(())
    }

    pub(super) fn set_self_muted(&mut self, muted: bool) -> Handled {
        let (pid, _) = self.current()?;
        self.update_and_broadcast(pid, |p| {
            if !muted && !p.info.role.can_publish() {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "listeners cannot unmute; raise your hand to ask to speak",
                ));
            }
            p.info.muted = muted;
            Ok(())
        })?;
        Ok(())
    }

    pub(super) fn set_hand(&mut self, raised: bool) -> Handled {
        let (pid, _) = self.current()?;
        self.update_and_broadcast(pid, |p| {
            p.info.hand_raised = raised;
            Ok(())
        })?;
        Ok(())
    }

    /// This connection is a moderator of its room and `target` is in the same room.
    fn moderate(&self, target: ParticipantId) -> Result<ParticipantId, Refusal> {
        let (pid, room_id) = self.current()?;
        let st = self.inner.state.lock();
        let is_moderator = st
            .parts
            .get(&pid)
            .is_some_and(|p| p.info.role == Role::Moderator);
        if !is_moderator {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only a moderator may do that",
            ));
        }
        match st.parts.get(&target) {
            Some(t) if t.room_id == room_id => Ok(pid),
            _ => Err(Refusal::new(
                ErrorCode::NotFound,
                "no such participant in this room",
            )),
        }
    }

    /// Who may change `target`'s role to `role`: a speaker may step back to the
    /// audience themself; a moderator moves others between stage and audience; only
    /// the room owner names co-hosts (moderators) or takes the role back from them.
    /// Returns whether the caller is the room owner.
    fn check_set_role(&self, target: ParticipantId, role: Role) -> Result<bool, Refusal> {
        let (pid, room_id) = self.current()?;
        let is_owner = {
            let st = self.inner.state.lock();
            st.rooms
                .get(&room_id)
                .is_some_and(|r| r.owner_user_id == self.user.user_id)
        };
        if target == pid && role == Role::Listener {
            return Ok(is_owner);
        }
        self.moderate(target)?;
        if role == Role::Moderator && !is_owner {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the room owner may name co-hosts",
            ));
        }
        Ok(is_owner)
    }

    pub(super) async fn set_role(&mut self, target: ParticipantId, role: Role) -> Handled {
        let by_owner = self.check_set_role(target, role)?;
        if self
            .inner
            .command_remote(target, Command::SetRole { role, by_owner })
        {
            return Ok(());
        }
        apply_set_role(
            &self.inner,
            target,
            role,
            by_owner,
            self.pid == Some(target),
        )
        .await
    }
}

/// Changes `target`'s role (rights already checked: `by_owner` says whether the room
/// owner asks, `self_change` whether the target asks for itself) and renegotiates its
/// audio when it gains or loses the right to publish.
pub(crate) async fn apply_set_role(
    inner: &Arc<Inner>,
    target: ParticipantId,
    role: Role,
    by_owner: bool,
    self_change: bool,
) -> Handled {
    {
        let (owner_id, room_id) = {
            let st = inner.state.lock();
            let room_id = st.parts.get(&target).map(|p| p.room_id.clone());
            let owner_id = room_id
                .as_ref()
                .and_then(|r| st.rooms.get(r))
                .map(|r| r.owner_user_id.clone());
            (owner_id, room_id)
        };
        let mut changed = false;
        let call = update_and_broadcast_if(inner, target, |p| {
            let owners = owner_id.as_deref() == Some(p.user.user_id.as_str());
            if p.info.role == Role::Moderator && (owners || !(by_owner || self_change)) {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "a moderator's role can be changed only by the room owner, and the owner's never",
                ));
            }
            if p.info.role == role {
                return Ok(false);
            }
            let could_publish = p.info.role.can_publish();
            p.info.role = role;
            p.info.hand_raised = false;
            if !role.can_publish() {
                p.info.muted = true;
            }
            changed = could_publish != role.can_publish();
            Ok(true)
        })?;
        if role == Role::Moderator
            && let Some(room_id) = &room_id
        {
            inner.state.lock().send_removed_to_moderators(room_id);
        }
        if !changed || call != CallPhase::InCall {
            return Ok(());
        }
        let media = &inner.ports.media;
        match media.set_can_publish(target, role.can_publish()).await {
            Ok(offer) => {
                inner.state.lock().send_to(target, &offer_message(offer));
                Ok(())
            }
            Err(e) => Err(Refusal::internal("renegotiation", &e)),
        }
    }
}

/// Applies `change` to participant `pid` and broadcasts the result; `change` says
/// whether anything changed (nothing is broadcast when it did not).
fn update_and_broadcast_if(
    inner: &Inner,
    pid: ParticipantId,
    change: impl FnOnce(&mut Part) -> Result<bool, Refusal>,
) -> Result<CallPhase, Refusal> {
    let mut st = inner.state.lock();
    let Some(part) = st.parts.get_mut(&pid) else {
        return Err(Refusal::new(ErrorCode::NotFound, "no such participant"));
    };
    let was_muted = part.info.muted;
    if !change(part)? {
        return Ok(part.call);
    }
    if part.info.muted != was_muted && part.call == CallPhase::InCall {
        inner.ports.media.set_muted(pid, part.info.muted);
    }
    let (info, room_id, call) = (part.info.clone(), part.room_id.clone(), part.call);
    st.broadcast(
        &room_id,
        &ServerMessage::ParticipantUpdated { participant: info },
        None,
    );
    Ok(call)
}

impl Session {
    pub(super) fn mute_participant(&mut self, target: ParticipantId) -> Handled {
        self.moderate(target)?;
        if self.inner.command_remote(target, Command::Mute) {
            return Ok(());
        }
        self.update_and_broadcast(target, |p| {
            p.info.muted = true;
            Ok(())
        })?;
        Ok(())
    }

    pub(super) async fn remove_participant(&mut self, target: ParticipantId) -> Handled {
        let me = self.moderate(target)?;
        if me == target {
            return Err(Refusal::new(
                ErrorCode::InvalidState,
                "use leave_room to leave",
            ));
        }
        // The person is removed, not just one tab: every connection of that user in
        // the room goes, and the user may not come back while the room is live (a
        // client that reconnects automatically would otherwise walk straight back in).
        let victims: Vec<ParticipantId> = {
            let mut guard = self.inner.state.lock();
            // A plain `&mut State` so rooms and parts can be borrowed separately.
            let st = &mut *guard;
            let Some(t) = st.parts.get(&target) else {
                return Err(Refusal::new(ErrorCode::NotFound, "no such participant"));
            };
            if t.info.role == Role::Moderator {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "a moderator cannot be removed",
                ));
            }
            let (user_id, room_id) = (t.user.user_id.clone(), t.room_id.clone());
            let removed = RemovedUser {
                user_id: user_id.clone(),
                name: t.user.name.clone(),
                avatar: t.user.avatar.clone(),
            };
            let Some(room) = st.rooms.get(&room_id) else {
                return Err(Refusal::new(ErrorCode::NotFound, "no such participant"));
            };
            let victims: Vec<ParticipantId> = room
                .members
                .iter()
                .copied()
                .filter(|pid| st.parts.get(pid).is_some_and(|p| p.user.user_id == user_id))
                .collect();
            for pid in &victims {
                if let Some(conn) = st.parts.get(pid).and_then(|p| p.conn.as_ref()) {
                    conn.send(&ServerMessage::Removed {
                        reason: "removed by a moderator".into(),
                    });
                    conn.close(CLOSE_POLICY, "removed");
                }
            }
            st.add_removed(&room_id, removed);
            st.send_removed_to_moderators(&room_id);
            st.publish_removed(&room_id);
            victims
        };
        for pid in victims {
            // Another node's participant is removed by its node.
            if !self.inner.command_remote(pid, Command::Remove) {
                self.inner.remove_participant(pid);
            }
        }
        Ok(())
    }

    pub(super) fn let_back_in(&mut self, user_id: String) -> Handled {
        let (pid, room_id) = self.current()?;
        let mut st = self.inner.state.lock();
        if !st
            .parts
            .get(&pid)
            .is_some_and(|p| p.info.role == Role::Moderator)
        {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only a moderator may do that",
            ));
        }
        if !st.let_back_in(&room_id, &user_id) {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                "that user is not removed from this room",
            ));
        }
        st.send_removed_to_moderators(&room_id);
        st.publish_removed(&room_id);
        Ok(())
    }
}
