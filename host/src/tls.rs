//! TLS for STARTTLS: the configured certificate, or a self-signed one generated on first run
//! and kept under `<data_dir>/tls/` so that it stays the same across restarts.

use crate::config::HostConfig;
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Builds the acceptor every listener offering STARTTLS uses.
pub fn acceptor(config: &HostConfig) -> anyhow::Result<TlsAcceptor> {
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

/// The self-signed certificate under `<data_dir>/tls/`, generated if missing.
fn self_signed(config: &HostConfig) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = config.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let generated =
        rcgen::generate_simple_self_signed(vec![config.hostname.clone(), "localhost".into()])
            .context("generating a self-signed certificate")?;
    crate::fsutil::write_atomic(&key, generated.signing_key.serialize_pem().as_bytes())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    crate::fsutil::write_atomic(&cert, generated.cert.pem().as_bytes())?;
    tracing::info!(message = "Generated a self-signed TLS certificate.", path = %cert.display(), hostname = %config.hostname);
    Ok((cert, key))
}
