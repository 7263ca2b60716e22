#!/usr/bin/env bash
# Prepares, on the build machine and before any device time is spent, everything bench/gpu.sh
# needs on a lent GPU machine (no network, no Rust toolchain there):
#   .dev/bin.tar.xz  the `diffusion` CLI, built with wgpu and cubecl's on-disk autotune cache
#                    (scripts/pack-gpu.sh; `PACK="diffusion integration cli"` adds the test
#                    binaries, 42 MB in all, which leaves no room for .whl under the device
#                    tool's 64 MiB: run the tests in a call of their own);
#   .gl/             the Vulkan loader's Debian package (the machine has NVIDIA's driver and its
#                    Vulkan ICD, not always the loader);
#   .whl/            diffusers, for bench/compare_pytorch.py, and the two packages it declares
#                    that the machine's image lacks (importlib_metadata and lazy-importer,
#                    which Python 3.12 does not import; PyTorch and the rest are there).
# The three folders are ignored through .git/info/exclude, so they travel only when carried.
# Then, with the device tool, one call that fits a 15-minute lease (machine start included):
#   run(command="CONVS_S=90 KERNELS_S=50 COMPARE_S=120 bash bench/gpu.sh convs compare",
#       carry=[".dev", ".gl", ".whl"], timeout_s=600)
# and read $OUT/convs.log, kernels-*.log (the JSON is written only by a run that finishes) and
# compare.json. Expect 6–7 minutes: the first round of `convs` tunes (about a minute a run on an
# H100), the rest reuse the cache; the limits add up to 580 s, with about 20 s of setup. Every
# step writes its log to $OUT as it goes, so a call cut short keeps what the steps measured.
# A 15-minute lease has no room for a second call: machine start, transfers and this one.
set -euo pipefail
cd "$(dirname "$0")/.."

exclude="$(git rev-parse --git-path info/exclude)"   # a worktree's .git is a file
mkdir -p "$(dirname "$exclude")"
for dir in .dev .gl .whl; do
    grep -qx "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >> "$exclude"
done

scripts/pack-gpu.sh ${PACK:-diffusion}

# Fresh folders: two versions of one wheel would stop the whole install there.
rm -rf .gl .whl

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
