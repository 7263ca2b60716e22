//! GELU with the tanh approximation (Hendrycks & Gimpel 2016, §2; the MLP activation of DiT and
//! of GPT-2), gelu(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³))) = x σ(z) with
//! z = 2√(2/π) (x + 0.044715 x³), since ½ (1 + tanh(u)) = σ(2u); and its derivative
//! gelu'(x) = σ(z) + x σ(z) (1 − σ(z)) z', z' = 2√(2/π) (1 + 3 · 0.044715 x²), on f32 slices.

use crate::elementwise::{exp, map, map2};

/// 2√(2/π).
const K: f32 = 1.595_769_2;
/// The cubic coefficient of the approximation.
const C: f32 = 0.044_715;

/// gelu(x) for every element.
pub fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    map(x, |x| x / (1.0 + exp(-z(x))))
}

/// grad · gelu'(x) for every element.
pub fn gelu_tanh_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    map2(x, grad, |x, g| g * slope(x))
}

#[inline(always)]
fn z(x: f32) -> f32 {
    K * (x + C * x * x * x)
}

/// gelu'(x), with 1 − σ(z) = e^(−z) σ(z) (no cancellation for large z). Beyond |x| = 10 the
/// slope is 1 or 0 to f32 precision (|z| > 73); x is clamped there, since the exponential
/// saturates at e^±87.3 and would leave the x³ of the second term unbounded for huge |x|.
#[inline(always)]
fn slope(x: f32) -> f32 {
    let x = x.clamp(-10.0, 10.0);
    let e = exp(-z(x));
    let s = 1.0 / (1.0 + e);
    s + x * (e * s) * s * K * (1.0 + 3.0 * C * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::silu::tests::points;

    #[test]
    fn gelu_and_its_derivative_match_f64() {
        let x = points();
        let grad: Vec<f32> = x.iter().map(|x| 1.0 + 0.5 * (x * 3.1).sin()).collect();
        let (y, dy) = (gelu_tanh(&x), gelu_tanh_backward(&x, &grad));
        let r = (2.0 / std::f64::consts::PI).sqrt();
        for k in 0..x.len() {
            let (xk, g) = (x[k] as f64, grad[k] as f64);
            // The definition with tanh, differentiated by hand in f64.
            let u = r * (xk + 0.044715 * xk.powi(3));
            let t = u.tanh();
            let want = 0.5 * xk * (1.0 + t);
            let dwant =
                g * (0.5 * (1.0 + t) + 0.5 * xk * (1.0 - t * t) * r * (1.0 + 3.0 * 0.044715 * xk * xk));
            let tol = |v: f64| 8.0 * f32::EPSILON as f64 * v.abs().max(1.0);
            assert!(
                (y[k] as f64 - want).abs() <= tol(want),
                "gelu({xk}) = {} not {want}",
                y[k]
            );
            assert!(
                (dy[k] as f64 - dwant).abs() <= tol(dwant),
                "gelu'({xk}) = {} not {dwant}",
                dy[k]
            );
        }
    }
}
