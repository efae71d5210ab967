//! LUKS1 bindings as stock clevis keeps them: the compact JWE in the luksmeta slot of the
//! same number as the keyslot, under clevis's UUID.

use std::fs::{File, OpenOptions};

use nbde_proto::Jwe;
use zeroize::Zeroizing;

use super::luksmeta::{self, CLEVIS_UUID, Hole, LuksMeta};
use super::{Binding, Store, Volume};
use crate::error::{Error, Result};

fn open(volume: &mut Volume, write: bool) -> Result<(File, Hole)> {
    let hole = luksmeta::hole(&mut volume.device)?;
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(&volume.path)
        .map_err(Error::io(format!("opening {}", volume.path.display())))?;
    Ok((file, hole))
}

/// The luksmeta header, if the volume has one.
fn read(volume: &mut Volume, write: bool) -> Result<Option<(File, LuksMeta)>> {
    let (file, hole) = open(volume, write)?;
    Ok(LuksMeta::read(&file, &hole)?.map(|meta| (file, meta)))
}

fn initialized(volume: &mut Volume, write: bool) -> Result<(File, LuksMeta)> {
    read(volume, write)?.ok_or_else(|| {
        Error::Config(format!(
            "{} holds no luksmeta header (bind with -f to create one)",
            volume.path.display()
        ))
    })
}

pub(super) fn bindings(volume: &mut Volume) -> Vec<Binding> {
    let Ok(Some((file, meta))) = read(volume, false) else {
        return Vec::new();
    };
    (0..luksmeta::SLOTS)
        .filter(|&slot| meta.slot_uuid(slot) == Some(CLEVIS_UUID))
        .map(|slot| {
            let jwe = match meta.load(&file, slot) {
                Ok(Some((_, data))) => std::str::from_utf8(&data)
                    .map_err(|_| format!("luksmeta slot {slot}: not text"))
                    .and_then(|text| {
                        Jwe::parse_compact(text.trim_end())
                            .map_err(|e| format!("luksmeta slot {slot}: {e}"))
                    }),
                Ok(None) => Err(format!("luksmeta slot {slot}: empty")),
                Err(e) => Err(format!("luksmeta slot {slot}: {e}")),
            };
            Binding {
                slot: slot as u32,
                active: false,
                store: Store::LuksMeta,
                jwe,
            }
        })
        .collect()
}

/// Keyslots whose luksmeta slot holds something (no header yet: none; a header that
/// cannot be read: all, so nothing is written over it).
pub(super) fn taken_slots(volume: &mut Volume) -> Vec<u32> {
    match read(volume, false) {
        Ok(Some((_, meta))) => (0..luksmeta::SLOTS)
            .filter(|&slot| meta.slot_uuid(slot).is_some())
            .map(|slot| slot as u32)
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => (0..luksmeta::SLOTS as u32).collect(),
    }
}

pub(super) fn check_room(volume: &mut Volume, jwe: &Jwe) -> Result<()> {
    let (_, meta) = initialized(volume, false)?;
    let size = jwe.to_compact().len();
    if meta.fits(size) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "the binding ({size} bytes) does not fit in the LUKS1 metadata area of {}",
            volume.path.display()
        )))
    }
}

pub(super) fn save(volume: &mut Volume, slot: u32, jwe: &Jwe) -> Result<()> {
    let (file, mut meta) = initialized(volume, true)?;
    meta.save(
        &file,
        slot as usize,
        CLEVIS_UUID,
        jwe.to_compact().as_bytes(),
    )
}

pub(super) fn wipe(volume: &mut Volume, slot: u32) -> Result<()> {
    let (file, mut meta) = initialized(volume, true)?;
    meta.wipe(&file, slot as usize)
}

/// Whether the volume has a luksmeta header.
pub(super) fn is_initialized(volume: &mut Volume) -> Result<bool> {
    Ok(read(volume, false)?.is_some())
}

/// Writes an empty luksmeta header, as `luksmeta init` does (the rest of the area is left
/// as it is: a fresh LUKS1 volume has it zeroed).
pub(super) fn initialize(volume: &mut Volume) -> Result<()> {
    let (file, hole) = open(volume, true)?;
    LuksMeta::init(&file, &hole).map(|_| ())
}

/// The whole luksmeta area, for a header backup.
pub(super) fn read_area(volume: &mut Volume) -> Result<Zeroizing<Vec<u8>>> {
    let (file, hole) = open(volume, false)?;
    luksmeta::read_hole(&file, &hole).map(Zeroizing::new)
}

pub(super) fn write_area(volume: &mut Volume, area: &[u8]) -> Result<()> {
    let (file, hole) = open(volume, true)?;
    luksmeta::write_hole(&file, &hole, area)
}
