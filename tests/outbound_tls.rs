//! TLS towards next hops at each of a send connector's levels, against a real next hop (another
//! mta) holding a certificate from a test CA: what is verified, what SNI is sent, what is
//! refused.

mod support;

use std::time::Duration;
use support::*;

/// A CA, and a server certificate it signed for `names`: (ca.pem, cert.pem, key.pem) in `dir`.
fn certificates(dir: &TestDir, names: &[&str], signed: bool) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mta test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = if signed {
        params.signed_by(&key, &ca).unwrap()
    } else {
        params.self_signed(&key).unwrap()
    };
    let ca_pem = dir.write("ca.pem", &ca.pem());
    let cert_pem = dir.write("cert.pem", &cert.pem());
    let key_pem = dir.write("key.pem", &key.serialize_pem());
    (
        ca_pem.display().to_string(),
        cert_pem.display().to_string(),
        key_pem.display().to_string(),
    )
}

/// A next hop (another mta) for far.test with this certificate, and a sender whose connector
/// uses `level`; the sender's log after one message, and whether it was delivered.
fn attempt(names: &[&str], signed: bool, level: &str, extra: &str) -> (bool, String, String) {
    let remote_dir = TestDir::new("tls-remote");
    let (ca, cert, key) = certificates(&remote_dir, names, signed);
    let remote = Mta::start_with(
        &remote_dir,
        &[],
        &format!("[tls]\ncertificate = \"{cert}\"\nkey = \"{key}\"\n[organization]\naccepted_domains = [\"far.test\"]\nmailboxes = [\"carol\"]\n"),
        &[],
    );
    let dir = TestDir::new("tls-sender");
    let mta = Mta::start(
        &dir,
        &format!("[tls]\nca_file = \"{ca}\"\n[routing]\nretry_base_ms = 200\nretry_max_ms = 400\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:far.test;1\"]\nsmart_hosts = [\"localhost:{}\"]\ntls = \"{level}\"\n{extra}", remote.transport),
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.send_mail(
            "a@example.test",
            &["carol@far.test"],
            "Subject: over tls\n\nx\n"
        )
        .code,
        250
    );
    smtp.quit();
    let delivered = wait_until(Duration::from_secs(5), || {
        remote.maildir("carol").len() == 1
    });
    if !delivered {
        // Let a few attempts be logged.
        std::thread::sleep(Duration::from_millis(500));
    }
    (delivered, mta.log(), remote.log())
}

#[test]
fn domain_validation_checks_the_chain_and_the_name_and_sends_the_name_as_sni() {
    let (delivered, log, remote) = attempt(&["localhost"], true, "domain_validation", "");
    assert!(delivered, "{log}");
    assert!(
        log.contains("Outbound TLS.")
            && log.contains("verified=\"the certificate chain and name\""),
        "{log}"
    );
    assert!(
        log.contains("version=TLSv1_3") || log.contains("version=TLSv1_2"),
        "{log}"
    );
    assert!(remote.contains("sni=\"localhost\""), "{remote}");
}

#[test]
fn a_certificate_for_another_name_fails_domain_validation_but_passes_certificate_validation() {
    let (delivered, log, _) = attempt(&["other.test"], true, "domain_validation", "");
    assert!(
        !delivered,
        "delivered to a host whose certificate names another: {log}"
    );
    assert!(
        log.contains("4.7.5") && log.contains("not valid for name"),
        "{log}"
    );
    let (delivered, log, _) = attempt(&["other.test"], true, "certificate_validation", "");
    assert!(delivered, "{log}");
    // tls_domain names what the certificate must carry.
    let (delivered, log, _) = attempt(
        &["mx.partner.test"],
        true,
        "domain_validation",
        "tls_domain = \"mx.partner.test\"\n",
    );
    assert!(delivered, "{log}");
}

#[test]
fn an_untrusted_certificate_fails_validation_and_passes_encryption_only() {
    let (delivered, log, _) = attempt(&["localhost"], false, "certificate_validation", "");
    assert!(!delivered, "{log}");
    assert!(
        log.contains("4.7.5") && log.contains("UnknownIssuer"),
        "{log}"
    );
    let (delivered, log, _) = attempt(&["localhost"], false, "encryption_only", "");
    assert!(delivered, "{log}");
    assert!(
        log.contains("verified=\"nothing (encryption only)\""),
        "{log}"
    );
}
