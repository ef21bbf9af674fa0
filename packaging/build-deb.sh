#!/usr/bin/env bash
# Builds the Debian package: release binaries, their man pages and shell
# completions (generated from the binaries' own flag definitions), then
# cargo-deb. Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb >&2
cargo build --release -p qemud -p qemud-client >&2
rm -rf packaging/out
QEMUD_GENERATE_DOCS=packaging/out target/release/qemud
QEMUD_GENERATE_DOCS=packaging/out target/release/qemuctl
gzip -9n packaging/out/*.1
cargo deb -p qemud --no-build --no-strip 2>&1 | tail -n 1
