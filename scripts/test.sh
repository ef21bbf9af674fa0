#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the end-to-end
# tests that drive the real daemon with real QEMU, virsh and python3-libvirt.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the built binaries.
cargo build --workspace --bins
# Each test binary starts its own daemons and VMs; two at a time keeps a
# 2-core machine from starving TCG guests.
cargo test --workspace -- --test-threads=2
# The containerised integration test and the Debian package (skips itself,
# with a line saying why, where no Docker engine can run).
bash docker/test.sh
