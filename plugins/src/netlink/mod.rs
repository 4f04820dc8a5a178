//! A synchronous rtnetlink handle: the only place netlink messages are built and parsed.
//!
//! One socket per namespace: a socket created inside a namespace keeps talking to that
//! namespace after the thread switches back, so the plugins open one there and drive both
//! from the host side. Requests wait for their ACK; dumps are retried when the kernel flags
//! them as interrupted (`NLM_F_DUMP_INTR`, the table changed while it was being read).

mod addr;
mod link;
mod netconf;
mod nft_batch;
mod nftables;
mod route;
mod settle;
mod tc;

pub use addr::Address;
pub use link::{parse_mac, Ipv4Conf, Link, VethSpec};
pub use netconf::all_forwarding;
pub use nft_batch::{AddrField, CmpOp, Expr, NftBatch, NftOp, PayloadBase, Verdict};
pub use nftables::{nft_chain_exists, nft_rules, nft_table_exists, nft_table_rules, NftFamily, NftRule};
pub use route::RouteSpec;
pub use settle::NftSettle;
pub use tc::{Filter, Qdisc, Redirect, Tbf, ETH_P_ALL, INGRESS_HANDLE, TC_H_INGRESS, TC_H_ROOT};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::time::Duration;

/// How often an interrupted dump is read again before giving up.
const DUMP_RETRIES: usize = 10;

/// A route netlink socket bound to the namespace it was created in.
pub struct Handle {
    socket: Socket,
    seq: u32,
}

/// How long a netlink request may wait for the kernel's next reply: a reply lost to a full
/// receive buffer would otherwise leave the plugin waiting forever.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// Opens a netlink socket of `protocol` in the calling thread's network namespace, talking to
/// the kernel, with every `recv` bounded by [`REPLY_DEADLINE`] (`SO_RCVTIMEO`).
pub fn open(protocol: isize) -> io::Result<Socket> {
    use std::os::fd::AsRawFd;
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let tv = nix::libc::timeval {
        tv_sec: REPLY_DEADLINE.as_secs() as nix::libc::time_t,
        tv_usec: REPLY_DEADLINE.subsec_micros() as nix::libc::suseconds_t,
    };
    // SAFETY: the fd is an open socket owned by `socket`, and `tv` is a valid timeval that lives
    // across the call, whose size is passed with it.
    let rc = unsafe {
        nix::libc::setsockopt(
            socket.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_RCVTIMEO,
            (&tv as *const nix::libc::timeval).cast(),
            std::mem::size_of::<nix::libc::timeval>() as nix::libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Receives the kernel's next netlink datagram on a socket from [`open`]; no reply within
/// [`REPLY_DEADLINE`] is a `TimedOut` error that says so.
pub fn receive(socket: &Socket) -> io::Result<Vec<u8>> {
    match socket.recv_from_full() {
        Ok((data, _)) => Ok(data),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no netlink reply from the kernel within {REPLY_DEADLINE:?}"),
        )),
        Err(e) => Err(e),
    }
}

impl Handle {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn new() -> io::Result<Handle> {
        let socket = open(NETLINK_ROUTE)?;
        // Lets the kernel report the failing attribute; harmless where unsupported.
        let _ = socket.set_ext_ack(true);
        // Lets the kernel filter dumps by the header fields (e.g. one interface's addresses),
        // so a lookup costs the same with one container or a thousand on the host.
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(Handle { socket, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Reads replies to `seq` until the ACK, `Done` or an error; returns the messages and
    /// whether the kernel flagged the dump as interrupted.
    fn receive(&mut self, seq: u32) -> io::Result<(Vec<RouteNetlinkMessage>, bool)> {
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let data = receive(&self.socket)?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink decode: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "netlink message of length 0"));
                }
                offset += len;
                if msg.header.sequence_number != seq {
                    // A reply to an earlier request that gave up; not ours to read.
                    continue;
                }
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Done(_) => return Ok((out, interrupted)),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok((out, interrupted)),
                        Some(_) => return Err(e.to_io()),
                    },
                    _ => {}
                }
            }
        }
    }

    /// Sends a request that changes state and waits for its ACK.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        self.receive(seq).map(|_| ())
    }

    /// Sends a GET for one object and returns the reply (errors such as ENODEV pass through).
    pub fn get(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK)?;
        self.receive(seq).map(|(msgs, _)| msgs)
    }

    /// Dumps a table, reading it again while the kernel reports the dump as interrupted.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_RETRIES {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let (msgs, interrupted) = self.receive(seq)?;
            if !interrupted {
                return Ok(msgs);
            }
        }
        Err(io::Error::new(io::ErrorKind::Interrupted, "netlink dump kept being interrupted"))
    }
}
