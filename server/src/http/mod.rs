//! The HTTP surface: `app(state)` builds one router from the tang, admin and operations areas.

pub mod admin;
pub mod console;
pub mod tang;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::error::{ApiError, Result};
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::net::{self, Cidr};
use crate::ratelimit::{FailedTokens, RateLimits, RecLimiter};
use crate::store::Store;
use crate::store::history::{Batching, Writer};
use crate::tang_dir::TangDir;

/// What the HTTP layer needs from the configuration.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub trusted_proxies: Vec<Cidr>,
    /// Base of the unlock URLs handed out, e.g. `https://tang.example`; else the admin
    /// request's own host.
    pub public_url: Option<String>,
    /// Whether we serve HTTPS (for the scheme of the URLs handed out).
    pub tls: bool,
    /// The console's origin for passkeys; without one, the console signs in by token only.
    pub console_origin: Option<String>,
    pub rate_limits: RateLimits,
}

pub struct AppState {
    pub store: Store,
    keys: RwLock<Arc<KeyRing>>,
    /// Held through a reload, so two admin changes cannot swap in their rings out of order.
    reloading: Mutex<()>,
    pub history: Writer,
    pub tang_dir: Option<TangDir>,
    pub metrics: Metrics,
    pub settings: Settings,
    pub console: console::ConsoleState,
    pub rec_limiter: RecLimiter,
    pub failed_tokens: FailedTokens,
    /// Set by `start_webhooks`; without it new requests tell nobody (router tests).
    notifier: OnceLock<crate::webhooks::Notifier>,
}

impl AppState {
    pub fn new(store: Store, tang_dir: Option<TangDir>, settings: Settings) -> Result<AppState> {
        let keys = KeyRing::load(&store, None)?;
        let history = Writer::start(store.history_sink()?, Batching::per_core())?;
        let passkeys = match &settings.console_origin {
            Some(origin) => {
                Some(console::PasskeyConfig::new(origin).map_err(ApiError::BadRequest)?)
            }
            None => None,
        };
        Ok(AppState {
            console: console::ConsoleState::new(passkeys),
            rec_limiter: RecLimiter::new(settings.rate_limits),
            failed_tokens: FailedTokens::new(),
            notifier: OnceLock::new(),
            store,
            keys: RwLock::new(Arc::new(keys)),
            reloading: Mutex::new(()),
            history,
            tang_dir,
            metrics: Metrics::default(),
            settings,
        })
    }

    pub fn key_ring(&self) -> Arc<KeyRing> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads the in-memory keys after an admin change (blocking: it reads the store).
    pub fn reload_keys(&self) -> Result<()> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = Arc::new(KeyRing::load(&self.store, Some(&self.key_ring()))?);
        match self.keys.write() {
            Ok(mut k) => *k = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// Reloads one device's keys after an admin change to it (blocking: it reads the
    /// store); the rest of the ring is shared, not read again.
    pub fn reload_device(&self, org: &str, name: &str) -> Result<()> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let row = self.store.device_with_keys(org, name)?;
        let fresh = match self
            .key_ring()
            .with_device(self.store.kek()?, org, name, row)?
        {
            Some(ring) => Arc::new(ring),
            None => Arc::new(KeyRing::load(&self.store, Some(&self.key_ring()))?),
        };
        match self.keys.write() {
            Ok(mut k) => *k = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// Reloads the key ring whenever the store tells of a change another server process
    /// made (replicas sharing one database); a no-op for a single-process store.
    pub fn watch_changes(self: &Arc<Self>) -> Result<()> {
        let state = Arc::downgrade(self);
        // While the database is down, reloads fail every few seconds (a deaf listener's
        // fallback keeps trying): said once when they start failing, and once when they
        // work again.
        let failing = AtomicBool::new(false);
        self.store.watch(Box::new(move || {
            let Some(state) = state.upgrade() else {
                return;
            };
            match state.reload_keys() {
                Ok(()) => {
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("reloading the keys works again");
                    }
                }
                Err(e) => {
                    if failing.swap(true, Ordering::Relaxed) {
                        tracing::debug!(error = %e, "reloading the keys failed again");
                    } else {
                        tracing::warn!(error = %e, "reloading the keys after a change failed");
                    }
                }
            }
        }))?;
        Ok(())
    }

    /// Starts the webhook deliveries (a thread holding a weak reference to the state).
    pub fn start_webhooks(self: &Arc<Self>) -> Result<()> {
        let notifier = crate::webhooks::Notifier::start(Arc::downgrade(self))
            .map_err(|e| ApiError::Internal(format!("webhook thread: {e}")))?;
        let _ = self.notifier.set(notifier);
        Ok(())
    }

    /// Tells the org's webhooks of a new pending request; returns at once.
    pub fn request_pending(&self, request: crate::webhooks::PendingRequest) {
        if let Some(notifier) = self.notifier.get() {
            notifier.request_pending(request);
        }
    }

    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        net::client_address(peer, headers, &self.settings.trusted_proxies)
    }
}

/// Runs a store call off the async workers (a store call may wait on a lock or fsync).
pub(crate) async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    call: impl FnOnce(&AppState) -> Result<T> + Send + 'static,
) -> Result<T> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || call(&state))
        .await
        .unwrap_or_else(|e| Err(ApiError::Unavailable(format!("store task: {e}"))))
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if blocking(&state, |s| Ok(s.store.healthy()))
        .await
        .unwrap_or(false)
    {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
}

pub fn app(state: Arc<AppState>) -> Router {
    let tang = Router::new()
        .route("/o/{org}/d/{device}/adv", get(tang::device_adv))
        .route("/o/{org}/d/{device}/adv/", get(tang::device_adv))
        .route("/o/{org}/d/{device}/adv/{kid}", get(tang::device_adv_kid))
        .route("/o/{org}/d/{device}/rec/{kid}", post(tang::device_rec))
        .route("/adv", get(tang::dir_adv))
        .route("/adv/", get(tang::dir_adv))
        .route("/adv/{kid}", get(tang::dir_adv_kid))
        .route("/rec/{kid}", post(tang::dir_rec))
        .layer(DefaultBodyLimit::max(tang::MAX_REC_BODY));
    Router::new()
        .merge(tang)
        .nest("/admin/v1", admin::router())
        .nest("/console", console::router())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}
