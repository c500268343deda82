//! Running as an unprivileged user, as Postfix does: started as root, `mta run` binds its
//! listeners (port 25 needs root), then becomes the `user` of mta.toml (and its `group`) before
//! it loads any agent or reads any mail. Nothing afterwards can become root again.
//!
//! The switch happens while the process has a single thread (Linux changes the credentials of
//! the calling thread only; every thread made later inherits them), and is checked: a process
//! that could still become root afterwards stops.

use std::path::Path;

/// A user to run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The user's name (or number, as given).
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// The group id to run with.
    pub gid: u32,
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Finds `user` (a name in /etc/passwd, or a number) and `group` (a name in /etc/group, a
/// number, or by default the user's primary group).
pub fn lookup(user: &str, group: Option<&str>) -> Result<Account, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (
            uid,
            find(&passwd, |f| f.get(2) == Some(&user))
                .and_then(|f| f.get(3)?.parse().ok())
                .unwrap_or(uid),
        ),
        Err(_) => {
            let fields = find(&passwd, |f| f.first() == Some(&user)).ok_or_else(|| {
                format!("user = {user:?}: no such user in /etc/passwd (create it, e.g. useradd --system --home-dir /var/lib/mta --shell /usr/sbin/nologin {user})")
            })?;
            let number = |i: usize| fields.get(i).and_then(|v| v.parse::<u32>().ok());
            (
                number(2).ok_or_else(|| format!("user = {user:?}: a bad /etc/passwd line"))?,
                number(3).ok_or_else(|| format!("user = {user:?}: a bad /etc/passwd line"))?,
            )
        }
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
                find(&groups, |f| f.first() == Some(&g))
                    .and_then(|f| f.get(2)?.parse().ok())
                    .ok_or_else(|| format!("group = {g:?}: no such group in /etc/group"))?
            }
        },
    };
    if uid == 0 {
        return Err(format!(
            "user = {user:?} is root: name an unprivileged user"
        ));
    }
    Ok(Account {
        name: user.to_string(),
        uid,
        gid,
    })
}

/// The fields of the first line of a colon-separated file that `matches`.
fn find(text: &str, matches: impl Fn(&[&str]) -> bool) -> Option<Vec<&str>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| matches(f))
}

/// How many threads the process has.
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(usize::MAX)
}

/// Makes `dir` (0750) for `account` if it is missing; if it exists it must belong to it.
/// Called as root, before the switch.
pub fn prepare_data_dir(dir: &Path, account: &Account) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|e| format!("creating data_dir {}: {e}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
            .map_err(|e| format!("chmod of data_dir {}: {e}", dir.display()))?;
        rustix::fs::chown(
            dir,
            Some(rustix::process::Uid::from_raw(account.uid)),
            Some(rustix::process::Gid::from_raw(account.gid)),
        )
        .map_err(|e| format!("chown of data_dir {}: {e}", dir.display()))?;
    }
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| format!("data_dir {}: {e}", dir.display()))?;
    if meta.uid() != account.uid {
        return Err(format!(
            "data_dir {} belongs to uid {}, not to {} (uid {}): give it to the user mta runs as, e.g. chown -R {}: {}",
            dir.display(),
            meta.uid(),
            account.name,
            account.uid,
            account.name,
            dir.display()
        ));
    }
    Ok(())
}

/// Becomes `account` for good: supplementary groups, group, then user; checks that root cannot
/// be had back.
pub fn drop_to(account: &Account) -> Result<(), String> {
    use rustix::process::{Gid, Uid};
    let n = threads();
    if n != 1 {
        return Err(format!(
            "cannot switch to {} with {n} threads running (only the calling thread would change)",
            account.name
        ));
    }
    let (uid, gid) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    rustix::thread::set_thread_groups(&[gid])
        .map_err(|e| format!("setgroups for {}: {e}", account.name))?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)
        .map_err(|e| format!("setresgid({}) for {}: {e}", account.gid, account.name))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)
        .map_err(|e| format!("setresuid({}) for {}: {e}", account.uid, account.name))?;
    if rustix::thread::set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).is_ok()
        || rustix::process::geteuid() != uid
        || rustix::process::getegid() != gid
    {
        return Err(format!("the switch to {} did not hold", account.name));
    }
    tracing::info!(message = "Running as an unprivileged user.", user = %account.name, uid = account.uid, gid = account.gid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_are_found_by_name_or_number() {
        let nobody = lookup("nobody", None).expect("nobody exists");
        assert_eq!(nobody.uid, 65534);
        assert_eq!(lookup("65534", Some("0")).unwrap().gid, 0);
        assert!(lookup("root", None).unwrap_err().contains("is root"));
        assert!(lookup("no-such-user-here", None)
            .unwrap_err()
            .contains("useradd"));
        assert!(lookup("nobody", Some("no-such-group")).is_err());
    }
}
