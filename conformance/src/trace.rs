//! Which programs a plugin runs: a suite whose chosen plugins run under `strace -f -e trace=execve`,
//! and the programs the traces show started.

use crate::{ours, Suite};
use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Our suite in `dir` (created), where each plugin of `traced` is a script running ours under strace,
/// logging to `<dir>/execve.<pid>`, and every other plugin links to ours.
pub fn traced_suite(dir: &Path, traced: &[&str]) -> Result<Suite> {
    let real = ours();
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(&real.dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let is_plugin = entry.path().is_file() && !name.contains('.') && !name.starts_with("lib");
        if !is_plugin || traced.contains(&name.as_str()) {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), dir.join(&name)).with_context(|| format!("linking {name}"))?;
    }
    for name in traced {
        let script = format!(
            "#!/bin/sh\nexec strace -f -qq -e trace=execve -o {}.$$ {} \"$@\"\n",
            log_prefix(dir).display(),
            real.plugin(name).display()
        );
        std::fs::write(dir.join(name), script)?;
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(Suite { name: "ours", dir: dir.to_path_buf() })
}

fn log_prefix(dir: &Path) -> PathBuf {
    dir.join("execve")
}

/// The programs started (successful `execve`s) in every trace written under `dir`, in no set order.
pub fn traced_execs(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("execve.") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            if let Some(rest) = line.split("execve(\"").nth(1) {
                if !line.contains("= -1 ") {
                    out.push(rest.split('"').next().unwrap_or_default().to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Whether `strace` can be run (the tests that need it skip visibly otherwise).
pub fn have_strace() -> bool {
    crate::run("strace", &["-V"]).is_ok()
}
