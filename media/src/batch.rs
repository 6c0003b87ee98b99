//! Every datagram the media thread sends goes through here: the datagrams one incoming
//! packet fans out into leave in one `sendmmsg(2)` system call per [`MAX_BATCH`]
//! instead of one `sendto(2)` each (Linux; elsewhere one `send_to` per datagram). Like single sends, a datagram the kernel
//! cannot take right now is dropped and counted, never waited for: late audio is
//! useless, and the media thread must not stall.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::net::UdpSocket;

/// Datagrams per system call (the kernel's own limit, UIO_MAXIOV, is 1024).
pub(crate) const MAX_BATCH: usize = 64;

/// What one flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    pub(crate) sent: u64,
    pub(crate) bytes: u64,
    /// Dropped because the socket's send buffer was full.
    pub(crate) would_block: u64,
    /// Refused for another reason (e.g. an unreachable address).
    pub(crate) errors: u64,
}

/// Datagrams queued for one flush.
#[derive(Default)]
pub(crate) struct SendBatch {
    queued: Vec<(BytesMut, SocketAddr)>,
}

impl SendBatch {
    pub(crate) fn push(&mut self, datagram: BytesMut, to: SocketAddr) {
        self.queued.push((datagram, to));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queued.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Takes everything queued, without sending (for a core driven without a socket).
    #[cfg(test)]
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, (BytesMut, SocketAddr)> {
        self.queued.drain(..)
    }

    /// Sends everything queued and empties the batch.
    pub(crate) fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut out = Flushed::default();
        for chunk in self.queued.chunks(MAX_BATCH) {
            send_chunk(socket, chunk, &mut out);
        }
        self.queued.clear();
        out
    }
}

#[cfg(target_os = "linux")]
fn send_chunk(socket: &UdpSocket, chunk: &[(BytesMut, SocketAddr)], out: &mut Flushed) {
    use nix::errno::Errno;
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    let fd = socket.as_raw_fd();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
    let mut rest = chunk;
    while !rest.is_empty() {
        let slices: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|(b, _)| [IoSlice::new(b)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = rest
            .iter()
            .map(|(_, a)| Some(SockaddrStorage::from(*a)))
            .collect();
        let result =
            sendmmsg(fd, &mut headers, &slices, &addrs, [], MsgFlags::empty()).map(Iterator::count);
        match result {
            Ok(n) if n > 0 => {
                out.sent += n as u64;
                out.bytes += rest[..n].iter().map(|(b, _)| b.len() as u64).sum::<u64>();
                rest = &rest[n..];
            }
            // The send buffer is full: the rest would fail the same way now.
            Ok(_) | Err(Errno::EAGAIN) => {
                out.would_block += rest.len() as u64;
                return;
            }
            Err(Errno::EINTR) => {}
            // The first datagram was refused (the kernel reports an error only when
            // nothing was sent): drop it, go on with the others.
            Err(_) => {
                out.errors += 1;
                rest = &rest[1..];
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn send_chunk(socket: &UdpSocket, chunk: &[(BytesMut, SocketAddr)], out: &mut Flushed) {
    for (datagram, to) in chunk {
        match socket.try_send_to(datagram, *to) {
            Ok(n) => {
                out.sent += 1;
                out.bytes += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => out.would_block += 1,
            Err(_) => out.errors += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_batch_larger_than_one_call_arrives_whole_and_in_order() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (a_addr, b_addr) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
        let mut batch = SendBatch::default();
        let n = MAX_BATCH + 10;
        for i in 0..n {
            let to = if i % 2 == 0 { a_addr } else { b_addr };
            batch.push(BytesMut::from(format!("datagram {i}").as_bytes()), to);
        }
        assert_eq!(batch.len(), n);
        let done = batch.flush(&tx);
        assert_eq!(batch.len(), 0);
        assert_eq!(done.sent, n as u64, "{done:?}");
        assert_eq!((done.would_block, done.errors), (0, 0));
        let mut buf = [0u8; 64];
        for (sock, first) in [(&a, 0), (&b, 1)] {
            for i in (first..n).step_by(2) {
                let (len, from) =
                    tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                        .await
                        .expect("datagram in time")
                        .expect("recv");
                assert_eq!(from, tx.local_addr().expect("addr"));
                assert_eq!(&buf[..len], format!("datagram {i}").as_bytes());
            }
        }
    }

    #[tokio::test]
    async fn an_unsendable_datagram_is_counted_and_the_rest_still_go() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut batch = SendBatch::default();
        // Port 0 is not a valid destination: the kernel refuses that one datagram.
        batch.push(
            BytesMut::from(&b"lost"[..]),
            "127.0.0.1:0".parse().expect("addr"),
        );
        batch.push(BytesMut::from(&b"kept"[..]), rx.local_addr().expect("addr"));
        let done = batch.flush(&tx);
        assert_eq!((done.sent, done.errors), (1, 1), "{done:?}");
        let mut buf = [0u8; 16];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), rx.recv_from(&mut buf))
            .await
            .expect("datagram in time")
            .expect("recv");
        assert_eq!(&buf[..len], b"kept");
    }
}
