//! The luksmeta layout of LUKS1 images, read and written by us and by the stock `luksmeta`
//! tool in turn: same bytes, same answers, and no write past the metadata area.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nbde_unlock::Error;
use nbde_unlock::luks::luksmeta::{self, CLEVIS_UUID, Hole, LuksMeta};
use testkit::*;

const OTHER_UUID: [u8; 16] = *b"\x01\x23\x45\x67\x89\xab\xcd\xef\xfe\xdc\xba\x98\x76\x54\x32\x10";

fn stock(image: &Path, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut full = vec![args[0], "-d", s(image)];
    full.extend_from_slice(&args[1..]);
    run("luksmeta", &full, stdin)
}

fn stock_ok(image: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = stock(image, args, stdin);
    assert!(
        out.status.success(),
        "luksmeta {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn uuid_text(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn open(image: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap()
}

/// Data that differs from block to block, `len` bytes.
fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn image_with_hole(dir: &Path, name: &str) -> (PathBuf, Hole) {
    let image = luks1_image(dir, name);
    let hole = luksmeta::hole_of(&image).unwrap();
    (image, hole)
}

fn read(file: &File, hole: &Hole) -> LuksMeta {
    LuksMeta::read(file, hole).unwrap().expect("initialized")
}

fn luksmeta_error(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::LuksMeta(msg)) => msg,
        other => panic!("expected a luksmeta error, got {other:?}"),
    }
}

#[test]
fn hole_is_where_stock_luksmeta_puts_its_header() {
    let dir = tempdir();
    let (image, hole) = image_with_hole(dir.path(), "a.img");
    assert_eq!(
        hole,
        Hole {
            start: 2068480,
            len: 2 * 1024 * 1024 - 2068480
        }
    );
    let file = open(&image);
    assert_eq!(LuksMeta::read(&file, &hole).unwrap(), None);
    assert!(!stock(&image, &["test"], b"").status.success());
    stock_ok(&image, &["init", "-f"], b"");
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, hole.start).unwrap();
    assert_eq!(&magic, b"LUKSMETA");
    let meta = read(&file, &hole);
    assert_eq!(meta.hole(), hole);
    assert!((0..8).all(|slot| meta.slot_uuid(slot).is_none()));

    // A LUKS2 image has no such hole.
    let luks2 = luks_image(dir.path(), "luks2.img");
    assert!(luksmeta::hole_of(&luks2).is_err());
}

#[test]
fn stock_saves_read_back_with_ours() {
    let dir = tempdir();
    let (image, hole) = image_with_hole(dir.path(), "a.img");
    stock_ok(&image, &["init", "-f"], b"");
    let (a, b) = (blob(3000, 1), blob(9000, 2));
    let clevis = uuid_text(&CLEVIS_UUID);
    let other = uuid_text(&OTHER_UUID);
    stock_ok(&image, &["save", "-s", "1", "-u", &clevis], &a);
    stock_ok(&image, &["save", "-s", "5", "-u", &other], &b);

    let file = open(&image);
    let meta = read(&file, &hole);
    assert_eq!(meta.load(&file, 1).unwrap(), Some((CLEVIS_UUID, a)));
    assert_eq!(meta.load(&file, 5).unwrap(), Some((OTHER_UUID, b)));
    for slot in [0, 2, 3, 4, 6, 7] {
        assert_eq!(meta.slot_uuid(slot), None);
        assert_eq!(meta.load(&file, slot).unwrap(), None);
    }
    assert_eq!(meta.slot_uuid(5), Some(OTHER_UUID));
    assert!(meta.load(&file, 8).is_err());
    // Our init leaves an initialized device alone.
    let before = luksmeta::read_hole(&file, &hole).unwrap();
    assert!(luksmeta_error(LuksMeta::init(&file, &hole)).contains("already initialized"));
    assert_eq!(luksmeta::read_hole(&file, &hole).unwrap(), before);
}

#[test]
fn our_saves_read_back_with_stock() {
    let dir = tempdir();
    let (image, hole) = image_with_hole(dir.path(), "a.img");
    let file = open(&image);
    let mut meta = LuksMeta::init(&file, &hole).unwrap();
    stock_ok(&image, &["test"], b"");
    let (a, b) = (blob(100, 3), blob(4097, 4));
    meta.save(&file, 3, CLEVIS_UUID, &a).unwrap();
    meta.save(&file, 0, OTHER_UUID, &b).unwrap();

    let show = String::from_utf8(stock_ok(&image, &["show"], b"")).unwrap();
    let expected: String = (0..8)
        .map(|slot| {
            let status = if slot == 0 { "active" } else { "inactive" };
            let content = match slot {
                0 => uuid_text(&OTHER_UUID),
                3 => uuid_text(&CLEVIS_UUID),
                _ => "empty".into(),
            };
            format!("{slot} {status:>8} {content}\n")
        })
        .collect();
    assert_eq!(show, expected);
    let clevis = uuid_text(&CLEVIS_UUID);
    assert_eq!(
        stock_ok(&image, &["load", "-s", "3", "-u", &clevis], b""),
        a
    );
    assert_eq!(stock_ok(&image, &["load", "-s", "0"], b""), b);
    // A slot in use is refused, and so is the uuid that marks a free slot.
    assert!(luksmeta_error(meta.save(&file, 3, CLEVIS_UUID, b"x")).contains("in use"));
    assert!(meta.save(&file, 4, [0; 16], b"x").is_err());
    assert!(meta.save(&file, 8, CLEVIS_UUID, b"x").is_err());
    // Stock luksmeta saves after ours, where our placement says it goes.
    stock_ok(&image, &["save", "-s", "6", "-u", &clevis], &a);
    let meta = read(&file, &hole);
    assert_eq!(meta.load(&file, 6).unwrap(), Some((CLEVIS_UUID, a)));
}

#[test]
fn wipes_either_way_are_seen_by_the_other() {
    let dir = tempdir();
    let (image, hole) = image_with_hole(dir.path(), "a.img");
    let file = open(&image);
    stock_ok(&image, &["init", "-f"], b"");
    let clevis = uuid_text(&CLEVIS_UUID);
    stock_ok(&image, &["save", "-s", "2", "-u", &clevis], &blob(5000, 5));
    stock_ok(&image, &["save", "-s", "4", "-u", &clevis], &blob(700, 6));

    let mut meta = read(&file, &hole);
    meta.wipe(&file, 2).unwrap();
    assert!(luksmeta_error(meta.wipe(&file, 2)).contains("already empty"));
    let show = String::from_utf8(stock_ok(&image, &["show", "-s", "2"], b"")).unwrap();
    assert_eq!(show, "");
    assert!(!stock(&image, &["load", "-s", "2"], b"").status.success());
    // The data is zeroed: only slot 4's 700 bytes (after slot 2's two blocks) remain.
    let hole_bytes = luksmeta::read_hole(&file, &hole).unwrap();
    assert!(hole_bytes[4096..12288].iter().all(|&b| b == 0));
    assert_eq!(&hole_bytes[12288..12288 + 700], &blob(700, 6)[..]);
    assert!(hole_bytes[12288 + 700..].iter().all(|&b| b == 0));

    meta.save(&file, 1, CLEVIS_UUID, b"ours").unwrap();
    stock_ok(&image, &["wipe", "-f", "-s", "1"], b"");
    stock_ok(&image, &["wipe", "-f", "-s", "4", "-u", &clevis], b"");
    let meta = read(&file, &hole);
    assert!((0..8).all(|slot| meta.slot_uuid(slot).is_none()));
    let hole_bytes = luksmeta::read_hole(&file, &hole).unwrap();
    assert!(hole_bytes[4096..].iter().all(|&b| b == 0));
}

#[test]
fn same_steps_leave_byte_identical_holes() {
    let dir = tempdir();
    let (theirs, hole) = image_with_hole(dir.path(), "theirs.img");
    let (ours, our_hole) = image_with_hole(dir.path(), "ours.img");
    assert_eq!(hole, our_hole);
    let clevis = uuid_text(&CLEVIS_UUID);
    // No blob spans more than two blocks: with a longer one before a free block, stock
    // luksmeta would place a later blob inside it (see no_slot_is_placed_inside_another_ones_data).
    let steps: [(usize, Option<Vec<u8>>); 8] = [
        (1, Some(blob(2000, 7))),
        (2, Some(blob(8000, 8))),
        (0, Some(blob(100, 9))),
        (1, None),
        (4, Some(blob(3000, 10))),
        (0, None),
        (7, Some(blob(4096, 11))),
        (2, None),
    ];

    stock_ok(&theirs, &["init", "-f"], b"");
    for (slot, data) in &steps {
        let slot_text = slot.to_string();
        match data {
            Some(data) => stock_ok(&theirs, &["save", "-s", &slot_text, "-u", &clevis], data),
            None => stock_ok(&theirs, &["wipe", "-f", "-s", &slot_text], b""),
        };
    }
    let file = open(&ours);
    let mut meta = LuksMeta::init(&file, &hole).unwrap();
    for (slot, data) in &steps {
        match data {
            Some(data) => meta.save(&file, *slot, CLEVIS_UUID, data).unwrap(),
            None => meta.wipe(&file, *slot).unwrap(),
        }
    }

    let skip = format!("{0}:{0}", hole.start);
    let len = hole.len.to_string();
    let cmp = run("cmp", &["-i", &skip, "-n", &len, s(&theirs), s(&ours)], b"");
    assert!(
        cmp.status.success(),
        "holes differ: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    // And not because both are empty.
    assert_eq!(read(&file, &hole).slot_uuid(4), Some(CLEVIS_UUID));
}

#[test]
fn data_that_does_not_fit_is_refused_and_nothing_is_written() {
    let dir = tempdir();
    let (image, hole) = image_with_hole(dir.path(), "a.img");
    let file = open(&image);
    let mut meta = LuksMeta::init(&file, &hole).unwrap();
    let room = (hole.len - 4096) as usize;
    let payload_start = hole.start + hole.len;
    let mut payload = vec![0u8; 4096];
    file.read_exact_at(&mut payload, payload_start).unwrap();

    let refuse = |meta: &mut LuksMeta, slot: usize, len: usize| {
        let before = luksmeta::read_hole(&file, &hole).unwrap();
        let msg = luksmeta_error(meta.save(&file, slot, CLEVIS_UUID, &blob(len, 12)));
        assert!(msg.contains("no room in the LUKS1 metadata area"), "{msg}");
        assert_eq!(luksmeta::read_hole(&file, &hole).unwrap(), before);
        assert_eq!(read(&file, &hole), *meta);
    };
    refuse(&mut meta, 0, room + 1);
    meta.save(&file, 0, CLEVIS_UUID, b"small").unwrap();
    // Stock luksmeta would take this, writing its last block over the payload.
    refuse(&mut meta, 1, room);
    meta.save(&file, 1, CLEVIS_UUID, &blob(room - 4096, 13))
        .unwrap();
    refuse(&mut meta, 2, 1);
    meta.wipe(&file, 0).unwrap();
    meta.save(&file, 2, CLEVIS_UUID, &blob(4096, 14)).unwrap();

    let mut after = vec![0u8; 4096];
    file.read_exact_at(&mut after, payload_start).unwrap();
    assert_eq!(after, payload);
    assert_eq!(
        stock_ok(&image, &["load", "-s", "1"], b""),
        blob(room - 4096, 13)
    );
    assert_eq!(stock_ok(&image, &["load", "-s", "2"], b""), blob(4096, 14));
}

#[test]
fn no_slot_is_placed_inside_another_ones_data() {
    // Stock luksmeta places the second blob at offset 8192, inside the first one.
    let dir = tempdir();
    let (image, hole) = image_with_hole(dir.path(), "a.img");
    let file = open(&image);
    let mut meta = LuksMeta::init(&file, &hole).unwrap();
    meta.save(&file, 0, CLEVIS_UUID, &blob(20000, 15)).unwrap();
    meta.save(&file, 1, CLEVIS_UUID, b"small").unwrap();
    let clevis = uuid_text(&CLEVIS_UUID);
    assert_eq!(
        stock_ok(&image, &["load", "-s", "0", "-u", &clevis], b""),
        blob(20000, 15)
    );
    assert_eq!(stock_ok(&image, &["load", "-s", "1"], b""), b"small");
    let raw = luksmeta::read_hole(&file, &hole).unwrap();
    assert_eq!(&raw[16 + 32 + 16..16 + 32 + 20], &24576u32.to_be_bytes());
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Rewrites the header with `edit` applied and a correct checksum.
fn forge(file: &File, hole: &Hole, edit: impl FnOnce(&mut [u8; 272])) {
    let mut raw = [0u8; 272];
    file.read_exact_at(&mut raw, hole.start).unwrap();
    edit(&mut raw);
    raw[12..16].fill(0);
    let crc = CRC32C.checksum(&raw);
    raw[12..16].copy_from_slice(&crc.to_be_bytes());
    file.write_all_at(&raw, hole.start).unwrap();
}

#[test]
fn corrupt_metadata_is_reported_not_trusted() {
    let dir = tempdir();
    let (image, hole) = image_with_hole(dir.path(), "a.img");
    let file = open(&image);
    stock_ok(&image, &["init", "-f"], b"");
    let clevis = uuid_text(&CLEVIS_UUID);
    stock_ok(&image, &["save", "-s", "1", "-u", &clevis], &blob(3000, 16));
    let good = luksmeta::read_hole(&file, &hole).unwrap();
    let restore = || luksmeta::write_hole(&file, &hole, &good).unwrap();
    let slot1 = 16 + 32;

    // A flipped byte in the header: its checksum fails, for stock luksmeta too.
    file.write_all_at(&[good[slot1 + 3] ^ 1], hole.start + slot1 as u64 + 3)
        .unwrap();
    let msg = luksmeta_error(LuksMeta::read(&file, &hole));
    assert!(msg.contains("header checksum"), "{msg}");
    assert!(!stock(&image, &["show"], b"").status.success());
    restore();

    // A flipped byte in the data: the header reads, the slot does not load.
    file.write_all_at(&[good[4096 + 10] ^ 0x80], hole.start + 4096 + 10)
        .unwrap();
    let meta = read(&file, &hole);
    let msg = luksmeta_error(meta.load(&file, 1));
    assert!(msg.contains("slot 1: data checksum"), "{msg}");
    assert!(!stock(&image, &["load", "-s", "1"], b"").status.success());
    restore();

    let cases: [(&str, u32, u32); 5] = [
        ("ends past the metadata area", 0xffff_f000, 3000),
        ("ends past the metadata area", 4096, u32::MAX),
        ("ends past the metadata area", 24576, 4097),
        ("lies in the header block", 0, 3000),
        ("lies in the header block", 272, 3000),
    ];
    for (expect, offset, length) in cases {
        forge(&file, &hole, |raw| {
            raw[slot1 + 16..slot1 + 20].copy_from_slice(&offset.to_be_bytes());
            raw[slot1 + 20..slot1 + 24].copy_from_slice(&length.to_be_bytes());
        });
        let msg = luksmeta_error(LuksMeta::read(&file, &hole));
        assert!(
            msg.contains(expect),
            "offset {offset} length {length}: {msg}"
        );
        restore();
    }

    // An unknown version is refused, and init will not overwrite it.
    forge(&file, &hole, |raw| {
        raw[8..12].copy_from_slice(&2u32.to_be_bytes())
    });
    let msg = luksmeta_error(LuksMeta::read(&file, &hole));
    assert!(msg.contains("version 2 is not supported"), "{msg}");
    assert!(LuksMeta::init(&file, &hole).is_err());
    restore();

    // A corrupt header is replaced by init, as `luksmeta init` does.
    file.write_all_at(b"X", hole.start + 20).unwrap();
    assert!(LuksMeta::read(&file, &hole).is_err());
    let meta = LuksMeta::init(&file, &hole).unwrap();
    assert_eq!(meta.slot_uuid(1), None);
    stock_ok(&image, &["test"], b"");

    // No magic: not initialized.
    file.write_all_at(b"NOTMETA!", hole.start).unwrap();
    assert_eq!(LuksMeta::read(&file, &hole).unwrap(), None);
}

#[test]
fn random_headers_never_panic() {
    let dir = tempdir();
    let (image, hole) = image_with_hole(dir.path(), "a.img");
    let file = open(&image);
    LuksMeta::init(&file, &hole).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let noise: Vec<u8> = (0..256).map(|_| next() as u8).collect();
        let plausible = next() % 2 == 0;
        forge(&file, &hole, |raw| {
            raw[16..].copy_from_slice(&noise);
            if plausible {
                // Offsets and lengths inside the hole, so the header passes and loads run.
                for slot in 0..8 {
                    let at = 16 + slot * 32;
                    raw[at + 16..at + 18].fill(0);
                    raw[at + 18] = 0x10 * (1 + raw[at + 18] % 5);
                    raw[at + 20..at + 22].fill(0);
                    raw[at + 22] &= 0x0f;
                    if raw[at] % 3 == 0 {
                        raw[at..at + 16].fill(0);
                    }
                }
            }
        });
        match LuksMeta::read(&file, &hole) {
            Ok(Some(meta)) => {
                for slot in 0..8 {
                    let _ = meta.load(&file, slot);
                }
            }
            Ok(None) => panic!("the magic was kept"),
            Err(e) => assert!(!plausible, "{e}"),
        }
    }
}

#[test]
fn header_backup_leaves_out_the_hole_and_hole_bytes_bring_it_back() {
    let dir = tempdir();
    let (image, hole) = image_with_hole(dir.path(), "a.img");
    let file = open(&image);
    stock_ok(&image, &["init", "-f"], b"");
    let clevis = uuid_text(&CLEVIS_UUID);
    stock_ok(&image, &["save", "-s", "1", "-u", &clevis], b"binding");
    let saved = luksmeta::read_hole(&file, &hole).unwrap();
    let backup = dir.path().join("header.bak");
    run_ok(
        "cryptsetup",
        &[
            "luksHeaderBackup",
            s(&image),
            "--header-backup-file",
            s(&backup),
        ],
        b"",
    );
    // The backup ends where the hole starts.
    assert_eq!(std::fs::metadata(&backup).unwrap().len(), hole.start);

    // A new header on the same device wipes the hole; restoring the backup does not bring
    // the metadata back, the hole bytes do.
    drop(file);
    let image = luks1_image(dir.path(), "a.img");
    run_ok(
        "cryptsetup",
        &[
            "luksHeaderRestore",
            "--batch-mode",
            s(&image),
            "--header-backup-file",
            s(&backup),
        ],
        b"",
    );
    assert!(!stock(&image, &["test"], b"").status.success());
    let file = open(&image);
    assert_eq!(luksmeta::hole_of(&image).unwrap(), hole);
    assert!(luksmeta::write_hole(&file, &hole, &saved[1..]).is_err());
    luksmeta::write_hole(&file, &hole, &saved).unwrap();
    assert_eq!(stock_ok(&image, &["load", "-s", "1"], b""), b"binding");
    assert_eq!(
        read(&file, &hole).load(&file, 1).unwrap(),
        Some((CLEVIS_UUID, b"binding".to_vec()))
    );

    // nuke zeroes it all again.
    luksmeta::nuke(&file, &hole).unwrap();
    assert!(
        luksmeta::read_hole(&file, &hole)
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
}
