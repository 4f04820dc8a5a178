//! host-local IPAM (in progress).
