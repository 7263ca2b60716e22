//! Layer norm without affine parameters, modulated per image: DiT's adaLN (Peebles & Xie 2023,
//! §3.2; Perez et al. 2018's FiLM on a layer norm),
//!
//! y = x̂ (1 + scale_b) + shift_b,  x̂ = (x − μ) / √(σ² + ε),
//!
//! with μ and σ² the mean and variance over the D features of each token, and `shift`, `scale`
//! one D-vector per image. Backward, with ∂x̂ = ∂y (1 + scale_b):
//!
//! - ∂shift_b = Σ_tokens ∂y,  ∂scale_b = Σ_tokens ∂y ⊙ x̂,
//! - ∂x = (∂x̂ − mean(∂x̂) − x̂ mean(∂x̂ ⊙ x̂)) / √(σ² + ε), per token.
//!
//! One token at a time while it is in cache, images in parallel; burn's composition makes about
//! ten passes over the activations forward and twenty backward, and keeps their intermediates.

use rayon::prelude::*;

use crate::lanes;
use crate::simd::wide;

/// The shape of a modulated layer norm: `batch` images of `tokens` tokens of `features`
/// features, and ε.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormSpec {
    /// Images (B).
    pub batch: usize,
    /// Tokens per image (N).
    pub tokens: usize,
    /// Features per token (D).
    pub features: usize,
    /// ε, added to the variance.
    pub epsilon: f64,
}

/// y `[B, N, D]` from x `[B, N, D]`, shift and scale `[B, D]`.
pub fn modulated_layer_norm(x: &[f32], shift: &[f32], scale: &[f32], s: &LayerNormSpec) -> Vec<f32> {
    let (n, d) = (s.tokens, s.features);
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(n * d)
        .enumerate()
        .for_each(|(b, y)| wide!(forward_image(x: &[f32], shift: &[f32], scale: &[f32], s: &LayerNormSpec, b: usize, y: &mut [f32])));
    y
}

/// (∂x, ∂shift, ∂scale) of [`modulated_layer_norm`] from ∂y.
pub fn modulated_layer_norm_backward(
    x: &[f32],
    scale: &[f32],
    grad: &[f32],
    s: &LayerNormSpec,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, d) = (s.tokens, s.features);
    let mut dx = vec![0.0; x.len()];
    let (mut dshift, mut dscale) = (vec![0.0; s.batch * d], vec![0.0; s.batch * d]);
    dx.par_chunks_mut(n * d)
        .zip(dshift.par_chunks_mut(d).zip(dscale.par_chunks_mut(d)))
        .enumerate()
        .for_each(|(b, (dx, (dshift, dscale)))| {
            let (x, grad) = (&x[b * n * d..][..n * d], &grad[b * n * d..][..n * d]);
            let scale = &scale[b * d..][..d];
            wide!(backward_image(x: &[f32], scale: &[f32], grad: &[f32], s: &LayerNormSpec, dx: &mut [f32], dshift: &mut [f32], dscale: &mut [f32]))
        });
    (dx, dshift, dscale)
}

/// The modulated layer norm of image `b`'s tokens into `y`.
#[inline(always)]
fn forward_image(x: &[f32], shift: &[f32], scale: &[f32], s: &LayerNormSpec, b: usize, y: &mut [f32]) {
    let (n, d) = (s.tokens, s.features);
    let (shift, scale) = (&shift[b * d..(b + 1) * d], &scale[b * d..(b + 1) * d]);
    for (y, x) in y.chunks_mut(d).zip(x[b * n * d..].chunks(d)) {
        let (mean, rstd) = moments(x, s.epsilon);
        for (((y, &x), &shift), &scale) in y.iter_mut().zip(x).zip(shift).zip(scale) {
            *y = (x - mean) * rstd * (1.0 + scale) + shift;
        }
    }
}

/// ∂x of one image's tokens `x` (with its `scale` and ∂y `grad`) into `dx`, and its ∂shift,
/// ∂scale.
#[inline(always)]
fn backward_image(
    x: &[f32],
    scale: &[f32],
    grad: &[f32],
    s: &LayerNormSpec,
    dx: &mut [f32],
    dshift: &mut [f32],
    dscale: &mut [f32],
) {
    let d = s.features;
    // Per-feature sums over the tokens in f64, so that 256 tokens lose nothing.
    let (mut sum_g, mut sum_gx) = (vec![0.0f64; d], vec![0.0f64; d]);
    let (mut xhat, mut dxhat) = (vec![0.0f32; d], vec![0.0f32; d]);
    for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(grad.chunks(d)) {
        let (mean, rstd) = moments(x, s.epsilon);
        for j in 0..d {
            xhat[j] = (x[j] - mean) * rstd;
            sum_g[j] += g[j] as f64;
            sum_gx[j] += (g[j] * xhat[j]) as f64;
            dxhat[j] = g[j] * (1.0 + scale[j]);
        }
        let m1 = (lanes::sum(&dxhat, |v| v) / d as f64) as f32;
        let m2 = (lanes::sum2(&dxhat, &xhat, |g, h| g * h) / d as f64) as f32;
        for ((dx, &dxh), &xh) in dx.iter_mut().zip(&dxhat).zip(&xhat) {
            *dx = (dxh - m1 - xh * m2) * rstd;
        }
    }
    for j in 0..d {
        dshift[j] = sum_g[j] as f32;
        dscale[j] = sum_gx[j] as f32;
    }
}

/// (μ, 1/√(σ² + ε)) of one token's features, with the variance as the mean squared deviation.
#[inline(always)]
fn moments(x: &[f32], epsilon: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = lanes::sum(x, |v| v) / n;
    let m = mean as f32;
    let var = lanes::sum(x, |v| (v - m) * (v - m)) / n;
    (m, (1.0 / (var + epsilon).sqrt()) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: LayerNormSpec = LayerNormSpec {
        batch: 2,
        tokens: 3,
        features: 20,
        epsilon: 1e-6,
    };

    fn values(len: usize, seed: f32, offset: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * seed).sin() * 2.0 + offset).collect()
    }

    fn inputs() -> [Vec<f32>; 3] {
        let (b, n, d) = (SPEC.batch, SPEC.tokens, SPEC.features);
        // An offset of 5 in x, so that the centring matters.
        [
            values(b * n * d, 0.37, 5.0),
            values(b * d, 0.91, 0.0),
            values(b * d, 1.73, 0.0),
        ]
    }

    /// The definition in f64.
    fn reference(x: &[f32], shift: &[f32], scale: &[f32], s: &LayerNormSpec) -> Vec<f64> {
        let (n, d) = (s.tokens, s.features);
        let mut y = vec![0.0; x.len()];
        for b in 0..s.batch {
            for t in 0..n {
                let row: Vec<f64> = x[(b * n + t) * d..][..d].iter().map(|&v| v as f64).collect();
                let mean = row.iter().sum::<f64>() / d as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
                for j in 0..d {
                    let xhat = (row[j] - mean) / (var + s.epsilon).sqrt();
                    y[(b * n + t) * d + j] = xhat * (1.0 + scale[b * d + j] as f64) + shift[b * d + j] as f64;
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_the_definition() {
        let [x, shift, scale] = inputs();
        let y = modulated_layer_norm(&x, &shift, &scale, &SPEC);
        for (a, b) in y.iter().zip(reference(&x, &shift, &scale, &SPEC)) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} against {b}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let inputs = inputs();
        let [x, _, scale] = &inputs;
        let grad = values(x.len(), 2.31, 0.0);
        let (dx, dshift, dscale) = modulated_layer_norm_backward(x, scale, &grad, &SPEC);
        let loss = |v: &[Vec<f32>; 3]| {
            let y = reference(&v[0], &v[1], &v[2], &SPEC);
            y.iter().zip(&grad).map(|(y, g)| y * *g as f64).sum::<f64>()
        };
        crate::assert_gradients_match_finite_differences(&inputs, [&dx, &dshift, &dscale], loss, 1e-3);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let [x, shift, scale] = inputs();
        crate::assert_independent_of_threads(|| {
            let y = modulated_layer_norm(&x, &shift, &scale, &SPEC);
            (modulated_layer_norm_backward(&x, &scale, &y, &SPEC), y)
        });
    }
}
