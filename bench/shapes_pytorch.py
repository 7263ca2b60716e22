"""A PyTorch / diffusers reference run of experiments/configs/shapes.toml's recipe (by default)
and of the recipes tried before it.

Purpose: tell whether blurry samples from our Rust `shapes` experiment are a limit of the
training budget (PyTorch is just as blurry after the same steps) or a bug on our side
(PyTorch draws recognisable shapes and we don't), and try recipes at PyTorch's step speed
before a Rust run (docs/experiments.md lists what was tried).

It reproduces, as closely as a short script can:
  data       crates/data/src/shapes.rs: one coloured upright disc / square / triangle per 32x32 image,
             radius r = size * (0.25 + 0.15 u), 4x4 supersampled edges, the 10-colour palette,
             shape colour != background, label 0 disc / 1 square / 2 triangle. numpy's RNG
             replaces ChaCha12 (same distribution, not the same images). 20000 training images
             in [-1, 1], random horizontal flips.
  model      diffusers UNet2DModel with the ddpm-cifar10 preset (crates/backbones/src/presets.rs,
             scripts/fixtures/backbones.py DDPM_CIFAR10_32) narrowed as shapes.toml says:
             channels (32, 64, 64), attention at level 2, 1 layer per block, 16 groups, no
             dropout. Our count is 1,113,955 parameters (+ 4 x 128 for the class table of the
             class-conditional EDM recipe: 3 shapes and the null label); the script checks it.
  training   batch 32, AdamW(0.9, 0.999, eps 1e-8, weight decay 0), lr 1e-3 with 100 linear
             warm-up steps then cosine to 0 at --steps (TrainConfig::lr_at), grad-norm clip 1.0,
             EMA with decay min(0.999, 1 - (1 + step)^(-2/3)) (EmaSchedule::Warmup).
             --recipe edm (shapes.toml): EDM preconditioning (sigma_data 0.5, c_noise =
             ln(sigma) / 4), ln sigma ~ N(--p-mean 0, --p-std 1.2 ^2), lambda-weighted loss
             (Karras et al. 2022), conditioned on the shape with labels dropped to the null
             label 3 with probability 0.1 (--unconditional: no labels).
             --recipe ddpm (unconditional): linear betas 1e-4..0.02, T = 1000,
             epsilon-prediction MSE (L_simple).
  sampling   64 samples from the EMA weights, sample i of class i mod 3, clipped to [-1, 1]:
             ddpm: diffusers DDPMScheduler (linear, 1000 steps), set_timesteps(100), ancestral;
             edm: Heun on 18 Karras sigmas (0.002 .. 80, rho 7), classifier-free guidance at
             each --guidance scale (default 3). One 8x8 grid PNG per scale.

Run (CPU, 2 threads):
  /work/venv/bin/python bench/shapes_pytorch.py --steps 1000 --guidance 1 3   # shapes.toml's recipe
  /work/venv/bin/python bench/shapes_pytorch.py --unconditional --p-mean -1.2  # the previous default
  /work/venv/bin/python bench/shapes_pytorch.py --recipe ddpm                  # the DDPM recipe
Writes {--out or /tmp/shapes_pytorch_{recipe}_{steps}}[_w{scale}].png and /tmp/shapes_real.png
(64 training images).
"""

import argparse
import os
import sys
import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "fixtures"))
from backbones import DDPM_CIFAR10_32  # noqa: E402

# The palette of crates/data/src/shapes.rs (RGB).
PALETTE = np.array(
    [
        [230, 57, 70],
        [244, 162, 97],
        [233, 196, 106],
        [42, 157, 143],
        [38, 70, 83],
        [69, 123, 157],
        [168, 218, 220],
        [241, 250, 238],
        [131, 56, 236],
        [255, 190, 11],
    ],
    dtype=np.float64,
)

OUR_PARAMETERS = 1_113_955
NULL_LABEL = 3  # after the 3 shapes: the label of classifier-free guidance's unconditional model
SIGMA_DATA = 0.5


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
def shape_image(rng, size=32):
    """One image as shapes.rs draws it: ([3, size, size] uint8, label 0 disc/1 square/2 triangle)."""

    def pick(n):
        return min(int(rng.random() * n), n - 1)

    kind = pick(3)
    background = pick(len(PALETTE))
    colour = pick(len(PALETTE) - 1)
    if colour >= background:
        colour += 1
    s = float(size)
    r = s * (0.25 + 0.15 * rng.random())
    cx = r + (s - 2.0 * r) * rng.random()
    cy = r + (s - 2.0 * r) * rng.random()

    # 4x4 sub-pixel sample points, at (x + (sx + 0.5) / 4, y + (sy + 0.5) / 4).
    sub = (np.arange(4 * size) + 0.5) / 4.0
    px, py = np.meshgrid(sub, sub)  # [4 size, 4 size], indexed [y, x]
    dx, dy = px - cx, py - cy
    if kind == 0:
        inside = dx * dx + dy * dy <= r * r
    elif kind == 1:  # axis-aligned
        inside = (np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8)
    else:  # upright equilateral triangle with circumradius r: inside all three edges
        inside = np.ones_like(dx, dtype=bool)
        for k in range(3):
            t = math.pi / 2 + 2.0 * math.pi * k / 3.0
            inside &= dx * math.cos(t) + dy * math.sin(t) <= r * 0.5
    w = inside.reshape(size, 4, size, 4).sum(axis=(1, 3)) / 16.0  # coverage per pixel
    img = w[None] * PALETTE[colour][:, None, None] + (1.0 - w[None]) * PALETTE[background][:, None, None]
    # Rust's f64::round rounds halves away from zero (numpy's np.round to even).
    return np.floor(img + 0.5).astype(np.uint8), kind


def shapes(n, seed, size=32):
    """n images [n, 3, size, size] uint8 and their labels [n]."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((n, 3, size, size), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        pixels[i], labels[i] = shape_image(rng, size)
    return pixels, labels


def save_grid(images, path, nrow=8):
    """images: [N, 3, H, W] floats in [-1, 1] -> an nrow-wide grid PNG with 2-pixel gaps."""
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    pad = 2
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        y, x = divmod(i, nrow)
        grid[pad + y * (h + pad) : pad + y * (h + pad) + h, pad + x * (w + pad) : pad + x * (w + pad) + w] = img.transpose(1, 2, 0)
    Image.fromarray(grid).save(path)


# ------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------
def make_model(class_conditional=False):
    # google/ddpm-cifar10-32's configuration as the backbone fixtures use it (additive time
    # conditioning, one attention head, one-sided downsampling padding, sin-first embedding
    # with freq_shift=1, norm_eps 1e-6, mid-block attention), narrowed as shapes.toml says.
    config = dict(DDPM_CIFAR10_32)
    config.update(
        sample_size=32,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=16,
        dropout=0.0,
    )
    if class_conditional:
        config.update(num_class_embeds=NULL_LABEL + 1)
    return UNet2DModel(**config)


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------
def lr_at(step, steps, lr=1e-3, warmup=100):
    """TrainConfig::lr_at: linear warm-up reaching lr at step warmup-1, then cosine to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay(step, max_decay=0.999, power=2.0 / 3.0):
    """EmaSchedule::Warmup (inv_gamma 1, min 0): the decay applied after 0-based step `step`."""
    return min(max_decay, max(0.0, 1.0 - (1.0 + step) ** (-power)))


def edm_denoiser(net, x, sigma, labels):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), EDM's preconditioning (Karras et al. 2022, Table 1)."""
    s = sigma.view(-1, 1, 1, 1)
    c_in = 1.0 / (s * s + SIGMA_DATA**2).sqrt()
    c_skip = SIGMA_DATA**2 / (s * s + SIGMA_DATA**2)
    c_out = s * SIGMA_DATA / (s * s + SIGMA_DATA**2).sqrt()
    return c_skip * x + c_out * net(c_in * x, sigma.log() / 4.0, class_labels=labels).sample


def karras_sigmas(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def heun_edm(denoise, x, sigmas):
    """EDM's deterministic Heun sampler (Algorithm 1): Euler to sigma = 0 at the last step."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            x_next = x + (s_next - s) * 0.5 * (d + (x_next - denoise(x_next, s_next)) / s_next)
        x = x_next
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=["ddpm", "edm"], default="edm")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--p-mean", type=float, default=0.0, help="EDM: mean of ln sigma in training")
    ap.add_argument("--p-std", type=float, default=1.2, help="EDM: std of ln sigma in training")
    ap.add_argument("--unconditional", action="store_true", help="EDM: no class conditioning")
    ap.add_argument("--class-dropout", type=float, default=0.1)
    ap.add_argument("--guidance", type=float, nargs="+", default=[3.0], help="EDM: CFG scales to sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="grid path prefix (default /tmp/shapes_pytorch_{recipe}_{steps})")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out or f"/tmp/shapes_pytorch_{args.recipe}_{args.steps}"

    t0 = time.time()
    pixels, labels = shapes(20000, args.seed)
    data = torch.from_numpy(pixels).float() / 127.5 - 1.0
    labels = torch.from_numpy(labels)
    print(f"data: {tuple(data.shape)} in {time.time() - t0:.1f} s")
    save_grid(data[:64], "/tmp/shapes_real.png")

    cond = args.recipe == "edm" and not args.unconditional
    model = make_model(cond)
    n_params = sum(p.numel() for p in model.parameters())
    ours = OUR_PARAMETERS + (4 * 128 if cond else 0)  # a 128-wide row per label
    print(f"parameters: {n_params:,} (ours {ours:,})")
    assert n_params == ours, "the network differs from experiments/configs/shapes.toml's"
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    # DDPM forward process: linear betas, T = 1000.
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    alpha_bar = torch.cumprod(1.0 - betas, 0)
    sqrt_ab = alpha_bar.sqrt().float()
    sqrt_1mab = (1.0 - alpha_bar).sqrt().float()

    batch = 32
    gen = torch.Generator().manual_seed(args.seed)
    order, pos = torch.randperm(len(data), generator=gen), 0
    losses = []
    t_train = time.time()
    model.train()
    for step in range(args.steps):
        if pos + batch > len(order):  # a new epoch, reshuffled
            order, pos = torch.randperm(len(data), generator=gen), 0
        index = order[pos : pos + batch]
        pos += batch
        x0 = data[index]
        flip = torch.rand(batch, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        if args.recipe == "ddpm":
            t = torch.randint(0, T, (batch,), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            xt = sqrt_ab[t][:, None, None, None] * x0 + sqrt_1mab[t][:, None, None, None] * eps
            loss = F.mse_loss(model(xt, t).sample, eps)
        else:
            y = labels[index].clone()
            y[torch.rand(batch, generator=gen) < args.class_dropout] = NULL_LABEL
            sigma = (torch.randn(batch, generator=gen) * args.p_std + args.p_mean).exp()
            noisy = x0 + torch.randn(x0.shape, generator=gen) * sigma.view(-1, 1, 1, 1)
            weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
            error = (edm_denoiser(model, noisy, sigma, y if cond else None) - x0) ** 2
            loss = (weight.view(-1, 1, 1, 1) * error).mean()

        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = ema_decay(step)
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(p, alpha=1.0 - d)

        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            el = time.time() - t_train
            print(
                f"step {step + 1:5d}  loss {np.mean(losses[-100:]):.4f}  lr {lr_at(step, args.steps):.2e}  "
                f"{el:7.1f} s  {el / (step + 1):.3f} s/step",
                flush=True,
            )
    train_s = time.time() - t_train

    t_sample = time.time()
    ema.eval()
    written = []
    with torch.no_grad():
        if args.recipe == "ddpm":
            # Ancestral DDPM sampling with the EMA weights: 100 of the 1000 steps.
            sched = DDPMScheduler(
                num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=True
            )
            sched.set_timesteps(100)
            sgen = torch.Generator().manual_seed(args.seed + 1)
            x = torch.randn((64, 3, 32, 32), generator=sgen)
            for tt in sched.timesteps:
                x = sched.step(ema(x, tt).sample, tt, x, generator=sgen).prev_sample
            written.append(f"{out}.png")
            save_grid(x.clamp(-1, 1), written[-1])
        else:
            sigmas = karras_sigmas(18)
            y = torch.arange(64) % 3
            null = torch.full((64,), NULL_LABEL)
            for scale in args.guidance if cond else [1.0]:
                def denoise(x, s):
                    sigma = torch.full((64,), float(s))
                    if not cond:
                        return edm_denoiser(ema, x.float(), sigma, None).double()
                    c = edm_denoiser(ema, x.float(), sigma, y)
                    u = edm_denoiser(ema, x.float(), sigma, null)
                    return (u + scale * (c - u)).double()

                sgen = torch.Generator().manual_seed(args.seed + 1)
                x = torch.randn((64, 3, 32, 32), generator=sgen, dtype=torch.float64) * sigmas[0]
                x = heun_edm(denoise, x, sigmas).float()
                written.append(f"{out}_w{scale:g}.png" if cond else f"{out}.png")
                save_grid(x.clamp(-1, 1), written[-1])
    sample_s = time.time() - t_sample
    print(f"train {train_s:.1f} s ({train_s / args.steps:.3f} s/step), sample {sample_s:.1f} s, total {time.time() - t0:.1f} s")
    print(f"wrote {', '.join(written)} and /tmp/shapes_real.png")


if __name__ == "__main__":
    main()
