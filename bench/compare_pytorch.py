"""Time the same architectures in PyTorch and in diffusion-lab, alternating, on this machine.

Cases (batch, what):
  unet-train-8 / unet-train-32   diffusers UNet2DModel with google/ddpm-cifar10-32's config
                                 (35,746,307 parameters = our preset ddpm-cifar10): forward,
                                 backward of an MSE, AdamW step
  unet-sample-32                 the same network's forward pass under torch.no_grad()
  dit-train-32                   DiT-S/2 on 32x32x3 images, 10 classes, learned sigma (6 output
                                 channels): diffusers' DiTTransformer2DModel, or with --dit-repo
                                 the original facebookresearch/DiT models.py (needs timm)

Ours: `diffusion bench train|sample --model ... --json ...` (the release binary), run as a
subprocess with RAYON_NUM_THREADS set to the same thread count as torch.set_num_threads.
Each round runs every case in both implementations, alternating which goes first; the medians
over rounds of each side's median step time are compared. Prints ours / PyTorch (below 1 means
we are faster) and writes the numbers as JSON.

Venv:  python3 -m venv /work/venv && /work/venv/bin/pip install torch diffusers
       (optional: timm, and a checkout of facebookresearch/DiT for --dit-repo)
Run:   cargo build --release --workspace
       /work/venv/bin/python bench/compare_pytorch.py --threads 2 --rounds 3 --out bench/results.json
GPU:   python3 bench/compare_pytorch.py --backend wgpu --device cuda --iters 10 --warmup 3
       (PyTorch computes in strict f32 unless --tf32, as ours does; bench/gpu.sh runs it on a GPU machine)
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

# google/ddpm-cifar10-32's UNet2DModel configuration, as the backbone fixtures use it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "fixtures"))
from backbones import DDPM_CIFAR10_32  # noqa: E402

CASES = {
    "unet-train-8": ("unet", "train", 8),
    "unet-train-32": ("unet", "train", 32),
    "unet-sample-32": ("unet", "sample", 32),
    "dit-train-32": ("dit", "train", 32),
}


def unet():
    from diffusers import UNet2DModel
    m = UNet2DModel(**DDPM_CIFAR10_32)
    n = sum(p.numel() for p in m.parameters())
    assert n == 35_746_307, n
    return m, lambda x, t, y: m(x, t).sample


def dit(repo):
    if repo:
        sys.path.insert(0, repo)
        from models import DiT_S_2  # the original implementation
        m = DiT_S_2(input_size=32, in_channels=3, num_classes=10, learn_sigma=True)
        return m, lambda x, t, y: m(x, t, y)
    from diffusers import DiTTransformer2DModel
    m = DiTTransformer2DModel(
        num_attention_heads=6, attention_head_dim=64, in_channels=3, out_channels=6, num_layers=12,
        sample_size=32, patch_size=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero",
    )
    return m, lambda x, t, y: m(x, timestep=t, class_labels=y).sample


def forward_flops(model, fwd, batch):
    from torch.utils.flop_counter import FlopCounterMode
    x, t, y = inputs(batch)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fwd(x, t, y)
    return counter.get_total_flops() / batch


def inputs(batch, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x.to(device), t.to(device), y.to(device)


def sync(device):
    """Waits for queued GPU work, so that a host clock times the step, not its launch."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def torch_times(kind, what, batch, iters, warmup, dit_repo, device):
    model, fwd = unet() if kind == "unet" else dit(dit_repo)
    model.to(device)
    x, t, y = inputs(batch, device)
    if what == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        target = torch.full_like(x, 0.1)

        def step():
            out = fwd(x, t, y)[:, :3]
            loss = torch.nn.functional.mse_loss(out, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.no_grad():
                fwd(x, t, y)
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def our_times(binary, kind, what, batch, iters, warmup, threads, backend):
    model = "ddpm-cifar10" if kind == "unet" else "dit-s-2"
    extra = ["--in-channels", "3", "--classes", "10"] if kind == "dit" else []
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [binary, "bench", what, "--model", model, "--batch", str(batch), "--iters", str(iters),
               "--warmup", str(warmup), "--backend", backend, "--json", f.name] + extra
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(f.name) as r:
            return json.load(r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/diffusion")
    ap.add_argument("--backend", default="flex")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--dit-repo", default=None, help="a checkout of facebookresearch/DiT (default: diffusers' DiT)")
    ap.add_argument("--device", default="cpu", help="PyTorch's device: cpu, or cuda (pair with --backend wgpu|cuda)")
    ap.add_argument("--tf32", action="store_true",
                    help="let cuDNN and cuBLAS use TF32 for f32 work (off by default: ours computes in f32)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.manual_seed(0)

    flops = {"unet": forward_flops(*unet(), 2), "dit": forward_flops(*dit(args.dit_repo), 2)}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} threads"
    print(f"PyTorch {torch.__version__} on {where} (ours: --backend {args.backend}); FlopCounterMode forward GFLOP/image: "
          f"U-Net {flops['unet'] / 1e9:.2f}, DiT-S/2 {flops['dit'] / 1e9:.2f}", flush=True)
    results = {}
    for name in args.cases:
        kind, what, batch = CASES[name]
        ours, theirs = [], []
        for r in range(args.rounds):
            order = ["ours", "torch"] if r % 2 == 0 else ["torch", "ours"]
            for side in order:
                if side == "ours":
                    rec = our_times(args.binary, kind, what, batch, args.iters, args.warmup, args.threads, args.backend)
                    ours.append(rec["median_s"])
                else:
                    t = torch_times(kind, what, batch, args.iters, args.warmup, args.dit_repo, args.device)
                    theirs.append(statistics.median(t))
            print(f"  {name} round {r + 1}: ours {ours[-1]:.3f} s, PyTorch {theirs[-1]:.3f} s", flush=True)
        o, p = statistics.median(ours), statistics.median(theirs)
        gflop = flops[kind] * (3 if what == "train" else 1) * batch / 1e9
        results[name] = dict(ours_s=o, pytorch_s=p, ratio=o / p, ours_rounds=ours, pytorch_rounds=theirs,
                             ours_gflops=gflop / o, pytorch_gflops=gflop / p)
        print(f"{name}: ours {o:.3f} s/step, PyTorch {p:.3f} s/step, ours / PyTorch = {o / p:.2f} "
              f"({gflop / o:.0f} vs {gflop / p:.0f} GFLOP/s)", flush=True)
        write(args, flops, results)  # after every case, so that a run cut short keeps what it measured


def write(args, flops, results):
    meta = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(), torch=torch.__version__,
                threads=args.threads, backend=args.backend, torch_device=args.device, tf32=args.tf32,
                gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None, iters=args.iters, rounds=args.rounds,
                forward_gflop_per_image={k: v / 1e9 for k, v in flops.items()})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=2)


if __name__ == "__main__":
    main()
