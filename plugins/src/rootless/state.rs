//! The wrapper's on-disk state: which shared netns exists, which helper serves it, who is
//! attached and which host ports are forwarded. There is no daemon, so this file is the only
//! memory between invocations; it is read and written under the state lock only, and always
//! replaced atomically (write a temporary file, rename).

use super::config::HelperKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Format version of `state.json`.
pub const STATE_VERSION: u32 = 1;

/// The running helper, identified well enough that a recycled PID is never mistaken for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HelperId {
    /// Process ID.
    pub pid: i32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    #[serde(rename = "startTime")]
    pub start_time: u64,
    /// The process name the kernel reports (`comm`).
    pub comm: String,
    /// The binary that was started.
    pub binary: PathBuf,
    /// Its API socket.
    #[serde(rename = "apiSocket")]
    pub api_socket: PathBuf,
}

/// One host port forwarded by the helper into the rootless netns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Forward {
    /// The helper's ID for it; `None` when it could not be re-added after a helper restart.
    pub id: Option<i64>,
    /// `tcp` or `udp`.
    pub proto: String,
    /// Host address slirp4netns binds (`0.0.0.0` for all).
    #[serde(rename = "hostAddr")]
    pub host_addr: String,
    /// Host port.
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    /// Port on the tap address in the rootless netns (the host port; the inner portmap DNATs it).
    #[serde(rename = "guestPort")]
    pub guest_port: u16,
    /// The container port (the forwarder connects to it directly).
    #[serde(rename = "containerPort", skip_serializing_if = "is_zero")]
    pub container_port: u16,
    /// Carried by the wrapper's forwarder ([`super::forwarder`]), not by the helper; `id` is
    /// then the wrapper's own.
    #[serde(skip_serializing_if = "is_false")]
    pub forwarder: bool,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// One attachment: a container interface on the inner network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Member {
    /// `CNI_CONTAINERID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Network name.
    pub network: String,
    /// `CNI_NETNS` at ADD, for a GC that has to run the inner DEL without the runtime.
    pub netns: String,
    /// `CNI_ARGS` at ADD.
    #[serde(rename = "cniArgs")]
    pub cni_args: String,
    /// The outer `runtimeConfig` at ADD.
    #[serde(rename = "runtimeConfig")]
    pub runtime_config: Value,
    /// The inner chain's result, once ADD completed.
    pub result: Option<Value>,
    /// Host ports forwarded for this attachment.
    pub forwards: Vec<Forward>,
}

/// The helper's settings, recorded so that a restart recreates exactly the same network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetParams {
    /// `--cidr`.
    pub cidr: String,
    /// `--mtu`.
    pub mtu: u32,
    /// `--enable-ipv6`.
    #[serde(rename = "enableIPv6")]
    pub enable_ipv6: bool,
    /// Not `--disable-host-loopback`.
    #[serde(rename = "allowHostLoopback")]
    pub allow_host_loopback: bool,
    /// Which helper serves the netns (slirp4netns in records written before pasta existed).
    pub helper: HelperKind,
}

/// Everything the wrapper remembers about one state directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// The bind-mounted netns file.
    pub netns: PathBuf,
    /// Inode of the user namespace the netns was created in; another one means it is stale.
    #[serde(rename = "usernsInode")]
    pub userns_inode: u64,
    /// The helper's settings.
    pub params: NetParams,
    /// The helper, once started.
    pub helper: Option<HelperId>,
    /// The attachments, keyed by (container ID, ifname).
    pub members: Vec<Member>,
    /// The port forwarder, once started (its `apiSocket` is its control socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarder: Option<HelperId>,
    /// Forwards of departed attachments the helper could not remove then (it was stopped);
    /// removed as soon as it answers again, forgotten when it is restarted.
    #[serde(rename = "staleForwards", skip_serializing_if = "Vec::is_empty")]
    pub stale_forwards: Vec<Forward>,
}

impl State {
    /// The attachment of `(container_id, ifname)`.
    pub fn member(&self, container_id: &str, ifname: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.container_id == container_id && m.ifname == ifname)
    }

    /// Removes and returns the attachment of `(container_id, ifname)`; a second call finds
    /// nothing, so a repeated DEL can never count anyone twice.
    pub fn take_member(&mut self, container_id: &str, ifname: &str) -> Option<Member> {
        let i = self.members.iter().position(|m| m.container_id == container_id && m.ifname == ifname)?;
        Some(self.members.remove(i))
    }

    /// The next ID for a forward the forwarder carries (IDs are never reused within a state).
    pub fn next_forwarder_id(&self) -> i64 {
        self.forwards().filter(|(_, f)| f.forwarder).filter_map(|(_, f)| f.id).max().unwrap_or(0) + 1
    }

    /// Every forward of every attachment, with the attachment it belongs to.
    pub fn forwards(&self) -> impl Iterator<Item = (&Member, &Forward)> {
        self.members.iter().flat_map(|m| m.forwards.iter().map(move |f| (m, f)))
    }

    /// Parses `state.json`.
    pub fn decode(bytes: &[u8]) -> Result<State, String> {
        let st: State = serde_json::from_slice(bytes).map_err(|e| format!("cannot parse: {e}"))?;
        if st.version != STATE_VERSION {
            return Err(format!("unknown state version {} (expected {STATE_VERSION})", st.version));
        }
        if st.netns.as_os_str().is_empty() {
            return Err("no netns path recorded".into());
        }
        Ok(st)
    }

    /// Serialises for `state.json`.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of plain data always serialises.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// The largest `state.json` read (thousands of attachments take a few megabytes).
pub const MAX_STATE_BYTES: u64 = 32 << 20;

/// Reads the state file: `Ok(None)` when there is none, `Err` when it exists but is unusable
/// (also when it is a link, not a regular file, not ours or too large).
pub fn load(path: &Path) -> Result<Option<State>, String> {
    match super::trust::read_bounded(path, MAX_STATE_BYTES) {
        Ok(bytes) => State::decode(&bytes).map(Some).map_err(|e| format!("state file {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read state file {}: {e}", path.display())),
    }
}

/// Replaces the state file atomically, so a crashed writer leaves either the old or the new
/// state. No fsync: everything the state describes (a netns, a process) dies with the machine,
/// so surviving a power loss is worth nothing, and a file left torn by one is detected and reset.
pub fn save(path: &Path, state: &State) -> Result<(), String> {
    super::trust::write_atomic(path, &state.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> State {
        State {
            version: STATE_VERSION,
            netns: "/run/user/1000/cni-rootless/netns".into(),
            userns_inode: 4026532001,
            params: NetParams {
                cidr: "10.0.2.0/24".into(),
                mtu: 65520,
                allow_host_loopback: true,
                ..Default::default()
            },
            helper: Some(HelperId {
                pid: 4242,
                start_time: 987654,
                comm: "slirp4netns".into(),
                binary: "/usr/bin/slirp4netns".into(),
                api_socket: "/run/user/1000/cni-rootless/slirp.sock".into(),
            }),
            members: vec![Member {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                network: "rl".into(),
                netns: "/run/user/1000/netns/c1".into(),
                runtime_config: json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}),
                result: Some(json!({"cniVersion": "1.0.0"})),
                forwards: vec![Forward {
                    id: Some(1),
                    proto: "tcp".into(),
                    host_addr: "0.0.0.0".into(),
                    host_port: 8080,
                    guest_port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            stale_forwards: Vec::new(),
            forwarder: None,
        }
    }

    #[test]
    fn round_trip() {
        let st = sample();
        let bytes = st.encode();
        assert_eq!(State::decode(&bytes).unwrap(), st);
        let text = String::from_utf8(bytes).unwrap();
        for key in
            ["\"usernsInode\"", "\"startTime\"", "\"apiSocket\"", "\"containerID\"", "\"hostPort\"", "\"guestPort\""]
        {
            assert!(text.contains(key), "{key} in {text}");
        }
    }

    #[test]
    fn decode_rejects_broken_files() {
        assert!(State::decode(b"{not json").unwrap_err().contains("cannot parse"));
        assert!(State::decode(br#"{"version": 2, "netns": "/x"}"#).unwrap_err().contains("version"));
        assert!(State::decode(br#"{"version": 1}"#).unwrap_err().contains("netns"));
        // Unknown keys from a newer writer are tolerated.
        let st = State::decode(br#"{"version": 1, "netns": "/x", "future": true}"#).unwrap();
        assert!(st.members.is_empty() && st.helper.is_none() && st.stale_forwards.is_empty());
        // Nothing stale: the key is left out, so the file reads as before.
        assert!(!String::from_utf8(sample().encode()).unwrap().contains("staleForwards"));
    }

    #[test]
    fn membership_is_a_set() {
        let mut st = sample();
        assert!(st.member("c1", "eth0").is_some());
        assert!(st.member("c1", "eth1").is_none());
        assert_eq!(st.forwards().count(), 1);
        assert!(st.take_member("c1", "eth0").is_some());
        assert!(st.take_member("c1", "eth0").is_none(), "a double DEL finds nothing");
        assert!(st.members.is_empty());
    }

    #[test]
    fn save_is_atomic_and_load_distinguishes_missing_from_broken() {
        let dir = std::env::temp_dir().join(format!("rootless-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        assert!(!dir.join("state.json.tmp").exists());
        // Opened as what it must be: a link to a valid state is not read through.
        std::fs::rename(&path, dir.join("elsewhere.json")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere.json"), &path).unwrap();
        assert!(load(&path).is_err());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path).unwrap_err().contains("state file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
