#!/usr/bin/env bash
# A first run's path, which a warm cache (CI's) never takes. From a cache directory that
# does not exist yet: the README's demo fills the kernel, boots and unlocks; then
# qemu_kernel must print that kernel's directory and nothing else, complete; and a fill
# killed half way must leave nothing a later run trusts. About 35 s here (the kernel .deb,
# 70 MB, is fetched twice; one boot); tests/run.sh runs it every time. Chroots are not
# filled here (minutes of debootstrap and apt): see tests/run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cache=$scratch/cache
fail() { echo "cold.sh: $*" >&2; exit 1; }
# As demo.sh and scenarios.py call it: a fresh bash, stdout captured.
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
kill -KILL -- "-$pid"
wait "$pid" 2>/dev/null || true
[ ! -e "$kdir" ] || fail "a fill killed half way left $kdir"
[ "$(kernel)" = "$kdir" ] && qemu_kernel_check "$kdir" || fail "no complete kernel after a killed fill"

echo "cold.sh: kernel filled from nothing, printed alone, booted; a killed fill left nothing trusted ($((SECONDS - start)) s)"
