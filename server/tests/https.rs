//! nbde-server over HTTPS (rustls, ring): nbde-unlock and the admin CLI trust the CA they
//! are given and refuse any other.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use testkit::*;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA.
fn pki() -> Pki {
    let dir = tempdir();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(
        dir.path().join("ca.pem"),
        ca_params.self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_key = KeyPair::generate().unwrap();
    std::fs::write(
        dir.path().join("other.pem"),
        other.self_signed(&other_key).unwrap().pem(),
    )
    .unwrap();
    Pki { dir }
}

#[test]
fn nbde_unlock_over_https_with_the_right_ca_only() {
    let pki = pki();
    let mut server = NbdeServer::start(&[
        "--tls-cert",
        &pki.path("cert.pem"),
        "--tls-key",
        &pki.path("key.pem"),
    ]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    server.cacert = Some(pki.path("ca.pem").into());
    let (url, thp) = server.add_device("acme", "tls1", None);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let config = json!({"url": url, "thp": thp, "cacert": pki.path("ca.pem")}).to_string();
    let jwe = ours_encrypt("tang", &config, b"over https");
    let out = ours_decrypt(&jwe);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"over https");

    let wrong = json!({"url": url, "thp": thp, "cacert": pki.path("other.pem")}).to_string();
    let out = run(&nbde_unlock(), &["encrypt", "tang", &wrong], b"x");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("certificate")
    );

    // The admin CLI refuses the server under another CA too.
    server.cacert = Some(pki.path("other.pem").into());
    let out = server.admin(&["org", "list"]);
    assert!(!out.status.success());
    // And the CA the JWE names is what decrypt trusts: swap its content, decrypt fails.
    std::fs::copy(pki.path("other.pem"), pki.path("ca.pem")).unwrap();
    assert!(!ours_decrypt(&jwe).status.success());
}

#[test]
fn plain_http_off_loopback_needs_consent() {
    let data = tempdir();
    let out = run(
        &bin("nbde-server"),
        &[
            "serve",
            "--data",
            data.path().to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
        b"",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

/// One `openssl s_client` handshake with `args`; (whether it completed, what it printed).
fn handshake(addr: &str, args: &[&str]) -> (bool, String) {
    // SECLEVEL=0: the client offers what it is told to, old protocols included, so that a
    // refusal is the server's.
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", addr, "-cipher", "ALL:@SECLEVEL=0"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let done = out.status.success() && !text.contains("Cipher is (NONE)");
    (done, text)
}

/// TLS 1.2 and 1.3 with AEAD suites and forward secrecy only: TLS 1.0 and 1.1, CBC suites
/// and static-RSA key exchange are refused by the server with an alert.
#[test]
fn the_server_offers_tls_1_2_and_up_with_modern_suites_only() {
    let pki = pki();
    let server = NbdeServer::start(&[
        "--tls-cert",
        &pki.path("cert.pem"),
        "--tls-key",
        &pki.path("key.pem"),
    ]);
    let addr = server.url.trim_start_matches("https://").to_owned();
    for old in ["-tls1", "-tls1_1"] {
        let (done, text) = handshake(&addr, &[old]);
        assert!(!done, "{old} accepted:\n{text}");
        // The server's alert (rustls answers handshake_failure), not a client-side refusal.
        assert!(text.contains("SSL alert number"), "{old}:\n{text}");
    }
    for weak in [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "AES128-GCM-SHA256",
    ] {
        let (done, text) = handshake(
            &addr,
            &["-tls1_2", "-cipher", &format!("{weak}:@SECLEVEL=0")],
        );
        assert!(!done, "{weak} accepted:\n{text}");
        assert!(text.contains("SSL alert number"), "{weak}:\n{text}");
    }
    let (done, text) = handshake(
        &addr,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    );
    assert!(
        done && text.contains("ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{text}"
    );
    let (done, text) = handshake(&addr, &["-tls1_3"]);
    assert!(done && text.contains("TLSv1.3"), "{text}");
}
