#!/usr/bin/env bash
# Packs what bench/gpu.sh runs on a GPU machine without a Rust toolchain: the `diffusion` CLI
# and the integration and CLI test binaries, stripped and compressed into .dev/bin.tar.xz
# (about 42 MB). It builds them first (a no-op when they are fresh) with wgpu and cubecl's
# on-disk autotuning cache (`diffusion-cli/autotune-cache`), so that bench/gpu.sh's steps, each
# a new process, tune each shape once; the default build's binaries would tune again in every
# process.
# Arguments name the binaries to pack (default: diffusion integration cli). The CLI alone
# (about 19 MB packed) is all the benchmark steps need, and leaves room under the device tool's
# 64 MiB for the diffusers wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
features=diffusion-cli/wgpu,diffusion-cli/autotune-cache
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" .dev
wanted=" ${*:-diffusion integration cli} "
want() { [[ "$wanted" == *" $1 "* ]]; }
cargo build --release --workspace --features "$features"
if want integration || want cli; then
    cargo test --release --workspace --features "$features" --no-run
    cargo test --release --workspace --features "$features" --no-run --message-format=json 2>/dev/null \
        | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and m["target"]["name"] in ("integration", "cli"):
        print(m["target"]["name"], m["executable"])' \
        | while read -r name exe; do
            if want "$name"; then strip -o "$stage/bin/$name" "$exe"; fi
        done
fi
if want diffusion; then strip -o "$stage/bin/diffusion" "$target/release/diffusion"; fi
tar cf - -C "$stage" bin | xz -9e -T2 > .dev/bin.tar.xz
ls -l .dev/bin.tar.xz
