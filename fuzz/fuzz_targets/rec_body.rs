#![no_main]
// Any bytes as the body of `POST /o/{org}/d/{device}/rec/{kid}`, through nbde-server's
// real router, policy, multiplication and durable history on a real SQLite store
// (server_harness.rs). The device is the one on the curve the body names ("P-384",
// "P-521", else P-256), so a well-formed body reaches the exchange on every curve.
// Oracle: a malformed body gets 400 and anything else never a 5xx; a 200 is a JWK on the
// device's curve that tangd would send.
//
// The store is rebuilt every RESET_AFTER requests: each one adds a history row.
use std::sync::Mutex;

use serde_json::Value;

#[path = "server_harness.rs"]
mod server_harness;

use server_harness::{Server, head};

const RESET_AFTER: usize = 200_000;

const CURVES: [&str; 3] = ["P-256", "P-384", "P-521"];

struct Harness {
    generation: u64,
    server: Server,
    /// Per curve, the device's `/rec/{kid}` path.
    paths: Vec<String>,
    requests: usize,
}

fn fresh(generation: u64) -> Harness {
    let mut server = Server::new("rec", generation);
    server.seed("/admin/v1/orgs", r#"{"name":"fz"}"#);
    let paths = CURVES
        .iter()
        .map(|curve| {
            let name = curve.replace('-', "").to_lowercase();
            let device = server.seed(
                "/admin/v1/orgs/fz/devices",
                &format!(r#"{{"name":"{name}","curve":"{curve}"}}"#),
            );
            let kid = device["kid"].as_str().expect("a new device has a kid");
            format!("/o/fz/d/{name}/rec/{kid}")
        })
        .collect();
    Harness {
        generation,
        server,
        paths,
        requests: 0,
    }
}

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut slot = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_none_or(|h| h.requests >= RESET_AFTER) {
        let generation = slot.as_ref().map_or(0, |h| h.generation + 1);
        *slot = None;
        *slot = Some(fresh(generation));
    }
    let harness = slot.as_mut().expect("harness");
    let names = |curve: &str| data.windows(curve.len()).any(|w| w == curve.as_bytes());
    let curve = if names("P-384") {
        1
    } else if names("P-521") {
        2
    } else {
        0
    };
    let path = harness.paths[curve].clone();
    harness.requests += 1;
    let (status, text) = harness.server.post(&path, data);
    match status.as_u16() {
        200 => {
            let reply: Value = serde_json::from_str(&text).expect("a 200 answers JSON");
            assert_eq!(
                reply["crv"],
                CURVES[curve],
                "answer on another curve: {}",
                head(&text)
            );
            assert_eq!(reply["alg"], "ECMR");
            assert_eq!(reply["kty"], "EC");
        }
        400 => {}
        other => panic!(
            "{path} answered {other} to a client's body: {}",
            head(&text)
        ),
    }
});
