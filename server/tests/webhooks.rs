//! Webhooks through a real nbde-server process: stock clevis makes a request wait for
//! approval, and a receiver in the test gets the signed notification, checks it as a
//! receiver would, and answers what the test tells it to.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use testkit::*;

/// One request as the receiver read it.
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// A webhook receiver: answers each POST with the next of `statuses` (the last one
/// repeats; 0 means never answer), and hands every request to the returned channel.
fn receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                let (k, v) = line.trim().split_once(':').unwrap();
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            let length: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = tx.send(Received { headers, body });
            let status = *statuses.get(n).or(statuses.last()).unwrap();
            if status == 0 {
                held.push(stream);
                continue;
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, rx)
}

/// A device behind approval with a JWE bound to it by stock clevis.
fn gated(server: &NbdeServer) -> String {
    let (url, thp) = server.add_device("acme", "db1", None);
    server.admin_ok(&["device", "tag", "acme/db1", "tier=db"]);
    server.admin_ok(&["group", "add", "acme", "dbas", "--tag", "tier=db"]);
    let config = json!({"url": url, "thp": thp}).to_string();
    String::from_utf8(run_ok("clevis", &["encrypt", "tang", &config], b"gated")).unwrap()
}

fn clevis_decrypt(jwe: &str) -> std::process::Output {
    run("clevis", &["decrypt"], jwe.as_bytes())
}

fn add_webhook(server: &NbdeServer, url: &str) -> (i64, String) {
    let out = server.admin_ok(&["webhook", "add", "--org", "acme", url]);
    let first: Vec<&str> = out.lines().next().unwrap().split(' ').collect();
    (
        first[1].parse().unwrap(),
        out.lines().last().unwrap().to_owned(),
    )
}

fn verify(secret: &str, r: &Received) -> bool {
    let hex = r.header("X-Nbde-Signature").trim_start_matches("sha256=");
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(r.header("X-Nbde-Timestamp").as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    mac.verify_slice(&tag).is_ok()
}

fn audit_attempts(server: &NbdeServer) -> Vec<String> {
    let audit: Value = serde_json::from_str(&server.admin_ok(&["audit", "--json"])).unwrap();
    audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "webhook delivery")
        .map(|a| a["target"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_pending_request_is_posted_signed_once_to_each_webhook() {
    let server = NbdeServer::start(&[]);
    let jwe = gated(&server);
    let (first_url, first) = receiver(vec![200]);
    let (second_url, second) = receiver(vec![204]);
    let (_, secret) = add_webhook(&server, &first_url);
    let (_, other_secret) = add_webhook(&server, &second_url);

    assert!(!clevis_decrypt(&jwe).status.success(), "waits for approval");
    let requests: Value = serde_json::from_str(&server.admin_ok(&["requests", "--json"])).unwrap();
    let id = requests["requests"][0]["id"].as_i64().unwrap();
    for (rx, secret) in [(&first, &secret), (&second, &other_secret)] {
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a notification");
        assert!(
            verify(secret, &got),
            "the signature verifies with the printed secret"
        );
        assert!(!verify("not the secret", &got));
        assert_eq!(got.header("X-Nbde-Event"), "request.pending");
        assert_eq!(got.header("Content-Type"), "application/json");
        let body: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["event"], "request.pending");
        assert_eq!(body["request"]["id"], id);
        assert_eq!(body["request"]["org"], "acme");
        assert_eq!(body["request"]["device"], "db1");
        assert_eq!(body["request"]["peer"], "127.0.0.1");
        assert!(
            body["url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/console/requests/{id}"))
        );
        assert!(body["text"].as_str().unwrap().contains("acme/db1"));
    }
    // Polling again attaches to the same request: nobody is told twice.
    assert!(!clevis_decrypt(&jwe).status.success());
    assert!(first.recv_timeout(Duration::from_secs(2)).is_err());
    assert_eq!(audit_attempts(&server).len(), 2);
}

#[test]
fn a_failing_receiver_is_retried_and_every_attempt_audited() {
    let server = NbdeServer::start(&[]);
    let jwe = gated(&server);
    let (url, rx) = receiver(vec![500, 503, 200]);
    let (hook, _) = add_webhook(&server, &url);
    assert!(!clevis_decrypt(&jwe).status.success());
    let started = Instant::now();
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("an attempt");
    }
    // 1 s then 2 s between attempts.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_err(),
        "no fourth attempt"
    );
    let attempts = audit_attempts(&server);
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    for (n, status) in [(1, "500"), (2, "503"), (3, "200")] {
        let want = format!("webhook {hook} request 1 attempt {n}: {status}");
        assert!(attempts.contains(&want), "{want} in {attempts:?}");
    }
}

#[test]
fn a_hanging_receiver_does_not_delay_the_answer() {
    let server = NbdeServer::start(&[]);
    let jwe = gated(&server);
    let (url, rx) = receiver(vec![0]);
    add_webhook(&server, &url);
    let started = Instant::now();
    assert!(!clevis_decrypt(&jwe).status.success());
    let answered = started.elapsed();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the post arrived");
    assert!(
        answered < Duration::from_secs(2),
        "answered after {answered:?}"
    );
}

#[test]
fn only_owners_manage_webhooks_and_the_secret_is_shown_once() {
    let server = NbdeServer::start(&[]);
    server.add_device("acme", "db1", None);
    let (url, _rx) = receiver(vec![200]);
    let (id, secret) = add_webhook(&server, &url);
    let list = server.admin_ok(&["webhook", "list", "--org", "acme", "--json"]);
    assert!(list.contains(&url) && !list.contains(&secret), "{list}");
    let audit = server.admin_ok(&["audit", "--json"]);
    assert!(
        !audit.contains(&secret),
        "the secret is not in the audit trail"
    );

    let token = server.admin_ok(&["account", "add", "acme", "vic", "--role", "approver"]);
    let approver = token.lines().last().unwrap();
    let refused = std::process::Command::new(bin("nbde-server"))
        .args(["--server", &format!("http://{}", server.addr())])
        .args(["webhook", "add", "--org", "acme", "http://127.0.0.1:9/x"])
        .env("NBDE_TOKEN", approver)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));
    let bad = server.admin(&["webhook", "add", "--org", "acme", "ftp://example/x"]);
    assert!(!bad.status.success());
    server.admin_ok(&["webhook", "rm", "--org", "acme", &id.to_string()]);
    assert!(
        !server
            .admin_ok(&["webhook", "list", "--org", "acme"])
            .contains(&url)
    );
}
