//! The two verbs that run on the server's own machine: `init` bootstraps the store and
//! its first administrator, `serve` merges flags over the configuration file and runs.

use std::os::unix::fs::MetadataExt as _;

use nbde_server::config::Config;
use nbde_server::http::admin::{new_token, token_hash};
use nbde_server::store::{Location, Store, migrate};

use super::args::{InitArgs, MigrateArgs, ServeArgs};

/// A SQLite store that belongs to another user (the packaged service's `_nbde-server`) is
/// opened only as that user: files this process made there (the WAL, a new database)
/// would be its own, and the service could no longer write its store.
fn check_store_owner(location: &Location) -> Result<(), String> {
    let Location::Sqlite(dir) = location else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(()); // not there yet: this process makes it, and owns it
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this process (uid {me}): run as its owner, \
             e.g. `runuser -u _nbde-server -- nbde-server …` for the packaged service",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

pub fn init(args: InitArgs) -> Result<(), String> {
    let mut config = Config::load(args.config.as_deref())?;
    // A flag wins over the file.
    if args.data.is_some() || args.database.is_some() {
        config.data = args.data;
        config.database = args.database;
    }
    let location = config.location()?;
    check_store_owner(&location)?;
    let store = Store::open_location(&location).map_err(|e| e.to_string())?;
    if store.account_count().map_err(|e| e.to_string())? > 0 {
        return Err(format!("{location} is already initialised"));
    }
    let account = store
        .add_account("owner", true)
        .map_err(|e| e.to_string())?;
    let token = new_token().map_err(|e| e.to_string())?;
    store
        .add_token(account, &token_hash(&token))
        .map_err(|e| e.to_string())?;
    store
        .audit("owner", "init", &location.to_string())
        .map_err(|e| e.to_string())?;
    eprintln!("nbde-server: store created in {location}; the owner token follows (shown once):");
    println!("{token}");
    Ok(())
}

pub fn migrate(args: MigrateArgs) -> Result<(), String> {
    let target = Location::database(&args.to)?;
    let moved = migrate::sqlite_to_postgres(&args.from, &args.to)?;
    for (table, rows) in &moved {
        println!("{table:<16} {rows:>9} rows");
    }
    eprintln!(
        "nbde-server: {} moved to {target}. {} still holds the keys: keep it offline as a backup or destroy it.",
        args.from.display(),
        args.from.display()
    );
    Ok(())
}

pub fn serve(a: ServeArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NBDE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = Config::load(a.config.as_deref())?;
    // A flag wins over the file.
    // A location flag replaces the file's location, whichever kind it is.
    if a.data.is_some() || a.database.is_some() {
        config.data = a.data;
        config.database = a.database;
    }
    config.listen = a.listen.or(config.listen);
    config.tls_cert = a.tls_cert.or(config.tls_cert);
    config.tls_key = a.tls_key.or(config.tls_key);
    config.insecure_http |= a.insecure_http;
    config.tang_dir = a.tang_dir.or(config.tang_dir);
    config.public_url = a.public_url.or(config.public_url);
    config.console_origin = a.console_origin.or(config.console_origin);
    check_store_owner(&config.location()?)?;
    nbde_server::serve::run(config)
}
