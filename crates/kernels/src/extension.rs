//! The kernels as a burn backend extension: computed on flex, differentiated on autodiff.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::{ActivationOps, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Shape, TensorData};
use burn_flex::FlexTensor;

use crate::adamw::{self, AdamWStep};
use crate::attention::{self, AttentionSpec};
use crate::conv_op::{self, ConvOps};
use crate::ema;
use crate::layer_norm::{self, LayerNormSpec};
use crate::linear::{self, LinearSpec};
use crate::norm::{self, GroupNormSpec, Layout};
use crate::patches::Patches;
use crate::{conv, gelu, silu};

/// The operations that the flex backend runs with this crate's kernels. Arguments are f32
/// tensors (the wrappers in the crate root route nothing else here); the convolution takes
/// `[B, C_in, H, W]` inputs and `[C_out, C_in, k_h, k_w]` weights, one group, dilation 1.
#[backend_extension(Flex, Autodiff)]
pub trait CpuKernels: Backend {
    /// conv(x, w) + bias: `[B, C_out, H_out, W_out]`.
    fn patch_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        patches: Patches,
    ) -> FloatTensor<Self>;
    /// ∂x of the convolution from ∂y.
    fn patch_conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        patches: Patches,
    ) -> FloatTensor<Self>;
    /// ∂w of the convolution from ∂y.
    fn patch_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        patches: Patches,
    ) -> FloatTensor<Self>;
    /// ∂bias of the convolution from ∂y: `[C_out]`.
    fn patch_conv2d_bias_grad(grad: FloatTensor<Self>, patches: Patches) -> FloatTensor<Self>;
    /// x w + b of rows x `[R, I]`, weight `[I, O]` and bias `[O]`: `[R, O]`.
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: LinearSpec,
    ) -> FloatTensor<Self>;
    /// (∂x, ∂w, ∂b) of `linear_rows` from ∂y.
    fn linear_rows_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: LinearSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// x · σ(x).
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// grad · σ(x) (1 + x (1 − σ(x))): the gradient of `silu` at x.
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// GELU with the tanh approximation.
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// grad · gelu'(x): the gradient of `gelu_tanh` at x.
    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Group norm of `[B, C, ...]` with affine parameters `[C]`, SiLU after it if `spec.silu`.
    fn group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> FloatTensor<Self>;
    /// (∂x, ∂γ, ∂β) of `group_norm` from ∂y.
    fn group_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// Layer norm of `[B, N, D]` over D, modulated per image: x̂ (1 + scale) + shift with shift
    /// and scale `[B, D]`.
    fn modulated_layer_norm(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        spec: LayerNormSpec,
    ) -> FloatTensor<Self>;
    /// (∂x, ∂shift, ∂scale) of `modulated_layer_norm` from ∂y.
    fn modulated_layer_norm_backward(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: LayerNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// Multi-head attention of token-major queries `[B, N, H·d]`, keys and values `[B, L, H·d]`:
    /// the output `[B, N, H·d]` and the log-sum-exp of each head's scaled scores `[B, H, N]`.
    fn token_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// (∂q, ∂k, ∂v) of `token_attention` from its output `o`, its log-sum-exp and ∂O.
    fn token_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// One AdamW step ([`crate::adamw`]): the parameters, first and second moments after it,
    /// updated in place where the tensors own their values (copied first where they share them).
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// average · decay + value · weight ([`crate::ema`]), updated in place where `average`
    /// owns its values.
    fn ema_update(
        average: FloatTensor<Self>,
        value: FloatTensor<Self>,
        decay: f32,
        weight: f32,
    ) -> FloatTensor<Self>;
}

fn from_vec(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Runs `f` on the contiguous f32 values of `x`.
fn with_f32<R>(x: &FlexTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    let x = x.to_contiguous();
    f(x.as_slice::<f32>()
        .expect("the CPU kernels take f32 tensors only"))
}

/// An elementwise kernel `f` on `x`'s values, in `x`'s shape.
fn map(x: &FlexTensor, f: fn(&[f32]) -> Vec<f32>) -> FlexTensor {
    from_vec(with_f32(x, f), x.layout().shape().to_vec())
}

/// An elementwise kernel `f` of two tensors of the same shape.
fn map2(x: &FlexTensor, y: &FlexTensor, f: fn(&[f32], &[f32]) -> Vec<f32>) -> FlexTensor {
    from_vec(
        with_f32(x, |x| with_f32(y, |y| f(x, y))),
        x.layout().shape().to_vec(),
    )
}

/// Images, channels and positions per channel of a `[B, C, ...]` tensor.
fn layout(x: &FlexTensor) -> Layout {
    let shape = x.layout().shape();
    Layout {
        batch: shape[0],
        channels: shape[1],
        positions: shape[2..].iter().product(),
    }
}

fn out_channels(weight: &FlexTensor) -> usize {
    weight.layout().shape()[0]
}

impl CpuKernels for Flex {
    fn patch_conv2d(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, p: Patches) -> FlexTensor {
        let c_out = out_channels(&weight);
        let y = with_f32(&x, |x| {
            with_f32(&weight, |w| with_f32(&bias, |b| conv::conv2d(x, w, b, &p)))
        });
        from_vec(y, vec![p.batch, c_out, p.output[0], p.output[1]])
    }

    fn patch_conv2d_bias_grad(grad: FlexTensor, p: Patches) -> FlexTensor {
        let c_out = grad.layout().shape()[1];
        from_vec(
            with_f32(&grad, |g| conv::conv2d_bias_grad(g, &p, c_out)),
            vec![c_out],
        )
    }

    fn patch_conv2d_input_grad(
        _: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        p: Patches,
    ) -> FlexTensor {
        let c_out = out_channels(&weight);
        let dx = with_f32(&weight, |w| {
            with_f32(&grad, |g| conv::conv2d_input_grad(w, g, &p, c_out))
        });
        from_vec(dx, vec![p.batch, p.channels, p.input[0], p.input[1]])
    }

    fn patch_conv2d_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        p: Patches,
    ) -> FlexTensor {
        let shape = weight.layout().shape().to_vec();
        let dw = with_f32(&x, |x| {
            with_f32(&grad, |g| conv::conv2d_weight_grad(x, g, &p, shape[0]))
        });
        from_vec(dw, shape)
    }

    fn linear_rows(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, spec: LinearSpec) -> FlexTensor {
        let y = with_f32(&x, |x| {
            with_f32(&weight, |w| with_f32(&bias, |b| linear::linear(x, w, b, &spec)))
        });
        from_vec(y, vec![spec.rows, spec.outputs])
    }

    fn linear_rows_backward(
        x: FlexTensor,
        weight: FlexTensor,
        _: FlexTensor,
        grad: FlexTensor,
        spec: LinearSpec,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (dx, dw, db) = with_f32(&x, |x| {
            with_f32(&weight, |w| {
                with_f32(&grad, |g| linear::linear_backward(x, w, g, &spec))
            })
        });
        (
            from_vec(dx, vec![spec.rows, spec.inputs]),
            from_vec(dw, vec![spec.inputs, spec.outputs]),
            from_vec(db, vec![spec.outputs]),
        )
    }

    fn silu(x: FlexTensor) -> FlexTensor {
        map(&x, silu::silu)
    }

    fn silu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        map2(&x, &grad, silu::silu_backward)
    }

    fn gelu_tanh(x: FlexTensor) -> FlexTensor {
        map(&x, gelu::gelu_tanh)
    }

    fn gelu_tanh_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        map2(&x, &grad, gelu::gelu_tanh_backward)
    }

    fn group_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, spec: GroupNormSpec) -> FlexTensor {
        let (l, shape) = (layout(&x), x.layout().shape().to_vec());
        let y = with_f32(&x, |x| {
            with_f32(&gamma, |g| {
                with_f32(&beta, |b| norm::group_norm(x, g, b, l, spec))
            })
        });
        from_vec(y, shape)
    }

    fn group_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        grad: FlexTensor,
        spec: GroupNormSpec,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (l, shape) = (layout(&x), x.layout().shape().to_vec());
        let (dx, dgamma, dbeta) = with_f32(&x, |x| {
            with_f32(&gamma, |g| {
                with_f32(&beta, |b| {
                    with_f32(&grad, |dy| norm::group_norm_backward(x, g, b, dy, l, spec))
                })
            })
        });
        let channels = vec![l.channels];
        (
            from_vec(dx, shape),
            from_vec(dgamma, channels.clone()),
            from_vec(dbeta, channels),
        )
    }

    fn modulated_layer_norm(
        x: FlexTensor,
        shift: FlexTensor,
        scale: FlexTensor,
        spec: LayerNormSpec,
    ) -> FlexTensor {
        let shape = x.layout().shape().to_vec();
        let y = with_f32(&x, |x| {
            with_f32(&shift, |sh| {
                with_f32(&scale, |sc| layer_norm::modulated_layer_norm(x, sh, sc, &spec))
            })
        });
        from_vec(y, shape)
    }

    fn modulated_layer_norm_backward(
        x: FlexTensor,
        _: FlexTensor,
        scale: FlexTensor,
        grad: FlexTensor,
        spec: LayerNormSpec,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = x.layout().shape().to_vec();
        let (dx, dshift, dscale) = with_f32(&x, |x| {
            with_f32(&scale, |sc| {
                with_f32(&grad, |g| {
                    layer_norm::modulated_layer_norm_backward(x, sc, g, &spec)
                })
            })
        });
        let per_image = vec![spec.batch, spec.features];
        (
            from_vec(dx, shape),
            from_vec(dshift, per_image.clone()),
            from_vec(dscale, per_image),
        )
    }

    fn token_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        spec: AttentionSpec,
    ) -> (FlexTensor, FlexTensor) {
        let shape = q.layout().shape().to_vec();
        let (o, lse) = with_f32(&q, |q| {
            with_f32(&k, |k| with_f32(&v, |v| attention::attention(q, k, v, &spec)))
        });
        (
            from_vec(o, shape),
            from_vec(lse, vec![spec.batch, spec.heads, spec.queries]),
        )
    }

    fn token_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        o: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
        spec: AttentionSpec,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shapes = [&q, &k, &v].map(|t| t.layout().shape().to_vec());
        let (dq, dk, dv) = with_f32(&q, |q| {
            with_f32(&k, |k| {
                with_f32(&v, |v| {
                    with_f32(&o, |o| {
                        with_f32(&lse, |lse| {
                            with_f32(&grad, |g| {
                                attention::attention_backward(q, k, v, o, lse, g, &spec)
                            })
                        })
                    })
                })
            })
        });
        let [sq, sk, sv] = shapes;
        (from_vec(dq, sq), from_vec(dk, sk), from_vec(dv, sv))
    }

    fn adamw_step(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        step: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (mut param, mut m, mut v) = (owned(param), owned(moment_1), owned(moment_2));
        with_f32(&grad, |g| {
            adamw::adamw_step(
                values_mut(&mut param),
                g,
                values_mut(&mut m),
                values_mut(&mut v),
                &step,
            )
        });
        (param, m, v)
    }

    fn ema_update(average: FlexTensor, value: FlexTensor, decay: f32, weight: f32) -> FlexTensor {
        let mut average = owned(average);
        with_f32(&value, |value| {
            ema::ema_update(values_mut(&mut average), value, decay, weight)
        });
        average
    }
}

/// `x` contiguous from the start of its own buffer: itself where it is, a copy otherwise.
fn owned(x: FlexTensor) -> FlexTensor {
    let len = x.layout().shape().num_elements();
    if x.layout().contiguous_offsets() == Some((0, len)) {
        x
    } else {
        x.to_contiguous()
    }
}

/// The f32 values of a tensor from [`owned`], to write in place (copied first if another
/// tensor shares them).
fn values_mut(x: &mut FlexTensor) -> &mut [f32] {
    let len = x.layout().shape().num_elements();
    &mut x.storage_mut::<f32>()[..len]
}

/// The convolution of the flex kernels and its gradients, as one autodiff operation.
#[derive(Debug)]
struct PatchConv;

impl<B: Backend + CpuKernels> ConvOps<B> for PatchConv {
    fn forward(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        bias: FloatTensor<B>,
        p: Patches,
    ) -> FloatTensor<B> {
        B::patch_conv2d(x, weight, bias, p)
    }
    fn input_grad(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        p: Patches,
    ) -> FloatTensor<B> {
        B::patch_conv2d_input_grad(x, weight, grad, p)
    }
    fn weight_grad(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        p: Patches,
    ) -> FloatTensor<B> {
        B::patch_conv2d_weight_grad(x, weight, grad, p)
    }
    fn bias_grad(grad: FloatTensor<B>, p: Patches) -> FloatTensor<B> {
        B::patch_conv2d_bias_grad(grad, p)
    }
}

impl<B: Backend + CpuKernels, C: CheckpointStrategy> CpuKernels for Autodiff<B, C> {
    fn patch_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        p: Patches,
    ) -> FloatTensor<Self> {
        conv_op::conv2d::<B, C, PatchConv>(x, weight, bias, p)
    }

    /// Sums over images and positions, from differentiable operations.
    fn patch_conv2d_bias_grad(grad: FloatTensor<Self>, _: Patches) -> FloatTensor<Self> {
        conv_op::summed_per_channel::<Self>(grad)
    }

    /// burn's differentiable convolution gradient. The gradient operations of this impl are
    /// differentiable compositions so that a gradient could itself be differentiated; burn 0.22
    /// does not differentiate a backward pass, so no training path reaches them today (the
    /// backward passes above call the inner backend's kernels); the tests below hold them equal
    /// to the kernels.
    fn patch_conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        p: Patches,
    ) -> FloatTensor<Self> {
        let options = p.conv_options();
        Self::conv2d_x_backward(x, weight, grad, options)
    }

    /// As [`CpuKernels::patch_conv2d_input_grad`].
    fn patch_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        p: Patches,
    ) -> FloatTensor<Self> {
        let options = p.conv_options();
        Self::conv2d_weight_backward(x, weight, grad, options)
    }

    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: LinearSpec,
    ) -> FloatTensor<Self> {
        ternary::<B, C, _>(
            [x, weight, bias],
            spec,
            |[x, weight, bias], spec| B::linear_rows(x, weight, bias, spec),
            |[x, weight, bias], grad, spec| B::linear_rows_backward(x, weight, bias, grad, spec).into(),
        )
    }

    /// ∂x = ∂y wᵀ, ∂w = xᵀ ∂y, ∂b = Σ_rows ∂y, from differentiable operations (not reached
    /// today: see [`CpuKernels::patch_conv2d_input_grad`] of this impl).
    fn linear_rows_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        _: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: LinearSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let t = |m| Self::float_swap_dims(m, 0, 1);
        let dx = Self::float_matmul(grad.clone(), t(weight));
        let dw = Self::float_matmul(t(x), grad.clone());
        let db = Self::float_reshape(Self::float_sum_dim(grad, 0), Shape::new([spec.outputs]));
        (dx, dw, db)
    }

    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise::<B, C>(x, B::silu, B::silu_backward)
    }

    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise::<B, C>(x, B::gelu_tanh, B::gelu_tanh_backward)
    }

    /// The derivative of [`gelu`](crate::gelu) composed of differentiable operations (not
    /// reached today: see [`CpuKernels::patch_conv2d_input_grad`] of this impl).
    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // With s = σ(z), z = k (x + c x³): gelu' = s + x s (1 − s) k (1 + 3 c x²).
        let (k, c) = (2.0 * (2.0 / std::f64::consts::PI).sqrt(), 0.044715);
        let x2 = Self::float_mul(x.clone(), x.clone());
        let cubic = Self::float_mul(x2.clone(), x.clone());
        let z = Self::float_mul_scalar(
            Self::float_add(x.clone(), Self::float_mul_scalar(cubic, c.into())),
            k.into(),
        );
        let s = <Self as ActivationOps<Self>>::sigmoid(z);
        let one_minus_s = Self::float_add_scalar(Self::float_neg(s.clone()), 1.0f64.into());
        let dz = Self::float_mul_scalar(
            Self::float_add_scalar(Self::float_mul_scalar(x2, (3.0 * c).into()), 1.0f64.into()),
            k.into(),
        );
        let tail = Self::float_mul(Self::float_mul(x, Self::float_mul(s.clone(), one_minus_s)), dz);
        Self::float_mul(grad, Self::float_add(s, tail))
    }

    fn group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> FloatTensor<Self> {
        ternary::<B, C, _>(
            [x, gamma, beta],
            spec,
            |[x, gamma, beta], spec| B::group_norm(x, gamma, beta, spec),
            |[x, gamma, beta], grad, spec| B::group_norm_backward(x, gamma, beta, grad, spec).into(),
        )
    }

    /// The formula of [`norm`](crate::norm) composed of differentiable operations (not reached
    /// today: see [`CpuKernels::patch_conv2d_input_grad`] of this impl).
    fn group_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.shape();
        let (b, c, g) = (shape[0], shape[1], spec.groups);
        let s: usize = shape.iter().skip(2).product();
        let m = c / g * s;
        let per_group = |t| Self::float_reshape(t, Shape::new([b, g, m]));
        let per_channel = |t| Self::float_reshape(t, Shape::new([b, c, s]));
        let channels = |t| Self::float_reshape(t, Shape::new([1, c, 1]));
        let xg = per_group(x);
        let centred = Self::float_sub(xg.clone(), Self::float_mean_dim(xg, 2));
        let var = Self::float_mean_dim(Self::float_mul(centred.clone(), centred.clone()), 2);
        let rstd = Self::float_recip(Self::float_sqrt(Self::float_add_scalar(var, spec.epsilon.into())));
        let xhat = per_channel(Self::float_mul(centred, rstd.clone()));
        let gamma = channels(gamma);
        let dy = per_channel(grad);
        let dz = if spec.silu {
            let z = Self::float_add(Self::float_mul(xhat.clone(), gamma.clone()), channels(beta));
            Self::float_mul(dy, silu_slope::<Self>(z))
        } else {
            dy
        };
        let channel_sum =
            |t| Self::float_reshape(Self::float_sum_dim(Self::float_sum_dim(t, 2), 0), Shape::new([c]));
        let dbeta = channel_sum(dz.clone());
        let dgamma = channel_sum(Self::float_mul(dz.clone(), xhat.clone()));
        let dxhat = per_group(Self::float_mul(dz, gamma));
        let xhat = per_group(xhat);
        let m1 = Self::float_mean_dim(dxhat.clone(), 2);
        let m2 = Self::float_mean_dim(Self::float_mul(dxhat.clone(), xhat.clone()), 2);
        let inner = Self::float_sub(Self::float_sub(dxhat, m1), Self::float_mul(xhat, m2));
        (
            Self::float_reshape(Self::float_mul(inner, rstd), shape),
            dgamma,
            dbeta,
        )
    }

    /// Composed of differentiable operations, so that second derivatives flow through it.
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_mul(grad, silu_slope::<Self>(x))
    }

    fn modulated_layer_norm(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        spec: LayerNormSpec,
    ) -> FloatTensor<Self> {
        ternary::<B, C, _>(
            [x, shift, scale],
            spec,
            |[x, shift, scale], spec| B::modulated_layer_norm(x, shift, scale, spec),
            |[x, shift, scale], grad, spec| {
                B::modulated_layer_norm_backward(x, shift, scale, grad, spec).into()
            },
        )
    }

    /// The formulas of [`layer_norm`](crate::layer_norm) composed of differentiable operations
    /// (not reached today: see [`CpuKernels::patch_conv2d_input_grad`] of this impl).
    fn modulated_layer_norm_backward(
        x: FloatTensor<Self>,
        _: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: LayerNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (b, d) = (spec.batch, spec.features);
        let centred = Self::float_sub(x.clone(), Self::float_mean_dim(x, 2));
        let var = Self::float_mean_dim(Self::float_mul(centred.clone(), centred.clone()), 2);
        let rstd = Self::float_recip(Self::float_sqrt(Self::float_add_scalar(var, spec.epsilon.into())));
        let xhat = Self::float_mul(centred, rstd.clone());
        let per_image = |t| Self::float_reshape(t, Shape::new([b, d]));
        let token_sum = |t| per_image(Self::float_sum_dim(t, 1));
        let dshift = token_sum(grad.clone());
        let dscale = token_sum(Self::float_mul(grad.clone(), xhat.clone()));
        let gain = Self::float_add_scalar(Self::float_reshape(scale, Shape::new([b, 1, d])), 1.0f64.into());
        let dxhat = Self::float_mul(grad, gain);
        let m1 = Self::float_mean_dim(dxhat.clone(), 2);
        let m2 = Self::float_mean_dim(Self::float_mul(dxhat.clone(), xhat.clone()), 2);
        let inner = Self::float_sub(Self::float_sub(dxhat, m1), Self::float_mul(xhat, m2));
        (Self::float_mul(inner, rstd), dshift, dscale)
    }

    fn token_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct Attention;
        impl<B: Backend + CpuKernels> Backward<B, 3> for Attention {
            type State = ([B::FloatTensorPrimitive; 5], AttentionSpec);
            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let ([q, k, v, o, lse], spec) = ops.state;
                let (dq, dk, dv) = B::token_attention_backward(q, k, v, o, lse, grad, spec);
                for (node, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }
        let nodes = [q.node(), k.node(), v.node()];
        let [q, k, v] = [q, k, v].map(|t| t.into_primitive());
        let (o, lse) = B::token_attention(q.clone(), k.clone(), v.clone(), spec);
        // The log-sum-exp is a by-product for the backward pass: a constant to autodiff.
        let lse_out = <Self as AutodiffBackend>::from_inner(lse.clone());
        let o = match Attention.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(([q, k, v, o.clone(), lse], spec), o),
            OpsKind::UnTracked(prep) => prep.finish(o),
        };
        (o, lse_out)
    }

    /// The formulas of [`attention`](crate::attention) composed of differentiable operations on
    /// `[B, H, tokens, d]` views (not reached today: see [`CpuKernels::patch_conv2d_input_grad`]
    /// of this impl).
    fn token_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (b, h, d) = (spec.batch, spec.heads, spec.head_dim);
        let heads = |t: FloatTensor<Self>| {
            let n = t.shape()[1];
            Self::float_swap_dims(Self::float_reshape(t, Shape::new([b, n, h, d])), 1, 2)
        };
        let tokens = |t: FloatTensor<Self>| {
            let n = t.shape()[2];
            Self::float_reshape(Self::float_swap_dims(t, 1, 2), Shape::new([b, n, h * d]))
        };
        let t = |x: FloatTensor<Self>| Self::float_swap_dims(x, 2, 3);
        let scale = 1.0 / (d as f64).sqrt();
        let (q, k, v, o, g) = (heads(q), heads(k), heads(v), heads(o), heads(grad));
        let scores = Self::float_mul_scalar(Self::float_matmul(q.clone(), t(k.clone())), scale.into());
        let lse = Self::float_reshape(lse, Shape::new([b, h, spec.queries, 1]));
        let p = Self::float_exp(Self::float_sub(scores, lse));
        let dv = Self::float_matmul(t(p.clone()), g.clone());
        let dp = Self::float_matmul(g.clone(), t(v));
        let row = Self::float_sum_dim(Self::float_mul(g, o), 3);
        let ds = Self::float_mul_scalar(Self::float_mul(p, Self::float_sub(dp, row)), scale.into());
        let dq = Self::float_matmul(ds.clone(), k);
        let dk = Self::float_matmul(t(ds), q);
        (tokens(dq), tokens(dk), tokens(dv))
    }

    /// The inner backend's step, off the tape (an optimiser step is not differentiated).
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [p, g, m, v] = [param, grad, moment_1, moment_2].map(Self::inner);
        let (p, m, v) = B::adamw_step(p, g, m, v, step);
        (Self::from_inner(p), Self::from_inner(m), Self::from_inner(v))
    }

    /// The inner backend's update, off the tape.
    fn ema_update(
        average: FloatTensor<Self>,
        value: FloatTensor<Self>,
        decay: f32,
        weight: f32,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::ema_update(
            Self::inner(average),
            Self::inner(value),
            decay,
            weight,
        ))
    }
}

/// The inner backend's primitive float tensor.
type Primitive<B> = <B as burn::backend::BackendTypes>::FloatTensorPrimitive;

/// The tape entry of an elementwise function: `slope(x, ∂y)` gives ∂x.
struct Elementwise<B: Backend> {
    slope: fn(Primitive<B>, Primitive<B>) -> Primitive<B>,
}

impl<B: Backend> std::fmt::Debug for Elementwise<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Elementwise")
    }
}

impl<B: Backend> Backward<B, 1> for Elementwise<B> {
    type State = Primitive<B>;
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, slope) = (ops.state, self.slope);
        unary::<B, _>(ops.parents, ops.node, grads, |grad| slope(x, grad));
    }
}

/// `f(x)` on the inner backend, recorded on the tape (with x, when a gradient is wanted) so
/// that `slope(x, ∂y)` gives ∂x.
fn elementwise<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    f: fn(Primitive<B>) -> Primitive<B>,
    slope: fn(Primitive<B>, Primitive<B>) -> Primitive<B>,
) -> FloatTensor<Autodiff<B, C>> {
    let node = x.node();
    let x = x.into_primitive();
    match (Elementwise::<B> { slope })
        .prepare::<C>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(x.clone(), f(x)),
        OpsKind::UnTracked(prep) => prep.finish(f(x)),
    }
}

/// The three input gradients of an operation from its inputs, ∂y and its parameters.
type TernaryBackward<B, S> = fn([Primitive<B>; 3], Primitive<B>, S) -> [Primitive<B>; 3];

/// The tape entry of an operation of three tensors whose three gradients one kernel call gives:
/// `backward(inputs, ∂y, spec)`.
struct Ternary<B: Backend, S> {
    backward: TernaryBackward<B, S>,
}

impl<B: Backend, S> std::fmt::Debug for Ternary<B, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ternary")
    }
}

impl<B: Backend, S: Clone + Send + std::fmt::Debug + 'static> Backward<B, 3> for Ternary<B, S> {
    type State = ([Primitive<B>; 3], S);
    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (inputs, spec) = ops.state;
        for (node, grad) in ops.parents.into_iter().zip((self.backward)(inputs, grad, spec)) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// `forward(inputs, spec)` on the inner backend, recorded on the tape (with the inputs, when a
/// gradient is wanted) so that `backward` gives the inputs' gradients.
fn ternary<B: Backend, C: CheckpointStrategy, S: Clone + Send + std::fmt::Debug + 'static>(
    inputs: [FloatTensor<Autodiff<B, C>>; 3],
    spec: S,
    forward: fn([Primitive<B>; 3], S) -> Primitive<B>,
    backward: TernaryBackward<B, S>,
) -> FloatTensor<Autodiff<B, C>> {
    let nodes = inputs.each_ref().map(|t| t.node());
    let inputs = inputs.map(|t| t.into_primitive());
    match (Ternary::<B, S> { backward })
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((inputs.clone(), spec.clone()), forward(inputs, spec)),
        OpsKind::UnTracked(prep) => prep.finish(forward(inputs, spec)),
    }
}

/// silu'(x) = σ(x) (1 + x (1 − σ(x))) from differentiable operations of `B`.
fn silu_slope<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = <B as ActivationOps<B>>::sigmoid(x.clone());
    let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1.0f64.into());
    let slope = B::float_add_scalar(B::float_mul(x, one_minus_s), 1.0f64.into());
    B::float_mul(s, slope)
}

#[cfg(test)]
mod tests {
    //! The gradient operations of the autodiff impl (differentiable compositions of burn's
    //! operations, not reached by a training step) against the flex kernels on the same inputs.

    use burn::backend::{Dispatch, DispatchTensor};
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    /// The same random values on flex and on flex with autodiff.
    fn pair<const D: usize>(shape: [usize; D], seed: u64) -> [DispatchTensor; 2] {
        let device = Device::flex();
        device.seed(seed);
        let t = Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let on_autodiff = Tensor::<D>::from_data(t.to_data(), &device.clone().autodiff());
        [t.into_dispatch(), on_autodiff.into_dispatch()]
    }

    fn close(a: DispatchTensor, b: DispatchTensor, what: &str) {
        let values = |t: DispatchTensor| {
            let n = t.shape().num_elements();
            let t = Tensor::<1>::from_dispatch(Dispatch::float_reshape(t, Shape::new([n])));
            t.to_data().try_to_vec::<f32>().unwrap()
        };
        let (a, b) = (values(a), values(b));
        assert_eq!(a.len(), b.len(), "{what}");
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0.0, f32::max);
        assert!(
            err < 1e-4,
            "{what}: the autodiff fallback differs from the kernel by {err:e}"
        );
    }

    #[test]
    fn convolution_gradient_fallbacks_match_the_kernels() {
        // Stride 2 and unequal padding whose end rows and columns are used (1 of each), so that
        // the end padding `Patches::conv_options` passes on matters.
        let p = Patches::new([2, 3, 7, 6], [3, 2], [2, 1], [(1, 1), (2, 1)]).unwrap();
        let [x, x_ad] = pair([2, 3, 7, 6], 1);
        let [w, w_ad] = pair([4, 3, 3, 2], 2);
        let [g, g_ad] = pair([2, 4, p.output[0], p.output[1]], 3);
        let (kernel, fallback) = (
            <Dispatch as CpuKernels>::patch_conv2d_input_grad(x.clone(), w.clone(), g.clone(), p),
            <Dispatch as CpuKernels>::patch_conv2d_input_grad(x_ad.clone(), w_ad.clone(), g_ad.clone(), p),
        );
        close(fallback, kernel, "∂x");
        let (kernel, fallback) = (
            <Dispatch as CpuKernels>::patch_conv2d_weight_grad(x, w, g.clone(), p),
            <Dispatch as CpuKernels>::patch_conv2d_weight_grad(x_ad, w_ad, g_ad.clone(), p),
        );
        close(fallback, kernel, "∂w");
        let (kernel, fallback) = (
            <Dispatch as CpuKernels>::patch_conv2d_bias_grad(g, p),
            <Dispatch as CpuKernels>::patch_conv2d_bias_grad(g_ad, p),
        );
        close(fallback, kernel, "∂b");
    }

    #[test]
    fn group_norm_and_silu_gradient_fallbacks_match_the_kernels() {
        for silu in [false, true] {
            let spec = GroupNormSpec {
                groups: 2,
                epsilon: 1e-5,
                silu,
            };
            let [x, x_ad] = pair([3, 4, 5, 6], 4);
            let [gamma, gamma_ad] = pair([4], 5);
            let [beta, beta_ad] = pair([4], 6);
            let [g, g_ad] = pair([3, 4, 5, 6], 7);
            let kernel = <Dispatch as CpuKernels>::group_norm_backward(x, gamma, beta, g, spec);
            let fallback = <Dispatch as CpuKernels>::group_norm_backward(x_ad, gamma_ad, beta_ad, g_ad, spec);
            close(fallback.0, kernel.0, "∂x");
            close(fallback.1, kernel.1, "∂γ");
            close(fallback.2, kernel.2, "∂β");
        }
        let [x, x_ad] = pair([200], 8);
        let [g, g_ad] = pair([200], 9);
        let kernel = <Dispatch as CpuKernels>::silu_backward(x.clone(), g.clone());
        close(
            <Dispatch as CpuKernels>::silu_backward(x_ad.clone(), g_ad.clone()),
            kernel,
            "silu'",
        );
        let kernel = <Dispatch as CpuKernels>::gelu_tanh_backward(x, g);
        close(
            <Dispatch as CpuKernels>::gelu_tanh_backward(x_ad, g_ad),
            kernel,
            "gelu'",
        );
    }

    #[test]
    fn attention_gradient_fallback_matches_the_kernel() {
        let spec = AttentionSpec {
            batch: 2,
            queries: 3,
            keys: 4,
            heads: 2,
            head_dim: 3,
        };
        let [q, q_ad] = pair([2, 3, 6], 10);
        let [k, k_ad] = pair([2, 4, 6], 11);
        let [v, v_ad] = pair([2, 4, 6], 12);
        let [g, g_ad] = pair([2, 3, 6], 13);
        let (o, lse) = <Dispatch as CpuKernels>::token_attention(q.clone(), k.clone(), v.clone(), spec);
        let (o_ad, lse_ad) =
            <Dispatch as CpuKernels>::token_attention(q_ad.clone(), k_ad.clone(), v_ad.clone(), spec);
        close(o_ad.clone(), o.clone(), "attention output");
        close(lse_ad.clone(), lse.clone(), "log-sum-exp");
        let kernel = <Dispatch as CpuKernels>::token_attention_backward(q, k, v, o, lse, g, spec);
        let fallback =
            <Dispatch as CpuKernels>::token_attention_backward(q_ad, k_ad, v_ad, o_ad, lse_ad, g_ad, spec);
        close(fallback.0, kernel.0, "∂q");
        close(fallback.1, kernel.1, "∂k");
        close(fallback.2, kernel.2, "∂v");
    }

    #[test]
    fn layer_norm_gradient_fallback_matches_the_kernel() {
        let spec = LayerNormSpec {
            batch: 2,
            tokens: 3,
            features: 5,
            epsilon: 1e-6,
        };
        let [x, x_ad] = pair([2, 3, 5], 14);
        let [shift, shift_ad] = pair([2, 5], 15);
        let [scale, scale_ad] = pair([2, 5], 16);
        let [g, g_ad] = pair([2, 3, 5], 17);
        let kernel = <Dispatch as CpuKernels>::modulated_layer_norm_backward(x, shift, scale, g, spec);
        let fallback =
            <Dispatch as CpuKernels>::modulated_layer_norm_backward(x_ad, shift_ad, scale_ad, g_ad, spec);
        close(fallback.0, kernel.0, "∂x");
        close(fallback.1, kernel.1, "∂shift");
        close(fallback.2, kernel.2, "∂scale");
    }

    #[test]
    fn linear_gradient_fallback_matches_the_kernel() {
        let spec = LinearSpec {
            rows: 6,
            inputs: 5,
            outputs: 4,
        };
        let [x, x_ad] = pair([6, 5], 18);
        let [w, w_ad] = pair([5, 4], 19);
        let [b, b_ad] = pair([4], 20);
        let [g, g_ad] = pair([6, 4], 21);
        // The forward pass against burn's product and sum (the autodiff impl runs the kernel).
        let y = <Dispatch as CpuKernels>::linear_rows(x_ad.clone(), w_ad.clone(), b_ad.clone(), spec);
        let bias = Dispatch::float_reshape(b.clone(), Shape::new([1, 4]));
        close(
            y,
            Dispatch::float_add(Dispatch::float_matmul(x.clone(), w.clone()), bias),
            "y",
        );
        let kernel = <Dispatch as CpuKernels>::linear_rows_backward(x, w, b, g, spec);
        let fallback = <Dispatch as CpuKernels>::linear_rows_backward(x_ad, w_ad, b_ad, g_ad, spec);
        close(fallback.0, kernel.0, "∂x");
        close(fallback.1, kernel.1, "∂w");
        close(fallback.2, kernel.2, "∂b");
    }
}
