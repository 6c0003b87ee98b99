//! Every datagram the media thread sends goes through here: the datagrams one incoming
//! packet fans out into leave in one `sendmmsg(2)` system call per [`MAX_BATCH`]
//! instead of one `sendto(2)` each (Linux; elsewhere one `send_to` per datagram). Like single sends, a datagram the kernel
//! cannot take right now is dropped and counted, never waited for: late audio is
//! useless, and the media thread must not stall.

use std::net::SocketAddr;
use std::ops::Range;

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

/// Datagrams queued for one flush, written back to back into one buffer: a fan-out of one
/// packet to a thousand listeners costs no allocation per copy (the buffer keeps its
/// capacity from one flush to the next; it is per media thread, not per connection).
#[derive(Default)]
pub(crate) struct SendBatch {
    /// The queued datagrams' bytes, back to back.
    buf: Vec<u8>,
    /// Where each queued datagram lies in `buf`, and where it goes.
    queued: Vec<(Range<usize>, SocketAddr)>,
}

impl SendBatch {
    /// Queues a copy of `datagram`.
    pub(crate) fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        let start = self.buf.len();
        self.buf.extend_from_slice(datagram);
        self.queued.push((start..self.buf.len(), to));
    }

    /// Queues the datagram `write` appends to the batch's buffer, addressed to the address
    /// it returns. `Ok(None)` or an error queues nothing (whatever `write` appended is
    /// dropped); says whether a datagram was queued.
    pub(crate) fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<Option<SocketAddr>, E>,
    ) -> Result<bool, E> {
        let start = self.buf.len();
        match write(&mut self.buf) {
            Ok(Some(to)) if self.buf.len() > start => {
                self.queued.push((start..self.buf.len(), to));
                Ok(true)
            }
            Ok(_) => {
                self.buf.truncate(start);
                Ok(false)
            }
            Err(e) => {
                self.buf.truncate(start);
                Err(e)
            }
        }
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
    pub(crate) fn drain(&mut self) -> Vec<(Vec<u8>, SocketAddr)> {
        let out = self
            .queued
            .drain(..)
            .map(|(range, to)| (self.buf[range].to_vec(), to))
            .collect();
        self.buf.clear();
        out
    }

    /// Sends everything queued and empties the batch.
    pub(crate) fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut out = Flushed::default();
        for chunk in self.queued.chunks(MAX_BATCH) {
            send_chunk(socket, &self.buf, chunk, &mut out);
        }
        self.queued.clear();
        self.buf.clear();
        out
    }
}

#[cfg(target_os = "linux")]
fn send_chunk(
    socket: &UdpSocket,
    buf: &[u8],
    chunk: &[(Range<usize>, SocketAddr)],
    out: &mut Flushed,
) {
    use nix::errno::Errno;
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    let fd = socket.as_raw_fd();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
    let mut rest = chunk;
    while !rest.is_empty() {
        let slices: Vec<[IoSlice<'_>; 1]> = rest
            .iter()
            .map(|(r, _)| [IoSlice::new(&buf[r.clone()])])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = rest
            .iter()
            .map(|(_, a)| Some(SockaddrStorage::from(*a)))
            .collect();
        let result =
            sendmmsg(fd, &mut headers, &slices, &addrs, [], MsgFlags::empty()).map(Iterator::count);
        match result {
            Ok(n) if n > 0 => {
                out.sent += n as u64;
                out.bytes += rest[..n].iter().map(|(r, _)| r.len() as u64).sum::<u64>();
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
fn send_chunk(
    socket: &UdpSocket,
    buf: &[u8],
    chunk: &[(Range<usize>, SocketAddr)],
    out: &mut Flushed,
) {
    for (range, to) in chunk {
        match socket.try_send_to(&buf[range.clone()], *to) {
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
            batch.push(format!("datagram {i}").as_bytes(), to);
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

    #[test]
    fn a_write_that_fails_or_declines_queues_nothing_and_leaves_the_others_intact() {
        let to: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let mut batch = SendBatch::default();
        batch.push(b"first", to);
        let failed = batch.push_with(|buf| {
            buf.extend_from_slice(b"half written");
            Err::<Option<SocketAddr>, &str>("cipher refused")
        });
        assert_eq!(failed, Err("cipher refused"));
        let declined = batch.push_with(|buf| {
            buf.extend_from_slice(b"not ready");
            Ok::<_, ()>(None)
        });
        assert_eq!(declined, Ok(false));
        let written = batch.push_with(|buf| {
            buf.extend_from_slice(b"second");
            Ok::<_, ()>(Some(to))
        });
        assert_eq!(written, Ok(true));
        let queued: Vec<Vec<u8>> = batch.drain().into_iter().map(|(d, _)| d).collect();
        assert_eq!(queued, vec![b"first".to_vec(), b"second".to_vec()]);
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn an_unsendable_datagram_is_counted_and_the_rest_still_go() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut batch = SendBatch::default();
        // Port 0 is not a valid destination: the kernel refuses that one datagram.
        batch.push(b"lost", "127.0.0.1:0".parse().expect("addr"));
        batch.push(b"kept", rx.local_addr().expect("addr"));
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
