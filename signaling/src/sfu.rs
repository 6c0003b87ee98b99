//! `MediaControl` for the real SFU (`media::Sfu`) and its event stream. Signaling uses
//! media's own types (room keys, offers, events, disconnect reasons); the one thing
//! adapted here is the participant id: the protocol's `ParticipantId` (the wire type, which
//! exists without media) and `media::ParticipantId` are the same number.

use async_trait::async_trait;
use futures::StreamExt;

use crate::error::SignalingError;
use crate::ports::{MediaControl, MediaEvents};
use crate::protocol::ParticipantId;

impl From<media::ParticipantId> for ParticipantId {
    fn from(pid: media::ParticipantId) -> Self {
        ParticipantId(pid.0)
    }
}

impl From<ParticipantId> for media::ParticipantId {
    fn from(pid: ParticipantId) -> Self {
        media::ParticipantId(pid.0)
    }
}

fn err(e: media::MediaError) -> SignalingError {
    match e {
        media::MediaError::Busy(why) => SignalingError::Busy(why.to_owned()),
        e => SignalingError::Media(e.to_string()),
    }
}

#[async_trait]
impl MediaControl for media::Sfu {
    async fn join(
        &self,
        room: media::RoomKey,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<media::Offer, SignalingError> {
        media::Sfu::join(self, room, pid.into(), can_publish)
            .await
            .map_err(err)
    }

    async fn accept_answer(&self, pid: ParticipantId, sdp: String) -> Result<(), SignalingError> {
        media::Sfu::accept_answer(self, pid.into(), sdp)
            .await
            .map_err(err)
    }

    async fn set_can_publish(
        &self,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<media::Offer, SignalingError> {
        media::Sfu::set_can_publish(self, pid.into(), can_publish)
            .await
            .map_err(err)
    }

    async fn restart_ice(&self, pid: ParticipantId) -> Result<media::Offer, SignalingError> {
        media::Sfu::restart_ice(self, pid.into()).await.map_err(err)
    }

    fn set_muted(&self, pid: ParticipantId, muted: bool) {
        media::Sfu::set_muted(self, pid.into(), muted);
    }

    fn leave(&self, pid: ParticipantId) {
        media::Sfu::leave(self, pid.into());
    }
}

/// The SFU's event receiver (from `media::Sfu::start`) as the stream `Signaling::new`
/// consumes.
pub fn sfu_events(rx: media::EventReceiver) -> MediaEvents {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participant_ids_keep_their_numbers_both_ways() {
        let wire = ParticipantId(u64::MAX - 3);
        let media = media::ParticipantId::from(wire);
        assert_eq!(media, media::ParticipantId(u64::MAX - 3));
        assert_eq!(ParticipantId::from(media), wire);
    }

    #[tokio::test]
    async fn the_stream_yields_the_sfus_events_and_ends_with_it() {
        let (tx, rx) = media::events::channel();
        let mut events = sfu_events(rx);
        let slots = media::SfuEvent::SlotsChanged {
            room: media::RoomKey(4),
            slots: vec![Some(media::ParticipantId(7)), None],
            spare: Some(media::ParticipantId(9)),
        };
        tx.send(slots.clone());
        drop(tx);
        assert_eq!(events.next().await, Some(slots));
        assert_eq!(events.next().await, None);
    }
}
