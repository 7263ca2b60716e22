"""PyTorch's time for the layers of `diffusion bench kernels` (forward and backward, batch 16).

Run in the venv of bench/compare_pytorch.py, with the threads of our run:
    python bench/kernels_pytorch.py --threads 2
"""

import argparse
import time

import torch
import torch.nn.functional as F


def cases(n):
    def conv(c_in, c_out, side, stride):
        layer = torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        name = f"conv 3×3 {c_in}→{c_out}, {side}×{side}" + (f", stride {stride}" if stride > 1 else "")
        return name, (n, c_in, side, side), layer

    def norm(c, side):
        layer = torch.nn.GroupNorm(16, c)
        return f"group norm (16 groups) + SiLU, {c} ch, {side}×{side}", (n, c, side, side), lambda x: F.silu(layer(x))

    return [
        conv(32, 32, 32, 1),
        conv(64, 64, 16, 1),
        conv(96, 32, 32, 1),
        conv(32, 32, 32, 2),
        conv(128, 128, 32, 1),
        conv(256, 256, 8, 1),
        norm(32, 32),
        norm(96, 32),
        (f"SiLU, 32 ch, 32×32", (n, 32, 32, 32), F.silu),
        ("attention, 256 tokens, 6 heads of 64", (n, 1, 256, 384), attention),
        ("GELU (tanh), 256 tokens × 1536", (n, 1, 256, 1536), lambda x: F.gelu(x, approximate="tanh")),
        ("linear 384→1536, 256 tokens", (n, 1, 256, 384), torch.nn.Linear(384, 1536)),
    ]


def attention(x):
    """Self-attention of x [B, 1, 256, 384] in 6 heads, as DiT-S/2's (no projections)."""
    b = x.shape[0]
    h = x.view(b, 256, 6, 64).transpose(1, 2)
    return F.scaled_dot_product_attention(h, h, h).transpose(1, 2).reshape(b, 1, 256, 384)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"PyTorch {torch.__version__}, {args.threads} threads, forward + backward, batch {args.batch}, median of {args.iters}:")
    for name, shape, layer in cases(args.batch):
        x = torch.randn(shape)
        g = torch.randn_like(layer(x))
        times = []
        for i in range(args.iters + 2):
            xr = x.clone().requires_grad_()
            start = time.perf_counter()
            (layer(xr) * g).sum().backward()
            if i >= 2:
                times.append(time.perf_counter() - start)
        times.sort()
        print(f"  {name:48} {1e3 * times[len(times) // 2]:8.2f} ms")


if __name__ == "__main__":
    main()
