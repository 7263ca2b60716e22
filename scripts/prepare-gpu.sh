#!/usr/bin/env bash
# Prepares, on the build machine and before any device time is spent, everything bench/gpu.sh
# needs on a lent GPU machine (no network, no Rust toolchain there):
#   .dev/bin.tar.xz  the `diffusion` CLI, built with cubecl's on-disk autotune cache
#                    (scripts/pack-gpu.sh; `PACK="diffusion integration cli"` adds the test
#                    binaries, 42 MB in all, which leaves no room for .whl under the device
#                    tool's 64 MiB: run the tests in a call of their own);
#   .gl/             the Vulkan loader's Debian package (the machine has NVIDIA's driver and its
#                    Vulkan ICD, not always the loader);
#   .whl/            diffusers and the two packages it needs that the machine's image lacks
#                    (PyTorch and the rest are there), for bench/compare_pytorch.py.
# The three folders are ignored through .git/info/exclude, so they travel only when carried.
# Then, with the device tool, one call that fits a 15-minute lease (machine start included):
#   run(command="CONVS_S=100 KERNELS_S=30 COMPARE_S=150 bash bench/gpu.sh convs compare",
#       carry=[".dev", ".gl", ".whl"], timeout_s=600)
# and read $OUT/convs.log, kernels-*.json and compare.json. Expect about 7 minutes: the first
# round of `convs` tunes (about a minute a run on an H100), the rest reuse the cache. Every step
# writes its log to $OUT as it goes, so a call cut at 600 s keeps what the steps measured.
set -euo pipefail
cd "$(dirname "$0")/.."

for dir in .dev .gl .whl; do
    grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude
done

cargo build --release --workspace --all-targets --features diffusion-cli/autotune-cache
scripts/pack-gpu.sh ${PACK:-diffusion}

# The GPU machine's processor is x86-64: ask apt for that architecture whatever this one's is.
mkdir -p .gl /tmp/apt-amd64/partial
apt_amd64=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/apt-amd64)
apt-get "${apt_amd64[@]}" update -qq
(cd .gl && apt-get "${apt_amd64[@]}" download libvulkan1)

# The versions of the reference figures in docs/performance.md; the machine runs Python 3.12.
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0
du -sh .dev .gl .whl
