use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use nbde_proto::Jwe;
use nbde_unlock::bind;
use nbde_unlock::http::Timeouts;
use nbde_unlock::luks::Volume;
use nbde_unlock::pin::{self, Context};
use nbde_unlock::{Error, Result, tty};
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
    Bind(BindArgs),
    Unbind(UnbindArgs),
    List(ListArgs),
    Pass(PassArgs),
    Open(OpenArgs),
    Report(ReportArgs),
    Regen(RegenArgs),
    Boot(BootArgs),
    Agent(AgentArgs),
    Passfifo(PassfifoArgs),
}

#[derive(FromArgs)]
/// Standalone boot: open every LUKS2 device with a clevis binding, while a passphrase
/// typed on standard input races the network.
#[argh(subcommand, name = "boot")]
struct BootArgs {
    /// a device to open (default: every block device with a clevis binding)
    #[argh(option, short = 'd')]
    device: Vec<PathBuf>,
    /// do not read a passphrase from standard input
    #[argh(switch)]
    no_prompt: bool,
    /// seconds for each server request (default 10)
    #[argh(option, default = "10")]
    timeout: u64,
}

#[derive(FromArgs)]
/// systemd password agent: answer systemd-cryptsetup's requests for bound devices.
#[argh(subcommand, name = "agent")]
struct AgentArgs {
    /// seconds for each server request (default 10)
    #[argh(option, default = "10")]
    timeout: u64,
}

#[derive(FromArgs)]
/// initramfs-tools: feed cryptroot's askpass fifo for the bound crypttab entries.
#[argh(subcommand, name = "passfifo")]
struct PassfifoArgs {
    /// the initramfs crypttab (default /cryptroot/crypttab)
    #[argh(option, default = "PathBuf::from(\"/cryptroot/crypttab\")")]
    crypttab: PathBuf,
    /// seconds for each server request (default 10)
    #[argh(option, default = "10")]
    timeout: u64,
}

#[derive(FromArgs)]
/// Bind a LUKS2 volume to a pin: a new random key in a new keyslot, its JWE in a token.
#[argh(subcommand, name = "bind")]
struct BindArgs {
    /// the LUKS2 device or image
    #[argh(option, short = 'd')]
    device: PathBuf,
    /// the keyslot to use (default: the first free one)
    #[argh(option, short = 's')]
    slot: Option<u32>,
    /// file with an existing passphrase, or - for one line of standard input
    #[argh(option, short = 'k')]
    key: Option<String>,
    /// trust the advertisement without asking
    #[argh(switch, short = 'y')]
    yes: bool,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    timeout: u64,
    /// the pin: tang or sss
    #[argh(positional)]
    pin: String,
    /// the pin's JSON configuration
    #[argh(positional)]
    config: String,
}

#[derive(FromArgs)]
/// Remove a binding: its token and its keyslot (never the last keyslot).
#[argh(subcommand, name = "unbind")]
struct UnbindArgs {
    /// the LUKS2 device or image
    #[argh(option, short = 'd')]
    device: PathBuf,
    /// the bound keyslot
    #[argh(option, short = 's')]
    slot: u32,
    /// do not ask for confirmation
    #[argh(switch, short = 'f')]
    force: bool,
}

#[derive(FromArgs)]
/// List the bindings of a volume as `SLOT: PIN 'CONFIG'`.
#[argh(subcommand, name = "list")]
struct ListArgs {
    /// the LUKS2 device or image
    #[argh(option, short = 'd')]
    device: PathBuf,
}

#[derive(FromArgs)]
/// Print the passphrase a binding recovers.
#[argh(subcommand, name = "pass")]
struct PassArgs {
    /// the LUKS2 device or image
    #[argh(option, short = 'd')]
    device: PathBuf,
    /// the bound keyslot
    #[argh(option, short = 's')]
    slot: u32,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    timeout: u64,
}

#[derive(FromArgs)]
/// Recover a binding and activate the volume through its own keyslot.
#[argh(subcommand, name = "open")]
struct OpenArgs {
    /// the LUKS2 device or image
    #[argh(option, short = 'd')]
    device: PathBuf,
    /// the device-mapper name (default luks-UUID)
    #[argh(option, short = 'n')]
    name: Option<String>,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    timeout: u64,
}

#[derive(FromArgs)]
/// Check that each server still advertises the key a binding uses (exit 2 if not).
#[argh(subcommand, name = "report")]
struct ReportArgs {
    /// the LUKS2 device or image
    #[argh(option, short = 'd')]
    device: PathBuf,
    /// the bound keyslot
    #[argh(option, short = 's')]
    slot: u32,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    timeout: u64,
}

#[derive(FromArgs)]
/// Rebind a slot's config to the servers' current keys (a new slot replaces the old one).
#[argh(subcommand, name = "regen")]
struct RegenArgs {
    /// the LUKS2 device or image
    #[argh(option, short = 'd')]
    device: PathBuf,
    /// the bound keyslot
    #[argh(option, short = 's')]
    slot: u32,
    /// trust new advertisements without asking
    #[argh(switch, short = 'y')]
    yes: bool,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    timeout: u64,
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

fn context(timeout: u64, assume_yes: bool) -> Context {
    Context {
        timeouts: timeouts(timeout),
        assume_yes,
    }
}

/// The existing passphrase for bind: a whole key file, one line of standard input (`-`),
/// or a question on the terminal; as clevis luks bind reads it.
fn existing_key(source: Option<&str>) -> Result<Zeroizing<Vec<u8>>> {
    match source {
        Some("-") => {
            let mut line = Zeroizing::new(Vec::new());
            std::io::stdin()
                .lock()
                .take(MAX_STDIN)
                .read_until(b'\n', &mut line)
                .map_err(Error::io("reading the passphrase"))?;
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            Ok(line)
        }
        Some(path) => std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(Error::io(format!("key file {path}"))),
        None => tty::passphrase("Enter existing LUKS password: "),
    }
}

fn volume(path: &Path) -> Result<Volume> {
    Volume::open(path)
}

fn parse_config(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Config(format!("config is not JSON: {e}")))
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Bind(a) => {
            let config = parse_config(&a.config)?;
            let mut volume = volume(&a.device)?;
            let key = existing_key(a.key.as_deref())?;
            let slot = bind::bind(
                &mut volume,
                a.slot,
                &key,
                &a.pin,
                &config,
                &context(a.timeout, a.yes),
            )?;
            eprintln!(
                "nbde-unlock: bound keyslot {slot} of {}",
                a.device.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Unbind(a) => {
            let mut volume = volume(&a.device)?;
            if !a.force {
                let question = format!(
                    "Remove the binding of keyslot {} from {}? [ynYN] ",
                    a.slot,
                    a.device.display()
                );
                if !tty::confirm(&question, "confirm (use -f)")? {
                    return Err(Error::Config("not confirmed".into()));
                }
            }
            bind::unbind(&mut volume, a.slot)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List(a) => {
            let mut volume = volume(&a.device)?;
            let mut out = String::new();
            for line in bind::list(&mut volume) {
                out.push_str(&line);
                out.push('\n');
            }
            write_stdout(out.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pass(a) => {
            let mut volume = volume(&a.device)?;
            let key = bind::recover_slot_key(&mut volume, a.slot, &context(a.timeout, false))?;
            write_stdout(&key)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Open(a) => {
            let mut volume = volume(&a.device)?;
            let name = match a.name {
                Some(name) => name,
                None => format!("luks-{}", volume.uuid()?),
            };
            let slot = bind::open(&mut volume, &name, &context(a.timeout, false))?;
            eprintln!(
                "nbde-unlock: {} opened as {name} through keyslot {slot}",
                a.device.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(a) => {
            let mut volume = volume(&a.device)?;
            let statuses = bind::report(&mut volume, a.slot, &context(a.timeout, false))?;
            let mut out = String::new();
            let mut stale = false;
            for s in &statuses {
                let state = match &s.advertised {
                    Ok(true) => "advertised".to_owned(),
                    Ok(false) => {
                        stale = true;
                        "no longer advertised (rotated)".to_owned()
                    }
                    Err(e) => {
                        stale = true;
                        format!("unknown: {e}")
                    }
                };
                out.push_str(&format!("{}: {} key {}: {state}\n", a.slot, s.url, s.kid));
            }
            if stale {
                out.push_str(&format!(
                    "run: nbde-unlock regen -d {} -s {}\n",
                    a.device.display(),
                    a.slot
                ));
            }
            write_stdout(out.as_bytes())?;
            Ok(if stale {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Boot(a) => {
            nbde_unlock::boot::standalone(a.device, &context(a.timeout, false), !a.no_prompt)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(a) => {
            nbde_unlock::boot::agent(&context(a.timeout, false))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Passfifo(a) => {
            nbde_unlock::boot::passfifo(&a.crypttab, &context(a.timeout, false))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Regen(a) => {
            let mut volume = volume(&a.device)?;
            let slot = bind::regen(&mut volume, a.slot, &context(a.timeout, a.yes))?;
            eprintln!(
                "nbde-unlock: keyslot {} rebound to current keys as keyslot {slot}",
                a.slot
            );
            Ok(ExitCode::SUCCESS)
        }
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
            write_stdout(out.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Decrypt(a) => {
            let input = read_stdin("JWE")?;
            if input.iter().all(u8::is_ascii_whitespace) {
                return Err(Error::Config("no JWE on standard input".into()));
            }
            let text = std::str::from_utf8(&input)
                .map_err(|_| Error::Config("JWE on standard input is not text".into()))?;
            let jwe = Jwe::parse(text).map_err(Error::proto("JWE"))?;
            let ctx = Context {
                timeouts: timeouts(a.timeout),
                assume_yes: false,
            };
            let plaintext = pin::decrypt(&jwe, &ctx)?;
            write_stdout(&plaintext)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
