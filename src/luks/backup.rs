//! A header backup taken before a change and restored if a later step fails. For LUKS1
//! the luksmeta area is saved too: libcryptsetup's LUKS1 header backup ends before it.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{Format, Volume, luks_error, luks1};
use crate::error::{Error, Result};

/// The header (and luksmeta area) as it was, in a private directory removed when dropped.
pub struct HeaderBackup {
    dir: PathBuf,
    file: PathBuf,
    luksmeta_area: Option<Zeroizing<Vec<u8>>>,
}

impl HeaderBackup {
    pub fn take(volume: &mut Volume) -> Result<HeaderBackup> {
        use std::os::unix::fs::DirBuilderExt;
        let base = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let mut random = [0u8; 8];
        getrandom::fill(&mut random)
            .map_err(|_| Error::Config("random number generator failed".into()))?;
        let dir = base.join(format!("nbde-unlock-{}", nbde_proto::b64::encode(&random)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        let file = dir.join("header");
        let mut backup = HeaderBackup {
            dir,
            file,
            luksmeta_area: None,
        };
        let format = volume.format();
        volume
            .device
            .backup_handle()
            .header_backup(Some(format.encryption_format()), &backup.file)
            .map_err(luks_error("back up header"))?;
        if format == Format::Luks1 {
            backup.luksmeta_area = Some(luks1::read_area(volume)?);
        }
        Ok(backup)
    }

    /// Puts the header (and luksmeta area) back as they were when the backup was taken.
    pub fn restore(&self, volume: &mut Volume) -> Result<()> {
        let format = volume.format();
        volume
            .device
            .backup_handle()
            .header_restore(Some(format.encryption_format()), &self.file)
            .map_err(luks_error("restore header"))?;
        if let Some(area) = &self.luksmeta_area {
            luks1::write_area(volume, area)?;
        }
        Ok(())
    }
}

impl Drop for HeaderBackup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
