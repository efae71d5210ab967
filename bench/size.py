#!/usr/bin/env python3
"""What each build choice buys in nbde-unlock's size, and what it costs in recovery time.

Builds nbde-unlock once per profile variant (each in its own target directory, so the
variants do not rebuild each other), then, in one run against one stock tangd with P-521
keys, prints per variant: the stripped size and the median time of `nbde-unlock decrypt`
on a tang JWE and on an sss 1-of-2 tang JWE (the client's two P-521 multiplications plus
process start and HTTP), and on a tang JWE over HTTPS (nbde-server --tang-dir on the same
keys, an ECDSA P-256 certificate: the TLS handshake's key exchange and two P-256
signature checks), against today's profile.

Usage: bench/size.py [--runs N] [--only NAME,NAME] [--baseline BINARY]   (run as root on Debian with the
packages tests/run.sh installs; about 3 minutes of building per variant on 2 cores).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import free_port, median_seconds, start_tangd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = os.environ.get("NBDE_SIZE_TARGETS", os.path.join(ROOT, "target", "size"))

# The crates that do the elliptic-curve arithmetic of a recovery: the one place where
# optimizing for size costs time that a boot can see.
CURVE_CRATES = ["p256", "p384", "p521", "primeorder", "elliptic-curve", "crypto-bigint"]


def settings(opt, lto, cgu, panic, curves_at_3=False):
    """`cargo --config` overrides of the release profile (values in TOML, which JSON's
    strings, numbers and booleans are)."""
    profile = {"opt-level": opt, "lto": lto, "codegen-units": cgu, "panic": panic}
    config = [f"profile.release.{k}={json.dumps(v)}" for k, v in profile.items()]
    if curves_at_3:
        config += [f"profile.release.package.{c}.opt-level=3" for c in CURVE_CRATES]
    return config


# Each row changes one thing from the row before it, so its size delta is what that one
# choice buys.
VARIANTS = [
    ("before: opt 3, thin LTO, 4 CGU, unwind", "before", settings(3, "thin", 4, "unwind")),
    ("fat LTO", "fat", settings(3, True, 4, "unwind")),
    ("+ 1 codegen unit", "cgu1", settings(3, True, 1, "unwind")),
    ("+ panic = abort", "abort", settings(3, True, 1, "abort")),
    ("+ opt-level s", "s", settings("s", True, 1, "abort")),
    ("+ opt-level z", "z", settings("z", True, 1, "abort")),
    ("opt z, curve crates at 3", "z-curves3", settings("z", True, 1, "abort", curves_at_3=True)),
    ("opt s, curve crates at 3", "s-curves3", settings("s", True, 1, "abort", curves_at_3=True)),
    ("opt s, curves at 3, unwind", "s-curves3-unwind", settings("s", True, 1, "unwind", curves_at_3=True)),
    # What packages and images ship (Cargo.toml), built as they build it.
    ("profile release-small, as shipped", "release-small", None),
]


def build(key, config):
    """nbde-unlock built with the release profile overridden by `config`, or with the
    release-small profile when `config` is None."""
    target = os.path.join(TARGETS, key)
    profile = "release" if config is not None else "release-small"
    cmd = ["cargo", "build", "--profile", profile, "--locked", "-q", "-p", "nbde-unlock", "--bin", "nbde-unlock"]
    for c in config or []:
        cmd += ["--config", c]
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, CARGO_TARGET_DIR=target))
    return os.path.join(target, profile, "nbde-unlock")


def start_https(work, procs):
    """nbde-server (release build) serving the tangd keys in `work` over HTTPS with an ECDSA
    P-256 certificate for 127.0.0.1 (its own CA, ca.pem); returns the URL."""
    server = os.path.join(build_dir_of("release"), "nbde-server")
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "nbde-server"], cwd=ROOT, check=True)
    ca, cert, key = (os.path.join(work, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"],
                   check=True, capture_output=True)
    shutil.copy(cert, ca)
    port = free_port()
    procs.append(subprocess.Popen([server, "serve", "--data", os.path.join(work, "data"), "--tang-dir", work,
                                   "--listen", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _ in range(200):
        if subprocess.run(["curl", "-sf", "--cacert", ca, "-o", "/dev/null", f"https://127.0.0.1:{port}/adv"]).returncode == 0:
            return f"https://127.0.0.1:{port}"
        time.sleep(0.05)
    raise SystemExit("nbde-server did not come up over HTTPS")


def build_dir_of(profile):
    """The workspace's target directory for `profile` (honours $CARGO_TARGET_DIR)."""
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    return os.path.join(json.loads(out)["target_directory"], profile, "")


def stripped_size(binary, work):
    copy = os.path.join(work, "stripped")
    shutil.copy(binary, copy)
    subprocess.run(["strip", copy], check=True)
    return os.path.getsize(copy)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", help="comma-separated variant keys")
    parser.add_argument("--baseline", help="an nbde-unlock built elsewhere (e.g. from an older commit), "
                                           "measured first, as the row the others are compared with")
    args = parser.parse_args()
    variants = [v for v in VARIANTS if not args.only or v[1] in args.only.split(",")]
    binaries = [(name, key, build(key, config)) for name, key, config in variants]
    if args.baseline:
        binaries.insert(0, (f"baseline: {args.baseline}", "baseline", args.baseline))

    work = tempfile.mkdtemp()
    tang = None
    procs = []
    try:
        subprocess.run(["/usr/libexec/tangd-keygen", work], check=True)
        tang, url = start_tangd(work)
        secret = b"a 40-byte key as clevis luks bind makes"
        jwe = subprocess.run(["clevis", "encrypt", "tang", '{"url":"%s"}' % url, "-y"], input=secret,
                             capture_output=True, check=True).stdout
        https_url = start_https(work, procs)
        # Stock clevis has no cacert: the last build encrypts (the JWE is the same format).
        https_jwe = subprocess.run([binaries[-1][2], "encrypt", "tang", json.dumps(
            {"url": https_url, "cacert": os.path.join(work, "ca.pem")}), "-y"], input=secret,
            capture_output=True, check=True).stdout
        sss = '{"t":1,"pins":{"tang":[{"url":"%s"},{"url":"%s"}]}}' % (url, url)
        sss_jwe = subprocess.run(["clevis", "encrypt", "sss", sss, "-y"], input=secret,
                                 capture_output=True, check=True).stdout
        print(f"nbde-unlock per build profile; median of {args.runs} `decrypt` runs against one stock "
              f"tangd (P-521), loopback; the same JWEs for every row. MiB = 1,048,576 bytes.\n")
        print("| profile | stripped size | vs first | decrypt tang | decrypt sss 1-of-2 | decrypt tang https "
              "| tang vs first |")
        print("|---|---|---|---|---|---|---|")
        base = None
        for name, _, binary in binaries:
            size = stripped_size(binary, work)
            # Interleaved rounds would be fairer on a noisy machine, but each row's
            # median over many runs is stable here within a few percent.
            tang_s = median_seconds([binary, "decrypt"], jwe, args.runs, secret)
            sss_s = median_seconds([binary, "decrypt"], sss_jwe, args.runs, secret)
            https_s = median_seconds([binary, "decrypt"], https_jwe, args.runs, secret)
            base = base or (size, tang_s)
            print(f"| {name} | {size / 1048576:.2f} MiB ({size:,} B) | {size / base[0] - 1:+.0%} | "
                  f"{tang_s * 1000:.2f} ms | {sss_s * 1000:.2f} ms | {https_s * 1000:.2f} ms | "
                  f"{tang_s / base[1] - 1:+.0%} |")
    finally:
        for p in procs + ([tang] if tang else []):
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
