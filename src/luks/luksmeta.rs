//! LUKS1 metadata in the luksmeta layout, byte-compatible with the stock `luksmeta` tool
//! (latchset/luksmeta), which stock clevis uses to keep its LUKS1 bindings.
//!
//! The metadata lives in the "hole" between the end of the LUKS1 keyslot material and the
//! start of the encrypted payload:
//!
//! ```text
//! hole start (4096-aligned)
//! +0     "LUKSMETA" | version u32 BE = 1 | crc32c u32 BE (over the 272 bytes, crc zeroed)
//! +16    8 × { uuid[16] | offset u32 BE | length u32 BE | crc32c u32 BE | reserved u32 }
//! +4096  slot data, each blob at a 4096-aligned offset from the hole start
//! ```
//!
//! A slot whose uuid is all zero is unused. Everything read from the device is treated as
//! untrusted: offsets and lengths are checked against the hole before any data is read.
//!
//! Writes go data first, header last, each synced, so a kill in between leaves the previous
//! header valid. Where the stock tool would overwrite another slot's data or write past the
//! end of the hole (both possible with luksmeta 9/10), this module refuses instead; in every
//! other case it places data exactly where the stock tool does, so images match byte for byte.
//!
//! The caller reads the header, acts on it and is the only writer meanwhile (as with the
//! stock tool, there is no locking).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use libcryptsetup_rs::consts::vals::EncryptionFormat;
use libcryptsetup_rs::{CryptDevice, CryptInit};

use crate::error::{Error, Result};

/// The luksmeta uuid under which clevis stores its JWEs: cb6e8904-81ff-40da-a84a-07ab9ab5715e.
pub const CLEVIS_UUID: [u8; 16] = [
    0xcb, 0x6e, 0x89, 0x04, 0x81, 0xff, 0x40, 0xda, 0xa8, 0x4a, 0x07, 0xab, 0x9a, 0xb5, 0x71, 0x5e,
];

/// LUKS1 has 8 keyslots, and luksmeta one metadata slot per keyslot.
pub const SLOTS: usize = 8;

const BLOCK: u64 = 4096;
const MAGIC: &[u8; 8] = b"LUKSMETA";
const VERSION: u32 = 1;
/// magic + version + crc + 8 slots of 32 bytes.
const HEADER_LEN: usize = 16 + SLOTS * SLOT_LEN;
const SLOT_LEN: usize = 32;
const CRC_AT: usize = 12;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn crc32c(bytes: &[u8]) -> u32 {
    CASTAGNOLI.checksum(bytes)
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

fn align_down(n: u64) -> u64 {
    n / BLOCK * BLOCK
}

fn bad(msg: impl Into<String>) -> Error {
    Error::LuksMeta(msg.into())
}

/// The gap between the LUKS1 keyslots and the payload, in bytes from the device start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// 4096-aligned end of the last keyslot's material.
    pub start: u64,
    /// A multiple of 4096; at most `u32::MAX` rounded down, since luksmeta offsets are u32.
    pub len: u64,
}

/// The hole of a device whose LUKS1 header `device` has loaded; LUKS2 or a device whose
/// payload starts right after the keyslots (no hole) is refused.
pub fn hole(device: &mut CryptDevice) -> Result<Hole> {
    let format = device.format_handle().get_type();
    if !matches!(format, Ok(EncryptionFormat::Luks1)) {
        return Err(bad(
            "not a LUKS1 device: luksmeta storage exists only in LUKS1",
        ));
    }
    let data = device
        .status_handle()
        .get_data_offset()
        .checked_mul(512)
        .ok_or_else(|| bad("payload offset out of range"))?;
    let mut start = 0u64;
    for slot in 0..SLOTS as u32 {
        let (offset, len) = device
            .keyslot_handle()
            .area(slot)
            .map_err(|e| bad(format!("keyslot {slot} area: {e}")))?;
        let end = offset
            .checked_add(len)
            .filter(|end| end.checked_add(BLOCK).is_some())
            .ok_or_else(|| bad(format!("keyslot {slot} area out of range")))?;
        start = start.max(align_up(end));
    }
    if start == 0 || start >= data {
        return Err(bad(format!(
            "no metadata area: the keyslots end at byte {start} and the payload starts at byte {data}"
        )));
    }
    let len = align_down(data - start).min(align_down(u64::from(u32::MAX)));
    Ok(Hole { start, len })
}

/// [`hole`] of the LUKS1 device or image at `path`.
pub fn hole_of(path: &Path) -> Result<Hole> {
    let mut device = CryptInit::init(path).map_err(|e| Error::Luks {
        step: "open device",
        detail: format!("{}: {e}", path.display()),
    })?;
    device
        .context_handle()
        .load::<()>(Some(EncryptionFormat::Luks1), None)
        .map_err(|e| Error::Luks {
            step: "read LUKS1 header",
            detail: format!("{}: {e}", path.display()),
        })?;
    hole(&mut device)
}

/// The whole hole, for a header backup: libcryptsetup's LUKS1 `luksHeaderBackup` stops at
/// the end of the keyslots, so it holds none of the luksmeta data.
pub fn read_hole(file: &File, hole: &Hole) -> Result<Vec<u8>> {
    let len = usize::try_from(hole.len).map_err(|_| bad("metadata area too large"))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, hole.start)
        .map_err(Error::io("read the LUKS1 metadata area"))?;
    Ok(bytes)
}

/// Puts back bytes from [`read_hole`]; the hole must have the same length as when it was read.
pub fn write_hole(file: &File, hole: &Hole, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != hole.len {
        return Err(bad(format!(
            "the saved metadata area has {} bytes, this device's has {}",
            bytes.len(),
            hole.len
        )));
    }
    write_synced(file, hole.start, bytes, "write the LUKS1 metadata area")
}

/// Zeroes the whole hole, as `luksmeta nuke` (and `luksmeta init -n`) does.
pub fn nuke(file: &File, hole: &Hole) -> Result<()> {
    let zero = [0u8; BLOCK as usize];
    for at in (0..hole.len).step_by(BLOCK as usize) {
        file.write_all_at(&zero, hole.start + at)
            .map_err(Error::io("zero the LUKS1 metadata area"))?;
    }
    file.sync_all()
        .map_err(Error::io("sync the LUKS1 metadata area"))
}

fn write_synced(file: &File, at: u64, bytes: &[u8], what: &'static str) -> Result<()> {
    file.write_all_at(bytes, at).map_err(Error::io(what))?;
    file.sync_all().map_err(Error::io(what))
}

/// One entry of the header, fields as on disk (host order here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Entry {
    uuid: [u8; 16],
    offset: u32,
    length: u32,
    crc32c: u32,
    /// Kept as read, as the stock tool does, so rewritten headers stay byte-identical.
    reserved: u32,
}

impl Entry {
    fn used(&self) -> bool {
        self.uuid != [0; 16]
    }

    /// The bytes this entry's data may occupy: its blocks, and at least one (as the stock
    /// tool also keeps others off the start of an empty blob).
    fn span(&self) -> (u64, u64) {
        let start = u64::from(self.offset);
        (start, align_up(start + u64::from(self.length.max(1))))
    }
}

/// Why a header was not accepted.
enum Refusal {
    /// A version this module does not know; `init` must not overwrite it.
    Version(u32),
    Corrupt(String),
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        match r {
            Refusal::Version(v) => bad(format!(
                "header version {v} is not supported (only version {VERSION})"
            )),
            Refusal::Corrupt(msg) => bad(format!("metadata is corrupt: {msg}")),
        }
    }
}

/// A parsed, checked luksmeta header and the hole it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksMeta {
    hole: Hole,
    slots: [Entry; SLOTS],
}

fn check_slot(slot: usize) -> Result<()> {
    if slot < SLOTS {
        Ok(())
    } else {
        Err(bad(format!(
            "slot {slot} does not exist (0 to {})",
            SLOTS - 1
        )))
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

impl LuksMeta {
    /// The header in `hole`, or `None` when the hole holds no luksmeta header (no magic, or
    /// a hole too small for one). A header that is there but wrong is an error saying what.
    pub fn read(file: &File, hole: &Hole) -> Result<Option<LuksMeta>> {
        Self::probe(file, hole)?.map_err(Error::from)
    }

    fn probe(file: &File, hole: &Hole) -> Result<std::result::Result<Option<LuksMeta>, Refusal>> {
        if hole.len < HEADER_LEN as u64 {
            return Ok(Ok(None));
        }
        let mut raw = [0u8; HEADER_LEN];
        file.read_exact_at(&mut raw, hole.start)
            .map_err(Error::io("read the luksmeta header"))?;
        Ok(Self::parse(&raw, hole))
    }

    fn parse(
        raw: &[u8; HEADER_LEN],
        hole: &Hole,
    ) -> std::result::Result<Option<LuksMeta>, Refusal> {
        if &raw[..8] != MAGIC {
            return Ok(None);
        }
        let version = be32(raw, 8);
        if version != VERSION {
            return Err(Refusal::Version(version));
        }
        let stored = be32(raw, CRC_AT);
        let mut zeroed = *raw;
        zeroed[CRC_AT..CRC_AT + 4].fill(0);
        let computed = crc32c(&zeroed);
        if stored != computed {
            return Err(Refusal::Corrupt(format!(
                "header checksum is {stored:08x}, the header sums to {computed:08x}"
            )));
        }
        let mut slots = [Entry::default(); SLOTS];
        for (slot, entry) in slots.iter_mut().enumerate() {
            let at = 16 + slot * SLOT_LEN;
            entry.uuid.copy_from_slice(&raw[at..at + 16]);
            entry.offset = be32(raw, at + 16);
            entry.length = be32(raw, at + 20);
            entry.crc32c = be32(raw, at + 24);
            entry.reserved = be32(raw, at + 28);
            if !entry.used() {
                continue;
            }
            let (offset, end) = (
                u64::from(entry.offset),
                u64::from(entry.offset) + u64::from(entry.length),
            );
            if offset < BLOCK {
                return Err(Refusal::Corrupt(format!(
                    "slot {slot}: data offset {offset} lies in the header block"
                )));
            }
            if end > hole.len {
                return Err(Refusal::Corrupt(format!(
                    "slot {slot}: data at offset {offset}, {} bytes, ends past the metadata area ({} bytes)",
                    entry.length, hole.len
                )));
            }
        }
        Ok(Some(LuksMeta { hole: *hole, slots }))
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut raw = [0u8; HEADER_LEN];
        raw[..8].copy_from_slice(MAGIC);
        raw[8..12].copy_from_slice(&VERSION.to_be_bytes());
        for (slot, entry) in self.slots.iter().enumerate() {
            let at = 16 + slot * SLOT_LEN;
            raw[at..at + 16].copy_from_slice(&entry.uuid);
            raw[at + 16..at + 20].copy_from_slice(&entry.offset.to_be_bytes());
            raw[at + 20..at + 24].copy_from_slice(&entry.length.to_be_bytes());
            raw[at + 24..at + 28].copy_from_slice(&entry.crc32c.to_be_bytes());
            raw[at + 28..at + 32].copy_from_slice(&entry.reserved.to_be_bytes());
        }
        let crc = crc32c(&raw);
        raw[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        raw
    }

    fn write_header(&self, file: &File) -> Result<()> {
        write_synced(
            file,
            self.hole.start,
            &self.encode(),
            "write the luksmeta header",
        )
    }

    /// Writes an empty header, as `luksmeta init` does: the rest of the hole is left as it
    /// is (zero it first with [`nuke`] for `luksmeta init -n`). A valid header is never
    /// overwritten ("already initialized"), nor one of an unknown version; a corrupt one is,
    /// as the stock tool does.
    pub fn init(file: &File, hole: &Hole) -> Result<LuksMeta> {
        if hole.len < BLOCK {
            return Err(bad(format!(
                "no room in the LUKS1 metadata area for a header ({} bytes)",
                hole.len
            )));
        }
        match Self::probe(file, hole)? {
            Ok(Some(_)) => return Err(bad("the device is already initialized for luksmeta")),
            Err(version @ Refusal::Version(_)) => return Err(version.into()),
            Ok(None) | Err(Refusal::Corrupt(_)) => {}
        }
        let meta = LuksMeta {
            hole: *hole,
            slots: [Entry::default(); SLOTS],
        };
        meta.write_header(file)?;
        Ok(meta)
    }

    pub fn hole(&self) -> Hole {
        self.hole
    }

    /// The uuid stored in `slot`, or `None` for an unused slot (or one that does not exist).
    pub fn slot_uuid(&self, slot: usize) -> Option<[u8; 16]> {
        self.slots
            .get(slot)
            .filter(|entry| entry.used())
            .map(|entry| entry.uuid)
    }

    /// The uuid and data of `slot`, `None` when it is unused; the data's checksum is checked.
    pub fn load(&self, file: &File, slot: usize) -> Result<Option<([u8; 16], Vec<u8>)>> {
        check_slot(slot)?;
        let entry = self.slots[slot];
        if !entry.used() {
            return Ok(None);
        }
        // In bounds: `parse` checked offset + length against the hole.
        let mut data = vec![0u8; entry.length as usize];
        file.read_exact_at(&mut data, self.hole.start + u64::from(entry.offset))
            .map_err(Error::io(format!("read luksmeta slot {slot}")))?;
        let sum = crc32c(&data);
        if sum != entry.crc32c {
            return Err(bad(format!(
                "metadata is corrupt: slot {slot}: data checksum is {:08x}, the data sums to {sum:08x}",
                entry.crc32c
            )));
        }
        Ok(Some((entry.uuid, data)))
    }

    /// Whether `len` bytes of data would fit in a free place now.
    pub fn fits(&self, len: usize) -> bool {
        len > 0 && u32::try_from(len).is_ok() && self.place(len as u64).is_some()
    }

    /// Where `len` bytes go: the first 4096-aligned offset after the header block where they
    /// overlap no used slot's data and end inside the hole (the stock tool's choice whenever
    /// that choice is sound).
    fn place(&self, len: u64) -> Option<u32> {
        let size = align_up(len.max(1));
        let mut offset = BLOCK;
        while offset.checked_add(size)? <= self.hole.len {
            let end = offset + size;
            let clash = self
                .slots
                .iter()
                .filter(|entry| entry.used())
                .map(Entry::span)
                .find(|&(start, stop)| start < end && offset < stop);
            match clash {
                None => return u32::try_from(offset).ok(),
                Some((_, stop)) => offset = offset.max(align_up(stop)),
            }
        }
        None
    }

    /// Stores `data` under `uuid` in the unused `slot` (wipe it first to replace it). The
    /// data is written and synced before the header that points to it.
    pub fn save(&mut self, file: &File, slot: usize, uuid: [u8; 16], data: &[u8]) -> Result<()> {
        check_slot(slot)?;
        if uuid == [0; 16] {
            return Err(bad(
                "the all-zero uuid marks an unused slot and cannot be stored",
            ));
        }
        if data.is_empty() {
            return Err(bad("no data to store"));
        }
        if self.slots[slot].used() {
            return Err(bad(format!("slot {slot} is in use (wipe it first)")));
        }
        let length = u32::try_from(data.len()).ok();
        let offset = length.and_then(|_| self.place(data.len() as u64));
        let (Some(length), Some(offset)) = (length, offset) else {
            return Err(bad(format!(
                "no room in the LUKS1 metadata area for {} bytes ({} bytes free in all, {} in one piece at most)",
                data.len(),
                self.free_bytes(),
                self.largest_free()
            )));
        };
        write_synced(
            file,
            self.hole.start + u64::from(offset),
            data,
            "write luksmeta slot data",
        )?;
        let mut next = self.clone();
        next.slots[slot] = Entry {
            uuid,
            offset,
            length,
            crc32c: crc32c(data),
            reserved: self.slots[slot].reserved,
        };
        next.write_header(file)?;
        *self = next;
        Ok(())
    }

    /// Zeroes the data of the used `slot`, then clears its header entry (each synced).
    pub fn wipe(&mut self, file: &File, slot: usize) -> Result<()> {
        check_slot(slot)?;
        let entry = self.slots[slot];
        if !entry.used() {
            return Err(bad(format!("slot {slot} is already empty")));
        }
        // In bounds: `parse` checked offset + length against the hole.
        let zero = vec![0u8; entry.length as usize];
        write_synced(
            file,
            self.hole.start + u64::from(entry.offset),
            &zero,
            "zero luksmeta slot data",
        )?;
        let mut next = self.clone();
        next.slots[slot] = Entry::default();
        next.write_header(file)?;
        *self = next;
        Ok(())
    }

    /// Data blocks that no used slot occupies.
    fn free_blocks(&self) -> impl Iterator<Item = bool> + '_ {
        (BLOCK..self.hole.len).step_by(BLOCK as usize).map(|at| {
            !self
                .slots
                .iter()
                .filter(|entry| entry.used())
                .map(Entry::span)
                .any(|(start, stop)| start <= at && at < stop)
        })
    }

    fn free_bytes(&self) -> u64 {
        self.free_blocks().filter(|&free| free).count() as u64 * BLOCK
    }

    fn largest_free(&self) -> u64 {
        let (mut run, mut best) = (0u64, 0u64);
        for free in self.free_blocks() {
            run = if free { run + BLOCK } else { 0 };
            best = best.max(run);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(len: u64, used: &[(usize, u32, u32)]) -> LuksMeta {
        let mut slots = [Entry::default(); SLOTS];
        for &(slot, offset, length) in used {
            slots[slot] = Entry {
                uuid: CLEVIS_UUID,
                offset,
                length,
                ..Entry::default()
            };
        }
        LuksMeta {
            hole: Hole { start: 0, len },
            slots,
        }
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn placement_skips_every_block_of_a_large_blob() {
        // The stock tool would put this inside slot 0's data (offset 8192).
        let m = meta(7 * 4096, &[(0, 4096, 20000)]);
        assert_eq!(m.place(5), Some(6 * 4096));
        assert_eq!(m.place(4097), None);
        assert_eq!(meta(7 * 4096, &[]).place(6 * 4096), Some(4096));
        assert_eq!(meta(7 * 4096, &[]).place(6 * 4096 + 1), None);
        // The stock tool's limit would let this end 4096 bytes past the hole.
        assert_eq!(meta(7 * 4096, &[(0, 4096, 1)]).place(6 * 4096), None);
        assert_eq!(meta(7 * 4096, &[(0, 4096, 1)]).place(5 * 4096), Some(8192));
        let gap = meta(7 * 4096, &[(0, 4096, 1), (1, 12288, 1)]);
        assert_eq!(gap.place(4096), Some(8192));
        assert_eq!(gap.place(4097), Some(16384));
        assert_eq!((gap.free_bytes(), gap.largest_free()), (16384, 12288));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let hole = Hole {
            start: 0,
            len: 7 * 4096,
        };
        let mut m = meta(hole.len, &[(3, 8192, 100)]);
        m.slots[3].reserved = 7;
        let raw = m.encode();
        assert_eq!(LuksMeta::parse(&raw, &hole).ok().flatten(), Some(m));
        for at in 0..HEADER_LEN {
            let mut bad = raw;
            bad[at] ^= 0x10;
            assert!(
                !matches!(LuksMeta::parse(&bad, &hole), Ok(Some(_))),
                "byte {at}"
            );
        }
        let small = Hole {
            start: 0,
            len: 8192,
        };
        assert!(matches!(
            LuksMeta::parse(&raw, &small),
            Err(Refusal::Corrupt(msg)) if msg.contains("ends past")
        ));
    }
}
