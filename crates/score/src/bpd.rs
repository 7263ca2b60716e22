//! Bits per dimension of discrete data (Theis et al. 2016; Ho et al. 2020 §4; Song et al.
//! 2021 Appendix D.2): data with 2^b levels per dimension is dequantised with uniform noise,
//! x = (k + u)/2^b, u ~ U[0, 1), rescaled to the model's range, and its continuous
//! log-density (nats) converted: bpd = −log p(x)/(d ln 2) + b − log₂(width of the range).
//! For 8-bit data on [−1, 1] the offset is 7 bits; on [0, 1], 8.

use serde::{Deserialize, Serialize};

/// How discrete data was mapped to the model's continuous range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantization {
    /// Bits per value (8 for images).
    pub bits: u32,
    /// Data on [−1, 1] (`true`) or on [0, 1].
    pub centered: bool,
}

impl Default for Quantization {
    fn default() -> Self {
        Self {
            bits: 8,
            centered: true,
        }
    }
}

impl Quantization {
    /// The width of the continuous range.
    pub fn range_width(&self) -> f64 {
        if self.centered { 2.0 } else { 1.0 }
    }

    /// The bits added to −log₂ p(x)/d: log₂(2^b / width).
    pub fn offset_bits(&self) -> f64 {
        self.bits as f64 - self.range_width().log2()
    }
}

/// Uniformly dequantised values: (k + u)/2^b on [0, 1], or 2(k + u)/2^b − 1 when centred,
/// for integer levels k ∈ [0, 2^b) and uniforms u ∈ [0, 1).
pub fn dequantize(levels: &[f64], uniforms: &[f64], quantization: Quantization) -> Vec<f64> {
    assert_eq!(levels.len(), uniforms.len(), "one uniform per level");
    let scale = (2.0f64).powi(quantization.bits as i32);
    levels
        .iter()
        .zip(uniforms)
        .map(|(k, u)| {
            let unit = (k + u) / scale;
            if quantization.centered {
                2.0 * unit - 1.0
            } else {
                unit
            }
        })
        .collect()
}

/// Bits per dimension of a sample of `dims` values whose dequantised, rescaled version has
/// log-density `log_prob` (nats).
pub fn bits_per_dim(log_prob: f64, dims: usize, quantization: Quantization) -> f64 {
    -log_prob / (dims as f64 * std::f64::consts::LN_2) + quantization.offset_bits()
}
