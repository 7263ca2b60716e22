//! Which tensors the kernels take: f32 on a flex device, with or without autodiff.

use burn::backend::{Dispatch, DispatchDevice};
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, GroupNorm, Linear};
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};

use crate::adamw::AdamWStep;
use crate::attention::AttentionSpec;
use crate::extension::CpuKernels;
use crate::layer_norm::LayerNormSpec;
use crate::linear::LinearSpec;
use crate::norm::GroupNormSpec;
use crate::patches::Patches;

/// An f32 tensor on flex.
pub fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// Dropout as burn's layer applies it (while training, on an autodiff device, 0 < p < 1), with
/// the mask of [`crate::dropout`] keyed by three draws from the device's generator (23 random
/// bits each, spread over the 64-bit seed); burn's layer for any other p.
pub fn dropout<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !layer.training.is_enabled() || !x.device().is_autodiff() || layer.prob == 0.0 {
        return x;
    }
    if !(layer.prob > 0.0 && layer.prob < 1.0) {
        return layer.forward(x);
    }
    let device = x.device();
    let draws = Tensor::<1>::random([3], Distribution::Uniform(0.0, 1.0), &device).into_data();
    let bits: Vec<u64> = draws.iter::<f32>().map(|u| u64::from(u.to_bits())).collect();
    let seed = bits[0] << 42 ^ bits[1] << 21 ^ bits[2];
    let mask = crate::dropout::keep_mask(x.shape().num_elements(), 1.0 - layer.prob, seed);
    x.clone() * Tensor::<D>::from_data(TensorData::new(mask, x.shape()), &device)
}

pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as CpuKernels>::silu(x.into_dispatch()))
}

pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as CpuKernels>::gelu_tanh(x.into_dispatch()))
}

/// The group norm (then SiLU if `silu`) through the kernels, or `None` where they do not apply
/// (another backend or dtype, no affine parameters, fewer than three or empty dimensions).
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Option<Tensor<D>> {
    let (gamma, beta) = (norm.gamma.as_ref()?.val(), norm.beta.as_ref()?.val());
    let dims = x.dims();
    let fits = D >= 3
        && dims.iter().all(|&d| d > 0)
        && dims[1] == norm.num_channels
        && norm.num_groups > 0
        && norm.num_channels.is_multiple_of(norm.num_groups);
    if !fits || !on_flex(&x) || !on_flex(&gamma) || !on_flex(&beta) {
        return None;
    }
    let spec = GroupNormSpec {
        groups: norm.num_groups,
        epsilon: norm.epsilon,
        silu,
    };
    let y = <Dispatch as CpuKernels>::group_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        spec,
    );
    Some(Tensor::from_dispatch(y))
}

/// The convolution through the kernels, or `None` where they do not apply (another backend or
/// dtype, or a layer [`Patches::of_conv`] does not take).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Option<Tensor<4>> {
    let weight = conv.weight.val();
    if !on_flex(&x) || !on_flex(&weight) {
        return None;
    }
    let p = Patches::of_conv(conv, x.dims())?;
    let bias = flex_bias(conv.bias.as_ref(), weight.dims()[0], &x.device())?;
    let y = <Dispatch as CpuKernels>::patch_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        p,
    );
    Some(Tensor::from_dispatch(y))
}

/// The linear layer through the kernels on the input's rows, or `None` where they do not apply
/// (another backend or dtype, fewer than two or empty dimensions, a last dimension that is not
/// the layer's input width).
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Option<Tensor<D>> {
    let weight = layer.weight.val();
    let [inputs, outputs] = weight.dims();
    let dims = x.dims();
    let fits = D >= 2 && dims.iter().all(|&d| d > 0) && dims[D - 1] == inputs && outputs > 0;
    if !fits || !on_flex(&x) || !on_flex(&weight) {
        return None;
    }
    let bias = flex_bias(layer.bias.as_ref(), outputs, &x.device())?;
    let spec = LinearSpec {
        rows: dims[..D - 1].iter().product(),
        inputs,
        outputs,
    };
    let rows = x.reshape([spec.rows, inputs]);
    let y = <Dispatch as CpuKernels>::linear_rows(
        rows.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        spec,
    );
    let mut out = dims;
    out[D - 1] = outputs;
    Some(Tensor::<2>::from_dispatch(y).reshape(out))
}

/// A layer's bias, or `len` zeros where it has none; `None` unless it is on flex.
fn flex_bias(bias: Option<&Param<Tensor<1>>>, len: usize, device: &Device) -> Option<Tensor<1>> {
    let bias = bias.map_or_else(|| Tensor::zeros([len], device), Param::val);
    on_flex(&bias).then_some(bias)
}

/// Multi-head attention through the kernels, or `None` where they do not apply (another backend
/// or dtype, empty sizes, a width that `heads` does not divide, shapes that do not pair up).
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    let ([b, n, c], [bk, l, ck]) = (q.dims(), k.dims());
    let fits = heads > 0
        && c.is_multiple_of(heads)
        && (bk, ck) == (b, c)
        && v.dims() == k.dims()
        && [b, n, c, l].iter().all(|&d| d > 0);
    if !fits || !on_flex(&q) || !on_flex(&k) || !on_flex(&v) {
        return None;
    }
    let spec = AttentionSpec {
        batch: b,
        queries: n,
        keys: l,
        heads,
        head_dim: c / heads,
    };
    let (o, _) = <Dispatch as CpuKernels>::token_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        spec,
    );
    Some(Tensor::from_dispatch(o))
}

/// The modulated layer norm through the kernels, or `None` where they do not apply (another
/// backend or dtype, empty sizes, shift or scale not `[B, D]`).
pub fn modulated_layer_norm(
    x: Tensor<3>,
    shift: Tensor<2>,
    scale: Tensor<2>,
    epsilon: f64,
) -> Option<Tensor<3>> {
    let [b, n, d] = x.dims();
    let fits = [b, n, d].iter().all(|&s| s > 0) && shift.dims() == [b, d] && scale.dims() == [b, d];
    if !fits || !on_flex(&x) || !on_flex(&shift) || !on_flex(&scale) {
        return None;
    }
    let spec = LayerNormSpec {
        batch: b,
        tokens: n,
        features: d,
        epsilon,
    };
    let y = <Dispatch as CpuKernels>::modulated_layer_norm(
        x.into_dispatch(),
        shift.into_dispatch(),
        scale.into_dispatch(),
        spec,
    );
    Some(Tensor::from_dispatch(y))
}

/// One AdamW step through the kernel. The caller has checked that the four tensors are f32 on
/// flex and of one shape.
pub fn adamw_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (p, m, v) = <Dispatch as CpuKernels>::adamw_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        moment_1.into_dispatch(),
        moment_2.into_dispatch(),
        step,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

/// θ̄ β + θ (1 − β) through the kernel. The caller has checked that both tensors are f32 on flex
/// and of one shape.
pub fn ema_update<const D: usize>(
    average: Tensor<D>,
    value: Tensor<D>,
    decay: f32,
    weight: f32,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as CpuKernels>::ema_update(
        average.into_dispatch(),
        value.into_dispatch(),
        decay,
        weight,
    ))
}
