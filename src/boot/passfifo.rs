//! initramfs-tools: feeds cryptroot's askpass fifo with recovered keys, while askpass
//! keeps the console prompt.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::{bindings, mapper_exists, recover_until, status};
use crate::error::Result;
use crate::luks::Volume;
use crate::pin::Context;

const PASSFIFO: &str = "/lib/cryptsetup/passfifo";

/// One line of /cryptroot/crypttab: target name and source device.
fn crypttab(path: &Path) -> Vec<(String, PathBuf)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let name = fields.next()?.to_owned();
            let source = fields.next()?;
            let device = if let Some(uuid) = source.strip_prefix("UUID=") {
                PathBuf::from(format!("/dev/disk/by-uuid/{uuid}"))
            } else if let Some(label) = source.strip_prefix("LABEL=") {
                PathBuf::from(format!("/dev/disk/by-label/{label}"))
            } else {
                PathBuf::from(source)
            };
            Some((name, device))
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
    for (name, device) in entries {
        let label = format!("{} ({name})", device.display());
        status(&format!("{label}: unlocking"));
        // udev may still be settling.
        let appeared = Instant::now() + Duration::from_secs(30);
        while !device.exists() && Instant::now() < appeared {
            std::thread::sleep(Duration::from_millis(100));
        }
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
            "# comment\ncryptroot UUID=1234 none luks,initramfs\nswap /dev/vdb none luks\n",
        )
        .unwrap();
        assert_eq!(
            crypttab(&path),
            vec![
                (
                    "cryptroot".to_owned(),
                    PathBuf::from("/dev/disk/by-uuid/1234")
                ),
                ("swap".to_owned(), PathBuf::from("/dev/vdb")),
            ]
        );
    }
}
