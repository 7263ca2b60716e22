//! The model families the image pipeline trains, each as one objective and one way to see the
//! network as a denoiser, so that sampling is any sampler of `diffusion_samplers`:
//!
//! - DDPM (`diffusion.loss = simple | hybrid`): ε-prediction on a discrete schedule, L_simple or
//!   Improved DDPM's hybrid loss with learned Σ; a [`DiscreteModel`] sampled by DDPM or DDIM
//!   with x̂₀ clipped (Ho et al. 2020; Nichol & Dhariwal 2021).
//! - EDM (`edm`): the preconditioned denoiser, log-normal σ and λ(σ) weighting (Karras et al.
//!   2022); an [`EdmDenoiser`] sampled on a σ grid (Heun by default).
//! - Flow matching (`cfm`, `ot-cfm`): the linear path from noise to data with independent or
//!   minibatch-OT pairs (Lipman et al. 2023; Tong et al. 2023; Liu et al. 2022); the velocity
//!   network as a [`FlowModel`], sampled by Euler or Dormand–Prince in flow time.
//! - Score models (`ncsn`, `sde-ve`, `sde-vp`): denoising score matching on NCSNv2's geometric
//!   ladder (Song & Ermon 2020) or on the VE / VP SDE in continuous time (Song et al. 2021);
//!   the network outputs σ·s and sees c_noise = ¼ ln(σ/α), and is sampled by annealed Langevin
//!   dynamics or predictor–corrector sampling.
//!
//! Every random draw of a training example is a function of (seed, its position in the
//! training stream), so a run resumes exactly.

use burn::tensor::{DType, Device, Tensor};
use diffusion_cli::{OracleForm, SamplerOptions};
use diffusion_core::noise::{NoiseSource, SampleNoise, sample_rng};
use diffusion_core::tensor::{from_f64_like, to_f64};
use diffusion_ddpm::{DdpmLoss, ForwardProcess, Prediction, UniformTimesteps, Weighting};
use diffusion_flow::{FlowMatcher, cfm_loss};
use diffusion_samplers::{
    Ddim, Ddpm, Denoiser, DiscreteModel, EdmDenoiser, EdmLoss, EdmPreconditioning, FlowConvention, FlowModel,
    NoiseLevel, Sampler, successive_steps,
};
use diffusion_schedules::{DiscreteSchedule, TimestepSpacing, timesteps};
use diffusion_score::{
    AnnealedLangevin, Reduction, ScoreModelDenoiser, ScoreOutput, Sde, denoising_score_matching,
    geometric_sigmas, ladder_draw, sde_score_matching,
};
use serde::{Deserialize, Serialize};

use crate::{Result, RunError};

/// A network on flattened samples: `net(x [n, F], noise conditioning [n]) → [n, F·k]`.
pub type Net<'a> = &'a dyn Fn(Tensor<2>, Tensor<1>) -> Tensor<2>;

/// `[edm]`: EDM's training distribution and preconditioning (by default the paper's).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct EdmSection {
    /// σ_data.
    pub sigma_data: f64,
    /// Mean of ln σ in training.
    pub p_mean: f64,
    /// Standard deviation of ln σ in training.
    pub p_std: f64,
}

impl Default for EdmSection {
    fn default() -> Self {
        Self {
            sigma_data: 0.5,
            p_mean: -1.2,
            p_std: 1.2,
        }
    }
}

/// `[score]`: the noise range and the samplers of score models.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ScoreSection {
    /// The smallest σ of the ladder or of the VE SDE.
    pub sigma_min: f64,
    /// The largest σ.
    pub sigma_max: f64,
    /// NCSN: the number of ladder levels L in training.
    pub levels: usize,
    /// Langevin steps per level (annealed Langevin) or per time (predictor–corrector).
    pub corrector_steps: usize,
    /// Annealed Langevin: ε of α_i = ε σ_i²/σ_L².
    pub step_lr: f64,
    /// Predictor–corrector: the corrector's signal-to-noise ratio.
    pub snr: f64,
    /// Annealed Langevin: finish with x ← D(x, σ_min) (NCSNv2's denoising step, which its
    /// FID 10.87 uses; without it the paper reports 31.75).
    #[serde(default = "yes")]
    pub final_denoise: bool,
}

fn yes() -> bool {
    true
}

impl Default for ScoreSection {
    /// NCSNv2's CIFAR-10 settings.
    fn default() -> Self {
        Self {
            sigma_min: 0.01,
            sigma_max: 50.0,
            levels: 232,
            corrector_steps: 5,
            step_lr: 6.2e-6,
            snr: 0.16,
            final_denoise: true,
        }
    }
}

/// What a score model is trained on.
pub enum ScoreObjective {
    /// A geometric ladder of σ, one drawn uniformly per example.
    Ladder(Vec<f64>),
    /// An SDE in continuous time, t ~ U(ε, 1).
    Sde(Sde),
}

/// The score network's noise conditioning, EDM's c_noise of the VE σ.
fn c_noise(level: &NoiseLevel) -> f64 {
    level.ve_sigma().ln() / 4.0
}

/// The flow network sees t ∈ [0, 1] scaled to the U-Net's timestep range.
pub const FLOW_TIME_SCALE: f64 = 1000.0;

/// What is trained and how it is sampled.
#[allow(clippy::large_enum_variant)] // one per run
pub enum Family {
    /// DDPM: the loss and its schedule.
    Ddpm {
        /// L_simple or the hybrid loss.
        loss: DdpmLoss,
        /// The schedule.
        schedule: DiscreteSchedule,
        /// Whether Σ is learned (the hybrid loss).
        learned: bool,
    },
    /// EDM.
    Edm(EdmLoss),
    /// Conditional flow matching with its coupling.
    Flow(FlowMatcher),
    /// A score model.
    Score {
        /// The ladder or the SDE.
        objective: ScoreObjective,
        /// Its settings.
        settings: ScoreSection,
    },
}

impl Family {
    /// The family of `[diffusion] loss` (`schedule` for DDPM; `edm` for EDM, the paper's
    /// settings when absent).
    pub fn new(
        loss: &str,
        schedule: DiscreteSchedule,
        edm: Option<&EdmSection>,
        score: Option<&ScoreSection>,
    ) -> Result<Self> {
        let settings = score.cloned().unwrap_or_default();
        let (lo, hi) = (settings.sigma_min, settings.sigma_max);
        let forward = ForwardProcess::new(schedule.clone());
        Ok(match loss {
            "simple" => Self::Ddpm {
                loss: DdpmLoss::simple(forward, Prediction::Epsilon),
                schedule,
                learned: false,
            },
            "hybrid" => Self::Ddpm {
                loss: DdpmLoss::improved(forward),
                schedule,
                learned: true,
            },
            "edm" => {
                let e = edm.cloned().unwrap_or_default();
                Self::Edm(EdmLoss {
                    precond: EdmPreconditioning {
                        sigma_data: e.sigma_data,
                    },
                    p_mean: e.p_mean,
                    p_std: e.p_std,
                })
            }
            "cfm" => Self::Flow(FlowMatcher::independent(0.0)),
            "ot-cfm" => Self::Flow(FlowMatcher::optimal_transport(0.0)),
            "ncsn" | "sde-ve" | "sde-vp" => {
                if !(lo > 0.0 && hi > lo && settings.levels >= 2) {
                    return Err(RunError::Config(format!(
                        "[score]: need 0 < sigma_min < sigma_max and levels ≥ 2, got {lo}, {hi}, {}",
                        settings.levels
                    )));
                }
                let objective = match loss {
                    "ncsn" => ScoreObjective::Ladder(geometric_sigmas(hi, lo, settings.levels)),
                    "sde-ve" => ScoreObjective::Sde(Sde::ve(lo, hi, settings.levels)),
                    _ => ScoreObjective::Sde(Sde::vp(0.1, 20.0, settings.levels)),
                };
                Self::Score { objective, settings }
            }
            other => {
                return Err(RunError::Config(format!(
                    "diffusion.loss = `{other}`: expected simple, hybrid, edm, cfm, ot-cfm, ncsn, sde-ve or sde-vp"
                )));
            }
        })
    }

    /// The family with the DDPM loss weighted by `name`: `uniform`, `snr` (L_simple in ε space
    /// whatever the network predicts: `uniform` for ε-prediction), `min-snr-γ` or `p2` (see
    /// [`diffusion_ddpm::Weighting`]); other families take `uniform` only.
    pub fn with_weighting(mut self, name: &str) -> Result<Self> {
        let bad = || {
            RunError::Config(format!(
                "diffusion.weighting = `{name}`: expected uniform, snr, min-snr-γ (e.g. min-snr-5) or p2"
            ))
        };
        let weighting = match name {
            "uniform" => Weighting::Uniform,
            "snr" => Weighting::Snr,
            "p2" => Weighting::P2 { gamma: 1.0, k: 1.0 },
            other => match other.strip_prefix("min-snr-").map(str::parse::<f64>) {
                Some(Ok(gamma)) if gamma > 0.0 => Weighting::MinSnr { gamma },
                _ => return Err(bad()),
            },
        };
        match &mut self {
            Self::Ddpm { loss, .. } => loss.weighting = weighting,
            _ if weighting == Weighting::Uniform => {}
            _ => {
                return Err(RunError::Config(format!(
                    "diffusion.weighting = `{name}`: weightings apply to the DDPM family (loss = simple | hybrid)"
                )));
            }
        }
        Ok(self)
    }

    /// Output channels per input channel (2 with a learned variance).
    pub fn output_factor(&self) -> usize {
        match self {
            Self::Ddpm { learned: true, .. } => 2,
            _ => 1,
        }
    }

    /// The DDPM schedule, for the family that has one.
    pub fn schedule(&self) -> Option<&DiscreteSchedule> {
        match self {
            Self::Ddpm { schedule, .. } => Some(schedule),
            _ => None,
        }
    }

    /// The loss of a micro-batch `x0` `[n, F]` whose examples sit at `positions` of the
    /// training stream.
    pub fn loss(&self, net: Net<'_>, x0: Tensor<2>, positions: std::ops::Range<u64>, seed: u64) -> Tensor<1> {
        let [n, f] = x0.dims();
        let (device, dtype) = (x0.device(), x0.dtype());
        let noise = SampleNoise::range(seed ^ 0x4e01, positions.clone()).normal_tensor(n, f, &device, dtype);
        self.loss_with_noise(net, x0, noise, positions, seed)
    }

    /// [`loss`](Self::loss) with the noise given: for a flow, `noise` is the source end x₀ ~
    /// N(0, I) of each path (a reflow trains on fixed (noise, sample) pairs).
    pub fn loss_with_noise(
        &self,
        net: Net<'_>,
        x0: Tensor<2>,
        noise: Tensor<2>,
        positions: std::ops::Range<u64>,
        seed: u64,
    ) -> Tensor<1> {
        let [n, f] = x0.dims();
        match self {
            Self::Ddpm { loss, schedule, .. } => {
                let uniform = UniformTimesteps {
                    num_timesteps: schedule.len(),
                };
                let ts: Vec<usize> = positions
                    .map(|p| uniform.sample(&mut sample_rng(seed ^ 0x7173, p), 1)[0])
                    .collect();
                loss.loss(net, x0, &ts, noise, None)
                    .expect("shapes are consistent by construction")
            }
            Self::Edm(loss) => {
                let z = SampleNoise::range(seed ^ 0xed31, positions).normal(n, 1);
                loss.loss(&net, x0, &loss.sigmas(&z), noise)
            }
            Self::Flow(matcher) => {
                let mut draws = SampleNoise::range(seed ^ 0xf10e, positions);
                let t = draws.uniform(1);
                let pairing = draws.uniform(1);
                let scaled = |x: Tensor<2>, t: Tensor<1>| net(x, t.mul_scalar(FLOW_TIME_SCALE));
                let batch = matcher
                    .sample(noise, x0, &t, None, &pairing)
                    .expect("batches of one size");
                // torchcfm's loss: the mean over samples and features.
                cfm_loss(&scaled, &batch).mean().div_scalar(f as f64)
            }
            Self::Score { objective, .. } => {
                let u = SampleNoise::range(seed ^ 0x5c03, positions).uniform(1);
                match objective {
                    // NCSN's anneal_dsm: ½ σ² ‖s + z/σ‖² summed over features, batch mean.
                    ScoreObjective::Ladder(ladder) => {
                        let score = |x: Tensor<2>, sigma: Tensor<1>| {
                            let [m, _] = x.dims();
                            net(x, sigma.clone().log().div_scalar(4.0)) / sigma.reshape([m, 1])
                        };
                        denoising_score_matching(&score, x0, &ladder_draw(ladder, &u), noise, 2.0).mean()
                    }
                    // score_sde's continuous objective, λ = σ², t ~ U(ε, 1) with ε = 1e-5.
                    ScoreObjective::Sde(sde) => {
                        let t: Vec<f64> = u.iter().map(|u| 1e-5 + (1.0 - 1e-5) * u).collect();
                        let score = |x: Tensor<2>, t: Tensor<1>| {
                            let [m, _] = x.dims();
                            let (c, sigma): (Vec<f64>, Vec<f64>) = to_f64(&t)
                                .into_iter()
                                .map(|t| {
                                    let (a, s) = sde.marginal(t);
                                    (
                                        c_noise(&NoiseLevel {
                                            alpha: a,
                                            sigma: s,
                                            timestep: None,
                                        }),
                                        s,
                                    )
                                })
                                .unzip();
                            let c = from_f64_like(c, [m], &x);
                            let sigma = from_f64_like(sigma, [m, 1], &x);
                            net(x, c) / sigma
                        };
                        sde_score_matching(&score, sde, x0, &t, noise, false, Reduction::Mean).mean()
                    }
                }
            }
        }
    }

    /// The network as a denoiser.
    pub fn denoiser<'a>(&'a self, net: Net<'a>) -> Box<dyn Denoiser + 'a> {
        match self {
            Self::Ddpm { schedule, .. } => {
                let model = DiscreteModel::new(net, schedule.clone(), Prediction::Epsilon);
                if self.output_factor() == 2 {
                    Box::new(model.with_learned_variance())
                } else {
                    Box::new(model)
                }
            }
            Self::Edm(loss) => Box::new(EdmDenoiser {
                net,
                precond: loss.precond,
            }),
            Self::Flow(_) => Box::new(FlowModel::new(net, FlowConvention::NoiseToData, FLOW_TIME_SCALE)),
            Self::Score { .. } => {
                Box::new(ScoreModelDenoiser::new(net, ScoreOutput::ScaledByNoise).conditioned_on(c_noise))
            }
        }
    }

    /// The sampler `name` with `steps` steps: DDPM's own (`ddpm`, `ddim`, x̂₀ clipped to
    /// [−1, 1]) for the DDPM family; any named sampler of `diffusion sample` otherwise (flow
    /// samplers integrate in flow time).
    pub fn sampler(&self, name: &str, steps: usize, eta: f64, tolerance: f64) -> Result<Box<dyn Sampler>> {
        let config = |e: String| RunError::Config(format!("sample.sampler = `{name}`: {e}"));
        match self {
            Self::Ddpm { schedule, .. } => {
                let inference = timesteps(
                    schedule.len(),
                    steps.min(schedule.len()),
                    TimestepSpacing::Trailing,
                    0,
                )
                .map_err(|e| config(e.to_string()))?;
                let vp_steps = successive_steps(schedule, &inference);
                let clip = Some(diffusion_ddpm::X0Clip::Static { range: 1.0 });
                match name {
                    "ddpm" => {
                        let mut s = Ddpm::new(vp_steps);
                        s.clip_sample = clip;
                        if self.output_factor() == 2 {
                            s.variance = diffusion_samplers::VarianceType::Learned;
                        }
                        Ok(Box::new(s))
                    }
                    "ddim" => {
                        let mut s = Ddim::new(vp_steps, eta);
                        s.clip_sample = clip;
                        Ok(Box::new(s))
                    }
                    _ => Err(config(
                        "expected ddpm or ddim (the DDPM family's samplers)".into(),
                    )),
                }
            }
            // NCSNv2's sampler on a geometric ladder of `steps` levels from σ_max to σ_min, with
            // its final denoising step.
            Self::Score { settings, .. } if name == "ald" => {
                let (lo, hi) = (settings.sigma_min, settings.sigma_max);
                let ald = AnnealedLangevin {
                    sigmas: geometric_sigmas(hi, lo, steps),
                    steps_per_level: settings.corrector_steps,
                    step_lr: settings.step_lr,
                    denoise: settings.final_denoise,
                };
                ald.validate().map_err(|e| config(e.to_string()))?;
                if ald.steps_per_level == 0 {
                    return Err(config("score.corrector_steps must be at least 1".into()));
                }
                Ok(Box::new(ald))
            }
            Self::Score { objective, settings } => {
                let sde = match objective {
                    ScoreObjective::Sde(sde) if sde.kind == diffusion_score::SdeKind::Vp => Some("vp"),
                    ScoreObjective::Sde(_) => Some("ve"),
                    ScoreObjective::Ladder(_) => None,
                };
                let ve = sde != Some("vp");
                let options = SamplerOptions {
                    steps: Some(steps),
                    sigma_min: ve.then_some(settings.sigma_min),
                    sigma_max: ve.then_some(settings.sigma_max),
                    corrector_steps: Some(settings.corrector_steps),
                    step_lr: (name == "ald").then_some(settings.step_lr),
                    snr: (name == "pc").then_some(settings.snr),
                    sde: (name == "pc").then(|| sde.unwrap_or("ve").to_string()),
                    ..SamplerOptions::default()
                };
                Ok(options.build(name).map_err(|e| config(e.to_string()))?.sampler)
            }
            Self::Edm(_) | Self::Flow(_) => {
                let adaptive = name == "ode-dopri5";
                // `eval.ode_tolerance`: 1e-5 is torchcfm's FID evaluation (compute_fid.py; its
                // training script draws grids at 1e-4).
                let options = SamplerOptions {
                    steps: (!adaptive).then_some(steps),
                    rtol: adaptive.then_some(tolerance),
                    atol: adaptive.then_some(tolerance),
                    form: matches!(self, Self::Flow(_)).then_some(OracleForm::Flow),
                    ..SamplerOptions::default()
                };
                let built = options.build(name).map_err(|e| config(e.to_string()))?;
                if built.implied_form.is_some() {
                    return Err(config(
                        "a sampler with its own model form; use ode-euler or ode-dopri5".into(),
                    ));
                }
                Ok(built.sampler)
            }
        }
    }
}

/// Standard normal starting points for samples `range`, `[n, F]`, scaled for `sampler`.
pub fn initial_noise(
    sampler: &dyn Sampler,
    seed: u64,
    range: std::ops::Range<u64>,
    features: usize,
    device: &Device,
) -> Tensor<2> {
    let n = (range.end - range.start) as usize;
    SampleNoise::range(seed ^ 0x1a17, range)
        .normal_tensor(n, features, device, DType::F32)
        .mul_scalar(sampler.init_noise_sigma())
}
