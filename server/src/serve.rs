//! Running the server: bind, optional TLS (rustls, ring provider), graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::http::{AppState, Settings, app};
use crate::kek::file::{KekSource, open_store};
use crate::tang_dir::TangDir;

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("TLS certificate and key: {e}"))
}

/// The console's origin for passkeys: the one configured (AppState refuses it if it is not
/// one), else the public URL when it can be one (an IP address cannot be a passkey's RP
/// ID: then the console signs in by token only, and says so in the log).
fn console_origin(config: &Config) -> Option<String> {
    if let Some(origin) = &config.console_origin {
        return Some(origin.clone());
    }
    let public = config.public_url.as_ref()?;
    match crate::http::console::PasskeyConfig::new(public) {
        Ok(_) => Some(public.clone()),
        Err(e) => {
            tracing::info!(error = %e, "console passkeys off: set --console-origin to a host name");
            None
        }
    }
}

/// Runs the server on the store of `config`, its keys opened with the KEK from `kek`.
pub fn run(config: Config, kek: &KekSource) -> Result<(), String> {
    config.check_transport()?;
    let location = config.location()?;
    let _claim = location.claim()?;
    let store = open_store(&location, kek)?;
    let tang_dir = config
        .tang_dir
        .clone()
        .map(TangDir::new)
        .transpose()
        .map_err(|e| e.to_string())?;
    // Built before the runtime: a store call blocks, and the PostgreSQL client blocks on a
    // runtime of its own, which it cannot do inside another.
    let state = Arc::new(
        AppState::new(
            store,
            tang_dir,
            Settings {
                trusted_proxies: config.trusted_proxies.clone(),
                public_url: config.public_url.clone(),
                tls: config.tls_cert.is_some(),
                console_origin: console_origin(&config),
                rate_limits: config.rate_limit,
            },
        )
        .map_err(|e| e.to_string())?,
    );
    state.watch_changes().map_err(|e| e.to_string())?;
    state.start_webhooks().map_err(|e| e.to_string())?;
    crate::liveness::start(&state).map_err(|e| format!("liveness checker: {e}"))?;
    tracing::info!(store = %location, "store open");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
        let handle = axum_server::Handle::new();
        let shutdown = handle.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            // Before the log line: the shutdown must not depend on logging.
            shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
            tracing::info!("shutting down");
        });
        let announce = handle.clone();
        let scheme = if config.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        tokio::spawn(async move {
            if let Some(addr) = announce.listening().await {
                // A fixed line scripts and tests read to learn the port.
                eprintln!("nbde-server: listening on {scheme}://{addr}");
                tracing::info!(%addr, "listening");
            }
        });
        let listen = config.listen();
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
            _ => None,
        };
        // On a worker, not on this thread: `block_on` runs its future here, and an accept
        // loop here would hand every connection to a worker thread it must wake first.
        // HTTP/1 only: Tang's clients speak HTTP/1.1 and no ALPN offers h2, while serving
        // both makes every connection's first read a separate 24-byte one, to look for
        // HTTP/2's preface.
        let serving = tokio::spawn(async move {
            match tls {
                Some(tls) => {
                    let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
                    axum_server::bind_rustls(listen, tls)
                        .http1_only()
                        .handle(handle)
                        .serve(service)
                        .await
                }
                None => {
                    axum_server::bind(listen)
                        .http1_only()
                        .handle(handle)
                        .serve(service)
                        .await
                }
            }
        });
        let served = serving.await.map_err(|e| format!("{listen}: {e}"))?;
        served.map_err(|e| format!("{listen}: {e}"))
    })
}
