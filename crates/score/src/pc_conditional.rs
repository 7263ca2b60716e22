//! Conditional predictor–corrector sampling for inverse problems with an unconditional score
//! model (Song et al. 2021, App. I.2): inpainting and colourisation.
//!
//! After every corrector and every predictor update at time t, the known part of x is replaced
//! by a fresh draw of the perturbed reference, P(α(t) y + σ(t) z), with P the projection onto
//! the known subspace ([`KnownRegion`]: masked pixels, or each pixel's grey level). This is
//! score_sde's `get_pc_inpainter` / `get_pc_colorizer`: its colourisation works in the
//! orthonormal basis whose first axis is the grey direction (1, 1, 1)/√3, which is the
//! projection used here. One difference, deliberate: score_sde's returned noise-free mean
//! takes its unknown part from the noisy x (a slip in `inpaint_update_fn`); here it is the
//! predictor's mean, as `denoise` intends.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_samplers::inpaint::KnownRegion;
use diffusion_samplers::{Counted, Denoiser, Observer, SampleError, SampleOutput, Sampler};

use crate::pc::PcSampler;
use crate::score_fn::DenoiserScore;

/// A predictor–corrector sampler that keeps the known part of `reference`.
#[derive(Clone, Debug)]
pub struct ConditionalPc {
    /// The unconditional sampler (predictor, corrector, SDE, steps).
    pub pc: PcSampler,
    /// The known part.
    pub region: KnownRegion,
    /// The reference y (for colourisation, a grey image: every channel the grey level).
    pub reference: Tensor<2>,
}

impl ConditionalPc {
    /// Inpainting: features where `mask` is 1 are taken from `reference`.
    pub fn inpainting(pc: PcSampler, mask: Tensor<2>, reference: Tensor<2>) -> Self {
        Self {
            pc,
            region: KnownRegion::Mask(mask),
            reference,
        }
    }

    /// Colourisation of grey images of `channels` channels.
    pub fn colorization(pc: PcSampler, channels: usize, gray: Tensor<2>) -> Self {
        Self {
            pc,
            region: KnownRegion::Gray { channels },
            reference: gray,
        }
    }

    /// The known part put back at time t: (x, mean) with P x ← P(α y + σ z) and
    /// P mean ← P(α y).
    fn replace(
        &self,
        x: Tensor<2>,
        mean: Tensor<2>,
        t: f64,
        noise: &mut dyn NoiseSource,
    ) -> (Tensor<2>, Tensor<2>) {
        let (alpha, sigma) = self.pc.sde.marginal(t);
        let [n, f] = x.dims();
        let z = noise.normal_tensor(n, f, &x.device(), x.dtype());
        let known_mean = self.reference.clone().mul_scalar(alpha);
        let known = known_mean.clone() + z.mul_scalar(sigma);
        (self.region.merge(x, known), self.region.merge(mean, known_mean))
    }
}

impl Sampler for ConditionalPc {
    fn init_noise_sigma(&self) -> f64 {
        self.pc.init_noise_sigma()
    }

    /// Starts from the prior draw `x` with its known part set to y (score_sde's initial
    /// sample); noise order per time: corrector draws, one replacement draw, the predictor's
    /// draw, one replacement draw.
    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        self.pc.validate()?;
        let [n, f] = x.dims();
        self.region.validate(n, f)?;
        if self.reference.dims() != [n, f] {
            return Err(SampleError::Invalid(format!(
                "the reference is {:?} but the samples are [{n}, {f}]",
                self.reference.dims()
            )));
        }
        let counted = Counted::new(denoiser);
        let score = DenoiserScore::new(&counted, &self.pc.sde);
        let mut x = self.region.merge(x, self.reference.clone());
        let mut mean = x.clone();
        for (i, t) in self.pc.times().into_iter().enumerate() {
            let (xc, mc) = self.pc.correct(&score, x, t, noise);
            let (xc, _) = self.replace(xc, mc, t, noise);
            let (xp, mp) = self.pc.predict(&score, xc, t, noise);
            (x, mean) = self.replace(xp, mp, t, noise);
            observer(i, &x);
        }
        Ok(SampleOutput {
            x: if self.pc.denoise { mean } else { x },
            nfe: counted.nfe(),
        })
    }
}
