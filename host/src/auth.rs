//! SMTP AUTH: who may authenticate, and how hard guessing is.
//!
//! **Credentials** come from `[[auth.users]]` in mta.toml and from the users file
//! (`[auth] users_file`, default `users` beside mta.toml), which `mta user add|passwd|remove`
//! writes: one `name:{SCHEME}hash` line per user, as Dovecot's passwd-file has them. Schemes:
//! `{ARGON2ID}` (what `mta user` writes), `{SHA512-CRYPT}` (hashes made elsewhere) and `{PLAIN}`
//! (or a bare password, which `mta config check` warns about). The file is read again when it
//! changes, so users are added without a restart. Names are compared in constant time; an
//! unknown name costs the same hash as a known one, so timing tells nothing.
//!
//! **Guessing** is throttled per client address, as Postfix's anvil and Exchange's throttling
//! do: each failure delays its answer (1 s, then doubling up to 8 s), and after
//! `max_failures` failures within `failure_window_secs` the address is locked out of AUTH for
//! `lockout_secs` (`454 4.7.0`). Each failure and lockout is logged.

use crate::config::AuthConfig;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use subtle::ConstantTimeEq;

/// What an AUTH attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The name and password match a user.
    Valid,
    /// They do not.
    Invalid,
    /// The client's address failed too often and is locked out for now.
    Locked,
}

/// A stored secret.
#[derive(Clone, Debug)]
enum Secret {
    /// A PHC string, `$argon2id$...`.
    Argon2(String),
    /// `$6$...`.
    Sha512Crypt(String),
    /// The password itself.
    Plain(String),
}

impl Secret {
    fn parse(stored: &str) -> Self {
        if let Some(phc) = stored.strip_prefix("{ARGON2ID}") {
            return Secret::Argon2(phc.to_string());
        }
        if let Some(crypt) = stored.strip_prefix("{SHA512-CRYPT}") {
            return Secret::Sha512Crypt(crypt.to_string());
        }
        if let Some(plain) = stored.strip_prefix("{PLAIN}") {
            return Secret::Plain(plain.to_string());
        }
        if stored.starts_with("$argon2") {
            return Secret::Argon2(stored.to_string());
        }
        if stored.starts_with("$6$") {
            return Secret::Sha512Crypt(stored.to_string());
        }
        Secret::Plain(stored.to_string())
    }

    /// Whether `password` matches. Blocking (a hash costs tens of milliseconds).
    fn matches(&self, password: &str) -> bool {
        match self {
            Secret::Argon2(phc) => PasswordHash::new(phc).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            }),
            Secret::Sha512Crypt(crypt) => sha_crypt::sha512_check(password, crypt).is_ok(),
            Secret::Plain(plain) => plain.as_bytes().ct_eq(password.as_bytes()).into(),
        }
    }

    fn is_plain(&self) -> bool {
        matches!(self, Secret::Plain(_))
    }

    /// The scheme's name, as Dovecot writes it.
    fn scheme(&self) -> &'static str {
        match self {
            Secret::Argon2(_) => "ARGON2ID",
            Secret::Sha512Crypt(_) => "SHA512-CRYPT",
            Secret::Plain(_) => "PLAIN",
        }
    }
}

/// The scheme of a stored secret (`ARGON2ID`, `SHA512-CRYPT` or `PLAIN`), read as AUTH reads it:
/// a bare `$argon2id$...` or `$6$...` hash is that hash, not a password.
pub fn scheme_of(stored: &str) -> &'static str {
    Secret::parse(stored).scheme()
}

/// The hash `mta user` stores for `password`: `{ARGON2ID}$argon2id$v=19$...` with a fresh
/// random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?,
        &mut salt,
    )
    .map_err(|e| format!("/dev/urandom: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    Ok(format!("{{ARGON2ID}}{hash}"))
}

/// The users of a users file: `name:secret` lines; `#` starts a comment.
pub fn parse_users_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.splitn(3, ':');
            let name = fields.next()?.to_string();
            let secret = fields.next()?.to_string();
            Some((name, secret))
        })
        .collect()
}

/// A hash to compare against when the name is unknown, so that costs the same.
fn decoy() -> &'static Secret {
    static DECOY: std::sync::OnceLock<Secret> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        Secret::Argon2(
            hash_password("an unknown user's password")
                .unwrap_or_default()
                .trim_start_matches("{ARGON2ID}")
                .to_string(),
        )
    })
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    first: Option<Instant>,
    locked_until: Option<Instant>,
}

/// The users file as last read.
#[derive(Default)]
struct FileUsers {
    stamp: Option<(SystemTime, u64)>,
    users: Vec<(String, Secret)>,
}

/// Checks AUTH attempts for every service of the host.
pub struct Authenticator {
    config: AuthConfig,
    inline: Vec<(String, Secret)>,
    file: Mutex<FileUsers>,
    /// Shared with the authenticator a configuration reload builds, so a reload never wipes
    /// a guessing client's record.
    failures: Arc<Mutex<HashMap<IpAddr, Failures>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// For `config`'s users and users file.
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            config: config.clone(),
            inline: config
                .users
                .iter()
                .map(|u| (u.name.clone(), Secret::parse(&u.password)))
                .collect(),
            file: Mutex::new(FileUsers::default()),
            failures: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// An authenticator for a reloaded `config` that keeps this one's record of failures.
    pub fn successor(&self, config: &AuthConfig) -> Self {
        Self {
            failures: Arc::clone(&self.failures),
            ..Self::new(config)
        }
    }

    /// Whether any user can authenticate (AUTH is offered only then).
    pub fn has_users(&self) -> bool {
        !self.inline.is_empty() || self.config.users_file.as_deref().is_some_and(Path::exists)
    }

    /// Whether AUTH needs TLS first.
    pub fn require_tls(&self) -> bool {
        self.config.require_tls
    }

    /// The users file's path.
    pub fn users_file(&self) -> Option<&PathBuf> {
        self.config.users_file.as_ref()
    }

    /// Whether some user's password is stored in plain text.
    pub fn has_plain_passwords(&self) -> bool {
        self.inline.iter().any(|(_, s)| s.is_plain()) || {
            self.refresh();
            let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            file.users.iter().any(|(_, s)| s.is_plain())
        }
    }

    /// Reads the users file again when it changed.
    fn refresh(&self) {
        let Some(path) = &self.config.users_file else {
            return;
        };
        let stamp = std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.stamp == stamp {
            return;
        }
        file.stamp = stamp;
        file.users = match std::fs::read_to_string(path) {
            Ok(text) => parse_users_file(&text)
                .into_iter()
                .map(|(n, s)| (n, Secret::parse(&s)))
                .collect(),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(message = "Cannot read the users file.", path = ?path, error = %e);
                }
                Vec::new()
            }
        };
    }

    /// The secret of `user`, looked at in every entry (constant time in the names).
    fn secret_of(&self, user: &str) -> Option<Secret> {
        self.refresh();
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for (name, secret) in self.inline.iter().chain(file.users.iter()) {
            let hit: bool = name.as_bytes().ct_eq(user.as_bytes()).into();
            if hit && found.is_none() {
                found = Some(secret.clone());
            }
        }
        found
    }

    /// Checks `user` and `password` from a client at `ip`. A failure is answered late, and
    /// too many lock the address out.
    pub async fn check(&self, ip: IpAddr, user: &str, password: &str) -> Outcome {
        let now = Instant::now();
        if let Some(until) = self.locked_until(ip, now) {
            tracing::warn!(message = "AUTH refused: the client is locked out.", client = %ip, user = ?user, seconds_left = until.saturating_duration_since(now).as_secs());
            return Outcome::Locked;
        }
        let secret = self.secret_of(user);
        let password = password.to_string();
        let valid = tokio::task::spawn_blocking(move || match secret {
            Some(secret) => secret.matches(&password),
            None => {
                let _ = decoy().matches(&password);
                false
            }
        })
        .await
        .unwrap_or(false);
        if valid {
            self.lock().remove(&ip);
            return Outcome::Valid;
        }
        let (count, locked) = self.failed(ip, Instant::now());
        tracing::info!(message = "Authentication failed.", client = %ip, user = ?user, failures = count);
        if locked {
            tracing::warn!(message = "Client locked out of AUTH.", client = %ip, failures = count, lockout_secs = self.config.lockout_secs);
        }
        // A late answer slows down guessing on every connection at once.
        let delay = Duration::from_secs(1u64 << (count.saturating_sub(1)).min(3));
        tokio::time::sleep(delay).await;
        Outcome::Invalid
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn locked_until(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let mut failures = self.lock();
        let entry = failures.get_mut(&ip)?;
        match entry.locked_until {
            Some(until) if until > now => Some(until),
            Some(_) => {
                failures.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Counts a failure; whether the address is now locked out.
    fn failed(&self, ip: IpAddr, now: Instant) -> (u32, bool) {
        let window = Duration::from_secs(self.config.failure_window_secs);
        let mut failures = self.lock();
        if failures.len() > 100_000 {
            // Many addresses at once: forget the stale ones.
            failures.retain(|_, f| {
                f.locked_until.is_some_and(|u| u > now)
                    || f.first.is_some_and(|t| now.duration_since(t) < window)
            });
        }
        let entry = failures.entry(ip).or_default();
        if entry.first.is_none_or(|t| now.duration_since(t) >= window) {
            *entry = Failures {
                count: 0,
                first: Some(now),
                locked_until: None,
            };
        }
        entry.count += 1;
        let locked = self.config.max_failures > 0 && entry.count >= self.config.max_failures;
        if locked {
            entry.locked_until = Some(now + Duration::from_secs(self.config.lockout_secs));
        }
        (entry.count, locked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_verifies_and_only_the_right_password() {
        let argon = hash_password("s3cret").unwrap();
        assert!(argon.starts_with("{ARGON2ID}$argon2id$"));
        assert!(Secret::parse(&argon).matches("s3cret"));
        assert!(!Secret::parse(&argon).matches("s3cret!"));
        let crypt =
            sha_crypt::sha512_simple("pw", &sha_crypt::Sha512Params::new(5000).unwrap()).unwrap();
        assert!(Secret::parse(&format!("{{SHA512-CRYPT}}{crypt}")).matches("pw"));
        assert!(Secret::parse(&crypt).matches("pw"));
        assert!(!Secret::parse(&crypt).matches("pW"));
        assert!(Secret::parse("{PLAIN}pw").matches("pw"));
        assert!(Secret::parse("pw").is_plain());
        assert_eq!(
            parse_users_file("# users\nbob:{PLAIN}x\n\nalice:{ARGON2ID}$a:extra\n"),
            [
                ("bob".to_string(), "{PLAIN}x".to_string()),
                ("alice".to_string(), "{ARGON2ID}$a".to_string())
            ]
        );
    }

    #[test]
    fn failures_lock_an_address_out_for_a_while() {
        let config = AuthConfig {
            max_failures: 3,
            ..AuthConfig::default()
        };
        let auth = Authenticator::new(&config);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t = Instant::now();
        assert_eq!(auth.failed(ip, t), (1, false));
        assert_eq!(auth.failed(ip, t), (2, false));
        assert_eq!(auth.failed(ip, t), (3, true));
        assert!(auth.locked_until(ip, t).is_some());
        assert!(auth.locked_until("192.0.2.8".parse().unwrap(), t).is_none());
        let later = t + Duration::from_secs(config.lockout_secs + 1);
        assert!(auth.locked_until(ip, later).is_none(), "the lockout ends");
    }
}
