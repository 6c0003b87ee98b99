//! A media thread's command queue: bounded for requests, never lossy for leave and mute.
//!
//! Requests (join, answer, role change, ICE restart, slot map) each hold one of the
//! shard's `SfuConfig::command_capacity` permits while queued; with none left the caller
//! gets [`MediaError::Busy`] at once rather than the queue growing. Two commands must not
//! be refused, because signaling's state already says they happened:
//! - a leave, which the handle sends at most once per join (it takes the participant out
//!   of the participant-to-shard map first), so there are never more of them queued than
//!   participants;
//! - a mute change, kept as the participant's latest state in a mailbox: the queue holds
//!   one marker per participant (and join) with a change pending, and the media thread
//!   reads the latest value when it reaches the marker.
//!
//! Both still travel on the one queue, so the media thread sees every command in the
//! order the handle sent it (a leave before the same participant's next join, a mute
//! after the join it applies to).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::Command;
use crate::{MediaError, ParticipantId};

/// What travels on the queue.
enum Envelope {
    /// A request admitted under the capacity; the permit returns when it is dequeued.
    Request(Command, OwnedSemaphorePermit),
    /// A leave (see the module comment for why it needs no permit).
    Leave(ParticipantId),
    /// The mailbox holds a mute state for this participant's join `ticket`.
    Mute { pid: ParticipantId, ticket: u64 },
}

/// Latest mute state per (participant, join ticket) not yet taken by the media thread.
type Mailbox = Arc<Mutex<HashMap<(ParticipantId, u64), bool>>>;

fn lock(mailbox: &Mailbox) -> MutexGuard<'_, HashMap<(ParticipantId, u64), bool>> {
    mailbox.lock().unwrap_or_else(|e| e.into_inner())
}

/// A queue admitting `capacity` requests at once.
pub(crate) fn channel(capacity: usize) -> (CommandSender, CommandReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mailbox = Mailbox::default();
    (
        CommandSender {
            tx,
            permits: Arc::new(Semaphore::new(capacity)),
            mailbox: mailbox.clone(),
        },
        CommandReceiver { rx, mailbox },
    )
}

/// The handle's end (one per shard).
pub(crate) struct CommandSender {
    /// Unbounded as a channel; what is on it is bounded by `permits` and by the rules for
    /// leaves and mute markers above.
    tx: UnboundedSender<Envelope>,
    permits: Arc<Semaphore>,
    mailbox: Mailbox,
}

impl CommandSender {
    /// Queues a request; `Busy` when `capacity` requests are already waiting.
    pub(crate) fn request(&self, cmd: Command) -> Result<(), MediaError> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| MediaError::Busy("the media thread's command queue is full"))?;
        self.tx
            .send(Envelope::Request(cmd, permit))
            .map_err(|_| MediaError::Stopped)
    }

    /// Queues a leave, whatever the queue holds.
    pub(crate) fn leave(&self, pid: ParticipantId) {
        let _ = self.tx.send(Envelope::Leave(pid));
    }

    /// Records the participant's mute state; queues a marker unless one is pending.
    pub(crate) fn set_muted(&self, pid: ParticipantId, ticket: u64, muted: bool) {
        let mut mailbox = lock(&self.mailbox);
        if mailbox.insert((pid, ticket), muted).is_none() {
            // Under the mailbox lock, so the marker and the state cannot part ways.
            if self.tx.send(Envelope::Mute { pid, ticket }).is_err() {
                mailbox.remove(&(pid, ticket));
            }
        }
    }
}

/// The media thread's end.
pub(crate) struct CommandReceiver {
    rx: UnboundedReceiver<Envelope>,
    mailbox: Mailbox,
}

impl CommandReceiver {
    /// The next command; `None` once every sender is gone. Cancel-safe (the only await is
    /// the channel's own, which is).
    pub(crate) async fn recv(&mut self) -> Option<Command> {
        loop {
            let envelope = self.rx.recv().await?;
            if let Some(cmd) = self.open(envelope) {
                return Some(cmd);
            }
        }
    }

    /// The next command if one is queued.
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<Command> {
        loop {
            let envelope = self.rx.try_recv().ok()?;
            if let Some(cmd) = self.open(envelope) {
                return Some(cmd);
            }
        }
    }

    fn open(&mut self, envelope: Envelope) -> Option<Command> {
        match envelope {
            // The permit drops here: the request has left the queue.
            Envelope::Request(cmd, _permit) => Some(cmd),
            Envelope::Leave(pid) => Some(Command::Leave { pid }),
            Envelope::Mute { pid, ticket } => {
                let muted = lock(&self.mailbox).remove(&(pid, ticket))?;
                Some(Command::SetMuted { pid, muted, ticket })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RoomKey;

    fn slot_map() -> Command {
        let (reply, _) = tokio::sync::oneshot::channel();
        Command::SlotMap {
            room: RoomKey(1),
            reply,
        }
    }

    fn describe(cmd: Option<Command>) -> String {
        match cmd {
            None => "none".into(),
            Some(Command::SlotMap { room, .. }) => format!("slot_map {}", room.0),
            Some(Command::Leave { pid }) => format!("leave {}", pid.0),
            Some(Command::SetMuted { pid, muted, ticket }) => {
                format!("mute {} {muted} #{ticket}", pid.0)
            }
            Some(_) => "other".into(),
        }
    }

    #[test]
    fn requests_beyond_the_capacity_are_busy_until_the_shard_takes_some() {
        let (tx, mut rx) = channel(3);
        for _ in 0..3 {
            assert!(tx.request(slot_map()).is_ok());
        }
        assert!(matches!(tx.request(slot_map()), Err(MediaError::Busy(_))));
        assert_eq!(describe(rx.try_recv()), "slot_map 1");
        assert!(
            tx.request(slot_map()).is_ok(),
            "a dequeued request frees its place"
        );
        assert!(matches!(tx.request(slot_map()), Err(MediaError::Busy(_))));
    }

    #[test]
    fn leave_and_mute_pass_a_full_queue_in_order() {
        let (tx, mut rx) = channel(1);
        assert!(tx.request(slot_map()).is_ok());
        assert!(tx.request(slot_map()).is_err());
        tx.set_muted(ParticipantId(7), 1, true);
        tx.leave(ParticipantId(7));
        assert_eq!(describe(rx.try_recv()), "slot_map 1");
        assert_eq!(describe(rx.try_recv()), "mute 7 true #1");
        assert_eq!(describe(rx.try_recv()), "leave 7");
        assert_eq!(describe(rx.try_recv()), "none");
    }

    #[test]
    fn mute_changes_coalesce_to_the_latest_state_per_join() {
        let (tx, mut rx) = channel(1);
        for i in 0..1000 {
            tx.set_muted(ParticipantId(7), 1, i % 2 == 0);
        }
        tx.set_muted(ParticipantId(7), 2, true);
        tx.set_muted(ParticipantId(8), 1, true);
        tx.set_muted(ParticipantId(7), 1, true);
        assert_eq!(
            describe(rx.try_recv()),
            "mute 7 true #1",
            "the latest value"
        );
        assert_eq!(
            describe(rx.try_recv()),
            "mute 7 true #2",
            "a new join is its own"
        );
        assert_eq!(describe(rx.try_recv()), "mute 8 true #1");
        assert_eq!(describe(rx.try_recv()), "none");
        tx.set_muted(ParticipantId(7), 1, false);
        assert_eq!(
            describe(rx.try_recv()),
            "mute 7 false #1",
            "a change after the marker was taken queues again"
        );
    }
}
