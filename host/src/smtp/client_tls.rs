//! TLS towards next hops, at Exchange's levels (a send connector's `tls`):
//!
//! | `tls` | STARTTLS | the certificate |
//! |---|---|---|
//! | `none` | never | - |
//! | `opportunistic` (default) | when offered; plain text otherwise | not checked (RFC 7435) |
//! | `required` (`encryption_only`) | always, or the delivery waits | not checked |
//! | `certificate_validation` | always | chains to a trusted root (Mozilla's, and `[tls] ca_file`) |
//! | `domain_validation` | always | also names the host: `tls_domain`, else the smart host's or the MX's name |
//!
//! The name of the host connected to (smart host or MX name, never its address) goes in the
//! TLS SNI extension. Every outbound TLS session is logged with its version, cipher and what
//! was verified.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// A send connector's TLS level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Never (our own services).
    None,
    /// When the server offers it; plain text when it does not or the handshake fails.
    #[default]
    Opportunistic,
    /// Always: a server without STARTTLS, or a failed handshake, is a temporary failure. The
    /// certificate is not checked.
    #[serde(alias = "encryption_only")]
    Required,
    /// Always, with a certificate that chains to a trusted root.
    CertificateValidation,
    /// Always, with a certificate that chains to a trusted root and names the host.
    DomainValidation,
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::None => "none",
            TlsMode::Opportunistic => "opportunistic",
            TlsMode::Required => "required",
            TlsMode::CertificateValidation => "certificate_validation",
            TlsMode::DomainValidation => "domain_validation",
        })
    }
}

impl TlsMode {
    /// Whether a session without TLS is refused.
    pub fn required(self) -> bool {
        !matches!(self, TlsMode::None | TlsMode::Opportunistic)
    }

    /// What the level verifies, for the log.
    pub fn verifies(self) -> &'static str {
        match self {
            TlsMode::None | TlsMode::Opportunistic | TlsMode::Required => {
                "nothing (encryption only)"
            }
            TlsMode::CertificateValidation => "the certificate chain",
            TlsMode::DomainValidation => "the certificate chain and name",
        }
    }
}

/// How to start TLS with one next hop.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    /// The level.
    pub mode: TlsMode,
    /// The name to send as SNI and, for `domain_validation`, to find in the certificate.
    pub name: Option<String>,
    /// The trusted roots.
    pub roots: Arc<RootCertStore>,
    /// DANE: the exchanger's TLSA records, and the names a DANE-TA chain may be for.
    pub dane: Option<(
        Arc<Vec<crate::transport::tls_policy::dane::Tlsa>>,
        Vec<String>,
    )>,
}

impl TlsTarget {
    /// A level with no name and Mozilla's roots (our own services, tests).
    pub fn plain(mode: TlsMode) -> Self {
        Self {
            mode,
            name: None,
            roots: bundled_roots(),
            dane: None,
        }
    }
}

/// Mozilla's roots (webpki-roots).
pub fn bundled_roots() -> Arc<RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            Arc::new(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        })
        .clone()
}

/// Mozilla's roots and the CA certificates of the PEM file `ca_file`.
pub fn roots_with(ca_file: Option<&std::path::Path>) -> Result<Arc<RootCertStore>, String> {
    let Some(path) = ca_file else {
        return Ok(bundled_roots());
    };
    use rustls::pki_types::pem::PemObject;
    let mut store = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("[tls] ca_file {}: {e}", path.display()))?
    {
        let cert = cert.map_err(|e| format!("[tls] ca_file {}: {e}", path.display()))?;
        store
            .add(cert)
            .map_err(|e| format!("[tls] ca_file {}: {e}", path.display()))?;
        added += 1;
    }
    if added == 0 {
        return Err(format!(
            "[tls] ca_file {}: no certificate in it",
            path.display()
        ));
    }
    Ok(Arc::new(store))
}

/// The client configuration for `target`, and the server name to hand to the handshake.
pub fn client_config(
    target: &TlsTarget,
    peer: &str,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let host = peer
        .rsplit_once(':')
        .map_or(peer, |(h, _)| h)
        .trim_matches(['[', ']']);
    let name_text = target.name.as_deref().unwrap_or(host).trim_end_matches('.');
    let name = ServerName::try_from(name_text.to_string())
        .or_else(|_| ServerName::try_from(host.to_string()))
        .map_err(|e| format!("no usable TLS name for {peer}: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (&target.dane, target.mode) {
        (Some((records, names)), _) => Arc::new(crate::transport::tls_policy::dane::DaneVerifier {
            records: records.to_vec(),
            names: names.clone(),
            provider: Arc::clone(&provider),
        }),
        (None, mode) => match mode {
            TlsMode::None | TlsMode::Opportunistic | TlsMode::Required => {
                Arc::new(Unverified(Arc::clone(&provider)))
            }
            TlsMode::CertificateValidation | TlsMode::DomainValidation => {
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::clone(&target.roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| e.to_string())?;
                Arc::new(Verified {
                    inner: webpki,
                    check_name: target.mode == TlsMode::DomainValidation,
                })
            }
        },
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((Arc::new(config), name))
}

/// Checks the chain to a trusted root, and the name when `check_name`.
#[derive(Debug)]
struct Verified {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any certificate, still checking the handshake's signatures.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
