#![no_main]
// Any bytes as the JSON body of each admin API call that takes one, through nbde-server's
// real router and a real SQLite store (in /dev/shm), as the owner: the first byte picks
// the route, the rest is the body. Bad input must get a clear refusal (4xx) and never a
// server error, a panic or a hang; a 2xx is fine.
//
// The store is rebuilt every RESET_AFTER accepted changes: the fuzzer would otherwise
// grow it by a device per accepted body, and every change reloads the key ring.
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use nbde_server::http::{AppState, Settings, admin, app};
use nbde_server::kek::Kek;
use nbde_server::kek::file::{self as kek_file, KekSource};
use nbde_server::ratelimit::RateLimits;
use nbde_server::store::Location;
use tower::ServiceExt;

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
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    bearer: String,
    dir: std::path::PathBuf,
    accepted: usize,
}

impl Harness {
    fn new(generation: u64) -> Harness {
        let dir = std::path::PathBuf::from(format!(
            "/dev/shm/nbde-fuzz-admin-{}-{generation}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("store directory");
        // As `nbde-server init` does: a key-encryption key, here inside the scratch
        // directory (the fuzzer's store holds no key worth protecting).
        let kek_path = dir.join("kek");
        kek_file::create(&kek_path, &Kek::generate().expect("KEK")).expect("KEK file");
        let store = kek_file::open_store(
            &Location::Sqlite(dir.join("data")),
            &KekSource::File(kek_path),
        )
        .expect("store opens");
        let account = store.add_account("owner", true).expect("owner");
        let token = admin::new_token().expect("token");
        store
            .add_token(account, &admin::token_hash(&token))
            .expect("token stored");
        let settings = Settings {
            trusted_proxies: Vec::new(),
            public_url: Some("http://fuzz.invalid".into()),
            tls: false,
            console_origin: None,
            rate_limits: RateLimits::lifted(),
        };
        let state = Arc::new(AppState::new(store, None, settings).expect("state"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut harness = Harness {
            runtime,
            app: app(state),
            bearer: format!("Bearer {token}"),
            dir,
            accepted: 0,
        };
        for (route, body) in [
            (ROUTES[0], r#"{"name":"fz"}"#),
            (ROUTES[1], r#"{"name":"d1","curve":"P-256"}"#),
            (ROUTES[1], r#"{"name":"d2","curve":"P-256"}"#),
        ] {
            let (status, text) = harness.post(route, body.as_bytes());
            assert!(status.is_success(), "seeding {route}: {status} {text}");
        }
        harness
    }

    fn post(&mut self, route: &str, body: &[u8]) -> (StatusCode, String) {
        let request = Request::post(route)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, &self.bearer)
            .body(Body::from(body.to_vec()))
            .expect("request");
        let app = self.app.clone();
        self.runtime.block_on(async move {
            let response = app.oneshot(request).await.expect("infallible router");
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (
                status,
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            )
        })
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static HARNESS: Mutex<Option<(u64, Harness)>> = Mutex::new(None);

/// libFuzzer ends the process without dropping statics: stores of runs that are gone are
/// removed when the next run starts.
fn remove_stale_stores() {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("nbde-fuzz-admin-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[pick as usize % ROUTES.len()];
    let mut slot = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_none_or(|(_, h)| h.accepted >= RESET_AFTER) {
        let generation = slot.as_ref().map_or(0, |(g, _)| g + 1);
        if generation == 0 {
            remove_stale_stores();
        }
        *slot = None; // the old store is closed and removed before the next opens
        *slot = Some((generation, Harness::new(generation)));
    }
    let (_, harness) = slot.as_mut().expect("harness");
    let (status, text) = harness.post(route, body);
    assert!(
        !status.is_server_error(),
        "{route} answered {status} to a client's body: {text}"
    );
    if status.is_success() {
        harness.accepted += 1;
    }
});
