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
use crate::private::private_dir;

/// Largest header backup accepted after decompression (a LUKS2 header area is at most a
/// few tens of MiB).
const MAX_HEADER: usize = 64 << 20;

/// A private directory for one header copy, removed with what is in it on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let base = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        Ok(Scratch(private_dir(&base, "nbde-unlock")?))
    }

    fn file(&self) -> PathBuf {
        self.0.join("header")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The header holds the keyslots: overwrite before unlinking.
        if let Ok(len) = std::fs::metadata(self.file()).map(|m| m.len()) {
            let _ = std::fs::write(self.file(), vec![0u8; len as usize]);
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

/// The header of `volume`, compressed and encrypted to `escrow_key` (a public JWK).
pub fn seal_header(volume: &mut Volume, escrow_key: &Jwk, kid: &str) -> Result<Jwe> {
    let scratch = Scratch::new()?;
    volume.backup_header_to(&scratch.file())?;
    let header = read_file(&scratch.file())?;
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
