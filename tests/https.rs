//! The tang pin over HTTPS: a CA named in the config is trusted (and remembered in the
//! JWE for decrypt); a wrong CA, a wrong host name, or no CA at all is refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use testkit::*;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn make_ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// P-256 tang keys, a CA, and a directory holding the CA as `ca.pem`.
fn p256_keys_and_ca() -> (tempfile::TempDir, Ca, tempfile::TempDir) {
    let keys = tempdir();
    tang_keys(keys.path(), "P-256");
    let ca = make_ca();
    let files = tempdir();
    std::fs::write(files.path().join("ca.pem"), &ca.pem).unwrap();
    (keys, ca, files)
}

/// Reads one HTTP request (head and Content-Length body).
fn read_request(stream: &mut impl Read) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return data;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while data.len() < end + 4 + length {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            return data;
        }
    }
}

/// Stock tangd behind a TLS terminator whose certificate names `host`, issued by `ca`.
fn start_tls_tangd(keys: &Path, ca: &Ca, host: &str) -> Listener {
    let leaf_key = KeyPair::generate().unwrap();
    let provider = rustls::crypto::ring::default_provider();
    start_tls_tangd_with(keys, ca, host, leaf_key, provider, rustls::DEFAULT_VERSIONS)
}

/// The same, with the terminator's key, TLS versions and algorithms given.
fn start_tls_tangd_with(
    keys: &Path,
    ca: &Ca,
    host: &str,
    leaf_key: KeyPair,
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Listener {
    let leaf = CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca.issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let keys = keys.to_owned();
    Listener::start(move |tcp: TcpStream| {
        let conn = rustls::ServerConnection::new(config.clone()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = read_request(&mut tls);
        if request.is_empty() {
            return;
        }
        let mut tangd = Command::new(TANGD)
            .arg(&keys)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tangd.stdin.take().unwrap().write_all(&request).unwrap();
        let out = tangd.wait_with_output().unwrap();
        let _ = tls.write_all(&out.stdout);
        tls.conn.send_close_notify();
        let _ = tls.flush();
    })
}

#[test]
fn https_with_the_right_ca_works_and_anything_else_is_refused() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-256");
    let ca = make_ca();
    let other_ca = make_ca();
    let files = tempdir();
    let ca_file = files.path().join("ca.pem");
    let other_file = files.path().join("other.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    std::fs::write(&other_file, &other_ca.pem).unwrap();
    let server = start_tls_tangd(keys.path(), &ca, "127.0.0.1");
    let url = format!("https://127.0.0.1:{}", server.port);

    let config = json!({"url": url, "cacert": ca_file.to_str().unwrap()}).to_string();
    let jwe = ours_encrypt("tang", &config, b"over tls");
    let out = ours_decrypt(&jwe);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"over tls");

    // A JWE whose header names another CA file: refused at the handshake.
    std::fs::write(&ca_file, &other_ca.pem).unwrap();
    let out = ours_decrypt(&jwe);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));

    for config in [
        json!({"url": url, "cacert": other_file.to_str().unwrap()}),
        // No CA named: the system bundle does not know our test CA; no fallback to plain.
        json!({"url": url}),
    ] {
        let out = run(
            &nbde_unlock(),
            &["encrypt", "tang", &config.to_string(), "-y"],
            b"x",
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unreachable") && err.to_lowercase().contains("certificate"),
            "{err}"
        );
    }
}

#[test]
fn https_to_the_wrong_host_name_is_refused() {
    let (keys, ca, files) = p256_keys_and_ca();
    let ca_file = files.path().join("ca.pem");
    let server = start_tls_tangd(keys.path(), &ca, "tang.example");
    let config = json!({
        "url": format!("https://127.0.0.1:{}", server.port),
        "cacert": ca_file.to_str().unwrap(),
    });
    let out = run(
        &nbde_unlock(),
        &["encrypt", "tang", &config.to_string(), "-y"],
        b"x",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unreachable") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn a_ca_pinned_as_pem_text_in_the_binding_is_trusted_without_any_file() {
    let keys = tempdir();
    tang_keys(keys.path(), "P-521");
    let ca = make_ca();
    let other_ca = make_ca();
    let server = start_tls_tangd(keys.path(), &ca, "127.0.0.1");
    let url = format!("https://127.0.0.1:{}", server.port);

    let config = json!({"url": url, "cacert": ca.pem}).to_string();
    let jwe = ours_encrypt("tang", &config, b"pinned inside");
    let out = ours_decrypt(&jwe);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"pinned inside");

    let config = json!({"url": url, "cacert": other_ca.pem}).to_string();
    let out = run(&nbde_unlock(), &["encrypt", "tang", &config, "-y"], b"x");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(
        !err.contains("BEGIN CERTIFICATE"),
        "the PEM was printed: {err}"
    );
}

/// Servers that offer one way each: every TLS version, key exchange group and key type
/// the client keeps (P-256 done by RustCrypto, the rest by ring) gets through; a server
/// that offers only ChaCha20-Poly1305, or has an Ed25519 certificate, which the client
/// leaves out (src/tls.rs), is refused.
#[test]
fn https_through_servers_that_offer_one_way_each() {
    use rustls::crypto::ring::{cipher_suite as suite, default_provider, kx_group as kx};
    use rustls::version::{TLS12, TLS13};
    let (keys, ca, files) = p256_keys_and_ca();
    let ca_file = files.path().join("ca.pem");
    let only = |suites: Vec<rustls::SupportedCipherSuite>, group| rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        kx_groups: vec![group],
        ..default_provider()
    };
    let p256 = || KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p384 = || KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed25519 = || KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cases = [
        (
            "TLS 1.3, P-256 exchange, P-256 key",
            p256(),
            only(vec![suite::TLS13_AES_128_GCM_SHA256], kx::SECP256R1),
            &TLS13,
            true,
        ),
        (
            "TLS 1.2, P-256 exchange, P-256 key",
            p256(),
            only(
                vec![suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
                kx::SECP256R1,
            ),
            &TLS12,
            true,
        ),
        (
            "TLS 1.2, X25519, P-384 key",
            p384(),
            only(
                vec![suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
                kx::X25519,
            ),
            &TLS12,
            true,
        ),
        (
            "TLS 1.3, P-384 exchange, P-256 key",
            p256(),
            only(vec![suite::TLS13_AES_256_GCM_SHA384], kx::SECP384R1),
            &TLS13,
            true,
        ),
        (
            "TLS 1.3, Ed25519 key",
            ed25519(),
            only(vec![suite::TLS13_AES_256_GCM_SHA384], kx::X25519),
            &TLS13,
            false,
        ),
        (
            "TLS 1.3, ChaCha20-Poly1305 only",
            p256(),
            only(vec![suite::TLS13_CHACHA20_POLY1305_SHA256], kx::X25519),
            &TLS13,
            false,
        ),
    ];
    for (what, leaf_key, provider, version, works) in cases {
        let server = start_tls_tangd_with(
            keys.path(),
            &ca,
            "127.0.0.1",
            leaf_key,
            provider,
            &[version],
        );
        let url = format!("https://127.0.0.1:{}", server.port);
        let config = json!({"url": url, "cacert": ca_file.to_str().unwrap()}).to_string();
        let out = run(
            &nbde_unlock(),
            &["encrypt", "tang", &config, "-y"],
            b"one way",
        );
        assert_eq!(
            out.status.success(),
            works,
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if works {
            let out = ours_decrypt(&String::from_utf8(out.stdout).unwrap());
            assert_eq!(
                out.stdout,
                b"one way",
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("unreachable"), "{what}: {err}");
        }
    }
}
