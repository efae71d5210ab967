#!/usr/bin/env bash
# The main job. Until the bundled server and the boot integrations land, it shows the
# part that exists: a tang binding and recovery through nbde-unlock against stock tangd
# on loopback, checked by stock clevis. It installs what it needs (Debian, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

for p in tang jose clevis socat curl libcryptsetup-dev clang pkg-config; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need=1
done
if [ "${need:-0}" = 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        tang jose clevis socat curl libcryptsetup-dev clang pkg-config >/dev/null
fi
cargo build --release --locked -q
bin=target/release/nbde-unlock

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { [ -n "${tang_pid:-}" ] && kill "$tang_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

t0=$(date +%s%N)
stamp() { printf '%8.3f s  %s\n' "$(( ($(date +%s%N) - t0) / 1000000 ))e-3" "$1"; }

/usr/libexec/tangd-keygen "$work"
socat TCP-LISTEN:"$port",bind=127.0.0.1,reuseaddr,fork EXEC:"/usr/libexec/tangd $work" 2>/dev/null &
tang_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/adv" >/dev/null && break; sleep 0.1; done
stamp "stock tangd up on 127.0.0.1:$port (P-521 keys)"
printf 'demo secret' | $bin encrypt tang "{\"url\":\"http://127.0.0.1:$port\"}" -y > "$work/secret.jwe"
stamp "nbde-unlock encrypt: JWE bound to the server's exchange key"
plain=$($bin decrypt < "$work/secret.jwe")
stamp "nbde-unlock decrypt: blinded exchange, recovered '$plain'"
plain=$(clevis decrypt < "$work/secret.jwe")
stamp "stock clevis decrypt of the same JWE: '$plain'"
