# diffusion-lab tasks. Install just with `cargo install just`.
# Every cargo command here builds the whole workspace with one feature set, so switching
# between them never rebuilds burn.

set positional-arguments
set shell := ["bash", "-uc"]

# List the recipes.
default:
    @just --list

# Run an experiment: `just exp toy2d --set train.steps=500`; without a name, list them.
exp name="" *args:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -z "{{name}}" ]; then
        echo "experiments (configs in experiments/configs/):"
        for f in experiments/configs/*.toml; do
            n=$(basename "$f" .toml)
            printf '  %-16s %s\n' "$n" "$(head -n 1 "$f" | sed 's/^# *//')"
        done
        exit 0
    fi
    shift
    cargo run --release --bin "{{name}}" -- "$@"

# Run the whole test suite on flex (the README's test command).
test *args:
    cargo test --release --workspace "$@"

# Run the same test binaries on another backend: ndarray or wgpu (no recompilation).
test-backend name *args:
    DIFFUSION_BACKEND={{name}} cargo test --release --workspace "${@:2}"

# Formatting, lints and documentation, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps

# Type-check the CUDA backend without downloading its LLVM bundle.
check-cuda:
    DOCS_RS=1 cargo check --release --workspace --features diffusion-tests/cuda

# Regenerate the reference fixtures (needs the venv described in scripts/fixtures/README.md;
# improved_diffusion.py and score_sde.py also need checkouts of the original repositories,
# named by IMPROVED_DIFFUSION, SCORE_SDE, NCSN and NCSNV2 as their headers say).
fixtures python="python3":
    {{python}} scripts/fixtures/schedules.py
    {{python}} scripts/fixtures/samplers.py
    {{python}} scripts/fixtures/diffusers_golden.py
    {{python}} scripts/fixtures/backbones.py
    {{python}} scripts/fixtures/improved_diffusion.py
    {{python}} scripts/fixtures/score_sde.py
    {{python}} scripts/fixtures/flow.py
    {{python}} scripts/fixtures/inception.py
    {{python}} scripts/fixtures/fid.py
    {{python}} scripts/fixtures/guidance.py
    {{python}} scripts/fixtures/edm.py

# Benchmarks (docs/performance.md): the dense-kernel ceiling, U-Net and DiT training steps,
# U-Net sampling throughput and each sampler's per-step overhead; medians, images/s, GFLOP/s,
# peak memory. `just bench wgpu` runs them on a GPU.
bench backend="flex":
    cargo build --release --workspace
    ./target/release/diffusion bench matmul --size 4096 --iters 3 --backend {{backend}}
    ./target/release/diffusion bench train --model ddpm-cifar10 --batch 8 --backend {{backend}}
    ./target/release/diffusion bench train --model ddpm-cifar10 --batch 32 --iters 3 --backend {{backend}}
    ./target/release/diffusion bench train --model dit-s-2 --in-channels 3 --classes 10 --batch 32 --iters 3 --backend {{backend}}
    ./target/release/diffusion bench sample --model ddpm-cifar10 --batch 32 --iters 3 --backend {{backend}}
    ./target/release/diffusion bench samplers --backend {{backend}}
    ./target/release/diffusion bench kernels --backend {{backend}}

# Our step times against PyTorch's on this machine (needs the venv bench/compare_pytorch.py names).
bench-pytorch python="/work/venv/bin/python":
    cargo build --release --workspace
    {{python}} bench/compare_pytorch.py --threads 2 --rounds 2 --out bench/results.json

# Everything CI runs.
ci:
    .ci/run
