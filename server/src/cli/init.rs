//! The two verbs that run on the server's own machine: `init` bootstraps the store and
//! its first administrator, `serve` merges flags over the configuration file and runs.

use nbde_server::config::Config;
use nbde_server::http::admin::{new_token, token_hash};
use nbde_server::store::Store;

use super::args::{InitArgs, ServeArgs};

pub fn init(args: InitArgs) -> Result<(), String> {
    let config = Config::load(args.config.as_deref())?;
    let data = args.data.unwrap_or_else(|| config.data());
    let store = Store::open(&data).map_err(|e| e.to_string())?;
    if store.account_count().map_err(|e| e.to_string())? > 0 {
        return Err(format!("{} is already initialised", data.display()));
    }
    let account = store
        .add_account("owner", true)
        .map_err(|e| e.to_string())?;
    let token = new_token().map_err(|e| e.to_string())?;
    store
        .add_token(account, &token_hash(&token))
        .map_err(|e| e.to_string())?;
    store
        .audit("owner", "init", &data.display().to_string())
        .map_err(|e| e.to_string())?;
    eprintln!(
        "nbde-server: store created in {}; the owner token follows (shown once):",
        data.display()
    );
    println!("{token}");
    Ok(())
}

pub fn serve(a: ServeArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NBDE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = Config::load(a.config.as_deref())?;
    // A flag wins over the file.
    config.data = a.data.or(config.data);
    config.listen = a.listen.or(config.listen);
    config.tls_cert = a.tls_cert.or(config.tls_cert);
    config.tls_key = a.tls_key.or(config.tls_key);
    config.insecure_http |= a.insecure_http;
    config.tang_dir = a.tang_dir.or(config.tang_dir);
    config.public_url = a.public_url.or(config.public_url);
    nbde_server::serve::run(config)
}
