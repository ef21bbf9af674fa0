#!/usr/bin/env bash
# Installs what qemud and its test suite need on Debian: QEMU, the libvirt
# clients the tests drive (virsh, python3-libvirt), what the test guest is
# built from (a Debian kernel, busybox, cpio), and openssl/sshd/netcat for
# the TLS and SSH transport tests, iproute2 for tests in network namespaces,
# pci.ids for node device names, and Prometheus, which scrapes the metrics
# endpoint in a test. Idempotent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    qemu-system-x86 \
    qemu-utils \
    libvirt-clients \
    python3-libvirt \
    busybox-static \
    cpio \
    gzip \
    xz-utils \
    ca-certificates \
    procps \
    util-linux \
    openssl \
    openssh-server \
    openssh-client \
    netcat-openbsd \
    iproute2 \
    e2fsprogs \
    pci.ids \
    dnsmasq-base \
    nftables \
    >/dev/null

# Debian's other libvirt clients the compatibility tests drive: virt-install
# and Perl Sys::Virt (libvirt0, pulled in by both, brings the CPU model map
# qemud reads; ovmf brings the firmware descriptors it reports).
$SUDO apt-get install -y -qq --no-install-recommends \
    virtinst \
    libsys-virt-perl \
    ovmf \
    >/dev/null

# The containerised integration test (docker/test.sh) and the Debian package.
$SUDO apt-get install -y -qq --no-install-recommends \
    docker.io \
    docker-compose \
    debootstrap \
    >/dev/null

# Prometheus scrapes the metrics endpoint in a test.
$SUDO apt-get install -y -qq --no-install-recommends \
    prometheus \
    tmux \
    >/dev/null

# The test guest boots a Debian kernel. Installing linux-image-amd64 would
# also build an initramfs for the host, which we do not need: unpack the
# package instead, unless a kernel is already present.
if ! ls /boot/vmlinuz-* >/dev/null 2>&1 && [ ! -e /var/cache/qemud-kernel/boot ]; then
    tmp=$(mktemp -d)
    chmod 755 "$tmp" # apt's sandbox user writes the download here
    (cd "$tmp" && apt-get download -qq "$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')")
    $SUDO mkdir -p /var/cache/qemud-kernel
    $SUDO dpkg-deb -x "$tmp"/linux-image-*.deb /var/cache/qemud-kernel
    rm -rf "$tmp"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (rustup or Debian's cargo) first" >&2
    exit 1
fi
