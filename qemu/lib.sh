# Shared by the qemu/ scripts: the cache outside the repo, the Debian kernel, the
# encrypted root image and the hand-built initramfs. Source it; it defines functions only.

# Absolute, so it stays right in subshells that cd and in the paths printed to callers.
NBDE_CACHE=$(realpath -m "${NBDE_CACHE:-/var/cache/nbde-qemu}")
QEMU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$QEMU_DIR")

# Functions whose stdout a caller captures (dir=$(qemu_kernel)) print their result and
# nothing else there: every other tool's output in them goes to stderr or /dev/null.

# Debian packages the boot scripts and the demo need on the host.
QEMU_HOST_PACKAGES=(qemu-system-x86 busybox-static kmod xz-utils e2fsprogs cpio socat curl python3
    cryptsetup-bin debootstrap libcryptsetup-dev clang pkg-config bc libssl-dev)

qemu_install_host_packages() {
    local missing=() p
    for p in "${QEMU_HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        # Debian 12's qemu-system-x86 needs the qemu-utils of its own release. A newer one (a
        # backport, as some machines come with) would make apt uninstall it silently; replace
        # it with the matching version instead, and say so, so qemu-img stays installed.
        local downgrade=() have want
        if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
            have=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
            want=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
            if [ -n "$have" ] && [ -n "$want" ] && [ "$have" != "$want" ]; then
                echo "replacing qemu-utils $have with $want, which qemu-system-x86 $want needs" >&2
                missing+=("qemu-utils=$want")
                downgrade=(--allow-downgrades)
            fi
        fi
        # --no-remove: on any other conflict with an installed package, stop and let the
        # owner decide rather than uninstall it for them.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-remove \
            "${downgrade[@]}" "${missing[@]}" >/dev/null
    fi
}

# Where cargo puts a profile's binaries (default release; the shipped nbde-unlock is built
# with release-small): $CARGO_TARGET_DIR, a cargo config's build.target-dir, or the
# workspace's target/. cargo metadata knows which. Prints that directory.
qemu_release_dir() {
    local target profile=${1:-release}
    target=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps --offline 2>/dev/null \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') \
        || { echo "qemu_release_dir: cargo metadata failed in $REPO" >&2; return 1; }
    echo "$target/$profile"
}

# Modules a hand-built image loads, in order (see BOOT.md).
QEMU_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
failover net_failover virtio_net dm-mod dm-crypt ecb xts cryptd crypto_simd aesni-intel af_alg
algif_skcipher crc32c-intel crc32c_generic jbd2 mbcache crc16 ext4"

# The kernel version linux-image-amd64 depends on, e.g. 6.1.0-56-amd64.
qemu_kernel_version() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: linux-image-\([0-9].*-amd64\)$/\1/p' | head -n 1
}

# The Debian kernel, unpacked into $NBDE_CACHE/kernel-KVER on first use: modules with
# modules.dep, and the uncompressed vmlinux (boots by PVH, seconds faster under TCG).
# Prints that directory, and only that on stdout.
qemu_kernel() {
    local kver dir try status
    for try in 1 2; do
        kver=$(qemu_kernel_version)
        status=2
        if [ -n "$kver" ]; then
            dir=$NBDE_CACHE/kernel-$kver
            { [ -d "$dir" ] && qemu_kernel_check "$dir"; } || qemu_kernel_fill "$kver" "$dir" >&2
            status=$?
            [ "$status" = 0 ] && { echo "$dir"; return 0; }
        fi
        [ "$try" = 1 ] && [ "$status" = 2 ] || break
        # No lists yet (a fresh machine or container), or stale ones that name a kernel the
        # mirror has dropped: refresh them once.
        echo "qemu_kernel: updating apt's package lists, then trying again" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
    done
    echo "qemu_kernel: no usable kernel in $NBDE_CACHE (see the errors above)" >&2
    return 1
}

# qemu_kernel_fill KVER DIR: downloads and unpacks the kernel into DIR.tmp, checks it, then
# renames it to DIR, so a run killed half way leaves nothing a later run trusts. Under a
# lock: a concurrent run waits, then finds DIR done. Status 2: the download failed.
qemu_kernel_fill() {
    local kver=$1 dir=$2
    mkdir -p "$NBDE_CACHE" || return 1
    (
        flock 9 || exit 1
        [ -d "$dir" ] && qemu_kernel_check "$dir" 2>/dev/null && exit 0
        tmp=$dir.tmp
        # What a killed fill left goes first; what a failed one leaves goes on exit.
        rm -rf "$tmp" && mkdir -p "$tmp" || exit 1
        trap 'rm -rf "$tmp"' EXIT
        echo "qemu_kernel: fetching linux-image-$kver into $dir"
        # apt-get download saves to the current directory. As root it would fall back from
        # its sandbox user (_apt, who cannot write here) with a warning; say root outright.
        (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "linux-image-$kver") || exit 2
        debs=("$tmp/linux-image-${kver}"_*.deb)
        [ -f "${debs[0]}" ] || { echo "qemu_kernel: apt-get download left no .deb" >&2; exit 2; }
        dpkg -x "${debs[0]}" "$tmp/root" && rm -f "${debs[0]}" || exit 1
        # The .deb ships no modules.dep.
        depmod -b "$tmp/root" "$kver" || exit 1
        # vmlinuz is a bzImage whose payload is an xz stream: cut at the xz magic, and
        # decompress that one stream (other data follows it). xz stops reading there, so
        # tail may die of SIGPIPE: only xz's status counts, whatever pipefail says.
        vmlinuz=$tmp/root/boot/vmlinuz-$kver
        offset=$(LC_ALL=C grep -abo "$(printf '\3757zXZ')" "$vmlinuz" | head -n 1 | cut -d: -f1)
        [ -n "$offset" ] || { echo "qemu_kernel: no xz payload in $vmlinuz" >&2; exit 1; }
        xz -dc --single-stream < <(tail -c +$((offset + 1)) "$vmlinuz") > "$tmp/vmlinux" \
            || { echo "qemu_kernel: could not decompress $vmlinuz" >&2; exit 1; }
        echo "$kver" > "$tmp/version"
        qemu_kernel_check "$tmp" || exit 1
        # A DIR here failed its check (left by an older fill); replace it.
        rm -rf "$dir" && mv -T "$tmp" "$dir"
    ) 9>"$NBDE_CACHE/kernel-$kver.lock"
}

# qemu_kernel_check DIR: DIR holds what the boot scripts use — its version, vmlinux as an
# ELF, and modules.dep from which every module in QEMU_MODULES resolves.
qemu_kernel_check() {
    local dir=$1 kver
    kver=$(cat "$dir/version" 2>/dev/null)
    [ -n "$kver" ] || { echo "qemu_kernel_check: no version in $dir" >&2; return 1; }
    cmp -s -n 4 "$dir/vmlinux" <(printf '\177ELF') \
        || { echo "qemu_kernel_check: $dir/vmlinux is not an ELF kernel" >&2; return 1; }
    [ -s "$dir/root/lib/modules/$kver/modules.dep" ] \
        || { echo "qemu_kernel_check: no modules.dep in $dir" >&2; return 1; }
    modprobe -d "$dir/root" -S "$kver" --show-depends -a $QEMU_MODULES >/dev/null \
        || { echo "qemu_kernel_check: not every module in QEMU_MODULES resolves in $dir" >&2; return 1; }
}

# Every test root has this LUKS UUID, so one initramfs (whose crypttab names it) boots
# them all.
QEMU_ROOT_UUID=6e6b6465-0000-4000-8000-000000000001

# qemu_root_image OUT KEYFILE [luks1]: a LUKS2 (or LUKS1) root with known content —
# /etc/nbde-marker, and a busybox /sbin/init that prints it and powers off, so initramfs
# images that switch root show they got there — passphrase from KEYFILE in keyslot 0 with
# cheap PBKDF2 settings. Built on the host without device-mapper: mke2fs -d, then reencrypt
# in place (LUKS2; LUKS1's reencrypt needs device-mapper), then convert for LUKS1.
qemu_root_image() {
    local out=$1 keyfile=$2 type=${3:-luks2} tree
    qemu_plain_root_image "$out" || return 1
    # reencrypt names its temporary header file and its lock by the volume's UUID: made
    # under a random one, images built at once never meet; the shared UUID comes after.
    truncate -s +32M "$out" \
        && (cd "$(dirname "$out")" && cryptsetup reencrypt --encrypt --type luks2 \
            --reduce-device-size 32M --batch-mode --key-file "$(realpath "$keyfile")" \
            --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "$(realpath "$out")" >/dev/null) \
        && cryptsetup luksUUID --batch-mode --uuid "$QEMU_ROOT_UUID" "$out" \
        && if [ "$type" = luks1 ]; then
            cryptsetup convert --batch-mode --type luks1 "$out" >/dev/null
        fi
}

# The same root filesystem, unencrypted: the floor a boot bench measures unlockers against.
qemu_plain_root_image() {
    local out=$1 tree
    tree=$(mktemp -d)
    mkdir -p "$tree"/{etc,sbin,bin,proc,sys,dev}
    echo "nbde root filesystem $(basename "$out")" > "$tree/etc/nbde-marker"
    # systemd switches only into an OS tree.
    printf 'ID=nbde-test\nNAME="nbde test root"\n' > "$tree/etc/os-release"
    cp /bin/busybox "$tree/bin/busybox"
    cat > "$tree/sbin/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc 2>/dev/null
echo "NBDE-ROOT-MOUNTED: $(/bin/busybox cat /etc/nbde-marker)"
/bin/busybox poweroff -f
INIT
    chmod +x "$tree/sbin/init"
    rm -f "$out"
    # Python callers run this without set -e: a failed step must be the function's status.
    mke2fs -q -t ext4 -d "$tree" -L root "$out" 64M >/dev/null
    local status=$?
    rm -rf "$tree"
    return $status
}

# Copies a binary and the shared libraries it needs (and libgcc_s, which ldd does not list
# but unwinding and pthread_exit load at run time) into the initramfs tree ROOT.
qemu_copy_binary() {
    local root=$1 binary=$2 dest=${3:-/bin} lib
    mkdir -p "$root$dest" && cp "$binary" "$root$dest/" || return 1
    for lib in $(ldd "$binary" | grep -o '/[^ ]*') /lib/x86_64-linux-gnu/libgcc_s.so.1; do
        [ -e "$lib" ] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    mkdir -p "$root/lib64"
    [ -e "$root/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
}

# qemu_copy_tpm2 ROOT BINARY: the tpm2 pin's program beside nbde-unlock, its libraries,
# and the TCTI that libtss2-tctildr opens by name at run time (ldd does not list it).
qemu_copy_tpm2() {
    local root=$1 binary=$2 tcti
    qemu_copy_binary "$root" "$binary" || return 1
    for tcti in /usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0*; do
        [ -e "$tcti" ] || { echo "qemu_copy_tpm2: no libtss2-tcti-device (libtss2-dev)" >&2; return 1; }
        qemu_copy_binary "$root" "$tcti" "$(dirname "$tcti")" || return 1
    done
}

# qemu_minimal_initrd OUT KERNEL_DIR [NBDE_TPM2]: the hand-built initramfs of standalone
# mode — busybox, the shipped nbde-unlock (profile release-small), QEMU_MODULES, qemu/minimal-init as /init, and the
# tpm2 pin (nbde-tpm2 and the TSS) when its path is given.
qemu_minimal_initrd() {
    local out=$1 kdir=$2 tpm2=${3-} kver release root m deps path
    kver=$(cat "$kdir/version") && release=$(qemu_release_dir release-small) || return 1
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,newroot,lib/modules/"$kver"}
    cp /bin/busybox "$root/bin/busybox"
    for applet in sh mount umount mkdir cat echo sleep ip udhcpc insmod poweroff grep ls \
        route ifconfig switch_root mknod sed; do
        ln -sf busybox "$root/bin/$applet"
    done
    qemu_copy_binary "$root" "$release/nbde-unlock" || { rm -rf "$root"; return 1; }
    if [ -n "$tpm2" ]; then
        qemu_copy_tpm2 "$root" "$tpm2" || { rm -rf "$root"; return 1; }
    fi
    for m in $QEMU_MODULES; do
        # An image without a module it needs would only fail much later, in the guest.
        deps=$(modprobe -d "$kdir/root" -S "$kver" --show-depends "$m") \
            || { echo "qemu_minimal_initrd: no module $m in $kdir" >&2; rm -rf "$root"; return 1; }
        path=$(echo "$deps" | awk '/^insmod/ {print $2}')
        for p in $path; do
            grep -qxF "$p" "$root/modules.order" 2>/dev/null && continue
            mkdir -p "$root$(dirname "${p#"$kdir"/root}")"
            cp "$p" "$root${p#"$kdir"/root}"
            echo "$p" >> "$root/modules.order"
        done
    done
    sed -i "s#^$kdir/root##" "$root/modules.order"
    cp "$QEMU_DIR/minimal-init" "$root/init"
    cp "$QEMU_DIR/udhcpc.script" "$root/etc/udhcpc.script"
    chmod +x "$root/init" "$root/etc/udhcpc.script"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out"
    local status=$?
    rm -rf "$root"
    return $status
}
