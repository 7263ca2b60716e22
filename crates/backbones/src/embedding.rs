//! Sinusoidal embeddings of a continuous scalar (a timestep or a noise level).

use burn::tensor::{Int, Tensor};

/// Options of the sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al.
/// 2020 and diffusers' `get_timestep_embedding`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SinusoidalOptions {
    /// Put the cosines first (`flip_sin_to_cos`).
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift`: frequencies are exp(−ln(max_period) · i / (half − shift)).
    pub freq_shift: f64,
    /// The longest period (10 000).
    pub max_period: f64,
    /// A factor on the argument (1).
    pub scale: f64,
}

impl Default for SinusoidalOptions {
    /// Ho et al.'s embedding: sines first, frequencies exp(−ln(10⁴) i/(half − 1)).
    fn default() -> Self {
        Self {
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            max_period: 10_000.0,
            scale: 1.0,
        }
    }
}

/// The `[n, dim]` embedding of `t` (`[n]`): [sin(t·ωᵢ), cos(t·ωᵢ)] with
/// ωᵢ = exp(−ln(max_period) · i/(dim/2 − shift)), i < dim/2; an odd `dim` is zero-padded.
pub fn sinusoidal_embedding(t: Tensor<1>, dim: usize, options: &SinusoidalOptions) -> Tensor<2> {
    let n = t.dims()[0];
    let half = dim / 2;
    let device = t.device();
    let exponent = Tensor::<1, Int>::arange(0..half as i64, &device)
        .float()
        .cast(t.dtype())
        .mul_scalar(-options.max_period.ln() / (half as f64 - options.freq_shift));
    let args = t.mul_scalar(options.scale).reshape([n, 1]) * exponent.exp().reshape([1, half]);
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if options.flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        Tensor::cat(vec![emb.clone(), emb.zeros_like().slice([0..n, 0..1])], 1)
    } else {
        emb
    }
}
