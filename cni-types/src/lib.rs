//! The CNI specification as a library: configurations, results of every spec version and the
//! conversions between them, error codes, `CNI_ARGS`, the plugin skeleton and delegation.
//! No kernel code lives here.
#![forbid(unsafe_code)]

pub mod args;
pub mod child;
pub mod conf;
pub mod error;
pub mod gojson;
pub mod invoke;
pub mod limits;
pub mod net;
pub mod result;
pub mod skel;
pub mod validate;
pub mod version;

pub use conf::{Attachment, IpRange, NetConf, NetConfList, PortMapping, RuntimeConfig};
pub use error::CniError;
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{CmdArgs, Command, Plugin};
