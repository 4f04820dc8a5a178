//! Closing NETLINK_NETFILTER sockets later, so that the kernel's cleanup after an nf_tables
//! transaction overlaps another wait instead of adding to it.
//!
//! When a netfilter netlink socket is released, nf_tables first waits for the namespace's pending
//! destroy work (`nft_rcv_nl_event` → `flush_work`): the objects the last transaction removed are
//! freed only after an RCU grace period, ~10 ms on a small VM. So the close of the socket that
//! committed a deletion, and of any netfilter socket closed soon after it, blocks that long.
//! A plugin with another kernel wait ahead (deleting a veth pair waits out grace periods of its
//! own) commits its deletions first and closes its netfilter sockets after that wait, by then for
//! free. Every netfilter [`super::Socket`] hands its descriptor here when it is dropped.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};

thread_local! {
    /// Duplicates of the netfilter sockets held open while an [`NftSettle`] lives (`None`: none
    /// lives). The kernel releases a socket when its last descriptor closes.
    static HELD: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
}

/// While it lives, the netfilter sockets this thread is done with stay open; dropping it closes
/// them (see the module documentation for why).
#[must_use = "the sockets are closed when it is dropped"]
pub struct NftSettle {
    /// Whether this is the outermost hold (an inner one leaves the sockets to it).
    outer: bool,
}

impl NftSettle {
    /// Starts holding the netfilter sockets this thread is done with.
    pub fn begin() -> NftSettle {
        let outer = HELD.with(|h| {
            let mut held = h.borrow_mut();
            if held.is_some() {
                return false;
            }
            *held = Some(Vec::new());
            true
        });
        NftSettle { outer }
    }
}

impl Drop for NftSettle {
    fn drop(&mut self) {
        if self.outer {
            // Taken out of the cell first, so the closes run with it released.
            let held = HELD.with(|h| h.borrow_mut().take());
            drop(held);
        }
    }
}

/// Called by a netfilter socket being dropped: while an [`NftSettle`] lives, a duplicate of `fd`
/// keeps the socket open until that is dropped; otherwise the socket closes now.
pub(super) fn release(fd: BorrowedFd<'_>) {
    HELD.with(|h| {
        if let Some(held) = h.borrow_mut().as_mut() {
            // Without a duplicate the socket closes now, which is only slower.
            if let Ok(fd) = fd.try_clone_to_owned() {
                held.push(fd);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::{Protocol, Socket};
    use super::*;

    fn held() -> Option<usize> {
        HELD.with(|h| h.borrow().as_ref().map(Vec::len))
    }

    #[test]
    fn sockets_are_held_only_while_a_settle_lives() {
        drop(Socket::open(Protocol::Netfilter).unwrap());
        assert_eq!(held(), None);
        let outer = NftSettle::begin();
        drop(Socket::open(Protocol::Netfilter).unwrap());
        // Route sockets never wait on nf_tables' cleanup, so they close at once.
        drop(Socket::open(Protocol::Route).unwrap());
        let inner = NftSettle::begin();
        drop(Socket::open(Protocol::Netfilter).unwrap());
        drop(inner);
        // The inner hold leaves both sockets to the outer one.
        assert_eq!(held(), Some(2));
        drop(outer);
        assert_eq!(held(), None);
    }
}
