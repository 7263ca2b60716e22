//! The noise level of a noisy sample x = α x₀ + σ ε.

use diffusion_schedules::convert;

/// The noise level at which a denoiser is evaluated: x = α x₀ + σ ε.
///
/// VE samplers use α = 1 and the σ of the grid; VP samplers α = √ᾱ, σ = √(1 − ᾱ); flow
/// samplers α = 1 − t, σ = t. Stating α and σ (rather than σ/α alone) keeps α = 0 — pure
/// noise at zero terminal SNR — exact. `timestep` optionally tells a discrete-time model the
/// timestep the sampler means, so that a fractional timestep is used as given (diffusers'
/// behaviour) instead of being recovered from σ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseLevel {
    /// The signal coefficient α.
    pub alpha: f64,
    /// The noise coefficient σ.
    pub sigma: f64,
    /// The discrete timestep meant, if the sampler knows it.
    pub timestep: Option<f64>,
}

impl NoiseLevel {
    /// Variance exploding: x = x₀ + σ ε.
    pub fn ve(sigma: f64) -> Self {
        Self {
            alpha: 1.0,
            sigma,
            timestep: None,
        }
    }

    /// Variance preserving with cumulative ᾱ: x = √ᾱ x₀ + √(1 − ᾱ) ε.
    pub fn vp(alpha_bar: f64) -> Self {
        Self {
            alpha: alpha_bar.sqrt(),
            sigma: (1.0 - alpha_bar).sqrt(),
            timestep: None,
        }
    }

    /// The rectified-flow path at time t: x = (1 − t) x₀ + t ε.
    pub fn flow(t: f64) -> Self {
        Self {
            alpha: 1.0 - t,
            sigma: t,
            timestep: None,
        }
    }

    /// The same level, with the discrete timestep the sampler means.
    pub fn with_timestep(self, timestep: f64) -> Self {
        Self {
            timestep: Some(timestep),
            ..self
        }
    }

    /// The equivalent VE noise level σ/α (∞ at α = 0).
    pub fn ve_sigma(&self) -> f64 {
        if self.alpha == 0.0 {
            f64::INFINITY
        } else {
            self.sigma / self.alpha
        }
    }

    /// The log signal-to-noise ratio 2 ln(α/σ).
    pub fn log_snr(&self) -> f64 {
        convert::alpha_sigma_to_log_snr(self.alpha, self.sigma)
    }

    /// √(α² + σ²): the factor that brings x to unit-variance (VP) scaling.
    pub fn scale(&self) -> f64 {
        (self.alpha * self.alpha + self.sigma * self.sigma).sqrt()
    }

    /// The VP level with the same signal-to-noise ratio: (α, σ)/√(α² + σ²).
    pub fn to_vp(&self) -> Self {
        let r = self.scale();
        Self {
            alpha: self.alpha / r,
            sigma: self.sigma / r,
            timestep: self.timestep,
        }
    }
}
