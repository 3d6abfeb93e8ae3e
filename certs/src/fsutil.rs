//! File writing with the right permissions from the first byte.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Mode of files holding secrets (CA key, identity key, join-token hashes).
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode of public files (certificates, bundles).
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Creates `path` with `mode`, failing if it exists. The mode is applied by
/// `open(2)` itself, so the file is never readable by others, not even briefly.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists { path: path.into() },
            _ => Error::io(path, e),
        })?;
    f.write_all(contents).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Replaces `path` atomically: writes a fresh temporary file with `mode` next
/// to it, then renames it over `path`. Readers see the old or the new file,
/// never half of one.
pub(crate) fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    // A stale temporary from a crashed run would make create_new fail.
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Reads a UTF-8 file, naming the file in the error.
pub(crate) fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}
