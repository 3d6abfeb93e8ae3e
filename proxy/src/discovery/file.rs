//! Snapshots from a file (YAML or JSON), read at start and polled for edits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_api::Snapshot;

use super::Applier;

/// A snapshot that could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read.
    #[error("{path}: cannot read snapshot: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid snapshot document.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The document parsed but its content is inconsistent.
    #[error("invalid snapshot: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// A tcp service's port cannot be listened on.
    #[error("snapshot refused: {0}")]
    Listen(#[from] crate::tcp::TcpBindError),
}

/// A parse error at `line:column` of `path`. Both decoders (serde_norway,
/// serde_json) append " at line L column C" to their message; the prefix
/// already says where, so it is cut.
pub(super) fn parse_error(
    path: &Path,
    line: usize,
    column: usize,
    message: String,
) -> SnapshotError {
    let message = match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    };
    SnapshotError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

/// Parses snapshot text (YAML, of which JSON is a subset).
pub fn parse(path: &Path, text: &str) -> Result<Snapshot, SnapshotError> {
    serde_norway::from_str(text).map_err(|error| {
        let (line, column) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
        parse_error(path, line, column, error.to_string())
    })
}

/// Reads and parses a snapshot file.
pub async fn load_file(path: &Path) -> Result<(Snapshot, String), SnapshotError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| SnapshotError::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok((parse(path, &text)?, text))
}

/// Polls `path` every `interval`; applies each changed content. A bad edit
/// is logged and counted, and the last good snapshot stays in force.
pub async fn watch_file(path: PathBuf, interval: Duration, applier: Applier, mut last: String) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) if text == last => continue,
            Ok(text) => text,
            Err(source) => {
                // A missing file mid-rename is common; report once per change.
                if !last.is_empty() {
                    applier.refused(&SnapshotError::Read {
                        path: path.clone(),
                        source,
                    });
                    last.clear();
                }
                continue;
            }
        };
        last.clone_from(&text);
        match parse(&path, &text).and_then(|s| applier.apply(s)) {
            Ok(version) => {
                tracing::info!(path = %path.display(), version, "snapshot file reloaded")
            }
            Err(error) => applier.refused(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_names_line_column_and_expectation() {
        let text = "services:\n  api:\n    policy:\n      timeot: 5s\n";
        let error = parse(Path::new("snap.yaml"), text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("snap.yaml:4:7: "), "{error}");
        assert!(error.contains("unknown field `timeot`"), "{error}");
        assert!(error.contains("expected one of"), "{error}");
    }

    #[test]
    fn parses_json_too() {
        let snapshot = parse(
            Path::new("s.json"),
            r#"{"version": 3, "services": {"api": {"endpoints": [{"address": "127.0.0.1:1"}]}}}"#,
        );
        assert_eq!(snapshot.map(|s| s.version).ok(), Some(3));
    }
}
