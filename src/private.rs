//! Randomness, private directories (for keys and copies of a header), and a process
//! that keeps its memory to itself.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Marks this process not dumpable: the kernel writes no core file of it, and other
/// processes of the same user can neither ptrace it nor read its memory through /proc
/// (keys and passphrases pass through it). A failure only loses that protection.
pub fn forbid_core_dumps() {
    // SAFETY: PR_SET_DUMPABLE takes no pointers and changes only this process's flag.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
}

/// Fills `buf` from the operating system's random number generator.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Config("random number generator failed".into()))
}

/// Where private copies of a header go: /run (tmpfs) where there is one, else the temp dir.
pub fn scratch_base() -> PathBuf {
    if Path::new("/run").is_dir() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    }
}

/// A new directory `base/PREFIX-RANDOM` that only its owner can enter.
pub fn private_dir(base: &Path, prefix: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut random = [0u8; 8];
    fill_random(&mut random)?;
    let dir = base.join(format!("{prefix}-{}", nbde_proto::b64::encode(&random)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(Error::io(format!("creating {}", dir.display())))?;
    Ok(dir)
}
