#![no_main]
// Any bytes as the JSON body of each admin API call that takes one, through nbde-server's
// real router and a real SQLite store (server_harness.rs), as the owner: the first byte
// picks the route, the rest is the body. Bad input must get a clear refusal (4xx) and
// never a server error, a panic or a hang; a 2xx is fine.
//
// The store is rebuilt every RESET_AFTER accepted changes: the fuzzer would otherwise
// grow it by a device per accepted body, and every change reloads the key ring.
use std::sync::Mutex;

#[path = "server_harness.rs"]
mod server_harness;

use server_harness::{Server, head};

const RESET_AFTER: usize = 400;

/// Routes taking a JSON body, on the org `fz` and device `d1` the store starts with.
const ROUTES: &[&str] = &[
    "/admin/v1/orgs",
    "/admin/v1/orgs/fz/devices",
    "/admin/v1/orgs/fz/devices/d1/mode",
    "/admin/v1/orgs/fz/escrow-key",
    "/admin/v1/orgs/fz/devices/d1/escrow",
    "/admin/v1/orgs/fz/settings",
    "/admin/v1/orgs/fz/devices/d1/tags",
    "/admin/v1/orgs/fz/devices/d1/sources",
    "/admin/v1/orgs/fz/netlists",
    "/admin/v1/orgs/fz/groups",
    "/admin/v1/orgs/fz/accounts",
    "/admin/v1/orgs/fz/webhooks",
    "/admin/v1/orgs/fz/liveness",
    "/admin/v1/orgs/fz/devices/d1/liveness",
];

struct Harness {
    generation: u64,
    server: Server,
    accepted: usize,
}

fn fresh(generation: u64) -> Harness {
    let mut server = Server::new("admin", generation);
    server.seed(ROUTES[0], r#"{"name":"fz"}"#);
    server.seed(ROUTES[1], r#"{"name":"d1","curve":"P-256"}"#);
    server.seed(ROUTES[1], r#"{"name":"d2","curve":"P-256"}"#);
    Harness {
        generation,
        server,
        accepted: 0,
    }
}

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[pick as usize % ROUTES.len()];
    let mut slot = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_none_or(|h| h.accepted >= RESET_AFTER) {
        let generation = slot.as_ref().map_or(0, |h| h.generation + 1);
        *slot = None; // the old store is closed and removed before the next opens
        *slot = Some(fresh(generation));
    }
    let harness = slot.as_mut().expect("harness");
    let (status, text) = harness.server.post(route, body);
    assert!(
        !status.is_server_error(),
        "{route} answered {status} to a client's body: {}",
        head(&text)
    );
    if status.is_success() {
        harness.accepted += 1;
    }
});
