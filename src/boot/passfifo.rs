//! initramfs-tools: feeds cryptroot's askpass fifo with recovered keys, while askpass
//! keeps the console prompt.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::{bindings, block_devices, mapper_exists, recover_until, status};
use crate::error::Result;
use crate::luks::Volume;
use crate::pin::Context;

const PASSFIFO: &str = "/lib/cryptsetup/passfifo";

/// Where a crypttab entry's volume is.
#[derive(Debug, PartialEq)]
enum Source {
    /// A device path.
    Path(PathBuf),
    /// `UUID=`: the LUKS volume with this UUID.
    Uuid(String),
    /// `LABEL=`, `PARTUUID=`, `PARTLABEL=`: udev's link for it.
    Link(PathBuf),
}

impl Source {
    fn parse(field: &str) -> Source {
        let link = |dir: &str, value: &str| Source::Link(Path::new(dir).join(value));
        if let Some(uuid) = field.strip_prefix("UUID=") {
            Source::Uuid(uuid.to_owned())
        } else if let Some(label) = field.strip_prefix("LABEL=") {
            link("/dev/disk/by-label", label)
        } else if let Some(uuid) = field.strip_prefix("PARTUUID=") {
            link("/dev/disk/by-partuuid", uuid)
        } else if let Some(label) = field.strip_prefix("PARTLABEL=") {
            link("/dev/disk/by-partlabel", label)
        } else {
            Source::Path(PathBuf::from(field))
        }
    }

    /// How the console names it.
    fn display(&self) -> String {
        match self {
            Source::Path(path) | Source::Link(path) => path.display().to_string(),
            Source::Uuid(uuid) => format!("UUID={uuid}"),
        }
    }

    /// The device, if it is there. A UUID is looked for on every block device when udev's
    /// link for it is missing, as cryptroot itself finds it (with blkid, not the link):
    /// otherwise cryptroot asks for a volume this would wait for in vain.
    fn device(&self, block_devices: impl Fn() -> Vec<PathBuf>) -> Option<PathBuf> {
        match self {
            Source::Path(path) | Source::Link(path) => path.exists().then(|| path.clone()),
            Source::Uuid(uuid) => {
                let link = Path::new("/dev/disk/by-uuid").join(uuid);
                if link.exists() {
                    return Some(link);
                }
                block_devices().into_iter().find(|device| {
                    Volume::open(device)
                        .and_then(|mut volume| volume.uuid())
                        .is_ok_and(|found| found.eq_ignore_ascii_case(uuid))
                })
            }
        }
    }
}

/// The device of `source`, within 30 s: udev may still be settling.
fn wait_for_device(source: &Source) -> Option<PathBuf> {
    let appeared = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(device) = source.device(block_devices) {
            return Some(device);
        }
        if Instant::now() >= appeared {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One line of /cryptroot/crypttab: target name and source.
fn crypttab(path: &Path) -> Vec<(String, Source)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let name = fields.next()?.to_owned();
            Some((name, Source::parse(fields.next()?)))
        })
        .collect()
}

/// Feeds cryptroot: for each crypttab entry in order (cryptroot's own order) whose device
/// has a clevis binding, recover its key and write it into askpass's fifo when askpass
/// asks; the console prompt stays with askpass, and whichever answer comes first wins.
pub fn passfifo(crypttab_path: &Path, ctx: &Context) -> Result<()> {
    let stop = AtomicBool::new(false);
    let entries = crypttab(crypttab_path);
    if entries.is_empty() {
        status(&format!(
            "no device to unlock in {}",
            crypttab_path.display()
        ));
    }
    for (name, source) in entries {
        let label = format!("{} ({name})", source.display());
        status(&format!("{label}: unlocking"));
        let Some(device) = wait_for_device(&source) else {
            status(&format!("{label}: no such device: left to the prompt"));
            continue;
        };
        // Said on the console: otherwise the prompt waits with no word of why no key came.
        let mut volume = match Volume::open(&device) {
            Ok(volume) => volume,
            Err(e) => {
                status(&format!("{label}: left to the prompt: {e}"));
                continue;
            }
        };
        let found = bindings(&mut volume);
        if found.is_empty() {
            status(&format!(
                "{label}: no usable clevis binding: left to the prompt"
            ));
            continue;
        }
        while !mapper_exists(&name) {
            let Some((_, key)) = recover_until(&label, &found, ctx, &stop, None) else {
                break;
            };
            // Write only when askpass is listening, and only while the target is not open.
            while !Path::new(PASSFIFO).exists() && !mapper_exists(&name) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if mapper_exists(&name) {
                break;
            }
            if let Ok(mut fifo) = std::fs::OpenOptions::new().write(true).open(PASSFIFO) {
                let _ = fifo.write_all(&key);
            }
            let settle = Instant::now() + Duration::from_secs(10);
            while !mapper_exists(&name) && Instant::now() < settle {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if mapper_exists(&name) {
            status(&format!("{label}: opened"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cryptroot_crypttab() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crypttab");
        std::fs::write(
            &path,
            "# comment\ncryptroot UUID=1234 none luks,initramfs\nswap /dev/vdb none luks\n\
             home PARTUUID=ab-01 none luks\n",
        )
        .unwrap();
        assert_eq!(
            crypttab(&path),
            vec![
                ("cryptroot".to_owned(), Source::Uuid("1234".into())),
                ("swap".to_owned(), Source::Path("/dev/vdb".into())),
                (
                    "home".to_owned(),
                    Source::Link("/dev/disk/by-partuuid/ab-01".into())
                ),
            ]
        );
    }

    #[test]
    fn finds_a_uuid_on_the_block_devices_when_udev_has_no_link_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let other = testkit::luks_image(dir.path(), "other.img");
        let wanted = testkit::luks_image(dir.path(), "wanted.img");
        let plain = dir.path().join("plain.img");
        std::fs::write(&plain, vec![0u8; 1 << 20]).unwrap();
        let uuid = Volume::open(&wanted).unwrap().uuid().unwrap();
        let devices = || vec![plain.clone(), other.clone(), wanted.clone()];
        // blkid matches a UUID whatever its case, and so does cryptroot.
        let source = Source::parse(&format!("UUID={}", uuid.to_uppercase()));
        assert_eq!(source.device(devices), Some(wanted.clone()));
        assert_eq!(
            Source::parse("UUID=00000000-0000-4000-8000-000000000000").device(devices),
            None
        );
    }
}
