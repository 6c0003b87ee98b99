//! `MediaControl` for the real SFU (`media::Sfu`), and the translation of its events
//! and ids into signaling's. The id spaces are the same numbers: a protocol
//! `ParticipantId(n)` is `media::ParticipantId(n)`, a signaling `RoomKey(n)` is
//! `media::RoomKey(n)`.

use async_trait::async_trait;
use futures::StreamExt;

use crate::error::SignalingError;
use crate::ports::{MediaControl, MediaDisconnect, MediaEvent, MediaEvents, MediaOffer, RoomKey};
use crate::protocol::ParticipantId;

fn to_media(pid: ParticipantId) -> media::ParticipantId {
    media::ParticipantId(pid.0)
}

fn from_media(pid: media::ParticipantId) -> ParticipantId {
    ParticipantId(pid.0)
}

fn offer(o: media::Offer) -> MediaOffer {
    MediaOffer {
        sdp: o.sdp,
        publish_mid: o.publish_mid,
        slot_mids: o.slot_mids,
    }
}

fn err(e: media::MediaError) -> SignalingError {
    SignalingError::Media(e.to_string())
}

#[async_trait]
impl MediaControl for media::Sfu {
    async fn join(
        &self,
        room: RoomKey,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<MediaOffer, SignalingError> {
        media::Sfu::join(self, media::RoomKey(room.0), to_media(pid), can_publish)
            .await
            .map(offer)
            .map_err(err)
    }

    async fn accept_answer(&self, pid: ParticipantId, sdp: String) -> Result<(), SignalingError> {
        media::Sfu::accept_answer(self, to_media(pid), sdp)
            .await
            .map_err(err)
    }

    async fn set_can_publish(
        &self,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<MediaOffer, SignalingError> {
        media::Sfu::set_can_publish(self, to_media(pid), can_publish)
            .await
            .map(offer)
            .map_err(err)
    }

    async fn restart_ice(&self, pid: ParticipantId) -> Result<MediaOffer, SignalingError> {
        media::Sfu::restart_ice(self, to_media(pid))
            .await
            .map(offer)
            .map_err(err)
    }

    fn set_muted(&self, pid: ParticipantId, muted: bool) {
        media::Sfu::set_muted(self, to_media(pid), muted);
    }

    fn leave(&self, pid: ParticipantId) {
        media::Sfu::leave(self, to_media(pid));
    }
}

/// Translates one SFU event into signaling's terms.
pub fn translate_event(event: media::SfuEvent) -> MediaEvent {
    use media::SfuEvent as E;
    match event {
        E::Connected { pid } => MediaEvent::Connected {
            pid: from_media(pid),
        },
        E::Disconnected { pid, reason } => MediaEvent::Disconnected {
            pid: from_media(pid),
            reason: match reason {
                media::DisconnectReason::IceFailed => MediaDisconnect::IceFailed,
                media::DisconnectReason::Timeout => MediaDisconnect::Timeout,
                media::DisconnectReason::NeverConnected => MediaDisconnect::NeverConnected,
            },
        },
        E::ActiveSpeakers { room, speakers } => MediaEvent::ActiveSpeakers {
            room: RoomKey(room.0),
            speakers: speakers
                .into_iter()
                .map(|(p, level)| (from_media(p), level))
                .collect(),
        },
        E::SlotsChanged { room, slots, spare } => MediaEvent::SlotsChanged {
            room: RoomKey(room.0),
            slots: slots.into_iter().map(|s| s.map(from_media)).collect(),
            spare: spare.map(from_media),
        },
        E::MediaRefused { pid } => MediaEvent::MediaRefused {
            pid: from_media(pid),
        },
    }
}

/// The SFU's event receiver (from `media::Sfu::start`) as the stream `Signaling::new`
/// consumes.
pub fn sfu_events(rx: media::EventReceiver) -> MediaEvents {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (translate_event(e), rx))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sfu_slot_events_keep_their_numbers() {
        let e = translate_event(media::SfuEvent::SlotsChanged {
            room: media::RoomKey(4),
            slots: vec![Some(media::ParticipantId(7)), None],
            spare: Some(media::ParticipantId(9)),
        });
        assert_eq!(
            e,
            MediaEvent::SlotsChanged {
                room: RoomKey(4),
                slots: vec![Some(ParticipantId(7)), None],
                spare: Some(ParticipantId(9)),
            }
        );
    }
}
