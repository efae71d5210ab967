//! Argument parsing and the verbs that are not about LUKS headers. Installed under the
//! name `clevis`, the binary takes clevis's command lines unchanged.

mod args;
mod luks;
mod mode;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use nbde_proto::Jwe;
use nbde_unlock::http::Timeouts;
use nbde_unlock::pin::{self, Context};
use nbde_unlock::{Error, Result};
use serde_json::Value;
use zeroize::Zeroizing;

use args::{Args, Command, LuksCommand, VALUE_OPTIONS};

/// Largest plaintext or JWE read from standard input.
const MAX_STDIN: u64 = 16 << 20;

/// Splits getopt clusters into one word per option, as clevis's getopts reads them:
/// `-k-` is `-k -`, `-qr` is `-q -r`, `-s1` is `-s 1`. Words after `--`, long options,
/// `-` and words that are not options pass through.
fn split_clusters(words: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = false;
    let mut value_next = false;
    for word in words {
        let plain = rest || value_next || word == "-" || !word.starts_with('-');
        if plain || word.starts_with("--") {
            rest |= !value_next && word == "--";
            value_next = false;
            out.push(word);
            continue;
        }
        let letters: Vec<char> = word[1..].chars().collect();
        for (i, letter) in letters.iter().enumerate() {
            out.push(format!("-{letter}"));
            if VALUE_OPTIONS.contains(*letter) {
                let value: String = letters[i + 1..].iter().collect();
                value_next = value.is_empty();
                if !value.is_empty() {
                    out.push(value);
                }
                break;
            }
        }
    }
    out
}

/// The name the binary was run as (`clevis` through a symlink), for messages.
pub fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|p| std::path::Path::new(p).file_name())
        .map_or("nbde-unlock".into(), |n| n.to_string_lossy().into_owned())
}

/// Parses the process's arguments; on `--help` or a usage error, the exit to take (usage
/// errors exit 2, as clevis's do).
pub fn parse() -> std::result::Result<Args, ExitCode> {
    let name = program_name();
    let words = split_clusters(std::env::args().skip(1));
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    Args::from_args(&[&name], &words).map_err(|early| {
        if early.status.is_ok() {
            print!("{}", early.output);
            ExitCode::SUCCESS
        } else {
            eprintln!("{}", early.output);
            ExitCode::from(2)
        }
    })
}

fn timeouts(total_secs: u64) -> Timeouts {
    let total = Duration::from_secs(total_secs.max(1));
    Timeouts {
        connect: total.min(Timeouts::default().connect),
        total,
    }
}

fn context(timeout: u64, assume_yes: bool) -> Context {
    Context {
        timeouts: timeouts(timeout),
        assume_yes,
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

/// A pin config: a JSON object, as clevis requires.
fn parse_config(text: &str) -> Result<Value> {
    match serde_json::from_str(text) {
        Ok(config @ Value::Object(_)) => Ok(config),
        Ok(_) => Err(Error::Config("config must be a JSON object".into())),
        Err(e) => Err(Error::Config(format!("config is not JSON: {e}"))),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Encrypt(a) => encrypt(a),
        Command::Decrypt(a) => decrypt(a),
        Command::Luks(luks) => match luks.command {
            LuksCommand::Bind(a) => luks::bind(a),
            LuksCommand::Unbind(a) => luks::unbind(a),
            LuksCommand::List(a) => luks::list(a),
            LuksCommand::Pass(a) => luks::pass(a),
            LuksCommand::Report(a) => luks::report(a),
            LuksCommand::Regen(a) => luks::regen(a),
            LuksCommand::Edit(a) => luks::edit(a),
            LuksCommand::Unlock(a) => luks::unlock(a),
        },
        Command::Bind(a) => luks::bind(a),
        Command::Unbind(a) => luks::unbind(a),
        Command::List(a) => luks::list(a),
        Command::Pass(a) => luks::pass(a),
        Command::Open(a) => luks::unlock(a.into()),
        Command::Report(a) => luks::report(a),
        Command::Regen(a) => luks::regen(a),
        Command::Edit(a) => luks::edit(a),
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
        Command::NeedsNetwork(a) => Ok(needs(
            "needs-network",
            &a.device,
            nbde_unlock::boot::needs_network,
        )),
        Command::NeedsTpm2(a) => Ok(needs(
            "needs-tpm2",
            &a.device,
            nbde_unlock::boot::needs_tpm2,
        )),
        Command::Mode(a) => mode::mode(a),
        Command::Header(a) => mode::header(a),
    }
}

/// Answers by exit code alone: 0 yes, 1 no, 2 no answer (usage, or a device that cannot be
/// read); the reason for a 2 goes to standard error.
fn needs(
    verb: &str,
    devices: &[std::path::PathBuf],
    answer: fn(&[std::path::PathBuf]) -> Result<bool>,
) -> ExitCode {
    if devices.is_empty() {
        eprintln!("{}: {verb}: give at least one -d DEVICE", program_name());
        return ExitCode::from(2);
    }
    match answer(devices) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{}: {verb}: {e}", program_name());
            ExitCode::from(2)
        }
    }
}

fn encrypt(a: args::EncryptArgs) -> Result<ExitCode> {
    let config = parse_config(&a.config)?;
    let plaintext = read_stdin("plaintext")?;
    let jwe = pin::encrypt(&a.pin, &config, &plaintext, &context(a.timeout, a.yes))?;
    let mut out = jwe.to_compact();
    if std::io::stdout().is_terminal() {
        out.push('\n');
    }
    write_stdout(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn decrypt(a: args::DecryptArgs) -> Result<ExitCode> {
    let input = read_stdin("JWE")?;
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Config("no JWE on standard input".into()));
    }
    let text = std::str::from_utf8(&input)
        .map_err(|_| Error::Config("JWE on standard input is not text".into()))?;
    let jwe = Jwe::parse(text).map_err(Error::proto("JWE"))?;
    let plaintext = pin::decrypt(&jwe, &context(a.timeout, false))?;
    write_stdout(&plaintext)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::split_clusters;

    fn split(words: &[&str]) -> Vec<String> {
        split_clusters(words.iter().map(|w| w.to_string()))
    }

    #[test]
    fn getopt_clusters_split_as_clevis_reads_them() {
        assert_eq!(split(&["-k-", "-d", "x"]), ["-k", "-", "-d", "x"]);
        assert_eq!(split(&["-qr", "-s1"]), ["-q", "-r", "-s", "1"]);
        assert_eq!(split(&["-fd/dev/x"]), ["-f", "-d", "/dev/x"]);
        assert_eq!(
            split(&["-k", "-", "tang", "{\"url\":\"-x\"}"]),
            ["-k", "-", "tang", "{\"url\":\"-x\"}"]
        );
        assert_eq!(
            split(&["--timeout", "3", "--", "-y"]),
            ["--timeout", "3", "--", "-y"]
        );
        assert_eq!(split(&["-d", "-odd-name", "-y"]), ["-d", "-odd-name", "-y"]);
    }
}
