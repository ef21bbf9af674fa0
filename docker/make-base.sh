#!/usr/bin/env bash
# Makes a Debian bookworm base image locally, for machines that reach
# Debian's package mirror but no container registry: debootstrap, then
# `docker import`. Usage:
#
#   make-base.sh [IMAGE_NAME] [PACKAGE,...]
#
# IMAGE_NAME defaults to qemud-base:bookworm; PACKAGE,... are installed into
# the image at debootstrap time (the containerised test bakes qemud's
# runtime packages in this way, so its containers need no network).
# Prints the image name.
set -euo pipefail

name=${1:-qemud-base:bookworm}
include=${2:-}
if docker image inspect "$name" >/dev/null 2>&1; then
    echo "$name"
    exit 0
fi

# The mirror this machine's apt uses, so the image is built from the same place.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
    mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$root" "$mirror" >&2
# Keep the image small; apt lists come back with `apt-get update`.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$name" >&2
echo "$name"
