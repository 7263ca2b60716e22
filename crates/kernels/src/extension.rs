//! The kernels as a burn backend extension: computed on flex, differentiated on autodiff.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::{ActivationOps, ConvOptions, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Shape, TensorData};
use burn_flex::FlexTensor;

use crate::norm::{self, GroupNormSpec, Layout};
use crate::patches::Patches;
use crate::{conv, silu};

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
    /// x · σ(x).
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// grad · σ(x) (1 + x (1 − σ(x))): the gradient of `silu` at x.
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
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

    fn silu(x: FlexTensor) -> FlexTensor {
        let shape = x.layout().shape().to_vec();
        from_vec(with_f32(&x, silu::silu), shape)
    }

    fn silu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = x.layout().shape().to_vec();
        from_vec(
            with_f32(&x, |x| with_f32(&grad, |g| silu::silu_backward(x, g))),
            shape,
        )
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
}

/// burn's options for the same convolution (for the differentiable fallbacks below).
fn options(p: &Patches, weight: &Shape) -> ConvOptions<2> {
    let kernel = [weight[2], weight[3]];
    let end = |axis: usize| {
        let span = (p.output[axis] - 1) * p.stride[axis] + kernel[axis];
        span.saturating_sub(p.input[axis] + p.pad_begin[axis])
    };
    ConvOptions::new_with_padding(
        p.stride,
        [(p.pad_begin[0], end(0)), (p.pad_begin[1], end(1))],
        [1, 1],
        1,
    )
}

impl<B: Backend + CpuKernels, C: CheckpointStrategy> CpuKernels for Autodiff<B, C> {
    fn patch_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        p: Patches,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv2d;
        impl<B: Backend + CpuKernels> Backward<B, 3> for Conv2d {
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, Patches);
            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_w, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, w, p) = ops.state;
                if let Some(node) = node_b {
                    grads.register::<B>(node.id, B::patch_conv2d_bias_grad(grad.clone(), p));
                }
                if let Some(node) = node_x {
                    let dx = B::patch_conv2d_input_grad(x.clone(), w.clone(), grad.clone(), p);
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_w {
                    grads.register::<B>(node.id, B::patch_conv2d_weight_grad(x, w, grad, p));
                }
            }
        }
        let nodes = [x.node(), weight.node(), bias.node()];
        let (x, w, b) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
        match Conv2d.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x.clone(), w.clone(), p), B::patch_conv2d(x, w, b, p)),
            OpsKind::UnTracked(prep) => prep.finish(B::patch_conv2d(x, w, b, p)),
        }
    }

    /// Sums over images and positions, from differentiable operations.
    fn patch_conv2d_bias_grad(grad: FloatTensor<Self>, _: Patches) -> FloatTensor<Self> {
        let c = grad.shape()[1];
        let summed = Self::float_sum_dim(Self::float_sum_dim(Self::float_sum_dim(grad, 3), 2), 0);
        Self::float_reshape(summed, Shape::new([c]))
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
        let options = options(&p, &weight.shape());
        Self::conv2d_x_backward(x, weight, grad, options)
    }

    /// As [`CpuKernels::patch_conv2d_input_grad`].
    fn patch_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        p: Patches,
    ) -> FloatTensor<Self> {
        let options = options(&p, &weight.shape());
        Self::conv2d_weight_backward(x, weight, grad, options)
    }

    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Silu;
        impl<B: Backend + CpuKernels> Backward<B, 1> for Silu {
            type State = B::FloatTensorPrimitive;
            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let x = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::silu_backward(x, grad));
            }
        }
        let node = x.node();
        let x = x.into_primitive();
        match Silu.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(x.clone(), B::silu(x)),
            OpsKind::UnTracked(prep) => prep.finish(B::silu(x)),
        }
    }

    fn group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GroupNorm;
        impl<B: Backend + CpuKernels> Backward<B, 3> for GroupNorm {
            type State = ([B::FloatTensorPrimitive; 3], GroupNormSpec);
            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let ([x, gamma, beta], spec) = ops.state;
                let (dx, dgamma, dbeta) = B::group_norm_backward(x, gamma, beta, grad, spec);
                for (node, grad) in ops.parents.into_iter().zip([dx, dgamma, dbeta]) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }
        let nodes = [x.node(), gamma.node(), beta.node()];
        let inputs = [x.into_primitive(), gamma.into_primitive(), beta.into_primitive()];
        let run = |[x, gamma, beta]: [B::FloatTensorPrimitive; 3]| B::group_norm(x, gamma, beta, spec);
        match GroupNorm.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((inputs.clone(), spec), run(inputs)),
            OpsKind::UnTracked(prep) => prep.finish(run(inputs)),
        }
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
        // the end padding `options` reconstructs matters.
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
        let kernel = <Dispatch as CpuKernels>::silu_backward(x, g);
        close(
            <Dispatch as CpuKernels>::silu_backward(x_ad, g_ad),
            kernel,
            "silu'",
        );
    }
}
