//! The call: joining it (media join and offer), leaving it, the client's SDP answer and
//! ICE restarts.

use crate::ports::CallEvent;
use crate::protocol::{ErrorCode, ParticipantId, ServerMessage};
use crate::rooms::CallPhase;

use super::{Handled, Refusal, Session};

impl Session {
    pub(super) async fn join_call(&mut self) -> Handled {
        let (pid, room_id) = self.current()?;
        let (room_key, can_publish, was_in_call) = {
            let mut st = self.inner.state.lock();
            let Some(key) = st.rooms.get(&room_id).map(|r| r.key) else {
                return Err(Refusal::new(ErrorCode::InvalidState, "join a room first"));
            };
            let Some(part) = st.parts.get_mut(&pid) else {
                return Err(Refusal::new(ErrorCode::InvalidState, "join a room first"));
            };
            let was_in_call = match part.call {
                CallPhase::Joining => {
                    return Err(Refusal::new(ErrorCode::InvalidState, "already joining"));
                }
                CallPhase::InCall => true,
                CallPhase::Idle => false,
            };
            part.call = CallPhase::Joining;
            part.media_connected = false;
            (key, part.info.role.can_publish(), was_in_call)
        };
        if was_in_call {
            // A resumed client whose peer connection did not survive (e.g. a page
            // reload) asks again: replace the media session, the call goes on.
            self.inner.ports.media.leave(pid);
        }
        let offer = match self
            .inner
            .ports
            .media
            .join(room_key, pid, can_publish)
            .await
        {
            Ok(offer) => offer,
            Err(e) => {
                let mut st = self.inner.state.lock();
                if let Some(part) = st.parts.get_mut(&pid) {
                    part.call = CallPhase::Idle;
                    if part.info.in_call {
                        part.info.in_call = false;
                        let info = part.info.clone();
                        st.broadcast(
                            &room_id,
                            &ServerMessage::ParticipantUpdated { participant: info },
                            None,
                        );
                    }
                }
                return Err(Refusal::internal("starting audio", &e));
            }
        };
        let can_publish_now = {
            let mut st = self.inner.state.lock();
            let Some(part) = st.parts.get_mut(&pid) else {
                // Removed while media was setting up.
                drop(st);
                self.inner.ports.media.leave(pid);
                return Ok(());
            };
            part.call = CallPhase::InCall;
            part.info.in_call = true;
            // Under the lock, like every mute change, so media sees them in order.
            self.inner.ports.media.set_muted(pid, part.info.muted);
            part.info.role.can_publish()
        };
        // A moderator may have changed the role while media was setting up.
        let offer = if can_publish_now != can_publish {
            match self
                .inner
                .ports
                .media
                .set_can_publish(pid, can_publish_now)
                .await
            {
                Ok(o) => o,
                Err(e) => return Err(Refusal::internal("renegotiation", &e)),
            }
        } else {
            offer
        };
        {
            let st = self.inner.state.lock();
            self.send(&offer_message(offer));
            if !was_in_call && let Some(part) = st.parts.get(&pid) {
                st.broadcast(
                    &room_id,
                    &ServerMessage::ParticipantUpdated {
                        participant: part.info.clone(),
                    },
                    None,
                );
            }
            st.send_slots(&room_id, Some(pid));
        }
        if !was_in_call {
            self.inner
                .call_notice(&room_id, &self.user, CallEvent::Joined)
                .await;
        }
        Ok(())
    }

    pub(super) async fn leave_call(&mut self) -> Handled {
        let (pid, room_id) = self.current()?;
        {
            let mut st = self.inner.state.lock();
            let Some(part) = st.parts.get_mut(&pid) else {
                return Ok(());
            };
            if part.call != CallPhase::InCall {
                return Err(Refusal::new(ErrorCode::InvalidState, "not in the call"));
            }
            part.call = CallPhase::Idle;
            part.media_connected = false;
            part.info.in_call = false;
            let info = part.info.clone();
            st.broadcast(
                &room_id,
                &ServerMessage::ParticipantUpdated { participant: info },
                None,
            );
        }
        self.inner.ports.media.leave(pid);
        self.inner
            .call_notice(&room_id, &self.user, CallEvent::Left)
            .await;
        Ok(())
    }

    fn require_in_call(&self) -> Result<ParticipantId, Refusal> {
        let (pid, _) = self.current()?;
        let st = self.inner.state.lock();
        match st.parts.get(&pid) {
            Some(p) if p.call == CallPhase::InCall => Ok(pid),
            _ => Err(Refusal::new(
                ErrorCode::InvalidState,
                "not in the call; send join_call first",
            )),
        }
    }

    pub(super) async fn answer(&mut self, sdp: String) -> Handled {
        let pid = self.require_in_call()?;
        self.inner
            .ports
            .media
            .accept_answer(pid, sdp)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "answer rejected");
                Refusal::new(ErrorCode::BadMessage, "the answer was not accepted")
            })
    }

    pub(super) async fn restart_ice(&mut self) -> Handled {
        let pid = self.require_in_call()?;
        match self.inner.ports.media.restart_ice(pid).await {
            Ok(offer) => {
                self.send(&offer_message(offer));
                Ok(())
            }
            Err(e) => Err(Refusal::internal("ICE restart", &e)),
        }
    }
}

pub(super) fn offer_message(offer: media::Offer) -> ServerMessage {
    ServerMessage::Offer {
        sdp: offer.sdp,
        publish_mid: offer.publish_mid,
        slot_mids: offer.slot_mids,
    }
}
