//! Refusing files that another user could have written, as sshd's StrictModes does: an agents
//! file, an agent library or the host configuration decides what code the MTA runs, so each
//! must be owned by root or by the user the MTA runs as, and neither it nor any directory above
//! it (up to `/`, along the path as given and along the path its symlinks resolve to) may be
//! writable by anyone else.
//!
//! One exception, for directories such as `/tmp`: a directory others may write is accepted when
//! it has the sticky bit and what it holds on the path is owned by root or the MTA's user (the
//! sticky bit stops others from renaming or removing it).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The user `mta run` is about to become (checked while it is still root).
static SERVICE_USER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);

/// Trusts files of `uid` too: the user the process becomes after binding its listeners.
pub fn trust_user(uid: u32) {
    SERVICE_USER.store(uid, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `uid` may own what the MTA runs: root, or the user it runs as.
fn trusted_owner(uid: u32) -> bool {
    uid == 0
        || uid == rustix::process::geteuid().as_raw()
        || uid == SERVICE_USER.load(std::sync::atomic::Ordering::Relaxed)
}

/// `Err` with the reason when `path` (`what`, for the message) fails the checks above.
pub fn check(path: &Path, what: &str) -> Result<(), String> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("{what} {}: {e}", path.display()))?
            .join(path)
    };
    let meta = match std::fs::metadata(&absolute) {
        Ok(meta) => meta,
        // Missing: nothing is loaded from it (the caller says so in its own words).
        Err(_) => return Ok(()),
    };
    if !meta.is_file() {
        return Err(format!("{what} {} is not a regular file", path.display()));
    }
    check_file(path, what, &meta)?;
    check_chain(&absolute, path, what)?;
    let real =
        std::fs::canonicalize(&absolute).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if real != absolute {
        check_chain(&real, path, what)?;
    }
    Ok(())
}

fn check_file(path: &Path, what: &str, meta: &std::fs::Metadata) -> Result<(), String> {
    if !trusted_owner(meta.uid()) {
        return Err(format!(
            "{what} {} is owned by uid {}, not by root or the user mta runs as (uid {}): refused, since its owner could change the code the MTA runs; fix it with chown",
            path.display(),
            meta.uid(),
            rustix::process::geteuid().as_raw()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{what} {} is writable by its group or other users (mode {:o}): refused, since they could change the code the MTA runs; fix it with chmod go-w",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Checks every directory above `full` (a path of `path`, for messages) up to `/`. The
/// components are taken as they are: symlinks among them are checked where they stand, and the
/// caller checks the resolved path too.
fn check_chain(full: &Path, path: &Path, what: &str) -> Result<(), String> {
    let mut inner: PathBuf = full.to_path_buf();
    let mut dir = full.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() {
            Path::new("/")
        } else {
            d
        };
        let meta = std::fs::metadata(d)
            .map_err(|e| format!("{what} {}: {}: {e}", path.display(), d.display()))?;
        let mode = meta.mode();
        if !trusted_owner(meta.uid()) {
            return Err(format!(
                "the directory {} above {what} {} is owned by uid {}, not by root or the user mta runs as: refused, since its owner could replace the file; fix it with chown",
                d.display(),
                path.display(),
                meta.uid()
            ));
        }
        if mode & 0o022 != 0 {
            let inner_owner = std::fs::symlink_metadata(&inner).map(|m| m.uid()).ok();
            let sticky_and_ours = mode & 0o1000 != 0 && inner_owner.is_some_and(trusted_owner);
            if !sticky_and_ours {
                return Err(format!(
                    "the directory {} above {what} {} is writable by its group or other users (mode {:o}){}: refused, since they could replace the file; fix it with chmod go-w",
                    d.display(),
                    path.display(),
                    mode & 0o7777,
                    if mode & 0o1000 != 0 {
                        format!(" and {} in it belongs to another user", inner.display())
                    } else {
                        String::new()
                    }
                ));
            }
        }
        inner = d.to_path_buf();
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        // Under the crate's target directory: not a world-writable tree.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/strict-modes")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn writable_files_and_directories_anywhere_up_the_path_are_refused() {
        let base = scratch("modes");
        let file = base.join("a.config");
        std::fs::write(&file, "x").unwrap();
        mode(&file, 0o644);
        assert!(check(&file, "the agents file").is_ok());
        for bad in [0o664, 0o646] {
            mode(&file, bad);
            assert!(
                check(&file, "f").unwrap_err().contains("writable"),
                "{bad:o}"
            );
        }
        mode(&file, 0o644);
        // A writable grandparent.
        let deep = base.join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        mode(&base.join("a"), 0o777);
        mode(&deep, 0o755);
        let inner = deep.join("lib.so");
        std::fs::write(&inner, "x").unwrap();
        mode(&inner, 0o644);
        let e = check(&inner, "the library").unwrap_err();
        assert!(e.contains("above the library"), "{e}");
        // A symlink into a writable directory.
        let link = base.join("link.so");
        std::os::unix::fs::symlink(&inner, &link).unwrap();
        assert!(check(&link, "the library").is_err());
        mode(&base.join("a"), 0o755);
        assert!(check(&link, "the library").is_ok());
        // Sticky and world-writable, holding our own directory: accepted.
        let sticky = base.join("tmp");
        std::fs::create_dir_all(sticky.join("mine")).unwrap();
        mode(&sticky, 0o1777);
        mode(&sticky.join("mine"), 0o755);
        std::fs::write(sticky.join("mine/f"), "x").unwrap();
        mode(&sticky.join("mine/f"), 0o644);
        assert!(check(&sticky.join("mine/f"), "f").is_ok());
        // Owned by another user: refused (only root can make one here).
        if rustix::process::geteuid().is_root() {
            let other = sticky.join("theirs");
            std::fs::write(&other, "x").unwrap();
            mode(&other, 0o644);
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
            let e = check(&other, "the library").unwrap_err();
            assert!(e.contains("owned by uid 65534"), "{e}");
            let dir = sticky.join("theirdir");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("f"), "x").unwrap();
            mode(&dir.join("f"), 0o644);
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            let e = check(&dir.join("f"), "the library").unwrap_err();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
