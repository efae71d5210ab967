#!/usr/bin/env bash
# The test command: installs what the tests need (Debian, as root), then runs formatting,
# lints, every cargo test against the real peers (stock clevis, tangd, jose, cryptsetup),
# and the QEMU boot scenarios (standalone, dracut, initramfs-tools).
#   NBDE_SKIP_QEMU=1 ./tests/run.sh   skips the boots (for a quick local run)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(clevis clevis-luks tang jose cryptsetup-bin libcryptsetup-dev clang pkg-config socat curl strace)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

if [ "${NBDE_SKIP_QEMU:-0}" != 1 ]; then
    . qemu/lib.sh
    qemu_install_host_packages
    python3 qemu/scenarios.py --generator minimal,dracut,initramfs-tools
fi
