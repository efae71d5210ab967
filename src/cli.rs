use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use argh::FromArgs;
use nbde_proto::Jwe;
use nbde_unlock::http::Timeouts;
use nbde_unlock::pin::{self, Context};
use nbde_unlock::{Error, Result};
use serde_json::Value;
use zeroize::Zeroizing;

/// Largest plaintext or JWE read from standard input.
const MAX_STDIN: u64 = 16 << 20;

#[derive(FromArgs)]
/// Network-bound disk encryption: Clevis-compatible pins and LUKS2 unlock.
pub struct Args {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Encrypt(EncryptArgs),
    Decrypt(DecryptArgs),
}

#[derive(FromArgs)]
/// Encrypt standard input to a compact JWE on standard output, as `clevis encrypt`.
#[argh(subcommand, name = "encrypt")]
struct EncryptArgs {
    /// the pin: tang or sss
    #[argh(positional)]
    pin: String,
    /// the pin's JSON configuration
    #[argh(positional)]
    config: String,
    /// trust the advertisement without asking
    #[argh(switch, short = 'y')]
    yes: bool,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    timeout: u64,
}

#[derive(FromArgs)]
/// Decrypt a Clevis JWE from standard input to standard output, as `clevis decrypt`.
#[argh(subcommand, name = "decrypt")]
struct DecryptArgs {
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    timeout: u64,
}

fn timeouts(total_secs: u64) -> Timeouts {
    let total = Duration::from_secs(total_secs.max(1));
    Timeouts {
        connect: total.min(Timeouts::default().connect),
        total,
    }
}

fn read_stdin(what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut data = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut data)
        .map_err(Error::io(format!("reading {what}")))?;
    if data.len() as u64 > MAX_STDIN {
        return Err(Error::Config(format!(
            "{what} on standard input is over 16 MiB"
        )));
    }
    Ok(data)
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Error::io("writing standard output"))
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Encrypt(a) => {
            let config: Value = serde_json::from_str(&a.config)
                .map_err(|e| Error::Config(format!("config is not JSON: {e}")))?;
            let ctx = Context {
                timeouts: timeouts(a.timeout),
                assume_yes: a.yes,
            };
            let plaintext = read_stdin("plaintext")?;
            let jwe = pin::encrypt(&a.pin, &config, &plaintext, &ctx)?;
            let mut out = jwe.to_compact();
            if std::io::stdout().is_terminal() {
                out.push('\n');
            }
            write_stdout(out.as_bytes())
        }
        Command::Decrypt(a) => {
            let input = read_stdin("JWE")?;
            let text = std::str::from_utf8(&input)
                .map_err(|_| Error::Config("JWE on standard input is not text".into()))?;
            let jwe = Jwe::parse(text).map_err(Error::proto("JWE"))?;
            let ctx = Context {
                timeouts: timeouts(a.timeout),
                assume_yes: false,
            };
            let plaintext = pin::decrypt(&jwe, &ctx)?;
            write_stdout(&plaintext)
        }
    }
}
