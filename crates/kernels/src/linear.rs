//! A linear layer on token-major rows, y = x W + b, forward and backward, over every row of
//! the batch at once:
//!
//! - y = x W + b: the bias is written into the output first and the product accumulated onto
//!   it, so no pass adds it afterwards;
//! - ∂x = ∂y Wᵀ; ∂W = xᵀ ∂y, one product whose inner dimension runs over all rows; and
//!   ∂b = Σ_rows ∂y.
//!
//! x is `[R, I]` (the rows of a `[..., I]` tensor), W `[I, O]` as burn stores it, b `[O]`.
//! burn's composition of a linear layer on a `[B, N, I]` input differentiates the weight as B
//! products `[I, N] × [N, O]` summed afterwards (B·I·O values written and read again), and adds
//! the bias in a pass of its own; here the sum over rows happens inside one product. (burn's
//! own autodiff `linear` computes ∂W as one product too, but the `Dispatch` backend of burn
//! 0.22 does not forward `ModuleOps::linear` and composes the layer from a broadcast batched
//! product, which burn keeps batched when N is a multiple of 32.) The products of y and ∂x run
//! in blocks of a fixed number of rows; the blocks, the GEMM's blocking of the inner dimension
//! and the order of ∂b's sums depend on the shapes alone, so the results do not depend on the
//! number of threads.

use rayon::prelude::*;

use crate::gemm::{Mat, matmul};
use crate::simd::wide;

/// The shape of a linear layer's input and weight: `rows` rows of `inputs` features mapped
/// to `outputs` features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearSpec {
    /// Rows (R): the product of the input's leading dimensions.
    pub rows: usize,
    /// Input features (I).
    pub inputs: usize,
    /// Output features (O).
    pub outputs: usize,
}

/// y `[R, O]` = x `[R, I]` · w `[I, O]` + b `[O]`.
pub fn linear(x: &[f32], w: &[f32], b: &[f32], s: &LinearSpec) -> Vec<f32> {
    let o = s.outputs;
    let mut y = Vec::with_capacity(s.rows * o);
    for _ in 0..s.rows {
        y.extend_from_slice(&b[..o]);
    }
    by_rows(&mut y, x, s.rows, s.inputs, Mat::new(w, s.inputs, o), true);
    y
}

/// (∂x, ∂w, ∂b) of [`linear`] from its input x, its weight w and ∂y `[R, O]`.
pub fn linear_backward(x: &[f32], w: &[f32], grad: &[f32], s: &LinearSpec) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (r, i, o) = (s.rows, s.inputs, s.outputs);
    let mut dx = vec![0.0; r * i];
    by_rows(&mut dx, grad, r, o, Mat::new(w, i, o).t(), false);
    let mut dw = vec![0.0; i * o];
    matmul(
        &mut dw,
        o,
        Mat::new(x, r, i).t(),
        Mat::new(grad, r, o),
        false,
        true,
    );
    (dx, dw, column_sums(grad, r, o))
}

/// Rows per product in [`by_rows`] (a DiT-S/2 image's tokens at 32×32), and per partial sum
/// in [`column_sums`].
const ROW_BLOCK: usize = 256;

/// dst = lhs · rhs (dst += when `accumulate`) for a row-major `lhs` of `rows × k`, as
/// independent products of [`ROW_BLOCK`] rows in parallel, which keep both cores busier than one
/// product split across them; a single block splits its product over the threads instead. The
/// blocks depend on `rows` alone, never on the number of threads.
fn by_rows(dst: &mut [f32], lhs: &[f32], rows: usize, k: usize, rhs: Mat, accumulate: bool) {
    let n = rhs.cols();
    if rows <= ROW_BLOCK || k == 0 || n == 0 {
        return matmul(dst, n, Mat::new(lhs, rows, k), rhs, accumulate, true);
    }
    dst[..rows * n]
        .par_chunks_mut(ROW_BLOCK * n)
        .zip(lhs[..rows * k].par_chunks(ROW_BLOCK * k))
        .for_each(|(dst, lhs)| matmul(dst, n, Mat::new(lhs, lhs.len() / k, k), rhs, accumulate, false));
}

/// Σ over the rows of a row-major `rows × cols` matrix, in f64: blocks of [`ROW_BLOCK`] rows
/// in parallel, each summed row by row, then the blocks' sums added in block order (so the
/// result depends on the shape alone, never on the number of threads).
fn column_sums(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    if cols == 0 {
        return Vec::new();
    }
    let mut partial = vec![0.0f64; rows.div_ceil(ROW_BLOCK) * cols];
    partial
        .par_chunks_mut(cols)
        .zip(m[..rows * cols].par_chunks(ROW_BLOCK * cols))
        .for_each(|(acc, block)| wide!(add_rows(acc: &mut [f64], block: &[f32])));
    let mut sums = vec![0.0f64; cols];
    for block in partial.chunks_exact(cols) {
        for (s, &p) in sums.iter_mut().zip(block) {
            *s += p;
        }
    }
    sums.into_iter().map(|s| s as f32).collect()
}

/// acc += Σ of the rows of `block` (rows as long as `acc`), row by row.
#[inline(always)]
fn add_rows(acc: &mut [f64], block: &[f32]) {
    for row in block.chunks_exact(acc.len()) {
        for (acc, &v) in acc.iter_mut().zip(row) {
            *acc += v as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|k| ((k as f32 + 1.0) * seed).sin()).collect()
    }

    /// x, w, b of a layer with `s`'s shape.
    fn inputs(s: &LinearSpec) -> [Vec<f32>; 3] {
        [
            values(s.rows * s.inputs, 0.37),
            values(s.inputs * s.outputs, 0.91),
            values(s.outputs, 1.7),
        ]
    }

    /// y = x w + b in f64 from the definition.
    fn reference(x: &[f32], w: &[f32], b: &[f32], s: &LinearSpec) -> Vec<f64> {
        let mut y = vec![0.0; s.rows * s.outputs];
        for r in 0..s.rows {
            for o in 0..s.outputs {
                let dot: f64 = (0..s.inputs)
                    .map(|i| x[r * s.inputs + i] as f64 * w[i * s.outputs + o] as f64)
                    .sum();
                y[r * s.outputs + o] = dot + b[o] as f64;
            }
        }
        y
    }

    const SHAPES: [LinearSpec; 4] = [
        LinearSpec {
            rows: 7,
            inputs: 5,
            outputs: 3,
        },
        LinearSpec {
            rows: 130,
            inputs: 33,
            outputs: 70,
        },
        LinearSpec {
            rows: 1,
            inputs: 16,
            outputs: 129,
        },
        // Two blocks of rows, the second partial.
        LinearSpec {
            rows: ROW_BLOCK + 44,
            inputs: 24,
            outputs: 40,
        },
    ];

    #[test]
    fn forward_matches_the_definition() {
        for s in SHAPES {
            let [x, w, b] = inputs(&s);
            let y = linear(&x, &w, &b, &s);
            for (got, want) in y.iter().zip(reference(&x, &w, &b, &s)) {
                assert!(
                    (*got as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                    "{s:?}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // The small shapes: on the large one, the rounding of x + εδ to f32 alone moves the
        // difference quotient by ~10⁻³ (the test below checks it against the definition).
        for s in &SHAPES[..3] {
            let inputs = inputs(s);
            let dy = values(s.rows * s.outputs, 0.23);
            let (dx, dw, db) = linear_backward(&inputs[0], &inputs[1], &dy, s);
            let loss = |t: &[Vec<f32>; 3]| {
                let y = reference(&t[0], &t[1], &t[2], s);
                y.iter().zip(&dy).map(|(y, &g)| y * g as f64).sum()
            };
            crate::assert_gradients_match_finite_differences(&inputs, [&dx, &dw, &db], loss, 1e-4);
        }
    }

    #[test]
    fn gradients_match_the_definition() {
        for s in SHAPES {
            let [x, w, _] = inputs(&s);
            let dy = values(s.rows * s.outputs, 0.23);
            let (dx, dw, db) = linear_backward(&x, &w, &dy, &s);
            let (r, i, o) = (s.rows, s.inputs, s.outputs);
            let dot = |n: usize, f: &dyn Fn(usize) -> f64| (0..n).map(f).sum::<f64>();
            let check = |got: f32, want: f64| {
                assert!(
                    (got as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                    "{s:?}: {got} vs {want}"
                );
            };
            for (k, &got) in dx.iter().enumerate() {
                let (row, col) = (k / i, k % i);
                check(got, dot(o, &|c| dy[row * o + c] as f64 * w[col * o + c] as f64));
            }
            for (k, &got) in dw.iter().enumerate() {
                let (a, c) = (k / o, k % o);
                check(got, dot(r, &|row| x[row * i + a] as f64 * dy[row * o + c] as f64));
            }
            for (c, &got) in db.iter().enumerate() {
                check(got, dot(r, &|row| dy[row * o + c] as f64));
            }
        }
    }

    #[test]
    fn bias_gradient_sums_each_column() {
        // Rows 1, 2, 3, ... in every column sum to R (R + 1) / 2 exactly.
        let (rows, cols) = (300, 150);
        let m: Vec<f32> = (0..rows * cols).map(|k| (k / cols + 1) as f32).collect();
        let want = (rows * (rows + 1) / 2) as f32;
        assert!(column_sums(&m, rows, cols).iter().all(|&s| s == want));
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let s = LinearSpec {
            rows: 257,
            inputs: 96,
            outputs: 200,
        };
        let [x, w, b] = inputs(&s);
        let dy = values(s.rows * s.outputs, 0.23);
        crate::assert_independent_of_threads(|| (linear(&x, &w, &b, &s), linear_backward(&x, &w, &dy, &s)));
    }
}
