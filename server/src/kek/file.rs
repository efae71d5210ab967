//! Where the KEK lives, and its file made, read and replaced.
//!
//! Where, first that applies:
//! 1. `--kek-file PATH`;
//! 2. `$CREDENTIALS_DIRECTORY/nbde-kek` when it exists: systemd's `LoadCredential=` or
//!    `LoadCredentialEncrypted=` handed it over;
//! 3. `kek_file` in the configuration (the package sets `/etc/nbde/private/kek`);
//! 4. beside a SQLite data directory, never inside it: `DIR.kek` for `--data DIR`, so a
//!    copy of the data directory alone holds no key. A PostgreSQL store has no such place:
//!    every replica is given the same file.
//!
//! The file is the 32 bytes, mode 0400, refused if group or others may read it.
//!
//! Rekeying survives a kill at any moment: the new KEK is written durably to `PATH.new`,
//! then one transaction reseals every key and records the new id, then `PATH.new` is
//! renamed over `PATH`. Opening a store whose recorded id is `PATH.new`'s finishes the
//! rename; a `PATH.new` whose id the store does not record is a rekey stopped before its
//! commit, and the next rekey replaces it.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{KEK_LEN, Kek};
use crate::store::sealing::UnlockError;
use crate::store::{Location, Store};

/// The credential name the unit gives the KEK under.
pub const CREDENTIAL: &str = "nbde-kek";

/// Where this process's KEK is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KekSource {
    File(PathBuf),
    /// A systemd credential: read only; systemd owns where it is kept.
    Credential(PathBuf),
}

impl KekSource {
    /// The KEK's place for a store at `location` (see the module's order).
    pub fn locate(
        flag: Option<&Path>,
        configured: Option<&Path>,
        location: &Location,
    ) -> Result<KekSource, String> {
        if let Some(path) = flag {
            return Ok(KekSource::File(path.to_owned()));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join(CREDENTIAL);
            if path.exists() {
                return Ok(KekSource::Credential(path));
            }
        }
        if let Some(path) = configured {
            return Ok(KekSource::File(path.to_owned()));
        }
        match location {
            Location::Sqlite(dir) => {
                let name = dir.file_name().ok_or_else(|| {
                    format!(
                        "{}: give --kek-file (the key-encryption key goes beside the data \
                         directory, and this one has no name to put it beside)",
                        dir.display()
                    )
                })?;
                let mut file = name.to_os_string();
                file.push(".kek");
                Ok(KekSource::File(dir.with_file_name(file)))
            }
            Location::Postgres(_) => Err(
                "a PostgreSQL store needs --kek-file (or kek_file in the configuration, or \
                 the systemd credential nbde-kek): the same key-encryption key on every replica"
                    .into(),
            ),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            KekSource::File(p) | KekSource::Credential(p) => p,
        }
    }

    /// Reads the KEK; refused if others (for a file: group or others) may read it.
    pub fn load(&self) -> Result<Kek, String> {
        let path = self.path();
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "no key-encryption key at {}: `nbde-server init` makes one (`init --kek-only` \
                 for a store made before keys were sealed), or give --kek-file",
                path.display()
            ),
            _ => format!("key-encryption key {}: {e}", path.display()),
        })?;
        let exposed = match self {
            KekSource::File(_) => 0o077,
            // systemd gives a credential to the service's user and may leave its group
            // read bit set; nobody else may read it either way.
            KekSource::Credential(_) => 0o007,
        };
        if meta.mode() & exposed != 0 {
            return Err(format!(
                "key-encryption key {}: mode {:04o} lets others read it; chmod 0400 it",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
        read(path)
    }
}

fn read(path: &Path) -> Result<Kek, String> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("key-encryption key {}: {e}", path.display()))?,
    );
    Kek::from_bytes(&bytes).ok_or_else(|| {
        format!(
            "{}: not a key-encryption key ({} bytes, expected {KEK_LEN})",
            path.display(),
            bytes.len()
        )
    })
}

/// `PATH.new`: where a rekey writes the new KEK before its commit.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".new");
    PathBuf::from(name)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Writes `kek` to a new file at `path` (never over an existing one), mode 0400, owned by
/// this process's user, durable (file and directory synced) before it returns.
pub fn create(path: &Path, kek: &Kek) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("creating key-encryption key {}: {e}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(fail)?;
    file.write_all(kek.bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    sync_parent(path).map_err(fail)
}

/// `pending` renamed over `path`, durably.
fn replace(pending: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(pending, path)?;
    sync_parent(path)
}

/// Opens the store at `location` with the KEK from `source`: finishes a rekey that was
/// stopped after its commit, records the KEK in a store that has none and seals keys a
/// store from before sealing holds in plain text (logged). A KEK that is not the store's
/// is refused, and nothing is changed.
pub fn open_store(location: &Location, source: &KekSource) -> Result<Store, String> {
    let store = Store::open_location(location).map_err(|e| e.to_string())?;
    let mut kek = source.load()?;
    let mut path = source.path().to_owned();
    let recorded = store.kek_id().map_err(|e| e.to_string())?;
    if let (KekSource::File(file), Some(id)) = (source, recorded.as_deref())
        && id != kek.id()
    {
        let pending = pending_path(file);
        if let Ok(new) = read(&pending)
            && new.id() == id
        {
            match replace(&pending, file) {
                Ok(()) => tracing::info!(
                    kek = %file.display(),
                    "finished an interrupted rekey: the new key-encryption key is in place"
                ),
                Err(e) => {
                    tracing::warn!(
                        kek = %pending.display(),
                        error = %e,
                        "an interrupted rekey's new key-encryption key could not be put in \
                         place; using it from where it is: run `nbde-server rekey` to finish"
                    );
                    path = pending;
                }
            }
            kek = new;
        }
    }
    let id = kek.id().to_owned();
    match store.unlock(kek) {
        Ok(0) => {}
        Ok(sealed) => tracing::info!(
            sealed,
            kek = %path.display(),
            "sealed {sealed} private keys the store held in plain text"
        ),
        Err(UnlockError::OtherKek { store }) => {
            return Err(format!(
                "the key-encryption key at {} does not match this store (its keys are sealed \
                 under key {store}; this key is {id})",
                path.display()
            ));
        }
        Err(UnlockError::Store(e)) => return Err(e.to_string()),
    }
    Ok(store)
}

/// What a rekey did.
pub struct Rekeyed {
    pub keys: usize,
    pub kek_id: String,
}

/// Seals every key of the store at `location` under a new KEK and puts it in place of
/// the file at `source` (the order is in the module's documentation).
pub fn rekey(location: &Location, source: &KekSource) -> Result<Rekeyed, String> {
    let KekSource::File(path) = source else {
        return Err(format!(
            "the key-encryption key is the systemd credential {}: rekey a file, given with \
             --kek-file, and hand systemd the new one",
            source.path().display()
        ));
    };
    // Also finishes a rekey that stopped after its commit.
    let store = open_store(location, source)?;
    store.exclude_servers().map_err(|e| e.to_string())?;
    let pending = pending_path(path);
    if pending.exists() {
        // The store is sealed under PATH's key: this is a rekey stopped before its commit.
        std::fs::remove_file(&pending)
            .and_then(|()| sync_parent(&pending))
            .map_err(|e| format!("{}: {e}", pending.display()))?;
    }
    let new = Kek::generate().map_err(|e| e.to_string())?;
    // Durable before the commit that makes the store need it.
    create(&pending, &new)?;
    let keys = store.rekey(&new).map_err(|e| e.to_string())?;
    replace(&pending, path).map_err(|e| {
        format!(
            "the store is sealed under the new key-encryption key at {}, but it could not be \
             put in place of {}: {e} (the next start finishes it)",
            pending.display(),
            path.display()
        )
    })?;
    Ok(Rekeyed {
        keys,
        kek_id: new.id().to_owned(),
    })
}
