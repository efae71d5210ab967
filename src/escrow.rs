//! Header escrow the server cannot open. The machine backs up its LUKS header, compresses
//! it (`"zip":"DEF"`, RFC 7516 §4.1.3), encrypts it to the organisation's escrow public
//! key (ECDH-ES + A256GCM) and uploads only that. The private half stays offline with the
//! customer; `restore` takes it from a file, decrypts on the machine, checks the UUID and
//! puts the header back.

use std::io::Read;
use std::path::{Path, PathBuf};

use nbde_proto::{Jwe, Jwk, ThumbprintHash};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::admin::{Admin, DeviceUrl};
use crate::error::{Error, Result};
use crate::luks::{self, Volume};
use crate::private::{private_dir, scratch_base};

/// Largest header backup accepted after decompression (a LUKS2 header area is at most a
/// few tens of MiB).
const MAX_HEADER: usize = 64 << 20;

/// A private directory for one header copy, removed with what is in it on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        Ok(Scratch(private_dir(&scratch_base(), "nbde-unlock")?))
    }

    fn file(&self) -> PathBuf {
        self.0.join("header")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The header holds the keyslots: overwrite it in place (not truncated, which would
        // free its blocks first) before unlinking.
        if let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(self.file())
            && let Ok(meta) = file.metadata()
        {
            use std::io::Write;
            let _ = file.write_all(&vec![0u8; meta.len() as usize]);
            let _ = file.sync_all();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let mut data = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(Error::io(path.display().to_string()))?;
    Ok(data)
}

/// The org's escrow key from the server's answer, checked: a public EC key.
fn escrow_public_key(reply: &Value) -> Result<(Jwk, String)> {
    let jwk = reply
        .get("jwk")
        .cloned()
        .ok_or_else(|| Error::Config("the server sent no escrow key".into()))
        .and_then(|v| Jwk::from_value(v).map_err(Error::proto("escrow key")))?;
    if jwk.as_map().contains_key("d") {
        return Err(Error::Config(
            "the server's escrow key has a private part: refusing to use it".into(),
        ));
    }
    jwk.point().map_err(Error::proto("escrow key"))?;
    let kid = jwk
        .thumbprint(ThumbprintHash::S256)
        .map_err(Error::proto("escrow key"))?;
    Ok((jwk, kid))
}

/// The LUKS2 binary header's magic and the offset of its JSON area.
const LUKS2_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const LUKS2_JSON_OFFSET: usize = 4096;

/// Zeroes the parts of a LUKS2 header backup no keyslot uses. cryptsetup fills the whole
/// keyslots area with random bytes at format time, so a backup is 16 MiB that do not
/// compress; only the two header copies and the areas of the keyslots matter to a restore.
/// A LUKS1 backup (or anything unexpected) is left whole.
fn clear_unused_areas(backup: &mut [u8]) {
    if backup.len() < LUKS2_JSON_OFFSET || &backup[..6] != LUKS2_MAGIC {
        return;
    }
    let Ok(header_size) = backup[8..16].try_into().map(u64::from_be_bytes) else {
        return;
    };
    let header_size = header_size as usize;
    if header_size <= LUKS2_JSON_OFFSET || 2 * header_size > backup.len() {
        return;
    }
    let json_area = &backup[LUKS2_JSON_OFFSET..header_size];
    let json_len = json_area
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(json_area.len());
    let Ok(metadata) = serde_json::from_slice::<Value>(&json_area[..json_len]) else {
        return;
    };
    let number = |v: &Value| v.as_str().and_then(|s| s.parse::<usize>().ok());
    let mut used: Vec<(usize, usize)> = Vec::new();
    for keyslot in metadata["keyslots"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        match (
            number(&keyslot["area"]["offset"]),
            number(&keyslot["area"]["size"]),
        ) {
            (Some(offset), Some(size)) => used.push((offset, offset.saturating_add(size))),
            // A keyslot we cannot place: keep everything rather than lose it.
            _ => return,
        }
    }
    used.sort_unstable();
    let len = backup.len();
    let mut at = 2 * header_size;
    for (start, end) in used {
        let start = start.min(len);
        if start > at {
            backup[at..start].fill(0);
        }
        at = at.max(end.min(len));
    }
    backup[at..].fill(0);
}

/// The header of `volume`, compressed and encrypted to `escrow_key` (a public JWK).
pub fn seal_header(volume: &mut Volume, escrow_key: &Jwk, kid: &str) -> Result<Jwe> {
    let scratch = Scratch::new()?;
    volume.backup_header_to(&scratch.file())?;
    let mut header = read_file(&scratch.file())?;
    clear_unused_areas(&mut header);
    let packed = Zeroizing::new(miniz_oxide::deflate::compress_to_vec(&header, 6));
    let mut protected = Map::new();
    protected.insert("kid".into(), kid.into());
    protected.insert("zip".into(), "DEF".into());
    protected.insert("cty".into(), "luks-header-backup".into());
    let point = escrow_key.point().map_err(Error::proto("escrow key"))?;
    Jwe::encrypt_ecdh_es(protected, &point, &packed).map_err(Error::proto("escrow JWE"))
}

/// Opens a sealed header with the escrow private key.
pub fn open_sealed(jwe: &Jwe, private_key: &Jwk) -> Result<Zeroizing<Vec<u8>>> {
    let scalar = private_key
        .scalar()
        .map_err(|_| Error::Config("the escrow key file holds no private EC key".into()))?;
    let packed = jwe
        .decrypt_ecdh_es(&scalar)
        .map_err(|_| Error::Config("the escrow key does not open this header backup".into()))?;
    match jwe.header().get("zip").and_then(Value::as_str) {
        None => Ok(packed),
        Some("DEF") => miniz_oxide::inflate::decompress_to_vec_with_limit(&packed, MAX_HEADER)
            .map(Zeroizing::new)
            .map_err(|_| Error::Config("the header backup does not decompress".into())),
        Some(other) => Err(Error::Config(format!("header backup zip {other:?}"))),
    }
}

/// Uploads the sealed header of `volume` for `device`; returns the server's record.
pub fn escrow(volume: &mut Volume, admin: &Admin, device: &DeviceUrl) -> Result<Value> {
    let (key, kid) = escrow_public_key(&admin.escrow_key(&device.org)?)?;
    let uuid = volume.uuid()?;
    let sealed = seal_header(volume, &key, &kid)?;
    admin.put_escrow(device, &sealed.to_compact(), &uuid)
}

/// Fetches the escrowed header of `device`, opens it with `private_key`, checks that it
/// is the header of `target` (by UUID, when `target`'s own header still reads) and of the
/// record, and restores it. Returns the UUID restored.
pub fn restore(
    target: &Path,
    admin: &Admin,
    device: &DeviceUrl,
    private_key: &Jwk,
) -> Result<String> {
    let record = admin.escrow(device)?;
    let text = record
        .get("jwe")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Config("the server sent no header backup".into()))?;
    let jwe =
        Jwe::parse_large_compact(text, 2 * MAX_HEADER).map_err(Error::proto("escrowed header"))?;
    let header = open_sealed(&jwe, private_key)?;
    let scratch = Scratch::new()?;
    std::fs::write(scratch.file(), &header[..])
        .map_err(Error::io(scratch.file().display().to_string()))?;
    let backup_uuid = Volume::open(&scratch.file())?.uuid()?;
    if let Some(recorded) = record.get("uuid").and_then(Value::as_str)
        && recorded != backup_uuid
    {
        return Err(Error::Config(format!(
            "the escrowed header is of volume {backup_uuid}, not {recorded} as recorded"
        )));
    }
    // A damaged header may not read at all; one that does must be the same volume's.
    if let Ok(mut current) = Volume::open(target) {
        let uuid = current.uuid()?;
        if uuid != backup_uuid {
            return Err(Error::Config(format!(
                "{} is volume {uuid}; the escrowed header is of {backup_uuid}",
                target.display()
            )));
        }
    }
    luks::restore_header(target, &scratch.file())?;
    Ok(backup_uuid)
}

/// A new escrow key pair on `curve`: the private JWK (to keep offline) and its public half.
pub fn generate_key(curve: nbde_proto::Curve) -> Result<(Zeroizing<String>, Value)> {
    let scalar = curve
        .random_scalar()
        .map_err(|_| Error::Config("random number generator failed".into()))?;
    let mut private = Jwk::from_scalar(&scalar);
    private.set("alg", "ECDH-ES".into());
    let public = private.to_public();
    Ok((
        Zeroizing::new(private.to_value().to_string()),
        public.to_value(),
    ))
}
