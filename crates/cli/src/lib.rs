//! # diffusion-cli
//!
//! The library behind the `diffusion` command: samplers chosen by name and options, the
//! Gaussian-mixture oracle seen as a model of a chosen form, and the error type whose
//! messages the command prints (exit status 2, nothing written).

use std::str::FromStr;

use burn::tensor::Tensor;
use diffusion_ddpm::Prediction;
use diffusion_samplers::{
    AncestralSampler, Churn, Ddim, Ddpm, Denoiser, DiffusersError, DiscreteModel, Dopri5, DpmMultistep,
    DpmSolverAdaptive, DpmSolverFast, EdmSampler, FixedStep, FlowConvention, FlowMatchEuler, FlowModel,
    FlowTime, GaussianMixture, Lms, NoiseLevel, OdeMethod, OdeSampler, Pndm, Sampler, SolverType,
    TimestepInterpolation, UniPc, VeGrid, successive_steps,
};
use diffusion_schedules::{
    DiscreteSchedule, GridSpec, SigmaGrid, TimestepSpacing, flow_match_sigmas, timesteps,
};
use diffusion_score::{AnnealedLangevin, Corrector, PcSampler, Predictor, Sde, SdeKind, geometric_sigmas};

/// Everything that makes the command stop with a message.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad option or combination of options.
    #[error("{0}")]
    Usage(String),
    /// A file that cannot be read or has the wrong content.
    #[error("{0}")]
    Input(String),
    /// A diffusers scheduler configuration we cannot reproduce.
    #[error(transparent)]
    Diffusers(#[from] DiffusersError),
    /// A schedule or grid that cannot be built.
    #[error(transparent)]
    Schedule(#[from] diffusion_schedules::ScheduleError),
    /// Device or file errors of the core crate.
    #[error(transparent)]
    Core(#[from] diffusion_core::Error),
    /// The sampler could not finish.
    #[error(transparent)]
    Sample(#[from] diffusion_samplers::SampleError),
    /// A diffusers ScoreSdeVeScheduler configuration that cannot be used.
    #[error(transparent)]
    ScoreSdeVe(#[from] diffusion_score::ScoreSdeVeError),
    /// The likelihood could not be computed.
    #[error(transparent)]
    Likelihood(#[from] diffusion_score::LikelihoodError),
    /// The device failed while running (a benchmark's synchronisation, say).
    #[error("{0}")]
    Device(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// The sampler names of `diffusion sample --sampler`.
pub const SAMPLER_NAMES: [&str; 25] = [
    "ddpm",
    "ddim",
    "pndm",
    "euler",
    "euler-ancestral",
    "heun",
    "dpm2",
    "dpm2-ancestral",
    "lms",
    "dpm-fast",
    "dpm-adaptive",
    "dpmpp-2s-ancestral",
    "dpmpp-2m",
    "dpmpp-2m-sde",
    "dpmpp-3m-sde",
    "unipc",
    "em",
    "flow-euler",
    "ode-euler",
    "ode-midpoint",
    "ode-heun",
    "ode-rk4",
    "ode-dopri5",
    "pc",
    "ald",
];

/// How the oracle is presented to the sampler: as the denoiser itself, as a discrete VP
/// network predicting ε or v, or as a flow velocity network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OracleForm {
    /// D(x, σ) directly.
    Ve,
    /// An ε-prediction network on the linear β schedule (1e-4 … 0.02, T = 1000).
    VpEps,
    /// A v-prediction network on the same schedule.
    VpV,
    /// A velocity network of the linear path from noise (t = 0) to data (t = 1).
    Flow,
    /// A velocity network of the path from data (s = 0) to noise (s = 1) called at s · 1000,
    /// as diffusers' flow-matching models are (the form `flow-euler` implies).
    FlowMatch,
}

impl FromStr for OracleForm {
    type Err = CliError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ve" => Ok(Self::Ve),
            "vp-eps" => Ok(Self::VpEps),
            "vp-v" => Ok(Self::VpV),
            "flow" => Ok(Self::Flow),
            other => Err(usage(format!(
                "unknown --oracle-form `{other}`: expected ve, vp-eps, vp-v or flow"
            ))),
        }
    }
}

/// The discrete schedule of the `vp-*` oracle forms and of ddpm/ddim/pndm.
pub fn default_vp_schedule() -> DiscreteSchedule {
    DiscreteSchedule::linear(1000, 1e-4, 0.02).expect("valid constants")
}

/// The oracle as a denoiser of the given form.
pub fn oracle_denoiser<'a>(
    oracle: &'a GaussianMixture,
    form: OracleForm,
    schedule: &'a DiscreteSchedule,
) -> Box<dyn Denoiser + 'a> {
    match form {
        OracleForm::Ve => Box::new(oracle),
        OracleForm::VpEps | OracleForm::VpV => {
            let p = if form == OracleForm::VpEps {
                Prediction::Epsilon
            } else {
                Prediction::V
            };
            let model = oracle.discrete_model(schedule, p, TimestepInterpolation::LogSigma);
            Box::new(DiscreteModel::new(model, schedule.clone(), p))
        }
        OracleForm::Flow => {
            let model = oracle.velocity_model(FlowConvention::NoiseToData, 1.0);
            Box::new(FlowModel::new(model, FlowConvention::NoiseToData, 1.0))
        }
        OracleForm::FlowMatch => {
            let model = oracle.velocity_model(FlowConvention::DataToNoise, 1000.0);
            Box::new(FlowModel::new(model, FlowConvention::DataToNoise, 1000.0))
        }
    }
}

/// The options of `--sampler NAME`.
#[derive(Clone, Debug, Default)]
pub struct SamplerOptions {
    /// `--sigmas SPEC`.
    pub sigmas: Option<String>,
    /// `--steps N`.
    pub steps: Option<usize>,
    /// `--nfe N` (dpm-fast).
    pub nfe: Option<usize>,
    /// `--sigma-min`.
    pub sigma_min: Option<f64>,
    /// `--sigma-max`.
    pub sigma_max: Option<f64>,
    /// `--rtol`.
    pub rtol: Option<f64>,
    /// `--atol`.
    pub atol: Option<f64>,
    /// `--eta`.
    pub eta: Option<f64>,
    /// `--order`.
    pub order: Option<usize>,
    /// `--solver-type midpoint|heun`.
    pub solver_type: Option<String>,
    /// `--s-churn`, `--s-tmin`, `--s-tmax`, `--s-noise`.
    pub churn: Option<Churn>,
    /// `--shift` (flow-euler).
    pub shift: Option<f64>,
    /// `--spacing leading|trailing|linspace` (ddpm, ddim, pndm).
    pub spacing: Option<String>,
    /// `--oracle-form`, which the flow and ode samplers read.
    pub form: Option<OracleForm>,
    /// `--sde ve|vp|subvp` (pc).
    pub sde: Option<String>,
    /// `--predictor` (pc).
    pub predictor: Option<String>,
    /// `--corrector` (pc).
    pub corrector: Option<String>,
    /// `--snr` (pc).
    pub snr: Option<f64>,
    /// `--corrector-steps` (pc: per time; ald: per noise level).
    pub corrector_steps: Option<usize>,
    /// `--step-lr` (ald: ε of α_i = ε σ_i²/σ_L²).
    pub step_lr: Option<f64>,
}

/// A sampler built from a name and options.
pub struct Built {
    /// The sampler.
    pub sampler: Box<dyn Sampler>,
    /// The noise level its result is at (for `--final-denoise`), when not the data.
    pub final_level: Option<NoiseLevel>,
    /// The oracle form the sampler requires, if it implies one (it takes precedence).
    pub implied_form: Option<OracleForm>,
}

/// Default σ range of the σ-grid samplers (EDM's).
const SIGMA_MIN: f64 = 0.002;
const SIGMA_MAX: f64 = 80.0;

impl SamplerOptions {
    fn steps_or(&self, default: usize) -> usize {
        self.steps.unwrap_or(default)
    }

    fn range(&self) -> (f64, f64) {
        (
            self.sigma_min.unwrap_or(SIGMA_MIN),
            self.sigma_max.unwrap_or(SIGMA_MAX),
        )
    }

    /// `--sigmas SPEC`, or a Karras grid (ρ = 7) of `--steps` levels over [σ_min, σ_max].
    fn grid(&self) -> Result<SigmaGrid> {
        match &self.sigmas {
            Some(spec) => Ok(spec.parse::<GridSpec>()?.build()?),
            None => {
                let (lo, hi) = self.range();
                Ok(SigmaGrid::karras(self.steps_or(25), lo, hi, 7.0)?)
            }
        }
    }

    fn spacing(&self) -> Result<TimestepSpacing> {
        Ok(self.spacing.as_deref().unwrap_or("trailing").parse()?)
    }

    fn solver_type(&self) -> Result<SolverType> {
        match self.solver_type.as_deref().unwrap_or("midpoint") {
            "midpoint" => Ok(SolverType::Midpoint),
            "heun" => Ok(SolverType::Heun),
            other => Err(usage(format!(
                "unknown --solver-type `{other}`: expected midpoint or heun"
            ))),
        }
    }

    /// Checks that only options the sampler reads were given.
    fn only(&self, name: &str, allowed: &[&str]) -> Result<()> {
        let given = [
            ("sigmas", self.sigmas.is_some()),
            ("steps", self.steps.is_some()),
            ("nfe", self.nfe.is_some()),
            ("sigma-min", self.sigma_min.is_some()),
            ("sigma-max", self.sigma_max.is_some()),
            ("rtol", self.rtol.is_some()),
            ("atol", self.atol.is_some()),
            ("eta", self.eta.is_some()),
            ("order", self.order.is_some()),
            ("solver-type", self.solver_type.is_some()),
            ("s-churn", self.churn.is_some()),
            ("shift", self.shift.is_some()),
            ("spacing", self.spacing.is_some()),
            ("sde", self.sde.is_some()),
            ("predictor", self.predictor.is_some()),
            ("corrector", self.corrector.is_some()),
            ("snr", self.snr.is_some()),
            ("corrector-steps", self.corrector_steps.is_some()),
            ("step-lr", self.step_lr.is_some()),
        ];
        for (option, set) in given {
            if set && !allowed.contains(&option) {
                return Err(usage(format!(
                    "--{option} does not apply to --sampler {name} (it takes: {})",
                    if allowed.is_empty() {
                        "no options".into()
                    } else {
                        allowed
                            .iter()
                            .map(|a| format!("--{a}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )));
            }
        }
        if self.sigmas.is_some() && self.steps.is_some() {
            return Err(usage(
                "give either --sigmas or --steps, not both (the grid fixes the steps)",
            ));
        }
        Ok(())
    }

    /// Builds the sampler `name`.
    pub fn build(&self, name: &str) -> Result<Built> {
        const GRID: &[&str] = &["sigmas", "steps", "sigma-min", "sigma-max"];
        let with =
            |extra: &[&'static str]| -> Vec<&'static str> { GRID.iter().chain(extra).copied().collect() };
        let ve = |sampler: Box<dyn Sampler>| Built {
            sampler,
            final_level: None,
            implied_form: None,
        };
        let built = match name {
            "ddpm" | "ddim" | "pndm" => {
                self.only(
                    name,
                    &["steps", "spacing", "eta"][..if name == "ddim" { 3 } else { 2 }],
                )?;
                let schedule = default_vp_schedule();
                let steps = self.steps_or(if name == "ddpm" { 1000 } else { 50 });
                let ts = timesteps(schedule.len(), steps, self.spacing()?, 0)?;
                let sampler: Box<dyn Sampler> = match name {
                    "ddpm" => Box::new(Ddpm::new(successive_steps(&schedule, &ts))),
                    "ddim" => Box::new(Ddim::new(
                        successive_steps(&schedule, &ts),
                        self.eta.unwrap_or(0.0),
                    )),
                    _ => {
                        if steps < 4 {
                            return Err(usage("pndm needs --steps >= 4"));
                        }
                        let mut ascending = ts;
                        ascending.reverse();
                        Box::new(Pndm::new(schedule, &ascending, steps, false, 1.0))
                    }
                };
                Built {
                    sampler,
                    final_level: None,
                    implied_form: None,
                }
            }
            "euler" | "heun" | "dpm2" => {
                self.only(name, &with(&["s-churn"]))?;
                let method = match name {
                    "euler" => OdeMethod::Euler,
                    "heun" => OdeMethod::Heun,
                    _ => OdeMethod::Dpm2,
                };
                ve(Box::new(
                    EdmSampler::new(self.grid()?, method).with_churn(self.churn.unwrap_or_default()),
                ))
            }
            "euler-ancestral" | "dpm2-ancestral" | "dpmpp-2s-ancestral" => {
                self.only(name, &with(&["eta"]))?;
                let method = match name {
                    "euler-ancestral" => OdeMethod::Euler,
                    "dpm2-ancestral" => OdeMethod::Dpm2,
                    _ => OdeMethod::DpmppTwoS,
                };
                ve(Box::new(
                    AncestralSampler::new(self.grid()?, method).with_eta(self.eta.unwrap_or(1.0)),
                ))
            }
            "lms" => {
                self.only(name, &with(&["order"]))?;
                ve(Box::new(Lms::new(self.grid()?, self.order.unwrap_or(4))))
            }
            "dpmpp-2m" => {
                self.only(name, GRID)?;
                ve(Box::new(DpmMultistep::two_m(self.grid()?)))
            }
            "dpmpp-2m-sde" => {
                self.only(name, &with(&["eta", "solver-type"]))?;
                let mut s = DpmMultistep::two_m_sde(self.grid()?, self.solver_type()?);
                s.eta = self.eta.unwrap_or(1.0);
                ve(Box::new(s))
            }
            "dpmpp-3m-sde" => {
                self.only(name, &with(&["eta"]))?;
                let mut s = DpmMultistep::three_m_sde(self.grid()?);
                s.eta = self.eta.unwrap_or(1.0);
                ve(Box::new(s))
            }
            "unipc" => {
                self.only(name, &with(&["order"]))?;
                ve(Box::new(UniPc::new(self.grid()?, self.order.unwrap_or(2))))
            }
            "em" => {
                self.only(name, GRID)?;
                ve(Box::new(diffusion_samplers::EulerMaruyama::new(self.grid()?)))
            }
            "dpm-fast" => {
                self.only(name, &["nfe", "steps", "sigma-min", "sigma-max", "eta"])?;
                let (lo, hi) = self.range();
                let mut s = DpmSolverFast::new(lo, hi, self.nfe.or(self.steps).unwrap_or(25));
                s.eta = self.eta.unwrap_or(0.0);
                Built {
                    sampler: Box::new(s),
                    final_level: Some(NoiseLevel::ve(lo)),
                    implied_form: None,
                }
            }
            "dpm-adaptive" => {
                self.only(name, &["sigma-min", "sigma-max", "rtol", "atol", "order", "eta"])?;
                let (lo, hi) = self.range();
                let mut s = DpmSolverAdaptive::new(lo, hi);
                s.rtol = self.rtol.unwrap_or(s.rtol);
                s.atol = self.atol.unwrap_or(s.atol);
                s.order = self.order.unwrap_or(3);
                s.eta = self.eta.unwrap_or(0.0);
                if s.order != 2 && s.order != 3 {
                    return Err(usage("dpm-adaptive takes --order 2 or 3"));
                }
                Built {
                    sampler: Box::new(s),
                    final_level: Some(NoiseLevel::ve(lo)),
                    implied_form: None,
                }
            }
            "flow-euler" => {
                self.only(name, &["steps", "shift"])?;
                let (timesteps, sigmas) =
                    flow_match_sigmas(1000, self.steps_or(28), self.shift.unwrap_or(1.0))?;
                Built {
                    sampler: Box::new(FlowMatchEuler { sigmas, timesteps }),
                    final_level: None,
                    // Its timesteps are s · 1000: a flow model is called in diffusers' convention.
                    implied_form: (self.form == Some(OracleForm::Flow)).then_some(OracleForm::FlowMatch),
                }
            }
            "ode-euler" | "ode-midpoint" | "ode-heun" | "ode-rk4" | "ode-dopri5" => self.build_ode(name)?,
            "pc" => self.build_pc()?,
            "ald" => {
                self.only(
                    name,
                    &["steps", "sigma-min", "sigma-max", "corrector-steps", "step-lr"],
                )?;
                let (lo, hi) = (self.sigma_min.unwrap_or(0.01), self.sigma_max.unwrap_or(1.0));
                if !(lo > 0.0 && hi > lo) {
                    return Err(usage(format!(
                        "ald needs 0 < --sigma-min < --sigma-max, got {lo} and {hi}"
                    )));
                }
                let mut ald = AnnealedLangevin::ncsn(geometric_sigmas(hi, lo, self.steps_or(10)));
                ald.steps_per_level = self.corrector_steps.unwrap_or(ald.steps_per_level);
                ald.step_lr = self.step_lr.unwrap_or(ald.step_lr);
                Built {
                    sampler: Box::new(ald),
                    final_level: Some(NoiseLevel::ve(lo)),
                    implied_form: None,
                }
            }
            other => {
                return Err(usage(format!(
                    "unknown sampler `{other}`; known: {}",
                    SAMPLER_NAMES.join(", ")
                )));
            }
        };
        Ok(built)
    }

    /// Predictor-corrector sampling of an SDE (default VE σ ∈ [0.01, 50]; VP and sub-VP
    /// with β ∈ [0.1, 20]) with N = `--steps` (1000).
    fn build_pc(&self) -> Result<Built> {
        self.only(
            "pc",
            &[
                "steps",
                "sigma-min",
                "sigma-max",
                "sde",
                "predictor",
                "corrector",
                "snr",
                "corrector-steps",
            ],
        )?;
        let kind: SdeKind = self.sde.as_deref().unwrap_or("ve").parse().map_err(usage)?;
        let steps = self.steps_or(1000);
        let sde = match kind {
            SdeKind::Ve => {
                let (lo, hi) = (self.sigma_min.unwrap_or(0.01), self.sigma_max.unwrap_or(50.0));
                if !(lo > 0.0 && hi > lo) {
                    return Err(usage(format!(
                        "pc needs 0 < --sigma-min < --sigma-max, got {lo} and {hi}"
                    )));
                }
                Sde::ve(lo, hi, steps)
            }
            _ if self.sigma_min.is_some() || self.sigma_max.is_some() => {
                return Err(usage(
                    "--sigma-min/--sigma-max set the VE SDE; VP and sub-VP use β ∈ [0.1, 20]",
                ));
            }
            SdeKind::Vp => Sde::vp(0.1, 20.0, steps),
            SdeKind::SubVp => Sde::subvp(0.1, 20.0, steps),
        };
        let mut pc = PcSampler::new(sde);
        if let Some(p) = &self.predictor {
            pc.predictor = p.parse::<Predictor>().map_err(usage)?;
        }
        if let Some(c) = &self.corrector {
            pc.corrector = c.parse::<Corrector>().map_err(usage)?;
        }
        pc.snr = self.snr.unwrap_or(pc.snr);
        pc.corrector_steps = self.corrector_steps.unwrap_or(pc.corrector_steps);
        pc.validate()?;
        Ok(Built {
            sampler: Box::new(pc),
            final_level: None,
            implied_form: None,
        })
    }

    /// The generic ODE samplers: on a uniform t grid of the flow (noise at t = 0, data at
    /// t = 1) with `--oracle-form flow`, else on the σ grid of the VE probability-flow ODE
    /// down to its smallest positive σ.
    fn build_ode(&self, name: &str) -> Result<Built> {
        let flow = self.form == Some(OracleForm::Flow);
        if name == "ode-dopri5" {
            self.only(name, &["rtol", "atol", "sigma-min", "sigma-max"])?;
            let options = Dopri5 {
                rtol: self.rtol.unwrap_or(1e-5),
                atol: self.atol.unwrap_or(1e-5),
                ..Dopri5::default()
            };
            let (lo, hi) = self.range();
            return Ok(if flow {
                Built {
                    sampler: Box::new(OdeSampler::dopri5(
                        FlowTime::Flow(FlowConvention::NoiseToData),
                        options,
                        0.0,
                        1.0,
                    )),
                    final_level: None,
                    implied_form: None,
                }
            } else {
                Built {
                    sampler: Box::new(OdeSampler::dopri5(FlowTime::VeSigma, options, hi, lo)),
                    final_level: Some(NoiseLevel::ve(lo)),
                    implied_form: None,
                }
            });
        }
        let method = match name {
            "ode-euler" => FixedStep::Euler,
            "ode-midpoint" => FixedStep::Midpoint,
            "ode-heun" => FixedStep::Heun,
            _ => FixedStep::Rk4,
        };
        if flow {
            self.only(name, &["steps"])?;
            let n = self.steps_or(25);
            let times: Vec<f64> = (0..=n).map(|i| i as f64 / n as f64).collect();
            Ok(Built {
                sampler: Box::new(OdeSampler::fixed(
                    FlowTime::Flow(FlowConvention::NoiseToData),
                    method,
                    times,
                )),
                final_level: None,
                implied_form: None,
            })
        } else {
            self.only(name, &["sigmas", "steps", "sigma-min", "sigma-max"])?;
            let grid = self.grid()?;
            let times: Vec<f64> = grid.sigmas().iter().copied().filter(|&s| s > 0.0).collect();
            let last = *times.last().expect("a grid has a positive level");
            Ok(Built {
                sampler: Box::new(OdeSampler::fixed(FlowTime::VeSigma, method, times)),
                final_level: Some(NoiseLevel::ve(last)),
                implied_form: None,
            })
        }
    }
}

/// x after a final denoising step at `level` (samplers that stop at σ_min > 0).
pub fn final_denoise(denoiser: &dyn Denoiser, x: Tensor<2>, level: Option<NoiseLevel>) -> Tensor<2> {
    match level {
        Some(level) if level.sigma > 0.0 => denoiser.denoise(x, level),
        _ => x,
    }
}

/// A VE grid from a spec string, for library users of the CLI conventions.
pub fn grid_from_spec(spec: &str) -> Result<VeGrid> {
    Ok(VeGrid::new(spec.parse::<GridSpec>()?.build()?))
}
