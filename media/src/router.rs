//! The SFU's "who receives what": rooms, participants, their roles and mute state,
//! per-publisher audio levels, each room's slot map, and the per-packet routing
//! decision. Socket-free and clock-injected (every input carries `now`), so all of it
//! is tested on virtual time; the I/O side owns peer connections and calls in here.
//!
//! Per packet, [`Router::on_packet`] costs two hash lookups, a level update and a scan
//! of the room's few slots, then returns a borrowed [`Fanout`] that iterates
//! `(subscriber, slot)` pairs straight out of the room's member list: no allocation,
//! nothing proportional to the room except the fan-out itself. Each room keeps a dense
//! member list (updated in O(1) on join/leave) and a precomputed spare fan-out (rebuilt
//! only when the slot map changes). Each participant carries a caller-chosen `T: Copy`
//! (e.g. the I/O side's index of its peer connection) that the fan-out yields, so the
//! caller needs no second lookup per receiver.
//!
//! Output events (slot map changes, active speakers, refused media) queue up inside
//! and are drained with [`Router::poll_event`], str0m style. Slot decisions and
//! active-speaker updates run for all rooms every `speaker_interval` from
//! [`Router::tick`]; vacancies (a holder leaves, is muted or demoted) are filled at once.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::SfuEvent;
use crate::ids::{IdHashBuilder, ParticipantId, RoomKey};
use crate::level::{AudioLevel, LevelConfig, LevelMeter, LevelSmoothing};
use crate::slots::{ActiveSpeakers, Candidate, SlotAllocator, SlotConfig};

/// Configuration of the router; `slots.slots` and `speaker_interval` mirror `SfuConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterConfig {
    pub slots: SlotConfig,
    pub level: LevelConfig,
    /// Period of slot decisions and active-speaker updates (200..=500 ms sensible).
    pub speaker_interval: Duration,
    /// Longest active-speaker list reported per room (bounds the event's size).
    pub max_active_speakers: usize,
}

impl RouterConfig {
    /// The configuration `SfuConfig` implies: its slot count and speaker interval, the
    /// tuned defaults for everything else.
    pub fn new(slots: usize, speaker_interval: Duration) -> Self {
        RouterConfig {
            slots: SlotConfig {
                slots,
                ..SlotConfig::default()
            },
            speaker_interval,
            ..RouterConfig::default()
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            slots: SlotConfig::default(),
            level: LevelConfig::default(),
            speaker_interval: Duration::from_millis(300),
            max_active_speakers: 10,
        }
    }
}

/// Why a packet was not forwarded. Bounded set, usable as a metrics label.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    UnknownParticipant,
    NotPublisher,
    Muted,
    /// The publisher holds no slot and is not the spare.
    NotInSlot,
    /// Nobody else in the room would receive it.
    NoSubscribers,
}

impl DropReason {
    /// Stable metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownParticipant => "unknown_participant",
            DropReason::NotPublisher => "not_publisher",
            DropReason::Muted => "muted",
            DropReason::NotInSlot => "not_in_slot",
            DropReason::NoSubscribers => "no_subscribers",
        }
    }
}

/// Errors of the registry operations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouterError {
    #[error("participant {0} is already registered")]
    AlreadyPresent(ParticipantId),
    #[error("participant {0} is not registered")]
    UnknownParticipant(ParticipantId),
    #[error("room {0} has no local members")]
    UnknownRoom(RoomKey),
}

/// One receiver of a packet: forward it to `subscriber` on its slot `slot` leg.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Delivery<T> {
    pub subscriber: ParticipantId,
    pub slot: usize,
    /// The value given for `subscriber` in [`Router::add_participant`].
    pub data: T,
}

/// The outcome of [`Router::on_packet`].
#[derive(Debug)]
pub enum Route<'a, T> {
    Forward(Fanout<'a, T>),
    Drop(DropReason),
}

/// Iterator over the receivers of one packet; borrows the router, allocates nothing.
#[derive(Debug, Clone)]
pub struct Fanout<'a, T> {
    inner: FanoutInner<'a, T>,
}

#[derive(Debug, Clone)]
enum FanoutInner<'a, T> {
    /// A slot holder's packet: everyone in the room but the holder, on slot `slot`.
    Slot {
        members: std::slice::Iter<'a, Member<T>>,
        skip: ParticipantId,
        slot: usize,
    },
    /// The spare's packet: each slot holder, on the slot it holds.
    Spare(std::slice::Iter<'a, Delivery<T>>),
}

impl<T: Copy> Iterator for Fanout<'_, T> {
    type Item = Delivery<T>;

    #[inline]
    fn next(&mut self) -> Option<Delivery<T>> {
        match &mut self.inner {
            FanoutInner::Slot {
                members,
                skip,
                slot,
            } => members.find(|m| m.pid != *skip).map(|m| Delivery {
                subscriber: m.pid,
                slot: *slot,
                data: m.data,
            }),
            FanoutInner::Spare(it) => it.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.inner {
            // At most one member (the holder) is skipped.
            FanoutInner::Slot { members, .. } => {
                let n = members.len();
                (n.saturating_sub(1), Some(n))
            }
            FanoutInner::Spare(it) => it.size_hint(),
        }
    }
}

#[derive(Copy, Clone, Debug)]
struct Member<T> {
    pid: ParticipantId,
    data: T,
}

#[derive(Debug)]
struct Participant {
    room: RoomKey,
    /// Index in the room's `members`; `None` for a remote source (it receives nothing here).
    member_index: Option<usize>,
    can_publish: bool,
    muted: bool,
    /// Whether MediaRefused was already reported since the last role change.
    refused_reported: bool,
    meter: LevelMeter,
}

impl Participant {
    fn is_candidate(&self) -> bool {
        self.can_publish && !self.muted
    }
}

#[derive(Debug)]
struct Room<T> {
    members: Vec<Member<T>>,
    /// Members allowed to publish (muted ones included); the tick only looks at these,
    /// so thousands of listeners cost nothing per decision.
    publishers: Vec<ParticipantId>,
    allocator: SlotAllocator,
    active: ActiveSpeakers,
    /// The active-speaker list lost an entry outside a tick; report at the next tick.
    active_dirty: bool,
    /// Receivers of the spare's packets, rebuilt when the slot map changes.
    spare_fanout: Vec<Delivery<T>>,
}

/// The registry and routing logic. `T` is the caller's per-participant handle.
#[derive(Debug)]
pub struct Router<T: Copy = ()> {
    cfg: RouterConfig,
    smoothing: LevelSmoothing,
    participants: HashMap<ParticipantId, Participant, IdHashBuilder>,
    rooms: HashMap<RoomKey, Room<T>, IdHashBuilder>,
    events: VecDeque<SfuEvent>,
    next_tick: Instant,
    /// When the last decision ran: the length of the level window it closed.
    last_tick: Instant,
    /// Reused buffer for building a room's candidates.
    scratch: Vec<Candidate>,
}

impl<T: Copy> Router<T> {
    pub fn new(cfg: RouterConfig, now: Instant) -> Self {
        Router {
            smoothing: LevelSmoothing::new(cfg.level.clone()),
            next_tick: now + cfg.speaker_interval,
            last_tick: now,
            cfg,
            participants: HashMap::default(),
            rooms: HashMap::default(),
            events: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Registers a participant in `room` (created on first use). A publisher joining a
    /// room with a free slot or no spare takes it at once.
    pub fn add_participant(
        &mut self,
        pid: ParticipantId,
        room: RoomKey,
        can_publish: bool,
        data: T,
        now: Instant,
    ) -> Result<(), RouterError> {
        if self.participants.contains_key(&pid) {
            return Err(RouterError::AlreadyPresent(pid));
        }
        let cfg = &self.cfg;
        let r = self.rooms.entry(room).or_insert_with(|| Room {
            members: Vec::new(),
            publishers: Vec::new(),
            allocator: SlotAllocator::new(cfg.slots.clone()),
            active: ActiveSpeakers::new(cfg.max_active_speakers),
            active_dirty: false,
            spare_fanout: Vec::new(),
        });
        r.members.push(Member { pid, data });
        if can_publish {
            r.publishers.push(pid);
        }
        self.participants.insert(
            pid,
            Participant {
                room,
                member_index: Some(r.members.len() - 1),
                can_publish,
                muted: false,
                refused_reported: false,
                meter: LevelMeter::new(),
            },
        );
        if can_publish {
            self.refill(room, now);
        }
        Ok(())
    }

    /// Registers a remote source in `room`: a publisher on another node whose packets
    /// arrive over the relay. It takes part in the room's speaker selection like a local
    /// publisher, but is no member: it receives nothing here. The room must exist (have
    /// local members); it is removed with [`Router::remove_participant`], or with the room
    /// when its last local member leaves.
    pub fn add_remote_source(
        &mut self,
        pid: ParticipantId,
        room: RoomKey,
        now: Instant,
    ) -> Result<(), RouterError> {
        if self.participants.contains_key(&pid) {
            return Err(RouterError::AlreadyPresent(pid));
        }
        let r = self
            .rooms
            .get_mut(&room)
            .ok_or(RouterError::UnknownRoom(room))?;
        r.publishers.push(pid);
        self.participants.insert(
            pid,
            Participant {
                room,
                member_index: None,
                can_publish: true,
                muted: false,
                refused_reported: false,
                meter: LevelMeter::new(),
            },
        );
        self.refill(room, now);
        Ok(())
    }

    /// The room of `pid` and whether it is a remote source there.
    pub fn source_kind(&self, pid: ParticipantId) -> Option<(RoomKey, bool)> {
        self.participants
            .get(&pid)
            .map(|p| (p.room, p.member_index.is_none()))
    }

    /// The room in which the local participant `pid` holds a slot, if it does: what the
    /// relay sends to other nodes (a room's top speakers, never a remote source, so
    /// nothing relayed comes back).
    pub fn local_slot_holder_room(&self, pid: ParticipantId) -> Option<RoomKey> {
        let p = self.participants.get(&pid)?;
        p.member_index?;
        let room = self.rooms.get(&p.room)?;
        room.allocator.slot_of(pid).map(|_| p.room)
    }

    /// Removes a participant and everything that refers to it; an emptied room is
    /// dropped. A slot it held is refilled at once. Returns whether it was registered.
    pub fn remove_participant(&mut self, pid: ParticipantId, now: Instant) -> bool {
        let Some(p) = self.participants.remove(&pid) else {
            return false;
        };
        let Some(room) = self.rooms.get_mut(&p.room) else {
            return true; // unreachable by construction; nothing left to clean
        };
        if let Some(index) = p.member_index {
            room.members.swap_remove(index);
            if let Some(moved) = room.members.get(index)
                && let Some(mp) = self.participants.get_mut(&moved.pid)
            {
                mp.member_index = Some(index);
            }
        }
        room.publishers.retain(|x| *x != pid);
        if room.members.is_empty() {
            // Remote sources only exist for local members to hear: they go with the room.
            for source in &room.publishers {
                self.participants.remove(source);
            }
            self.rooms.remove(&p.room);
            return true;
        }
        if room.active.remove(pid) {
            room.active_dirty = true;
        }
        self.vacate(p.room, pid, now);
        true
    }

    /// Server-enforced mute: a muted publisher is no candidate for slots and its
    /// packets are dropped. Unmuting starts its level from silence.
    pub fn set_muted(
        &mut self,
        pid: ParticipantId,
        muted: bool,
        now: Instant,
    ) -> Result<(), RouterError> {
        let p = self
            .participants
            .get_mut(&pid)
            .ok_or(RouterError::UnknownParticipant(pid))?;
        if p.muted == muted {
            return Ok(());
        }
        p.muted = muted;
        p.meter.reset();
        let room = p.room;
        let can_publish = p.can_publish;
        if can_publish {
            self.candidacy_changed(room, pid, muted, now);
        }
        Ok(())
    }

    /// Role change. Re-arms the once-per-role-change MediaRefused report.
    pub fn set_can_publish(
        &mut self,
        pid: ParticipantId,
        can_publish: bool,
        now: Instant,
    ) -> Result<(), RouterError> {
        let p = self
            .participants
            .get_mut(&pid)
            .ok_or(RouterError::UnknownParticipant(pid))?;
        p.refused_reported = false;
        if p.can_publish == can_publish {
            return Ok(());
        }
        p.can_publish = can_publish;
        p.meter.reset();
        let (room, muted) = (p.room, p.muted);
        if let Some(r) = self.rooms.get_mut(&room) {
            if can_publish {
                r.publishers.push(pid);
            } else {
                r.publishers.retain(|x| *x != pid);
            }
        }
        if !muted {
            self.candidacy_changed(room, pid, !can_publish, now);
        }
        Ok(())
    }

    /// Replaces the caller's handle for `pid` (e.g. its peer connection was recreated
    /// under a new index) without touching its room, role, level or slot.
    pub fn set_data(&mut self, pid: ParticipantId, data: T) -> Result<(), RouterError> {
        let p = self
            .participants
            .get(&pid)
            .ok_or(RouterError::UnknownParticipant(pid))?;
        if let Some(room) = self.rooms.get_mut(&p.room) {
            if let Some(m) = p.member_index.and_then(|i| room.members.get_mut(i)) {
                m.data = data;
            }
            for d in room.spare_fanout.iter_mut().filter(|d| d.subscriber == pid) {
                d.data = data;
            }
        }
        Ok(())
    }

    /// Per-packet routing decision for an RTP packet from `pid` (its parsed audio level,
    /// if the extension was present). Updates the publisher's level, then returns the
    /// receivers or why there are none.
    pub fn on_packet(
        &mut self,
        pid: ParticipantId,
        level: Option<AudioLevel>,
        now: Instant,
    ) -> Route<'_, T> {
        let Some(p) = self.participants.get_mut(&pid) else {
            return Route::Drop(DropReason::UnknownParticipant);
        };
        if !p.can_publish {
            if !p.refused_reported {
                p.refused_reported = true;
                self.events.push_back(SfuEvent::MediaRefused { pid });
            }
            return Route::Drop(DropReason::NotPublisher);
        }
        if p.muted {
            return Route::Drop(DropReason::Muted);
        }
        if let Some(level) = level {
            p.meter.observe(&self.smoothing, level, now);
        }
        let Some(room) = self.rooms.get(&p.room) else {
            return Route::Drop(DropReason::UnknownParticipant);
        };
        if let Some(slot) = room.allocator.slot_of(pid) {
            // The holder is skipped if it is a member (a remote source is none).
            if room.members.len() <= usize::from(p.member_index.is_some()) {
                return Route::Drop(DropReason::NoSubscribers);
            }
            return Route::Forward(Fanout {
                inner: FanoutInner::Slot {
                    members: room.members.iter(),
                    skip: pid,
                    slot,
                },
            });
        }
        if room.allocator.spare() == Some(pid) {
            if room.spare_fanout.is_empty() {
                return Route::Drop(DropReason::NoSubscribers);
            }
            return Route::Forward(Fanout {
                inner: FanoutInner::Spare(room.spare_fanout.iter()),
            });
        }
        Route::Drop(DropReason::NotInSlot)
    }

    /// When [`Router::tick`] next has work to do.
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// Runs the periodic slot decisions and active-speaker updates when due.
    pub fn tick(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick += self.cfg.speaker_interval;
        if self.next_tick <= now {
            // We fell behind (a stalled loop): do not replay missed ticks.
            self.next_tick = now + self.cfg.speaker_interval;
        }
        let window = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        let Router {
            participants,
            rooms,
            events,
            scratch,
            smoothing,
            ..
        } = self;
        for (&key, room) in rooms.iter_mut() {
            if room.publishers.is_empty() && !room.active_dirty {
                continue;
            }
            // Close every publisher's level window (the per-interval mean challengers
            // are judged on) and collect the room's candidates.
            scratch.clear();
            for pid in &room.publishers {
                let Some(p) = participants.get_mut(pid) else {
                    continue;
                };
                let recent = p.meter.take_window(smoothing, window);
                if p.is_candidate() {
                    scratch.push(Candidate {
                        pid: *pid,
                        level: p.meter.level(smoothing, now),
                        recent,
                        speaking: p.meter.speaking(now),
                    });
                }
            }
            if room.allocator.decide(now, scratch) {
                slots_changed(key, room, participants, events);
            }
            let changed = room.active.update(scratch);
            if changed || room.active_dirty {
                room.active_dirty = false;
                events.push_back(SfuEvent::ActiveSpeakers {
                    room: key,
                    speakers: room.active.current().to_vec(),
                });
            }
        }
    }

    /// Next queued event, if any. Drain after every input. Only room state
    /// ([`SfuEvent::ActiveSpeakers`] from `tick`, when the set or order changed;
    /// [`SfuEvent::SlotsChanged`]) and [`SfuEvent::MediaRefused`] (once per role change)
    /// come from here; connection events are the engine's.
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// The room a participant is in.
    pub fn room_of(&self, pid: ParticipantId) -> Option<RoomKey> {
        self.participants.get(&pid).map(|p| p.room)
    }

    /// A room's slot map and spare.
    pub fn slot_map(
        &self,
        room: RoomKey,
    ) -> Option<(&[Option<ParticipantId>], Option<ParticipantId>)> {
        self.rooms
            .get(&room)
            .map(|r| (r.allocator.slots(), r.allocator.spare()))
    }

    /// What `subscriber` hears in its slot `slot` now (nobody hears themself).
    pub fn source_for(&self, subscriber: ParticipantId, slot: usize) -> Option<ParticipantId> {
        let p = self.participants.get(&subscriber)?;
        self.rooms
            .get(&p.room)?
            .allocator
            .source_for(subscriber, slot)
    }

    /// A room's last reported active speakers.
    pub fn active_speakers(&self, room: RoomKey) -> Option<&[(ParticipantId, f32)]> {
        self.rooms.get(&room).map(|r| r.active.current())
    }

    /// Smoothed level (0..=1) of a participant at `now`.
    pub fn level(&self, pid: ParticipantId, now: Instant) -> Option<f32> {
        self.participants
            .get(&pid)
            .map(|p| p.meter.level(&self.smoothing, now))
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Audio tracks routed to subscribers in all rooms: for every participant, each slot
    /// that carries someone else (what [`Router::source_for`] answers `Some` for). O(rooms).
    pub fn subscription_count(&self) -> usize {
        self.rooms
            .values()
            .map(|r| {
                let occupied = r.allocator.slots().iter().flatten().count();
                let members = r.members.len() * occupied;
                // A slot holder hears the spare in its own slot, or nothing without one;
                // a remote holder is no member here.
                if r.allocator.spare().is_some() {
                    members
                } else {
                    let local_holders = r
                        .allocator
                        .slots()
                        .iter()
                        .flatten()
                        .filter(|h| {
                            self.participants
                                .get(h)
                                .is_some_and(|p| p.member_index.is_some())
                        })
                        .count();
                    members - local_holders
                }
            })
            .sum()
    }

    /// Members of a room (0 for an unknown room).
    pub fn room_size(&self, room: RoomKey) -> usize {
        self.rooms.get(&room).map_or(0, |r| r.members.len())
    }

    /// A participant became a candidate (`gone == false`) or stopped being one.
    fn candidacy_changed(&mut self, room: RoomKey, pid: ParticipantId, gone: bool, now: Instant) {
        if gone {
            if let Some(r) = self.rooms.get_mut(&room)
                && r.active.remove(pid)
            {
                r.active_dirty = true;
            }
            self.vacate(room, pid, now);
        } else {
            self.refill(room, now);
        }
    }

    /// Drops `pid` from the room's slot map (it is no candidate any more) and refills.
    fn vacate(&mut self, key: RoomKey, pid: ParticipantId, now: Instant) {
        let Some(room) = self.rooms.get_mut(&key) else {
            return;
        };
        build_candidates(
            &mut self.scratch,
            &room.publishers,
            &self.participants,
            &self.smoothing,
            now,
        );
        if room.allocator.remove(pid, &self.scratch) {
            slots_changed(key, room, &self.participants, &mut self.events);
        }
    }

    /// Fills vacancies in the room's slot map from its current candidates.
    fn refill(&mut self, key: RoomKey, now: Instant) {
        let Some(room) = self.rooms.get_mut(&key) else {
            return;
        };
        build_candidates(
            &mut self.scratch,
            &room.publishers,
            &self.participants,
            &self.smoothing,
            now,
        );
        if room.allocator.refill(&self.scratch) {
            slots_changed(key, room, &self.participants, &mut self.events);
        }
    }

    /// Test and leak-check helper: whether any state still refers to `pid`.
    #[cfg(test)]
    fn mentions(&self, pid: ParticipantId) -> bool {
        self.participants.contains_key(&pid)
            || self.rooms.values().any(|r| {
                r.members.iter().any(|m| m.pid == pid)
                    || r.publishers.contains(&pid)
                    || r.allocator.mentions(pid)
                    || r.active.current().iter().any(|(p, _)| *p == pid)
                    || r.spare_fanout.iter().any(|d| d.subscriber == pid)
            })
    }
}

/// Fills `out` with the room's candidates (unmuted publishers) and their levels at `now`,
/// for membership changes between decisions (the level windows stay open).
fn build_candidates(
    out: &mut Vec<Candidate>,
    publishers: &[ParticipantId],
    participants: &HashMap<ParticipantId, Participant, IdHashBuilder>,
    smoothing: &LevelSmoothing,
    now: Instant,
) {
    out.clear();
    out.extend(publishers.iter().filter_map(|pid| {
        let p = participants.get(pid)?;
        p.is_candidate().then(|| {
            let level = p.meter.level(smoothing, now);
            Candidate {
                pid: *pid,
                level,
                recent: level,
                speaking: p.meter.speaking(now),
            }
        })
    }));
}

/// Rebuilds the spare fan-out and queues a SlotsChanged event.
fn slots_changed<T: Copy>(
    key: RoomKey,
    room: &mut Room<T>,
    participants: &HashMap<ParticipantId, Participant, IdHashBuilder>,
    events: &mut VecDeque<SfuEvent>,
) {
    room.spare_fanout.clear();
    if let Some(spare) = room.allocator.spare() {
        for (j, holder) in room.allocator.slots().iter().enumerate() {
            let Some(holder) = *holder else { continue };
            if holder == spare {
                continue;
            }
            let member = participants
                .get(&holder)
                .and_then(|p| p.member_index)
                .and_then(|i| room.members.get(i));
            if let Some(m) = member {
                room.spare_fanout.push(Delivery {
                    subscriber: holder,
                    slot: j,
                    data: m.data,
                });
            }
        }
    }
    events.push_back(SfuEvent::SlotsChanged {
        room: key,
        slots: room.allocator.slots().to_vec(),
        spare: room.allocator.spare(),
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const ROOM: RoomKey = RoomKey(1);
    const FRAME: Duration = Duration::from_millis(20);

    fn p(n: u64) -> ParticipantId {
        ParticipantId(n)
    }

    fn lvl(dbov: u8) -> Option<AudioLevel> {
        Some(AudioLevel { dbov, voice: true })
    }

    /// A router on virtual time with helpers to run speakers.
    struct Sim {
        r: Router<u64>,
        now: Instant,
        events: Vec<SfuEvent>,
    }

    impl Sim {
        fn new(slots: usize) -> Sim {
            let now = Instant::now();
            let cfg = RouterConfig {
                slots: SlotConfig {
                    slots,
                    ..SlotConfig::default()
                },
                ..RouterConfig::default()
            };
            Sim {
                r: Router::new(cfg, now),
                now,
                events: Vec::new(),
            }
        }

        fn join(&mut self, n: u64, can_publish: bool) {
            self.r
                .add_participant(p(n), ROOM, can_publish, n * 10, self.now)
                .unwrap();
            self.drain();
        }

        fn drain(&mut self) {
            while let Some(e) = self.r.poll_event() {
                self.events.push(e);
            }
        }

        /// Receivers of one packet from `n`, or the drop reason.
        fn send(&mut self, n: u64, dbov: u8) -> Result<Vec<(u64, usize)>, DropReason> {
            let out = match self.r.on_packet(p(n), lvl(dbov), self.now) {
                Route::Forward(f) => Ok(f
                    .map(|d| {
                        assert_eq!(d.data, d.subscriber.0 * 10, "caller data travels along");
                        (d.subscriber.0, d.slot)
                    })
                    .collect()),
                Route::Drop(reason) => Err(reason),
            };
            self.drain();
            out
        }

        /// Runs `dur` of virtual time: every speaker in `talk` sends a packet per frame at
        /// its level; ticks when due. Returns, per subscriber, the sources heard per slot
        /// in the last frame.
        fn run(&mut self, dur: Duration, talk: &[(u64, u8)]) -> BTreeMap<(u64, usize), u64> {
            let end = self.now + dur;
            let mut heard = BTreeMap::new();
            while self.now < end {
                self.now += FRAME;
                heard.clear();
                for &(n, dbov) in talk {
                    if let Ok(rx) = self.send(n, dbov) {
                        for (sub, slot) in rx {
                            assert_ne!(sub, n, "{n} hears itself");
                            let prev = heard.insert((sub, slot), n);
                            assert!(prev.is_none(), "two sources in one slot of {sub}");
                        }
                    }
                }
                if self.now >= self.r.poll_timeout() {
                    self.r.tick(self.now);
                    self.drain();
                }
            }
            heard
        }

        fn slots_changed_count(&self) -> usize {
            self.events
                .iter()
                .filter(|e| matches!(e, SfuEvent::SlotsChanged { .. }))
                .count()
        }

        fn last_active(&self) -> Option<Vec<u64>> {
            self.events.iter().rev().find_map(|e| match e {
                SfuEvent::ActiveSpeakers { speakers, .. } => {
                    Some(speakers.iter().map(|s| s.0.0).collect())
                }
                _ => None,
            })
        }
    }

    #[test]
    fn small_room_everyone_hears_every_other_speaker() {
        let mut s = Sim::new(3);
        s.join(1, true);
        s.join(2, true);
        for l in 10..15 {
            s.join(l, false);
        }
        let heard = s.run(Duration::from_secs(2), &[(1, 30), (2, 40)]);
        for sub in [1u64, 2, 10, 11, 12, 13, 14] {
            let sources: Vec<u64> = heard
                .iter()
                .filter(|((x, _), _)| *x == sub)
                .map(|(_, src)| *src)
                .collect();
            let mut expect: Vec<u64> = [1, 2].into_iter().filter(|x| *x != sub).collect();
            let mut got = sources.clone();
            got.sort();
            expect.sort();
            assert_eq!(got, expect, "subscriber {sub}");
        }
        // slots never moved after the initial assignment (one event per join)
        assert_eq!(s.slots_changed_count(), 2);
    }

    #[test]
    fn louder_speakers_take_the_slots_and_the_spare_reaches_holders() {
        let mut s = Sim::new(3);
        for n in 1..=5 {
            s.join(n, true);
        }
        s.join(100, false);
        // 1,2,3 joined first and hold the slots; 4 is the spare; 5 is out. 4 and 5 are
        // clearly louder than 3 and 2: they take those slots one after the other; 3,
        // displaced first, becomes the spare and keeps that place (2 is not *clearly*
        // louder than 3).
        let talk = [(1, 30), (2, 45), (3, 48), (4, 20), (5, 25)];
        let heard = s.run(Duration::from_secs(3), &talk);
        let listener: Vec<u64> = (0..3)
            .filter_map(|j| heard.get(&(100, j)).copied())
            .collect();
        let mut l = listener.clone();
        l.sort();
        assert_eq!(l, vec![1, 4, 5], "the listener hears the three loudest");
        for holder in [1u64, 4, 5] {
            let mut got: Vec<u64> = (0..3)
                .filter_map(|j| heard.get(&(holder, j)).copied())
                .collect();
            got.sort();
            // holders hear the other two holders plus the spare
            let expect: Vec<u64> = [1, 3, 4, 5].into_iter().filter(|x| *x != holder).collect();
            assert_eq!(got, expect, "holder {holder}");
        }
        let (_, spare) = s.r.slot_map(ROOM).unwrap();
        assert_eq!(spare, Some(p(3)));
        assert_eq!(s.last_active(), Some(vec![4, 5, 1, 2, 3]), "loudest first");
        assert_eq!(
            s.send(2, 45),
            Err(DropReason::NotInSlot),
            "the quiet outsider's packets go nowhere"
        );
    }

    #[test]
    fn a_blip_does_not_switch_but_a_sustained_louder_speaker_does() {
        let mut s = Sim::new(1);
        s.join(1, true);
        s.join(2, true);
        s.join(3, false);
        s.run(Duration::from_secs(2), &[(1, 30), (2, 45)]);
        assert_eq!(s.r.source_for(p(3), 0), Some(p(1)));
        let before = s.slots_changed_count();
        // 2 interjects 15 dB louder than 1 for 200 ms while 1 keeps talking
        s.run(Duration::from_millis(200), &[(1, 30), (2, 15)]);
        s.run(Duration::from_secs(2), &[(1, 30), (2, 45)]);
        assert_eq!(s.r.source_for(p(3), 0), Some(p(1)));
        assert_eq!(s.slots_changed_count(), before, "no switch from a blip");
        // the same interjection sustained for 1.5 s does switch
        let heard = s.run(Duration::from_millis(1500), &[(1, 30), (2, 15)]);
        assert_eq!(s.r.source_for(p(3), 0), Some(p(2)));
        assert_eq!(heard.get(&(3, 0)), Some(&2));
        assert_eq!(
            heard.get(&(2, 0)),
            Some(&1),
            "the new holder hears the spare"
        );
        assert_eq!(s.slots_changed_count(), before + 1, "exactly one switch");
    }

    #[test]
    fn a_holder_going_dtx_silent_loses_its_slot_to_a_talker() {
        let mut s = Sim::new(1);
        s.join(1, true);
        s.join(2, true);
        s.join(3, false);
        s.run(Duration::from_secs(2), &[(1, 30), (2, 45)]);
        // 1 falls silent (DTX packets at -127), 2 talks at 1's former level
        s.run(Duration::from_millis(1500), &[(1, 127), (2, 30)]);
        assert_eq!(s.r.source_for(p(3), 0), Some(p(2)));
    }

    #[test]
    fn interjections_up_to_300_ms_never_switch_even_when_much_louder() {
        for ms in [100u64, 200, 300] {
            for louder in [10u8, 15, 20, 25] {
                let mut s = Sim::new(1);
                s.join(1, true);
                s.join(2, true);
                s.join(3, false);
                s.run(Duration::from_secs(2), &[(1, 30), (2, 45)]);
                let before = s.slots_changed_count();
                s.run(Duration::from_millis(ms), &[(1, 30), (2, 30 - louder)]);
                s.run(Duration::from_secs(3), &[(1, 30), (2, 45)]);
                assert_eq!(s.slots_changed_count(), before, "{ms} ms, +{louder} dB");
                // the same interjection sustained does switch
                s.run(Duration::from_millis(1500), &[(1, 30), (2, 30 - louder)]);
                assert_eq!(s.slots_changed_count(), before + 1, "{ms} ms, +{louder} dB");
            }
        }
    }

    #[test]
    fn a_publisher_that_stops_sending_loses_its_slot_to_a_talker() {
        let mut s = Sim::new(1);
        s.join(1, true);
        s.join(2, true);
        s.join(3, false);
        s.run(Duration::from_secs(1), &[(1, 30)]);
        assert_eq!(s.r.source_for(p(3), 0), Some(p(1)));
        // 1 goes completely quiet (no packets at all), 2 talks
        s.run(Duration::from_secs(2), &[(2, 35)]);
        assert_eq!(s.r.source_for(p(3), 0), Some(p(2)));
    }

    #[test]
    fn equal_speakers_do_not_flap() {
        let mut s = Sim::new(1);
        s.join(1, true);
        s.join(2, true);
        s.join(3, false);
        let before = s.slots_changed_count();
        s.run(Duration::from_secs(20), &[(1, 30), (2, 30)]);
        assert_eq!(s.slots_changed_count(), before);
    }

    #[test]
    fn muting_stops_routing_and_frees_the_slot_at_once() {
        let mut s = Sim::new(1);
        s.join(1, true);
        s.join(2, true);
        s.join(3, false);
        s.run(Duration::from_secs(1), &[(1, 30), (2, 40)]);
        assert_eq!(s.r.source_for(p(3), 0), Some(p(1)));
        let before = s.slots_changed_count();
        s.r.set_muted(p(1), true, s.now).unwrap();
        s.drain();
        assert_eq!(
            s.slots_changed_count(),
            before + 1,
            "event without waiting for a tick"
        );
        assert_eq!(s.r.source_for(p(3), 0), Some(p(2)), "the spare moves in");
        assert_eq!(s.send(1, 10), Err(DropReason::Muted));
        assert_eq!(
            s.r.slot_map(ROOM).unwrap().1,
            None,
            "muted is no spare either"
        );
        let heard = s.run(Duration::from_secs(2), &[(1, 10), (2, 40)]);
        assert_eq!(heard.get(&(3, 0)), Some(&2));
        assert!(!heard.values().any(|src| *src == 1));
        // unmute: becomes the spare immediately, packets flow to the holder again
        s.r.set_muted(p(1), false, s.now).unwrap();
        s.drain();
        assert_eq!(s.r.slot_map(ROOM).unwrap().1, Some(p(1)));
        assert_eq!(s.send(1, 10), Ok(vec![(2, 0)]));
    }

    #[test]
    fn muted_speaker_leaves_the_active_speaker_list() {
        let mut s = Sim::new(3);
        s.join(1, true);
        s.join(2, true);
        s.run(Duration::from_secs(1), &[(1, 30), (2, 30)]);
        assert_eq!(s.last_active().map(|v| v.len()), Some(2));
        s.r.set_muted(p(1), true, s.now).unwrap();
        s.run(Duration::from_millis(400), &[(2, 30)]);
        assert_eq!(s.last_active(), Some(vec![2]));
    }

    #[test]
    fn listener_media_is_refused_once_per_role_change_and_promotion_enables_it() {
        let mut s = Sim::new(3);
        s.join(1, false);
        s.join(2, false);
        for _ in 0..5 {
            assert_eq!(s.send(1, 30), Err(DropReason::NotPublisher));
        }
        let refused = |s: &Sim| {
            s.events
                .iter()
                .filter(|e| matches!(e, SfuEvent::MediaRefused { pid } if *pid == p(1)))
                .count()
        };
        assert_eq!(refused(&s), 1);
        s.r.set_can_publish(p(1), true, s.now).unwrap();
        s.drain();
        assert_eq!(s.send(1, 30), Ok(vec![(2, 0)]));
        s.r.set_can_publish(p(1), false, s.now).unwrap();
        s.drain();
        assert_eq!(s.r.slot_map(ROOM).unwrap().0, &[None, None, None]);
        assert_eq!(s.send(1, 30), Err(DropReason::NotPublisher));
        assert_eq!(s.send(1, 30), Err(DropReason::NotPublisher));
        assert_eq!(refused(&s), 2);
    }

    #[test]
    fn a_lone_publisher_has_no_subscribers_and_unknown_ids_are_dropped() {
        let mut s = Sim::new(3);
        s.join(1, true);
        assert_eq!(s.send(1, 30), Err(DropReason::NoSubscribers));
        assert_eq!(s.send(9, 30), Err(DropReason::UnknownParticipant));
        s.join(2, false);
        assert_eq!(s.send(1, 30), Ok(vec![(2, 0)]));
    }

    #[test]
    fn registry_errors_are_reported() {
        let mut s = Sim::new(3);
        s.join(1, true);
        assert_eq!(
            s.r.add_participant(p(1), RoomKey(2), true, 0, s.now),
            Err(RouterError::AlreadyPresent(p(1)))
        );
        assert_eq!(
            s.r.set_muted(p(7), true, s.now),
            Err(RouterError::UnknownParticipant(p(7)))
        );
        assert_eq!(
            s.r.set_can_publish(p(7), true, s.now),
            Err(RouterError::UnknownParticipant(p(7)))
        );
        assert!(!s.r.remove_participant(p(7), s.now));
    }

    #[test]
    fn replaced_handles_are_what_the_fan_out_yields() {
        let mut s = Sim::new(1);
        s.join(1, true);
        s.join(2, true);
        s.join(3, false);
        // 1 holds the slot, 2 is the spare (heard by 1)
        s.r.set_data(p(1), 77).unwrap();
        s.r.set_data(p(3), 99).unwrap();
        let got = |r: &mut Router<u64>, from: u64| match r.on_packet(p(from), None, s.now) {
            Route::Forward(f) => f.map(|d| (d.subscriber.0, d.data)).collect::<Vec<_>>(),
            Route::Drop(reason) => panic!("{reason:?}"),
        };
        let mut a = got(&mut s.r, 1);
        a.sort();
        assert_eq!(a, vec![(2, 20), (3, 99)]);
        assert_eq!(got(&mut s.r, 2), vec![(1, 77)]);
        assert_eq!(
            s.r.set_data(p(8), 1),
            Err(RouterError::UnknownParticipant(p(8)))
        );
    }

    #[test]
    fn a_remote_source_competes_for_slots_is_heard_by_every_member_and_receives_nothing() {
        let mut s = Sim::new(1);
        s.join(1, true);
        s.join(3, false);
        assert_eq!(
            s.r.add_remote_source(p(50), RoomKey(9), s.now),
            Err(RouterError::UnknownRoom(RoomKey(9))),
            "no local members there"
        );
        assert_eq!(
            s.r.add_remote_source(p(3), ROOM, s.now),
            Err(RouterError::AlreadyPresent(p(3)))
        );
        s.r.add_remote_source(p(50), ROOM, s.now).unwrap();
        s.drain();
        assert_eq!(s.r.source_kind(p(50)), Some((ROOM, true)));
        assert_eq!(s.r.source_kind(p(1)), Some((ROOM, false)));
        assert_eq!(s.r.local_slot_holder_room(p(1)), Some(ROOM));
        // The remote source is louder for long enough: it takes the one slot.
        s.run(Duration::from_secs(2), &[(1, 60), (50, 10)]);
        assert_eq!(
            s.r.slot_map(ROOM).unwrap(),
            (&[Some(p(50))][..], Some(p(1)))
        );
        assert_eq!(s.r.local_slot_holder_room(p(50)), None, "never relayed on");
        assert_eq!(
            s.r.local_slot_holder_room(p(1)),
            None,
            "no slot, not relayed"
        );
        let mut heard = s.send(50, 10).unwrap();
        heard.sort_unstable();
        assert_eq!(heard, vec![(1, 0), (3, 0)], "every member, nobody as 50");
        assert_eq!(
            s.send(1, 60),
            Err(DropReason::NoSubscribers),
            "the spare's holder is remote"
        );
        assert_eq!(s.r.subscription_count(), 2);
        // Its last local members leave: the room goes, and the remote source with it.
        s.r.remove_participant(p(1), s.now);
        s.r.remove_participant(p(3), s.now);
        assert_eq!(s.r.room_count(), 0);
        assert_eq!(s.r.source_kind(p(50)), None);
        assert!(!s.r.mentions(p(50)));
        assert_eq!(s.r.participant_count(), 0);
    }

    #[test]
    fn rooms_are_independent() {
        let mut s = Sim::new(3);
        s.join(1, true);
        s.r.add_participant(p(2), RoomKey(2), false, 20, s.now)
            .unwrap();
        s.join(3, false);
        assert_eq!(s.send(1, 30), Ok(vec![(3, 0)]));
        assert_eq!(s.r.room_count(), 2);
        assert_eq!(s.r.room_of(p(2)), Some(RoomKey(2)));
    }

    #[test]
    fn removal_leaves_no_state_behind() {
        let mut s = Sim::new(2);
        for n in 1..=4 {
            s.join(n, true);
        }
        for n in 10..20 {
            s.join(n, false);
        }
        // 3 challenging, everyone talking so all lists are populated
        s.run(
            Duration::from_secs(2),
            &[(1, 40), (2, 40), (3, 20), (4, 50)],
        );
        s.r.set_muted(p(4), true, s.now).unwrap();
        let order = [3u64, 12, 1, 4, 19, 2, 10, 11, 13, 14, 15, 16, 17, 18];
        for (i, n) in order.iter().enumerate() {
            assert!(s.r.remove_participant(p(*n), s.now));
            s.drain();
            assert!(!s.r.mentions(p(*n)), "{n} left state behind");
            // the survivors still route correctly after swap_remove reshuffles
            s.run(Duration::from_millis(320), &[(1, 40), (2, 40), (3, 20)]);
            assert_eq!(s.r.participant_count(), order.len() - i - 1);
            for m in &order[i + 1..] {
                assert_eq!(s.r.room_of(p(*m)), Some(ROOM));
            }
        }
        assert_eq!(s.r.participant_count(), 0);
        assert_eq!(s.r.room_count(), 0, "the emptied room is dropped");
        assert!(s.r.active_speakers(ROOM).is_none());
        assert!(!s.r.remove_participant(p(1), s.now));
    }

    #[test]
    fn leaving_holder_is_replaced_and_listeners_are_told() {
        let mut s = Sim::new(1);
        s.join(1, true);
        s.join(2, true);
        s.join(3, false);
        s.run(Duration::from_secs(1), &[(1, 30), (2, 40)]);
        s.events.clear();
        s.r.remove_participant(p(1), s.now);
        s.drain();
        assert_eq!(
            s.events,
            vec![SfuEvent::SlotsChanged {
                room: ROOM,
                slots: vec![Some(p(2))],
                spare: None
            }]
        );
        assert_eq!(s.send(2, 40), Ok(vec![(3, 0)]));
    }

    #[test]
    fn big_room_fans_out_to_every_listener_once() {
        let mut s = Sim::new(3);
        s.join(1, true);
        for n in 1000..6000 {
            s.join(n, false);
        }
        let rx = s.send(1, 30).unwrap();
        assert_eq!(rx.len(), 5000);
        let unique: std::collections::HashSet<_> = rx.iter().map(|x| x.0).collect();
        assert_eq!(unique.len(), 5000);
        assert!(rx.iter().all(|(_, slot)| *slot == 0));
        match s.r.on_packet(p(1), None, s.now) {
            Route::Forward(f) => assert_eq!(f.size_hint(), (5000, Some(5001))),
            Route::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    #[test]
    fn active_speaker_events_come_only_on_change_and_at_most_per_interval() {
        let mut s = Sim::new(3);
        s.join(1, true);
        s.join(2, true);
        s.run(Duration::from_secs(3), &[(1, 30), (2, 45)]);
        let actives: Vec<_> = s
            .events
            .iter()
            .filter(|e| matches!(e, SfuEvent::ActiveSpeakers { .. }))
            .collect();
        assert_eq!(actives.len(), 1, "{actives:?}");
        assert_eq!(s.last_active(), Some(vec![1, 2]));
        // silence: the list empties once the hangover expires
        s.run(Duration::from_secs(2), &[(1, 127), (2, 127)]);
        assert_eq!(s.last_active(), Some(vec![]));
    }

    #[test]
    fn tick_falls_behind_gracefully() {
        let mut s = Sim::new(3);
        let t0 = s.r.poll_timeout();
        s.r.tick(t0 - Duration::from_millis(1));
        assert_eq!(s.r.poll_timeout(), t0, "not due yet");
        s.r.tick(t0 + Duration::from_secs(10));
        assert_eq!(
            s.r.poll_timeout(),
            t0 + Duration::from_secs(10) + s.r.config().speaker_interval
        );
    }

    #[test]
    fn packets_without_a_level_still_route() {
        let mut s = Sim::new(3);
        s.join(1, true);
        s.join(2, false);
        match s.r.on_packet(p(1), None, s.now) {
            Route::Forward(f) => assert_eq!(f.count(), 1),
            Route::Drop(r) => panic!("dropped: {r:?}"),
        }
        assert_eq!(s.r.level(p(1), s.now), Some(0.0));
    }

    /// Random joins, leaves, mutes, role changes, packets and ticks across a few rooms:
    /// never panics, never routes anyone their own audio or across rooms, never puts two
    /// sources in one slot of a subscriber, keeps the slot map consistent with
    /// candidacy, and leaves nothing behind once everyone has left.
    #[test]
    fn random_operations_keep_the_routing_invariants() {
        for seed in 1..=20u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut rnd = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut now = Instant::now();
            let mut r: Router<u64> =
                Router::new(RouterConfig::new(2, Duration::from_millis(200)), now);
            let mut present: BTreeMap<u64, (RoomKey, bool, bool)> = BTreeMap::new(); // room, pub, muted
            for _ in 0..4000 {
                now += Duration::from_millis(rnd(15));
                let n = rnd(24);
                match rnd(20) {
                    0..=2 => {
                        let room = RoomKey(rnd(3));
                        let publ = rnd(2) == 0;
                        let res = r.add_participant(p(n), room, publ, n, now);
                        match present.entry(n) {
                            std::collections::btree_map::Entry::Occupied(_) => {
                                assert_eq!(res, Err(RouterError::AlreadyPresent(p(n))));
                            }
                            std::collections::btree_map::Entry::Vacant(v) => {
                                res.unwrap();
                                v.insert((room, publ, false));
                            }
                        }
                    }
                    3 => {
                        assert_eq!(
                            r.remove_participant(p(n), now),
                            present.remove(&n).is_some()
                        );
                        assert!(!r.mentions(p(n)), "seed {seed}: {n} left state behind");
                    }
                    4 => {
                        let m = rnd(2) == 0;
                        if r.set_muted(p(n), m, now).is_ok() {
                            present.get_mut(&n).unwrap().2 = m;
                        } else {
                            assert!(!present.contains_key(&n));
                        }
                    }
                    5 => {
                        let c = rnd(2) == 0;
                        if r.set_can_publish(p(n), c, now).is_ok() {
                            present.get_mut(&n).unwrap().1 = c;
                        }
                    }
                    _ => {
                        let level = Some(AudioLevel {
                            dbov: rnd(128) as u8,
                            voice: false,
                        });
                        match r.on_packet(p(n), level, now) {
                            Route::Forward(f) => {
                                let (room, publ, muted) = present[&n];
                                assert!(publ && !muted, "seed {seed}: forwarded from {n}");
                                let mut seen = std::collections::HashSet::new();
                                let deliveries: Vec<_> = f.collect();
                                for d in deliveries {
                                    assert_ne!(d.subscriber, p(n), "seed {seed}: hears itself");
                                    assert_eq!(d.data, d.subscriber.0);
                                    assert_eq!(present[&d.subscriber.0].0, room, "crossed rooms");
                                    assert!(seen.insert(d.subscriber), "delivered twice");
                                    assert_eq!(r.source_for(d.subscriber, d.slot), Some(p(n)));
                                }
                            }
                            Route::Drop(reason) => {
                                let expect_known = reason != DropReason::UnknownParticipant;
                                assert_eq!(present.contains_key(&n), expect_known);
                            }
                        }
                    }
                }
                if now >= r.poll_timeout() {
                    r.tick(now);
                }
                while r.poll_event().is_some() {}
                // slot maps only hold unmuted publishers of that room, each at most once
                for room in (0..3).map(RoomKey) {
                    if let Some((slots, spare)) = r.slot_map(room) {
                        let held: Vec<_> = slots.iter().flatten().chain(spare.iter()).collect();
                        for (i, h) in held.iter().enumerate() {
                            let (hr, publ, muted) = present[&h.0];
                            assert!(hr == room && publ && !muted, "seed {seed}: stale holder");
                            assert!(!held[i + 1..].contains(h), "seed {seed}: held twice");
                        }
                        let candidates = present
                            .values()
                            .filter(|(rr, publ, muted)| *rr == room && *publ && !*muted)
                            .count();
                        assert_eq!(held.len(), candidates.min(slots.len() + 1), "vacancy left");
                    }
                }
                // the subscriptions gauge agrees with asking every participant's every slot
                let slots = r.config().slots.slots;
                let brute = present
                    .keys()
                    .map(|&n| {
                        (0..slots)
                            .filter(|&j| r.source_for(p(n), j).is_some())
                            .count()
                    })
                    .sum::<usize>();
                assert_eq!(r.subscription_count(), brute, "seed {seed}: subscriptions");
            }
            for n in present.keys() {
                assert!(r.remove_participant(p(*n), now));
            }
            assert_eq!((r.participant_count(), r.room_count()), (0, 0));
        }
    }
}
