//! `nbde-tpm2 encrypt CONFIG < PLAINTEXT > JWE` and `nbde-tpm2 decrypt < JWE > PLAINTEXT`,
//! as clevis's tpm2 pin programs take them. Exit 0 on success, 75 when the TPM is absent
//! or busy (trying again may help), 1 otherwise, 2 on a usage error.

use std::io::{Read, Write};
use std::process::ExitCode;

use nbde_tpm2::{Config, Tpm2Error, error::EXIT_TRANSIENT};
use zeroize::Zeroizing;

const USAGE: &str =
    "usage: nbde-tpm2 encrypt CONFIG < PLAINTEXT > JWE\n       nbde-tpm2 decrypt < JWE > PLAINTEXT";
/// Larger input than any clevis JWE or LUKS key.
const MAX_INPUT: u64 = 1 << 20;

fn read_stdin() -> Result<Zeroizing<Vec<u8>>, Tpm2Error> {
    let mut input = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_INPUT + 1)
        .read_to_end(&mut input)
        .map_err(|e| Tpm2Error::Input(format!("reading stdin: {e}")))?;
    if input.len() as u64 > MAX_INPUT {
        return Err(Tpm2Error::Input("input larger than 1 MiB".into()));
    }
    Ok(input)
}

fn run(args: &[String]) -> Result<Zeroizing<Vec<u8>>, Tpm2Error> {
    match args {
        [verb, config] if verb == "encrypt" => {
            let config = Config::parse(config)?;
            let plaintext = read_stdin()?;
            let jwe = nbde_tpm2::encrypt(&config, &plaintext)?;
            Ok(Zeroizing::new(jwe.to_compact().into_bytes()))
        }
        [verb] if verb == "decrypt" => {
            let input = read_stdin()?;
            let text = std::str::from_utf8(&input)
                .map_err(|_| Tpm2Error::Input("the JWE is not text".into()))?;
            nbde_tpm2::decrypt(text)
        }
        _ => Err(Tpm2Error::Input(USAGE.into())),
    }
}

fn main() -> ExitCode {
    // The content key passes through this process's memory: no core file, no ptrace or
    // /proc/PID/mem reads by other processes of the same user. A failure only loses that.
    // SAFETY: PR_SET_DUMPABLE takes no pointers and changes only this process's flag.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if std::env::var_os("TSS2_LOG").is_none() {
        // SAFETY: no other thread exists yet. tpm2-tss would otherwise print its own
        // warnings beside ours; the error we print says what failed.
        unsafe { std::env::set_var("TSS2_LOG", "all+none") };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--summary") {
        println!("Seals a key in this machine's TPM 2.0 (the clevis tpm2 pin)");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(&output)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e @ Tpm2Error::Input(_)) if args.is_empty() => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("tpm2: {e}");
            if e.is_transient() {
                ExitCode::from(EXIT_TRANSIENT as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
