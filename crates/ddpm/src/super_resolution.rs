//! Cascaded super-resolution (Ho et al. 2022, "Cascaded Diffusion Models"; Saharia et al. 2022,
//! SR3): a diffusion model of the high-resolution image whose network also sees the
//! low-resolution image, upsampled to the output size and concatenated along channels,
//! ε_θ([x_t, z], t, s).
//!
//! Gaussian conditioning augmentation (Ho et al. 2022, §4.2): in training the conditioning is
//! corrupted by the forward process at a random level s, z_s = √ᾱ_s z + √(1 − ᾱ_s) ε′, and the
//! network is told s, so that at sampling it tolerates the errors of the stage below; at
//! sampling a fixed s is chosen (a small one usually helps; s = 0 is none). The level is
//! passed to the network as one of `buckets` class labels.

use burn::tensor::Tensor;

use crate::error::{DdpmError, Result};
use crate::forward::ForwardProcess;

/// Noise-conditioning augmentation of the low-resolution input.
#[derive(Clone, Debug)]
pub struct ConditioningAugmentation {
    /// The forward process that corrupts the conditioning (usually the model's own).
    pub forward: ForwardProcess,
    /// The largest level s_max: levels run over 0 (clean) … s_max, level s ≥ 1 being the
    /// forward process at timestep s − 1.
    pub max_level: usize,
    /// The number of labels the level is quantised to for the network.
    pub buckets: usize,
}

impl ConditioningAugmentation {
    /// Augmentation up to `max_level` (≤ T) quantised to `buckets` labels.
    pub fn new(forward: ForwardProcess, max_level: usize, buckets: usize) -> Result<Self> {
        let t = forward.num_timesteps();
        if max_level > t || buckets == 0 || buckets > max_level + 1 {
            return Err(DdpmError::InvalidAugmentation(format!(
                "levels up to {max_level} in {buckets} buckets: the level must be at most T = {t} \
                 and 1 ≤ buckets ≤ max_level + 1"
            )));
        }
        Ok(Self {
            forward,
            max_level,
            buckets,
        })
    }

    /// `n` training levels, uniform on {0, …, s_max}, from uniforms `u` in [0, 1).
    pub fn levels(&self, u: &[f64]) -> Vec<usize> {
        u.iter()
            .map(|&v| ((v * (self.max_level + 1) as f64) as usize).min(self.max_level))
            .collect()
    }

    /// The network's label for level `s`: ⌊s · buckets / (s_max + 1)⌋.
    pub fn bucket(&self, level: usize) -> usize {
        (level.min(self.max_level) * self.buckets) / (self.max_level + 1)
    }

    /// z_s for each sample: `low_res` (already upsampled) at its level, `noise` its ε′.
    pub fn augment<const D: usize>(
        &self,
        low_res: Tensor<D>,
        levels: &[usize],
        noise: Tensor<D>,
    ) -> Result<Tensor<D>> {
        let n = low_res.dims()[0];
        if levels.len() != n {
            return Err(DdpmError::BatchMismatch {
                what: "augmentation levels",
                got: levels.len(),
                batch: n,
            });
        }
        if levels.iter().all(|&s| s == 0) {
            return Ok(low_res);
        }
        // Level 0 is clean: ᾱ = 1, no noise.
        let t: Vec<usize> = levels.iter().map(|&s| s.saturating_sub(1)).collect();
        let (alpha, sigma) = self.forward.coefficients(&t)?;
        let keep = |v: &[f64], clean: f64| -> Vec<f64> {
            levels
                .iter()
                .zip(v)
                .map(|(&s, &c)| if s == 0 { clean } else { c })
                .collect()
        };
        let shape = per_sample_shape::<D>(n);
        let a = diffusion_core::tensor::from_f64_like(keep(&alpha, 1.0), shape, &low_res);
        let b = diffusion_core::tensor::from_f64_like(keep(&sigma, 0.0), shape, &low_res);
        Ok(low_res * a + noise * b)
    }
}

fn per_sample_shape<const D: usize>(n: usize) -> [usize; D] {
    let mut shape = [1; D];
    shape[0] = n;
    shape
}

/// The super-resolution network's input: x_t and the (augmented, upsampled) conditioning
/// concatenated along channels, `[n, c + c_z, h, w]`.
pub fn concat_conditioning(x_t: Tensor<4>, conditioning: Tensor<4>) -> Result<Tensor<4>> {
    let ([n, _, h, w], [nz, _, hz, wz]) = (x_t.dims(), conditioning.dims());
    if (n, h, w) != (nz, hz, wz) {
        return Err(DdpmError::ShapeMismatch {
            what: "noisy image and upsampled conditioning (batch, height, width)",
            left: x_t.dims().to_vec(),
            right: conditioning.dims().to_vec(),
        });
    }
    Ok(Tensor::cat(vec![x_t, conditioning], 1))
}

/// The super-resolution network as a network of flattened samples, for a sampler: `net(input,
/// t)` takes `[n, c + c_z, h, w]` inputs; the result maps x_t `[n, c·h·w]` (flattened
/// channel-first) and timesteps to the network's output, flattened, with the fixed
/// (upsampled, possibly augmented) `conditioning` `[n, c_z, h, w]` concatenated to every call.
/// Wrap it in `diffusion_samplers::DiscreteModel` to sample with any sampler.
pub fn conditioned_network<'a, F>(
    net: F,
    conditioning: Tensor<4>,
    channels: usize,
) -> impl Fn(Tensor<2>, Tensor<1>) -> Tensor<2> + 'a
where
    F: Fn(Tensor<4>, Tensor<1>) -> Tensor<4> + 'a,
{
    move |x: Tensor<2>, t: Tensor<1>| {
        let [n, _, h, w] = conditioning.dims();
        let x_t = x.reshape([n, channels, h, w]);
        let out = net(Tensor::cat(vec![x_t, conditioning.clone()], 1), t);
        let features = out.shape().num_elements() / n;
        out.reshape([n, features])
    }
}
