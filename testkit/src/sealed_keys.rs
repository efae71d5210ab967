//! The private keys an nbde-server store holds, opened with its key-encryption key the
//! way the format says (`nbde-sealed-v1.<KEK id>.<kid>.<nonce>.<ciphertext>`, AES-256-GCM,
//! associated data "nbde-sealed-v1\0FAMILY\0ORG\0DEVICE\0KID"; server/src/kek/mod.rs),
//! written apart from the server's own code: what tests learn the private scalars from.

use std::path::Path;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use nbde_proto::{Jwk, b64};

/// A private key of the store, opened.
#[derive(Debug)]
pub struct PrivateKey {
    /// "signing" or "exchange".
    pub family: String,
    pub org: String,
    /// Empty for a signing key.
    pub device: String,
    pub jwk: Jwk,
}

impl PrivateKey {
    /// The private scalar `d`, as bytes.
    pub fn d(&self) -> Vec<u8> {
        b64::decode(self.jwk.as_map()["d"].as_str().unwrap(), "d").unwrap()
    }
}

/// Opens `stored` (a sealed key of `family`, `org`, `device`) with the KEK `kek`.
pub fn open_sealed(kek: &[u8], family: &str, org: &str, device: &str, stored: &str) -> Jwk {
    let parts: Vec<&str> = stored.split('.').collect();
    let [prefix, _kek_id, kid, nonce, sealed] = parts[..] else {
        panic!("not a sealed key: {stored}");
    };
    assert_eq!(prefix, "nbde-sealed-v1");
    let nonce = b64::decode(nonce, "nonce").unwrap();
    let sealed = b64::decode(sealed, "ciphertext").unwrap();
    let (body, tag) = sealed.split_at(sealed.len() - 16);
    let mut plain = body.to_vec();
    let aad = [prefix, family, org, device, kid].join("\0");
    Aes256Gcm::new_from_slice(kek)
        .unwrap()
        .decrypt_inout_detached(
            &Nonce::try_from(nonce.as_slice()).unwrap(),
            aad.as_bytes(),
            plain.as_mut_slice().into(),
            &Tag::try_from(tag).unwrap(),
        )
        .expect("the sealed key opens with this KEK");
    Jwk::from_value(serde_json::from_slice(&plain).unwrap()).unwrap()
}

/// `SELECT family, org, device, jwk` over both key tables; the same SQL serves SQLite and
/// PostgreSQL.
pub const STORED_KEYS: &str = "SELECT 'signing', o.name, '', k.jwk
     FROM signing_keys k JOIN orgs o ON o.id = k.org_id
     UNION ALL
     SELECT 'exchange', o.name, d.name, k.jwk
     FROM exchange_keys k JOIN devices d ON d.id = k.device_id JOIN orgs o ON o.id = d.org_id";

/// Opens rows of `STORED_KEYS` given as `family|org|device|jwk` lines.
pub fn open_rows(kek_file: &Path, rows: &str) -> Vec<PrivateKey> {
    let kek = std::fs::read(kek_file).unwrap();
    rows.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.splitn(4, '|').collect();
            let [family, org, device, stored] = fields[..] else {
                panic!("unexpected row {line}");
            };
            PrivateKey {
                family: family.into(),
                org: org.into(),
                device: device.into(),
                jwk: open_sealed(&kek, family, org, device, stored.trim()),
            }
        })
        .collect()
}

/// Every private key of the SQLite store in `data`, read with the sqlite3 program and
/// opened with the KEK in `kek_file`.
pub fn sqlite_private_keys(data: &Path, kek_file: &Path) -> Vec<PrivateKey> {
    let db = data.join("nbde.sqlite");
    let out = crate::run_ok("sqlite3", &[db.to_str().unwrap(), STORED_KEYS], b"");
    open_rows(kek_file, &String::from_utf8(out).unwrap())
}
