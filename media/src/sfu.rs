//! The async handle to the media plane and its start-up.
//!
//! The media plane is `threads` shards, one OS thread each, each with its own UDP socket
//! (port `bind.port + i`) and its own engine: connections, timers, rooms. A room lives on one
//! shard (chosen by hashing its key), so everything about a room (its router, its fan-out)
//! stays on one thread without locks, and rooms spread over the cores.
//!
//! [`Sfu`] is a cheap `Clone` over an `Arc`; its methods send [`Command`]s to the right
//! shard over its command queue ([`crate::commands`]: bounded for requests, which get
//! [`MediaError::Busy`] when it is full, never refusing a leave or a mute) and await a
//! oneshot reply, so no lock is held across an await and the HTTP runtime never runs media
//! work. Every shard's events reach the one [`EventReceiver`] ([`crate::events`]); while
//! its backlog is at `event_backlog`, joins are refused with [`MediaError::Busy`]. Which
//! shard holds a participant is kept in a small map the handle fills at join and the shard
//! empties when it removes the participant.
//! Dropping the last handle stops the media threads (every connection is closed with a DTLS
//! close_notify).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::commands::{self, CommandReceiver, CommandSender};
use crate::engine::{Command, Engine, Reply, SlotMap};
use crate::events::{self, BacklogProbe, EventReceiver, EventSender};
use crate::stats::{Counters, JoinLatency, SfuStats};
use crate::{MediaError, Offer, ParticipantId, RoomKey, SfuConfig};

/// Handle to the running SFU. Cheap to clone; the loops run on their own OS threads.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Vec<Shard>,
    owners: Arc<Owners>,
    /// The event queue's length, for the admission of joins.
    events: BacklogProbe,
    /// Joins are refused while `events` holds this many.
    event_backlog: usize,
}

/// One media thread as seen from the handle.
struct Shard {
    commands: CommandSender,
    local_addr: SocketAddr,
    /// Where other nodes send this shard's rooms' relayed media; `None` with the relay off.
    relay_addr: Option<SocketAddr>,
    counters: Arc<Counters>,
}

/// Which shard holds each participant, with the ticket of the join that put it there. The
/// handle inserts at join and removes at leave; a shard that removes a participant on its
/// own (timeout, failure) releases the entry if it still carries that join's ticket, so a
/// leave followed at once by a new join of the same id (a reload) is never undone by the old
/// connection's late removal.
#[derive(Default)]
pub(crate) struct Owners {
    map: Mutex<HashMap<ParticipantId, (usize, u64)>>,
    next_ticket: std::sync::atomic::AtomicU64,
}

impl Owners {
    fn lock(&self) -> MutexGuard<'_, HashMap<ParticipantId, (usize, u64)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `pid` on `shard`; `None` if it is there already.
    fn claim(&self, pid: ParticipantId, shard: usize) -> Option<u64> {
        let ticket = self
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut owners = self.lock();
        if owners.contains_key(&pid) {
            return None;
        }
        owners.insert(pid, (shard, ticket));
        Some(ticket)
    }

    /// Forgets `pid` if the entry is still the one of join `ticket`.
    pub(crate) fn release(&self, pid: ParticipantId, ticket: u64) {
        let mut owners = self.lock();
        if owners.get(&pid).is_some_and(|(_, t)| *t == ticket) {
            owners.remove(&pid);
        }
    }

    fn get(&self, pid: ParticipantId) -> Option<usize> {
        self.lock().get(&pid).map(|(shard, _)| *shard)
    }

    /// The shard holding `pid` and the ticket of its join.
    fn get_with_ticket(&self, pid: ParticipantId) -> Option<(usize, u64)> {
        self.lock().get(&pid).copied()
    }

    fn take(&self, pid: ParticipantId) -> Option<usize> {
        self.lock().remove(&pid).map(|(shard, _)| shard)
    }
}

impl Sfu {
    /// Binds the sockets and starts the media threads. Events of every shard come out of the
    /// returned receiver, which should be read steadily: while `event_backlog` events wait
    /// in it, joins are refused.
    pub fn start(cfg: SfuConfig) -> Result<(Sfu, EventReceiver), MediaError> {
        validate(&cfg)?;
        let threads = cfg.threads;
        let mut sockets = Vec::with_capacity(threads);
        for i in 0..threads {
            let addr = shard_addr(cfg.bind, i)?;
            sockets.push(bind_socket(addr).map_err(MediaError::Bind)?);
        }
        let mut relay_sockets = Vec::with_capacity(threads);
        if cfg.relay.secret.is_some() {
            for i in 0..threads {
                let addr = shard_addr(cfg.relay.bind, i)?;
                relay_sockets.push(bind_socket(addr).map_err(MediaError::Bind)?);
            }
        }
        let first = sockets[0].local_addr().map_err(MediaError::Bind)?;
        let announce_ips = if cfg.announce_ips.is_empty() {
            default_announce_ips(first.ip())
        } else {
            cfg.announce_ips.clone()
        };
        let mut relay_sockets = relay_sockets.into_iter();
        let owners = Arc::new(Owners::default());
        let (event_tx, event_rx) = events::channel();
        let mut shards = Vec::with_capacity(threads);
        for (i, socket) in sockets.into_iter().enumerate() {
            let local_addr = socket.local_addr().map_err(MediaError::Bind)?;
            let relay_socket = relay_sockets.next();
            let relay_addr = match &relay_socket {
                Some(s) => {
                    let bound = s.local_addr().map_err(MediaError::Bind)?;
                    Some(advertised(bound, &announce_ips))
                }
                None => None,
            };
            let counters = Arc::new(Counters::default());
            let (cmd_tx, cmd_rx) = commands::channel(cfg.command_capacity);
            let ctx = ShardContext {
                index: i,
                cfg: cfg.clone(),
                announce_ips: announce_ips.clone(),
                counters: counters.clone(),
                events: event_tx.clone(),
                owners: owners.clone(),
            };
            spawn_shard(socket, relay_socket, ctx, cmd_rx)?;
            shards.push(Shard {
                commands: cmd_tx,
                local_addr,
                relay_addr,
                counters,
            });
        }
        let addrs: Vec<String> = shards.iter().map(|s| s.local_addr.to_string()).collect();
        tracing::info!(threads, sockets = %addrs.join(","), "media SFU listening");
        let relays: Vec<String> = shards
            .iter()
            .filter_map(|s| s.relay_addr)
            .map(|a| a.to_string())
            .collect();
        if !relays.is_empty() {
            tracing::info!(sockets = %relays.join(","), "media relay listening");
        }
        let inner = Inner {
            shards,
            owners,
            events: event_tx.probe(),
            event_backlog: cfg.event_backlog,
        };
        Ok((
            Sfu {
                inner: Arc::new(inner),
            },
            event_rx,
        ))
    }

    /// The bound address of the first media socket (the only one with one thread).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.shards[0].local_addr
    }

    /// The bound addresses of every media thread's socket, in shard order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.shards.iter().map(|s| s.local_addr).collect()
    }

    /// The shard that holds `room`: a hash of its key, so a room needs no placement state.
    fn shard_of_room(&self, room: RoomKey) -> usize {
        let n = self.inner.shards.len() as u64;
        // Fibonacci hashing: consecutive keys spread evenly.
        ((room.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % n) as usize
    }

    /// Creates the participant's peer connection; returns the server's SDP offer. Layout is
    /// fixed: the microphone m-line (recvonly on the server when `can_publish`, inactive
    /// otherwise) then `slots` sendonly audio m-lines. `Busy` while the event backlog is
    /// full (signaling is not keeping up) or the shard's command queue is.
    pub async fn join(
        &self,
        room: RoomKey,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<Offer, MediaError> {
        let shard = self.shard_of_room(room);
        if self.inner.events.backlog() >= self.inner.event_backlog {
            self.count_busy(shard);
            return Err(MediaError::Busy("the event backlog is full"));
        }
        let ticket = self
            .inner
            .owners
            .claim(pid, shard)
            .ok_or(MediaError::AlreadyJoined(pid))?;
        let offer = self
            .request(shard, |reply| Command::Join {
                room,
                pid,
                can_publish,
                ticket,
                reply,
            })
            .await;
        if offer.is_err() {
            self.inner.owners.release(pid, ticket);
        }
        offer
    }

    /// The client's SDP answer to the last offer.
    pub async fn accept_answer(&self, pid: ParticipantId, sdp: String) -> Result<(), MediaError> {
        let shard = self.shard_of(pid)?;
        self.request(shard, |reply| Command::Answer { pid, sdp, reply })
            .await
    }

    /// Role change: renegotiates; returns a new offer the client must answer.
    pub async fn set_can_publish(
        &self,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<Offer, MediaError> {
        let shard = self.shard_of(pid)?;
        self.request(shard, |reply| Command::SetCanPublish {
            pid,
            can_publish,
            reply,
        })
        .await
    }

    /// ICE restart for a reconnecting client: a new offer with new ICE credentials.
    pub async fn restart_ice(&self, pid: ParticipantId) -> Result<Offer, MediaError> {
        let shard = self.shard_of(pid)?;
        self.request(shard, |reply| Command::RestartIce { pid, reply })
            .await
    }

    /// Server-enforced mute: a muted publisher's packets are not forwarded. Never refused:
    /// the shard applies the latest state set, in order with the other commands.
    pub fn set_muted(&self, pid: ParticipantId, muted: bool) {
        if let Some((shard, ticket)) = self.inner.owners.get_with_ticket(pid) {
            self.inner.shards[shard]
                .commands
                .set_muted(pid, ticket, muted);
        }
    }

    /// Removes the participant and everything it owns. Unknown ids are ignored. Never
    /// refused, even when the shard's command queue is full.
    pub fn leave(&self, pid: ParticipantId) {
        // Forgotten here, at once, so the same id can join again right away; the shard
        // processes the leave before any later join it is sent.
        if let Some(shard) = self.inner.owners.take(pid) {
            self.inner.shards[shard].commands.leave(pid);
        }
    }

    /// A room's current slot map and spare (what the last `SlotsChanged` said), e.g. for a
    /// participant that just joined: a listener joining changes nothing, so no event is
    /// emitted for it. `None` when the room has no participants.
    pub async fn slot_map(&self, room: RoomKey) -> Result<Option<SlotMap>, MediaError> {
        let shard = self.shard_of_room(room);
        self.request(shard, |reply| Command::SlotMap { room, reply })
            .await
    }

    /// The address other nodes send `room`'s relayed media to: the relay socket of the
    /// media thread that holds the room (its bound IP, or the first announced IP when it is
    /// bound to a wildcard). `None` when the relay is off (no secret).
    pub fn relay_local_addr(&self, room: RoomKey) -> Option<SocketAddr> {
        self.inner.shards[self.shard_of_room(room)].relay_addr
    }

    /// The relay addresses of every media thread, in shard order (empty with the relay off).
    pub fn relay_local_addrs(&self) -> Vec<SocketAddr> {
        self.inner
            .shards
            .iter()
            .filter_map(|s| s.relay_addr)
            .collect()
    }

    /// From now on, packets of `room`'s local publishers that hold one of its slots (its
    /// top speakers) are sent, one copy each, to the node whose relay address for the room
    /// is `node_addr` (its [`Sfu::relay_local_addr`]). Idempotent; ignored with the relay
    /// off, and beyond 64 nodes per room. [`MediaError::Busy`] when the media thread's
    /// command queue is full.
    pub fn relay_add_subscriber(
        &self,
        room: RoomKey,
        node_addr: SocketAddr,
    ) -> Result<(), MediaError> {
        let shard = self.shard_of_room(room);
        self.inner.shards[shard]
            .commands
            .request(Command::RelayAddSubscriber {
                room,
                node: node_addr,
            })
    }

    /// Stops sending `room` to `node_addr`. Unknown pairs are ignored. Like
    /// [`Sfu::relay_add_subscriber`], fails with [`MediaError::Busy`] when the media thread's
    /// command queue is full (the caller retries on its next reconciliation).
    pub fn relay_remove_subscriber(
        &self,
        room: RoomKey,
        node_addr: SocketAddr,
    ) -> Result<(), MediaError> {
        let shard = self.shard_of_room(room);
        self.inner.shards[shard]
            .commands
            .request(Command::RelayRemoveSubscriber {
                room,
                node: node_addr,
            })
    }

    /// Join latency so far (all media threads): peer connection created to first ICE+DTLS
    /// connection.
    pub fn join_latency(&self) -> JoinLatency {
        let mut shards = self.inner.shards.iter();
        let mut total = shards
            .next()
            .map(|s| s.counters.join.snapshot())
            .unwrap_or_else(|| Counters::default().join.snapshot());
        for s in shards {
            total.merge(&s.counters.join.snapshot());
        }
        total
    }

    /// Counters and gauges of all media threads together, read without stopping them.
    pub fn stats(&self) -> SfuStats {
        let mut total = SfuStats::default();
        for s in &self.inner.shards {
            total.add(&s.counters.snapshot());
        }
        total
    }

    /// Counters and gauges of each media thread, in shard order.
    pub fn shard_stats(&self) -> Vec<SfuStats> {
        self.inner
            .shards
            .iter()
            .map(|s| s.counters.snapshot())
            .collect()
    }

    fn shard_of(&self, pid: ParticipantId) -> Result<usize, MediaError> {
        self.inner
            .owners
            .get(pid)
            .ok_or(MediaError::UnknownParticipant(pid))
    }

    async fn request<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, MediaError> {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.inner.shards[shard].commands.request(make(tx)) {
            if matches!(e, MediaError::Busy(_)) {
                self.count_busy(shard);
            }
            return Err(e);
        }
        rx.await.map_err(|_| MediaError::Stopped)?
    }

    fn count_busy(&self, shard: usize) {
        self.inner.shards[shard]
            .counters
            .busy_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What one media thread is started with.
pub(crate) struct ShardContext {
    pub(crate) index: usize,
    pub(crate) cfg: SfuConfig,
    pub(crate) announce_ips: Vec<IpAddr>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) events: EventSender,
    pub(crate) owners: Arc<Owners>,
}

/// Starts one media thread (a current-thread runtime driving one engine) and waits until
/// its engine is up.
fn spawn_shard(
    socket: StdUdpSocket,
    relay_socket: Option<StdUdpSocket>,
    ctx: ShardContext,
    commands: CommandReceiver,
) -> Result<(), MediaError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("chorus-media-{}", ctx.index))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(MediaError::Config(format!(
                        "cannot build the media runtime: {e}"
                    ))));
                    return;
                }
            };
            runtime.block_on(async move {
                let relay = relay_socket
                    .map(tokio::net::UdpSocket::from_std)
                    .transpose()
                    .map_err(MediaError::Bind);
                let started = tokio::net::UdpSocket::from_std(socket)
                    .and_then(|socket| Ok((socket.local_addr()?, socket)))
                    .map_err(MediaError::Bind)
                    .and_then(|(local, socket)| {
                        Ok((Engine::new(local, ctx, Instant::now())?, socket, relay?))
                    });
                match started {
                    Ok((engine, socket, relay)) => {
                        let _ = ready_tx.send(Ok(()));
                        crate::driver::run(engine, socket, relay, commands).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| MediaError::Config(format!("cannot spawn a media thread: {e}")))?;
    ready_rx.recv().map_err(|_| MediaError::Stopped)?
}

/// Shard `i`'s bind address: the configured port plus `i`, or an ephemeral port for each
/// when the configured port is 0.
fn shard_addr(bind: SocketAddr, i: usize) -> Result<SocketAddr, MediaError> {
    if bind.port() == 0 {
        return Ok(bind);
    }
    let port = u16::try_from(i)
        .ok()
        .and_then(|i| bind.port().checked_add(i))
        .ok_or_else(|| {
            MediaError::Config(format!(
                "media port {} + {i} threads is past 65535",
                bind.port()
            ))
        })?;
    Ok(SocketAddr::new(bind.ip(), port))
}

/// Media threads at most (one per core is the useful number).
pub const MAX_THREADS: usize = 64;

/// Largest `command_capacity` and `event_backlog` accepted (a bound that does not bound
/// anything is a configuration mistake).
pub const MAX_QUEUE: usize = 1 << 20;

/// Kernel socket buffers asked for (the kernel caps them at net.core.[rw]mem_max): every
/// participant's traffic shares this one socket, so a burst (one packet fanned out to a
/// large room) must fit in the send buffer, or the excess is dropped as would-block.
const SOCKET_BUFFER: usize = 4 << 20;

fn bind_socket(addr: SocketAddr) -> std::io::Result<StdUdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, it only drops sooner under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn validate(cfg: &SfuConfig) -> Result<(), MediaError> {
    if !(1..=MAX_THREADS).contains(&cfg.threads) {
        return Err(MediaError::Config(format!(
            "threads must be 1..={MAX_THREADS}, got {}",
            cfg.threads
        )));
    }
    if !(1..=16).contains(&cfg.slots) {
        return Err(MediaError::Config(format!(
            "slots must be 1..=16, got {}",
            cfg.slots
        )));
    }
    if !(1..=MAX_QUEUE).contains(&cfg.command_capacity) {
        return Err(MediaError::Config(format!(
            "command_capacity must be 1..={MAX_QUEUE}, got {}",
            cfg.command_capacity
        )));
    }
    if !(1..=MAX_QUEUE).contains(&cfg.event_backlog) {
        return Err(MediaError::Config(format!(
            "event_backlog must be 1..={MAX_QUEUE}, got {}",
            cfg.event_backlog
        )));
    }
    let interval = cfg.speaker_interval;
    if interval < Duration::from_millis(200) || interval > Duration::from_millis(500) {
        return Err(MediaError::Config(format!(
            "speaker_interval must be 200..=500 ms, got {interval:?}"
        )));
    }
    if cfg.relay.remote_timeout < Duration::from_millis(500) {
        return Err(MediaError::Config(
            "relay remote_timeout must be at least 500 ms".into(),
        ));
    }
    if cfg.peer_timeout < Duration::from_millis(500)
        || cfg.connect_timeout < Duration::from_millis(500)
    {
        return Err(MediaError::Config(
            "peer_timeout and connect_timeout must be at least 500 ms".into(),
        ));
    }
    Ok(())
}

/// The address to give other nodes for a socket bound at `bound`: itself, or with a
/// wildcard IP the first announced one.
fn advertised(bound: SocketAddr, announce_ips: &[IpAddr]) -> SocketAddr {
    match announce_ips.first() {
        Some(ip) if bound.ip().is_unspecified() => SocketAddr::new(*ip, bound.port()),
        _ => bound,
    }
}

/// What is announced when `announce_ips` is empty: the bound IP if specific; when bound
/// to a wildcard, every usable interface address of the bound family (see
/// [`announceable`]), the one that routes outwards first; loopback (with a warning) if
/// there is none.
fn default_announce_ips(bound: IpAddr) -> Vec<IpAddr> {
    if !bound.is_unspecified() {
        return vec![bound];
    }
    let interfaces = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
            .filter_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing network interfaces failed");
            Vec::new()
        }
    };
    let ips = announceable(bound, routed_ip(bound), &interfaces);
    if ips.is_empty() {
        let loopback = if bound.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        };
        tracing::warn!(
            %loopback,
            "no usable interface address found; announcing loopback (set announce_ips for real clients)"
        );
        return vec![loopback];
    }
    ips
}

/// The address of the interface that routes outwards, found by "connecting" a UDP socket
/// of the bound family to a documentation address (this sends nothing).
fn routed_ip(bound: IpAddr) -> Option<IpAddr> {
    let (local, remote): (SocketAddr, SocketAddr) = if bound.is_ipv4() {
        (
            (Ipv4Addr::UNSPECIFIED, 0).into(),
            (Ipv4Addr::new(192, 0, 2, 1), 9).into(),
        )
    } else {
        (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into(),
        )
    };
    let s = StdUdpSocket::bind(local).ok()?;
    s.connect(remote).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// The interface addresses worth announcing for a socket bound to the wildcard `bound`:
/// those of the socket's own family (an IPv4 socket cannot answer on IPv6, and `rtc`
/// takes the first announced address as the local one of every datagram), neither
/// loopback, unspecified, multicast nor link-local; the routed one first, then the rest
/// in interface order, without repeats.
fn announceable(bound: IpAddr, routed: Option<IpAddr>, interfaces: &[IpAddr]) -> Vec<IpAddr> {
    let usable = |ip: &IpAddr| {
        ip.is_ipv4() == bound.is_ipv4()
            && !ip.is_loopback()
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && match ip {
                IpAddr::V4(v4) => !v4.is_link_local(),
                IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            }
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in routed.iter().chain(interfaces) {
        if usable(ip) && !out.contains(ip) {
            out.push(*ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_limits_are_enforced() {
        let ok = SfuConfig::default();
        assert!(validate(&ok).is_ok());
        let bad = SfuConfig {
            slots: 0,
            ..SfuConfig::default()
        };
        assert!(matches!(validate(&bad), Err(MediaError::Config(_))));
        let bad = SfuConfig {
            speaker_interval: Duration::from_millis(100),
            ..SfuConfig::default()
        };
        assert!(matches!(validate(&bad), Err(MediaError::Config(_))));
        for (command_capacity, event_backlog) in [(0, 16), (16, 0), (MAX_QUEUE + 1, 16)] {
            let bad = SfuConfig {
                command_capacity,
                event_backlog,
                ..SfuConfig::default()
            };
            assert!(matches!(validate(&bad), Err(MediaError::Config(_))));
        }
    }

    /// A handle over one shard whose media thread never runs: its queue only fills.
    fn stalled_handle(capacity: usize) -> (Sfu, CommandReceiver, EventReceiver) {
        let (commands, receiver) = commands::channel(capacity);
        let (events, event_rx) = events::channel();
        let inner = Inner {
            shards: vec![Shard {
                commands,
                local_addr: SocketAddr::from(([127, 0, 0, 1], 9)),
                relay_addr: None,
                counters: Arc::new(Counters::default()),
            }],
            owners: Arc::new(Owners::default()),
            events: events.probe(),
            event_backlog: 16,
        };
        (
            Sfu {
                inner: Arc::new(inner),
            },
            receiver,
            event_rx,
        )
    }

    #[tokio::test]
    async fn requests_to_a_full_shard_are_busy_but_leave_and_mute_still_go() {
        let (sfu, mut queue, _events) = stalled_handle(2);
        let room = RoomKey(1);
        for n in 1..=2 {
            // Polled once: the join is queued, then its wait for a reply is given up.
            let join = sfu.join(room, ParticipantId(n), true);
            let waited = tokio::time::timeout(Duration::ZERO, join).await;
            assert!(waited.is_err(), "no reply from a stalled shard");
        }
        let refused = sfu.join(room, ParticipantId(3), true).await;
        assert!(matches!(refused, Err(MediaError::Busy(_))), "{refused:?}");
        assert!(
            sfu.inner.owners.get(ParticipantId(3)).is_none(),
            "a refused join leaves no claim behind"
        );
        assert_eq!(sfu.stats().busy_refusals, 1, "the refusal is counted");
        let refused = sfu.slot_map(room).await;
        assert!(matches!(refused, Err(MediaError::Busy(_))), "{refused:?}");
        sfu.set_muted(ParticipantId(1), true);
        sfu.leave(ParticipantId(1));
        let seen: Vec<String> = std::iter::from_fn(|| queue.try_recv())
            .map(|cmd| match cmd {
                Command::Join { pid, .. } => format!("join {}", pid.0),
                Command::SetMuted { pid, muted, .. } => format!("mute {} {muted}", pid.0),
                Command::Leave { pid } => format!("leave {}", pid.0),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(seen, ["join 1", "join 2", "mute 1 true", "leave 1"]);
        let queued = tokio::time::timeout(Duration::ZERO, sfu.slot_map(room)).await;
        assert!(queued.is_err(), "taken off the queue, requests fit again");
    }

    #[test]
    fn handle_is_shareable_across_tasks() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Sfu>();
    }

    #[test]
    fn shards_take_consecutive_ports_or_ephemeral_ones() -> Result<(), MediaError> {
        let base = SocketAddr::from(([127, 0, 0, 1], 7882));
        assert_eq!(shard_addr(base, 0)?.port(), 7882);
        assert_eq!(shard_addr(base, 3)?.port(), 7885);
        let eph = SocketAddr::from(([127, 0, 0, 1], 0));
        assert_eq!(shard_addr(eph, 5)?.port(), 0);
        let top = SocketAddr::from(([127, 0, 0, 1], 65535));
        assert!(matches!(shard_addr(top, 1), Err(MediaError::Config(_))));
        let bad = SfuConfig {
            threads: 0,
            ..SfuConfig::default()
        };
        assert!(matches!(validate(&bad), Err(MediaError::Config(_))));
        Ok(())
    }

    #[test]
    fn specific_bind_ip_is_announced() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(default_announce_ips(ip), vec![ip]);
    }

    #[test]
    fn wildcard_announces_every_usable_address_of_its_family_routed_first() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let interfaces = [
            ip("127.0.0.1"),
            ip("10.0.0.5"),
            ip("::1"),
            ip("fe80::1"),
            ip("2001:db8::7"),
            ip("169.254.3.4"),
            ip("192.168.1.20"),
            ip("10.0.0.5"),
        ];
        let v4 = ip("0.0.0.0");
        assert_eq!(
            announceable(v4, Some(ip("192.168.1.20")), &interfaces),
            vec![ip("192.168.1.20"), ip("10.0.0.5")],
            "routed first, then interface order; no loopback, link-local, IPv6 or repeats"
        );
        assert_eq!(
            announceable(v4, None, &interfaces),
            vec![ip("10.0.0.5"), ip("192.168.1.20")]
        );
        assert_eq!(
            announceable(v4, Some(ip("127.0.0.1")), &[ip("127.0.0.1")]),
            Vec::<IpAddr>::new(),
            "loopback only: nothing usable (the caller falls back to loopback)"
        );
        assert_eq!(
            announceable(ip("::"), Some(ip("2001:db8::7")), &interfaces),
            vec![ip("2001:db8::7")]
        );
    }

    #[test]
    fn wildcard_bind_announces_this_hosts_addresses_or_loopback() {
        let ips = default_announce_ips(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(!ips.is_empty());
        assert!(ips.iter().all(|ip| ip.is_ipv4()), "{ips:?}");
        if ips != [IpAddr::V4(Ipv4Addr::LOCALHOST)] {
            assert!(ips.iter().all(|ip| !ip.is_loopback()), "{ips:?}");
        }
    }
}
