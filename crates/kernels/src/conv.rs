//! 2-D convolution (one group, dilation 1) and its two gradients on f32 NCHW slices, lowered
//! per image to matrix products with the patch matrix `cols(x_b)` of [`patches`](crate::patches):
//!
//! - forward: y_b = W · cols(x_b) + b 1ᵀ, with W the weights as a `[C_out, C_in·k_h·k_w]`
//!   matrix and b the bias;
//! - input gradient: ∂x_b = col2im(Wᵀ · ∂y_b);
//! - weight gradient: ∂W = Σ_b ∂y_b · cols(x_b)ᵀ; bias gradient: ∂b = Σ_b ∂y_b 1.
//!
//! 3×3 convolutions of stride 1 with 16 channels or more and at least 512 output positions over
//! the batch go to [`winograd`] instead.
//!
//! Images run in parallel, each with its patch matrix in a per-thread buffer that is reused
//! from call to call (a fresh allocation of that size costs more in page faults than the copy
//! itself); large images are taken in bands of output rows so that the buffer stays small. The weight gradient sums fixed groups of images in a fixed order, so it does not
//! depend on the number of threads or on scheduling.

use std::cell::RefCell;
use std::ops::Range;
use std::thread::LocalKey;

use rayon::prelude::*;

use crate::gemm::{Mat, matmul};
use crate::lanes;
use crate::patches::{Patches, col2im, im2col};
use crate::winograd;

/// Images whose weight-gradient terms are summed by one task, in order (here and in
/// [`winograd`]).
pub(crate) const GROUP: usize = 4;

/// The most values of a patch matrix built at once (4 MB of f32; a few rows in the unit tests,
/// so that they cover images taken in several bands).
const PATCH_VALUES: usize = if cfg!(test) { 64 } else { 1 << 20 };

/// y = conv(x, w) + b: `x` is `[B, C_in, H, W]`, `w` is `[C_out, C_in, k_h, k_w]`, `bias` is
/// `[C_out]`, the result `[B, C_out, H_out, W_out]`, all row-major.
pub fn conv2d(x: &[f32], w: &[f32], bias: &[f32], p: &Patches) -> Vec<f32> {
    if winograd::applies(p, bias.len()) {
        return winograd::conv2d(x, w, bias, p);
    }
    let (c_out, k, n, image) = (bias.len(), p.rows(), p.columns(), image_len(p));
    let weights = Mat::new(w, c_out, k);
    let mut y = vec![0.0f32; p.batch * c_out * n];
    per_chunk(&mut y, c_out * n, |b, y_b, parallel| {
        for (row, &bias) in y_b.chunks_mut(n).zip(bias) {
            row.fill(bias);
        }
        for band in bands(p) {
            let (start, width) = (band.start * p.output[1], band.len() * p.output[1]);
            with_scratch(k * width, |cols| {
                im2col(&x[b * image..][..image], p, band, cols);
                let cols = Mat::new(cols, k, width);
                matmul(&mut y_b[start..], n, weights, cols, true, parallel);
            });
        }
    });
    y
}

/// ∂b from ∂y: the sum of each output channel over images and positions, `[C_out]`.
pub fn conv2d_bias_grad(dy: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
    let n = p.columns();
    let per_image: Vec<f64> = (0..c_out)
        .into_par_iter()
        .map(|o| {
            (0..p.batch)
                .map(|b| lanes::sum(&dy[(b * c_out + o) * n..][..n], |v| v))
                .sum()
        })
        .collect();
    per_image.into_iter().map(|v| v as f32).collect()
}

/// ∂x from ∂y (`[B, C_out, H_out, W_out]`) and the weights: `[B, C_in, H, W]`.
pub fn conv2d_input_grad(w: &[f32], dy: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
    if winograd::applies(p, c_out) {
        return winograd::conv2d_input_grad(w, dy, p, c_out);
    }
    let (k, n) = (p.rows(), p.columns());
    let weights_t = Mat::new(w, c_out, k).t();
    let mut dx = vec![0.0f32; p.batch * image_len(p)];
    per_chunk(&mut dx, image_len(p), |b, dx_b, parallel| {
        let dy_b = &dy[b * c_out * n..][..c_out * n];
        for band in bands(p) {
            let (start, width) = (band.start * p.output[1], band.len() * p.output[1]);
            with_scratch(k * width, |dcols| {
                let dy_band = Mat::strided(&dy_b[start..], c_out, width, n);
                matmul(dcols, width, weights_t, dy_band, false, parallel);
                col2im(dcols, p, band, dx_b);
            });
        }
    });
    dx
}

/// ∂W from the input and ∂y: `[C_out, C_in, k_h, k_w]`.
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
    if winograd::applies(p, c_out) {
        return winograd::conv2d_weight_grad(x, dy, p, c_out);
    }
    let (k, n, image) = (p.rows(), p.columns(), image_len(p));
    let groups = p.batch.div_ceil(GROUP).max(1);
    let mut partial = vec![0.0f32; groups * c_out * k];
    per_chunk(&mut partial, c_out * k, |g, dw, parallel| {
        for b in g * GROUP..((g + 1) * GROUP).min(p.batch) {
            let dy_b = &dy[b * c_out * n..][..c_out * n];
            for band in bands(p) {
                let (start, width) = (band.start * p.output[1], band.len() * p.output[1]);
                with_scratch(k * width, |cols| {
                    im2col(&x[b * image..][..image], p, band, cols);
                    let dy_band = Mat::strided(&dy_b[start..], c_out, width, n);
                    matmul(dw, k, dy_band, Mat::new(cols, k, width).t(), true, parallel);
                });
            }
        }
    });
    let (total, rest) = partial.split_at_mut(c_out * k);
    for group in rest.chunks(c_out * k) {
        for (a, b) in total.iter_mut().zip(group) {
            *a += b;
        }
    }
    partial.truncate(c_out * k);
    partial
}

/// The bands of output rows whose patch matrices are built one at a time: the whole image
/// when its patch matrix holds at most [`PATCH_VALUES`] values, so that a thread's buffer stays
/// within 4 MB however large the image.
fn bands(p: &Patches) -> impl Iterator<Item = Range<usize>> + use<> {
    let per_row = (p.rows() * p.output[1]).max(1);
    let rows = (PATCH_VALUES / per_row).clamp(1, p.output[0].max(1));
    let height = p.output[0];
    (0..height)
        .step_by(rows)
        .map(move |start| start..(start + rows).min(height))
}

fn image_len(p: &Patches) -> usize {
    p.channels * p.input[0] * p.input[1]
}

/// Runs `f(index, chunk, parallel_gemm)` over the chunks of `out`: in parallel when there are
/// enough of them to keep every thread busy, otherwise one after the other with the matrix
/// products themselves split over the threads.
pub(crate) fn per_chunk(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32], bool) + Sync) {
    if out.len() / len.max(1) >= rayon::current_num_threads() {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|(i, o)| f(i, o, false));
    } else {
        for (i, o) in out.chunks_mut(len).enumerate() {
            f(i, o, true);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a buffer of `len` values (contents unspecified) that this thread keeps for the
/// next call; a fresh one if the thread's buffer is in use (a task stolen while waiting).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH, len, f)
}

/// [`with_scratch`] with the thread's buffer `key` (one per nesting level: a kernel that calls
/// `with_scratch` uses another buffer inside).
pub(crate) fn with_buffer<R>(
    key: &'static LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            f(&mut buffer[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: y[b, o, y, x] = Σ_{c,i,j} w[o, c, i, j] · x[b, c, y·s + i − p, x·s + j − p].
    fn conv_by_definition(x: &[f32], w: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
        let [kh, kw] = p.kernel;
        let [oh, ow] = p.output;
        let mut y = vec![0.0f64; p.batch * c_out * oh * ow];
        for b in 0..p.batch {
            for o in 0..c_out {
                for (yo, xo) in (0..oh).flat_map(|a| (0..ow).map(move |c| (a, c))) {
                    let mut acc = 0.0f64;
                    for c in 0..p.channels {
                        for i in 0..kh {
                            for j in 0..kw {
                                let yi = (yo * p.stride[0] + i) as isize - p.pad_begin[0] as isize;
                                let xi = (xo * p.stride[1] + j) as isize - p.pad_begin[1] as isize;
                                if (0..p.input[0] as isize).contains(&yi)
                                    && (0..p.input[1] as isize).contains(&xi)
                                {
                                    let xv = x[((b * p.channels + c) * p.input[0] + yi as usize)
                                        * p.input[1]
                                        + xi as usize];
                                    acc += (w[((o * p.channels + c) * kh + i) * kw + j] * xv) as f64;
                                }
                            }
                        }
                    }
                    y[((b * c_out + o) * oh + yo) * ow + xo] = acc;
                }
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|k| ((k as f32 + seed) * 0.7548).sin()).collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
    }

    fn cases() -> Vec<(Patches, usize)> {
        vec![
            (
                Patches::new([9, 3, 6, 5], [3, 3], [1, 1], [(1, 1), (1, 1)]).unwrap(),
                4,
            ),
            (
                Patches::new([1, 2, 7, 6], [3, 3], [2, 2], [(1, 1), (1, 1)]).unwrap(),
                3,
            ),
            (
                Patches::new([5, 2, 6, 5], [3, 2], [2, 1], [(0, 1), (2, 0)]).unwrap(),
                2,
            ),
            (
                Patches::new([3, 4, 4, 4], [1, 1], [1, 1], [(0, 0), (0, 0)]).unwrap(),
                5,
            ),
            // Wide enough, and enough output positions, for the Winograd path.
            (
                Patches::new([18, 16, 5, 6], [3, 3], [1, 1], [(1, 1), (1, 1)]).unwrap(),
                17,
            ),
        ]
    }

    /// The same values with one thread as with three (the weight gradient sums images in fixed
    /// groups, the GEMM never splits its inner dimension).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        crate::assert_independent_of_threads(|| {
            cases()
                .into_iter()
                .map(|(p, c_out)| {
                    let x = values(p.batch * image_len(&p), 0.5);
                    let w = values(c_out * p.rows(), 2.0);
                    let g = values(p.batch * c_out * p.columns(), 4.0);
                    let bias = values(c_out, 9.0);
                    [
                        conv2d(&x, &w, &bias, &p),
                        conv2d_input_grad(&w, &g, &p, c_out),
                        conv2d_weight_grad(&x, &g, &p, c_out),
                        conv2d_bias_grad(&g, &p, c_out),
                    ]
                })
                .collect::<Vec<_>>()
        });
    }

    #[test]
    fn forward_follows_the_definition() {
        for (p, c_out) in cases() {
            let x = values(p.batch * image_len(&p), 0.5);
            let w = values(c_out * p.rows(), 2.0);
            let bias: Vec<f32> = (0..c_out).map(|o| o as f32 * 0.25 - 0.5).collect();
            let want: Vec<f32> = conv_by_definition(&x, &w, &p, c_out)
                .iter()
                .enumerate()
                .map(|(i, v)| v + bias[i / p.columns() % c_out])
                .collect();
            let got = conv2d(&x, &w, &bias, &p);
            // Relative to the largest value on the Winograd path, which rounds at about 4·10⁻⁶
            // of it; absolute (values are of order 1) on the im2col path.
            let scale = if winograd::applies(&p, c_out) {
                want.iter().fold(1.0f32, |m, v| m.max(v.abs()))
            } else {
                1.0
            };
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-5 * scale, "{p:?}: max error {err} at scale {scale}");
        }
    }

    /// The gradients are the adjoints of the forward map: for y = conv(x, w) + b,
    /// ⟨y − b, g⟩ = ⟨x, ∂x(g)⟩ = ⟨w, ∂w(g)⟩ (linear in each argument) and ⟨b 1ᵀ, g⟩ = ⟨b, ∂b(g)⟩.
    #[test]
    fn the_gradients_are_the_adjoints() {
        for (p, c_out) in cases() {
            let x = values(p.batch * image_len(&p), 0.25);
            let w = values(c_out * p.rows(), 1.5);
            let g = values(p.batch * c_out * p.columns(), 4.0);
            let bias = values(c_out, 9.0);
            let y = dot(&conv2d(&x, &w, &bias, &p), &g);
            let via_x = dot(&x, &conv2d_input_grad(&w, &g, &p, c_out));
            let via_w = dot(&w, &conv2d_weight_grad(&x, &g, &p, c_out));
            let via_b = dot(&bias, &conv2d_bias_grad(&g, &p, c_out));
            // conv is affine in (x, w, b) jointly: ⟨y, g⟩ = ⟨x, ∂x⟩ = ⟨w, ∂w⟩ hold for the
            // bias-free part, and the bias adds ⟨b, ∂b⟩.
            let y = y - via_b;
            // On the Winograd path within 10⁻⁵ of the Cauchy–Schwarz bound ‖y − b‖‖g‖ (its
            // rounding is relative to the values' scale, and ⟨y − b, g⟩ cancels); otherwise
            // within 10⁻⁴ of the product itself.
            let norm = |v: &[f32]| dot(v, v).sqrt();
            let tol = if winograd::applies(&p, c_out) {
                1e-5 * norm(&conv2d(&x, &w, &vec![0.0; c_out], &p)) * norm(&g)
            } else {
                1e-4 * y.abs().max(1.0)
            };
            for other in [via_x, via_w] {
                assert!((y - other).abs() < tol, "{p:?}: {y} vs {other}");
            }
        }
    }
}
