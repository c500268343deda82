//! `mta user add|passwd|remove|list|hash`: the users who may authenticate, in the users file
//! (`[auth] users_file`, default `users` beside mta.toml): `name:{ARGON2ID}...` lines, written
//! atomically with mode 0600. The running server reads the file again when it changes. Run as
//! root with `user` set in mta.toml, the file is given to that user (and group): the server,
//! which runs as that user once its listeners are bound, must be able to read it.
//!
//! The password is read from standard input: prompted for twice, without echo, on a terminal;
//! otherwise the first line (`printf '%s\n' "$PASSWORD" | mta user add bob@example.test`).

use crate::auth::{hash_password, parse_users_file, scheme_of};
use crate::config::HostConfig;
use anyhow::{bail, Context};
use clap::Subcommand;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (an address, usually), with a password read from standard input.
    Add {
        /// The login name.
        name: String,
    },
    /// Change a user's password.
    Passwd {
        /// The login name.
        name: String,
    },
    /// Remove a user.
    Remove {
        /// The login name.
        name: String,
    },
    /// List the users of the users file.
    List,
    /// Print the hash of a password read from standard input, for `[[auth.users]]` in mta.toml.
    Hash,
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c == ':' || c.is_control() || c.is_whitespace())
    {
        bail!("user name {name:?}: expected a name without ':', spaces or control characters");
    }
    Ok(())
}

/// A password from standard input: twice without echo on a terminal, else the first line.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(password);
    }
    let prompt = |text: &str| -> anyhow::Result<String> {
        eprint!("{text}");
        std::io::stderr().flush()?;
        let saved = rustix::termios::tcgetattr(&stdin)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)?;
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved)?;
        eprintln!();
        read?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let first = prompt("Password: ")?;
    if first.is_empty() {
        bail!("an empty password");
    }
    if prompt("Again: ")? != first {
        bail!("the two passwords differ");
    }
    Ok(first)
}

/// Replaces `path` with `lines`: a new 0600 file beside it, owned by `owner` (uid, gid) when
/// given, fsync'd, renamed over it.
fn write_users(
    path: &Path,
    lines: &[(String, String)],
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut text =
        String::from("# Users who may authenticate: name:{SCHEME}hash (mta user add).\n");
    for (name, secret) in lines {
        text.push_str(&format!("{name}:{secret}\n"));
    }
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .with_context(|| format!("chown {uid}:{gid} {}", tmp.display()))?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

pub fn run(config: &HostConfig, command: UserCommand) -> anyhow::Result<ExitCode> {
    if let UserCommand::Hash = command {
        println!(
            "{}",
            hash_password(&read_password()?).map_err(anyhow::Error::msg)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let path = config
        .auth
        .users_file
        .clone()
        .unwrap_or_else(|| "users".into());
    let mut users = match std::fs::read_to_string(&path) {
        Ok(text) => parse_users_file(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let position =
        |users: &[(String, String)], name: &str| users.iter().position(|(n, _)| n == name);
    // As root, the file belongs to the user the server runs as: a root-owned 0600 file is one
    // the server cannot read once it has dropped its privileges.
    let owner = match (&config.user, crate::privileges::is_root()) {
        (Some(user), true) => {
            let account = crate::privileges::lookup(user, config.group.as_deref())
                .map_err(anyhow::Error::msg)?;
            Some((account.uid, account.gid))
        }
        _ => None,
    };
    match command {
        UserCommand::Add { name } => {
            check_name(&name)?;
            if position(&users, &name).is_some() {
                bail!(
                    "{name} is already in {}: use mta user passwd",
                    path.display()
                );
            }
            let hash = hash_password(&read_password()?).map_err(anyhow::Error::msg)?;
            users.push((name.clone(), hash));
            write_users(&path, &users, owner)?;
            println!("Added {name} to {}.", path.display());
        }
        UserCommand::Passwd { name } => {
            let Some(i) = position(&users, &name) else {
                bail!("no user {name} in {}", path.display());
            };
            users[i].1 = hash_password(&read_password()?).map_err(anyhow::Error::msg)?;
            write_users(&path, &users, owner)?;
            println!("Changed the password of {name}.");
        }
        UserCommand::Remove { name } => {
            let Some(i) = position(&users, &name) else {
                bail!("no user {name} in {}", path.display());
            };
            users.remove(i);
            write_users(&path, &users, owner)?;
            println!("Removed {name} from {}.", path.display());
        }
        UserCommand::List => {
            for (name, secret) in &users {
                println!("{name}  {}", scheme_of(secret));
            }
        }
        UserCommand::Hash => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}
