//! The thin tokio driver of one media thread's [`Engine`]: owns the UDP socket and the
//! clock. It feeds the core what arrives (datagrams, commands, due timers) with the time,
//! sends what the core queued in one `sendmmsg(2)` batch (see [`crate::batch`]) and reports
//! the outcome back. The socket is non-blocking and a send that would block is dropped and
//! counted, so one slow subscriber never stalls the loop.

use std::io::ErrorKind;
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::commands::CommandReceiver;
use crate::engine::{Engine, RECV_BUF};

/// Datagrams handled per wakeup before commands and timers get a turn.
const RECV_BATCH: usize = 64;

/// Runs the core until every [`crate::Sfu`] handle is dropped, then closes its connections.
pub(crate) async fn run(mut engine: Engine, socket: UdpSocket, mut commands: CommandReceiver) {
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
                    drain_socket(&mut engine, &socket, &mut buf);
                }
            }
            _ = &mut sleep => {}
        }
        transmit(&mut engine, &socket);
        engine.handle_timeout(Instant::now());
        transmit(&mut engine, &socket);
    }
    engine.close(Instant::now());
    transmit(&mut engine, &socket);
}

/// Reads what the socket holds (up to [`RECV_BATCH`]) into the core, sending what each
/// datagram produced (one fan-out) before reading the next.
fn drain_socket(engine: &mut Engine, socket: &UdpSocket, buf: &mut [u8]) {
    for _ in 0..RECV_BATCH {
        match socket.try_recv_from(buf) {
            Ok((n, from)) => {
                engine.handle_datagram(Instant::now(), from, &buf[..n]);
                transmit(engine, socket);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // ICMP errors (port unreachable of a departed client) surface here on some
            // platforms; they concern one peer, never the socket.
            Err(_) => continue,
        }
    }
}

/// Sends the core's queued datagrams and tells it how that went.
fn transmit(engine: &mut Engine, socket: &UdpSocket) {
    if let Some(batch) = engine.poll_transmit() {
        let flushed = batch.flush(socket);
        engine.on_transmitted(flushed);
    }
}
