#!/usr/bin/env python3
"""Side-by-side figures: nbde-unlock against the stock tools, in one run, on loopback.

Usage: bench/compare.py [--runs N]   (builds the release binary first; run as root on Debian
with the packages tests/run.sh installs).
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# nbde-unlock as it ships (packages, images): the release-small profile.
BIN = os.path.join(ROOT, "target", "release-small", "nbde-unlock")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tangd(keydir):
    port = free_port()
    proc = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
         f"EXEC:/usr/libexec/tangd {keydir}"],
        stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def median_seconds(cmd, stdin, runs, expect):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(cmd, input=stdin, capture_output=True, check=True).stdout
        times.append(time.perf_counter() - start)
        assert out == expect, (cmd, out)
    return statistics.median(times)


def row(name, stock, ours, unit="ms"):
    scale = 1000 if unit == "ms" else 1
    print(f"| {name} | {stock * scale:.1f} {unit} | {ours * scale:.1f} {unit} | {stock / ours:.0f}x |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--profile", "release-small", "--locked", "-q", "-p", "nbde-unlock",
                    "--bin", "nbde-unlock"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp()
    procs = []
    try:
        subprocess.run(["/usr/libexec/tangd-keygen", work], check=True)
        tang, url = start_tangd(work)
        procs.append(tang)
        secret = b"a 40-byte key as clevis luks bind makes"
        cfg = '{"url":"%s"}' % url
        jwe = subprocess.run(["clevis", "encrypt", "tang", cfg, "-y"], input=secret,
                             capture_output=True, check=True).stdout
        sss_cfg = '{"t":1,"pins":{"tang":[{"url":"%s"},{"url":"%s"}]}}' % (url, url)
        sss_jwe = subprocess.run(["clevis", "encrypt", "sss", sss_cfg, "-y"], input=secret,
                                 capture_output=True, check=True).stdout

        print(f"Median of {args.runs} runs, loopback, one stock tangd (P-521 keys), same JWE for both.\n")
        floor = median_seconds(["curl", "-sf", "-o", "/dev/null", f"{url}/adv"], b"", args.runs, b"")
        print(f"Server floor: one `curl GET /adv` to this tangd (a fork+exec per connection) "
              f"takes {floor * 1000:.1f} ms.\n")
        print("| operation | stock clevis | nbde-unlock | ratio |")
        print("|---|---|---|---|")
        row("decrypt tang (P-521)",
            median_seconds(["clevis", "decrypt"], jwe, args.runs, secret),
            median_seconds([BIN, "decrypt"], jwe, args.runs, secret))
        row("decrypt sss 1-of-2 tang",
            median_seconds(["clevis", "decrypt"], sss_jwe, args.runs, secret),
            median_seconds([BIN, "decrypt"], sss_jwe, args.runs, secret))
        enc_stock = median_seconds(["sh", "-c", f"clevis encrypt tang '{cfg}' -y | wc -c >/dev/null"],
                                   secret, max(3, args.runs // 4), b"")
        enc_ours = median_seconds(["sh", "-c", f"{BIN} encrypt tang '{cfg}' -y | wc -c >/dev/null"],
                                  secret, max(3, args.runs // 4), b"")
        row("encrypt tang (fetch + verify adv)", enc_stock, enc_ours)

        # LUKS: one image, an Argon2id passphrase slot (cryptsetup's defaults) and a bound
        # slot, as a real machine has them.
        image = os.path.join(work, "root.img")
        with open(image, "wb") as f:
            f.truncate(32 << 20)
        passphrase = b"correct horse battery staple"
        subprocess.run(["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode",
                        image, "-"], input=passphrase, check=True)
        keyfile = os.path.join(work, "pass")
        with open(keyfile, "wb") as f:
            f.write(passphrase)
        subprocess.run(["clevis", "luks", "bind", "-y", "-d", image, "-k", keyfile, "tang", cfg],
                       check=True, capture_output=True)
        key = subprocess.run(["clevis", "luks", "pass", "-d", image, "-s", "1"],
                             capture_output=True, check=True).stdout
        luks_runs = max(3, args.runs // 4)
        row("luks pass (slot 1, tang)",
            median_seconds(["clevis", "luks", "pass", "-d", image, "-s", "1"], b"", luks_runs, key),
            median_seconds([BIN, "pass", "-d", image, "-s", "1"], b"", luks_runs, key))
        test = ["cryptsetup", "open", "--test-passphrase", "--key-file", "-", image]
        argon = median_seconds(test + ["--key-slot", "0"], passphrase, luks_runs, b"")
        bound = median_seconds(test + ["--key-slot", "1"], key, luks_runs, b"")
        any_slot = median_seconds(test, key, luks_runs, b"")
        subprocess.run(["cryptsetup", "config", "--priority", "prefer", "--key-slot", "1", image],
                       check=True)
        any_prefer = median_seconds(test, key, luks_runs, b"")
        print()
        print("| cryptsetup open --test-passphrase | time |")
        print("|---|---|")
        print(f"| Argon2id passphrase slot (defaults) | {argon * 1000:.0f} ms |")
        print(f"| bound PBKDF2-1000 slot, named | {bound * 1000:.0f} ms |")
        print(f"| bound key, any slot, priority normal (stock clevis) | {any_slot * 1000:.0f} ms |")
        print(f"| bound key, any slot, priority prefer (nbde-unlock bind) | {any_prefer * 1000:.0f} ms |")

        stripped = os.path.join(work, "nbde-unlock.stripped")
        shutil.copy(BIN, stripped)
        subprocess.run(["strip", stripped], check=True)
        size = os.path.getsize(stripped)
        print(f"\nnbde-unlock stripped size: {size / 1024:.0f} KiB ({size} bytes)")
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
