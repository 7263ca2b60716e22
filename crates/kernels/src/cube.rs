//! Convolutions on the cubecl backends (wgpu, CUDA) as one matrix product over the input's
//! patches: y_b = W · cols(x_b) + b (im2col, Chellapilla et al. 2006), with W of shape
//! `[C_out, C_in·k_h·k_w]` and cols(x_b) the `[C_in·k_h·k_w, H_out·W_out]` patch matrix of
//! [`crate::patches`].
//!
//! burn 0.22 autotunes an f32 convolution on these backends between a direct kernel,
//! implicit-GEMM kernels built on the tensor cores' matrix instructions and an im2col kernel for
//! 1×1 convolutions only. On an H100 under wgpu the profile of a U-Net training step showed the
//! direct kernel alone, 61 % of the step's GPU time: the forward pass ran at about 2 TFLOP/s,
//! where burn's matrix product reaches 18.6 (docs/performance.md, "GPU"). Here the forward
//! pass copies the windows of the zero-padded input (a strided view) into the patch matrix
//! once and multiplies it in one batched product; the gradients are burn's, which it already
//! lowers to matrix products (and col2im for ∂x).
//!
//! `DIFFUSION_CUBE_CONV=direct` in the environment turns the lowering off (burn's own
//! convolution everywhere), to compare the two on a device; any other value, or none, leaves
//! it on.

use std::sync::OnceLock;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Cube, Dispatch, DispatchDevice, TensorMetadata, backend_extension};
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Shape, Slice, Tensor};

use crate::conv_op::{self, ConvOps};
use crate::patches::Patches;

/// The operations that the cubecl backends run lowered to matrix products. Arguments are
/// float tensors of one dtype: `[B, C_in, H, W]` inputs, `[C_out, C_in, k_h, k_w]` weights and
/// `[C_out]` biases, one group, dilation 1.
#[backend_extension(Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait CubeKernels: Backend {
    /// conv(x, w) + bias: `[B, C_out, H_out, W_out]`.
    fn im2col_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        patches: Patches,
    ) -> FloatTensor<Self>;
}

impl CubeKernels for Cube {
    fn im2col_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        p: Patches,
    ) -> FloatTensor<Self> {
        lowered_conv2d::<Self>(x, weight, bias, p)
    }
}

/// The most bytes of patches built at once, 1 GiB: 75 images of the largest patch matrix of
/// the `ddpm-cifar10` U-Net (the first convolution of its last up-sampling level, 384 channels
/// at 32×32: 14.2 MB an image), or 7 images of 256×256 pixels with 64 channels (151 MB each).
const PATCH_BUDGET: usize = 1 << 30;

/// y = W · cols(x) + b, over as many images at a time as [`PATCH_BUDGET`] allows.
fn lowered_conv2d<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    p: Patches,
) -> FloatTensor<B> {
    lowered_conv2d_within::<B>(x, weight, bias, p, PATCH_BUDGET)
}

/// [`lowered_conv2d`] with at most `budget` bytes of patches at once (at least one image).
fn lowered_conv2d_within<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    p: Patches,
    budget: usize,
) -> FloatTensor<B> {
    let per_image = p.rows() * p.columns() * x.dtype().size();
    let images = (budget / per_image).clamp(1, p.batch);
    if images == p.batch {
        return product::<B>(x, weight, bias, p);
    }
    let parts = (0..p.batch)
        .step_by(images)
        .map(|start| {
            let end = (start + images).min(p.batch);
            let group = B::float_slice(
                x.clone(),
                &[(start..end).into(), Slice::full(), Slice::full(), Slice::full()],
            );
            let p = Patches {
                batch: end - start,
                ..p
            };
            product::<B>(group, weight.clone(), bias.clone(), p)
        })
        .collect();
    B::float_cat(parts, 0)
}

/// y = W · cols(x) + b over every image at once: a `[1, C_out, C_in·k_h·k_w]` weight against
/// the `[B, C_in·k_h·k_w, H_out·W_out]` patches, so the product comes out in NCHW order.
fn product<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    p: Patches,
) -> FloatTensor<B> {
    let c_out = weight.shape()[0];
    let weight = B::float_reshape(weight, Shape::new([1, c_out, p.rows()]));
    let y = B::float_matmul(weight, im2col::<B>(x, &p));
    let y = B::float_add(y, B::float_reshape(bias, Shape::new([1, c_out, 1])));
    B::float_reshape(y, Shape::new([p.batch, c_out, p.output[0], p.output[1]]))
}

/// The patch matrices of the batch, `[B, C_in·k_h·k_w, H_out·W_out]`: row (c, i, j) holds
/// x[b, c, y·s_h + i − p_top, x·s_w + j − p_left] over the output positions (y, x), zero
/// outside the image. The windows of the padded input, unfolded along its height and width,
/// are a strided view `[B, C_in, H_out, W_out, k_h, k_w]`; ordered as
/// `[B, C_in, k_h, k_w, H_out, W_out]`, one copy makes them the matrix.
fn im2col<B: Backend>(x: FloatTensor<B>, p: &Patches) -> FloatTensor<B> {
    // Each unfold appends its window as the last dimension, as flex's, cubecl's and fusion's
    // `float_unfold` do (burn 0.22's trait documentation puts it beside the unfolded one).
    let ([kh, kw], [sh, sw]) = (p.kernel, p.stride);
    let rows = B::float_unfold(padded::<B>(x, p), 2, kh, sh);
    let windows = B::float_unfold(rows, 3, kw, sw);
    let patches = B::float_permute(windows, &[0, 1, 4, 5, 2, 3]);
    B::float_reshape(patches, Shape::new([p.batch, p.rows(), p.columns()]))
}

/// The input on the rows and columns the patches read: (H_out − 1)·s_h + k_h by
/// (W_out − 1)·s_w + k_w from (−p_top, −p_left), zeros around the image. Without padding to
/// read, the input itself: its windows stop at H_out and W_out on their own.
fn padded<B: Backend>(x: FloatTensor<B>, p: &Patches) -> FloatTensor<B> {
    let span = |axis: usize| (p.output[axis] - 1) * p.stride[axis] + p.kernel[axis];
    let (span, begin) = ([span(0), span(1)], p.pad_begin);
    if begin == [0, 0] && span[0] <= p.input[0] && span[1] <= p.input[1] {
        return x;
    }
    let shape = Shape::new([p.batch, p.channels, span[0], span[1]]);
    let zeros = B::float_zeros(shape, &x.device(), x.dtype().into());
    // The image rows (columns) inside the span: none where every patch lies in the padding.
    let kept = |axis: usize| p.input[axis].min(span[axis].saturating_sub(begin[axis]));
    let kept = [kept(0), kept(1)];
    if kept.contains(&0) {
        return zeros;
    }
    let x = match kept == p.input {
        true => x,
        false => B::float_slice(
            x,
            &[
                Slice::full(),
                Slice::full(),
                (0..kept[0]).into(),
                (0..kept[1]).into(),
            ],
        ),
    };
    let place = [0, 1].map(|axis| Slice::from(begin[axis]..begin[axis] + kept[axis]));
    B::float_slice_assign(zeros, &[Slice::full(), Slice::full(), place[0], place[1]], x)
}

/// The lowered convolution forward, burn's convolution gradients backward.
#[derive(Debug)]
struct Lowered;

impl<B: Backend + CubeKernels> ConvOps<B> for Lowered {
    fn forward(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        bias: FloatTensor<B>,
        p: Patches,
    ) -> FloatTensor<B> {
        B::im2col_conv2d(x, weight, bias, p)
    }
    fn input_grad(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        p: Patches,
    ) -> FloatTensor<B> {
        B::conv2d_x_backward(x, weight, grad, p.conv_options())
    }
    fn weight_grad(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        p: Patches,
    ) -> FloatTensor<B> {
        B::conv2d_weight_backward(x, weight, grad, p.conv_options())
    }
}

impl<B: Backend + CubeKernels, C: CheckpointStrategy> CubeKernels for Autodiff<B, C> {
    fn im2col_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        p: Patches,
    ) -> FloatTensor<Self> {
        conv_op::conv2d::<B, C, Lowered>(x, weight, bias, p)
    }
}

/// An f32 tensor on a cubecl device, unless `DIFFUSION_CUBE_CONV=direct`. (The lowering is
/// written for any float dtype; f32 is the one tested.)
pub fn takes<const D: usize>(x: &Tensor<D>) -> bool {
    static DIRECT: OnceLock<bool> = OnceLock::new();
    let direct = *DIRECT.get_or_init(|| std::env::var("DIFFUSION_CUBE_CONV").is_ok_and(|v| v == "direct"));
    !direct && x.dtype() == DType::F32 && matches!(x.device().inner().as_dispatch(), DispatchDevice::Cube(_))
}

/// The convolution lowered to a matrix product, or `None` where that does not apply (another
/// backend, mixed dtypes, or a layer [`Patches::of_conv`] does not take).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Option<Tensor<4>> {
    let weight = conv.weight.val();
    if !takes(&x) || !takes(&weight) {
        return None;
    }
    let p = Patches::of_conv(conv, x.dims())?;
    let bias = match &conv.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([weight.dims()[0]], (&x.device(), x.dtype())),
    };
    if !takes(&bias) {
        return None;
    }
    let y = <Dispatch as CubeKernels>::im2col_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        p,
    );
    Some(Tensor::from_dispatch(y))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    //! The lowering is written for any backend, so its arithmetic is checked here on flex's
    //! tensors against burn's convolution, whole and in groups of images; the integration tests
    //! hold the routed layer to burn's on wgpu.

    use burn::backend::DispatchTensor;
    use burn::backend::ops::ModuleOps;
    use burn::tensor::{Device, Distribution};

    use super::*;

    fn random(shape: [usize; 4], device: &Device) -> DispatchTensor {
        Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device).into_dispatch()
    }

    fn values(t: DispatchTensor) -> Vec<f32> {
        Tensor::<4>::from_dispatch(t)
            .to_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn lowering_matches_burns_convolution_whole_and_in_groups() {
        let device = Device::flex();
        device.seed(11);
        let cases = [
            // 3×3 "same" padding; a 3×2 kernel with stride (2, 1) and padding on one side of
            // each axis; stride 2 whose patches stop short of the last row and column (with
            // and without padding); 1×1 (no padding); DiT's 2×2 patches; patches that lie in
            // the padding alone (the output is the bias).
            ([5, 3, 7, 6], [3, 3], [1, 1], [(1, 1), (1, 1)]),
            ([5, 2, 7, 6], [3, 2], [2, 1], [(0, 1), (2, 0)]),
            ([5, 2, 8, 8], [3, 3], [2, 2], [(1, 1), (1, 1)]),
            ([5, 2, 8, 8], [3, 3], [2, 2], [(0, 0), (0, 0)]),
            ([5, 4, 4, 4], [1, 1], [1, 1], [(0, 0), (0, 0)]),
            ([5, 3, 8, 8], [2, 2], [2, 2], [(0, 0), (0, 0)]),
            ([5, 2, 2, 2], [2, 2], [4, 4], [(3, 0), (3, 0)]),
        ];
        for (input, kernel, stride, padding) in cases {
            let p = Patches::new(input, kernel, stride, padding).unwrap();
            let x = random(input, &device);
            let w = random([4, input[1], kernel[0], kernel[1]], &device);
            let b = Tensor::<1>::random([4], Distribution::Normal(0.0, 1.0), &device).into_dispatch();
            let reference = values(Dispatch::conv2d(
                x.clone(),
                w.clone(),
                Some(b.clone()),
                p.conv_options(),
            ));
            let per_image = p.rows() * p.columns() * 4;
            // All images at once; one at a time; two at a time, the last group of one.
            for budget in [usize::MAX, per_image, 2 * per_image + 1] {
                let y = lowered_conv2d_within::<Dispatch>(x.clone(), w.clone(), b.clone(), p, budget);
                let y = values(y);
                assert_eq!(y.len(), reference.len(), "{p:?}");
                for (i, (a, r)) in y.iter().zip(&reference).enumerate() {
                    assert!(
                        (a - r).abs() <= 1e-5 * r.abs().max(1.0),
                        "{p:?}, budget {budget}, entry {i}: {a} against {r}"
                    );
                }
            }
        }
    }
}
