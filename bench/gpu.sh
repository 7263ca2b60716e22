#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine with no network and no Rust toolchain:
# the U-Net's training step with burn's convolution and with ours, the dense-kernel ceiling on
# wgpu, the U-Net and DiT steps on wgpu against PyTorch CUDA
# (bench/compare_pytorch.py), then the integration and CLI test suites on wgpu.
#
# Prepare on the build machine (x86-64), from the repository root, with scripts/prepare-gpu.sh:
# it builds with the autotune cache, packs the stripped CLI (and with PACK the test binaries)
# into .dev/bin.tar.xz (scripts/pack-gpu.sh), and fetches the Vulkan loader into .gl and
# diffusers into .whl; carry the three folders to the GPU machine. Its header gives a device
# call that fits a 15-minute lease.
# The autotune cache (target/environment/ there) carries each shape's tuning from one process
# to the next: without it every run spends its first minute, and more than its warm-up steps,
# tuning.
# Each step has its own time limit so that a slow one cannot eat the others; logs go to $OUT.
# Arguments name the steps to run (default: convs ceiling compare tests cli). `convs` times the
# U-Net's batch-32 training step with burn's own (autotuned) convolution
# (DIFFUSION_CUBE_CONV=direct) and then with ours lowered to matrix products (the default),
# CONVS_ROUNDS rounds (2 by default) of the two runs, each of at most CONVS_S seconds (120 by
# default; compare the last round, whose runs find every shape tuned), then `diffusion bench
# kernels` on wgpu at batch 1 and 32 (burn's time over ours for each convolution layer,
# KERNELS_S seconds each, 60 by default). `profile` times every kernel of one U-Net and one
# DiT-S/2 training step at batch 32 through CubeCL's profiler (its per-kernel summary tables,
# xz-compressed, in $OUT/profile-*.log.xz; PROFILE_MODELS, PROFILE_WARMUP and PROFILE_S choose
# the models, warm-up steps and time limit; autotuning's own probes fill the first minute,
# CUBECL_AUTOTUNE_LEVEL=minimal shortens it). `compare` takes COMPARE_CASES (by default the
# U-Net's batch-32 steps first, whose shapes `convs` has tuned) within COMPARE_S seconds (200).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "setup"
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The test binaries name their fixtures and the CLI by the build machine's absolute paths.
root="$(pwd)"
built_at="${BUILT_AT:-/work/main}"
if [ "$root" != "$built_at" ] && [ ! -e "$built_at" ]; then mkdir -p "$(dirname "$built_at")" && ln -s "$root" "$built_at"; fi
bin=target/release
if [ -f .dev/bin.tar.xz ]; then
    mkdir -p /tmp/gpu-bin && tar xJf .dev/bin.tar.xz -C /tmp/gpu-bin
    bin=/tmp/gpu-bin/bin
    mkdir -p target/release && cp "$bin/diffusion" target/release/diffusion
fi
timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
export XDG_RUNTIME_DIR=/tmp

steps="${*:-convs ceiling compare tests cli}"
want() { [[ " $steps " == *" $1 "* ]]; }

if want convs; then
step "U-Net on wgpu: burn's convolution against the lowered one"
for round in $(seq "${CONVS_ROUNDS:-2}"); do
    for conv in direct lowered; do
        printf '%s, round %s: ' "$conv" "$round" | tee -a "$OUT/convs.log"
        DIFFUSION_CUBE_CONV=$conv timeout "${CONVS_S:-120}" "$bin/diffusion" bench train \
            --model ddpm-cifar10 --batch 32 --warmup 2 --iters 3 --backend wgpu 2>&1 \
            | tail -n 2 | tee -a "$OUT/convs.log"
        # 124: cut by its time limit (still tuning, or too slow), rather than failed.
        echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/convs.log"
    done
done
# Layer by layer, both convolutions in one process (one autotuning), at the batch of one-image
# sampling and at the training batch: whether the lowering also pays where launches dominate.
for batch in 1 32; do
    timeout "${KERNELS_S:-60}" "$bin/diffusion" bench kernels --backend wgpu --batch "$batch" --iters 5 \
        --json "$OUT/kernels-$batch.json" 2>&1 | tee "$OUT/kernels-$batch.log" | grep -E "batch|conv"
done
fi

if want ceiling; then
step "dense-kernel ceiling on wgpu"
timeout 45 "$bin/diffusion" bench matmul --size 4096 --iters 10 --backend wgpu 2>&1 | tee "$OUT/matmul.log"
python3 - <<'PY' 2>&1 | tee -a "$OUT/matmul.log"
import time, torch
for tf32 in (False, True):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a, b = torch.randn(4096, 4096, device="cuda"), torch.randn(4096, 4096, device="cuda")
    for _ in range(3): a @ b
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20): a @ b
    torch.cuda.synchronize(); s = (time.perf_counter() - t) / 20
    print(f"PyTorch 4096^2 f32 matmul (tf32={tf32}): {s * 1e3:.2f} ms, {2 * 4096**3 / s / 1e12:.1f} TFLOP/s")
PY
fi

if want profile; then
step "per-kernel profile of training steps on wgpu"
prof="$(mktemp -d)"
exe="$(realpath "$bin/diffusion")"
for model in ${PROFILE_MODELS:-ddpm-cifar10 dit-s-2}; do
    extra=""; [ "$model" = dit-s-2 ] && extra="--in-channels 3 --classes 10"
    # Run from $prof for its cubecl.toml, but keep the repository's autotune cache: outside a
    # cargo workspace cubecl would open a fresh one under ~/.cache and tune every shape again.
    printf '[profiling.logger]\nlevel = "basic"\nfile = "%s/%s.log"\nappend = false\n\n[environment]\npath = { directory = "%s/target/environment" }\n' \
        "$prof" "$model" "$root" > "$prof/cubecl.toml"
    (cd "$prof" && timeout "${PROFILE_S:-60}" "$exe" bench train --model "$model" $extra \
        --batch 32 --warmup "${PROFILE_WARMUP:-2}" --iters 1 --backend wgpu 2>&1 | tee "$OUT/profile-$model.txt")
    [ -f "$prof/$model.log" ] && { xz -T0 -c "$prof/$model.log" > "$OUT/profile-$model.log.xz" || gzip -c "$prof/$model.log" > "$OUT/profile-$model.log.gz"; }
done
fi

if want compare; then
step "U-Net and DiT steps: wgpu against PyTorch CUDA"
timeout "${COMPARE_S:-200}" python3 bench/compare_pytorch.py --binary "$bin/diffusion" --backend wgpu --device cuda \
    --iters 10 --warmup 3 --rounds 1 --cases ${COMPARE_CASES:-unet-train-32 unet-sample-32 unet-train-8 dit-train-32} \
    --out "$OUT/compare.json" 2>&1 | tee "$OUT/compare.log"
fi

packed() { [ -x "$bin/$1" ] || { echo "$1 was not packed (scripts/pack-gpu.sh $1)"; false; }; }
if want tests && packed integration; then
step "integration tests on wgpu"
DIFFUSION_BACKEND=wgpu timeout "${TESTS_S:-210}" "$bin/integration" 2>&1 | tee "$OUT/tests-integration.log" | tail -n 40
fi
if want cli && packed cli; then
step "CLI tests on wgpu"
DIFFUSION_BACKEND=wgpu timeout "${CLI_S:-90}" "$bin/cli" 2>&1 | tee "$OUT/tests-cli.log" | tail -n 20
fi
step "done"
