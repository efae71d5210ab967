//! Volume modes on LUKS2 image files: every transition forward and back, the refused
//! ones (no user key, a wrong one, no --force, a dead server), the sovereign marker
//! honoured by every unlock path without a single network request, and a kill at every
//! write of each transition.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use testkit::*;

/// Cheap Argon2id for user keyslots made in tests (the cost is a bench matter).
const CHEAP: [&str; 4] = ["--iter-time", "50", "--pbkdf-memory", "8192"];

fn mode(image: &Path, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut full = vec!["mode", "-d", s(image)];
    full.extend_from_slice(args);
    ours_with(&full, stdin)
}

fn mode_json(image: &Path) -> Value {
    serde_json::from_str(&ok(mode(image, &["--json"], b""))).unwrap()
}

fn bind_tang(image: &Path, url: &str) {
    let cfg = json!({ "url": url }).to_string();
    ok(ours_with(
        &[
            "bind",
            "-y",
            "-d",
            s(image),
            "-k",
            s(&passphrase_file(image)),
            "tang",
            &cfg,
        ],
        b"",
    ));
}

fn token_types(image: &Path) -> Vec<String> {
    let header = luks_json(image);
    let mut types: Vec<String> = header["tokens"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    types
}

fn has_marker(image: &Path) -> bool {
    token_types(image).iter().any(|t| t == "nbde-sovereign")
}

/// A volume bound to `url` with the passphrase still in keyslot 0: managed+user.
fn managed_user_image(dir: &Path, name: &str, url: &str) -> std::path::PathBuf {
    let image = luks_image(dir, name);
    bind_tang(&image, url);
    image
}

#[test]
fn sovereign_removes_the_bindings_and_places_the_marker() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let image = managed_user_image(dir.path(), "v.img", &tangd.url());
    assert_eq!(mode_json(&image)["mode"], "managed+user");
    let pass = passphrase_file(&image);

    let out = mode(&image, &["sovereign", "-k", s(&pass)], b"");
    let stderr = ok(out);
    assert!(stderr.is_empty() || !stderr.contains(PASSPHRASE));
    assert_eq!(keyslots(&image), [0], "only the user key is left");
    assert_eq!(token_types(&image), ["nbde-sovereign"]);
    let header = luks_json(&image);
    let marker = header["tokens"]
        .as_object()
        .unwrap()
        .values()
        .find(|t| t["type"] == "nbde-sovereign")
        .unwrap()
        .clone();
    assert_eq!(marker["keyslots"], json!([]));
    assert_eq!(marker["servers"][0]["url"], tangd.url());
    let shown = mode_json(&image);
    assert_eq!(shown["mode"], "sovereign");
    assert_eq!(
        shown["keyslots"],
        json!([{"slot": 0, "kind": "user", "token": null}])
    );
    assert!(key_opens(&image, Some(0), PASSPHRASE.as_bytes()));
    // A second run changes nothing and still succeeds.
    ok(mode(&image, &["sovereign", "-k", s(&pass)], b""));
    assert_eq!(token_types(&image), ["nbde-sovereign"]);
}

#[test]
fn refused_transitions_leave_the_header_as_it_was() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let image = managed_user_image(dir.path(), "v.img", &tangd.url());
    let before = luks_json(&image);
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase").unwrap();

    fails_with(
        &mode(&image, &["sovereign", "-k", s(&wrong)], b""),
        1,
        "wrong key",
    );
    fails_with(&mode(&image, &["managed"], b""), 1, "add --force");
    fails_with(&mode(&image, &["bogus"], b""), 2, "not a mode");
    fails_with(
        &mode(&image, &["sovereign", "tang", "{}"], b""),
        2,
        "PIN CONFIG",
    );
    assert_eq!(luks_json(&image), before);

    // The bound key is a clevis binding's, not a user key.
    let bound = ok(ours_with(&["pass", "-d", s(&image), "-s", "1"], b""));
    let bound_file = dir.path().join("bound");
    std::fs::write(&bound_file, &bound).unwrap();
    fails_with(
        &mode(&image, &["sovereign", "-k", s(&bound_file)], b""),
        1,
        "wrong key",
    );

    // Managed only (no user key): sovereign is refused, the binding stays.
    ok(mode(&image, &["managed", "--force"], b""));
    assert_eq!(mode_json(&image)["mode"], "managed");
    let managed = luks_json(&image);
    fails_with(
        &mode(&image, &["sovereign", "-k", s(&wrong)], b""),
        1,
        "no user key",
    );
    assert_eq!(luks_json(&image), managed);

    // Removing the user keys needs the network to open the volume now.
    let image = managed_user_image(dir.path(), "w.img", &tangd.url());
    let before = luks_json(&image);
    let mut tangd = tangd;
    tangd.stop();
    let out = mode(&image, &["managed", "--force"], b"");
    fails_with(&out, 1, "unreachable");
    assert_eq!(luks_json(&image), before);

    // LUKS1 has no tokens for the marker.
    let luks1 = luks1_image(dir.path(), "old.img");
    let out = mode(
        &luks1,
        &["sovereign", "-k", s(&passphrase_file(&luks1))],
        b"",
    );
    fails_with(&out, 1, "LUKS2");
}

#[test]
fn managed_user_enrols_a_passphrase_or_a_recovery_key_and_proves_it() {
    let (_keys, tangd) = tang("P-384");
    let dir = tempdir();
    let image = managed_user_image(dir.path(), "v.img", &tangd.url());
    ok(mode(&image, &["managed", "--force"], b""));
    assert_eq!(keyslots(&image), [1]);
    assert!(!key_opens(&image, None, PASSPHRASE.as_bytes()));

    let new = dir.path().join("new");
    std::fs::write(&new, "a new user passphrase").unwrap();
    let mut args = vec!["managed+user", "-k", s(&new)];
    args.extend(CHEAP);
    ok(mode(&image, &args, b""));
    let shown = mode_json(&image);
    assert_eq!(shown["mode"], "managed+user");
    let user = shown["keyslots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "user")
        .unwrap()["slot"]
        .as_u64()
        .unwrap();
    assert!(key_opens(
        &image,
        Some(user as u32),
        b"a new user passphrase"
    ));
    let header = luks_json(&image);
    assert_eq!(
        header["keyslots"][user.to_string()]["kdf"]["type"],
        "argon2id"
    );

    // A recovery key besides it: printed once on stdout, in systemd's form, and named by
    // a systemd-recovery token.
    let mut args = vec!["managed+user", "--recovery-key"];
    args.extend(CHEAP);
    let out = mode(&image, &args, b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap();
    let key = key.trim_end();
    assert_eq!(key.len(), 71, "{key:?}");
    assert!(
        key.split('-')
            .all(|g| g.len() == 8 && g.bytes().all(|b| b"cbdefghijklnrtuv".contains(&b)))
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains(key));
    assert!(key_opens(&image, None, key.as_bytes()));
    assert!(token_types(&image).contains(&"systemd-recovery".to_owned()));
    let kinds: Vec<Value> = mode_json(&image)["keyslots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["token"].clone())
        .collect();
    assert!(kinds.contains(&json!("systemd-recovery")), "{kinds:?}");

    // Back to managed: every user key and its token goes; the binding stays.
    ok(mode(&image, &["managed", "--force"], b""));
    assert_eq!(keyslots(&image), [1]);
    assert_eq!(token_types(&image), ["clevis"]);
    assert_eq!(working_bindings(&image), [1]);
}

#[test]
fn leaving_sovereign_takes_the_user_key_and_a_new_binding() {
    let (_keys, tangd) = tang("P-521");
    let dir = tempdir();
    let image = managed_user_image(dir.path(), "v.img", &tangd.url());
    let pass = passphrase_file(&image);
    ok(mode(&image, &["sovereign", "-k", s(&pass)], b""));
    let cfg = json!({ "url": tangd.url() }).to_string();
    fails_with(
        &mode(&image, &["managed+user", "-k", s(&pass)], b""),
        2,
        "PIN CONFIG",
    );
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    let before = luks_json(&image);
    let out = mode(
        &image,
        &["managed+user", "-y", "-k", s(&wrong), "tang", &cfg],
        b"",
    );
    fails_with(&out, 1, "wrong key");
    assert_eq!(luks_json(&image), before);
    // bind refuses a sovereign volume: only mode lifts the marker.
    let out = ours_with(
        &["bind", "-y", "-d", s(&image), "-k", s(&pass), "tang", &cfg],
        b"",
    );
    fails_with(&out, 1, "is sovereign");

    ok(mode(
        &image,
        &["managed+user", "-y", "-k", s(&pass), "tang", &cfg],
        b"",
    ));
    assert!(!has_marker(&image));
    assert_eq!(mode_json(&image)["mode"], "managed+user");
    assert_eq!(working_bindings(&image).len(), 1);
    assert!(key_opens(&image, Some(0), PASSPHRASE.as_bytes()));
}

/// A counting server: every connection is counted and dropped.
fn counting_server() -> (Listener, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let listener = Listener::start(move |_stream| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    (listener, count)
}

/// A clevis token next to the marker (stock clevis binds without knowing it, or a kill
/// between the marker and the removal of the bindings): no unlock path may use it, and
/// none sends a single packet to its server.
#[test]
fn the_marker_stops_every_unlock_path_before_the_network() {
    let (_keys, tangd) = tang("P-256");
    let (counter, connections) = counting_server();
    let dir = tempdir();
    let image = managed_user_image(dir.path(), "v.img", &tangd.url());
    let pass = passphrase_file(&image);
    ok(mode(&image, &["sovereign", "-k", s(&pass)], b""));
    // Stock clevis binds offline (an adv file) to the counting server's URL.
    let adv = dir.path().join("adv.jws");
    run_ok(
        "curl",
        &["-sfo", s(&adv), &format!("{}/adv", tangd.url())],
        b"",
    );
    let cfg = json!({ "url": counter.url(), "adv": s(&adv) }).to_string();
    ok(stock_clevis(&[
        "luks",
        "bind",
        "-y",
        "-d",
        s(&image),
        "-k",
        s(&pass),
        "tang",
        &cfg,
    ]));
    let bound = *keyslots(&image).iter().find(|&&k| k != 0).unwrap();
    let slot = bound.to_string();

    let device = s(&image);
    fails_with(
        &ours_with(&["pass", "-d", device, "-s", &slot], b""),
        1,
        "is sovereign",
    );
    fails_with(
        &ours_with(&["luks", "pass", "-d", device, "-s", &slot], b""),
        1,
        "is sovereign",
    );
    fails_with(
        &ours_with(&["luks", "unlock", "-d", device], b""),
        1,
        "is sovereign",
    );
    fails_with(
        &ours_with(&["luks", "unlock", "-d", device, "-t", &slot], b""),
        1,
        "is sovereign",
    );
    fails_with(&ours_with(&["open", "-d", device], b""), 1, "is sovereign");
    let out = ours_with(&["needs-network", "-d", device], b"");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a sovereign volume needs no network"
    );
    // Standalone boot without a console has nothing to do for it.
    ok(ours_with(
        &["boot", "--no-prompt", "--timeout", "2", "-d", device],
        b"",
    ));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "no unlock path made a request"
    );

    // The control: without the marker the same binding is asked at once.
    let header = luks_json(&image);
    let marker_id = header["tokens"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, t)| t["type"] == "nbde-sovereign")
        .unwrap()
        .0
        .clone();
    run_ok(
        "cryptsetup",
        &["token", "remove", "--token-id", &marker_id, device],
        b"",
    );
    let _ = ours_with(&["pass", "-d", device, "-s", &slot, "--timeout", "2"], b"");
    assert!(connections.load(Ordering::SeqCst) > 0, "the counter counts");
}

/// Kills a transition at each write-type system call, on a lane per core, each on its own
/// copy of `pristine` beside it; after every kill `check(copy, label)` holds.
fn kill_transition(pristine: &Path, args: &[&str], check: impl Fn(&Path, &str) + Sync) -> usize {
    let image = |lane: usize| pristine.with_file_name(format!("work-{lane}.img"));
    kill_at_every_write_in_lanes(
        &nbde_unlock(),
        |lane| {
            let mut full = vec![
                "mode".to_owned(),
                "-d".to_owned(),
                s(&image(lane)).to_owned(),
            ];
            full.extend(args.iter().map(|a| a.to_string()));
            full
        },
        b"",
        |lane| {
            std::fs::copy(pristine, image(lane)).unwrap();
        },
        |lane, at, _killed| check(&image(lane), at),
    )
}

/// After any kill: the user key opens the volume, and until the marker is in the header
/// a binding that stock clevis reads still opens its keyslot.
fn user_key_and_binding_until_marker(image: &Path, at: &str) {
    assert!(
        key_opens(image, Some(0), PASSPHRASE.as_bytes()),
        "user key, after a kill at {at}"
    );
    if !has_marker(image) {
        assert!(
            !working_bindings(image).is_empty(),
            "no marker and no working binding after a kill at {at}"
        );
    }
}

#[test]
fn a_kill_at_any_write_of_sovereign_keeps_the_user_key_and_the_binding_until_the_marker() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let pristine = managed_user_image(dir.path(), "pristine.img", &tangd.url());
    let pass = s(&passphrase_file(&pristine)).to_owned();
    let killed = kill_transition(&pristine, &["sovereign", "-k", &pass], |image, at| {
        user_key_and_binding_until_marker(image, at);
        // Whatever was left, running it again completes it.
        ok(mode(image, &["sovereign", "-k", &pass], b""));
        assert_eq!(
            token_types(image),
            ["nbde-sovereign"],
            "after a kill at {at}"
        );
    });
    eprintln!("sovereign: {killed} killed runs");
    assert!(killed > 3);
}

#[test]
fn a_kill_at_any_write_of_leaving_sovereign_keeps_the_user_key() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let pristine = managed_user_image(dir.path(), "pristine.img", &tangd.url());
    let pass = s(&passphrase_file(&pristine)).to_owned();
    ok(mode(&pristine, &["sovereign", "-k", &pass], b""));
    let cfg = json!({ "url": tangd.url() }).to_string();
    let args = ["managed+user", "-y", "-k", &pass, "tang", &cfg];
    let killed = kill_transition(&pristine, &args, user_key_and_binding_until_marker);
    eprintln!("leaving sovereign: {killed} killed runs");
    assert!(killed > 3);
}

#[test]
fn a_kill_at_any_write_of_enrol_or_removal_keeps_the_binding() {
    let (_keys, tangd) = tang("P-256");
    let dir = tempdir();
    let with_user = managed_user_image(dir.path(), "with-user.img", &tangd.url());
    let managed = dir.path().join("managed.img");
    std::fs::copy(&with_user, &managed).unwrap();
    std::fs::copy(passphrase_file(&with_user), passphrase_file(&managed)).unwrap();
    ok(mode(&managed, &["managed", "--force"], b""));
    let binding_works = |image: &Path, at: &str| {
        assert_eq!(working_bindings(image), [1], "binding after a kill at {at}");
    };
    let new = dir.path().join("new");
    std::fs::write(&new, "new user key").unwrap();
    let mut args = vec!["managed+user", "-k", s(&new)];
    args.extend(CHEAP);
    let enrol = kill_transition(&managed, &args, binding_works);
    let removal = kill_transition(&with_user, &["managed", "--force"], binding_works);
    eprintln!("enrol: {enrol} killed runs; removal: {removal}");
    assert!(enrol > 3 && removal > 1);
}
