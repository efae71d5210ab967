// A real nbde-server for fuzz targets: its router on a SQLite store in /dev/shm, opened
// with a key-encryption key as `nbde-server init` and `serve` do, rate limits lifted; calls
// go through the router in-process (no socket), as the owner.
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use nbde_server::http::{AppState, Settings, admin, app};
use nbde_server::kek::Kek;
use nbde_server::kek::file::{self as kek_file, KekSource};
use nbde_server::ratelimit::RateLimits;
use nbde_server::store::Location;
use tower::ServiceExt;

pub struct Server {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    bearer: String,
    dir: PathBuf,
}

impl Server {
    /// A fresh store named `name` (with this process's id and `generation`).
    pub fn new(name: &str, generation: u64) -> Server {
        if generation == 0 {
            remove_stale_stores(name);
        }
        let dir = PathBuf::from(format!(
            "/dev/shm/nbde-fuzz-{name}-{}-{generation}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("store directory");
        // Here inside the scratch directory: the fuzzer's store holds no key worth keeping.
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
        Server {
            runtime,
            app: app(state),
            bearer: format!("Bearer {token}"),
            dir,
        }
    }

    /// POSTs `body` to `route`: the status and the answer.
    pub fn post(&mut self, route: &str, body: &[u8]) -> (StatusCode, String) {
        let request = Request::post(route)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, &self.bearer)
            .body(Body::from(body.to_vec()))
            .expect("request");
        let app = self.app.clone();
        self.runtime.block_on(async move {
            // The peer address the server sees, as axum's connect info gives it.
            let mut request = request;
            request.extensions_mut().insert(axum::extract::ConnectInfo(
                std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
            ));
            let response = app.oneshot(request).await.expect("infallible router");
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    /// POSTs `body` to `route` and expects a 2xx: for setting the store up.
    pub fn seed(&mut self, route: &str, body: &str) -> serde_json::Value {
        let (status, text) = self.post(route, body.as_bytes());
        assert!(
            status.is_success(),
            "seeding {route}: {status} {}",
            head(&text)
        );
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// libFuzzer ends the process without dropping statics: stores of runs that are gone are
/// removed when the next run starts.
fn remove_stale_stores(name: &str) {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    let prefix = format!("nbde-fuzz-{name}-");
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The start of an answer, for a failure message.
pub fn head(text: &str) -> &str {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
