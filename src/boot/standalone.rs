//! Standalone boot, for hand-built images: every LUKS device with a clevis binding is
//! opened through the network while a passphrase typed on the console races it; a
//! sovereign one only through the console.

use std::io::BufRead;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use libcryptsetup_rs::consts::flags::CryptActivate;
use zeroize::Zeroizing;

use super::{bindings, block_devices, mapper_exists, recover_until, status};
use crate::error::{Error, Result};
use crate::luks::Volume;
use crate::pin::Context;
use crate::tty::EchoOff;

enum Opened {
    Network { device: PathBuf, slot: u32 },
    Passphrase { device: PathBuf },
}

/// Opens every LUKS2 device that has a clevis binding (or the `devices` given), racing
/// the network against a passphrase typed on standard input. A sovereign volume is only
/// asked for on standard input, at once.
pub fn standalone(devices: Vec<PathBuf>, ctx: &Context, prompt: bool) -> Result<()> {
    let candidates = if devices.is_empty() {
        block_devices()
    } else {
        devices
    };
    let mut pending: Vec<(PathBuf, String)> = Vec::new();
    let mut by_network: Vec<(PathBuf, String)> = Vec::new();
    for device in candidates {
        let Ok(mut volume) = Volume::open(&device) else {
            continue;
        };
        // A sovereign volume is asked for on the console only, at once.
        let networked = !bindings(&mut volume).is_empty();
        let asked_on_console = prompt && volume.marker().is_some();
        if !networked && !asked_on_console {
            continue;
        }
        let name = format!("luks-{}", volume.uuid()?);
        if mapper_exists(&name) {
            continue;
        }
        status(&format!("{}: unlocking as {name}", device.display()));
        if networked {
            by_network.push((device.clone(), name.clone()));
        }
        pending.push((device, name));
    }
    if pending.is_empty() {
        status("no LUKS2 device with a clevis binding");
        return Ok(());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (events, opened) = mpsc::channel();
    let networked = !by_network.is_empty();
    for (device, name) in by_network {
        let events = events.clone();
        let stop = stop.clone();
        let ctx = *ctx;
        std::thread::spawn(move || {
            let Ok(mut volume) = Volume::open(&device) else {
                return;
            };
            let found = bindings(&mut volume);
            let label = device.display().to_string();
            while let Some((slots, key)) = recover_until(&label, &found, &ctx, &stop, None) {
                for slot in slots {
                    if volume
                        .activate(&name, Some(slot), &key, CryptActivate::empty())
                        .is_ok()
                    {
                        let _ = events.send(Opened::Network { device, slot });
                        return;
                    }
                }
                if mapper_exists(&name) {
                    return;
                }
                status(&format!("{label}: recovered key does not open its keyslot"));
            }
        });
    }
    // Echo stays off on the console for as long as the race runs, and comes back however
    // it ends: the prompt may still be blocked in a read when the network wins.
    let stdin = std::io::stdin();
    let _quiet = prompt.then(|| EchoOff::new(stdin.as_fd()));
    if prompt {
        let events = events.clone();
        let waiting = Arc::new(Mutex::new(pending.clone()));
        std::thread::spawn(move || console_prompt(&waiting, &events, networked));
    }
    drop(events);

    let mut remaining: Vec<PathBuf> = pending.into_iter().map(|(d, _)| d).collect();
    while !remaining.is_empty() {
        let Ok(event) = opened.recv() else { break };
        let device = match event {
            Opened::Network { device, slot } => {
                status(&format!(
                    "{}: keyslot {slot} opened through the network",
                    device.display()
                ));
                device
            }
            Opened::Passphrase { device } => {
                status(&format!(
                    "{}: opened with the typed passphrase",
                    device.display()
                ));
                device
            }
        };
        remaining.retain(|d| *d != device);
    }
    stop.store(true, Ordering::SeqCst);
    if remaining.is_empty() {
        Ok(())
    } else {
        Err(Error::Config("some devices stayed locked".into()))
    }
}

/// Reads passphrases from standard input (echo is off: `standalone` holds the guard) and
/// tries each on the devices still locked, in any keyslot, as a person at the console
/// expects.
fn console_prompt(
    waiting: &Mutex<Vec<(PathBuf, String)>>,
    events: &mpsc::Sender<Opened>,
    networked: bool,
) {
    let stdin = std::io::stdin();
    loop {
        let names: Vec<String> = match waiting.lock() {
            Ok(w) => w.iter().map(|(d, _)| d.display().to_string()).collect(),
            Err(_) => return,
        };
        if names.is_empty() {
            break;
        }
        let or_wait = if networked {
            " (or wait for the network)"
        } else {
            ""
        };
        eprint!("Passphrase for {}{or_wait}: ", names.join(", "));
        let mut line = Zeroizing::new(String::new());
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let passphrase = line.trim_end_matches(['\n', '\r']);
        let Ok(mut list) = waiting.lock() else { return };
        let mut opened_any = false;
        list.retain(|(device, name)| {
            if mapper_exists(name) {
                return false;
            }
            let opened = Volume::open(device)
                .and_then(|mut v| {
                    v.activate(name, None, passphrase.as_bytes(), CryptActivate::empty())
                })
                .is_ok();
            if opened {
                opened_any = true;
                let _ = events.send(Opened::Passphrase {
                    device: device.clone(),
                });
            }
            !opened
        });
        if !opened_any {
            eprintln!("nbde-unlock: wrong passphrase");
        }
    }
}
