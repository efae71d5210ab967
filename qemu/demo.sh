#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine as root: installs what it needs, builds,
# starts nbde-server on its embedded default store, enrols a device, binds a LUKS2 root
# image to it, builds an initramfs, boots it under QEMU, and prints a short timeline.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

t0=$(date +%s.%N)
stamp() { printf '%8.1f s  %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$1"; }

qemu_install_host_packages
# Debian 12's cargo (1.63) is too old for this workspace (rust-version in Cargo.toml).
command -v cargo >/dev/null || { echo "demo.sh: needs cargo on PATH, Rust 1.90 or newer (rustup.rs)" >&2; exit 1; }
# nbde-unlock as it ships (small, for the initramfs), the server as it runs.
(cd "$REPO" && cargo build --profile release-small --locked -q -p nbde-unlock --bin nbde-unlock \
    && cargo build --release --locked -q -p nbde-server)
release=$(qemu_release_dir)
stamp "host packages in place; built nbde-unlock and nbde-server in $release"
kdir=$(qemu_kernel)
[ -f "$kdir/vmlinux" ] || { echo "qemu_kernel printed '$kdir', not a kernel directory" >&2; exit 1; }
stamp "kernel $(cat "$kdir/version") in $kdir"

work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

server=$release/nbde-server
unlock=$(qemu_release_dir release-small)/nbde-unlock
export NBDE_TOKEN
NBDE_TOKEN=$("$server" init --data "$work/data" 2>/dev/null | tail -n 1)
"$server" serve --data "$work/data" --listen 127.0.0.1:0 --public-url "http://10.0.2.100" \
    2> "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
port=$(sed -n 's#^nbde-server: listening on http://127.0.0.1:##p' "$work/server.log")
export NBDE_SERVER=http://127.0.0.1:$port
stamp "nbde-server up on 127.0.0.1:$port (SQLite store in $work/data), seen by the guest as 10.0.2.100"

"$server" org add demo >/dev/null
device=$("$server" device add --org demo vm1 --json)
url=$(echo "$device" | sed -n 's/.*"url": "\(.*\)".*/\1/p')
thp=$(echo "$device" | sed -n 's/.*"thp": "\(.*\)".*/\1/p')
curl -sf "$NBDE_SERVER/o/demo/d/vm1/adv" > "$work/adv.jws"
stamp "device demo/vm1 enrolled: $url (thp $thp)"

printf 'demo passphrase' > "$work/passphrase"
qemu_root_image "$work/root.img" "$work/passphrase"
"$unlock" bind -d "$work/root.img" -k "$work/passphrase" tang \
    "{\"url\":\"$url\",\"thp\":\"$thp\",\"adv\":\"$work/adv.jws\"}" 2>/dev/null
stamp "root image bound: $("$unlock" list -d "$work/root.img")"

qemu_minimal_initrd "$work/initrd.gz" "$kdir"
stamp "initramfs built ($(du -k "$work/initrd.gz" | cut -f1) KiB)"

boot_start=$(date +%s.%N)
stamp "booting (QEMU TCG, serial console in $work/serial.log)"
python3 "$here/boot.py" --kernel "$kdir/vmlinux" --initrd "$work/initrd.gz" --disk "$work/root.img" \
    --forward "$port" --log "$work/serial.log" --timeout 240 \
    --expect "kernel started=Linux version" \
    --expect "nbde-unlock started=NBDE-INIT: starting nbde-unlock" \
    --expect "keyslot opened through the network=opened through the network" \
    --expect "root mounted=NBDE-ROOT-MOUNTED" |
    while read -r at unit label; do
        case $at in
        FAIL:) echo "$at $unit $label" ;;
        *) printf '%8.1f s  guest: %s\n' "$(echo "$boot_start - $t0 + $at" | bc)" "$label" ;;
        esac
    done || true  # a failed boot is reported from the serial log below, not by set -e
grep -q "NBDE-ROOT-MOUNTED" "$work/serial.log" || { echo "boot failed; serial log:"; tail -30 "$work/serial.log"; exit 1; }
echo
echo "decision history (newest first):"
"$server" history --device demo/vm1
