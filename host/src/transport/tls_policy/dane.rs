//! DANE for SMTP (RFC 7672): TLSA records, published under DNSSEC for a mail exchanger
//! (`_25._tcp.<mx>`), say which certificate it must present. Where a domain's MX answer and
//! its exchanger's TLSA answer are both DNSSEC-authenticated, TLS is mandatory and the
//! certificate is checked against the records instead of the web PKI:
//!
//! - DANE-EE (usage 3): the server's own certificate (or its key) matches; names and dates are
//!   not checked (RFC 7672 3.1.1);
//! - DANE-TA (usage 2): a certificate of the chain the server sends matches; the chain must
//!   lead to it and name the exchanger (or the domain);
//! - PKIX-TA and PKIX-EE (usages 0 and 1) are not used for SMTP (RFC 7672 3.1.3).
//!
//! Whether an answer is authenticated is the resolver's word (its AD bit), as Postfix takes
//! it: point `[routing] dns_servers` at a validating resolver on this host (unbound, say). A
//! record that cannot be used is ignored; if none is usable, the exchanger is treated as
//! without TLSA records.

use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};
use sha2::Digest;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One usable TLSA record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlsa {
    /// 2 (DANE-TA) or 3 (DANE-EE).
    pub usage: u8,
    /// 0: the whole certificate; 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the data itself; 1: SHA-256; 2: SHA-512.
    pub matching: u8,
    /// What must match.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// A record from its fields, if SMTP can use it.
    pub fn usable(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Option<Self> {
        (matches!(usage, 2 | 3) && selector <= 1 && matching <= 2 && !data.is_empty()).then_some(
            Self {
                usage,
                selector,
                matching,
                data,
            },
        )
    }

    /// Whether `cert` matches this record.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected = match self.selector {
            0 => cert.as_ref().to_vec(),
            _ => match spki(cert) {
                Some(spki) => spki,
                None => return false,
            },
        };
        let digest = match self.matching {
            0 => selected,
            1 => sha2::Sha256::digest(&selected).to_vec(),
            _ => sha2::Sha512::digest(&selected).to_vec(),
        };
        digest == self.data
    }
}

/// The DER SubjectPublicKeyInfo of `cert`.
fn spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let anchor = webpki::anchor_from_trusted_cert(cert).ok()?;
    // webpki gives the field's value; TLSA hashes the whole DER SEQUENCE.
    let value = anchor.subject_public_key_info.as_ref();
    let mut der = vec![0x30];
    match value.len() {
        n if n < 0x80 => der.push(n as u8),
        n if n < 0x100 => der.extend_from_slice(&[0x81, n as u8]),
        n => der.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    der.extend_from_slice(value);
    Some(der)
}

/// An answer and whether the resolver authenticated it (its AD bit).
pub struct Answer {
    /// The answer's records.
    pub records: Vec<RData>,
    /// DNSSEC-authenticated.
    pub authentic: bool,
}

/// Asks `servers` for `name`'s records of `rtype`, with AD set in the query (RFC 6840 5.7), so
/// a validating resolver says whether the answer is authentic. UDP first, TCP if truncated.
pub async fn query(
    servers: &[SocketAddr],
    name: &str,
    rtype: RecordType,
) -> Result<Answer, String> {
    let name = Name::from_utf8(name).map_err(|e| format!("{name}: {e}"))?;
    let mut message = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.authentic_data = true;
    message.add_query(Query::query(name.clone(), rtype));
    let bytes = message.to_vec().map_err(|e| e.to_string())?;
    let mut last = String::from("no DNS server");
    for server in servers {
        match exchange(*server, &bytes).await {
            Ok(reply) => {
                let reply = Message::from_vec(&reply).map_err(|e| e.to_string())?;
                if reply.metadata.id != message.metadata.id {
                    last = format!("{server}: an answer to another query");
                    continue;
                }
                let records = reply
                    .answers
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                return Ok(Answer {
                    records,
                    authentic: reply.metadata.authentic_data,
                });
            }
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    Err(last)
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u16::from_le_bytes(b)
}

async fn exchange(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeout = Duration::from_secs(5);
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(timeout, socket.recv(&mut buf))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    buf.truncate(n);
    // TC: the answer did not fit; ask again over TCP.
    if buf.len() > 2 && buf[2] & 0x02 != 0 {
        let mut tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(server))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        tcp.write_all(&framed).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        tokio::time::timeout(timeout, tcp.read_exact(&mut len))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(reply);
    }
    Ok(buf)
}

/// The usable TLSA records of an answer.
pub fn usable(answer: &Answer) -> Vec<Tlsa> {
    answer
        .records
        .iter()
        .filter_map(|r| match r {
            RData::TLSA(t) => Tlsa::usable(
                u8::from(t.cert_usage),
                u8::from(t.selector),
                u8::from(t.matching),
                t.cert_data.clone(),
            ),
            _ => None,
        })
        .collect()
}

/// Checks a server's certificate against TLSA records; `names` are the names DANE-TA accepts
/// (the exchanger's, the domain's).
#[derive(Debug)]
pub struct DaneVerifier {
    /// The records.
    pub records: Vec<Tlsa>,
    /// Names a DANE-TA chain may be for.
    pub names: Vec<String>,
    /// The signature algorithms.
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self
            .records
            .iter()
            .any(|r| r.usage == 3 && r.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        for record in self.records.iter().filter(|r| r.usage == 2) {
            for ta in intermediates.iter().filter(|c| record.matches(c)) {
                let mut roots = rustls::RootCertStore::empty();
                if roots.add(ta.clone()).is_err() {
                    continue;
                }
                let Ok(webpki) = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&self.provider),
                )
                .build() else {
                    continue;
                };
                for name in &self.names {
                    let Ok(server_name) = ServerName::try_from(name.clone()) else {
                        continue;
                    };
                    if webpki
                        .verify_server_cert(
                            end_entity,
                            intermediates,
                            &server_name,
                            ocsp_response,
                            now,
                        )
                        .is_ok()
                    {
                        return Ok(ServerCertVerified::assertion());
                    }
                }
            }
        }
        Err(Error::General(
            "the certificate matches none of the exchanger's TLSA records (DANE)".into(),
        ))
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_match_the_certificate_or_its_key_by_every_matching_type() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.far.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let full = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(spki(&der).unwrap(), full, "the whole SPKI");
        let spki_sha256 = sha2::Sha256::digest(&full).to_vec();
        let cert_sha512 = sha2::Sha512::digest(der.as_ref()).to_vec();
        assert!(Tlsa::usable(3, 1, 1, spki_sha256.clone())
            .unwrap()
            .matches(&der));
        assert!(Tlsa::usable(3, 0, 2, cert_sha512).unwrap().matches(&der));
        assert!(Tlsa::usable(3, 0, 0, der.to_vec()).unwrap().matches(&der));
        let mut wrong = spki_sha256.clone();
        wrong[0] ^= 1;
        assert!(!Tlsa::usable(3, 1, 1, wrong).unwrap().matches(&der));
        assert!(
            Tlsa::usable(1, 1, 1, spki_sha256.clone()).is_none(),
            "PKIX-EE is not for SMTP"
        );
        assert!(Tlsa::usable(3, 2, 1, spki_sha256).is_none());
    }
}
