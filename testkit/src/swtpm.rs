//! A software TPM (Debian's swtpm) on loopback, with a throwaway state directory, as the
//! tpm2 pin's tests reach it: `TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=P`, the control
//! channel on P+1 (where the swtpm TCTI expects it).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Swtpm {
    pub port: u16,
    child: Child,
    _state: tempfile::TempDir,
}

/// Two consecutive free loopback ports (P for the TPM, P+1 for its control channel).
fn free_port_pair() -> u16 {
    for _ in 0..64 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}

impl Swtpm {
    /// Starts a fresh TPM (manufactured on first start: new seeds, PCRs at reset values).
    pub fn start() -> Swtpm {
        let state = crate::tempdir();
        for _ in 0..8 {
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2"])
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.path().display()))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run swtpm: {e} (the test command installs it)"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the port to someone else: try another pair
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
                {
                    return Swtpm {
                        port,
                        child,
                        _state: state,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start");
    }

    /// The TCTI for tpm2-tools, stock clevis and nbde-tpm2.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Runs `program args` against this TPM, with `stdin`.
    pub fn run(&self, program: &str, args: &[&str], stdin: &[u8]) -> Output {
        crate::run_with_env(program, args, stdin, &[("TPM2TOOLS_TCTI", &self.tcti())])
    }

    /// Extends PCR `pcr` of the sha1 and sha256 banks, as a changed boot component would.
    pub fn extend(&self, pcr: u8) {
        let sha1 = "ab".repeat(20);
        let sha256 = "cd".repeat(32);
        let spec = format!("{pcr}:sha1={sha1},sha256={sha256}");
        let out = self.run("tpm2_pcrextend", &[&spec], b"");
        assert!(
            out.status.success(),
            "tpm2_pcrextend: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
