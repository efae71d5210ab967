//! The `luks` verbs, with clevis's prompts, messages on standard error and exit codes:
//! 0 done (or declined at a prompt), 1 failed or keys rotated (report), 2 usage.

use std::io::{BufRead, IsTerminal, Read};
use std::process::ExitCode;

use libcryptsetup_rs::consts::flags::CryptActivate;
use nbde_unlock::bind::{self, BindRequest};
use nbde_unlock::luks::{Format, Volume};
use nbde_unlock::private::private_dir;
use nbde_unlock::{Error, Result, inspect, pin, tty};
use serde_json::Value;
use zeroize::Zeroizing;

use super::args::{
    BindArgs, EditArgs, ListArgs, PassArgs, RegenArgs, ReportArgs, UnbindArgs, UnlockArgs,
};
use super::{MAX_STDIN, context, parse_config, write_stdout};

/// Where an existing passphrase comes from, as clevis's `-k` reads it.
pub(super) enum KeySource<'a> {
    /// `-k FILE`: the whole file, binary or not (cryptsetup's --key-file).
    File(&'a str),
    /// `-k -`: one line of standard input.
    StdinLine,
    /// No `-k`: asked on the terminal if standard input is one, else one line of it.
    Ask,
}

impl<'a> KeySource<'a> {
    pub(super) fn from_option(key: Option<&'a str>) -> KeySource<'a> {
        match key {
            Some("-") => KeySource::StdinLine,
            Some(path) => KeySource::File(path),
            None => KeySource::Ask,
        }
    }

    fn read(&self) -> Result<Zeroizing<Vec<u8>>> {
        self.read_asking("Enter existing LUKS password: ")
    }

    /// Reads the key, asking with `prompt` on a terminal.
    pub(super) fn read_asking(&self, prompt: &str) -> Result<Zeroizing<Vec<u8>>> {
        match self {
            KeySource::File(path) => std::fs::read(path)
                .map(Zeroizing::new)
                .map_err(Error::io(format!("key file {path}"))),
            KeySource::Ask if std::io::stdin().is_terminal() => tty::passphrase(prompt),
            KeySource::Ask | KeySource::StdinLine => stdin_line(),
        }
    }
}

/// One line of standard input without its newline (as `IFS= read -r` reads it).
fn stdin_line() -> Result<Zeroizing<Vec<u8>>> {
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

fn usage(message: &str) -> Result<ExitCode> {
    eprintln!("{message}");
    Ok(ExitCode::from(2))
}

pub fn bind(a: BindArgs) -> Result<ExitCode> {
    let config = parse_config(&a.config)?;
    if a.existing_token.is_some() && a.key.as_deref().is_some_and(|k| k != "-") {
        return Err(Error::Config(
            "an existing token (-e) and a key file (-k) cannot be used together".into(),
        ));
    }
    let mut volume = Volume::open(&a.device)?;
    // Binding does not lift the marker; `mode managed+user` does, with the user key.
    volume.refuse_if_sovereign()?;
    if a.token.is_some() && volume.format() == Format::Luks1 {
        return Err(Error::Config(format!(
            "{} is a LUKS1 device; -t is only supported in LUKS2",
            a.device.display()
        )));
    }
    let source = KeySource::from_option(a.key.as_deref());
    if volume.needs_luksmeta()? {
        let force = a.force || a.yes;
        if !force && matches!(source, KeySource::StdinLine) {
            return usage("Cannot use '-k-' without '-f' or '-y' unless already initialized!");
        }
        let question = format!(
            "{} has no luksmeta header for LUKS1 bindings. Do you wish to initialize it? [yn] ",
            a.device.display()
        );
        if !force && !tty::confirm(&question, "confirm luksmeta initialization (use -f)")? {
            return Ok(ExitCode::SUCCESS);
        }
        volume.initialize_luksmeta()?;
    }
    let existing = match a.existing_token {
        Some(token) => volume.token_passphrase(token)?,
        None => source.read()?,
    };
    let request = BindRequest {
        slot: a.slot,
        token: a.token,
        pin: &a.pin,
        config: &config,
    };
    let slot = bind::bind(&mut volume, &request, &existing, &context(a.timeout, a.yes))?;
    eprintln!("bound keyslot {slot} of {}", a.device.display());
    Ok(ExitCode::SUCCESS)
}

pub fn unbind(a: UnbindArgs) -> Result<ExitCode> {
    let mut volume = Volume::open(&a.device)?;
    volume.binding(a.slot)?;
    if !a.force {
        let question = format!(
            "The unbind operation will wipe a slot. This operation is unrecoverable.\n\
             Do you wish to erase LUKS slot {} on {}? [ynYN] ",
            a.slot,
            a.device.display()
        );
        if !tty::confirm(&question, "confirm (use -f)")? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    bind::unbind(&mut volume, a.slot)?;
    Ok(ExitCode::SUCCESS)
}

fn require_luksmeta(volume: &mut Volume) -> Result<()> {
    if volume.needs_luksmeta()? {
        return Err(Error::Config(format!(
            "{} is a LUKS1 device without luksmeta header: it has no clevis bindings",
            volume.path().display()
        )));
    }
    Ok(())
}

pub fn list(a: ListArgs) -> Result<ExitCode> {
    let mut volume = Volume::open(&a.device)?;
    require_luksmeta(&mut volume)?;
    let mut out = String::new();
    for line in inspect::list(&mut volume, a.slot)? {
        out.push_str(&line);
        out.push('\n');
    }
    write_stdout(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

pub fn pass(a: PassArgs) -> Result<ExitCode> {
    let mut volume = Volume::open(&a.device)?;
    let key = bind::recover_slot_key(&mut volume, a.slot, &context(a.timeout, false))?;
    write_stdout(&key)?;
    Ok(ExitCode::SUCCESS)
}

pub fn report(a: ReportArgs) -> Result<ExitCode> {
    let mut volume = Volume::open(&a.device)?;
    let rotations =
        inspect::report(&mut volume, a.slot, &context(a.timeout, false)).map_err(|e| {
            Error::Config(format!(
                "unable to verify whether there are rotated keys: {e}"
            ))
        })?;
    let missing: Vec<&String> = rotations.iter().flat_map(|r| &r.missing).collect();
    if missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::from(
        "The following keys are not in the current advertisement and were probably rotated:\n",
    );
    for thp in missing {
        out.push_str(&format!("  {thp}\n"));
    }
    write_stdout(out.as_bytes())?;
    let command = format!("regen -q -d {} -s {}", a.device.display(), a.slot);
    let regen = a.regen
        || (!a.quiet
            && std::io::stdin().is_terminal()
            && tty::confirm(
                &format!("Do you want to regenerate the binding with \"{command}\"? [ynYN] "),
                "ask",
            )?);
    if !regen {
        return Ok(ExitCode::FAILURE);
    }
    drop(volume);
    self::regen(RegenArgs {
        device: a.device,
        slot: a.slot,
        quiet: true,
        yes: false,
        key: None,
        timeout: a.timeout,
    })
}

pub fn regen(a: RegenArgs) -> Result<ExitCode> {
    let mut volume = Volume::open(&a.device)?;
    let clevis = pin::parse(volume.binding(a.slot)?.jwe.map_err(Error::Config)?)?;
    println!(
        "Regenerating binding (device {}, slot {}):\nPin: {}, Config: '{}'",
        a.device.display(),
        a.slot,
        clevis.name(),
        inspect::listed_config(&clevis)
    );
    if !a.quiet && !tty::confirm("Do you want to proceed? [ynYN] ", "confirm (use -q)")? {
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = context(a.timeout, a.yes);
    let source = KeySource::from_option(a.key.as_deref());
    let authorization = bind::authorize(&mut volume, &ctx, || source.read())?;
    let outcome = bind::regen(&mut volume, a.slot, &authorization, a.quiet || a.yes, &ctx)?;
    if outcome.trusted_anew {
        eprintln!(
            "The signing keys trusted at bind time no longer vouch for the servers' keys; \
             their current advertisements were trusted, as clevis regen does."
        );
    }
    eprintln!("Binding regenerated successfully");
    Ok(ExitCode::SUCCESS)
}

pub fn edit(a: EditArgs) -> Result<ExitCode> {
    let mut volume = Volume::open(&a.device)?;
    let clevis = pin::parse(volume.binding(a.slot)?.jwe.map_err(Error::Config)?)?;
    let pin_name = clevis.name().to_owned();
    let current: Value = serde_json::from_str(&inspect::listed_config(&clevis))
        .map_err(|e| Error::Config(format!("current config of keyslot {}: {e}", a.slot)))?;
    let new = match &a.config {
        Some(text) => parse_config(text)
            .map_err(|e| Error::Config(format!("invalid configuration given with -c: {e}")))?,
        None => match edit_in_editor(&pin_name, &current)? {
            Some(config) => config,
            None => return Ok(ExitCode::SUCCESS),
        },
    };
    if new == current && !a.force {
        return Err(Error::Config("no changes detected; exiting".into()));
    }
    // clevis edits with -y: the new servers' advertisements are trusted as fetched.
    let ctx = context(a.timeout, true);
    let authorization = bind::authorize(&mut volume, &ctx, || KeySource::Ask.read())?;
    eprintln!("Updating binding...");
    bind::rebind(&mut volume, a.slot, &pin_name, &new, &authorization, &ctx)?;
    eprintln!("Binding edited successfully");
    Ok(ExitCode::SUCCESS)
}

/// The config edited in `$EDITOR` (default vi), re-edited while it is not a JSON object,
/// then confirmed; `None` if the user declines.
fn edit_in_editor(pin_name: &str, current: &Value) -> Result<Option<Value>> {
    let dir = private_dir(&std::env::temp_dir(), "nbde-edit")?;
    let file = dir.join("config.json");
    let pretty = serde_json::to_string_pretty(current).expect("JSON value serializes");
    std::fs::write(&file, pretty + "\n").map_err(Error::io(file.display().to_string()))?;
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
    let result = loop {
        let status = std::process::Command::new(&editor)
            .arg(&file)
            .status()
            .map_err(Error::io(format!(
                "running the editor {editor:?} (set EDITOR)"
            )))?;
        let text = std::fs::read_to_string(&file).map_err(Error::io(file.display().to_string()))?;
        match parse_config(&text) {
            Ok(config) if status.success() => break Some(config),
            _ => {
                let again = "Malformed configuration. Would you like to edit again? [ynYN] ";
                if !tty::confirm(again, "confirm")? {
                    break None;
                }
            }
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let Some(config) = result else {
        return Ok(None);
    };
    let pretty = serde_json::to_string_pretty(&config).expect("JSON value serializes");
    let question = format!(
        "Pin: {pin_name}\nNew config:\n{pretty}\nWould you like to proceed with the updated configuration? [ynYN] "
    );
    Ok(tty::confirm(&question, "confirm")?.then_some(config))
}

/// cryptsetup's spelling of the activation flags `-o` may carry.
fn activation_flags(options: Option<&str>) -> Result<CryptActivate> {
    let mut flags = CryptActivate::empty();
    for option in options
        .unwrap_or("")
        .split([' ', ','])
        .filter(|o| !o.is_empty())
    {
        flags |= match option {
            "--readonly" | "-r" | "readonly" | "read-only" => CryptActivate::READONLY,
            "--allow-discards" | "discard" => CryptActivate::ALLOW_DISCARDS,
            other => {
                return Err(Error::Config(format!(
                    "activation option {other:?} is not supported (--readonly, --allow-discards)"
                )));
            }
        };
    }
    Ok(flags)
}

pub fn unlock(a: UnlockArgs) -> Result<ExitCode> {
    let mut volume = Volume::open(&a.device)?;
    let ctx = context(a.timeout, false);
    if let Some(slot) = a.test_slot {
        bind::recover_slot_key(&mut volume, slot, &ctx)?;
        return Ok(ExitCode::SUCCESS);
    }
    let flags = activation_flags(a.options.as_deref())?;
    let name = match a.name {
        Some(name) => name,
        None => format!("luks-{}", volume.uuid()?),
    };
    let (slot, key) = bind::recover_any(&mut volume, &ctx)?;
    volume.activate(&name, Some(slot), &key, flags)?;
    eprintln!(
        "{} opened as {name} through keyslot {slot}",
        a.device.display()
    );
    Ok(ExitCode::SUCCESS)
}
