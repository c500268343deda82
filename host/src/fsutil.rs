//! Durable file writes shared by the configuration editors and status files.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Writes `contents` to `path` atomically: a temporary file in the same directory, fsync'd, then
/// renamed over `path`, then the directory fsync'd. Readers see the old or the new file, whole.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let (dir, tmp) = beside(path)?;
    {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `contents` (temporary file, then rename) without fsync: for files that
/// describe running state, which a crash makes stale anyway.
pub fn replace(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let (_, tmp) = beside(path)?;
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// The directory of `path` (created if missing) and a temporary name beside `path` in it.
fn beside(path: &Path) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    Ok((dir, tmp))
}
