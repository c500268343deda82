//! Refusing agents files and libraries that other users can write, as sshd's StrictModes does:
//! loading them would run code anyone on the machine could have put there.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `Err` with the reason when `path`, or the directory holding it, is writable by other users
/// (a directory with the sticky bit, such as /tmp, is safe: others cannot replace its files).
pub fn check(path: &Path, what: &str) -> Result<(), String> {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.mode() & 0o002 != 0 {
            return Err(format!(
                "{what} {} is writable by other users (mode {:o}): refused, since anyone could change the code the MTA runs; fix it with chmod o-w",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "the directory {} holding {what} {} is writable by other users (mode {:o}): refused, since anyone could replace the file; fix it with chmod o-w or set the sticky bit",
                dir.display(),
                path.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}
