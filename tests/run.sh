#!/usr/bin/env bash
# The test command: installs what the tests need (Debian, as root), then runs formatting,
# lints, every cargo test against the real peers (stock clevis, tangd, jose, cryptsetup),
# the first-run path from an empty cache (qemu/cold.sh: the demo, the kernel fill), and the
# QEMU boot scenarios (standalone, dracut with the agent and with the token plugin,
# initramfs-tools), two at a time.
#   NBDE_SKIP_QEMU=1 ./tests/run.sh   skips the boots and the package installs (for a quick
#                                     local run)
#   NBDE_COLD=1 ./tests/run.sh        also runs the scenarios on an empty cache, so the
#                                     chroots are made from nothing too (several minutes more)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(cmake clevis clevis-luks tang jose cryptsetup-bin libcryptsetup-dev clang pkg-config socat curl strace
    luksmeta keyutils sqlite3 postgresql haproxy libssl-dev chromium chromium-driver python3-selenium
    clevis-tpm2 swtpm tpm2-tools libtss2-dev lintian dpkg-dev)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-remove: on a conflict with an installed package, stop rather than uninstall it.
    apt-get install -y -qq --no-install-recommends --no-remove "${missing[@]}" >/dev/null
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The console in a real browser (Debian's python3, where python3-selenium is).
/usr/bin/python3 server/tests/console/browser.py
# How the boot scenarios read a serial console.
python3 qemu/test_boot.py

if [ "${NBDE_SKIP_QEMU:-0}" != 1 ]; then
    . qemu/lib.sh
    qemu_install_host_packages
    # The cache CI keeps is warm, which hides faults on a first run's path: start one from
    # nothing every time. debootstrap chroots cost minutes, so they are filled cold only
    # when asked (NBDE_COLD=1), or when their package lists change.
    ./qemu/cold.sh
    if [ "${NBDE_COLD:-0}" = 1 ]; then
        NBDE_CACHE=$(mktemp -d)
        export NBDE_CACHE
        trap 'rm -rf "$NBDE_CACHE"' EXIT
    fi
    # The Debian packages: lintian, install beside stock clevis, the unit, removal, purge.
    python3 packaging/test.py
    python3 qemu/scenarios.py --generator minimal,dracut,dracut-token,initramfs-tools
fi
