//! Lanczos resampling of image batches: the non-learned baseline of super-resolution and the
//! down-sampling that makes low-resolution conditioning inputs.
//!
//! The kernel is L(x) = sinc(x) sinc(x/a) for |x| < a (a = 3), sinc(x) = sin(πx)/(πx).
//! Resizing a length-n axis to m samples places output i at centre c = (i + ½) n/m on the
//! input grid; when shrinking (n/m > 1) the kernel is stretched by n/m to filter out
//! frequencies the output cannot hold. Each output is Σⱼ L((j + ½ − c)/s) xⱼ over the input
//! samples j within the support, the weights normalised to sum to 1 (so constants are kept
//! and borders renormalise rather than pad). This is Pillow's `Image.resize(…, LANCZOS)`;
//! rows are resized before columns, as there.

use burn::tensor::Tensor;
use diffusion_core::tensor::from_f64_like;

/// The support a of the Lanczos kernel.
pub const LANCZOS_SUPPORT: f64 = 3.0;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// L(x) = sinc(x) sinc(x/3) on [−3, 3), 0 elsewhere.
pub fn lanczos3(x: f64) -> f64 {
    if (-LANCZOS_SUPPORT..LANCZOS_SUPPORT).contains(&x) {
        sinc(x) * sinc(x / LANCZOS_SUPPORT)
    } else {
        0.0
    }
}

/// The `[output, input]` matrix of normalised Lanczos weights that resizes an axis of
/// `input` samples to `output` samples.
pub fn lanczos_matrix(input: usize, output: usize) -> Vec<f64> {
    let scale = input as f64 / output as f64;
    let stretch = scale.max(1.0);
    let support = LANCZOS_SUPPORT * stretch;
    let mut w = vec![0.0; output * input];
    for i in 0..output {
        let centre = (i as f64 + 0.5) * scale;
        // Pillow's window: truncation of centre ∓ support + ½, clamped to the axis.
        let lo = ((centre - support + 0.5) as i64).max(0) as usize;
        let hi = ((centre + support + 0.5) as i64).min(input as i64) as usize;
        let row = &mut w[i * input..(i + 1) * input];
        for (j, slot) in row.iter_mut().enumerate().take(hi).skip(lo) {
            *slot = lanczos3((j as f64 - centre + 0.5) / stretch);
        }
        let total: f64 = row.iter().sum();
        if total != 0.0 {
            row.iter_mut().for_each(|v| *v /= total);
        }
    }
    w
}

/// Resizes images `[n, c, h, w]` to `[n, c, height, width]` with the Lanczos-3 kernel.
pub fn lanczos_resize(images: Tensor<4>, height: usize, width: usize) -> Tensor<4> {
    let [n, c, h, w] = images.dims();
    let flat = images.reshape([n * c * h, w]);
    let across = from_f64_like(transpose(&lanczos_matrix(w, width), width, w), [w, width], &flat);
    let rows = flat.matmul(across); // [n c h, width]
    let columns = rows
        .reshape([n * c, h, width])
        .swap_dims(1, 2)
        .reshape([n * c * width, h]);
    let down = from_f64_like(
        transpose(&lanczos_matrix(h, height), height, h),
        [h, height],
        &columns,
    );
    columns
        .matmul(down) // [n c width, height]
        .reshape([n * c, width, height])
        .swap_dims(1, 2)
        .reshape([n, c, height, width])
}

/// The transpose of a row-major `[rows, cols]` matrix.
fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols)
        .flat_map(|j| (0..rows).map(move |i| (i, j)))
        .map(|(i, j)| m[i * cols + j])
        .collect()
}
