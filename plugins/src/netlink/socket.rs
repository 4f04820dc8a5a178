//! The one netlink socket every family goes through: opened in the calling thread's network
//! namespace, every receive bounded by [`REPLY_DEADLINE`], sequence numbers, and the reading of
//! multipart answers, ACKs and errors. The codecs (rtnetlink through netlink-packet-route,
//! nf_tables, ctnetlink, netconf) only build request bytes and read the message bodies it hands
//! them.

use super::wire::{self, HEADER_LEN};
use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLM_F_DUMP_INTR};
use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};
use std::io;
use std::time::Duration;

/// How long a netlink request may wait for the kernel's next reply: a reply lost to a full
/// receive buffer would otherwise leave the plugin waiting forever.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// How often a dump the kernel flags as interrupted is read again before giving up.
pub const DUMP_RETRIES: usize = 10;

/// The netlink families the plugins speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `NETLINK_ROUTE`: links, addresses, routes, netconf, tc.
    Route,
    /// `NETLINK_NETFILTER`: nf_tables and conntrack.
    Netfilter,
}

impl Protocol {
    fn number(self) -> isize {
        match self {
            Protocol::Route => NETLINK_ROUTE,
            Protocol::Netfilter => NETLINK_NETFILTER,
        }
    }
}

/// One message of a reply: its header fields and its body (after the 16-byte header).
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// The body.
    pub body: &'a [u8],
    /// The whole message, header included.
    pub raw: &'a [u8],
}

/// Whether a reader wants the rest of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading until `Done` or the ACK.
    More,
    /// The answer is complete (a request without ACK that gets one reply).
    Stop,
}

/// A netlink socket bound to the namespace it was opened in, talking to the kernel.
pub struct Socket {
    inner: netlink_sys::Socket,
    seq: u32,
    protocol: Protocol,
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.protocol == Protocol::Netfilter {
            // A netfilter socket may be kept open a while longer (see `settle`).
            super::settle::release(std::os::fd::AsFd::as_fd(&self.inner));
        }
    }
}

impl Socket {
    /// Opens a socket of `protocol` in the calling thread's network namespace; it keeps talking
    /// to that namespace after the thread switches back. Every `recv` is bounded by
    /// [`REPLY_DEADLINE`] (`SO_RCVTIMEO`).
    pub fn open(protocol: Protocol) -> io::Result<Socket> {
        use std::os::fd::AsRawFd;
        let mut inner = netlink_sys::Socket::new(protocol.number())?;
        inner.bind_auto()?;
        inner.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let tv = nix::libc::timeval {
            tv_sec: REPLY_DEADLINE.as_secs() as nix::libc::time_t,
            tv_usec: REPLY_DEADLINE.subsec_micros() as nix::libc::suseconds_t,
        };
        // SAFETY: the fd is an open socket owned by `inner`, and `tv` is a valid timeval that
        // lives across the call, whose size is passed with it.
        let rc = unsafe {
            nix::libc::setsockopt(
                inner.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_RCVTIMEO,
                (&tv as *const nix::libc::timeval).cast(),
                std::mem::size_of::<nix::libc::timeval>() as nix::libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if protocol == Protocol::Route {
            // Lets the kernel report the failing attribute; harmless where unsupported.
            let _ = inner.set_ext_ack(true);
            // Lets the kernel filter dumps by the header fields (e.g. one interface's
            // addresses), so a lookup costs the same with one container or a thousand.
            let _ = inner.set_netlink_get_strict_chk(true);
        }
        Ok(Socket { inner, seq: 0, protocol })
    }

    /// A fresh sequence number for the next request.
    pub fn next_seq(&mut self) -> u32 {
        self.reserve(1)
    }

    /// The first of `count` consecutive fresh sequence numbers (one per message of a batch).
    pub fn reserve(&mut self, count: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(count);
        first
    }

    /// Sends one datagram of whole messages.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let sent = self.inner.send(bytes, 0)?;
        if sent != bytes.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "netlink request sent in part"));
        }
        Ok(())
    }

    /// Builds a message with a fresh sequence number, sends it and reads its answer as
    /// [`Socket::replies`] does.
    pub fn exchange(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
        each: impl FnMut(&Reply) -> io::Result<Flow>,
    ) -> io::Result<bool> {
        let seq = self.next_seq();
        self.send(&wire::message(kind, flags, seq, body))?;
        self.replies(seq, each)
    }

    /// Reads the answer to `seq`, handing every message of it to `each`, until `Done`, the ACK
    /// or `each` says [`Flow::Stop`]. An error reply is its errno as an `io::Error` (the caller
    /// names the object). Returns whether the kernel flagged a dump as interrupted
    /// (`NLM_F_DUMP_INTR`: the table changed while it was read). Messages for other sequence
    /// numbers (late answers to a request that gave up) are skipped.
    pub fn replies(&mut self, seq: u32, mut each: impl FnMut(&Reply) -> io::Result<Flow>) -> io::Result<bool> {
        let mut interrupted = false;
        loop {
            let data = self.receive()?;
            for message in Messages::new(&data) {
                let (reply, reply_seq) = message?;
                if reply_seq != seq {
                    continue;
                }
                interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
                match reply.kind {
                    NLMSG_NOOP => {}
                    NLMSG_DONE => return Ok(interrupted),
                    NLMSG_ERROR => return error_of(reply.body).map(|()| interrupted),
                    _ => {
                        if each(&reply)? == Flow::Stop {
                            return Ok(interrupted);
                        }
                    }
                }
            }
        }
    }

    /// Waits for the ACK of each of the `count` messages numbered from `first` (a batch, every
    /// message asking for one); the first error reply comes back with the index of its message.
    pub fn acks(&mut self, first: u32, count: u32) -> Result<(), (Option<usize>, io::Error)> {
        let mut pending: Vec<u32> = (0..count).map(|i| first.wrapping_add(i)).collect();
        while !pending.is_empty() {
            let data = self.receive().map_err(|e| (None, e))?;
            for message in Messages::new(&data) {
                let (reply, reply_seq) = message.map_err(|e| (None, e))?;
                if reply.kind != NLMSG_ERROR {
                    continue;
                }
                if let Err(e) = error_of(reply.body) {
                    let index = reply_seq.wrapping_sub(first) as usize;
                    return Err(((index < count as usize).then_some(index), e));
                }
                pending.retain(|s| *s != reply_seq);
            }
        }
        Ok(())
    }

    /// The kernel's next datagram; no reply within [`REPLY_DEADLINE`] is a `TimedOut` error that
    /// says so.
    fn receive(&self) -> io::Result<Vec<u8>> {
        match self.inner.recv_from_full() {
            Ok((data, _)) => Ok(data),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no netlink reply from the kernel within {REPLY_DEADLINE:?}"),
            )),
            Err(e) => Err(e),
        }
    }
}

/// `e` with the object it concerns named in front ("delete rule nat CNI-x handle 7: No such file
/// or directory"), its kind kept.
pub fn named(what: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The errno of an `NLMSG_ERROR` body (`struct nlmsgerr`): 0 is the ACK.
fn error_of(body: &[u8]) -> io::Result<()> {
    let code = body
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "truncated netlink error reply"))?;
    match code {
        0 => Ok(()),
        c if c < 0 => Err(io::Error::from_raw_os_error(-c)),
        c => Err(io::Error::new(io::ErrorKind::InvalidData, format!("netlink error reply with code {c}"))),
    }
}

/// The messages of one datagram, each with its sequence number; a length that does not fit is
/// an error and ends the walk.
struct Messages<'a> {
    data: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(data: &'a [u8]) -> Messages<'a> {
        Messages { data }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = io::Result<(Reply<'a>, u32)>;

    fn next(&mut self) -> Option<Self::Item> {
        let header = self.data.get(..HEADER_LEN)?;
        let word = |at: usize| u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let len = word(0) as usize;
        if len < HEADER_LEN || len > self.data.len() {
            self.data = &[];
            return Some(Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink reply")));
        }
        let raw = &self.data[..len];
        self.data = self.data.get(wire::align(len)..).unwrap_or(&[]);
        let reply = Reply {
            kind: u16::from_ne_bytes([header[4], header[5]]),
            flags: u16::from_ne_bytes([header[6], header[7]]),
            body: &raw[HEADER_LEN..],
            raw,
        };
        Some(Ok((reply, word(8))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_split_into_messages() {
        let mut data = wire::message(20, 2, 7, &[1, 2, 3]);
        data.resize(wire::align(data.len()), 0);
        data.extend(wire::message(NLMSG_DONE, 2, 7, &0i32.to_ne_bytes()));
        let all: Vec<_> = Messages::new(&data).map(|m| m.unwrap()).collect();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].0.kind, all[0].0.flags, all[0].1, all[0].0.body), (20, 2, 7, &[1u8, 2, 3][..]));
        assert_eq!(all[1].0.kind, NLMSG_DONE);
        let mut short = wire::message(20, 0, 1, &[]);
        short[0] = 40;
        assert!(Messages::new(&short).next().unwrap().is_err());
        short[0] = 4;
        assert!(Messages::new(&short).next().unwrap().is_err());
    }

    #[test]
    fn error_replies_carry_the_errno() {
        assert!(error_of(&0i32.to_ne_bytes()).is_ok());
        assert_eq!(error_of(&(-2i32).to_ne_bytes()).unwrap_err().raw_os_error(), Some(2));
        assert_eq!(error_of(&[0, 0]).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn sequence_numbers_are_consecutive() {
        // Opening a socket needs no privilege.
        let mut s = Socket::open(Protocol::Route).unwrap();
        assert_eq!(s.next_seq(), 1);
        assert_eq!(s.reserve(3), 2);
        assert_eq!(s.next_seq(), 5);
    }
}
