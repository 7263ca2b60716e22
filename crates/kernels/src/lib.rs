//! # diffusion-kernels
//!
//! CPU kernels for the flex backend: the convolutions and SiLU of the image backbones, with
//! their gradients.
//!
//! On flex, burn lowers a convolution to tiled im2col + GEMM after a single-threaded transpose
//! to channels-last, computes its weight gradient as a convolution whose kernel is the whole
//! output gradient (GEMMs nine columns wide for a 3×3 kernel), and evaluates SiLU's sigmoid
//! with a scalar `expf` on one thread. On the narrow U-Nets a CPU can train, that made a
//! convolution's forward and backward pass 2.8–3.8× slower than PyTorch's and SiLU 11× slower
//! (docs/performance.md). Here a convolution is one matrix product per image with its patch
//! matrix ([`patches`], [`conv`]), in a reused buffer; its gradients are matrix products too;
//! SiLU runs in parallel chunks with a vectorised exponential ([`mod@silu`]).
//!
//! Group norm, alone or followed by SiLU, takes one pass forward and two backward per group
//! ([`norm`]) where burn's composition of tensor operations takes about twenty.
//!
//! [`conv2d`], [`group_norm`], [`group_norm_silu`] and [`silu()`] take these paths for f32 tensors on flex devices (with or without
//! autodiff) when the `flex` feature is on, and burn's own operations everywhere else, so a
//! model computes the same function on every backend.

pub mod conv;
mod gemm;
pub mod norm;
pub mod patches;
pub mod silu;

#[cfg(feature = "flex")]
mod extension;
#[cfg(feature = "flex")]
mod route;

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

pub use norm::GroupNormSpec;
pub use patches::Patches;

/// A 2-D convolution by `conv`'s weights, bias, strides and padding: the function of
/// `conv.forward(x)`.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(y) = route::conv2d(conv, x.clone()) {
        return y;
    }
    conv.forward(x)
}

/// `norm.forward(x)`, the group norm of `x` (`[B, C, ...]`).
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let Some(y) = route::group_norm(norm, x.clone(), false) {
        return y;
    }
    norm.forward(x)
}

/// silu(norm.forward(x)): a group norm followed by SiLU (the pre-activation of the ResNet blocks),
/// in one pass on flex.
pub fn group_norm_silu<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let Some(y) = route::group_norm(norm, x.clone(), true) {
        return y;
    }
    silu(norm.forward(x))
}

/// Whether [`conv2d`], [`group_norm`] and [`silu()`] run this crate's kernels on `x` (rather than burn's
/// operations): f32 tensors on flex, when the `flex` feature is on.
pub fn applies_to<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "flex")]
    return route::on_flex(x);
    #[cfg(not(feature = "flex"))]
    {
        let _ = x;
        false
    }
}

/// SiLU, x · σ(x) (`burn::tensor::activation::silu`).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if route::on_flex(&x) {
        return route::silu(x);
    }
    burn::tensor::activation::silu(x)
}
