//! The async handle to the media plane and its start-up.
//!
//! [`Sfu`] is a cheap `Clone` over an `Arc`; its methods send [`Command`]s to the media thread
//! over an unbounded channel and await a oneshot reply, so no lock is held across an await
//! and the HTTP runtime never runs media work. Dropping the last handle stops the media thread
//! (every connection is closed with a DTLS close_notify).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::engine::{Command, Engine, Reply, SlotMap};
use crate::stats::{Counters, JoinLatency, SfuStats};
use crate::{MediaError, Offer, ParticipantId, RoomKey, SfuConfig, SfuEvent};

/// Handle to the running SFU. Cheap to clone; the loop runs on its own OS thread.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<Inner>,
}

struct Inner {
    commands: UnboundedSender<Command>,
    local_addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Sfu {
    /// Binds the socket and starts the media thread. Events come out of the returned receiver.
    pub fn start(cfg: SfuConfig) -> Result<(Sfu, UnboundedReceiver<SfuEvent>), MediaError> {
        validate(&cfg)?;
        let socket = bind_socket(cfg.bind).map_err(MediaError::Bind)?;
        let local_addr = socket.local_addr().map_err(MediaError::Bind)?;
        let announce_ips = if cfg.announce_ips.is_empty() {
            default_announce_ips(local_addr.ip())
        } else {
            cfg.announce_ips.clone()
        };
        let counters = Arc::new(Counters::default());
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name("chorus-media".into())
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
                    let engine = tokio::net::UdpSocket::from_std(socket)
                        .map_err(MediaError::Bind)
                        .and_then(|socket| {
                            Engine::new(cfg, socket, announce_ips, thread_counters, event_tx)
                        });
                    match engine {
                        Ok(engine) => {
                            let _ = ready_tx.send(Ok(()));
                            engine.run(cmd_rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| MediaError::Config(format!("cannot spawn the media thread: {e}")))?;
        ready_rx.recv().map_err(|_| MediaError::Stopped)??;
        tracing::info!(%local_addr, "media SFU listening");
        Ok((
            Sfu {
                inner: Arc::new(Inner {
                    commands: cmd_tx,
                    local_addr,
                    counters,
                }),
            },
            event_rx,
        ))
    }

    /// The bound address of the shared media socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Creates the participant's peer connection; returns the server's SDP offer. Layout is
    /// fixed: the microphone m-line (recvonly on the server when `can_publish`, inactive
    /// otherwise) then `slots` sendonly audio m-lines.
    pub async fn join(
        &self,
        room: RoomKey,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<Offer, MediaError> {
        self.request(|reply| Command::Join {
            room,
            pid,
            can_publish,
            reply,
        })
        .await
    }

    /// The client's SDP answer to the last offer.
    pub async fn accept_answer(&self, pid: ParticipantId, sdp: String) -> Result<(), MediaError> {
        self.request(|reply| Command::Answer { pid, sdp, reply })
            .await
    }

    /// Role change: renegotiates; returns a new offer the client must answer.
    pub async fn set_can_publish(
        &self,
        pid: ParticipantId,
        can_publish: bool,
    ) -> Result<Offer, MediaError> {
        self.request(|reply| Command::SetCanPublish {
            pid,
            can_publish,
            reply,
        })
        .await
    }

    /// ICE restart for a reconnecting client: a new offer with new ICE credentials.
    pub async fn restart_ice(&self, pid: ParticipantId) -> Result<Offer, MediaError> {
        self.request(|reply| Command::RestartIce { pid, reply })
            .await
    }

    /// Server-enforced mute: a muted publisher's packets are not forwarded.
    pub fn set_muted(&self, pid: ParticipantId, muted: bool) {
        let _ = self.inner.commands.send(Command::SetMuted { pid, muted });
    }

    /// Removes the participant and everything it owns. Unknown ids are ignored.
    pub fn leave(&self, pid: ParticipantId) {
        let _ = self.inner.commands.send(Command::Leave { pid });
    }

    /// A room's current slot map and spare (what the last `SlotsChanged` said), e.g. for a
    /// participant that just joined: a listener joining changes nothing, so no event is
    /// emitted for it. `None` when the room has no participants.
    pub async fn slot_map(&self, room: RoomKey) -> Result<Option<SlotMap>, MediaError> {
        self.request(|reply| Command::SlotMap { room, reply }).await
    }

    /// Counters and gauges, read without stopping the loop.
    /// Join latency so far: peer connection created to first ICE+DTLS connection.
    pub fn join_latency(&self) -> JoinLatency {
        self.inner.counters.join.snapshot()
    }

    pub fn stats(&self) -> SfuStats {
        self.inner.counters.snapshot()
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, MediaError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)?
    }
}

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
    if !(1..=16).contains(&cfg.slots) {
        return Err(MediaError::Config(format!(
            "slots must be 1..=16, got {}",
            cfg.slots
        )));
    }
    let interval = cfg.speaker_interval;
    if interval < Duration::from_millis(200) || interval > Duration::from_millis(500) {
        return Err(MediaError::Config(format!(
            "speaker_interval must be 200..=500 ms, got {interval:?}"
        )));
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

/// The bound IP if specific; otherwise the address of the interface that routes outwards
/// (found by "connecting" a UDP socket, which sends nothing), falling back to loopback.
fn default_announce_ips(bound: IpAddr) -> Vec<IpAddr> {
    if !bound.is_unspecified() {
        return vec![bound];
    }
    let probe = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(addr) if !addr.ip().is_unspecified() && !addr.ip().is_loopback() => vec![addr.ip()],
        _ => {
            tracing::warn!(
                "no routable interface found; announcing 127.0.0.1 (set announce_ips for real clients)"
            );
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        }
    }
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
    }

    #[test]
    fn handle_is_shareable_across_tasks() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Sfu>();
    }

    #[test]
    fn specific_bind_ip_is_announced() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(default_announce_ips(ip), vec![ip]);
    }
}
