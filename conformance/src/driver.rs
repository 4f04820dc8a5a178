//! A runtime driver that follows libcni: config lists, `prevResult` chaining, capability
//! arguments, a result cache feeding DEL and CHECK, and GC of cached attachments.

use crate::{build_config, exec, Netns, Output, Suite};
use anyhow::{anyhow, Context, Result};
use cni_types::version::Version;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One attachment of a container to a network.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` text.
    pub cni_args: String,
    /// Capability arguments the runtime supplies (`portMappings`, `ips`, `mac`, …).
    pub caps: Map<String, Value>,
}

impl Attachment {
    /// An attachment of `eth0` in `netns` for container `id`.
    pub fn new(id: &str, netns: &Netns) -> Attachment {
        Attachment { container_id: id.into(), netns: netns.path(), ifname: "eth0".into(), ..Default::default() }
    }
}

/// Drives one suite's plugins from one fake host.
pub struct Runtime<'a> {
    /// Plugins under test (also `CNI_PATH`).
    pub suite: Suite,
    /// The namespace plugins run in.
    pub host: Option<&'a Netns>,
    /// Where results are cached (`<dir>/results/<net>-<id>-<ifname>`).
    pub cache_dir: PathBuf,
}

/// A plugin's failure as a runtime sees it.
#[derive(Debug, Clone)]
pub struct PluginFailure {
    /// Plugin type that failed.
    pub plugin: String,
    /// What it printed.
    pub output: Output,
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin {} failed (exit {}): {} {}",
            self.plugin,
            self.output.code,
            self.output.stdout.trim(),
            self.output.stderr.trim()
        )
    }
}

impl std::error::Error for PluginFailure {}

impl<'a> Runtime<'a> {
    /// A runtime for `suite` running plugins inside `host`, caching under `cache_dir`.
    pub fn new(suite: &Suite, host: &'a Netns, cache_dir: PathBuf) -> Runtime<'a> {
        Runtime { suite: suite.clone(), host: Some(host), cache_dir }
    }

    /// Executes one plugin for one attachment with `conf` on stdin.
    pub fn invoke(&self, plugin_type: &str, command: &str, att: &Attachment, conf: &Value) -> Result<Output> {
        let path = self.suite.dir.display().to_string();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", att.container_id.as_str()),
            ("CNI_NETNS", att.netns.as_str()),
            ("CNI_IFNAME", att.ifname.as_str()),
            ("CNI_ARGS", att.cni_args.as_str()),
            ("CNI_PATH", path.as_str()),
        ];
        exec(&self.suite.plugin(plugin_type), &env, conf.to_string().as_bytes(), self.host)
    }

    fn cache_path(&self, name: &str, att: &Attachment) -> PathBuf {
        self.cache_dir.join("results").join(format!("{name}-{}-{}", att.container_id, att.ifname))
    }

    fn list_parts(list: &Value) -> Result<(String, String, Vec<Value>)> {
        let name = list["name"].as_str().context("list without name")?.to_string();
        // The highest known of cniVersion and cniVersions, as libcni (≥ 1.2) picks it.
        let parsed = cni_types::NetConfList::parse(list.to_string().as_bytes()).map_err(|e| anyhow!("{e}"))?;
        let version = parsed.effective_version();
        let plugins = list["plugins"].as_array().context("list without plugins")?.clone();
        Ok((name, version, plugins))
    }

    fn plugin_type(plugin: &Value) -> Result<String> {
        plugin["type"].as_str().map(str::to_string).context("plugin without type")
    }

    /// ADD every plugin in order, chaining results; caches and returns the final result.
    pub fn add_list(&self, list: &Value, att: &Attachment) -> Result<Value> {
        self.add_list_timed(list, att).map(|(result, _)| result)
    }

    /// [`Runtime::add_list`], also returning how long each plugin of the chain took (type, time).
    pub fn add_list_timed(&self, list: &Value, att: &Attachment) -> Result<(Value, Vec<(String, Duration)>)> {
        let (name, version, plugins) = Self::list_parts(list)?;
        let mut prev: Option<Value> = None;
        let mut times = Vec::with_capacity(plugins.len());
        for plugin in &plugins {
            let conf = build_config(plugin, &name, &version, prev.as_ref(), &att.caps);
            let ty = Self::plugin_type(plugin)?;
            let t0 = Instant::now();
            let out = self.invoke(&ty, "ADD", att, &conf)?;
            times.push((ty.clone(), t0.elapsed()));
            if !out.ok() {
                return Err(anyhow!(PluginFailure { plugin: ty, output: out }));
            }
            prev = Some(out.json()?);
        }
        let result = prev.unwrap_or(Value::Null);
        let cache = self.cache_path(&name, att);
        if let Some(dir) = cache.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let entry = json!({"kind": "cniCacheV1", "containerId": att.container_id, "ifName": att.ifname,
            "networkName": name, "netns": att.netns, "cniArgs": att.cni_args, "capabilityArgs": att.caps, "result": result});
        std::fs::write(&cache, serde_json::to_vec(&entry)?)?;
        Ok((result, times))
    }

    fn cached(&self, name: &str, att: &Attachment) -> Option<Value> {
        let bytes = std::fs::read(self.cache_path(name, att)).ok()?;
        let entry: Value = serde_json::from_slice(&bytes).ok()?;
        Some(entry["result"].clone())
    }

    /// CHECK every plugin in order with the cached result as `prevResult`.
    pub fn check_list(&self, list: &Value, att: &Attachment) -> Result<()> {
        let (name, version, plugins) = Self::list_parts(list)?;
        let prev = self.cached(&name, att).context("no cached result for CHECK")?;
        for plugin in &plugins {
            let conf = build_config(plugin, &name, &version, Some(&prev), &att.caps);
            let ty = Self::plugin_type(plugin)?;
            let out = self.invoke(&ty, "CHECK", att, &conf)?;
            if !out.ok() {
                return Err(anyhow!(PluginFailure { plugin: ty, output: out }));
            }
        }
        Ok(())
    }

    /// DEL every plugin in reverse order (cached `prevResult` from 0.4.0 on); removes the cache.
    pub fn del_list(&self, list: &Value, att: &Attachment) -> Result<()> {
        let (name, version, plugins) = Self::list_parts(list)?;
        let prev = if Version::at_least(&version, "0.4.0").unwrap_or(false) { self.cached(&name, att) } else { None };
        for plugin in plugins.iter().rev() {
            let conf = build_config(plugin, &name, &version, prev.as_ref(), &att.caps);
            let ty = Self::plugin_type(plugin)?;
            let out = self.invoke(&ty, "DEL", att, &conf)?;
            if !out.ok() {
                return Err(anyhow!(PluginFailure { plugin: ty, output: out }));
            }
        }
        let _ = std::fs::remove_file(self.cache_path(&name, att));
        Ok(())
    }

    /// GC as libcni does: DEL cached attachments that are not valid, then (1.1.0) GC to every plugin.
    pub fn gc_list(&self, list: &Value, valid: &[Attachment]) -> Result<()> {
        let (name, version, plugins) = Self::list_parts(list)?;
        let dir = self.cache_dir.join("results");
        let prefix = format!("{name}-");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.starts_with(&prefix) {
                continue;
            }
            let cached: Value = serde_json::from_slice(&std::fs::read(entry.path())?)?;
            let att = Attachment {
                container_id: cached["containerId"].as_str().unwrap_or("").into(),
                netns: cached["netns"].as_str().unwrap_or("").into(),
                ifname: cached["ifName"].as_str().unwrap_or("").into(),
                cni_args: cached["cniArgs"].as_str().unwrap_or("").into(),
                caps: cached["capabilityArgs"].as_object().cloned().unwrap_or_default(),
            };
            if !valid.iter().any(|v| v.container_id == att.container_id && v.ifname == att.ifname) {
                self.del_list(list, &att)?;
            }
        }
        if !Version::at_least(&version, "1.1.0").unwrap_or(false) {
            return Ok(());
        }
        let valid_json: Vec<Value> =
            valid.iter().map(|a| json!({"containerID": a.container_id, "ifname": a.ifname})).collect();
        let none = Attachment::default();
        for plugin in &plugins {
            let mut conf = build_config(plugin, &name, &version, None, &Map::new());
            if let Some(m) = conf.as_object_mut() {
                m.insert("cni.dev/valid-attachments".into(), Value::Array(valid_json.clone()));
                m.insert("cni.dev/attachments".into(), Value::Array(valid_json.clone()));
            }
            let ty = Self::plugin_type(plugin)?;
            let out = self.invoke(&ty, "GC", &none, &conf)?;
            if !out.ok() {
                return Err(anyhow!(PluginFailure { plugin: ty, output: out }));
            }
        }
        Ok(())
    }

    /// STATUS to every plugin (1.1.0); the first failure is returned.
    pub fn status_list(&self, list: &Value) -> Result<()> {
        let (name, version, plugins) = Self::list_parts(list)?;
        let none = Attachment::default();
        for plugin in &plugins {
            let conf = build_config(plugin, &name, &version, None, &Map::new());
            let ty = Self::plugin_type(plugin)?;
            let out = self.invoke(&ty, "STATUS", &none, &conf)?;
            if !out.ok() {
                return Err(anyhow!(PluginFailure { plugin: ty, output: out }));
            }
        }
        Ok(())
    }
}
