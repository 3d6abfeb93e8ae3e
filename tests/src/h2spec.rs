//! h2spec, the HTTP/2 conformance tester, run against a listener. The
//! binary comes from `H2SPEC_BIN` or `deploy/scripts/install-h2spec.sh`
//! (built on first use); without one the test fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Cases in h2spec 2.2.1's generic, HTTP/2 and HPACK groups.
pub const CASES: u32 = 145;

/// Longest a whole run may take: every case passing takes well under a
/// second; each failing one waits out h2spec's per-case timeout.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// The h2spec binary: `H2SPEC_BIN`, else what the install script prints
/// (it builds h2spec the first time). Resolved once per test binary.
pub fn h2spec_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| crate::installed_binary("H2SPEC_BIN", "install-h2spec.sh"))
        .clone()
}

/// The outcome of one h2spec run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Cases run.
    pub tests: u32,
    /// Cases passed.
    pub passed: u32,
    /// Cases skipped.
    pub skipped: u32,
    /// Cases failed.
    pub failed: u32,
}

impl Summary {
    /// Reads h2spec's last line: `145 tests, 145 passed, 0 skipped, 0 failed`.
    pub fn parse(output: &str) -> Option<Self> {
        let line = output.lines().rev().find(|l| l.contains(" tests, "))?;
        let mut counts = line.split(", ").map(|part| {
            let (n, word) = part.trim().split_once(' ')?;
            Some((n.parse::<u32>().ok()?, word))
        });
        let mut next = |expected: &str| match counts.next()?? {
            (n, word) if word == expected => Some(n),
            _ => None,
        };
        Some(Summary {
            tests: next("tests")?,
            passed: next("passed")?,
            skipped: next("skipped")?,
            failed: next("failed")?,
        })
    }
}

/// A finished run: the summary (if h2spec printed one) and its output.
#[derive(Debug)]
pub struct Run {
    /// The counts, `None` if h2spec printed no summary.
    pub summary: Option<Summary>,
    /// Everything h2spec printed (stdout, then stderr).
    pub output: String,
}

impl Run {
    /// The failures section of the output, for assertion messages.
    pub fn failures(&self) -> &str {
        self.output
            .find("Failures:")
            .map_or(self.output.as_str(), |at| &self.output[at..])
    }
}

/// Runs every h2spec case against plaintext HTTP/2 (h2c, prior knowledge)
/// at `addr`. h2spec sends `:authority` `IP:PORT`, and requests `GET /`.
pub async fn run(addr: SocketAddr) -> Run {
    let bin = h2spec_bin();
    let mut child = Command::new(&bin)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    // Read the pipes on threads of their own so a full pipe never stalls h2spec.
    let pipe = |reader: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut reader) = reader {
                let _ = reader.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = pipe(child.stdout.take().map(|r| Box::new(r) as _));
    let stderr = pipe(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("h2spec against {addr} did not finish within {RUN_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut output = stdout.join().unwrap_or_default();
    output.push_str(&stderr.join().unwrap_or_default());
    Run {
        summary: Summary::parse(&output),
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_read() {
        let output = "...\nFinished in 0.27 seconds\n145 tests, 144 passed, 0 skipped, 1 failed\n";
        assert_eq!(
            Summary::parse(output),
            Some(Summary {
                tests: 145,
                passed: 144,
                skipped: 0,
                failed: 1
            })
        );
        assert_eq!(Summary::parse("Error: dial tcp: connection refused"), None);
    }
}
