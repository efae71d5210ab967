#!/usr/bin/env bash
# Builds the Debian packages with cargo-deb into ${CARGO_TARGET_DIR:-target}/debian/:
#   nbde-unlock        the binary (profile release-small), the dracut module, the
#                      initramfs-tools hook and scripts
#   nbde-clevis        /usr/bin/clevis diverted to nbde-unlock
#   nbde-token-clevis  the libcryptsetup token plugin
#   nbde-tpm2          the tpm2 pin's program
#   nbde-server        the server, its systemd unit, user and configuration
# Prints the paths of the packages, one per line, on standard output (and nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb" >&2
    cargo install cargo-deb --locked --version 3.8.0 >&2
fi
# The builds first, then packaging only (cargo-deb would build each package on its own).
# The server on its own, as the demo, the boots and the bench build it: built together
# with the others, cargo unifies their dependencies' features and builds every shared
# dependency again, so the server that ships would not be the binary those ran.
cargo build --profile release-small --locked -p nbde-unlock --bin nbde-unlock >&2
cargo build --release --locked -p nbde-server >&2
cargo build --release --locked -p nbde-token-clevis -p nbde-tpm2 >&2
out="${CARGO_TARGET_DIR:-$PWD/target}/debian"
mkdir -p "$out"
rm -f "$out"/*.deb
cargo deb --no-build -q -p nbde-unlock -o "$out" >&2
cargo deb --no-build -q -p nbde-unlock --variant clevis -o "$out" >&2
cargo deb --no-build -q -p nbde-token-clevis -o "$out" >&2
cargo deb --no-build -q -p nbde-tpm2 -o "$out" >&2
cargo deb --no-build -q -p nbde-server -o "$out" >&2
# cargo-deb writes no md5sums; dpkg --verify and debsums read them. Repacked with the
# same ownership (root) and compression.
for deb in "$out"/*.deb; do
    tree=$(mktemp -d)
    dpkg-deb -R "$deb" "$tree"
    (cd "$tree" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
        | xargs -0r md5sum > DEBIAN/md5sums)
    dpkg-deb --root-owner-group -Zxz -b "$tree" "$deb" >/dev/null
    rm -rf "$tree"
done
ls "$out"/*.deb
