//! Group normalisation (Wu & He 2018) with an optional SiLU after it, forward and backward, on
//! f32 slices `[B, C, S]` (S: the spatial positions), one (image, group) block at a time while
//! it is in cache: the statistics, then the output; backward, ∂z with its sums, then ∂x.
//!
//! For group g of image b, with its C/G channels × S positions as one block of M values:
//! x̂ = (x − μ) / √(σ² + ε) (μ, σ² the block's mean and biased variance), z = γ_c x̂ + β_c, and
//! y = z or y = silu(z). Backward, from ∂y: ∂z = ∂y (or ∂y · silu'(z)), ∂β_c = Σ ∂z,
//! ∂γ_c = Σ ∂z x̂ (sums over images and positions) and, with ∂x̂ = γ_c ∂z,
//! ∂x = (∂x̂ − mean(∂x̂) − x̂ · mean(∂x̂ x̂)) / √(σ² + ε) (means over the block).
//!
//! Blocks run in parallel; ∂γ and ∂β are summed over images in a fixed order.

use rayon::prelude::*;

use crate::lanes;
use crate::silu::{silu_and_slope, silu_value};
use crate::simd::wide;

/// What a group norm computes: the number of groups, ε, and whether SiLU follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormSpec {
    /// Groups the channels are split into (a divisor of the channel count).
    pub groups: usize,
    /// Added to the variance before the square root.
    pub epsilon: f64,
    /// Whether y = silu(z) rather than z.
    pub silu: bool,
}

/// The layout of one call: images, channels, positions per channel.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Images.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Positions per channel (H·W).
    pub positions: usize,
}

impl Layout {
    fn per_group(&self, spec: &GroupNormSpec) -> usize {
        self.channels / spec.groups
    }
}

/// y from x (`[B, C, S]`), γ and β (`[C]`).
pub fn group_norm(x: &[f32], gamma: &[f32], beta: &[f32], l: Layout, spec: GroupNormSpec) -> Vec<f32> {
    let a = &Affine::new(gamma, beta, l, spec);
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(a.block_len())
        .zip(x.par_chunks(a.block_len()))
        .enumerate()
        .for_each(|(block, (y, x))| wide!(forward_block(a: &Affine, block: usize, x: &[f32], y: &mut [f32])));
    y
}

/// The gradients (∂x, ∂γ, ∂β) of [`group_norm`] from ∂y.
pub fn group_norm_backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    dy: &[f32],
    l: Layout,
    spec: GroupNormSpec,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let a = &Affine::new(gamma, beta, l, spec);
    let len = a.block_len();
    let mut dx = vec![0.0f32; x.len()];
    // Per image and channel: Σ ∂z and Σ ∂z x̂.
    let mut sums = vec![[0.0f32; 2]; l.batch * l.channels];
    dx.par_chunks_mut(len)
        .zip(x.par_chunks(len).zip(dy.par_chunks(len)))
        .zip(sums.par_chunks_mut(a.cg))
        .enumerate()
        .for_each(|(block, ((dx, (x, dy)), sums))| {
            wide!(backward_block(a: &Affine, block: usize, x: &[f32], dy: &[f32], dx: &mut [f32], sums: &mut [[f32; 2]]))
        });
    let mut dgamma = vec![0.0f32; l.channels];
    let mut dbeta = vec![0.0f32; l.channels];
    for image in sums.chunks(l.channels) {
        for (c, [sum, sum_x]) in image.iter().enumerate() {
            dbeta[c] += sum;
            dgamma[c] += sum_x;
        }
    }
    (dx, dgamma, dbeta)
}

/// γ, β and the shape of a group norm: `cg` channels per group of `s` positions each.
struct Affine<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    spec: GroupNormSpec,
    cg: usize,
    s: usize,
}

impl<'a> Affine<'a> {
    fn new(gamma: &'a [f32], beta: &'a [f32], l: Layout, spec: GroupNormSpec) -> Self {
        let (cg, s) = (l.per_group(&spec), l.positions);
        Self {
            gamma,
            beta,
            spec,
            cg,
            s,
        }
    }

    /// Values of one (image, group) block.
    fn block_len(&self) -> usize {
        self.cg * self.s
    }

    /// (γ, β) of channel `c` of block `block`.
    #[inline(always)]
    fn channel(&self, block: usize, c: usize) -> (f32, f32) {
        let at = (block % self.spec.groups) * self.cg + c;
        (self.gamma[at], self.beta[at])
    }
}

/// Group norm (and SiLU) of the (image, group) block `x` (number `block`) into `y`.
#[inline(always)]
fn forward_block(a: &Affine, block: usize, x: &[f32], y: &mut [f32]) {
    let (mean, rstd) = moments(x, a.spec.epsilon);
    for (c, (y, x)) in y.chunks_mut(a.s).zip(x.chunks(a.s)).enumerate() {
        let (gamma, beta) = a.channel(block, c);
        let scale = gamma * rstd;
        let shift = beta - mean * scale;
        if a.spec.silu {
            y.iter_mut()
                .zip(x)
                .for_each(|(y, &x)| *y = silu_value(scale * x + shift));
        } else {
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = scale * x + shift);
        }
    }
}

/// ∂x of the (image, group) block `x` (number `block`) into `dx`, and its channels' sums
/// Σ ∂z, Σ ∂z x̂ into `sums`.
#[inline(always)]
fn backward_block(a: &Affine, block: usize, x: &[f32], dy: &[f32], dx: &mut [f32], sums: &mut [[f32; 2]]) {
    let (mean, rstd) = moments(x, a.spec.epsilon);
    let (mut m1, mut m2) = (0.0f64, 0.0f64);
    // Pass 1: ∂z into dx, and the channel sums Σ ∂z, Σ ∂z x̂.
    for (c, ((dz, x), dy)) in dx
        .chunks_mut(a.s)
        .zip(x.chunks(a.s))
        .zip(dy.chunks(a.s))
        .enumerate()
    {
        let (g, b) = a.channel(block, c);
        if a.spec.silu {
            let (scale, shift) = (g * rstd, b - g * rstd * mean);
            for ((dz, &x), &dy) in dz.iter_mut().zip(x).zip(dy) {
                *dz = dy * silu_and_slope(scale * x + shift).1;
            }
        } else {
            dz.copy_from_slice(dy);
        }
        let sum = lanes::sum(dz, |dz| dz);
        let sum_x = lanes::sum2(dz, x, |dz, x| dz * (x - mean)) * rstd as f64;
        sums[c] = [sum as f32, sum_x as f32];
        m1 += g as f64 * sum;
        m2 += g as f64 * sum_x;
    }
    let count = a.block_len() as f64;
    let (m1, m2) = ((m1 / count) as f32, (m2 / count) as f32);
    // Pass 2: ∂x = rstd (γ ∂z − m1 − x̂ m2), in place.
    for (c, (dx, x)) in dx.chunks_mut(a.s).zip(x.chunks(a.s)).enumerate() {
        let (g, _) = a.channel(block, c);
        for (dx, &x) in dx.iter_mut().zip(x) {
            let xhat = (x - mean) * rstd;
            *dx = rstd * (g * *dx - m1 - xhat * m2);
        }
    }
}

/// The mean and 1 / √(variance + ε) of a block, by two passes (the block is small enough to
/// stay in cache), accumulated in 16 lanes so that the loops vectorise.
#[inline(always)]
fn moments(x: &[f32], epsilon: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = (lanes::sum(x, |v| v) / n) as f32;
    let var = lanes::sum(x, |v| (v - mean) * (v - mean)) / n;
    (mean, (1.0 / (var + epsilon).sqrt()) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Group norm and its gradients by the definition, in f64.
    fn reference(x: &[f32], gamma: &[f32], beta: &[f32], l: Layout, spec: GroupNormSpec) -> Vec<f64> {
        let (cg, s) = (l.per_group(&spec), l.positions);
        let mut y = vec![0.0; x.len()];
        for (block, chunk) in x.chunks(cg * s).enumerate() {
            let n = chunk.len() as f64;
            let mean = chunk.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = chunk.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            for (i, &v) in chunk.iter().enumerate() {
                let c = (block % spec.groups) * cg + i / s;
                let z = gamma[c] as f64 * (v as f64 - mean) / (var + spec.epsilon).sqrt() + beta[c] as f64;
                y[block * cg * s + i] = if spec.silu { z / (1.0 + (-z).exp()) } else { z };
            }
        }
        y
    }

    fn values(n: usize, seed: f32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|k| scale * ((k as f32 + seed) * 0.7548).sin() + 0.3)
            .collect()
    }

    fn cases() -> Vec<(Layout, GroupNormSpec)> {
        let spec = |groups, silu| GroupNormSpec {
            groups,
            epsilon: 1e-5,
            silu,
        };
        vec![
            (
                Layout {
                    batch: 3,
                    channels: 8,
                    positions: 37,
                },
                spec(4, true),
            ),
            (
                Layout {
                    batch: 2,
                    channels: 6,
                    positions: 16,
                },
                spec(6, false),
            ),
            (
                Layout {
                    batch: 1,
                    channels: 4,
                    positions: 5,
                },
                spec(1, true),
            ),
        ]
    }

    #[test]
    fn forward_matches_the_definition() {
        for (l, spec) in cases() {
            let x = values(l.batch * l.channels * l.positions, 0.5, 2.0);
            let (gamma, beta) = (values(l.channels, 3.0, 1.0), values(l.channels, 7.0, 0.5));
            let want = reference(&x, &gamma, &beta, l, spec);
            let got = group_norm(&x, &gamma, &beta, l, spec);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 2e-6, "{spec:?}: {err:e}");
        }
    }

    /// The same values with one thread as with three.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        crate::assert_independent_of_threads(|| {
            cases()
                .into_iter()
                .map(|(l, spec)| {
                    let x = values(l.batch * l.channels * l.positions, 0.5, 2.0);
                    let (gamma, beta) = (values(l.channels, 3.0, 1.0), values(l.channels, 7.0, 0.5));
                    let dy = values(x.len(), 11.0, 1.0);
                    let (dx, dgamma, dbeta) = group_norm_backward(&x, &gamma, &beta, &dy, l, spec);
                    [group_norm(&x, &gamma, &beta, l, spec), dx, dgamma, dbeta]
                })
                .collect::<Vec<_>>()
        });
    }

    /// The gradients against central differences of the f64 definition of ⟨y, ∂y⟩.
    #[test]
    fn gradients_match_finite_differences() {
        for (l, spec) in cases() {
            let x = values(l.batch * l.channels * l.positions, 0.5, 2.0);
            let (gamma, beta) = (values(l.channels, 3.0, 1.0), values(l.channels, 7.0, 0.5));
            let dy = values(x.len(), 11.0, 1.0);
            let (dx, dgamma, dbeta) = group_norm_backward(&x, &gamma, &beta, &dy, l, spec);
            let objective = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
                let y = reference(x, gamma, beta, l, spec);
                y.iter().zip(&dy).map(|(y, d)| y * *d as f64).sum()
            };
            let h = 1e-3f32;
            let bump = |v: &[f32], i: usize, by: f32| {
                let mut v = v.to_vec();
                v[i] += by;
                v
            };
            for (i, got) in dx.iter().enumerate().step_by(7) {
                let fd = (objective(&bump(&x, i, h), &gamma, &beta)
                    - objective(&bump(&x, i, -h), &gamma, &beta))
                    / (2.0 * h as f64);
                assert!(
                    (*got as f64 - fd).abs() < 2e-3 * fd.abs().max(1.0),
                    "∂x[{i}] {got} vs {fd} ({spec:?})"
                );
            }
            for c in 0..l.channels {
                let fd_g = (objective(&x, &bump(&gamma, c, h), &beta)
                    - objective(&x, &bump(&gamma, c, -h), &beta))
                    / (2.0 * h as f64);
                let fd_b = (objective(&x, &gamma, &bump(&beta, c, h))
                    - objective(&x, &gamma, &bump(&beta, c, -h)))
                    / (2.0 * h as f64);
                assert!(
                    (dgamma[c] as f64 - fd_g).abs() < 2e-3 * fd_g.abs().max(1.0),
                    "∂γ[{c}] {} vs {fd_g}",
                    dgamma[c]
                );
                assert!(
                    (dbeta[c] as f64 - fd_b).abs() < 2e-3 * fd_b.abs().max(1.0),
                    "∂β[{c}] {} vs {fd_b}",
                    dbeta[c]
                );
            }
        }
    }
}
