//! Per-timestep weights of the denoising loss. Every weighting is stated in the space of
//! the clean sample, as a weight w(t) on ‖x̂₀ − x₀‖², and converted to the space the network
//! predicts in: ‖x̂₀ − x₀‖² = ‖ε̂ − ε‖²/SNR = ‖v̂ − v‖²/(1 + SNR) for a VP schedule
//! (SNR = ᾱ/(1 − ᾱ)), so a weight w on x₀ is w/SNR on ε and w/(1 + SNR) on v.

use serde::{Deserialize, Serialize};

use crate::parameterization::Prediction;

/// A loss weighting over noise levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Weighting {
    /// 1 on the network's own target: L_simple (Ho et al. 2020, eq. 14).
    #[default]
    Uniform,
    /// w = SNR on x₀: L_simple in ε space whatever the network predicts.
    Snr,
    /// Min-SNR-γ (Hang et al. 2023): w = min(SNR, γ) on x₀ (γ = 5 in the paper).
    MinSnr {
        /// The clamp γ.
        gamma: f64,
    },
    /// P2 (Choi et al. 2022): 1/(k + SNR)^γ on ε, i.e. SNR/(k + SNR)^γ on x₀ (γ = 1, k = 1).
    P2 {
        /// The exponent γ.
        gamma: f64,
        /// The offset k.
        k: f64,
    },
    /// EDM (Karras et al. 2022, eq. 8): λ(σ) = (σ² + σ_data²)/(σ σ_data)² on x₀, with the VE
    /// σ = √((1 − ᾱ)/ᾱ) = 1/√SNR.
    Edm {
        /// σ_data (0.5 for images in [−1, 1]).
        sigma_data: f64,
    },
}

impl Weighting {
    /// The weight on ‖x̂₀ − x₀‖² at signal-to-noise ratio `snr`.
    pub fn x0_weight(self, snr: f64) -> f64 {
        match self {
            Self::Uniform | Self::Snr => snr,
            Self::MinSnr { gamma } => snr.min(gamma),
            Self::P2 { gamma, k } => snr / (k + snr).powf(gamma),
            Self::Edm { sigma_data } => {
                let s2 = 1.0 / snr;
                (s2 + sigma_data * sigma_data) / (s2 * sigma_data * sigma_data)
            }
        }
    }

    /// The weight on the squared error of `prediction` at `snr` (Uniform: 1 for any target).
    pub fn weight(self, prediction: Prediction, snr: f64) -> f64 {
        if self == Self::Uniform {
            return 1.0;
        }
        let w = self.x0_weight(snr);
        match prediction {
            Prediction::Sample => w,
            Prediction::Epsilon => w / snr,
            Prediction::V => w / (1.0 + snr),
            // ŝ − s = −(ε̂ − ε)/√(1 − ᾱ), so ‖x̂₀ − x₀‖² = ‖ŝ − s‖²/(SNR (1 + SNR)).
            Prediction::Score => w / (snr * (1.0 + snr)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_agree_across_spaces() {
        // Min-SNR-5 on ε is min(SNR, 5)/SNR (Hang et al., Table 1).
        let w = Weighting::MinSnr { gamma: 5.0 };
        assert_eq!(w.weight(Prediction::Epsilon, 10.0), 0.5);
        assert_eq!(w.weight(Prediction::Epsilon, 2.0), 1.0);
        assert_eq!(w.weight(Prediction::V, 10.0), 5.0 / 11.0);
        // SNR weighting is L_simple in ε space.
        assert_eq!(Weighting::Snr.weight(Prediction::Epsilon, 3.7), 1.0);
        // P2 with γ = 0 is uniform on ε.
        assert_eq!(
            Weighting::P2 { gamma: 0.0, k: 1.0 }.weight(Prediction::Epsilon, 3.0),
            1.0
        );
        // EDM at σ = σ_data: λ = 2/σ_data².
        let edm = Weighting::Edm { sigma_data: 0.5 };
        assert!((edm.x0_weight(4.0) - 8.0).abs() < 1e-12);
        assert_eq!(Weighting::Uniform.weight(Prediction::V, 0.1), 1.0);
    }
}
