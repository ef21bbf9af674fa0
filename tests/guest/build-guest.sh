#!/usr/bin/env bash
# Builds the tiny guest the end-to-end tests boot: a Debian kernel and a
# busybox initramfs whose init prints a ready marker on the serial console,
# runs a shell there, and powers off (like a real OS would) when the ACPI power button is
# pressed, i.e. on `virsh shutdown`. Nothing is downloaded here: the kernel
# comes from /boot or from the package scripts/install-deps.sh unpacked.
#
# Usage: build-guest.sh [OUT_DIR]   (default: $QEMUD_GUEST_DIR or /tmp/qemud-guest)
set -euo pipefail

out=${1:-${QEMUD_GUEST_DIR:-/tmp/qemud-guest}}
self=$(readlink -f "$0")

# Reuse a build that is newer than this script.
if [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.cpio.gz" ] && [ "$out/initramfs.cpio.gz" -nt "$self" ]; then
    echo "$out/vmlinuz"
    echo "$out/initramfs.cpio.gz"
    exit 0
fi

# The newest kernel with its modules, installed or unpacked.
kernel=""
for root in / /var/cache/qemud-kernel/; do
    for k in $(ls -1 "$root"boot/vmlinuz-* 2>/dev/null | sort -V -r); do
        ver=${k##*/vmlinuz-}
        if [ -d "${root}lib/modules/$ver" ]; then
            kernel=$k
            modules="${root}lib/modules/$ver"
            break 2
        fi
    done
done
if [ -z "$kernel" ]; then
    echo "no kernel found; run scripts/install-deps.sh" >&2
    exit 1
fi
busybox=$(command -v busybox || true)
# ldd fails on a static binary, which is what the initramfs needs.
if [ -z "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    echo "a static busybox is needed (apt-get install busybox-static)" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp "$busybox" "$root/bin/busybox"

# The power button driver and the event interface it reports through, the
# virtio-serial stack the guest agent port needs, and e1000 for guests with
# an <interface> (virtio-net would need more of the virtio PCI transport) are
# modules in Debian's kernel. Copy them, decompressing if needed.
n=10
for m in kernel/drivers/acpi/button.ko kernel/drivers/input/evdev.ko \
    kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko \
    kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko \
    kernel/drivers/virtio/virtio_pci.ko kernel/drivers/char/virtio_console.ko \
    kernel/drivers/net/ethernet/intel/e1000/e1000.ko; do
    n=$((n + 1))
    src=$(ls "$modules/$m"* 2>/dev/null | head -n1)
    if [ -z "$src" ]; then
        continue # built into this kernel
    fi
    name="$n-$(basename "$m")"
    case "$src" in
        *.xz) xz -dc "$src" > "$root/lib/modules/$name" ;;
        *.zst) zstd -qdc "$src" > "$root/lib/modules/$name" ;;
        *.gz) gzip -dc "$src" > "$root/lib/modules/$name" ;;
        *) cp "$src" "$root/lib/modules/$name" ;;
    esac
done

cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# Three passes: a module whose dependency loads later in a pass loads in
# the next one.
for pass in 1 2 3; do
    for m in /lib/modules/*.ko; do
        insmod "$m" 2>/dev/null
    done
done
# Find the event device of the ACPI power button.
button=""
for i in $(seq 100); do
    for e in /sys/class/input/event*; do
        if grep -qs "Power Button" "$e/device/name"; then
            button=/dev/input/${e##*/}
        fi
    done
    [ -n "$button" ] && [ -e "$button" ] && break
    sleep 0.05
done
# With a NIC: take a DHCP lease (renewed for as long as the guest runs)
# and ping the gateway, reporting both on the console for the tests.
if [ -e /sys/class/net/eth0 ]; then
    (
        ifconfig lo 127.0.0.1 up
        ifconfig eth0 up
        udhcpc -i eth0 -s /bin/udhcpc-script -f -t 60 -T 1 -A 1 >/dev/null 2>&1 &
        for i in $(seq 600); do
            [ -s /tmp/router ] && break
            sleep 0.2
        done
        router=$(cat /tmp/router 2>/dev/null)
        if [ -n "$router" ] && ping -c 3 -W 2 "$router" >/dev/null 2>&1; then
            echo "QEMUD-GUEST-PING-OK $router"
        else
            echo "QEMUD-GUEST-PING-FAILED $router"
        fi
        # Tests name a peer guest to reach, and an address beyond the host
        # that must stay out of reach, on the kernel command line.
        peer=$(sed -n 's/.*qemud\.peer=\([^ ]*\).*/\1/p' /proc/cmdline)
        if [ -n "$peer" ]; then
            ok=""
            for i in $(seq 90); do
                if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then
                    ok=1
                    break
                fi
            done
            if [ -n "$ok" ]; then
                echo "QEMUD-GUEST-PEER-OK $peer"
            else
                echo "QEMUD-GUEST-PEER-FAILED $peer"
            fi
        fi
        outside=$(sed -n 's/.*qemud\.outside=\([^ ]*\).*/\1/p' /proc/cmdline)
        if [ -n "$outside" ]; then
            if ping -c 2 -W 1 "$outside" >/dev/null 2>&1; then
                echo "QEMUD-GUEST-OUTSIDE-REACHED $outside"
            else
                echo "QEMUD-GUEST-OUTSIDE-UNREACHABLE $outside"
            fi
        fi
    ) &
fi
echo "QEMUD-GUEST-READY button=$button"
# A shell on the serial console, for console tests; a new one when it exits.
(while true; do setsid cttyhack sh -i; sleep 1; done) </dev/ttyS0 >/dev/ttyS0 2>&1 &
# A tiny guest agent on the agent's virtio-serial port, for agent tests.
agent_port=""
for p in /sys/class/virtio-ports/*; do
    if [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
        agent_port=/dev/${p##*/}
    fi
done
if [ -n "$agent_port" ]; then
    (
        # Kept open for good: the host sees the agent as connected.
        exec 3<>"$agent_port"
        while true; do
            # EOF while the host side is not connected: wait and retry.
            if ! IFS= read -r line <&3; then
                sleep 0.1
                continue
            fi
            case "$line" in
            *guest-sync*)
                id=$(echo "$line" | sed -n 's/.*"id" *: *\([0-9]*\).*/\1/p')
                printf '\377{"return": %s}\n' "$id" >&3 ;;
            *guest-ping*) echo '{"return": {}}' >&3 ;;
            *guest-get-time*) echo "{\"return\": $(date +%s)000000000}" >&3 ;;
            *guest-get-host-name*) echo '{"return": {"host-name": "qemud-guest"}}' >&3 ;;
            *guest-fsfreeze*) echo '{"return": 0}' >&3 ;;
            *guest-network-get-interfaces*)
                echo '{"return": [{"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]}]}' >&3 ;;
            *guest-info*) echo '{"return": {"version": "qemud-test-agent", "supported_commands": []}}' >&3 ;;
            *) echo '{"error": {"class": "CommandNotFound", "desc": "The command is not supported"}}' >&3 ;;
            esac
        done
    ) &
fi
if [ -n "$button" ]; then
    # Block until the button sends its first input event, then power off
    # the way an OS does after an ACPI power-button press.
    dd if="$button" of=/dev/null bs=24 count=1 2>/dev/null
    echo "QEMUD-GUEST-POWEROFF"
    poweroff -f
fi
while true; do
    sleep 3600
done
INIT
chmod +x "$root/init"
cat > "$root/bin/udhcpc-script" <<'DHCP'
#!/bin/busybox sh
case "$1" in
    bound|renew)
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
        if [ -n "$router" ]; then
            route add default gw "${router%% *}" dev "$interface" 2>/dev/null
            echo "${router%% *}" > /tmp/router
        fi
        echo "QEMUD-GUEST-LEASE $1 ip=$ip" > /dev/console
        ;;
    deconfig)
        ifconfig "$interface" 0.0.0.0
        ;;
esac
exit 0
DHCP
chmod +x "$root/bin/udhcpc-script"
mkdir -p "$root/tmp"

mkdir -p "$out"
# Tests cache whether KVM runs this guest; a new guest asks again.
rm -f "$out/domain-type"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initramfs.cpio.gz.tmp"
cp "$kernel" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "$out/vmlinuz"
echo "$out/initramfs.cpio.gz"
