//! Applying the capture rules with the host's iptables: which back end
//! (nft or legacy), atomically (`iptables-restore --noflush`), idempotently
//! (rules already in force are left alone), and removed again on request.

use std::io::Write;
use std::process::{Command, Stdio};

use super::rules::RuleSet;

/// An iptables flavour: the binaries that go together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `iptables`, `iptables-nft` or `iptables-legacy` (or a path).
    pub iptables: String,
}

/// What applying or cleaning up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The rules were written.
    Applied,
    /// The same rules were already in force; nothing was touched.
    Unchanged,
    /// Rules of an earlier run with other settings were replaced.
    Replaced,
    /// Tether's rules were removed.
    Removed,
    /// There was nothing to remove.
    NothingToRemove,
}

/// Why capture could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The process may not change the namespace's netfilter rules.
    #[error("no permission to change iptables rules ({0}): run `tether-proxy init` as root with the NET_ADMIN capability (docker: `cap_add: [NET_ADMIN]`; Kubernetes: securityContext.capabilities.add: [NET_ADMIN])")]
    Permission(String),
    /// No usable iptables binary.
    #[error("no usable iptables found (tried {0}): install iptables (nft or legacy) in the init image, or name one with --iptables-binary")]
    NotFound(String),
    /// iptables ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
}

impl CaptureError {
    /// The process exit code for this error (documented in docs/deploy.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Permission(_) => 3,
            Self::NotFound(_) => 4,
            Self::Failed { .. } => 5,
        }
    }
}

impl Backend {
    /// A back end named by the operator (`--iptables-binary`).
    pub fn named(iptables: impl Into<String>) -> Self {
        Self {
            iptables: iptables.into(),
        }
    }

    /// Picks the back end the namespace already uses: the one whose nat
    /// table has rules (Docker's, Tether's from an earlier run), else nft
    /// (Debian's default since bullseye), else legacy, else plain `iptables`.
    pub fn detect() -> Result<Self, CaptureError> {
        let candidates = ["iptables-nft", "iptables-legacy", "iptables"];
        let mut usable = Vec::new();
        for name in candidates {
            match Self::named(name).save() {
                Ok(text) => {
                    if text.lines().any(|l| l.starts_with("-A ")) {
                        return Ok(Self::named(name));
                    }
                    usable.push(name);
                }
                Err(CaptureError::Permission(why)) => return Err(CaptureError::Permission(why)),
                Err(_) => {}
            }
        }
        usable
            .first()
            .map(|name| Self::named(*name))
            .ok_or_else(|| CaptureError::NotFound(candidates.join(", ")))
    }

    /// The IPv6 flavour of the same back end: `iptables-nft` ->
    /// `ip6tables-nft`, `/sbin/iptables` -> `/sbin/ip6tables`.
    pub fn ipv6(&self) -> Self {
        let (dir, name) = match self.iptables.rfind('/') {
            Some(at) => self.iptables.split_at(at + 1),
            None => ("", self.iptables.as_str()),
        };
        Self::named(format!(
            "{dir}{}",
            name.replacen("iptables", "ip6tables", 1)
        ))
    }

    fn tool(&self, suffix: &str) -> String {
        // iptables-nft -> iptables-nft-save; /sbin/iptables -> /sbin/iptables-save
        format!("{}{suffix}", self.iptables)
    }

    /// `iptables-save -t nat`.
    pub fn save(&self) -> Result<String, CaptureError> {
        self.save_table("nat")
    }

    /// `iptables-save -t TABLE`.
    pub fn save_table(&self, table: &str) -> Result<String, CaptureError> {
        run(&self.tool("-save"), &["-t", table], None)
    }

    /// Makes `rules` the rules in force in their table: nothing if they
    /// already are; the earlier set removed first if another is.
    pub fn apply(&self, rules: &RuleSet) -> Result<Change, CaptureError> {
        let installed = RuleSet::installed(&self.save_table(rules.table)?);
        if rules.same_as(&installed) {
            return Ok(Change::Unchanged);
        }
        let change = if installed.is_empty() {
            Change::Applied
        } else {
            self.cleanup(rules)?;
            Change::Replaced
        };
        run(
            &self.tool("-restore"),
            &["--noflush"],
            Some(&rules.restore_input()),
        )?;
        Ok(change)
    }

    /// Removes Tether's jumps and chains from the table of `like` (a rule
    /// set of the kind to remove; its rules do not matter), in one
    /// transaction.
    pub fn cleanup(&self, like: &RuleSet) -> Result<Change, CaptureError> {
        let save = self.save_table(like.table)?;
        let installed = RuleSet::installed(&save);
        let declared: Vec<&str> = like
            .chains
            .iter()
            .copied()
            .filter(|chain| save.lines().any(|l| l.starts_with(&format!(":{chain} "))))
            .collect();
        if installed.is_empty() && declared.is_empty() {
            return Ok(Change::NothingToRemove);
        }
        let mut text = format!("*{}\n", like.table);
        // Jumps from the built-in chains go first; then our chains are
        // emptied (declaring them flushes them) and deleted.
        let ours = |rule: &&String| {
            let chain = rule.split_whitespace().nth(1).unwrap_or_default();
            like.chains.contains(&chain)
        };
        for rule in installed.iter().filter(|r| !ours(r)) {
            text.push_str(&rule.replacen("-A ", "-D ", 1));
            text.push('\n');
        }
        for chain in &declared {
            text.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for chain in &declared {
            text.push_str(&format!("-X {chain}\n"));
        }
        text.push_str("COMMIT\n");
        run(&self.tool("-restore"), &["--noflush"], Some(&text))?;
        Ok(Change::Removed)
    }
}

/// Runs a command, feeding `input` on stdin; its stdout on success.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, CaptureError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => CaptureError::NotFound(program.to_owned()),
            std::io::ErrorKind::PermissionDenied => CaptureError::Permission(error.to_string()),
            _ => CaptureError::Failed {
                command: command.clone(),
                stderr: error.to_string(),
            },
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|error| CaptureError::Failed {
                command: command.clone(),
                stderr: error.to_string(),
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| CaptureError::Failed {
            command: command.clone(),
            stderr: error.to_string(),
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        let lower = stderr.to_ascii_lowercase();
        if lower.contains("permission denied") || lower.contains("operation not permitted") {
            return Err(CaptureError::Permission(stderr));
        }
        return Err(CaptureError::Failed { command, stderr });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_back_end_is_named_like_the_ipv4_one() {
        assert_eq!(
            Backend::named("iptables-nft").ipv6().iptables,
            "ip6tables-nft"
        );
        assert_eq!(Backend::named("iptables").ipv6().iptables, "ip6tables");
        assert_eq!(
            Backend::named("/usr/sbin/iptables-legacy").ipv6().iptables,
            "/usr/sbin/ip6tables-legacy"
        );
    }
}
