//! The verbs that run on the server's own machine: `init` bootstraps the store, its
//! key-encryption key and its first administrator, `serve` merges flags over the
//! configuration file and runs, `migrate` moves a store, `rekey` replaces the KEK.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use nbde_server::config::Config;
use nbde_server::http::admin::{new_token, token_hash};
use nbde_server::kek::Kek;
use nbde_server::kek::file::{self as kek_file, KekSource};
use nbde_server::store::{Location, Store, migrate};

use super::args::{InitArgs, MigrateArgs, RekeyArgs, ServeArgs};

/// The configuration with the location flags over it (a location flag replaces the file's
/// location, whichever kind it is), and where the KEK is.
fn locate(
    config: Option<&std::path::Path>,
    data: Option<PathBuf>,
    database: Option<String>,
    kek_flag: Option<&std::path::Path>,
) -> Result<(Config, Location, KekSource), String> {
    let mut config = Config::load(config)?;
    if data.is_some() || database.is_some() {
        config.data = data;
        config.database = database;
    }
    let location = config.location()?;
    let kek = KekSource::locate(kek_flag, config.kek_file.as_deref(), &location)?;
    Ok((config, location, kek))
}

/// Makes the KEK file if there is none, unless the store at `location` already records
/// one (its keys are then sealed under a key that is elsewhere, or lost: an error).
fn ensure_kek(location: &Location, source: &KekSource) -> Result<(), String> {
    let KekSource::File(path) = source else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    if let Location::Sqlite(dir) = location
        && !dir.join("nbde.sqlite").exists()
    {
        // A new store: nothing to ask it.
    } else {
        let store = Store::open_location(location).map_err(|e| e.to_string())?;
        if let Some(id) = store.kek_id().map_err(|e| e.to_string())? {
            return Err(format!(
                "no key-encryption key at {}, and {location} is sealed under key {id}: give its file with --kek-file",
                path.display()
            ));
        }
    }
    kek_file::create(path, &Kek::generate().map_err(|e| e.to_string())?)?;
    eprintln!(
        "nbde-server: key-encryption key created at {} (keep it apart from the store's \
         backups, and back it up on its own: without it the store's keys are lost)",
        path.display()
    );
    Ok(())
}

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
    let (_, location, kek) = locate(
        args.config.as_deref(),
        args.data,
        args.database,
        args.kek_file.as_deref(),
    )?;
    // No claim: the package runs `init --kek-only` while the service may run, and the
    // first owner is made on the store the running service serves (accounts are read
    // per request).
    check_store_owner(&location)?;
    if args.kek_only {
        return ensure_kek(&location, &kek);
    }
    {
        let store = Store::open_location(&location).map_err(|e| e.to_string())?;
        if store.account_count().map_err(|e| e.to_string())? > 0 {
            return Err(format!("{location} is already initialised"));
        }
    }
    ensure_kek(&location, &kek)?;
    let store = kek_file::open_store(&location, &kek)?;
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
    let source = Location::Sqlite(args.from.clone());
    if !args.from.is_dir() {
        return Err(format!("{}: no such data directory", args.from.display()));
    }
    // Rows a server wrote after the copy would be left behind.
    let _claim = source.claim()?;
    let kek = KekSource::locate(args.kek_file.as_deref(), None, &source)?;
    let moved = migrate::sqlite_to_postgres(&args.from, &args.to, &kek)?;
    for (table, rows) in &moved {
        println!("{table:<16} {rows:>9} rows");
    }
    eprintln!(
        "nbde-server: {} moved to {target}, its keys sealed under the key-encryption key at {}: \
         give every replica that key. {} still holds the keys (sealed): keep it offline as a \
         backup or destroy it.",
        args.from.display(),
        kek.path().display(),
        args.from.display()
    );
    Ok(())
}

pub fn rekey(args: RekeyArgs) -> Result<(), String> {
    let (_, location, kek) = locate(
        args.config.as_deref(),
        args.data,
        args.database,
        args.kek_file.as_deref(),
    )?;
    check_store_owner(&location)?;
    let _claim = location.claim()?;
    let done = kek_file::rekey(&location, &kek)?;
    eprintln!(
        "nbde-server: {} keys of {location} sealed under a new key-encryption key (id {}), \
         now at {}; the old key no longer opens the store",
        done.keys,
        done.kek_id,
        kek.path().display()
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
        // A log line that cannot be written (stderr's reader gone) is lost, not reported on
        // stderr: that report panics, and the panic ended whichever task logged (the
        // SIGTERM handler, the history writer thread, a request).
        .log_internal_errors(false)
        // Colours only for a person at a terminal, not in the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A flag wins over the file.
    let (mut config, location, kek) = locate(
        a.config.as_deref(),
        a.data,
        a.database,
        a.kek_file.as_deref(),
    )?;
    config.listen = a.listen.or(config.listen);
    config.tls_cert = a.tls_cert.or(config.tls_cert);
    config.tls_key = a.tls_key.or(config.tls_key);
    config.insecure_http |= a.insecure_http;
    config.tang_dir = a.tang_dir.or(config.tang_dir);
    config.public_url = a.public_url.or(config.public_url);
    config.console_origin = a.console_origin.or(config.console_origin);
    check_store_owner(&location)?;
    // A store that records no KEK yet (a new one, or one from before keys were sealed)
    // gets one, as `init` would make it: `serve --tang-dir` needs no `init`.
    ensure_kek(&location, &kek)?;
    nbde_server::serve::run(config, &kek)
}
