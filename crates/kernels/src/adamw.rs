//! One AdamW step (Loshchilov & Hutter 2019, Algorithm 2) over f32 slices in a single pass:
//!
//! θ ← (1 − η λ) θ,  m ← m + (1 − β₁)(g − m),  v ← β₂ v + (1 − β₂) g²,
//! θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε),
//!
//! in the order and with the roundings of PyTorch's `torch.optim.AdamW` on the CPU: its
//! single-tensor loop of `mul_`, `lerp_`, `mul_` and `addcmul_`, `sqrt`, `/`, `add_` and
//! `addcdiv_`, each scalar computed in f64 and rounded to f32 once as PyTorch's Python floats
//! are, and the two multiply–adds that PyTorch's vectorised `lerp` and `addcmul` fuse fused here
//! too. So m and v are PyTorch's to the bit; θ differs where PyTorch's `sqrt` (MKL's vector
//! square root, not correctly rounded) does, by an ulp or two of max(|θ|, 1). PyTorch makes
//! about eight passes over every parameter tensor and burn's `AdamW` about fifteen; this reads
//! θ, g, m and v once and writes θ, m and v once.

use rayon::prelude::*;

use crate::simd::wide;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// The f32 scalars of step t of AdamW.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// 1 − η λ, the factor of decoupled weight decay.
    pub keep: f32,
    /// 1 − β₁, the weight of g in the first moment (`lerp`'s weight).
    pub weight_1: f32,
    /// β₂, the second moment's decay.
    pub beta_2: f32,
    /// 1 − β₂, the weight of g² in the second moment.
    pub weight_2: f32,
    /// √(1 − β₂ᵗ), the second moment's bias correction under the root.
    pub root_correction_2: f32,
    /// ε, added to the corrected root.
    pub epsilon: f32,
    /// −η / (1 − β₁ᵗ): the step size, the first moment's bias correction folded in.
    pub neg_step_size: f32,
}

impl AdamWStep {
    /// Step `t` (1 for the first) of AdamW with decays `beta_1`, `beta_2`, `epsilon` and weight
    /// decay λ at learning rate η: each scalar computed in f64 (the powers by `pow`, as Python's
    /// `**` takes them), then rounded to f32.
    pub fn new(t: usize, beta_1: f64, beta_2: f64, epsilon: f64, weight_decay: f64, lr: f64) -> Self {
        let t = t as f64;
        Self {
            keep: (1.0 - lr * weight_decay) as f32,
            weight_1: (1.0 - beta_1) as f32,
            beta_2: beta_2 as f32,
            weight_2: (1.0 - beta_2) as f32,
            root_correction_2: (1.0 - beta_2.powf(t)).powf(0.5) as f32,
            epsilon: epsilon as f32,
            neg_step_size: (-lr / (1.0 - beta_1.powf(t))) as f32,
        }
    }
}

/// One AdamW step of parameters `param` with gradient `grad` and moments `m`, `v` (zeros before
/// the first step), in place.
///
/// # Panics
/// If the four slices differ in length.
pub fn adamw_step(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], step: &AdamWStep) {
    let n = param.len();
    assert!(
        grad.len() == n && m.len() == n && v.len() == n,
        "AdamW: parameters, gradient and moments differ in length"
    );
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((param, grad), (m, v))| {
            wide!(chunk(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], step: &AdamWStep))
        });
}

/// The step on one chunk, compiled a second time for AVX2 and FMA through `wide!` (where the
/// CPU lacks FMA, `mul_add` is the C library's `fmaf`: the same values, slower).
#[inline(always)]
fn chunk(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = lerp(*m, g, s.weight_1);
        // addcmul(β₂ v, g, g, value = 1 − β₂), its multiply–add fused.
        *v = (s.weight_2 * g).mul_add(g, *v * s.beta_2);
        let denominator = v.sqrt() / s.root_correction_2 + s.epsilon;
        *p = *p * s.keep + s.neg_step_size * *m / denominator;
    }
}

/// a + w (b − a) as PyTorch's vectorised `lerp` rounds it: one multiply–add from a for
/// |w| < 0.5, from b (a weight of w − 1) otherwise.
#[inline(always)]
pub fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        w.mul_add(b - a, a)
    } else {
        (w - 1.0).mul_add(b - a, b)
    }
}
