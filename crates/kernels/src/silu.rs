//! SiLU (Elfwing et al. 2018; "swish", Ramachandran et al. 2017), silu(x) = x · σ(x), and its
//! derivative silu'(x) = σ(x) · (1 + x · (1 − σ(x))), on f32 slices: in parallel chunks, with
//! an exponential written so that the compiler vectorises it.

use crate::elementwise::{exp, map, map2};

/// silu(x) for every element.
pub fn silu(x: &[f32]) -> Vec<f32> {
    map(x, silu_value)
}

/// grad · silu'(x) for every element.
pub fn silu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    map2(x, grad, |x, g| g * silu_and_slope(x).1)
}

/// silu(x) = x σ(x), σ(x) = 1 / (1 + e^(−x)).
#[inline(always)]
pub(crate) fn silu_value(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// (silu(x), silu'(x)) with silu'(x) = σ(x) (1 + x (1 − σ(x))), where 1 − σ(x) = e^(−x) σ(x)
/// avoids the cancellation of 1 − σ(x) for large x.
#[inline(always)]
pub(crate) fn silu_and_slope(x: f32) -> (f32, f32) {
    let e = exp(-x);
    let s = 1.0 / (1.0 + e);
    (x * s, s * (1.0 + x * (e * s)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Points from −100 to 100, dense near 0, plus the extremes.
    pub(crate) fn points() -> Vec<f32> {
        let mut x: Vec<f32> = (-20_000..=20_000).map(|k| k as f32 * 1e-3).collect();
        x.extend((-1000..=1000).map(|k| k as f32 * 0.1));
        x.extend([
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            0.0,
            -0.0,
            87.0,
            -87.0,
            88.5,
            -88.5,
        ]);
        x
    }

    #[test]
    fn silu_and_its_derivative_match_f64() {
        let x = points();
        let grad: Vec<f32> = x.iter().map(|x| 1.0 + 0.5 * (x * 3.1).sin()).collect();
        let (y, dy) = (silu(&x), silu_backward(&x, &grad));
        for k in 0..x.len() {
            let (xk, g) = (x[k] as f64, grad[k] as f64);
            let s = 1.0 / (1.0 + (-xk).exp());
            let (want, dwant) = (xk * s, g * s * (1.0 + xk * (1.0 - s)));
            let tol = |v: f64| 4.0 * f32::EPSILON as f64 * v.abs().max(1.0);
            assert!(
                (y[k] as f64 - want).abs() <= tol(want),
                "silu({xk}) = {} not {want}",
                y[k]
            );
            assert!(
                (dy[k] as f64 - dwant).abs() <= tol(dwant),
                "silu'({xk}) = {} not {dwant}",
                dy[k]
            );
        }
    }
}
