//! # diffusion-kernels
//!
//! CPU kernels for the flex backend: the convolutions, group norms, activations, DiT's
//! modulated layer norm and the attention of the backbones, with their gradients; and the
//! training step's AdamW and EMA updates in one pass each.
//!
//! On flex, burn lowers a convolution to tiled im2col + GEMM after a single-threaded transpose
//! to channels-last, and computes its weight gradient as a convolution whose kernel is the
//! whole output gradient (GEMMs nine columns wide for a 3×3 kernel); it composes group norm
//! from about twenty tensor passes forward and backward, and evaluates SiLU's sigmoid with a
//! scalar `expf` on one thread. On the narrow U-Nets a CPU can train, these layers ran 2–10×
//! slower than PyTorch's (docs/performance.md). Here:
//!
//! - a convolution is one matrix product per image with its patch matrix ([`patches`],
//!   [`conv`]), built in a buffer each thread reuses; its gradients are matrix products too;
//! - a 3×3 convolution of stride 1 with 16 channels or more and 512 output positions or more
//!   over the batch takes Winograd's F(4×4, 3×3) (F(2×2, 3×3) on outputs under 4×4), forward
//!   and both gradients: 36 (or 16) matrix products over the transformed tiles with 4× (2.25×)
//!   fewer multiply–adds ([`winograd`]);
//! - the loops of every kernel (transforms, norms, activations, softmax) are compiled a second
//!   time for AVX2 and FMA and chosen at run time, as the workspace itself is built for the
//!   x86-64 baseline;
//! - group norm, alone or followed by SiLU, works on one (image, group) block at a time while
//!   it is in cache: statistics and output forward, two sweeps backward ([`norm`]);
//! - SiLU and GELU run in parallel chunks with a vectorised exponential ([`mod@silu`],
//!   [`mod@gelu`]);
//! - DiT's modulated layer norm, x̂ (1 + scale) + shift, one token at a time forward and
//!   backward ([`mod@layer_norm`]);
//! - multi-head attention reads each head as a strided view of the projections and keeps one
//!   head's scores at a time, recomputing them in the backward pass from the log-sum-exp
//!   ([`mod@attention`]); burn's autodiff composes it from products and a softmax whose
//!   B·H·N·L intermediates it keeps;
//! - a linear layer on `[B, N, I]` tokens takes all B·N rows at once, in blocks of 256, with
//!   the bias accumulated into the output, and its weight gradient is one product whose inner
//!   dimension runs over the rows ([`mod@linear`]), where burn (through its `Dispatch`
//!   backend) sums B weight gradients;
//! - AdamW ([`AdamW`], a burn optimiser) reads the parameters, gradient and moments once and
//!   writes them once ([`mod@adamw`]), where burn's optimiser makes about fifteen tensor passes
//!   and PyTorch's about eight; it computes PyTorch's `torch.optim.AdamW`, scalars and fused
//!   multiply–adds included, and takes tensor operations off flex;
//! - [`keep_freed_memory`] stops glibc's allocator from unmapping large freed blocks, whose
//!   pages the kernel would zero again on reuse (for every backend on the CPU);
//! - dropout's mask is a counter-based draw (SplitMix64 of the element's index) keyed from the
//!   device's generator, not one ChaCha draw per element ([`mod@dropout`]);
//! - an EMA's step updates the average in place in one pass ([`ema_update`]).
//!
//! On the cubecl backends (wgpu, CUDA; the `wgpu` and `cuda` features), [`conv2d`] is one
//! matrix product over the input's im2col patches, built from tensor operations, with burn's
//! gradients (`cube`): burn's own f32 convolution there is a direct kernel several times
//! slower than its matrix product.
//!
//! [`conv2d`], [`linear()`], [`group_norm`], [`group_norm_silu`], [`silu()`], [`gelu_tanh()`],
//! [`modulated_layer_norm`], [`attention()`], [`dropout()`], [`ema_update`] and [`AdamW`]'s
//! steps take these paths for f32 tensors on flex devices (with or without autodiff) when the
//! `flex` feature is on, and burn's own operations everywhere else (but for the convolution on
//! the cubecl backends), so a model computes the same function on every backend
//! ([`applies_to`] says where the CPU kernels run).

pub mod adamw;
pub mod attention;
pub mod conv;
#[cfg(any(feature = "flex", feature = "wgpu", feature = "cuda"))]
mod conv_op;
pub mod dropout;
mod elementwise;
pub mod ema;
pub mod gelu;
mod gemm;
mod lanes;
pub mod layer_norm;
pub mod linear;
mod memory;
pub mod norm;
mod optimizer;
pub mod patches;
pub mod silu;
mod simd;
pub mod winograd;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
#[cfg(feature = "flex")]
mod extension;
#[cfg(feature = "flex")]
mod route;

use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, GroupNorm, Linear};
use burn::tensor::Tensor;

pub use adamw::AdamWStep;
pub use attention::AttentionSpec;
pub use layer_norm::LayerNormSpec;
pub use linear::LinearSpec;
pub use memory::keep_freed_memory;
pub use norm::GroupNormSpec;
pub use optimizer::AdamW;
pub use patches::Patches;

/// A 2-D convolution by `conv`'s weights, bias, strides and padding: the function of
/// `conv.forward(x)`, through the kernels where [`try_conv2d`] takes it.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    try_conv2d(conv, x.clone()).unwrap_or_else(|| conv.forward(x))
}

/// The convolution through the kernels: `Some` for f32 tensors on flex (with the `flex`
/// feature) and on a cubecl device (`cube`, with the `wgpu` or `cuda` feature),
/// for layers of one group, dilation 1, explicit or no padding and non-empty sizes; `None`
/// otherwise, where [`conv2d`] uses burn's.
pub fn try_conv2d(conv: &Conv2d, x: Tensor<4>) -> Option<Tensor<4>> {
    #[cfg(feature = "flex")]
    if route::on_flex(&x) {
        return route::conv2d(conv, x);
    }
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if cube::takes(&x) {
        return cube::conv2d(conv, x);
    }
    let _ = (conv, x);
    None
}

/// `layer.forward(x)`, y = x W + b over the last dimension of `x` (`[..., I]`): the
/// [`mod@linear`] kernel where [`try_linear`] takes it, burn's layer elsewhere.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    try_linear(layer, x.clone()).unwrap_or_else(|| layer.forward(x))
}

/// The linear layer through the kernels, every row of the batch at once: `Some`
/// for f32 tensors on flex (with the `flex` feature) of at least two non-empty dimensions
/// whose last is the layer's input width; `None` otherwise, where [`linear()`] uses burn's.
pub fn try_linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Option<Tensor<D>> {
    #[cfg(feature = "flex")]
    return route::linear(layer, x);
    #[cfg(not(feature = "flex"))]
    {
        let _ = (layer, x);
        None
    }
}

/// `norm.forward(x)`, the group norm of `x` (`[B, C, ...]`).
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    try_group_norm(norm, x.clone(), false).unwrap_or_else(|| norm.forward(x))
}

/// silu(norm.forward(x)): a group norm followed by SiLU (the pre-activation of the ResNet
/// blocks), fused on flex.
pub fn group_norm_silu<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    try_group_norm(norm, x.clone(), true).unwrap_or_else(|| silu(norm.forward(x)))
}

/// The group norm (then SiLU if `silu`) through the kernels: `Some` for f32 tensors on flex
/// (with the `flex` feature) of at least three non-empty dimensions and affine layers; `None`
/// otherwise, where [`group_norm`] and [`group_norm_silu`] use burn's.
pub fn try_group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Option<Tensor<D>> {
    #[cfg(feature = "flex")]
    return route::group_norm(norm, x, silu);
    #[cfg(not(feature = "flex"))]
    {
        let _ = (norm, x, silu);
        None
    }
}

/// Whether the kernels take `x`'s backend and dtype (f32 on flex, with the `flex` feature):
/// [`silu()`] then runs them; [`try_conv2d`] and [`try_group_norm`] also need layers they
/// support.
pub fn applies_to<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "flex")]
    return route::on_flex(x);
    #[cfg(not(feature = "flex"))]
    {
        let _ = x;
        false
    }
}

/// An exponential moving average's step, θ̄ β + θ (1 − β) with β = `decay`: one pass updating
/// `average` in place where both are f32 on flex (with the `flex` feature; [`mod@ema`]), burn's
/// tensor operations otherwise. β and 1 − β are rounded to the tensors' precision either way,
/// so f32 averages get the same bits on both paths.
pub fn ema_update<const D: usize>(average: Tensor<D>, value: Tensor<D>, decay: f64) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if route::on_flex(&average) && route::on_flex(&value) && average.shape() == value.shape() {
        return route::ema_update(average, value, decay as f32, (1.0 - decay) as f32);
    }
    average.mul_scalar(decay) + value.mul_scalar(1.0 - decay)
}

/// DiT's adaLN: the layer norm of `x` `[B, N, D]` over D without affine parameters,
/// x̂ = (x − μ)/√(σ² + ε), modulated per image by `shift` and `scale` `[B, D]`:
/// x̂ (1 + scale) + shift. The [`mod@layer_norm`] kernel for f32 on flex, burn's operations
/// elsewhere.
pub fn modulated_layer_norm(x: Tensor<3>, shift: Tensor<2>, scale: Tensor<2>, epsilon: f64) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if let Some(y) = route::modulated_layer_norm(x.clone(), shift.clone(), scale.clone(), epsilon) {
        return y;
    }
    let [b, _, d] = x.dims();
    let centred = x.clone() - x.mean_dim(2);
    let var = centred.clone().square().mean_dim(2);
    let xhat = centred / var.add_scalar(epsilon).sqrt();
    xhat * scale.reshape([b, 1, d]).add_scalar(1.0) + shift.reshape([b, 1, d])
}

/// Multi-head attention softmax(q kᵀ/√d) v of token-major projections: queries `q`
/// `[B, N, C]`, keys `k` and values `v` `[B, L, C]`, `heads` heads of width d = C / heads, head h
/// in columns h·d..(h+1)·d; the output is `[B, N, C]`, heads in the same columns. Through the
/// kernels where [`try_attention`] takes it, else burn's fused attention operation.
///
/// # Panics
/// If `heads` does not divide C or the shapes do not pair up (as burn's operations would).
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    try_attention(q.clone(), k.clone(), v.clone(), heads).unwrap_or_else(|| burn_attention(q, k, v, heads))
}

/// The attention through the kernels: `Some` for f32 tensors on flex (with the `flex` feature)
/// of non-empty, matching shapes whose width `heads` divides; `None` otherwise.
pub fn try_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    #[cfg(feature = "flex")]
    return route::attention(q, k, v, heads);
    #[cfg(not(feature = "flex"))]
    {
        let _ = (q, k, v, heads);
        None
    }
}

/// [`attention()`] by burn's attention operation on `[B, H, tokens, d]` views of the same
/// projections: the path [`attention()`] takes where the kernels do not apply (and the
/// reference the tests and `diffusion bench kernels` hold the kernel to).
pub fn burn_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    let [b, n, c] = q.dims();
    let d = c / heads;
    let split = |t: Tensor<3>| {
        let len = t.dims()[1];
        t.reshape([b, len, heads, d]).swap_dims(1, 2)
    };
    let o = attention(
        split(q),
        split(k),
        split(v),
        None,
        None,
        AttentionModuleOptions::default(),
    );
    o.swap_dims(1, 2).reshape([b, n, c])
}

/// GELU with the tanh approximation, x σ(2√(2/π) (x + 0.044715 x³)) (PyTorch's
/// `gelu(approximate="tanh")`, the MLP activation of DiT): the [`mod@gelu`] kernel for f32 on
/// flex, the same formula composed of burn's operations elsewhere.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if route::on_flex(&x) {
        return route::gelu_tanh(x);
    }
    let k = 2.0 * (2.0 / std::f64::consts::PI).sqrt();
    let cubic = x.clone() * x.clone() * x.clone();
    let z = (x.clone() + cubic.mul_scalar(0.044715)).mul_scalar(k);
    x * burn::tensor::activation::sigmoid(z)
}

/// `layer.forward(x)`: dropout while training (on an autodiff device, p > 0), x unchanged
/// otherwise. On f32 tensors on flex the mask comes from [`mod@dropout`]'s counter-based
/// generator, keyed by draws from the device's generator (so seeded runs repeat); elsewhere
/// it is burn's layer. Either way y = x ⊙ m / (1 − p) with m_i ~ Bernoulli(1 − p), and the
/// gradient is ∂y ⊙ m / (1 − p).
pub fn dropout<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if route::on_flex(&x) {
        return route::dropout(layer, x);
    }
    layer.forward(x)
}

/// SiLU, x · σ(x) (`burn::tensor::activation::silu`).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if route::on_flex(&x) {
        return route::silu(x);
    }
    burn::tensor::activation::silu(x)
}

#[cfg(test)]
/// Asserts that `f` computes the same values in a rayon pool of one thread as in one of three.
pub(crate) fn assert_independent_of_threads<R: Send + PartialEq + std::fmt::Debug>(
    f: impl Fn() -> R + Send + Sync,
) {
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
        pool.expect("a rayon pool").install(&f)
    };
    assert_eq!(run(1), run(3));
}

#[cfg(test)]
/// Asserts, for each of three inputs in turn, that the backward pass's ⟨∂xᵢ, δ⟩ matches the
/// central difference (L(xᵢ + εδ) − L(xᵢ − εδ)) / 2ε of `loss` (⟨∂y, f(x)⟩ from an f64
/// reference of the forward pass) along a fixed direction δ, within `tol` relative to
/// max(|difference|, 1); ε = 10⁻² (large enough that x + εδ is exact to 10⁻⁴ in f32 for |x| ≲ 10,
/// small enough that the O(ε²) error of the central difference stays near 10⁻⁴).
pub(crate) fn assert_gradients_match_finite_differences(
    inputs: &[Vec<f32>; 3],
    analytic: [&[f32]; 3],
    loss: impl Fn(&[Vec<f32>; 3]) -> f64,
    tol: f64,
) {
    let eps = 1e-2;
    for (which, analytic) in analytic.into_iter().enumerate() {
        let delta: Vec<f32> = (0..analytic.len())
            .map(|i| (i as f32 * (0.53 + which as f32)).sin())
            .collect();
        let shifted = |sign: f32| {
            let mut x = inputs.clone();
            x[which]
                .iter_mut()
                .zip(&delta)
                .for_each(|(x, d)| *x += sign * eps * d);
            loss(&x)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
        let exact: f64 = analytic
            .iter()
            .zip(&delta)
            .map(|(a, d)| *a as f64 * *d as f64)
            .sum();
        assert!(
            (numeric - exact).abs() < tol * numeric.abs().max(1.0),
            "input {which}: finite differences {numeric}, backward {exact}"
        );
    }
}
