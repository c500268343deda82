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
    assert!(
        log.contains("cipher=TLS"),
        "the cipher suite is logged: {log}"
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

/// A test CA that issues certificates into a directory.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    ca_file: String,
}

impl Pki {
    fn new(dir: &TestDir) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mta test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let ca_file = dir.write("ca.pem", &ca.pem()).display().to_string();
        Self { ca, ca_file }
    }

    /// A certificate for `names` (signed by the CA, or self-signed): its PEM paths and the
    /// SHA-256 of its SubjectPublicKeyInfo, in hex (for TLSA 3 1 1).
    fn issue(
        &self,
        dir: &TestDir,
        prefix: &str,
        names: &[&str],
        signed: bool,
    ) -> (String, String, String) {
        use sha2::Digest;
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = if signed {
            params.signed_by(&key, &self.ca).unwrap()
        } else {
            params.self_signed(&key).unwrap()
        };
        let hash: String =
            sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key))
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        (
            dir.write(&format!("{prefix}-cert.pem"), &cert.pem())
                .display()
                .to_string(),
            dir.write(&format!("{prefix}-key.pem"), &key.serialize_pem())
                .display()
                .to_string(),
            hash,
        )
    }
}

/// A DNS server (dnslib) answering from `zone` (JSON: {"MX": {name: [[pref, host]]}, "A":
/// {name: [ip]}, "TXT": {name: [text]}, "TLSA": {name: [[usage, selector, matching, hex]]},
/// "ad": bool}); every name fully qualified.
fn dns(port: u16, zone: &str) -> std::process::Child {
    let script = format!(
        r#"
import json, time
from dnslib import RR, QTYPE, MX, A, TXT, TLSA
from dnslib.server import DNSServer, BaseResolver
zone = json.loads({zone:?})
class Zone(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        name, qtype = str(request.q.qname).lower(), QTYPE[request.q.qtype]
        for value in zone.get(qtype, {{}}).get(name, []):
            if qtype == 'MX': rdata = MX(value[1], value[0])
            elif qtype == 'A': rdata = A(value)
            elif qtype == 'TXT': rdata = TXT(value)
            elif qtype == 'TLSA': rdata = TLSA(value[0], value[1], value[2], bytes.fromhex(value[3]))
            else: continue
            reply.add_answer(RR(name, getattr(QTYPE, qtype), rdata=rdata, ttl=60))
        # AD only where the zone says the answer is authenticated (a query's AD is a request).
        reply.header.ad = 1 if zone.get('ad') else 0
        return reply
server = DNSServer(Zone(), port={port}, address='127.0.0.1')
server.start_thread()
time.sleep(120)
"#
    );
    let child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .spawn()
        .expect("python3 with dnslib");
    std::thread::sleep(Duration::from_millis(400));
    child
}

/// An HTTPS server at 127.0.0.1:`port` serving `policy` as text/plain.
fn policy_host(port: u16, cert: &str, key: &str, policy: &str) -> std::process::Child {
    let script = format!(
        r#"
import ssl, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {policy:?}.encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
server = http.server.HTTPServer(('127.0.0.1', {port}), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain({cert:?}, {key:?})
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#
    );
    let child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(400));
    child
}

struct Killed(Vec<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A far.test exchanger (another mta) at mx.far.test with a certificate for `names`, the DNS
/// `zone` (with `{port}` and `{spki}` filled in), an MTA-STS policy host serving `policy`; one
/// message sent by MX routing with the connector's default (opportunistic) TLS. Whether it was
/// delivered, and the sender's log.
fn by_mx(names: &[&str], signed: bool, zone: &str, policy: Option<&str>) -> (bool, String) {
    let pki_dir = TestDir::new("tls-pki");
    let pki = Pki::new(&pki_dir);
    let (cert, key, spki) = pki.issue(&pki_dir, "mx", names, signed);
    // For DANE-TA: the server sends its chain, the CA included, and "{ca}" is the CA's hash.
    let ca_hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(pki.ca.der().as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    if zone.contains("{ca}") {
        let mut chain = std::fs::read_to_string(&cert).unwrap();
        chain.push_str(&pki.ca.pem());
        std::fs::write(&cert, chain).unwrap();
    }
    let remote_dir = TestDir::new("tls-mx");
    let remote = Mta::start_with(
        &remote_dir,
        &[],
        &format!("[tls]\ncertificate = \"{cert}\"\nkey = \"{key}\"\n[organization]\naccepted_domains = [\"far.test\"]\nmailboxes = [\"carol\"]\n"),
        &[],
    );
    let mut helpers = Killed(Vec::new());
    let dns_port = free_port();
    let zone = zone
        .replace("{port}", &remote.transport.to_string())
        .replace("{spki}", &spki)
        .replace("{ca}", &ca_hash);
    helpers.0.push(dns(dns_port, &zone));
    let sts_port = free_port();
    if let Some(policy) = policy {
        let (pcert, pkey, _) = pki.issue(&pki_dir, "sts", &["mta-sts.far.test"], true);
        helpers.0.push(policy_host(sts_port, &pcert, &pkey, policy));
    }
    let dir = TestDir::new("tls-by-mx");
    let mta = Mta::start(
        &dir,
        &format!(
            "[tls]\nca_file = \"{}\"\n[routing]\nrefuse_private_mx = false\nretry_base_ms = 200\nretry_max_ms = 400\ndns_servers = [\"127.0.0.1:{dns_port}\"]\nmta_sts_port = {sts_port}\n[[send_connectors]]\nname = \"Internet\"\naddress_spaces = [\"SMTP:*;1\"]\nport = {}\n",
            pki.ca_file, remote.transport
        ),
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.send_mail(
            "a@example.test",
            &["carol@far.test"],
            "Subject: by mx\n\nx\n"
        )
        .code,
        250
    );
    smtp.quit();
    let delivered = wait_until(Duration::from_secs(6), || {
        remote.maildir("carol").len() == 1
    });
    (delivered, mta.log())
}

const MX_ZONE: &str = r#"{"MX": {"far.test.": [[10, "mx.far.test."]]}, "A": {"mx.far.test.": ["127.0.0.1"], "mta-sts.far.test.": ["127.0.0.1"]}, "TXT": {"_mta-sts.far.test.": ["v=STSv1; id=20261202;"]}"#;

fn zone(extra: &str) -> String {
    format!("{MX_ZONE}{extra}}}")
}

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.far.test\r\nmax_age: 86400\r\n";

#[test]
fn mta_sts_enforce_requires_a_certificate_valid_for_the_exchanger() {
    let (delivered, log) = by_mx(&["mx.far.test"], true, &zone(""), Some(ENFORCE));
    assert!(delivered, "{log}");
    assert!(log.contains("MTA-STS policy fetched."), "{log}");
    assert!(
        log.contains("verified=\"the certificate chain and name\""),
        "{log}"
    );
    // The same exchanger with a certificate for another name: refused, although the connector
    // itself would have sent in opportunistic TLS.
    let (delivered, log) = by_mx(&["other.test"], true, &zone(""), Some(ENFORCE));
    assert!(!delivered, "{log}");
    assert!(
        log.contains("4.7.5") && log.contains("not valid for name"),
        "{log}"
    );
}

#[test]
fn mta_sts_enforce_sends_only_to_the_exchangers_its_policy_names() {
    let policy = "version: STSv1\nmode: enforce\nmx: *.elsewhere.test\nmax_age: 600\n";
    let (delivered, log) = by_mx(&["mx.far.test"], true, &zone(""), Some(policy));
    assert!(!delivered, "{log}");
    assert!(log.contains("is one its MTA-STS policy names"), "{log}");
    // testing mode only logs.
    let testing = policy.replace("enforce", "testing");
    let (delivered, log) = by_mx(&["mx.far.test"], true, &zone(""), Some(&testing));
    assert!(delivered, "{log}");
    assert!(log.contains("MTA-STS (testing)"), "{log}");
}

#[test]
fn dane_ee_records_decide_the_certificate_where_dnssec_authenticates_them() {
    // A self-signed certificate no root knows, but named by an authenticated TLSA record.
    let tlsa = r#", "TLSA": {"_{port}._tcp.mx.far.test.": [[3, 1, 1, "{spki}"]]}, "ad": true"#;
    let (delivered, log) = by_mx(&["mx.far.test"], false, &zone(tlsa), None);
    assert!(delivered, "{log}");
    assert!(
        log.contains("verified=\"the exchanger's TLSA records (DANE)\""),
        "{log}"
    );
    // A record for another key: refused.
    let wrong = r#", "TLSA": {"_{port}._tcp.mx.far.test.": [[3, 1, 1, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"]]}, "ad": true"#;
    let (delivered, log) = by_mx(&["mx.far.test"], false, &zone(wrong), None);
    assert!(!delivered, "{log}");
    assert!(
        log.contains("matches none of the exchanger's TLSA records"),
        "{log}"
    );
    // The same wrong record without DNSSEC (no AD): not DANE, so opportunistic TLS goes on.
    let insecure = wrong.replace(r#", "ad": true"#, "");
    let (delivered, log) = by_mx(&["mx.far.test"], false, &zone(&insecure), None);
    assert!(delivered, "{log}");
    assert!(
        log.contains("verified=\"nothing (encryption only)\""),
        "{log}"
    );
}

#[test]
fn dane_ta_records_name_the_issuer_the_chain_must_lead_to() {
    // The exchanger's certificate is issued by the test CA, which no configured root knows
    // here (the sender has it as ca_file, but DANE-TA ignores roots), named by TLSA 2 0 1.
    let ta = r#", "TLSA": {"_{port}._tcp.mx.far.test.": [[2, 0, 1, "{ca}"]]}, "ad": true"#;
    let (delivered, log) = by_mx(&["mx.far.test"], true, &zone(ta), None);
    assert!(delivered, "{log}");
    assert!(
        log.contains("verified=\"the exchanger's TLSA records (DANE)\""),
        "{log}"
    );
    // The chain leads to the named issuer, but the certificate names another host.
    let (delivered, log) = by_mx(&["other.test"], true, &zone(ta), None);
    assert!(!delivered, "{log}");
}
