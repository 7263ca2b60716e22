//! Conversions between the ways of stating a noise level.
//!
//! With x_t = α x₀ + σ ε and α² + σ² = 1 (variance preserving): ᾱ = α², the equivalent VE
//! noise level of x_t/α is σ_VE = σ/α = √((1 − ᾱ)/ᾱ), and the log-SNR is λ = ln(α²/σ²)
//! = −2 ln σ_VE. Every function is exact at the ends: ᾱ = 0 ↔ σ_VE = ∞ ↔ λ = −∞, and
//! ᾱ = 1 ↔ σ_VE = 0 ↔ λ = +∞, with no NaN in between.

use crate::numeric::sigmoid;

/// σ_VE = √((1 − ᾱ)/ᾱ).
pub fn alpha_bar_to_sigma(alpha_bar: f64) -> f64 {
    ((1.0 - alpha_bar) / alpha_bar).sqrt()
}

/// ᾱ = 1/(1 + σ²).
pub fn sigma_to_alpha_bar(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma)
}

/// λ = ln(ᾱ/(1 − ᾱ)).
pub fn alpha_bar_to_log_snr(alpha_bar: f64) -> f64 {
    alpha_bar.ln() - (-alpha_bar).ln_1p()
}

/// ᾱ = sigmoid(λ).
pub fn log_snr_to_alpha_bar(log_snr: f64) -> f64 {
    sigmoid(log_snr)
}

/// λ = −2 ln σ_VE.
pub fn sigma_to_log_snr(sigma: f64) -> f64 {
    -2.0 * sigma.ln()
}

/// σ_VE = e^{−λ/2}.
pub fn log_snr_to_sigma(log_snr: f64) -> f64 {
    (-0.5 * log_snr).exp()
}

/// (α, σ) of the VP process at a VE noise level: α = 1/√(1 + σ²), σ_VP = σ α.
pub fn sigma_to_alpha_sigma(sigma: f64) -> (f64, f64) {
    if sigma.is_infinite() {
        return (0.0, 1.0);
    }
    let alpha = 1.0 / (1.0 + sigma * sigma).sqrt();
    (alpha, sigma * alpha)
}

/// λ = 2 ln(α/σ) for any (α, σ), not only variance preserving ones.
pub fn alpha_sigma_to_log_snr(alpha: f64, sigma: f64) -> f64 {
    2.0 * (alpha.ln() - sigma.ln())
}

/// The rectified-flow time t (x_t = (1 − t) x₀ + t ε) of a VE noise level: t = σ/(1 + σ).
pub fn sigma_to_flow_t(sigma: f64) -> f64 {
    if sigma.is_infinite() {
        1.0
    } else {
        sigma / (1.0 + sigma)
    }
}

/// The VE noise level of a rectified-flow time: σ = t/(1 − t).
pub fn flow_t_to_sigma(t: f64) -> f64 {
    t / (1.0 - t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_inverse_and_safe_at_the_ends() {
        for ab in [1e-12, 0.01, 0.5, 0.9999] {
            let s = alpha_bar_to_sigma(ab);
            assert!((sigma_to_alpha_bar(s) - ab).abs() < 1e-15 * ab.max(1e-3) * 10.0);
            let l = alpha_bar_to_log_snr(ab);
            assert!((log_snr_to_alpha_bar(l) - ab).abs() < 1e-15);
            assert!((sigma_to_log_snr(s) - l).abs() < 1e-9);
            assert!((log_snr_to_sigma(l) - s).abs() < 1e-12 * s);
            let (a, v) = sigma_to_alpha_sigma(s);
            assert!((a * a - ab).abs() < 1e-15);
            assert!((alpha_sigma_to_log_snr(a, v) - l).abs() < 1e-9);
        }
        assert_eq!(alpha_bar_to_sigma(0.0), f64::INFINITY);
        assert_eq!(alpha_bar_to_sigma(1.0), 0.0);
        assert_eq!(sigma_to_alpha_bar(f64::INFINITY), 0.0);
        assert_eq!(alpha_bar_to_log_snr(0.0), f64::NEG_INFINITY);
        assert_eq!(alpha_bar_to_log_snr(1.0), f64::INFINITY);
        assert_eq!(sigma_to_alpha_sigma(f64::INFINITY), (0.0, 1.0));
        assert_eq!(sigma_to_alpha_sigma(0.0), (1.0, 0.0));
        assert_eq!(sigma_to_flow_t(f64::INFINITY), 1.0);
        assert!((flow_t_to_sigma(sigma_to_flow_t(3.0)) - 3.0).abs() < 1e-15);
    }
}
