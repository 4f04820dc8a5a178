//! Synchronous netlink: the only place netlink messages are built and parsed.
//!
//! Every family goes through one [`Socket`] (open in the current namespace, receive deadline,
//! sequence numbers, multipart answers, ACKs and errors) and, where netlink-packet-route does not
//! cover a message, one attribute reader and writer ([`wire`]). rtnetlink (link, addr, route, tc)
//! is typed by netlink-packet-route; netconf, tc options, nf_tables and conntrack are the few
//! messages written here by hand.
//!
//! Why not `netlink-packet-netfilter` (0.4, the release on our `netlink-packet-core` 0.9) for
//! the netfilter half: it has no batch framing, no `masq`, `nat` or `fib` expression and keeps
//! comments as raw userdata, so the nf_tables codec would be half typed and half by hand; its
//! conntrack tuple is typed, but a delete must send back the dumped tuple and zone byte for
//! byte, which the raw attribute does directly; and it would add `derive_more` 0.99 and a second
//! `syn` to the build.
//!
//! One socket per namespace: a socket created inside a namespace keeps talking to that
//! namespace after the thread switches back, so the plugins open one there and drive both
//! from the host side. Requests wait for their ACK; dumps are retried when the kernel flags
//! them as interrupted (`NLM_F_DUMP_INTR`, the table changed while it was being read).

mod addr;
mod conntrack;
mod error;
mod link;
mod netconf;
mod nfnl;
mod nft_batch;
mod nftables;
mod route;
mod settle;
mod socket;
mod tc;
mod wire;

pub use addr::Address;
pub use conntrack::delete_udp_conntrack;
pub use error::NetlinkError;
use error::{op, LinkIndex};
pub use link::{parse_mac, Ipv4Conf, Link, VethSpec};
pub use netconf::all_forwarding;
pub use nft_batch::{AddrField, CmpOp, Expr, NftBatch, NftOp, PayloadBase, Verdict};
pub use nftables::{
    nft_chain_exists, nft_generation, nft_rules, nft_table_exists, nft_table_rules, NftFamily, NftRule,
};
pub use route::RouteSpec;
pub use settle::NftSettle;
use socket::DUMP_RETRIES;
pub use socket::{Flow, Protocol, Reply, Socket, REPLY_DEADLINE};
pub use tc::{Filter, Qdisc, Redirect, Tbf, ETH_P_ALL, INGRESS_HANDLE, TC_H_INGRESS, TC_H_ROOT};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use std::io;

/// A route netlink handle bound to the namespace it was created in: rtnetlink messages typed by
/// netlink-packet-route over the one [`Socket`].
pub struct Handle {
    socket: Socket,
}

impl Handle {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn new() -> Result<Handle, NetlinkError> {
        Ok(Handle { socket: Socket::open(Protocol::Route).map_err(op("open", "a route netlink socket"))? })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        let seq = self.socket.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf)?;
        Ok(seq)
    }

    /// Reads replies to `seq` until the ACK, `Done` or an error; returns the messages and
    /// whether the kernel flagged the dump as interrupted.
    fn receive(&mut self, seq: u32) -> io::Result<(Vec<RouteNetlinkMessage>, bool)> {
        let mut out = Vec::new();
        let interrupted = self.socket.replies(seq, |reply| {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(reply.raw)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink decode: {e}")))?;
            if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                out.push(inner);
            }
            Ok(Flow::More)
        })?;
        Ok((out, interrupted))
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
