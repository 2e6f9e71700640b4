#!/usr/bin/env bash
# Provisions a fresh Debian bookworm VM for Tollgate: Rust (rustup), then the project's own
# set-up step (`cargo xtask setup`: LLVM 22, bpf-linker, rust-src, bpffs, cgroup2).
set -euo pipefail
apt-get update -q
apt-get install -y -q --no-install-recommends curl ca-certificates build-essential git
if ! command -v cargo >/dev/null && [ ! -x /root/.cargo/bin/cargo ]; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
fi
export PATH=/root/.cargo/bin:$PATH
cd /tollgate
cargo xtask setup
echo "ready: sudo -i; cd /tollgate && cargo xtask demo"
