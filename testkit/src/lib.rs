//! Test harness: stock tangd behind a loopback listener (as socat runs it), hostile
//! servers, and runners for stock clevis and our binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod dumpable;
mod kill;
mod listener;
mod nbde_server;
mod postgres;
pub mod sealed_keys;
mod swtpm;
pub use kill::{WRITE_CALLS, kill_at_every_write, kill_at_every_write_in_lanes, run_killed_at};
pub use listener::{Listener, start_fixed_server, start_tangd, start_tangd_at};
pub use nbde_server::NbdeServer;
pub use postgres::Postgres;
pub use swtpm::Swtpm;

pub const TANGD: &str = "/usr/libexec/tangd";
pub const TANGD_KEYGEN: &str = "/usr/libexec/tangd-keygen";
pub const TANGD_ROTATE: &str = "/usr/libexec/tangd-rotate-keys";

/// A binary of this workspace, next to the running test (`target/<profile>/NAME`);
/// `cargo test --workspace` builds every package's binaries before running any test.
pub fn bin(name: &str) -> String {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run cargo test --workspace",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

pub fn nbde_unlock() -> String {
    bin("nbde-unlock")
}

/// Runs `program args…` with `stdin`, returning its output. Fails the test if it cannot start.
pub fn run(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    run_with_env(program, args, stdin, &[])
}

/// `run` with variables added to the environment.
pub fn run_with_env(program: &str, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (the test command installs it)"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Runs and requires success; returns stdout.
pub fn run_ok(program: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = run(program, args, stdin);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn clevis_encrypt(pin: &str, config: &str, plaintext: &[u8]) -> String {
    String::from_utf8(run_ok("clevis", &["encrypt", pin, config, "-y"], plaintext)).unwrap()
}

pub fn clevis_decrypt(jwe: &str) -> Output {
    run("clevis", &["decrypt"], jwe.as_bytes())
}

pub fn ours_encrypt(pin: &str, config: &str, plaintext: &[u8]) -> String {
    String::from_utf8(run_ok(
        &nbde_unlock(),
        &["encrypt", pin, config, "-y"],
        plaintext,
    ))
    .unwrap()
}

pub fn ours_decrypt(jwe: &str) -> Output {
    run(
        &nbde_unlock(),
        &["decrypt", "--timeout", "5"],
        jwe.as_bytes(),
    )
}

/// Makes a tangd key directory with one signing and one exchange key on `crv`.
/// P-521 uses stock `tangd-keygen`; the others use `jose jwk gen` as an operator would.
pub fn tang_keys(dir: &Path, crv: &str) {
    if crv == "P-521" {
        run_ok(TANGD_KEYGEN, &[dir.to_str().unwrap()], b"");
        return;
    }
    let sig_alg = match crv {
        "P-256" => "ES256",
        "P-384" => "ES384",
        other => panic!("no signing alg for {other}"),
    };
    add_key(dir, &format!(r#"{{"alg":"{sig_alg}"}}"#));
    add_key(dir, &format!(r#"{{"alg":"ECMR","crv":"{crv}"}}"#));
}

/// Generates a key with `jose jwk gen -i TEMPLATE` into `dir/<S256 thp>.jwk`.
pub fn add_key(dir: &Path, template: &str) {
    let jwk = run_ok("jose", &["jwk", "gen", "-i", template], b"");
    let thp = run_ok("jose", &["jwk", "thp", "-i-", "-a", "S256"], &jwk);
    let name = format!("{}.jwk", String::from_utf8(thp).unwrap().trim());
    std::fs::write(dir.join(name), jwk).unwrap();
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The passphrase of the images `luks_image` makes.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// A 32 MiB LUKS2 image file with `PASSPHRASE` in keyslot 0 (cheap PBKDF2, as test slots
/// should be; Argon2 is measured in the bench, not paid in every test).
pub fn luks_image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let keyfile = dir.join(format!("{name}.pass"));
    std::fs::write(&keyfile, PASSPHRASE).unwrap();
    run_ok(
        "cryptsetup",
        &[
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            path.to_str().unwrap(),
            keyfile.to_str().unwrap(),
        ],
        b"",
    );
    path
}

/// The key file holding `PASSPHRASE` next to an image made by `luks_image`.
pub fn passphrase_file(image: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pass", image.display()))
}

/// Whether `key` opens `image` (in `slot`, or any slot), as cryptsetup checks it.
pub fn key_opens(image: &Path, slot: Option<u32>, key: &[u8]) -> bool {
    let mut args = vec!["open", "--test-passphrase", "--key-file", "-"];
    let slot_text = slot.map(|s| s.to_string());
    if let Some(s) = &slot_text {
        args.extend(["--key-slot", s]);
    }
    args.push(image.to_str().unwrap());
    run("cryptsetup", &args, key).status.success()
}

/// `cryptsetup luksDump --dump-json-metadata`: the header as JSON.
pub fn luks_json(image: &Path) -> serde_json::Value {
    let out = run_ok(
        "cryptsetup",
        &["luksDump", "--dump-json-metadata", image.to_str().unwrap()],
        b"",
    );
    serde_json::from_slice(&out).unwrap()
}

/// One raw `POST path` on a fresh connection to `addr` (`host:port`), with `headers`
/// (each ending in CRLF) added; returns the status. The reply is read by its
/// Content-Length, as tangd keeps the connection open after answering.
pub fn post_status(addr: &str, path: &str, body: &[u8], headers: &str) -> u16 {
    use std::io::BufRead;
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/jwk+json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut reply = vec![0u8; length];
    reader.read_exact(&mut reply).unwrap();
    status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Stock tangd on a fresh key directory with keys on `crv`; keep the directory to rotate
/// or add keys.
pub fn tang(crv: &str) -> (tempfile::TempDir, Listener) {
    let keys = tempdir();
    tang_keys(keys.path(), crv);
    let server = start_tangd(keys.path());
    (keys, server)
}

/// The S256 thumbprint of the signing key in a tangd key directory made by `tang_keys`
/// (key files are named by it).
pub fn signing_thp(keys: &Path) -> String {
    for entry in std::fs::read_dir(keys).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(thp) = name.strip_suffix(".jwk") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let jwk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(keys.join(&name)).unwrap()).unwrap();
        if jwk["alg"].as_str().is_some_and(|alg| alg.starts_with("ES")) {
            return thp.to_owned();
        }
    }
    panic!("no signing key in {}", keys.display());
}

/// A 64 MiB LUKS1 image with `PASSPHRASE` in keyslot 0 (cheap PBKDF2, 512-bit key). Its
/// keyslots end at byte 2066432 and its payload starts at 2 MiB: a luksmeta hole of 7
/// blocks from byte 2068480.
pub fn luks1_image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let keyfile = dir.join(format!("{name}.pass"));
    std::fs::write(&keyfile, PASSPHRASE).unwrap();
    run_ok(
        "cryptsetup",
        &[
            "luksFormat",
            "--type",
            "luks1",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-size",
            "512",
            "--batch-mode",
            path.to_str().unwrap(),
            keyfile.to_str().unwrap(),
        ],
        b"",
    );
    path
}

/// Requires `out` to be a success; returns its standard output as text.
/// A path as the `&str` a command line takes (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// `nbde-unlock ARGS` with `stdin`.
pub fn ours_with(args: &[&str], stdin: &[u8]) -> Output {
    run(&nbde_unlock(), args, stdin)
}

/// Stock `clevis ARGS`.
pub fn stock_clevis(args: &[&str]) -> Output {
    run("clevis", args, b"")
}

/// Stock `clevis luks pass` of `slot`, which must succeed.
pub fn stock_pass(image: &Path, slot: u32) -> Vec<u8> {
    ok(stock_clevis(&[
        "luks",
        "pass",
        "-d",
        s(image),
        "-s",
        &slot.to_string(),
    ]))
    .into_bytes()
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Requires exit `code` and `needle` in standard error.
pub fn fails_with(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

/// The active keyslots of a LUKS2 (by its JSON metadata) or LUKS1 (by `luksDump`) image.
pub fn keyslots(image: &Path) -> Vec<u32> {
    let path = image.to_str().unwrap();
    let json = run(
        "cryptsetup",
        &["luksDump", "--dump-json-metadata", path],
        b"",
    );
    let mut slots: Vec<u32> = if json.status.success() {
        let header: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let keyslots = header["keyslots"].as_object().unwrap();
        keyslots.keys().map(|k| k.parse().unwrap()).collect()
    } else {
        let dump = String::from_utf8(run_ok("cryptsetup", &["luksDump", path], b"")).unwrap();
        dump.lines()
            .filter_map(|line| line.strip_prefix("Key Slot ")?.strip_suffix(": ENABLED"))
            .map(|slot| slot.parse().unwrap())
            .collect()
    };
    slots.sort();
    slots
}

/// The keyslots that stock `clevis luks list` shows and whose key stock `clevis luks pass`
/// recovers and cryptsetup accepts in that keyslot.
pub fn working_bindings(image: &Path) -> Vec<u32> {
    let path = image.to_str().unwrap();
    let list = run("clevis", &["luks", "list", "-d", path], b"");
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let mut working = Vec::new();
    for line in list.lines() {
        let Some(Ok(slot)) = line.split(':').next().map(str::parse::<u32>) else {
            continue;
        };
        let pass = run(
            "clevis",
            &["luks", "pass", "-d", path, "-s", &slot.to_string()],
            b"",
        );
        if pass.status.success() && key_opens(image, Some(slot), &pass.stdout) {
            working.push(slot);
        }
    }
    working
}
