#!/bin/bash
# dracut module: nbde-unlock as a systemd password agent in the initrd. It answers
# systemd-cryptsetup's requests for LUKS2 devices with a clevis binding; the console
# agent keeps asking too, and the first answer wins. No clevis, jose, curl or bash needed.

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

install() {
    inst_binary nbde-unlock
    # Unwinding loads libgcc_s at run time; ldd does not list it.
    inst_libdir_file "libgcc_s.so.1"
    inst_simple "$moddir/nbde-unlock-agent.service" "$systemdsystemunitdir/nbde-unlock-agent.service"
    $SYSTEMCTL -q --root "$initdir" enable nbde-unlock-agent.service
    # CA files named by bindings (the tang pin's cacert) live here.
    if [[ -d /etc/nbde-unlock/ca ]]; then
        inst_dir /etc/nbde-unlock/ca
        inst_multiple -o /etc/nbde-unlock/ca/*
    fi
    inst_multiple -o /etc/ssl/certs/ca-certificates.crt
    if [[ $hostonly ]] && nbde_host_needs_network; then
        mkdir -p "$initdir/etc/cmdline.d"
        echo "rd.neednet=1" > "$initdir/etc/cmdline.d/90nbde-unlock.conf"
    fi
}
