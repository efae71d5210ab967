# Shared by the qemu/ scripts: the cache outside the repo, the Debian kernel, the
# encrypted root image and the hand-built initramfs. Source it; it defines functions only.

NBDE_CACHE=${NBDE_CACHE:-/var/cache/nbde-qemu}
QEMU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$QEMU_DIR")

# Debian packages the boot scripts need on the host.
QEMU_HOST_PACKAGES=(qemu-system-x86 busybox-static kmod xz-utils e2fsprogs cpio socat curl python3
    cryptsetup-bin debootstrap libcryptsetup-dev clang pkg-config)

qemu_install_host_packages() {
    local missing=() p
    for p in "${QEMU_HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# The kernel version linux-image-amd64 depends on, e.g. 6.1.0-56-amd64.
qemu_kernel_version() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: linux-image-\([0-9].*-amd64\)$/\1/p' | head -n 1
}

# Unpacks the Debian kernel into $NBDE_CACHE/kernel-KVER: modules with modules.dep, and
# the uncompressed vmlinux (boots by PVH, seconds faster under TCG). Prints that directory.
qemu_kernel() {
    local kver dir deb offset
    kver=$(qemu_kernel_version)
    [ -n "$kver" ] || { echo "no linux-image-amd64 in apt's lists (apt-get update)" >&2; return 1; }
    dir=$NBDE_CACHE/kernel-$kver
    if [ ! -f "$dir/vmlinux" ]; then
        mkdir -p "$dir.tmp"
        (cd "$dir.tmp" && apt-get download -q "linux-image-$kver" 2>/dev/null)
        deb=$(ls "$dir.tmp"/linux-image-"$kver"_*.deb)
        dpkg -x "$deb" "$dir.tmp/root"
        rm -f "$deb"
        depmod -b "$dir.tmp/root" "$kver"
        # vmlinuz is a bzImage whose payload is an xz stream: cut at the xz magic.
        offset=$(grep -abo "$(printf '\3757zXZ')" "$dir.tmp/root/boot/vmlinuz-$kver" | head -n 1 | cut -d: -f1)
        tail -c +$((offset + 1)) "$dir.tmp/root/boot/vmlinuz-$kver" | xz -dc 2>/dev/null > "$dir.tmp/vmlinux" || true
        [ -s "$dir.tmp/vmlinux" ] || { echo "could not extract vmlinux" >&2; return 1; }
        echo "$kver" > "$dir.tmp/version"
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
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
    mke2fs -q -t ext4 -d "$tree" -L root "$out" 64M >/dev/null
    truncate -s +32M "$out"
    cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 32M --batch-mode \
        --key-file "$keyfile" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --uuid "$QEMU_ROOT_UUID" "$out" >/dev/null
    if [ "$type" = luks1 ]; then
        cryptsetup convert --batch-mode --type luks1 "$out" >/dev/null
    fi
    rm -rf "$tree"
}

# Copies a binary and the shared libraries it needs (and libgcc_s, which ldd does not list
# but unwinding and pthread_exit load at run time) into the initramfs tree ROOT.
qemu_copy_binary() {
    local root=$1 binary=$2 dest=${3:-/bin} lib
    mkdir -p "$root$dest"
    cp "$binary" "$root$dest/"
    for lib in $(ldd "$binary" | grep -o '/[^ ]*') /lib/x86_64-linux-gnu/libgcc_s.so.1; do
        [ -e "$lib" ] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    mkdir -p "$root/lib64"
    [ -e "$root/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
}

# Modules a hand-built image loads, in order (see BOOT.md).
QEMU_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
failover net_failover virtio_net dm-mod dm-crypt ecb xts cryptd crypto_simd aesni-intel af_alg
algif_skcipher crc32c-intel crc32c_generic jbd2 mbcache crc16 ext4"

# qemu_minimal_initrd OUT KERNEL_DIR: the hand-built initramfs of standalone mode —
# busybox, nbde-unlock, the modules above, and qemu/minimal-init as /init.
qemu_minimal_initrd() {
    local out=$1 kdir=$2 kver root m path
    kver=$(cat "$kdir/version")
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,newroot,lib/modules/"$kver"}
    cp /bin/busybox "$root/bin/busybox"
    for applet in sh mount umount mkdir cat echo sleep ip udhcpc insmod poweroff grep ls \
        route ifconfig switch_root mknod sed; do
        ln -sf busybox "$root/bin/$applet"
    done
    qemu_copy_binary "$root" "$REPO/target/release/nbde-unlock"
    for m in $QEMU_MODULES; do
        path=$(modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" 2>/dev/null \
            | awk '/^insmod/ {print $2}')
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
    rm -rf "$root"
}
