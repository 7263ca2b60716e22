//! An exponential moving average of parameters, θ̄ ← β θ̄ + (1 − β) θ, in one pass over f32
//! slices: θ̄ updated in place, θ read once. burn's tensor operations take three passes and two
//! allocations (β θ̄, (1 − β) θ, their sum); this rounds each product and the sum as they do
//! (no FMA contraction).

use crate::elementwise::update;

/// average ← average · `decay` + value · `weight` (`weight` = 1 − β, rounded from f64 by the
/// caller as burn rounds a scalar).
///
/// # Panics
/// If the slices differ in length.
pub fn ema_update(average: &mut [f32], value: &[f32], decay: f32, weight: f32) {
    update(average, value, |a, v| a * decay + v * weight);
}
