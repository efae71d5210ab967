//! The unlock policy end to end: stock clevis against devices behind approval, allow-once
//! races, sources and forwarding headers, all through a real nbde-server process.

use serde_json::{Value, json};
use testkit::*;

fn config(url: &str, thp: &str) -> String {
    json!({"url": url, "thp": thp}).to_string()
}

fn bind(url: &str, thp: &str, secret: &[u8]) -> String {
    String::from_utf8(run_ok(
        "clevis",
        &["encrypt", "tang", &config(url, thp)],
        secret,
    ))
    .unwrap()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn pending(server: &NbdeServer) -> Vec<Value> {
    json_of(&server.admin_ok(&["requests", "--json"]))["requests"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn approval_gates_stock_clevis_and_each_decision_behaves() {
    let server = NbdeServer::start(&[]);
    let (url, thp) = server.add_device("acme", "db1", None);
    let jwe = bind(&url, &thp, b"approved secret");
    let token = server.admin_ok(&["account", "add", "acme", "alice", "--role", "approver"]);
    let alice = token.lines().last().unwrap().to_owned();
    server.admin_ok(&["device", "tag", "acme/db1", "tier=db"]);
    server.admin_ok(&[
        "group",
        "add",
        "acme",
        "dbas",
        "--tag",
        "tier=db",
        "--approver",
        "alice",
        "--window",
        "2",
    ]);

    // Pending: refused, one request however often the device polls.
    for _ in 0..3 {
        let out = ours_decrypt(&jwe);
        assert!(String::from_utf8_lossy(&out.stderr).contains("pending-approval"));
        assert!(!clevis_decrypt(&jwe).status.success());
    }
    let requests = pending(&server);
    assert_eq!(requests.len(), 1, "{requests:?}");
    let id = requests[0]["id"].to_string();

    // Defer keeps it pending.
    let as_alice = |args: &[&str]| {
        let mut full = vec!["--server", server.url.as_str()];
        full.extend_from_slice(args);
        std::process::Command::new(bin("nbde-server"))
            .args(&full)
            .env("NBDE_TOKEN", &alice)
            .output()
            .unwrap()
    };
    assert!(as_alice(&["defer", &id]).status.success());
    assert!(!clevis_decrypt(&jwe).status.success());
    assert_eq!(pending(&server).len(), 1);

    // Approve: exactly one unlock, then a new request is needed.
    assert!(as_alice(&["approve", &id]).status.success());
    assert_eq!(clevis_decrypt(&jwe).stdout, b"approved secret");
    assert!(
        !clevis_decrypt(&jwe).status.success(),
        "an approval is good for one unlock"
    );
    let next = pending(&server);
    assert_eq!(next.len(), 1);
    assert_ne!(next[0]["id"].to_string(), id);

    // The window: an approval not used within it lapses.
    let id2 = next[0]["id"].to_string();
    assert!(as_alice(&["approve", &id2]).status.success());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = ours_decrypt(&jwe);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pending-approval"),
        "expired approval"
    );

    // Deny sticks.
    let id3 = pending(&server)[0]["id"].to_string();
    assert!(as_alice(&["deny", &id3]).status.success());
    for _ in 0..2 {
        let out = ours_decrypt(&jwe);
        assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 403 (denied)"));
    }
    assert!(
        pending(&server).is_empty(),
        "a denial does not spawn new requests"
    );

    // Every step is in the history, with its reason.
    let history = server.history(Some("acme/db1"));
    let decisions: Vec<&str> = history
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert!(
        decisions.contains(&"allowed")
            && decisions.contains(&"pending-approval")
            && decisions.contains(&"denied")
    );
    assert!(
        history
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("approved"))
    );
    // A viewer of another org cannot approve.
    let out = server.admin_ok(&["account", "add", "acme", "victor", "--role", "viewer"]);
    let victor = out.lines().last().unwrap();
    let denied = std::process::Command::new(bin("nbde-server"))
        .args(["--server", &server.url, "approve", &id3])
        .env("NBDE_TOKEN", victor)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"));
    let audit = server.admin_ok(&["audit", "--org", "acme"]);
    assert!(
        audit.contains("request approve") && audit.contains("group add"),
        "{audit}"
    );
}

/// One raw POST /rec, as many clients at once would send it; returns the status.
fn post(base: &str, path: &str, body: &[u8], headers: &str) -> u16 {
    post_status(base.trim_start_matches("http://"), path, body, headers)
}

#[test]
fn allow_once_is_used_by_exactly_one_of_fifty_concurrent_requests() {
    let server = NbdeServer::start(&[]);
    server.add_device("acme", "race", Some("P-256"));
    server.admin_ok(&["device", "disable", "acme/race"]);
    server.admin_ok(&["allow-once", "acme/race"]);
    let (path, body) = server.rec_request("acme", "race");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (base, path, body, barrier) = (
                server.url.clone(),
                path.clone(),
                body.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                post(&base, &path, &body, "")
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        49,
        "{statuses:?}"
    );
    let history = server.history(Some("acme/race"));
    assert_eq!(history.len(), 50);
    assert_eq!(
        history
            .iter()
            .filter(|r| r["decision"] == "allowed")
            .count(),
        1
    );
    assert!(
        history
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("allow-once"))
    );
}

#[test]
fn sources_netlists_and_spoofed_forwarding_headers() {
    let server = NbdeServer::start(&[]);
    server.add_device("acme", "web", Some("P-256"));
    let (path, body) = server.rec_request("acme", "web");
    let list = server.admin_ok(&["device", "list", "--org", "acme"]);
    assert!(list.contains("source: any source"), "{list}");
    assert_eq!(post(&server.url, &path, &body, ""), 200);

    server.admin_ok(&["allow", "add", "acme/web", "10.9.9.0/24", "2001:db8::/32"]);
    assert_eq!(
        post(&server.url, &path, &body, ""),
        403,
        "loopback is not in the allowlist"
    );
    // A client claiming to be in the list is not believed: no proxy is trusted.
    assert_eq!(
        post(&server.url, &path, &body, "X-Forwarded-For: 10.9.9.9\r\n"),
        403
    );
    assert_eq!(
        post(&server.url, &path, &body, "Forwarded: for=10.9.9.9\r\n"),
        403
    );

    server.admin_ok(&["netlist", "add", "acme", "lab", "127.0.0.0/8"]);
    server.admin_ok(&["netlist", "attach", "acme/web", "lab"]);
    assert_eq!(
        post(&server.url, &path, &body, ""),
        200,
        "allowed through the shared list"
    );
    server.admin_ok(&["netlist", "detach", "acme/web", "lab"]);
    assert_eq!(post(&server.url, &path, &body, ""), 403);
    server.admin_ok(&["allow", "rm", "acme/web", "10.9.9.0/24", "2001:db8::/32"]);
    assert_eq!(post(&server.url, &path, &body, ""), 200);

    server.admin_ok(&["org", "set", "acme", "--require-source"]);
    assert_eq!(
        post(&server.url, &path, &body, ""),
        403,
        "no allowlist, org requires one"
    );
    let history = server.history(Some("acme/web"));
    assert!(
        history[0]["reason"]
            .as_str()
            .unwrap()
            .contains("requires one"),
        "{:?}",
        history[0]
    );
    assert!(
        history
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("not allowed"))
    );
}

#[test]
fn a_trusted_proxy_forwards_the_client_address() {
    let config = tempdir();
    let file = config.path().join("nbde.toml");
    std::fs::write(&file, "trusted_proxies = [\"127.0.0.1\"]\n").unwrap();
    let server = NbdeServer::start(&["--config", file.to_str().unwrap()]);
    server.add_device("acme", "web", Some("P-256"));
    server.admin_ok(&["allow", "add", "acme/web", "10.9.9.9"]);
    let (path, body) = server.rec_request("acme", "web");
    assert_eq!(
        post(&server.url, &path, &body, "X-Forwarded-For: 10.9.9.9\r\n"),
        200
    );
    // Only the hop after the last trusted proxy counts: a client-written first hop does not.
    assert_eq!(
        post(
            &server.url,
            &path,
            &body,
            "X-Forwarded-For: 10.9.9.9, 192.0.2.1\r\n"
        ),
        403
    );
    assert_eq!(server.history(Some("acme/web"))[1]["peer"], "10.9.9.9");
}

/// A flood from one address meets its own bucket (429 with Retry-After, each refusal in
/// the history) while another address's device unlocks; a device's own bucket holds
/// against a flood spread over many addresses. Small buckets from the config file.
#[test]
fn a_flood_meets_its_own_rate_limit_and_nobody_else_s() {
    let config = tempdir();
    let file = config.path().join("nbde.toml");
    std::fs::write(
        &file,
        "trusted_proxies = [\"127.0.0.1\"]\n[rate_limit]\nsource_per_second = 1\nsource_burst = 5\n\
         device_per_minute = 1\ndevice_burst = 8\n",
    )
    .unwrap();
    let server = NbdeServer::start(&["--config", file.to_str().unwrap()]);
    server.add_device("acme", "flooded", Some("P-256"));
    server.add_device("acme", "quiet", Some("P-256"));
    let (flooded, flood_body) = server.rec_request("acme", "flooded");
    let (quiet, quiet_body) = server.rec_request("acme", "quiet");
    let from = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");

    let statuses: Vec<u16> = (0..20)
        .map(|_| post(&server.url, &flooded, &flood_body, &from("10.0.0.1")))
        .collect();
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Another address, another device: untouched by the flood.
    assert_eq!(
        post(&server.url, &quiet, &quiet_body, &from("10.0.0.2")),
        200
    );
    let retry = raw_request(
        &server.url,
        "POST",
        &flooded,
        &flood_body,
        &from("10.0.0.1"),
    );
    assert!(retry.starts_with("HTTP/1.1 429"), "{retry}");
    assert!(
        retry.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{retry}"
    );

    // The device's bucket (8, then 1 a minute): 5 spent above, 3 left, whatever the address.
    let spread: Vec<u16> = (0..6)
        .map(|i| {
            post(
                &server.url,
                &flooded,
                &flood_body,
                &from(&format!("10.0.1.{i}")),
            )
        })
        .collect();
    assert_eq!(spread, [200, 200, 200, 429, 429, 429]);

    let history = server.history(Some("acme/flooded"));
    let limited: Vec<_> = history
        .iter()
        .filter(|row| row["decision"] == "rate-limited")
        .map(|row| row["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(limited.len(), 15 + 1 + 3, "{history:?}");
    assert!(limited.iter().any(|r| r == "source over its rate"));
    assert!(limited.iter().any(|r| r == "device over its rate"));
}

/// With the default buckets, boots are never throttled: nbde-unlock and stock clevis
/// decrypting again and again, as retries and many servers of sss make them ask.
#[test]
fn boots_are_never_throttled_by_the_default_limits() {
    let server = NbdeServer::start(&[]);
    let (url, thp) = server.add_device("acme", "boots", None);
    let jwe = bind(&url, &thp, b"every time");
    for _ in 0..15 {
        assert_eq!(ours_decrypt(&jwe).stdout, b"every time");
        assert_eq!(clevis_decrypt(&jwe).stdout, b"every time");
    }
    let history = server.history(Some("acme/boots"));
    assert!(
        history.iter().all(|row| row["decision"] == "allowed"),
        "{history:?}"
    );
}

/// The whole answer of one raw request on a new connection, for its status and headers.
fn raw_request(base: &str, method: &str, path: &str, body: &[u8], headers: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Guessing admin tokens: ten wrong ones from an address are answered 401, then the
/// address is refused (429, before any lookup) even with a good token, while another
/// address's good token works.
#[test]
fn guessing_tokens_locks_out_the_guessing_address_only() {
    let config = tempdir();
    let file = config.path().join("nbde.toml");
    std::fs::write(&file, "trusted_proxies = [\"127.0.0.1\"]\n").unwrap();
    let server = NbdeServer::start(&["--config", file.to_str().unwrap()]);
    let ask = |token: &str, from: &str| {
        let headers = format!("Authorization: Bearer {token}\r\nX-Forwarded-For: {from}\r\n");
        let answer = raw_request(&server.url, "GET", "/admin/v1/orgs", b"", &headers);
        answer[9..12].parse::<u16>().unwrap()
    };
    let guesses: Vec<u16> = (0..12)
        .map(|i| ask(&format!("nbde_guess{i}"), "10.1.1.1"))
        .collect();
    assert_eq!(guesses[..11], [401; 11], "{guesses:?}");
    assert_eq!(guesses[11], 429, "{guesses:?}");
    assert_eq!(ask(&server.token, "10.1.1.1"), 429);
    assert_eq!(ask(&server.token, "10.1.1.2"), 200);
}
