//! The core on virtual time: no socket, no clock; every `now` is the test's.

use super::*;
use crate::events::{self, EventReceiver};
use crate::sfu::Owners;

const CONNECT: Duration = Duration::from_secs(15);
const PEER: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);

struct Harness {
    core: Engine,
    events: EventReceiver,
    counters: Arc<Counters>,
    /// The virtual clock: only moves forward.
    now: Instant,
    /// Datagrams the core asked to send, with their destination.
    sent: Vec<SocketAddr>,
}

impl Harness {
    fn new() -> Harness {
        let cfg = SfuConfig {
            connect_timeout: CONNECT,
            peer_timeout: PEER,
            threads: 1,
            ..SfuConfig::default()
        };
        let counters = Arc::new(Counters::default());
        let (events, rx) = events::channel();
        let ctx = ShardContext {
            index: 0,
            cfg,
            announce_ips: vec![IpAddr::from([127, 0, 0, 1])],
            counters: counters.clone(),
            events,
            owners: Arc::new(Owners::default()),
        };
        let now = Instant::now();
        let core = Engine::new(SocketAddr::from(([127, 0, 0, 1], 40000)), ctx, now).expect("core");
        Harness {
            core,
            events: rx,
            counters,
            now,
            sent: Vec::new(),
        }
    }

    /// What the driver does after every input: send the queued datagrams (here: note
    /// where they go) and report them all sent.
    fn transmit(&mut self) {
        if let Some(batch) = self.core.poll_transmit() {
            let mut f = Flushed::default();
            for (d, to) in batch.drain() {
                f.sent += 1;
                f.bytes += d.len() as u64;
                self.sent.push(to);
            }
            self.core.on_transmitted(f);
        }
    }

    fn join(&mut self, pid: u64) -> Offer {
        let (reply, mut rx) = oneshot::channel();
        let cmd = Command::Join {
            room: RoomKey(1),
            pid: ParticipantId(pid),
            can_publish: true,
            ticket: 1,
            reply,
        };
        self.core.handle_command(self.now, cmd);
        self.transmit();
        rx.try_recv().expect("replied at once").expect("joined")
    }

    fn datagram(&mut self, from: SocketAddr, data: &[u8]) {
        self.core.handle_datagram(self.now, from, data);
        self.transmit();
    }

    /// Runs every timeout the core asks for up to `until`, as the driver would on a
    /// clock that jumps straight to each deadline.
    fn advance_to(&mut self, until: Instant) {
        let mut stuck = 0;
        loop {
            let at = match self.core.poll_timeout() {
                Some(at) if at <= until => at.max(self.now),
                _ => break,
            };
            // A core that keeps asking for the same instant would spin a real driver.
            stuck = if at == self.now { stuck + 1 } else { 0 };
            assert!(stuck < 100, "the core asks for {at:?} again and again");
            self.now = at;
            self.core.handle_timeout(at);
            self.transmit();
        }
        self.now = until;
        self.core.handle_timeout(until);
        self.transmit();
    }

    fn participants(&self) -> u64 {
        self.counters.participants.load(Relaxed)
    }

    fn disconnections(&mut self) -> Vec<(ParticipantId, DisconnectReason)> {
        std::iter::from_fn(|| self.events.try_recv())
            .filter_map(|e| match e {
                SfuEvent::Disconnected { pid, reason } => Some((pid, reason)),
                _ => None,
            })
            .collect()
    }

    fn ufrag(&mut self, pid: u64) -> String {
        let idx = self.core.by_pid[&ParticipantId(pid)];
        self.core.peer_mut(idx).expect("peer").ufrag.clone()
    }
}

/// A STUN binding request naming `ufrag` as ours (RFC 8445 USERNAME "ours:theirs").
fn binding_request(ufrag: &str) -> Vec<u8> {
    let username = format!("{ufrag}:client");
    let mut body = Vec::new();
    body.extend_from_slice(&0x0006u16.to_be_bytes());
    body.extend_from_slice(&(username.len() as u16).to_be_bytes());
    body.extend_from_slice(username.as_bytes());
    while body.len() % 4 != 0 {
        body.push(0);
    }
    let mut out = vec![0x00, 0x01];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    out.extend_from_slice(&[7u8; 12]);
    out.extend_from_slice(&body);
    out
}

#[test]
fn a_peer_that_never_connects_is_removed_exactly_at_the_connect_timeout() {
    let mut h = Harness::new();
    let t0 = h.now;
    let offer = h.join(1);
    assert!(
        offer.sdp.contains("127.0.0.1 40000 typ host"),
        "{}",
        offer.sdp
    );
    assert_eq!(h.participants(), 1);

    h.advance_to(t0 + CONNECT - MS);
    assert_eq!(h.participants(), 1, "still waiting a millisecond before");
    assert_eq!(h.disconnections(), vec![]);

    h.advance_to(t0 + CONNECT);
    assert_eq!(h.participants(), 0);
    assert_eq!(
        h.disconnections(),
        vec![(ParticipantId(1), DisconnectReason::NeverConnected)]
    );
    assert_eq!(h.counters.disconnects.load(Relaxed), 1);
    assert_eq!(h.counters.ufrags.load(Relaxed), 0, "its ufrag is forgotten");
}

#[test]
fn a_connected_peer_is_removed_peer_timeout_after_its_last_datagram_and_not_before() {
    let mut h = Harness::new();
    let t0 = h.now;
    h.join(1);
    let client = SocketAddr::from(([127, 0, 0, 1], 50000));
    // A check before the answer: held for it, and its address learnt.
    h.now = t0 + Duration::from_secs(1);
    let ufrag = h.ufrag(1);
    h.datagram(client, &binding_request(&ufrag));
    assert_eq!(h.counters.early_checks_held.load(Relaxed), 1);
    assert!(
        !h.sent.contains(&client),
        "a held check is not answered yet"
    );
    // ICE and DTLS are out of this test's reach: the connection is marked connected,
    // as the real handshake would.
    let idx = h.core.by_pid[&ParticipantId(1)];
    h.core.peer_mut(idx).expect("peer").ever_connected = true;
    // Traffic from the learnt address (a DTLS record rtc cannot use) is a sign of life.
    let last = t0 + Duration::from_secs(8);
    h.advance_to(last);
    h.datagram(client, &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(h.counters.unknown_source.load(Relaxed), 0);

    h.advance_to(t0 + CONNECT + Duration::from_secs(1));
    assert_eq!(
        h.participants(),
        1,
        "a connected peer outlives the connect timeout"
    );
    h.advance_to(last + PEER - MS);
    assert_eq!(h.participants(), 1, "still within the peer timeout");
    assert_eq!(h.disconnections(), vec![]);

    h.advance_to(last + PEER);
    assert_eq!(h.participants(), 0);
    assert_eq!(
        h.disconnections(),
        vec![(ParticipantId(1), DisconnectReason::Timeout)]
    );
    assert_eq!(
        h.counters.remote_addrs.load(Relaxed),
        0,
        "its address is forgotten"
    );
}

#[test]
fn a_stalled_consumer_finds_the_rooms_latest_slots_then_every_disconnect_in_order() {
    let mut h = Harness::new();
    let t0 = h.now;
    for pid in 1..=3 {
        h.advance_to(t0 + (pid as u32) * MS);
        h.join(pid);
    }
    // Nobody connects; nobody reads the events. Two of three time out...
    h.advance_to(t0 + MS * 2 + CONNECT);
    let latest = h
        .core
        .router
        .slot_map(RoomKey(1))
        .map(|(s, p)| (s.to_vec(), p));
    let Some((slots, spare)) = latest else {
        panic!("participant 3 is still in the room");
    };
    // ...then the last, which empties the room (no slot event for an empty room).
    h.advance_to(t0 + MS * 3 + CONNECT);
    assert_eq!(h.participants(), 0);
    assert_eq!(h.events.len(), 4, "the slot changes wait as one entry");
    let events: Vec<SfuEvent> = std::iter::from_fn(|| h.events.try_recv()).collect();
    let gone = |pid| SfuEvent::Disconnected {
        pid: ParticipantId(pid),
        reason: DisconnectReason::NeverConnected,
    };
    assert_eq!(
        events,
        vec![
            SfuEvent::SlotsChanged {
                room: RoomKey(1),
                slots,
                spare
            },
            gone(1),
            gone(2),
            gone(3),
        ],
        "the latest slot map in the first one's place, then the lifecycle in order"
    );
}

#[test]
fn datagrams_from_nobody_and_truncated_ones_are_counted_and_dropped() {
    let mut h = Harness::new();
    h.join(1);
    let stranger = SocketAddr::from(([127, 0, 0, 1], 50001));
    h.datagram(stranger, &[22, 0xfe, 0xfd, 0, 0]);
    h.datagram(stranger, &binding_request("nosuchufrag"));
    assert_eq!(h.counters.unknown_source.load(Relaxed), 2);
    h.datagram(stranger, &vec![0x80; RECV_BUF]);
    assert_eq!(h.counters.malformed.load(Relaxed), 1);
    assert_eq!(h.counters.datagrams_received.load(Relaxed), 3);
    assert!(!h.sent.contains(&stranger), "nothing is sent to a stranger");
    assert_eq!(h.participants(), 1);
}
