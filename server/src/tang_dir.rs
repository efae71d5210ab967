//! A tangd key directory served as tangd serves it: `*.jwk` advertised, `.*.jwk` (rotated
//! by `tangd-rotate-keys`) hidden but still answering `/rec/{kid}` and signing `/adv/{kid}`.
//! The directory is re-read when it changes, so rotation needs no restart. As tangd does, a
//! read that finds nothing to advertise (a fresh install's empty directory, or every key
//! rotated away) first creates a pair as `tangd-keygen` would; stock tangd can serve them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nbde_proto::{Curve, Jwk, ThumbprintHash};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::error::{ApiError, Result};
use crate::keys::{
    ExchangeKey, advertised_form, kids, new_exchange_key, new_signing_key, sign_adv,
};

/// The keys in `dir`, each with whether it is hidden (rotated).
fn read_keys(dir: &Path) -> Result<Vec<(Jwk, bool)>> {
    let mut keys = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| dir_error(dir, e))?;
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if !name.ends_with(".jwk") {
            continue;
        }
        let text = std::fs::read_to_string(dir.join(&name))
            .map_err(|e| ApiError::Internal(format!("tang key {name}: {e}")))?;
        let jwk = serde_json::from_str(&text)
            .ok()
            .and_then(|v| Jwk::from_value(v).ok())
            .ok_or_else(|| ApiError::Internal(format!("tang key {name}: not a JWK")))?;
        keys.push((jwk, name.starts_with('.')));
    }
    Ok(keys)
}

/// Whether a key is in the default advertisement: not hidden, and for signing or exchange.
fn is_advertised((key, hidden): &(Jwk, bool)) -> bool {
    !hidden && (key.allows("sign") || key.allows("deriveKey"))
}

pub struct TangKeys {
    /// (key, hidden)
    keys: Vec<(Jwk, bool)>,
    /// Every thumbprint of every signing key → its index in `keys`.
    signing: HashMap<String, usize>,
    /// Every thumbprint of every exchange key → the parsed key.
    exchange: HashMap<String, Arc<ExchangeKey>>,
    /// The default advertisement, signed by the visible signing keys.
    adv: String,
}

impl TangKeys {
    fn new(keys: Vec<(Jwk, bool)>) -> Result<TangKeys> {
        let advertised: Vec<Jwk> = keys
            .iter()
            .filter(|entry| is_advertised(entry))
            .map(|(k, _)| advertised_form(k))
            .collect();
        let signers: Vec<&Jwk> = keys
            .iter()
            .filter(|(k, hidden)| !hidden && k.allows("sign"))
            .map(|(k, _)| k)
            .collect();
        let adv = sign_adv(&advertised, &signers)?;
        let mut signing = HashMap::new();
        let mut exchange = HashMap::new();
        // The first file (by name) holding a key wins, as the linear search it replaces did.
        for (i, (k, _)) in keys.iter().enumerate() {
            if k.allows("sign") {
                for kid in kids(k) {
                    signing.entry(kid).or_insert(i);
                }
            }
            if k.allows("deriveKey") {
                let parsed = Arc::new(ExchangeKey::new(k));
                for kid in kids(k) {
                    exchange.entry(kid).or_insert_with(|| parsed.clone());
                }
            }
        }
        Ok(TangKeys {
            keys,
            signing,
            exchange,
            adv,
        })
    }

    pub fn adv(&self) -> &str {
        &self.adv
    }

    /// `/adv/{kid}`: the advertisement also signed by the signing key `kid`, hidden or not.
    pub fn adv_for(&self, kid: &str) -> Result<Option<String>> {
        let Some((extra, hidden)) = self.signing.get(kid).map(|&i| &self.keys[i]) else {
            return Ok(None);
        };
        if !hidden {
            return Ok(Some(self.adv.clone()));
        }
        let advertised: Vec<Jwk> = self
            .keys
            .iter()
            .filter(|(k, h)| !h && (k.allows("sign") || k.allows("deriveKey")))
            .map(|(k, _)| advertised_form(k))
            .collect();
        let mut signers: Vec<&Jwk> = self
            .keys
            .iter()
            .filter(|(k, h)| !h && k.allows("sign"))
            .map(|(k, _)| k)
            .collect();
        signers.push(extra);
        sign_adv(&advertised, &signers).map(Some)
    }

    /// The exchange key (hidden or not) named by `kid`.
    pub fn exchange_key(&self, kid: &str) -> Option<&ExchangeKey> {
        self.exchange.get(kid).map(|k| &**k)
    }
}

/// Identifies one state of the directory: replacing the directory (`rm -rf; mkdir`) changes
/// the inode even where the new one's modification time could equal the old one's.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    modified: SystemTime,
}

impl Stamp {
    fn of(dir: &Path) -> Result<Stamp> {
        let meta = std::fs::metadata(dir).map_err(|e| dir_error(dir, e))?;
        Ok(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            modified: meta.modified().map_err(|e| dir_error(dir, e))?,
        })
    }
}

fn dir_error(dir: &Path, e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("tang dir {}: {e}", dir.display()))
}

pub struct TangDir {
    dir: PathBuf,
    cached: Mutex<Option<(Stamp, Arc<TangKeys>)>>,
}

impl TangDir {
    /// Loads `dir` (creating a pair if it advertises nothing), so a bad directory stops the
    /// server at startup rather than failing its first request.
    pub fn new(dir: PathBuf) -> Result<TangDir> {
        let tang = TangDir {
            dir,
            cached: Mutex::new(None),
        };
        tang.keys()?;
        Ok(tang)
    }

    /// The keys, re-read if the directory changed since the last read.
    pub fn keys(&self) -> Result<Arc<TangKeys>> {
        // Stat before reading: a change made during the read gives a new stamp next time.
        let mut stamp = Stamp::of(&self.dir)?;
        // Held while reading and creating, so concurrent requests make one pair, not several.
        let mut cached = self
            .cached
            .lock()
            .map_err(|_| ApiError::Internal("tang dir lock poisoned".into()))?;
        if let Some((at, keys)) = cached.as_ref()
            && *at == stamp
        {
            return Ok(keys.clone());
        }
        let mut keys = read_keys(&self.dir)?;
        // tangd's rule: a pair only when nothing at all is advertised.
        if !keys.iter().any(is_advertised) {
            create_pair(&self.dir)?;
            stamp = Stamp::of(&self.dir)?;
            keys = read_keys(&self.dir)?;
        }
        let keys = Arc::new(TangKeys::new(keys)?);
        *cached = Some((stamp, keys.clone()));
        Ok(keys)
    }
}

/// Creates one ES512 signing key and one ECMR exchange key (both P-521) in `dir`, as
/// `tangd-keygen DIR` does: each in `<S256 thumbprint>.jwk`, compact JSON with sorted
/// members and a newline, mode 0440. Both are written and synced under temporary names
/// before either is renamed into place, so a failure or crash leaves no half-written key
/// and, short of a crash between the two renames, never one key without the other.
fn create_pair(dir: &Path) -> Result<()> {
    let keygen = |e: nbde_proto::Error| ApiError::Internal(format!("tang key generation: {e}"));
    let pair = [
        ("signing", new_signing_key()?),
        ("exchange", new_exchange_key(Curve::P521)?),
    ];
    let dir_meta = std::fs::metadata(dir).map_err(|e| dir_error(dir, e))?;
    let mut staged: Vec<(&str, PathBuf, PathBuf)> = Vec::new();
    for (role, jwk) in &pair {
        let name = format!(
            "{}.jwk",
            jwk.thumbprint(ThumbprintHash::S256).map_err(keygen)?
        );
        // Hidden and not ending in `.jwk`: neither we nor tangd read it as a key.
        let temp = dir.join(format!(".{name}.tmp"));
        let written = write_key(&temp, jwk, &dir_meta);
        staged.push((role, temp, dir.join(name)));
        if let Err(e) = written {
            return Err(abandon(dir, &staged, e));
        }
    }
    for (role, temp, path) in &staged {
        if let Err(e) = std::fs::rename(temp, path) {
            return Err(abandon(dir, &staged, e));
        }
        tracing::info!(file = %path.display(), role, "tang dir advertised no key: created");
    }
    // The renames are durable only once the directory itself is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| dir_error(dir, e))
}

/// Removes the temporary files left by a failed `create_pair` (those already renamed are
/// gone from their temporary names) and returns the error.
fn abandon(dir: &Path, staged: &[(&str, PathBuf, PathBuf)], e: std::io::Error) -> ApiError {
    for (_, temp, _) in staged {
        let _ = std::fs::remove_file(temp);
    }
    dir_error(dir, e)
}

/// Writes `jwk` to the new file `path`, mode 0440, synced. The file gets the directory's
/// owner and group where we may give it (running as root): `tangd-keygen` hands its keys
/// to the tang user, and the directory's owner is that user in a packaged install.
fn write_key(path: &Path, jwk: &Jwk, dir_meta: &std::fs::Metadata) -> std::io::Result<()> {
    let mut sorted: Vec<(&String, &Value)> = jwk.as_map().iter().collect();
    sorted.sort_by_key(|(name, _)| *name);
    let sorted: Map<String, Value> = sorted
        .into_iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let text = Zeroizing::new(format!("{}\n", Value::Object(sorted)));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o440)
        .open(path)?;
    // The umask may have narrowed the mode; tangd-keygen sets 0440 whatever it is.
    file.set_permissions(std::fs::Permissions::from_mode(0o440))?;
    let meta = file.metadata()?;
    if (meta.uid(), meta.gid()) != (dir_meta.uid(), dir_meta.gid())
        && let Err(e) = std::os::unix::fs::fchown(&file, Some(dir_meta.uid()), Some(dir_meta.gid()))
    {
        tracing::warn!(file = %path.display(), "cannot give the key the directory's owner: {e}");
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
