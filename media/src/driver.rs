//! The thin tokio driver of one media thread's [`Engine`]: owns the UDP socket and the
//! clock. It feeds the core what arrives (datagrams, commands, due timers) with the time,
//! sends what the core queued in one `sendmmsg(2)` batch (see [`crate::batch`]) and reports
//! the outcome back. With the node-to-node relay on, it owns the thread's relay socket too
//! (datagrams in, to `Engine::handle_relay_datagram`; the relay batch out). The socket is
//! non-blocking and a send that would block is dropped and
//! counted, so one slow subscriber never stalls the loop.

use std::io::ErrorKind;
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::commands::CommandReceiver;
use crate::engine::{Engine, RECV_BUF};

/// Datagrams handled per wakeup before commands and timers get a turn.
const RECV_BATCH: usize = 64;

/// Runs the core until every [`crate::Sfu`] handle is dropped, then closes its connections.
pub(crate) async fn run(
    mut engine: Engine,
    socket: UdpSocket,
    relay: Option<UdpSocket>,
    mut commands: CommandReceiver,
) {
    let mut buf = vec![0u8; RECV_BUF];
    // One timer entry re-armed per iteration rather than a new one per wakeup.
    let sleep = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        if let Some(deadline) = engine.poll_timeout() {
            sleep.as_mut().reset(deadline.max(now).into());
        }
        tokio::select! {
            biased;
            cmd = commands.recv() => match cmd {
                Some(cmd) => engine.handle_command(Instant::now(), cmd),
                None => break,
            },
            ready = socket.readable() => {
                if ready.is_ok() {
                    drain_socket(&mut engine, &socket, relay.as_ref(), &mut buf);
                }
            }
            ready = relay_readable(relay.as_ref()) => {
                if let (Ok(()), Some(relay)) = (ready, &relay) {
                    drain_relay(&mut engine, &socket, relay, &mut buf);
                }
            }
            _ = &mut sleep => {}
        }
        transmit(&mut engine, &socket, relay.as_ref());
        engine.handle_timeout(Instant::now());
        transmit(&mut engine, &socket, relay.as_ref());
    }
    engine.close(Instant::now());
    transmit(&mut engine, &socket, relay.as_ref());
}

/// Readiness of the relay socket; never, without one.
async fn relay_readable(relay: Option<&UdpSocket>) -> std::io::Result<()> {
    match relay {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Reads what the relay socket holds (up to [`RECV_BATCH`]) into the core, sending each
/// relayed packet's fan-out before reading the next.
fn drain_relay(engine: &mut Engine, socket: &UdpSocket, relay: &UdpSocket, buf: &mut [u8]) {
    for _ in 0..RECV_BATCH {
        match relay.try_recv_from(buf) {
            Ok((n, from)) => {
                engine.handle_relay_datagram(Instant::now(), from, &buf[..n]);
                transmit(engine, socket, Some(relay));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => continue,
        }
    }
}

/// Reads what the socket holds (up to [`RECV_BATCH`]) into the core, sending what each
/// datagram produced (one fan-out) before reading the next.
fn drain_socket(
    engine: &mut Engine,
    socket: &UdpSocket,
    relay: Option<&UdpSocket>,
    buf: &mut [u8],
) {
    for _ in 0..RECV_BATCH {
        match socket.try_recv_from(buf) {
            Ok((n, from)) => {
                engine.handle_datagram(Instant::now(), from, &buf[..n]);
                transmit(engine, socket, relay);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // ICMP errors (port unreachable of a departed client) surface here on some
            // platforms; they concern one peer, never the socket.
            Err(_) => continue,
        }
    }
}

/// Sends the core's queued datagrams (media and relay) and tells it how that went.
fn transmit(engine: &mut Engine, socket: &UdpSocket, relay: Option<&UdpSocket>) {
    if let Some(batch) = engine.poll_transmit() {
        let flushed = batch.flush(socket);
        engine.on_transmitted(flushed);
    }
    if let (Some(batch), Some(relay)) = (engine.poll_relay_transmit(), relay) {
        let flushed = batch.flush(relay);
        engine.on_relay_transmitted(flushed);
    }
}
