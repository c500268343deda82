//! TLS for STARTTLS: the configured certificate, or a self-signed one generated on first run
//! and kept under `<data_dir>/tls/` so that it stays the same across restarts.
//!
//! The self-signed certificate names this host (`hostname`) as its subject's common name and
//! in its subject alternative names (with `localhost`), is valid for a year, and is renewed a
//! day before it expires: at start-up, and by a daily check while the server runs, which swaps
//! the new certificate in for new sessions.

use crate::config::HostConfig;
use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_rustls::TlsAcceptor;

/// How long a generated certificate is valid.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// The acceptor every listener offering STARTTLS uses; swapped when a generated certificate is
/// renewed.
pub struct Tls {
    acceptor: ArcSwap<TlsAcceptor>,
    config: HostConfig,
}

impl Tls {
    /// Loads (or generates) the certificate.
    pub fn load(config: &HostConfig) -> anyhow::Result<Arc<Self>> {
        let acceptor = acceptor(config)?;
        Ok(Arc::new(Self {
            acceptor: ArcSwap::from_pointee(acceptor),
            config: config.clone(),
        }))
    }

    /// The acceptor for a new handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::clone(&self.acceptor.load())
    }

    /// Renews a generated certificate that is about to expire, and swaps it in.
    pub fn renew_if_due(&self) {
        if self.config.tls.certificate.is_some() || !generated_is_due(&self.config) {
            return;
        }
        match acceptor(&self.config) {
            Ok(new) => self.acceptor.store(Arc::new(new)),
            Err(e) => {
                tracing::error!(message = "Cannot renew the self-signed TLS certificate.", error = %e)
            }
        }
    }

    /// Checks every day whether the generated certificate is due, until the runtime stops.
    pub fn keep_renewed(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
                match weak.upgrade() {
                    Some(tls) => tls.renew_if_due(),
                    None => return,
                }
            }
        });
    }
}

/// Builds an acceptor from the configured certificate, or the generated one.
fn acceptor(config: &HostConfig) -> anyhow::Result<TlsAcceptor> {
    let (cert_path, key_path) = match (&config.tls.certificate, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => self_signed(config)?,
        _ => anyhow::bail!("[tls] needs both certificate and key, or neither (a self-signed certificate is then generated)"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading the TLS certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the TLS certificate {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the TLS key {}", key_path.display()))?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Where the generated certificate's expiry is written (seconds since the epoch).
fn expiry_file(dir: &Path) -> PathBuf {
    dir.join("cert.expires")
}

/// Whether the generated certificate is missing, has no known expiry (an older version's), or
/// expires within a day.
fn generated_is_due(config: &HostConfig) -> bool {
    let dir = config.data_dir.join("tls");
    if !dir.join("cert.pem").exists() || !dir.join("key.pem").exists() {
        return true;
    }
    let expires = std::fs::read_to_string(expiry_file(&dir))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    expires.is_none_or(|at| at <= now + RENEW_BEFORE.as_secs())
}

/// The self-signed certificate under `<data_dir>/tls/`, generated when due.
fn self_signed(config: &HostConfig) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = config.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !generated_is_due(config) {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut params =
        rcgen::CertificateParams::new(vec![config.hostname.clone(), "localhost".into()])
            .context("the certificate's names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, config.hostname.clone());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = |secs: u64| {
        time::OffsetDateTime::from_unix_timestamp(secs as i64).context("the certificate's validity")
    };
    params.not_before = at(now.as_secs().saturating_sub(3600))?;
    let expires = now.as_secs() + VALIDITY.as_secs();
    params.not_after = at(expires)?;
    let signing_key = rcgen::KeyPair::generate().context("generating a key")?;
    let generated = params
        .self_signed(&signing_key)
        .context("generating a self-signed certificate")?;
    {
        // The key is readable by its owner only from its first byte on.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&key);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .with_context(|| format!("creating {}", key.display()))?;
        file.write_all(signing_key.serialize_pem().as_bytes())?;
        file.sync_all()?;
    }
    crate::fsutil::write_atomic(&cert, generated.pem().as_bytes())?;
    crate::fsutil::write_atomic(&expiry_file(&dir), expires.to_string().as_bytes())?;
    tracing::info!(message = "Generated a self-signed TLS certificate.", path = %cert.display(), hostname = %config.hostname, valid_days = VALIDITY.as_secs() / 86400);
    Ok((cert, key))
}
