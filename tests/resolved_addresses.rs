//! A tang server name with several addresses (replicas behind DNS): a dead first address
//! must not fail the bind or the unlock, and when every address is dead the error names
//! the host and each address tried.
//!
//! The name goes through the real binary's getaddrinfo: each run gets its own /etc/hosts,
//! bind-mounted in a private mount namespace, so the machine's file is never touched. Like
//! the LUKS tests, this needs root.

use std::net::SocketAddr;
use std::process::Output;

use serde_json::json;
use socket2::{Domain, Socket, Type};
use testkit::*;

/// Under `.test` (RFC 2606): no resolver anywhere answers for it but our hosts file.
const NAME: &str = "tang-replicas.test";

/// Runs our binary with `hosts` as its /etc/hosts.
fn ours_resolving(hosts: &str, args: &[&str], stdin: &[u8]) -> Output {
    let dir = tempdir();
    let file = dir.path().join("hosts");
    std::fs::write(&file, hosts).unwrap();
    let bin = nbde_unlock();
    // Private propagation: the bind mount must not leak into the machine's namespace.
    let mut argv = vec![
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        s(&file),
        &bin,
    ];
    argv.extend(args);
    let out = run("unshare", &argv, stdin);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("unshare:") && !err.contains("mount:"),
        "no private /etc/hosts (this test needs root): {err}"
    );
    out
}

/// A socket bound to `addr` that never listens: every connection to it is refused, and
/// while it is held no other test can start listening there.
fn refusing(addr: SocketAddr) -> Option<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    socket.bind(&addr.into()).ok().map(|()| socket)
}

/// Stock tangd on `live_ip` and a refusing socket on `dead_ip`, on one port.
fn live_and_dead(keys: &std::path::Path, live_ip: &str, dead_ip: &str) -> (Listener, Socket) {
    let ip = |text: &str| -> std::net::IpAddr { text.parse().unwrap() };
    for _ in 0..20 {
        let tang = start_tangd_at(keys, &SocketAddr::new(ip(live_ip), 0).to_string());
        // The port is free on live_ip; on dead_ip another test may hold it: try another.
        if let Some(dead) = refusing(SocketAddr::new(ip(dead_ip), tang.port)) {
            return (tang, dead);
        }
    }
    panic!("no port free on both {live_ip} and {dead_ip}");
}

/// Binds (fetching the advertisement) and unlocks through `NAME`, whose first address
/// refuses; then, with the live server gone too, checks the failure names every address in
/// the order tried, which shows the dead one really came first.
fn unlocks_past_a_dead_first_address(dead_ip: &str, live_ip: &str, tried: &str) {
    let keys = tempdir();
    tang_keys(keys.path(), "P-256");
    let (mut tang, _dead) = live_and_dead(keys.path(), live_ip, dead_ip);
    let hosts = format!("{dead_ip} {NAME}\n{live_ip} {NAME}\n");
    let config = json!({"url": format!("http://{NAME}:{}", tang.port)}).to_string();

    let jwe = ok(ours_resolving(
        &hosts,
        &["encrypt", "tang", &config, "-y"],
        b"replica secret",
    ));
    let out = ours_resolving(&hosts, &["decrypt", "--timeout", "5"], jwe.as_bytes());
    assert_eq!(ok(out), "replica secret");

    tang.stop();
    let out = ours_resolving(&hosts, &["decrypt", "--timeout", "5"], jwe.as_bytes());
    let tried = tried.replace("PORT", &tang.port.to_string());
    fails_with(
        &out,
        1,
        &format!("every address of {NAME} failed to connect ({tried}): Connection refused"),
    );
}

/// glibc sorts ::1 before 127.0.0.1 (RFC 6724 precedence): the IPv6 replica down, the
/// IPv4 one up.
#[test]
fn a_dead_ipv6_first_address_falls_back_to_ipv4() {
    unlocks_past_a_dead_first_address("::1", "127.0.0.1", "[::1]:PORT, 127.0.0.1:PORT");
}

/// Two IPv4 replicas, the first down. glibc puts 127.0.0.1 first (longest prefix shared
/// with the source address), so the dead one is there and the live one on 127.0.0.3.
#[test]
fn a_dead_first_ipv4_address_falls_back_to_the_next() {
    unlocks_past_a_dead_first_address("127.0.0.1", "127.0.0.3", "127.0.0.1:PORT, 127.0.0.3:PORT");
}
