//! An exponential moving average of parameters, θ̄ ← β θ̄ + (1 − β) θ, in one pass over f32
//! slices: θ̄ updated in place, θ read once. burn's tensor operations take three passes and two
//! allocations (β θ̄, (1 − β) θ, their sum); this rounds each product and the sum as they do.

use rayon::prelude::*;

use crate::simd::wide;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// average ← average · `decay` + value · `weight` (`weight` = 1 − β, rounded from f64 by the
/// caller as burn rounds a scalar).
///
/// # Panics
/// If the slices differ in length.
pub fn ema_update(average: &mut [f32], value: &[f32], decay: f32, weight: f32) {
    assert_eq!(
        average.len(),
        value.len(),
        "EMA: the average and the parameters differ in length"
    );
    average
        .par_chunks_mut(CHUNK)
        .zip(value.par_chunks(CHUNK))
        .for_each(
            |(average, value)| wide!(chunk(average: &mut [f32], value: &[f32], decay: f32, weight: f32)),
        );
}

/// [`ema_update`] on one chunk, compiled a second time for AVX2 through `wide!` (no FMA
/// contraction: each product is rounded, as burn's `mul_scalar` rounds it).
#[inline(always)]
fn chunk(average: &mut [f32], value: &[f32], decay: f32, weight: f32) {
    for (a, &v) in average.iter_mut().zip(value) {
        *a = *a * decay + v * weight;
    }
}
