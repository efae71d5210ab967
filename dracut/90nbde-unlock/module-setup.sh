#!/bin/bash
# dracut module: clevis tokens opened at boot with no clevis, jose, curl or bash. Where
# libcryptsetup-token-clevis.so is installed, systemd-cryptsetup opens the tokens itself
# through it; otherwise nbde-unlock runs as a systemd password agent and answers
# systemd-cryptsetup's requests (the console agent keeps asking too; the first answer wins).

check() {
    require_binaries nbde-unlock || return 1
    return 0
}

depends() {
    echo crypt network systemd
    return 0
}

# Whether a device this host unlocks at boot has a binding that needs the network (a
# tang pin, also inside sss): then the initrd must bring the network up. The binary
# answers by exit code (0 yes, 1 no, 2 cannot tell); one device at a time, so a device
# it cannot read does not hide the answer for the others.
nbde_host_needs_network() {
    local dev
    for dev in "${!host_fs_types[@]}"; do
        [[ ${host_fs_types[$dev]} == crypto_LUKS ]] || continue
        nbde-unlock needs-network -d "$dev" && return 0
    done
    return 1
}

# Whether a device this host unlocks at boot has a tpm2 binding (alone or in sss), or
# cannot be read to tell (then the image carries the pin rather than lose the binding).
nbde_host_needs_tpm2() {
    local dev status=1
    for dev in "${!host_fs_types[@]}"; do
        [[ ${host_fs_types[$dev]} == crypto_LUKS ]] || continue
        nbde-unlock needs-tpm2 -d "$dev" 2>/dev/null
        case $? in
            0) return 0 ;;
            2) status=0 ;;
        esac
    done
    return $status
}

# The tpm2 pin's program (which links the TSS and libcrypto, so nbde-unlock does not),
# and the TCTI libtss2 opens by name at run time: only where a binding uses a TPM.
install_tpm2() {
    command -v nbde-tpm2 >/dev/null || return 0
    if [[ ! $hostonly ]] || nbde_host_needs_tpm2; then
        inst_binary nbde-tpm2
        inst_libdir_file "libtss2-tcti-device.so.0*"
    fi
}

# What both ways need: the runtime library unwinding loads, CA files, the network.
install_common() {
    # Unwinding loads libgcc_s at run time; ldd does not list it.
    inst_libdir_file "libgcc_s.so.1"
    # CA files named by bindings (the tang pin's cacert, when it is a path) live here; a
    # CA pinned as PEM in the binding travels inside the token and needs nothing.
    if [[ -d /etc/nbde-unlock/ca ]]; then
        inst_dir /etc/nbde-unlock/ca
        inst_multiple -o /etc/nbde-unlock/ca/*
    fi
    inst_multiple -o /etc/ssl/certs/ca-certificates.crt
    install_tpm2
    if [[ $hostonly ]] && nbde_host_needs_network; then
        mkdir -p "$initdir/etc/cmdline.d"
        echo "rd.neednet=1" > "$initdir/etc/cmdline.d/90nbde-unlock.conf"
    fi
}

install() {
    # With the token plugin installed, systemd-cryptsetup opens clevis tokens itself,
    # before it asks anyone: no agent, no binary in the image. Without it (or with
    # nbde_unlock_agent=yes in dracut.conf), the agent answers the password requests.
    if [[ ${nbde_unlock_agent-} != yes ]] \
        && inst_libdir_file "cryptsetup/libcryptsetup-token-clevis.so"; then
        install_common
        return 0
    fi
    inst_binary nbde-unlock
    inst_simple "$moddir/nbde-unlock-agent.service" "$systemdsystemunitdir/nbde-unlock-agent.service"
    $SYSTEMCTL -q --root "$initdir" enable nbde-unlock-agent.service
    install_common
}
