//! Multi-head scaled dot-product attention on token-major slices, forward and backward.
//!
//! O = softmax(Q Kᵀ / √d) V for each image and head (Vaswani et al. 2017, eq. 1), where the
//! inputs are the projections as the linear layers give them: queries `[B, N, H·d]`, keys and
//! values `[B, L, H·d]`, head h in columns h·d..(h+1)·d. A head is a strided view of those
//! columns, so the heads are never transposed out and back. Per (image, head) the forward pass
//! is two matrix products around a row softmax of the N×L scores, and it keeps the log-sum-exp
//! of every row, ℓ_i = log Σ_j exp(s_ij), so that the backward pass recomputes the probabilities
//! P = exp(S − ℓ) instead of storing them (as flash attention does, Dao et al. 2022):
//!
//! - ∂V = Pᵀ ∂O,
//! - ∂P = ∂O Vᵀ, and with D_i = Σ_j ∂O_ij O_ij = Σ_j P_ij ∂P_ij, ∂S = P ⊙ (∂P − D),
//! - ∂Q = ∂S K / √d and ∂K = ∂Sᵀ Q / √d.
//!
//! Only the N×L scores of the head at hand are in memory, in a scratch buffer of the task's
//! own, instead of the B·H·N·L scores, their exponentials and their softmax that the composed
//! operations keep for the backward pass. Images are the parallel tasks, and with fewer images
//! than threads each matrix product splits over the threads instead; the result does not
//! depend on the number of threads (the products never split their inner dimension).

use rayon::prelude::*;

use crate::gemm::{Mat, matmul};
use crate::lanes;
use crate::simd::wide;

/// The shape of an attention: `batch` images, `queries` query tokens, `keys` key and value
/// tokens, `heads` heads of width `head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionSpec {
    /// Images.
    pub batch: usize,
    /// Query tokens per image (N).
    pub queries: usize,
    /// Key and value tokens per image (L).
    pub keys: usize,
    /// Heads (H).
    pub heads: usize,
    /// Width of a head (d); a token is H·d wide.
    pub head_dim: usize,
}

impl AttentionSpec {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// 1/√d.
    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }

    /// Head `h` of image `b`'s `tokens` rows in a token-major slice: a `tokens × d` view.
    fn head<'a>(&self, x: &'a [f32], tokens: usize, h: usize) -> Mat<'a> {
        Mat::strided(&x[h * self.head_dim..], tokens, self.head_dim, self.width())
    }

    /// Whether to let each matrix product use every thread: when there are fewer images than
    /// threads to run them on.
    fn inner_parallel(&self) -> bool {
        self.batch < rayon::current_num_threads()
    }
}

/// The attention output `[B, N, H·d]` and the log-sum-exp of the scaled scores `[B, H, N]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: &AttentionSpec) -> (Vec<f32>, Vec<f32>) {
    let (n, c) = (s.queries, s.width());
    let mut out = vec![0.0; s.batch * n * c];
    let mut lse = vec![0.0; s.batch * s.heads * n];
    out.par_chunks_mut(n * c)
        .zip(lse.par_chunks_mut(s.heads * n))
        .enumerate()
        .for_each(|(b, (out, lse))| wide!(forward_image(q: &[f32], k: &[f32], v: &[f32], s: &AttentionSpec, b: usize, out: &mut [f32], lse: &mut [f32])));
    (out, lse)
}

/// (∂Q, ∂K, ∂V) of [`attention`] from its inputs, its output `o`, the log-sum-exp `lse` it
/// returned, and ∂O.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    grad: &[f32],
    s: &AttentionSpec,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, l, c) = (s.queries, s.keys, s.width());
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    dq.par_chunks_mut(n * c)
        .zip(dk.par_chunks_mut(l * c))
        .zip(dv.par_chunks_mut(l * c))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            let images = Images { q, k, v, o, lse, grad };
            let images = &images;
            wide!(backward_image(images: &Images, s: &AttentionSpec, b: usize, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]))
        });
    (dq, dk, dv)
}

/// The attention output of image `b` (`out`, N×H·d) and the log-sum-exp of its scores
/// (`lse`, H×N), head by head.
#[inline(always)]
fn forward_image(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &AttentionSpec,
    b: usize,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (n, l, c) = (s.queries, s.keys, s.width());
    let (q, k, v) = (&q[b * n * c..], &k[b * l * c..], &v[b * l * c..]);
    let mut p = vec![0.0; n * l];
    for (h, lse) in lse.chunks_mut(n).enumerate() {
        probabilities(&mut p, s.head(q, n, h), s.head(k, l, h), s, Some(lse));
        let dst = &mut out[h * s.head_dim..];
        matmul(
            dst,
            c,
            Mat::new(&p, n, l),
            s.head(v, l, h),
            false,
            s.inner_parallel(),
        );
    }
}

/// The whole batch's inputs, output, log-sum-exp and ∂O, for the backward pass.
struct Images<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    o: &'a [f32],
    lse: &'a [f32],
    grad: &'a [f32],
}

/// ∂Q, ∂K and ∂V of image `b`, head by head.
#[inline(always)]
fn backward_image(x: &Images, s: &AttentionSpec, b: usize, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let (n, l, c, d) = (s.queries, s.keys, s.width(), s.head_dim);
    let par = s.inner_parallel();
    let (q, k, v) = (&x.q[b * n * c..], &x.k[b * l * c..], &x.v[b * l * c..]);
    let (o, grad) = (
        &x.o[b * n * c..(b + 1) * n * c],
        &x.grad[b * n * c..(b + 1) * n * c],
    );
    let (mut p, mut ds) = (vec![0.0; n * l], vec![0.0; n * l]);
    for h in 0..s.heads {
        let lse = &x.lse[(b * s.heads + h) * n..][..n];
        let (qh, kh, vh, dout) = (
            s.head(q, n, h),
            s.head(k, l, h),
            s.head(v, l, h),
            s.head(grad, n, h),
        );
        probabilities(&mut p, qh, kh, s, None);
        for (row, &lse) in p.chunks_mut(l).zip(lse) {
            row.iter_mut()
                .for_each(|x| *x = crate::elementwise::exp(*x - lse));
        }
        let pm = Mat::new(&p, n, l);
        matmul(&mut dv[h * d..], c, pm.t(), dout, false, par);
        matmul(&mut ds, l, dout, vh.t(), false, par);
        // ∂S = P ⊙ (∂P − D) / √d, row by row.
        let scale = s.scale();
        for i in 0..n {
            let at = i * c + h * d;
            let di = lanes::sum2(&grad[at..at + d], &o[at..at + d], |g, o| g * o) as f32;
            let (p, ds) = (&p[i * l..(i + 1) * l], &mut ds[i * l..(i + 1) * l]);
            for (ds, &p) in ds.iter_mut().zip(p) {
                *ds = p * (*ds - di) * scale;
            }
        }
        let dsm = Mat::new(&ds, n, l);
        matmul(&mut dq[h * d..], c, dsm, kh, false, par);
        matmul(&mut dk[h * d..], c, dsm.t(), qh, false, par);
    }
}

/// The scaled scores S = Q Kᵀ/√d of one head into `p` (N×L), then, with `lse`, their row
/// softmax and each row's log-sum-exp; without, the scaled scores alone.
#[inline(always)]
fn probabilities(p: &mut [f32], q: Mat, k: Mat, s: &AttentionSpec, lse: Option<&mut [f32]>) {
    let l = s.keys;
    matmul(p, l, q, k.t(), false, s.inner_parallel());
    let scale = s.scale();
    match lse {
        None => p.iter_mut().for_each(|x| *x *= scale),
        Some(lse) => {
            for (row, lse) in p.chunks_mut(l).zip(lse) {
                *lse = softmax(row, scale);
            }
        }
    }
}

/// Replaces `row` by softmax(scale · row) and returns log Σ_j exp(scale · row_j).
#[inline(always)]
fn softmax(row: &mut [f32], scale: f32) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * scale;
    row.iter_mut()
        .for_each(|x| *x = crate::elementwise::exp(*x * scale - max));
    let sum = lanes::sum(row, |x| x);
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|x| *x *= inv);
    max + sum.ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention by its definition in f64, head by head: (O, ℓ).
    fn reference(q: &[f32], k: &[f32], v: &[f32], s: &AttentionSpec) -> (Vec<f64>, Vec<f64>) {
        let (n, l, c, d) = (s.queries, s.keys, s.width(), s.head_dim);
        let mut out = vec![0.0; s.batch * n * c];
        let mut lse = vec![0.0; s.batch * s.heads * n];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..n {
                    let qi = |t: usize| q[(b * n + i) * c + h * d + t] as f64;
                    let scores: Vec<f64> = (0..l)
                        .map(|j| {
                            (0..d)
                                .map(|t| qi(t) * k[(b * l + j) * c + h * d + t] as f64)
                                .sum::<f64>()
                        })
                        .map(|x| x / (d as f64).sqrt())
                        .collect();
                    let z: f64 = scores.iter().map(|x| x.exp()).sum();
                    lse[(b * s.heads + h) * n + i] = z.ln();
                    for t in 0..d {
                        out[(b * n + i) * c + h * d + t] = (0..l)
                            .map(|j| scores[j].exp() / z * v[(b * l + j) * c + h * d + t] as f64)
                            .sum();
                    }
                }
            }
        }
        (out, lse)
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * seed).sin() * 1.5).collect()
    }

    const SPEC: AttentionSpec = AttentionSpec {
        batch: 3,
        queries: 5,
        keys: 7,
        heads: 2,
        head_dim: 4,
    };

    fn inputs(s: &AttentionSpec) -> [Vec<f32>; 3] {
        let (n, l, c) = (s.queries, s.keys, s.width());
        [
            values(s.batch * n * c, 0.37),
            values(s.batch * l * c, 0.91),
            values(s.batch * l * c, 1.73),
        ]
    }

    #[test]
    fn forward_matches_the_definition() {
        let [q, k, v] = inputs(&SPEC);
        let (out, lse) = attention(&q, &k, &v, &SPEC);
        let (want, want_lse) = reference(&q, &k, &v, &SPEC);
        for (x, y) in out.iter().zip(&want).chain(lse.iter().zip(&want_lse)) {
            assert!((*x as f64 - y).abs() < 1e-5, "{x} against {y}");
        }
    }

    /// Against finite differences of the f64 reference forward pass.
    #[test]
    fn gradients_match_finite_differences() {
        let s = SPEC;
        let inputs = inputs(&s);
        let [q, k, v] = &inputs;
        let (out, lse) = attention(q, k, v, &s);
        let grad = values(out.len(), 2.31);
        let (dq, dk, dv) = attention_backward(q, k, v, &out, &lse, &grad, &s);
        let loss = |x: &[Vec<f32>; 3]| {
            let (o, _) = reference(&x[0], &x[1], &x[2], &s);
            o.iter().zip(&grad).map(|(o, g)| o * *g as f64).sum::<f64>()
        };
        crate::assert_gradients_match_finite_differences(&inputs, [&dq, &dk, &dv], loss, 2e-3);
    }

    /// Two images at sizes where the GEMMs split over threads when there are more threads than
    /// images (N = L = 160, above the `gemm` crate's threading threshold).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let s = AttentionSpec {
            batch: 2,
            queries: 160,
            keys: 160,
            heads: 2,
            head_dim: 32,
        };
        let [q, k, v] = inputs(&s);
        crate::assert_independent_of_threads(|| {
            let (o, lse) = attention(&q, &k, &v, &s);
            let grads = attention_backward(&q, &k, &v, &o, &lse, &o, &s);
            (o, lse, grads)
        });
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let s = AttentionSpec {
            batch: 1,
            queries: 2,
            keys: 3,
            heads: 1,
            head_dim: 1,
        };
        let (q, k, v) = ([100.0, -100.0], [100.0, 99.0, -100.0], [1.0, 2.0, 3.0]);
        let (out, lse) = attention(&q, &k, &v, &s);
        // Row 0: scores 10⁴, 9900, −10⁴ → all weight on key 0; row 1: on key 2.
        assert_eq!(out, vec![1.0, 3.0]);
        assert!(
            (lse[0] - 1e4).abs() < 1e-2 && (lse[1] - 1e4).abs() < 1e-2,
            "{lse:?}"
        );
    }
}
