#!/usr/bin/env bash
# A first run's path, which a warm cache (CI's) never takes. From a cache directory that
# does not exist yet: the README's demo fills the kernel, boots and unlocks; then
# qemu_kernel must print that kernel's directory and nothing else, complete; and a fill
# killed half way must leave nothing a later run trusts. The chroot caches' fill is run
# with a stand-in for debootstrap and apt (minutes; NBDE_COLD=1 in tests/run.sh runs those)
# and killed half way too. About 35 s here once the release build is done (the kernel .deb,
# 70 MB, is fetched twice; one boot); tests/run.sh runs it every time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cache=$scratch/cache
fail() { echo "cold.sh: $*" >&2; exit 1; }
# As demo.sh and qemu/host.py call it: a fresh bash, stdout captured.
kernel() { NBDE_CACHE=$cache bash -c ". '$here/lib.sh'; qemu_kernel"; }

start=$SECONDS
NBDE_CACHE=$cache "$here/demo.sh"

kdir=$cache/kernel-$(qemu_kernel_version)
[ "$(kernel)" = "$kdir" ] || fail "qemu_kernel printed '$(kernel 2>/dev/null)', not $kdir"
qemu_kernel_check "$kdir" || fail "the kernel the demo filled is incomplete"
[ ! -e "$kdir.tmp" ] || fail "the fill left $kdir.tmp behind"

# Kill a fill while it unpacks, with its whole process group as ^C would.
rm -rf "$kdir"
NBDE_CACHE=$cache setsid bash -c ". '$here/lib.sh'; qemu_kernel" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 600); do [ -d "$kdir.tmp/root" ] && break; sleep 0.1; done
# setsid made our child the leader of its own group: kill that group only.
[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ] || fail "fill $pid is not in its own process group"
# (Without bash's "Killed" notice: this kill is the test.)
{ kill -KILL -- "-$pid"; wait "$pid" || true; } 2>/dev/null
[ ! -e "$kdir" ] || fail "a fill killed half way left $kdir"
[ "$(kernel)" = "$kdir" ] && qemu_kernel_check "$kdir" || fail "no complete kernel after a killed fill"

NBDE_CACHE=$cache python3 - "$here" <<'PY' || fail "the chroot cache's fill is not atomic"
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import chroots
path = os.path.join(chroots.CACHE, "chroot-stand-in")
# A child fills the way debootstrap would, and is killed in the middle.
child = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
sys.path.insert(0, {sys.argv[1]!r})
import chroots
def fill(tmp):
    os.makedirs(tmp)
    open(os.path.join(tmp, "half"), "w").close()
    time.sleep(600)
chroots.cached({path!r}, fill)
"""])
try:
    deadline = time.monotonic() + 30
    while not any(os.path.exists(os.path.join(d, "half")) for d in (path, path + ".tmp")):
        assert child.poll() is None and time.monotonic() < deadline, "the stand-in fill did not start"
        time.sleep(0.05)
finally:
    child.kill()  # our own child, by its handle
    child.wait()
assert not os.path.exists(path), f"a chroot fill killed half way left {path}"


def fill(tmp):
    os.makedirs(tmp)
    open(os.path.join(tmp, "whole"), "w").close()


assert chroots.cached(path, fill) == path
assert os.path.exists(os.path.join(path, "whole")) and os.path.exists(os.path.join(path, ".done"))
assert not os.path.exists(path + ".tmp")
PY

echo "cold.sh: kernel filled from nothing, printed alone, booted; killed kernel and chroot fills left nothing trusted ($((SECONDS - start)) s)"
