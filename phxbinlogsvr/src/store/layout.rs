//! The store directory: generations and the `CURRENT` pointer.
//!
//! ```text
//! <dir>/CURRENT                   the current generation number, "<n>\n"
//! <dir>/gen-<n:020>/              its segment log (paxos::storage files)
//! <dir>/staging-<n:020>/          a checkpoint install in progress
//! ```
//!
//! Installing a checkpoint builds a whole new generation beside the current
//! one and switches by renaming a new `CURRENT` over the old one, so a crash
//! at any point leaves either the old store or the new one, never a mix.
//! `open` deletes every generation but the current one and every staging
//! directory (leftovers of an interrupted install or of a switch that was
//! not cleaned up).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::StoreError;

const CURRENT: &str = "CURRENT";
const CURRENT_TMP: &str = "CURRENT.tmp";
const GEN_PREFIX: &str = "gen-";
const STAGING_PREFIX: &str = "staging-";
const DIGITS: usize = 20;

pub(crate) fn gen_dir(root: &Path, generation: u64) -> PathBuf {
    root.join(format!("{GEN_PREFIX}{generation:0DIGITS$}"))
}

pub(crate) fn staging_dir(root: &Path, generation: u64) -> PathBuf {
    root.join(format!("{STAGING_PREFIX}{generation:0DIGITS$}"))
}

fn parse_numbered(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// fsyncs a directory, so that entries created, renamed or removed in it
/// survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Creates `root` if needed (and makes its entry durable).
pub(crate) fn ensure_root(root: &Path) -> Result<(), StoreError> {
    if root.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(root).map_err(|e| StoreError::io(root, e))?;
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// The current generation, if the store was ever created.
pub(crate) fn read_current(root: &Path) -> Result<Option<u64>, StoreError> {
    let path = root.join(CURRENT);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let n = text
        .strip_suffix('\n')
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| StoreError::corrupt(&path, format!("not a generation number: {text:?}")))?;
    Ok(Some(n))
}

/// Points `CURRENT` at `generation`: write a temporary file, fsync it,
/// rename it over `CURRENT`, fsync the directory. The rename is the commit.
pub(crate) fn write_current(root: &Path, generation: u64) -> Result<(), StoreError> {
    let tmp = root.join(CURRENT_TMP);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(format!("{generation}\n").as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| StoreError::io(&tmp, e))?;
    let path = root.join(CURRENT);
    fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    sync_dir(root)
}

/// The generations present, ascending.
pub(crate) fn generations(root: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root).map_err(|e| StoreError::io(root, e))? {
        let entry = entry.map_err(|e| StoreError::io(root, e))?;
        if let Some(g) = entry
            .file_name()
            .to_str()
            .and_then(|n| parse_numbered(n, GEN_PREFIX))
        {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Removes every generation other than `keep` and every staging directory
/// (`keep = None`: every generation). Returns how many were removed.
pub(crate) fn remove_others(root: &Path, keep: Option<u64>) -> Result<usize, StoreError> {
    let mut removed = 0;
    let entries = fs::read_dir(root).map_err(|e| StoreError::io(root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(root, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match parse_numbered(name, GEN_PREFIX) {
            Some(g) => Some(g) != keep,
            None => parse_numbered(name, STAGING_PREFIX).is_some() || name == CURRENT_TMP,
        };
        if stale {
            let path = entry.path();
            let r = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            r.map_err(|e| StoreError::io(&path, e))?;
            tracing::info!(path = %path.display(), "removed a stale event store directory");
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(root)?;
    }
    Ok(removed)
}
