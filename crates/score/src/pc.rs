//! Predictor–corrector sampling (Song et al. 2021, Algorithm 1 and Appendix G): at each of
//! N times t_i from T down to ε, a corrector (Langevin MCMC at the current marginal) refines
//! x, then a predictor takes one step of the reverse SDE. Any predictor with any corrector.

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use diffusion_core::tensor::to_f64;
use diffusion_samplers::{Counted, Denoiser, Observer, SampleError, SampleOutput, Sampler};
use diffusion_schedules::numeric::linspace_torch;
use serde::{Deserialize, Serialize};

use crate::langevin::langevin_update;
use crate::reverse::{ProbabilityFlowOde, ReverseSde};
use crate::score_fn::{DenoiserScore, ScoreFn};
use crate::sde::{Sde, SdeKind};
use diffusion_samplers::{OdeSystem, SdeSystem};

/// One step of the reverse SDE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Predictor {
    /// No predictor (corrector-only sampling).
    None,
    /// Euler–Maruyama on the reverse SDE with dt = −T/N.
    EulerMaruyama,
    /// The reverse of the forward discretisation (Song et al. 2021, eq. 46).
    #[default]
    ReverseDiffusion,
    /// Ancestral sampling: DDPM's step for VP, the NCSN posterior step for VE (eq. 47).
    Ancestral,
}

/// The Langevin corrector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corrector {
    /// No corrector.
    None,
    /// Langevin MCMC with a step size set by a signal-to-noise ratio r (Algorithm 4):
    /// ε = 2α (r ‖z‖/‖s‖)².
    #[default]
    Langevin,
    /// Annealed Langevin with step ε = 2α (r σ(t))² (NCSN's step size at the current σ).
    AnnealedLangevin,
}

impl std::str::FromStr for Predictor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "euler-maruyama" | "em" => Ok(Self::EulerMaruyama),
            "reverse-diffusion" => Ok(Self::ReverseDiffusion),
            "ancestral" => Ok(Self::Ancestral),
            other => Err(format!(
                "unknown predictor `{other}`: expected none, euler-maruyama, reverse-diffusion or ancestral"
            )),
        }
    }
}

impl std::str::FromStr for Corrector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "langevin" => Ok(Self::Langevin),
            "ald" | "annealed-langevin" => Ok(Self::AnnealedLangevin),
            other => Err(format!(
                "unknown corrector `{other}`: expected none, langevin or ald"
            )),
        }
    }
}

/// Predictor–corrector sampling from an SDE's prior.
#[derive(Clone, Debug, PartialEq)]
pub struct PcSampler {
    /// The SDE (its N sets the number of steps).
    pub sde: Sde,
    /// The predictor.
    pub predictor: Predictor,
    /// The corrector.
    pub corrector: Corrector,
    /// The corrector's signal-to-noise ratio r (0.16 for VE CIFAR-10).
    pub snr: f64,
    /// Corrector steps per time.
    pub corrector_steps: usize,
    /// The last time ε (1e-5 VE, 1e-3 VP).
    pub eps: f64,
    /// Return the noise-free mean of the last step (score_sde's `denoise`).
    pub denoise: bool,
    /// Predict with the probability-flow ODE instead of the reverse SDE (½ g² s, no noise;
    /// the predictor still consumes its draw, as score_sde's does).
    pub probability_flow: bool,
    /// Langevin step sizes from the batch-mean norms ‖z‖, ‖s‖ (score_sde and diffusers; the
    /// default), which makes each sample depend on the rest of its batch. `false` sets each
    /// sample's step from its own norms: independent of the batch, and sound for
    /// high-dimensional data where the norms concentrate, but unstable in a few dimensions,
    /// where ‖s‖ of a single sample can be near 0 (2-D mixtures diverge).
    pub batch_norms: bool,
}

impl PcSampler {
    /// Song et al.'s setting for `sde`: reverse diffusion + Langevin (r = 0.16), one
    /// corrector step, ε = 1e-5 (VE) or 1e-3, denoised, Langevin steps from batch-mean norms.
    pub fn new(sde: Sde) -> Self {
        let eps = if sde.kind == SdeKind::Ve { 1e-5 } else { 1e-3 };
        Self {
            sde,
            predictor: Predictor::ReverseDiffusion,
            corrector: Corrector::Langevin,
            snr: 0.16,
            corrector_steps: 1,
            eps,
            denoise: true,
            probability_flow: false,
            batch_norms: true,
        }
    }

    /// Checks the settings against the SDE.
    pub fn validate(&self) -> Result<(), SampleError> {
        let invalid = |m: String| Err(SampleError::Invalid(m));
        if self.sde.steps < 2 {
            return invalid(format!(
                "the SDE needs at least 2 discretisation steps, got {}",
                self.sde.steps
            ));
        }
        if !(self.eps > 0.0 && self.eps < self.sde.t_end()) {
            return invalid(format!(
                "the last time ε must lie in (0, {}), got {}",
                self.sde.t_end(),
                self.eps
            ));
        }
        if self.predictor == Predictor::Ancestral && self.sde.kind == SdeKind::SubVp {
            return invalid("ancestral sampling is defined for the VP and VE SDEs only; use reverse-diffusion or euler-maruyama for sub-VP".into());
        }
        if self.corrector != Corrector::None && !(self.snr > 0.0 && self.snr.is_finite()) {
            return invalid(format!("the corrector's snr must be positive, got {}", self.snr));
        }
        if self.predictor == Predictor::Ancestral && self.probability_flow {
            return invalid(
                "ancestral sampling has no probability-flow form; use reverse-diffusion or euler-maruyama"
                    .into(),
            );
        }
        if self.predictor == Predictor::None && self.corrector == Corrector::None {
            return invalid("a predictor-corrector sampler needs a predictor, a corrector or both".into());
        }
        Ok(())
    }

    /// The N times from T to ε.
    pub fn times(&self) -> Vec<f64> {
        linspace_torch(self.sde.t_end(), self.eps, self.sde.steps)
    }

    /// One predictor step at time t: (x, x_mean).
    pub fn predict(
        &self,
        score: &dyn ScoreFn,
        x: Tensor<2>,
        t: f64,
        noise: &mut dyn NoiseSource,
    ) -> (Tensor<2>, Tensor<2>) {
        let sde = &self.sde;
        let z = |noise: &mut dyn NoiseSource, x: &Tensor<2>| {
            let [n, f] = x.dims();
            noise.normal_tensor(n, f, &x.device(), x.dtype())
        };
        match self.predictor {
            Predictor::None => (x.clone(), x),
            Predictor::EulerMaruyama => {
                let dt = -sde.t_end() / sde.steps as f64;
                let z = z(noise, &x);
                let (drift, g) = if self.probability_flow {
                    (ProbabilityFlowOde::new(sde, score).derivative(x.clone(), t), 0.0)
                } else {
                    let reverse = ReverseSde::new(sde, score);
                    (reverse.drift(x.clone(), t), reverse.diffusion(t))
                };
                let mean = x + drift.mul_scalar(dt);
                (mean.clone() + z.mul_scalar(g * (-dt).sqrt()), mean)
            }
            Predictor::ReverseDiffusion => {
                let (f, g) = sde.discretize(x.clone(), t);
                let (weight, g_out) = if self.probability_flow {
                    (0.5, 0.0)
                } else {
                    (1.0, g)
                };
                let rev_f = f - score.score(x.clone(), t).mul_scalar(weight * g * g);
                let z = z(noise, &x);
                let mean = x - rev_f;
                (mean.clone() + z.mul_scalar(g_out), mean)
            }
            Predictor::Ancestral => {
                let i = sde.timestep(t);
                let s = score.score(x.clone(), t);
                let (mean, std) = match sde.kind {
                    SdeKind::Ve => {
                        let sigmas = sde.discrete_sigmas();
                        let (sigma, prev) = (sigmas[i], if i == 0 { 0.0 } else { sigmas[i - 1] });
                        let gap = sigma * sigma - prev * prev;
                        (
                            x + s.mul_scalar(gap),
                            (prev * prev * gap / (sigma * sigma)).sqrt(),
                        )
                    }
                    _ => {
                        let beta = sde.discrete_betas()[i];
                        (
                            (x + s.mul_scalar(beta)).div_scalar((1.0 - beta).sqrt()),
                            beta.sqrt(),
                        )
                    }
                };
                let z = z(noise, &mean);
                (mean.clone() + z.mul_scalar(std), mean)
            }
        }
    }

    /// The corrector steps at time t: (x, x_mean).
    pub fn correct(
        &self,
        score: &dyn ScoreFn,
        mut x: Tensor<2>,
        t: f64,
        noise: &mut dyn NoiseSource,
    ) -> (Tensor<2>, Tensor<2>) {
        let mut mean = x.clone();
        if self.corrector == Corrector::None {
            return (x, mean);
        }
        let alpha = self.sde.langevin_alpha(t);
        let std = self.sde.marginal(t).1;
        for _ in 0..self.corrector_steps {
            let grad = score.score(x.clone(), t);
            let [n, f] = x.dims();
            let z = noise.normal_tensor(n, f, &x.device(), x.dtype());
            let steps: Vec<f64> = match self.corrector {
                Corrector::Langevin => {
                    let (g, zn) = (row_norms(&grad), row_norms(&z));
                    if self.batch_norms {
                        let (gm, zm) = (mean_of(&g), mean_of(&zn));
                        vec![(self.snr * zm / gm).powi(2) * 2.0 * alpha]
                    } else {
                        g.iter()
                            .zip(&zn)
                            .map(|(g, z)| (self.snr * z / g).powi(2) * 2.0 * alpha)
                            .collect()
                    }
                }
                _ => vec![(self.snr * std).powi(2) * 2.0 * alpha],
            };
            (x, mean) = langevin_update(x, grad, &steps, z);
        }
        (x, mean)
    }
}

fn row_norms(x: &Tensor<2>) -> Vec<f64> {
    let [_, f] = x.dims();
    to_f64(x)
        .chunks(f)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect()
}

fn mean_of(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

impl Sampler for PcSampler {
    fn init_noise_sigma(&self) -> f64 {
        self.sde.prior_std()
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        self.validate()?;
        let counted = Counted::new(denoiser);
        let score = DenoiserScore::new(&counted, &self.sde);
        let mut mean = x.clone();
        for (i, t) in self.times().into_iter().enumerate() {
            let (xc, _) = self.correct(&score, x, t, noise);
            (x, mean) = self.predict(&score, xc, t, noise);
            observer(i, &x);
        }
        Ok(SampleOutput {
            x: if self.denoise { mean } else { x },
            nfe: counted.nfe(),
        })
    }
}
