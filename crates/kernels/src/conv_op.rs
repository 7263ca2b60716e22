//! A convolution y = conv(x, w) + b as one autodiff operation, whatever computes it: the flex
//! kernels ([`crate::conv`], [`crate::winograd`]) or the lowering of the cubecl backends
//! (`crate::cube`). The graph keeps x, w and the geometry; the backward pass asks the inner
//! backend for ∂b = Σ_{b, y, x} ∂y, ∂x and ∂w.

use std::fmt::Debug;
use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata};
use burn::tensor::Shape;

use crate::patches::Patches;

/// How an inner backend `B` computes a convolution (`[B, C_in, H, W]` inputs,
/// `[C_out, C_in, k_h, k_w]` weights, `[C_out]` biases) and its gradients from ∂y.
pub(crate) trait ConvOps<B: Backend>: Debug + Send + Sync + 'static {
    /// conv(x, w) + bias: `[B, C_out, H_out, W_out]`.
    fn forward(x: FloatTensor<B>, weight: FloatTensor<B>, bias: FloatTensor<B>, p: Patches)
    -> FloatTensor<B>;
    /// ∂x.
    fn input_grad(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        p: Patches,
    ) -> FloatTensor<B>;
    /// ∂w.
    fn weight_grad(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        p: Patches,
    ) -> FloatTensor<B>;
    /// ∂b, `[C_out]`.
    fn bias_grad(grad: FloatTensor<B>, _: Patches) -> FloatTensor<B> {
        summed_per_channel::<B>(grad)
    }
}

/// ∂b = Σ_{b, y, x} ∂y of `[B, C_out, H_out, W_out]`: `[C_out]`.
pub(crate) fn summed_per_channel<B: Backend>(grad: FloatTensor<B>) -> FloatTensor<B> {
    let c_out = grad.shape()[1];
    let summed = B::float_sum_dim(B::float_sum_dim(B::float_sum_dim(grad, 3), 2), 0);
    B::float_reshape(summed, Shape::new([c_out]))
}

/// The backward step of a convolution computed by `O`.
#[derive(Debug)]
struct Conv2d<O>(PhantomData<O>);

impl<B: Backend, O: ConvOps<B>> Backward<B, 3> for Conv2d<O> {
    type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, Patches);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, w, p) = ops.state;
        if let Some(node) = node_b {
            grads.register::<B>(node.id, O::bias_grad(grad.clone(), p));
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, O::input_grad(x.clone(), w.clone(), grad.clone(), p));
        }
        if let Some(node) = node_w {
            grads.register::<B>(node.id, O::weight_grad(x, w, grad, p));
        }
    }
}

/// conv(x, w) + bias on autodiff, computed by `O` on the inner backend.
pub(crate) fn conv2d<B: Backend, C: CheckpointStrategy, O: ConvOps<B>>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
    p: Patches,
) -> FloatTensor<Autodiff<B, C>> {
    let nodes = [x.node(), weight.node(), bias.node()];
    let (x, w, b) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
    match Conv2d::<O>(PhantomData)
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.clone(), w.clone(), p), O::forward(x, w, b, p)),
        OpsKind::UnTracked(prep) => prep.finish(O::forward(x, w, b, p)),
    }
}
