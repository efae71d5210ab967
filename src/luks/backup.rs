//! A header backup taken before a change and restored if a later step fails. For LUKS1
//! the luksmeta area is saved too: libcryptsetup's LUKS1 header backup ends before it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{Format, Volume, luks_error, luks1};
use crate::error::{Error, Result};
use crate::private::{private_dir, scratch_base};

/// The header (and luksmeta area) as it was. The backup file is unlinked as soon as it is
/// written and kept only as an open file, so a process killed mid-change leaves no copy of
/// the header behind (libcryptsetup reads it back through `/proc/self/fd`).
pub struct HeaderBackup {
    file: File,
    /// Where the file still is, when `/proc` is not there to reach an unlinked one.
    kept: Option<(PathBuf, PathBuf)>,
    luksmeta_area: Option<Zeroizing<Vec<u8>>>,
}

impl HeaderBackup {
    pub fn take(volume: &mut Volume) -> Result<HeaderBackup> {
        let base = scratch_base();
        let dir = private_dir(&base, "nbde-unlock")?;
        let path = dir.join("header");
        let format = volume.format();
        let written = volume
            .device
            .backup_handle()
            .header_backup(Some(format.encryption_format()), &path)
            .map_err(luks_error("back up header"))
            .and_then(|()| File::open(&path).map_err(Error::io(path.display().to_string())));
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                // libcryptsetup reports any failed write as EIO: a file system it filled
                // up is named as such (looked at before the partial copy is removed).
                let e = if no_space_left(&dir) {
                    Error::Io {
                        what: format!("backing up the header into {}", base.display()),
                        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                    }
                } else {
                    e
                };
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        let kept = if Path::new("/proc/self/fd").is_dir() {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir(&dir);
            None
        } else {
            Some((dir, path))
        };
        let luksmeta_area = match format {
            Format::Luks1 => Some(luks1::read_area(volume)?),
            Format::Luks2 => None,
        };
        Ok(HeaderBackup {
            file,
            kept,
            luksmeta_area,
        })
    }

    /// Puts the header (and luksmeta area) back as they were when the backup was taken.
    pub fn restore(&self, volume: &mut Volume) -> Result<()> {
        let format = volume.format();
        volume
            .device
            .backup_handle()
            .header_restore(Some(format.encryption_format()), &self.path())
            .map_err(luks_error("restore header"))?;
        if let Some(area) = &self.luksmeta_area {
            luks1::write_area(volume, area)?;
        }
        Ok(())
    }
}

impl HeaderBackup {
    fn path(&self) -> PathBuf {
        match &self.kept {
            Some((_, path)) => path.clone(),
            None => PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd())),
        }
    }
}

impl Drop for HeaderBackup {
    fn drop(&mut self) {
        if let Some((dir, path)) = &self.kept {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Whether the file system holding `dir` has no block left for us.
fn no_space_left(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and outlives the call; `stats` is writable and
    // statvfs fills it completely when it returns 0, the only case it is read.
    unsafe {
        libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) == 0 && stats.assume_init().f_bavail == 0
    }
}
