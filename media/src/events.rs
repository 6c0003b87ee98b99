//! The one queue that carries every media thread's [`SfuEvent`]s to their one consumer
//! (signaling), bounded without losing what matters.
//!
//! Two kinds of events travel on it:
//! - Room state that supersedes itself, [`SfuEvent::ActiveSpeakers`] and
//!   [`SfuEvent::SlotsChanged`]: at most one of each is pending per room. A newer one
//!   replaces the pending one's content where it stands in the queue, so a consumer that
//!   falls behind reads each room's latest state once, not every state in between, and a
//!   stalled consumer costs at most two entries per room.
//! - Lifecycle events, [`SfuEvent::Connected`] and [`SfuEvent::Disconnected`]: never
//!   dropped, delivered in the order they were sent. [`SfuEvent::MediaRefused`] is a
//!   notice: while one is pending for a participant, another for it adds nothing and is
//!   not queued twice.
//!
//! The queue's length is its backlog. Lifecycle events are few per participant (one
//! connect, one disconnect, a pending refusal), so the backlog is bounded by refusing new
//! participants instead of dropping events: [`crate::Sfu::join`] answers
//! [`crate::MediaError::Busy`] while the backlog is at `SfuConfig::event_backlog`. The
//! queue then holds at most that bound plus a few entries per participant and room
//! already there.
//!
//! Many senders (one per media thread), one [`EventReceiver`]. When every sender is gone
//! the receiver drains what is left, then ends; when the receiver is gone, sends are
//! discarded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::{ParticipantId, RoomKey, SfuEvent};

/// A new event queue: the media threads' sender and signaling's receiver.
pub fn channel() -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            senders: 1,
            receiver_alive: true,
            ..Queue::default()
        }),
        notify: Notify::new(),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        EventReceiver { shared },
    )
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the receiver (one waiter; a wake-up without a waiter is kept for the next wait).
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One place in the queue. Room state is held outside the order, in `speakers` and
/// `slots`, so that a newer state for the same room can replace it in place.
enum Entry {
    Lifecycle(SfuEvent),
    Speakers(RoomKey),
    Slots(RoomKey),
}

#[derive(Default)]
struct Queue {
    order: VecDeque<Entry>,
    /// The pending `ActiveSpeakers` of each room with an `Entry::Speakers` in `order`.
    speakers: HashMap<RoomKey, Vec<(ParticipantId, f32)>>,
    /// The pending `SlotsChanged` (slots, spare) of each room with an `Entry::Slots`.
    slots: HashMap<RoomKey, (Vec<Option<ParticipantId>>, Option<ParticipantId>)>,
    /// Participants with a `MediaRefused` in `order`.
    refused: HashSet<ParticipantId>,
    /// Live `EventSender`s: the receiver ends once none is left and `order` is empty.
    senders: usize,
    /// False once the receiver is dropped: nobody will read, so nothing is kept.
    receiver_alive: bool,
}

impl Queue {
    /// Queues `event`; whether the receiver should be woken (something new is in order).
    fn push(&mut self, event: SfuEvent) -> bool {
        if !self.receiver_alive {
            return false;
        }
        match event {
            SfuEvent::ActiveSpeakers { room, speakers } => {
                if self.speakers.insert(room, speakers).is_some() {
                    return false;
                }
                self.order.push_back(Entry::Speakers(room));
            }
            SfuEvent::SlotsChanged { room, slots, spare } => {
                if self.slots.insert(room, (slots, spare)).is_some() {
                    return false;
                }
                self.order.push_back(Entry::Slots(room));
            }
            SfuEvent::MediaRefused { pid } => {
                if !self.refused.insert(pid) {
                    return false;
                }
                self.order.push_back(Entry::Lifecycle(event));
            }
            SfuEvent::Connected { .. } | SfuEvent::Disconnected { .. } => {
                self.order.push_back(Entry::Lifecycle(event));
            }
        }
        true
    }

    fn pop(&mut self) -> Option<SfuEvent> {
        // An entry whose state is missing cannot happen (they are inserted and removed
        // together); it is skipped rather than trusted.
        while let Some(entry) = self.order.pop_front() {
            match entry {
                Entry::Lifecycle(event) => {
                    if let SfuEvent::MediaRefused { pid } = &event {
                        self.refused.remove(pid);
                    }
                    return Some(event);
                }
                Entry::Speakers(room) => {
                    if let Some(speakers) = self.speakers.remove(&room) {
                        return Some(SfuEvent::ActiveSpeakers { room, speakers });
                    }
                }
                Entry::Slots(room) => {
                    if let Some((slots, spare)) = self.slots.remove(&room) {
                        return Some(SfuEvent::SlotsChanged { room, slots, spare });
                    }
                }
            }
        }
        None
    }
}

/// The media threads' end of the queue. Cloned once per thread.
pub struct EventSender {
    shared: Arc<Shared>,
}

impl EventSender {
    /// Queues one event (coalesced with a pending one of its room if it is room state).
    /// Never blocks and never fails; discarded if the receiver is gone.
    pub fn send(&self, event: SfuEvent) {
        let wake = self.shared.lock().push(event);
        if wake {
            self.shared.notify.notify_one();
        }
    }

    /// Events waiting to be read.
    pub fn backlog(&self) -> usize {
        self.shared.lock().order.len()
    }

    /// A view of the backlog that does not keep the receiver from ending.
    pub(crate) fn probe(&self) -> BacklogProbe {
        BacklogProbe {
            shared: self.shared.clone(),
        }
    }
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        EventSender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let last = {
            let mut queue = self.shared.lock();
            queue.senders = queue.senders.saturating_sub(1);
            queue.senders == 0
        };
        if last {
            self.shared.notify.notify_one();
        }
    }
}

/// Reads the backlog for [`crate::Sfu::join`]'s admission check.
pub(crate) struct BacklogProbe {
    shared: Arc<Shared>,
}

impl BacklogProbe {
    pub(crate) fn backlog(&self) -> usize {
        self.shared.lock().order.len()
    }
}

/// Signaling's end of the queue: every media thread's events, one at a time.
pub struct EventReceiver {
    shared: Arc<Shared>,
}

impl EventReceiver {
    /// The next event; `None` once every sender is gone (the SFU stopped) and the queue
    /// is drained. Cancel-safe: an event is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<SfuEvent> {
        loop {
            {
                let mut queue = self.shared.lock();
                if let Some(event) = queue.pop() {
                    return Some(event);
                }
                if queue.senders == 0 {
                    return None;
                }
            }
            // A send between the check above and this wait leaves a stored wake-up, so
            // the wait returns at once.
            self.shared.notify.notified().await;
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<SfuEvent> {
        self.shared.lock().pop()
    }

    /// Events waiting to be read (each room's coalesced state counts once).
    pub fn len(&self) -> usize {
        self.shared.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.receiver_alive = false;
        queue.order.clear();
        queue.speakers.clear();
        queue.slots.clear();
        queue.refused.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::DisconnectReason;

    fn pid(n: u64) -> ParticipantId {
        ParticipantId(n)
    }

    fn speakers(room: u64, who: u64) -> SfuEvent {
        SfuEvent::ActiveSpeakers {
            room: RoomKey(room),
            speakers: vec![(pid(who), 0.5)],
        }
    }

    fn slots(room: u64, who: u64) -> SfuEvent {
        SfuEvent::SlotsChanged {
            room: RoomKey(room),
            slots: vec![Some(pid(who)), None],
            spare: None,
        }
    }

    fn drain(rx: &mut EventReceiver) -> Vec<SfuEvent> {
        std::iter::from_fn(|| rx.try_recv()).collect()
    }

    #[test]
    fn a_slow_consumer_reads_each_rooms_latest_speakers_and_slots_once() {
        let (tx, mut rx) = channel();
        for who in 0..100 {
            tx.send(speakers(1, who));
            tx.send(slots(1, who));
            tx.send(speakers(2, 1000 + who));
        }
        assert_eq!(rx.len(), 3, "one pending entry per room and kind");
        assert_eq!(
            drain(&mut rx),
            vec![speakers(1, 99), slots(1, 99), speakers(2, 1099)],
            "the latest state, in the place of the first pending one"
        );
        tx.send(speakers(1, 7));
        assert_eq!(
            drain(&mut rx),
            vec![speakers(1, 7)],
            "read states queue again"
        );
    }

    #[test]
    fn lifecycle_events_all_arrive_in_order_between_coalesced_state() {
        let (tx, mut rx) = channel();
        let mut expected = Vec::new();
        for n in 0..1000 {
            tx.send(speakers(1, n));
            let event = if n % 2 == 0 {
                SfuEvent::Connected { pid: pid(n) }
            } else {
                SfuEvent::Disconnected {
                    pid: pid(n),
                    reason: DisconnectReason::Timeout,
                }
            };
            tx.send(event.clone());
            expected.push(event);
        }
        let got = drain(&mut rx);
        assert_eq!(got.len(), 1001);
        assert_eq!(got[0], speakers(1, 999));
        assert_eq!(got[1..], expected[..]);
    }

    #[test]
    fn a_pending_refusal_is_not_queued_twice_for_the_same_participant() {
        let (tx, mut rx) = channel();
        for _ in 0..5 {
            tx.send(SfuEvent::MediaRefused { pid: pid(1) });
            tx.send(SfuEvent::MediaRefused { pid: pid(2) });
        }
        assert_eq!(
            drain(&mut rx),
            vec![
                SfuEvent::MediaRefused { pid: pid(1) },
                SfuEvent::MediaRefused { pid: pid(2) }
            ]
        );
        tx.send(SfuEvent::MediaRefused { pid: pid(1) });
        assert_eq!(
            drain(&mut rx),
            vec![SfuEvent::MediaRefused { pid: pid(1) }],
            "a new refusal after the last was read is delivered"
        );
    }

    #[test]
    fn the_backlog_counts_what_is_pending_from_every_sender() {
        let (tx, mut rx) = channel();
        let other = tx.clone();
        let probe = tx.probe();
        tx.send(SfuEvent::Connected { pid: pid(1) });
        other.send(slots(3, 1));
        other.send(slots(3, 2));
        assert_eq!((tx.backlog(), probe.backlog(), rx.len()), (2, 2, 2));
        rx.try_recv();
        assert_eq!(probe.backlog(), 1);
    }

    #[tokio::test]
    async fn the_receiver_wakes_for_an_event_and_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = channel();
        let other = tx.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = rx.recv().await {
                got.push(e);
            }
            got
        });
        tokio::task::yield_now().await;
        tx.send(SfuEvent::Connected { pid: pid(1) });
        drop(tx);
        other.send(SfuEvent::Connected { pid: pid(2) });
        drop(other);
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the receiver ends")
            .expect("reader task");
        assert_eq!(
            got,
            vec![
                SfuEvent::Connected { pid: pid(1) },
                SfuEvent::Connected { pid: pid(2) }
            ]
        );
    }

    #[test]
    fn sends_after_the_receiver_is_gone_are_discarded() {
        let (tx, rx) = channel();
        tx.send(SfuEvent::Connected { pid: pid(1) });
        drop(rx);
        tx.send(slots(1, 1));
        assert_eq!(tx.backlog(), 0);
    }
}
