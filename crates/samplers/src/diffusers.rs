//! diffusers' schedulers, loaded from a `scheduler_config.json` and mapped onto our
//! samplers, reproducing diffusers 0.42's timesteps, σs, initial noise scale and outputs
//! including its defaults and quirks.
//!
//! Supported classes: `DDPMScheduler`, `DDIMScheduler`, `DDIMInverseScheduler`,
//! `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`, `HeunDiscreteScheduler`,
//! `LMSDiscreteScheduler`, `PNDMScheduler`, `DPMSolverMultistepScheduler`,
//! `UniPCMultistepScheduler`, `FlowMatchEulerDiscreteScheduler`. A configuration value we do
//! not reproduce is an error naming the key, never silently ignored.
//!
//! Quirks kept on purpose (each is diffusers' behaviour, tested against it):
//! - `leading` spacing does not reach T−1; Euler-type `linspace` timesteps are fractional
//!   and their σ is interpolated linearly in t, not in log σ;
//! - DDIM steps to t − T div N whatever the spacing, DDPM to the next listed timestep, and
//!   DDPM adds noise whenever t > 0 (so `steps_offset = 1` noises the last step);
//! - Euler-type `init_noise_sigma` is √(σ_max² + 1) with `leading` spacing;
//! - Euler, Euler ancestral, DPM-Solver and UniPC replace ᾱ_{T−1} = 0 of a zero-SNR schedule
//!   by 2⁻²⁴ (σ_max ≈ 4096), DDPM and DDIM keep 0;
//! - DPM-Solver and UniPC with Karras σ solve with the exact σ but give the model the
//!   rounded timestep; the final step to σ = 0 is first order;
//! - FlowMatch applies the shift twice to σ_min.
//!
//! Deliberate differences: UniPC-bh1 ending at σ = 0 returns x₀ where diffusers returns NaN
//! (−∞ · 0 in its last first-order step); DDPM's `fixed_large_log` uses exp(½ ln β) where
//! diffusers takes √(ln β) (NaN).

use std::path::Path;

use diffusion_ddpm::{Prediction, X0Clip};
use diffusion_schedules::numeric::{arange_numpy, linspace_numpy, linspace_torch, round_half_even};
use diffusion_schedules::{
    BetaSchedule, DiscreteSchedule, SigmaGrid, TimestepSpacing, flow_match_sigmas, timesteps,
    timesteps_fractional,
};
use serde_json::{Map, Value};

use crate::ancestral::AncestralSampler;
use crate::ddim::Ddim;
use crate::ddim_inversion::{DdimInversion, InversionEval, InversionStep};
use crate::ddpm::{Ddpm, VarianceType};
use crate::dpm_multistep::{DpmAlgorithm, DpmDialect, DpmMultistep, SolverType};
use crate::edm::EdmSampler;
use crate::lms::Lms;
use crate::pf_ode::FlowMatchEuler;
use crate::pndm::Pndm;
use crate::sampler::{Sampler, WithClippedDenoiser};
use crate::single_step::OdeMethod;
use crate::unipc::{UniPc, UniPcVariant};
use crate::ve::{InVpCoordinates, VeGrid};
use crate::vp_step::VpStep;

/// A scheduler configuration we cannot load or reproduce.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DiffusersError {
    /// Not JSON, or not an object.
    #[error("scheduler config: {0}")]
    Parse(String),
    /// A `_class_name` we do not know.
    #[error(
        "scheduler class `{0}` is not supported; supported: DDPMScheduler, DDIMScheduler, DDIMInverseScheduler, \
         EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler, \
         PNDMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler"
    )]
    UnknownClass(String),
    /// A key with a value of the wrong type or out of range.
    #[error("scheduler config key `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A value diffusers accepts that we do not reproduce (yet).
    #[error("scheduler config `{key}` = {value} is not supported by diffusion-lab{hint}")]
    Unsupported {
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// How to get on (may be empty).
        hint: String,
    },
    /// The step count does not fit the schedule.
    #[error(transparent)]
    Schedule(#[from] diffusion_schedules::ScheduleError),
}

type Result<T> = std::result::Result<T, DiffusersError>;

/// The diffusers scheduler classes we reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerClass {
    /// `DDPMScheduler`.
    Ddpm,
    /// `DDIMScheduler`.
    Ddim,
    /// `DDIMInverseScheduler`.
    DdimInverse,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `HeunDiscreteScheduler`.
    Heun,
    /// `LMSDiscreteScheduler`.
    Lms,
    /// `PNDMScheduler`.
    Pndm,
    /// `DPMSolverMultistepScheduler`.
    DpmSolverMultistep,
    /// `UniPCMultistepScheduler`.
    UniPc,
    /// `FlowMatchEulerDiscreteScheduler`.
    FlowMatchEuler,
}

impl SchedulerClass {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "DDPMScheduler" => Self::Ddpm,
            "DDIMScheduler" => Self::Ddim,
            "DDIMInverseScheduler" => Self::DdimInverse,
            "EulerDiscreteScheduler" => Self::Euler,
            "EulerAncestralDiscreteScheduler" => Self::EulerAncestral,
            "HeunDiscreteScheduler" => Self::Heun,
            "LMSDiscreteScheduler" => Self::Lms,
            "PNDMScheduler" => Self::Pndm,
            "DPMSolverMultistepScheduler" => Self::DpmSolverMultistep,
            "UniPCMultistepScheduler" => Self::UniPc,
            "FlowMatchEulerDiscreteScheduler" => Self::FlowMatchEuler,
            other => return Err(DiffusersError::UnknownClass(other.into())),
        })
    }

    /// The diffusers class name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddpm => "DDPMScheduler",
            Self::Ddim => "DDIMScheduler",
            Self::DdimInverse => "DDIMInverseScheduler",
            Self::Euler => "EulerDiscreteScheduler",
            Self::EulerAncestral => "EulerAncestralDiscreteScheduler",
            Self::Heun => "HeunDiscreteScheduler",
            Self::Lms => "LMSDiscreteScheduler",
            Self::Pndm => "PNDMScheduler",
            Self::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            Self::UniPc => "UniPCMultistepScheduler",
            Self::FlowMatchEuler => "FlowMatchEulerDiscreteScheduler",
        }
    }

    fn is_euler_family(self) -> bool {
        matches!(self, Self::Euler | Self::EulerAncestral | Self::Heun | Self::Lms)
    }
}

/// What a model used with the scheduler predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelForm {
    /// A discrete-time VP model predicting ε, x₀ or v at the scheduler's timesteps.
    Discrete(Prediction),
    /// A flow velocity dx/ds = ε − x₀ at timestep s · T (FlowMatch).
    Flow,
}

/// Options diffusers passes to `step()` rather than through the configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOptions {
    /// DDIM's η (0).
    pub eta: f64,
    /// LMS's order (4).
    pub lms_order: usize,
}

impl Default for StepOptions {
    fn default() -> Self {
        Self {
            eta: 0.0,
            lms_order: 4,
        }
    }
}

/// A scheduler set up for a number of inference steps: its grid and the sampler that runs it.
pub struct Plan {
    /// The timesteps the model is called at, in order (as diffusers' `scheduler.timesteps`).
    pub timesteps: Vec<f64>,
    /// diffusers' `scheduler.sigmas` where the scheduler has them.
    pub sigmas: Option<Vec<f64>>,
    /// diffusers' `init_noise_sigma`: the initial latent is z · init_noise_sigma.
    pub init_noise_sigma: f64,
    /// The sampler. Its own [`Sampler::init_noise_sigma`] is the scale in its coordinates.
    pub sampler: Box<dyn Sampler>,
}

/// A diffusers scheduler configuration.
#[derive(Clone, Debug)]
pub struct DiffusersScheduler {
    class: SchedulerClass,
    config: Map<String, Value>,
    betas: Vec<f64>,
    schedule: DiscreteSchedule,
}

impl DiffusersScheduler {
    /// Reads a `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DiffusersError::Parse(format!("{}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| match e {
            DiffusersError::Parse(m) => DiffusersError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses a configuration from JSON text (`Infinity` and `-Infinity` are accepted, as
    /// Python writes them).
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(&quote_non_finite(text))
            .map_err(|e| DiffusersError::Parse(e.to_string()))?;
        Self::from_value(value)
    }

    /// Builds from a parsed JSON object with `_class_name`.
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(config) = value else {
            return Err(DiffusersError::Parse("expected a JSON object".into()));
        };
        let class = SchedulerClass::parse(
            config
                .get("_class_name")
                .and_then(Value::as_str)
                .ok_or_else(|| DiffusersError::Parse("missing `_class_name`".into()))?,
        )?;
        let mut s = Self {
            class,
            config,
            betas: Vec::new(),
            schedule: DiscreteSchedule::linear(2, 0.1, 0.2)?,
        };
        if class != SchedulerClass::FlowMatchEuler {
            s.build_tables()?;
        }
        s.check_unsupported()?;
        Ok(s)
    }

    /// The scheduler class.
    pub fn class(&self) -> SchedulerClass {
        self.class
    }

    /// `num_train_timesteps`.
    pub fn num_train_timesteps(&self) -> Result<usize> {
        self.usize_or("num_train_timesteps", 1000)
    }

    /// diffusers' `betas` (before any 2⁻²⁴ patch of ᾱ).
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// diffusers' `alphas_cumprod`, including the zero-SNR 2⁻²⁴ patch of the classes that
    /// apply it.
    pub fn alphas_cumprod(&self) -> &[f64] {
        self.schedule.alphas_cumprod()
    }

    /// The schedule a model used with this scheduler was trained on (ᾱ as diffusers uses it).
    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    /// What the model predicts.
    pub fn model_form(&self) -> Result<ModelForm> {
        if self.class == SchedulerClass::FlowMatchEuler {
            return Ok(ModelForm::Flow);
        }
        let p = self.str_or("prediction_type", "epsilon")?;
        let prediction = match p.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::V,
            "sample" | "original_sample"
                if self.class != SchedulerClass::EulerAncestral && self.class != SchedulerClass::Pndm =>
            {
                Prediction::Sample
            }
            other => return Err(unsupported("prediction_type", other, "")),
        };
        Ok(ModelForm::Discrete(prediction))
    }

    // ---- configuration access -------------------------------------------------------------

    fn get(&self, key: &str) -> Option<&Value> {
        self.config.get(key).filter(|v| !v.is_null())
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            // Python writes non-finite floats as these words.
            Some(Value::String(s)) if s == "Infinity" => Ok(f64::INFINITY),
            Some(Value::String(s)) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
            Some(Value::String(s)) if s == "NaN" => Ok(f64::NAN),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| invalid(key, format!("expected a number, got {v}"))),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|u| u as usize)
                .ok_or_else(|| invalid(key, format!("expected a non-negative integer, got {v}"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| invalid(key, format!("expected true or false, got {v}"))),
        }
    }

    fn str_or(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.into()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| invalid(key, format!("expected a string, got {v}"))),
        }
    }

    fn spacing(&self) -> Result<TimestepSpacing> {
        let default = match self.class {
            SchedulerClass::Ddpm
            | SchedulerClass::Ddim
            | SchedulerClass::DdimInverse
            | SchedulerClass::Pndm => "leading",
            _ => "linspace",
        };
        let s = self.str_or("timestep_spacing", default)?;
        let spacing = s.parse().map_err(|_| {
            invalid(
                "timestep_spacing",
                format!("`{s}`: expected leading, trailing or linspace"),
            )
        })?;
        if self.class == SchedulerClass::DdimInverse && spacing == TimestepSpacing::Linspace {
            return Err(invalid(
                "timestep_spacing",
                "DDIMInverseScheduler supports leading and trailing only".into(),
            ));
        }
        Ok(spacing)
    }

    fn sigma_conversion(&self) -> Result<Conversion> {
        let karras = self.bool_or("use_karras_sigmas", false)?;
        let exponential = self.bool_or("use_exponential_sigmas", false)?;
        let beta = self.bool_or("use_beta_sigmas", false)?;
        if [karras, exponential, beta].iter().filter(|b| **b).count() > 1 {
            return Err(invalid(
                "use_karras_sigmas",
                "only one of karras, exponential and beta sigmas can be used".into(),
            ));
        }
        if beta {
            return Err(unsupported(
                "use_beta_sigmas",
                "true",
                "; use karras or exponential sigmas",
            ));
        }
        Ok(if karras {
            Conversion::Karras
        } else if exponential {
            Conversion::Exponential
        } else {
            Conversion::None
        })
    }

    // ---- tables ---------------------------------------------------------------------------

    fn build_tables(&mut self) -> Result<()> {
        let t_len = self.num_train_timesteps()?;
        let (default_start, default_end) = if self.class == SchedulerClass::Heun {
            (0.00085, 0.012)
        } else {
            (1e-4, 0.02)
        };
        let start = self.f64_or("beta_start", default_start)?;
        let end = self.f64_or("beta_end", default_end)?;
        let betas = if let Some(trained) = self.get("trained_betas") {
            trained
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                .ok_or_else(|| invalid("trained_betas", "expected a list of numbers".into()))?
        } else {
            let name = self.str_or("beta_schedule", "linear")?;
            let schedule = match name.as_str() {
                "linear" => BetaSchedule::Linear { start, end },
                "scaled_linear" => BetaSchedule::ScaledLinear { start, end },
                "squaredcos_cap_v2" => BetaSchedule::cosine(),
                "exp" if self.class == SchedulerClass::Heun => BetaSchedule::Exp,
                "sigmoid" if self.class == SchedulerClass::Ddpm => BetaSchedule::Sigmoid { start, end },
                "laplace" if self.class == SchedulerClass::Ddpm => BetaSchedule::Laplace,
                other => {
                    return Err(invalid(
                        "beta_schedule",
                        format!("`{other}` is not implemented for {}", self.class.name()),
                    ));
                }
            };
            schedule.betas(t_len)?
        };
        let mut schedule = DiscreteSchedule::from_betas(betas)?;
        if self.bool_or("rescale_betas_zero_snr", false)? {
            schedule = schedule.rescale_zero_terminal_snr()?;
        }
        self.betas = schedule.betas().to_vec();
        let patches = matches!(
            self.class,
            SchedulerClass::Euler
                | SchedulerClass::EulerAncestral
                | SchedulerClass::DpmSolverMultistep
                | SchedulerClass::UniPc
        );
        if patches && *schedule.alphas_cumprod().last().expect("non-empty") == 0.0 {
            schedule = schedule.with_terminal_alpha_bar(2f64.powi(-24))?;
        }
        self.schedule = schedule;
        Ok(())
    }

    fn check_unsupported(&self) -> Result<()> {
        let on = |k: &str| self.get(k).is_some_and(|v| v.as_bool() == Some(true));
        if on("thresholding")
            && !matches!(
                self.class,
                SchedulerClass::Ddpm
                    | SchedulerClass::Ddim
                    | SchedulerClass::DpmSolverMultistep
                    | SchedulerClass::UniPc
            )
        {
            return Err(unsupported(
                "thresholding",
                "true",
                &format!(" for {}", self.class.name()),
            ));
        }
        for key in [
            "use_dynamic_shifting",
            "invert_sigmas",
            "stochastic_sampling",
            "use_flow_sigmas",
        ] {
            if on(key) {
                return Err(unsupported(key, "true", ""));
            }
        }
        if let Some(v) = self.get("shift_terminal") {
            return Err(unsupported("shift_terminal", &v.to_string(), ""));
        }
        if let Some(v) = self.get("solver_p") {
            return Err(unsupported("solver_p", &v.to_string(), ""));
        }
        if self.class == SchedulerClass::Euler && self.str_or("timestep_type", "discrete")? != "discrete" {
            return Err(unsupported("timestep_type", "continuous", ""));
        }
        if let Some(v) = self
            .get("variance_type")
            .filter(|_| self.class == SchedulerClass::DpmSolverMultistep)
        {
            return Err(unsupported(
                "variance_type",
                &v.to_string(),
                " for DPMSolverMultistepScheduler (sample a learned-variance model with DDPMScheduler)",
            ));
        }
        Ok(())
    }

    // ---- plans ----------------------------------------------------------------------------

    /// Sets the scheduler up for `steps` inference steps.
    pub fn plan(&self, steps: usize, options: StepOptions) -> Result<Plan> {
        match self.class {
            SchedulerClass::Ddpm => self.plan_ddpm(steps),
            SchedulerClass::Ddim => self.plan_ddim(steps, options.eta),
            SchedulerClass::DdimInverse => self.plan_ddim_inverse(steps),
            SchedulerClass::Pndm => self.plan_pndm(steps),
            SchedulerClass::Euler
            | SchedulerClass::EulerAncestral
            | SchedulerClass::Heun
            | SchedulerClass::Lms => self.plan_euler_family(steps, options.lms_order),
            SchedulerClass::DpmSolverMultistep | SchedulerClass::UniPc => self.plan_multistep(steps),
            SchedulerClass::FlowMatchEuler => self.plan_flow_match(steps),
        }
    }

    /// `thresholding` (dynamic) or `clip_sample` (static), as the class applies them.
    fn clip(&self) -> Result<Option<X0Clip>> {
        if self.bool_or("thresholding", false)? {
            return Ok(Some(X0Clip::Dynamic {
                ratio: self.f64_or("dynamic_thresholding_ratio", 0.995)?,
                max_value: self.f64_or("sample_max_value", 1.0)?,
            }));
        }
        let default = matches!(
            self.class,
            SchedulerClass::Ddpm | SchedulerClass::Ddim | SchedulerClass::DdimInverse
        );
        Ok(if self.bool_or("clip_sample", default)? {
            Some(X0Clip::Static {
                range: self.f64_or("clip_sample_range", 1.0)?,
            })
        } else {
            None
        })
    }

    fn integer_grid(&self, steps: usize) -> Result<Vec<usize>> {
        let t_len = self.num_train_timesteps()?;
        Ok(timesteps(
            t_len,
            steps,
            self.spacing()?,
            self.usize_or("steps_offset", 0)?,
        )?)
    }

    fn plan_ddpm(&self, steps: usize) -> Result<Plan> {
        let ts = self.integer_grid(steps)?;
        let ab = self.schedule.alphas_cumprod();
        let vp_steps = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| VpStep {
                timestep: t as f64,
                alpha_bar: ab[t],
                alpha_bar_prev: ts.get(i + 1).map(|&p| ab[p]).unwrap_or(1.0),
                add_noise: t > 0,
            })
            .collect();
        let variance = match self.str_or("variance_type", "fixed_small")?.as_str() {
            "fixed_small" => VarianceType::FixedSmall,
            "fixed_small_log" => VarianceType::FixedSmallLog,
            "fixed_large" => VarianceType::FixedLarge,
            "fixed_large_log" => VarianceType::FixedLargeLog,
            "learned" => VarianceType::Learned,
            "learned_range" => VarianceType::LearnedRange,
            other => return Err(invalid("variance_type", format!("unknown `{other}`"))),
        };
        Ok(Plan {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            sigmas: None,
            init_noise_sigma: 1.0,
            sampler: Box::new(Ddpm {
                steps: vp_steps,
                variance,
                clip_sample: self.clip()?,
            }),
        })
    }

    fn final_alpha(&self, key: &str) -> Result<f64> {
        Ok(if self.bool_or(key, true)? {
            1.0
        } else {
            self.schedule.alphas_cumprod()[0]
        })
    }

    fn plan_ddim(&self, steps: usize, eta: f64) -> Result<Plan> {
        let ts = self.integer_grid(steps)?;
        let ab = self.schedule.alphas_cumprod();
        let ratio = (self.num_train_timesteps()? / steps) as i64;
        let final_ab = self.final_alpha("set_alpha_to_one")?;
        let vp_steps = ts
            .iter()
            .map(|&t| {
                let prev = t as i64 - ratio;
                VpStep {
                    timestep: t as f64,
                    alpha_bar: ab[t],
                    alpha_bar_prev: if prev >= 0 { ab[prev as usize] } else { final_ab },
                    add_noise: true,
                }
            })
            .collect();
        let mut ddim = Ddim::new(vp_steps, eta);
        ddim.clip_sample = self.clip()?;
        Ok(Plan {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            sigmas: None,
            init_noise_sigma: 1.0,
            sampler: Box::new(ddim),
        })
    }

    fn plan_ddim_inverse(&self, steps: usize) -> Result<Plan> {
        let t_len = self.num_train_timesteps()?;
        if steps > t_len {
            return Err(diffusion_schedules::ScheduleError::TooManySteps { steps, train: t_len }.into());
        }
        let offset = self.usize_or("steps_offset", 0)?;
        let ratio = t_len / steps;
        let ts: Vec<usize> = match self.spacing()? {
            TimestepSpacing::Trailing => {
                let mut v: Vec<usize> = arange_numpy(t_len as f64, 0.0, -(t_len as f64) / steps as f64)
                    .into_iter()
                    .map(|t| round_half_even(t) as usize - 1)
                    .collect();
                v.reverse();
                v
            }
            _ => (0..steps).map(|i| i * ratio + offset).collect(),
        };
        let ab = self.schedule.alphas_cumprod();
        let initial = if let Some(v) = self.get("set_alpha_to_zero") {
            if v.as_bool() == Some(true) { 1.0 } else { ab[0] }
        } else {
            self.final_alpha("set_alpha_to_one")?
        };
        let inversion = ts
            .iter()
            .map(|&t| {
                let src = (t as i64 - ratio as i64).min(t_len as i64 - 1);
                InversionStep {
                    timestep: t as f64,
                    alpha_bar_from: if src >= 0 { ab[src as usize] } else { initial },
                    alpha_bar_to: ab[t],
                }
            })
            .collect();
        Ok(Plan {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            sigmas: None,
            init_noise_sigma: 1.0,
            sampler: Box::new(DdimInversion {
                steps: inversion,
                eval: InversionEval::Target,
                clip_sample: self.clip()?,
            }),
        })
    }

    fn plan_pndm(&self, steps: usize) -> Result<Plan> {
        let mut ascending = self.integer_grid(steps)?;
        ascending.reverse();
        let skip = self.bool_or("skip_prk_steps", false)?;
        if !skip && ascending.len() < 4 {
            return Err(invalid(
                "skip_prk_steps",
                "PRK warm-up needs at least 4 inference steps".into(),
            ));
        }
        let final_ab = if self.bool_or("set_alpha_to_one", false)? {
            1.0
        } else {
            self.schedule.alphas_cumprod()[0]
        };
        let mut pndm = Pndm::new(self.schedule.clone(), &ascending, steps, skip, final_ab);
        if let ModelForm::Discrete(Prediction::V) = self.model_form()? {
            pndm.combine = Prediction::V;
        }
        Ok(Plan {
            timesteps: pndm.timesteps().iter().map(|&t| t as f64).collect(),
            sigmas: None,
            init_noise_sigma: 1.0,
            sampler: Box::new(pndm),
        })
    }

    /// Euler, Euler ancestral, Heun and LMS share their grid: fractional timesteps, σ by
    /// linear interpolation in t, optional Karras/exponential conversion.
    fn plan_euler_family(&self, steps: usize, lms_order: usize) -> Result<Plan> {
        let t_len = self.num_train_timesteps()?;
        let spacing = self.spacing()?;
        let mut ts = timesteps_fractional(t_len, steps, spacing, self.usize_or("steps_offset", 0)?)?;
        let tab = self.schedule.sigmas();
        let log_linear = self.class == SchedulerClass::Euler
            && self.str_or("interpolation_type", "linear")? == "log_linear";
        if self.class == SchedulerClass::Euler {
            let interp = self.str_or("interpolation_type", "linear")?;
            if interp != "linear" && interp != "log_linear" {
                return Err(invalid(
                    "interpolation_type",
                    format!("`{interp}`: expected linear or log_linear"),
                ));
            }
        }
        let mut sig: Vec<f64> = if log_linear {
            linspace_torch(tab[t_len - 1].ln(), tab[0].ln(), steps + 1)
                .into_iter()
                .map(f64::exp)
                .collect()
        } else {
            ts.iter().map(|&t| self.schedule.t_to_sigma_linear(t)).collect()
        };
        let conversion = self.sigma_conversion()?;
        if conversion != Conversion::None {
            // Euler honours sigma_min/sigma_max; LMS always uses the grid's own ends.
            let (own_min, own_max) = (*sig.last().expect("steps > 0"), sig[0]);
            let (lo, hi) = if self.class == SchedulerClass::Euler {
                (
                    self.f64_or("sigma_min", own_min)?,
                    self.f64_or("sigma_max", own_max)?,
                )
            } else {
                (own_min, own_max)
            };
            sig = conversion.apply(lo, hi, steps);
            ts = sig.iter().map(|&s| self.schedule.sigma_to_t(s)).collect();
        }
        let last = match self.str_or("final_sigmas_type", "zero")?.as_str() {
            "zero" => 0.0,
            "sigma_min" if self.class == SchedulerClass::Euler => tab[0],
            other => {
                return Err(invalid(
                    "final_sigmas_type",
                    format!("`{other}`: expected zero or sigma_min"),
                ));
            }
        };
        let mut sigmas = sig.clone();
        sigmas.push(last);
        let max = sigmas.iter().copied().fold(0.0, f64::max);
        let init = if spacing == TimestepSpacing::Leading {
            (max * max + 1.0).sqrt()
        } else {
            max
        };
        // log-linear stops at its last σ: the model is called N times.
        let run_sigmas = if log_linear && conversion == Conversion::None {
            sig
        } else {
            sigmas.clone()
        };
        let grid = VeGrid::new(SigmaGrid::new(run_sigmas)?)
            .with_timesteps(ts.clone())
            .with_init_noise_sigma(init);
        let (timesteps, sampler): (Vec<f64>, Box<dyn Sampler>) = match self.class {
            SchedulerClass::Euler => (ts, Box::new(EdmSampler::new(grid, OdeMethod::Euler))),
            SchedulerClass::EulerAncestral => (ts, Box::new(AncestralSampler::new(grid, OdeMethod::Euler))),
            SchedulerClass::Lms => (ts, Box::new(Lms::new(grid, lms_order))),
            _ => {
                // Heun lists each interior timestep twice (two model calls) and its σs likewise.
                let mut heun_ts = vec![ts[0]];
                ts[1..].iter().for_each(|&t| heun_ts.extend([t, t]));
                let mut heun = EdmSampler::new(grid, OdeMethod::Heun);
                heun.clip_sample = self.clip()?;
                (heun_ts, Box::new(heun))
            }
        };
        let sigmas = if self.class == SchedulerClass::Heun {
            let mut s = vec![sigmas[0]];
            sigmas[1..steps].iter().for_each(|&x| s.extend([x, x]));
            s.push(0.0);
            s
        } else {
            sigmas
        };
        Ok(Plan {
            timesteps,
            sigmas: Some(sigmas),
            init_noise_sigma: init,
            sampler,
        })
    }

    /// DPM-Solver multistep and UniPC: integer timesteps on N + 1 points minus the last.
    fn plan_multistep(&self, steps: usize) -> Result<Plan> {
        let t_len = self.num_train_timesteps()?;
        if steps > t_len {
            return Err(diffusion_schedules::ScheduleError::TooManySteps { steps, train: t_len }.into());
        }
        let dpm = self.class == SchedulerClass::DpmSolverMultistep;
        let ab = self.schedule.alphas_cumprod();
        // DPM clips λ from below: the grid stops at the first t with λ_t < lambda_min_clipped.
        let clipped = if dpm {
            let clip = self.f64_or("lambda_min_clipped", f64::NEG_INFINITY)?;
            ab.iter()
                .filter(|&&a| 0.5 * a.ln() - 0.5 * (1.0 - a).ln() < clip)
                .count()
        } else {
            0
        };
        let last = t_len - clipped;
        let offset = self.usize_or("steps_offset", 0)?;
        let mut ts: Vec<f64> = match self.spacing()? {
            TimestepSpacing::Linspace => {
                let mut v: Vec<f64> = linspace_numpy(0.0, (last - 1) as f64, steps + 1)
                    .into_iter()
                    .map(round_half_even)
                    .collect();
                v.reverse();
                v.pop();
                v
            }
            TimestepSpacing::Leading => {
                let ratio = last / (steps + 1);
                let mut v: Vec<f64> = (0..=steps).map(|i| (i * ratio + offset) as f64).collect();
                v.reverse();
                v.pop();
                v
            }
            TimestepSpacing::Trailing => arange_numpy(last as f64, 0.0, -(t_len as f64) / steps as f64)
                .into_iter()
                .map(|t| round_half_even(t) - 1.0)
                .collect(),
        };
        let tab = self.schedule.sigmas();
        let cosine = self.str_or("beta_schedule", "linear")? == "squaredcos_cap_v2";
        let to_int = |t: f64, round: bool| {
            if round && !cosine {
                round_half_even(t)
            } else {
                t.trunc()
            }
        };
        let conversion = self.sigma_conversion()?;
        let lu = dpm && self.bool_or("use_lu_lambdas", false)?;
        let (sig, converted): (Vec<f64>, bool) = if lu {
            let (lmax, lmin) = (tab[t_len - 1].ln(), tab[0].ln());
            let s: Vec<f64> = linspace_numpy(0.0, 1.0, steps)
                .into_iter()
                .map(|r| (lmax + r * (lmin - lmax)).exp())
                .collect();
            ts = s
                .iter()
                .map(|&x| to_int(self.schedule.sigma_to_t(x), true))
                .collect();
            (s, true)
        } else if conversion != Conversion::None {
            let (lo, hi) = if dpm {
                (tab[0], tab[t_len - 1])
            } else {
                (
                    self.f64_or("sigma_min", tab[0])?,
                    self.f64_or("sigma_max", tab[t_len - 1])?,
                )
            };
            let s = conversion.apply(lo, hi, steps);
            let round = conversion == Conversion::Karras;
            ts = s
                .iter()
                .map(|&x| to_int(self.schedule.sigma_to_t(x), round))
                .collect();
            (s, true)
        } else {
            (ts.iter().map(|&t| tab[t as usize]).collect(), false)
        };
        let final_type = self.str_or("final_sigmas_type", "zero")?;
        let last_sigma = match final_type.as_str() {
            "zero" => 0.0,
            // UniPC repeats its last converted σ: the final step is a no-op (diffusers' quirk).
            "sigma_min" if !dpm && converted => *sig.last().expect("steps > 0"),
            "sigma_min" => tab[0],
            other => {
                return Err(invalid(
                    "final_sigmas_type",
                    format!("`{other}`: expected zero or sigma_min"),
                ));
            }
        };
        let mut sigmas = sig;
        sigmas.push(last_sigma);
        let grid = VeGrid::from_values(sigmas.clone())
            .map_err(|e| invalid("final_sigmas_type", e.to_string()))?
            .with_timesteps(ts.clone());
        let order = self.usize_or("solver_order", 2)?;
        let lower_order_final = self.bool_or("lower_order_final", true)?;
        let sampler: Box<dyn Sampler> = if dpm {
            let algorithm = self.str_or("algorithm_type", "dpmsolver++")?;
            let (algorithm, sde) = match algorithm.as_str() {
                "dpmsolver++" | "deis" => (DpmAlgorithm::DataPrediction, false),
                "sde-dpmsolver++" => (DpmAlgorithm::DataPrediction, true),
                "dpmsolver" => (DpmAlgorithm::NoisePrediction, false),
                "sde-dpmsolver" => (DpmAlgorithm::NoisePrediction, true),
                other => return Err(invalid("algorithm_type", format!("`{other}` is not implemented"))),
            };
            if algorithm == DpmAlgorithm::NoisePrediction && final_type == "zero" {
                return Err(invalid(
                    "final_sigmas_type",
                    "`zero` is not supported with algorithm_type dpmsolver / sde-dpmsolver (diffusers refuses it too)".into(),
                ));
            }
            let solver_type = match self.str_or("solver_type", "midpoint")?.as_str() {
                "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
                "heun" => SolverType::Heun,
                other => {
                    return Err(invalid(
                        "solver_type",
                        format!("`{other}`: expected midpoint or heun"),
                    ));
                }
            };
            let m = DpmMultistep {
                grid,
                order,
                algorithm,
                eta: if sde { 1.0 } else { 0.0 },
                s_noise: 1.0,
                solver_type,
                lower_order_final,
                euler_at_final: self.bool_or("euler_at_final", false)?,
                dialect: DpmDialect::Diffusers,
            };
            m.validate()
                .map_err(|e| invalid("algorithm_type", e.to_string()))?;
            Box::new(m)
        } else {
            let variant = match self.str_or("solver_type", "bh2")?.as_str() {
                "bh1" => UniPcVariant::Bh1,
                "bh2" | "midpoint" | "heun" | "logrho" => UniPcVariant::Bh2,
                other => return Err(invalid("solver_type", format!("`{other}`: expected bh1 or bh2"))),
            };
            let disable_corrector = match self.get("disable_corrector") {
                None => Vec::new(),
                Some(v) => v
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|x| x.as_u64().map(|u| u as usize))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| invalid("disable_corrector", "expected a list of step indices".into()))?,
            };
            Box::new(UniPc {
                grid,
                order,
                variant,
                predict_x0: self.bool_or("predict_x0", true)?,
                lower_order_final,
                disable_corrector,
            })
        };
        let sampler: Box<dyn Sampler> = match self.clip()? {
            Some(clip) => Box::new(WithClippedDenoiser { inner: sampler, clip }),
            None => sampler,
        };
        Ok(Plan {
            timesteps: ts,
            sigmas: Some(sigmas.clone()),
            init_noise_sigma: 1.0,
            sampler: Box::new(InVpCoordinates::new(sampler, sigmas)),
        })
    }

    fn plan_flow_match(&self, steps: usize) -> Result<Plan> {
        if self.sigma_conversion()? != Conversion::None {
            return Err(unsupported(
                "use_karras_sigmas",
                "true",
                " for FlowMatchEulerDiscreteScheduler",
            ));
        }
        let (timesteps, sigmas) =
            flow_match_sigmas(self.num_train_timesteps()?, steps, self.f64_or("shift", 1.0)?)?;
        Ok(Plan {
            timesteps: timesteps.clone(),
            sigmas: Some(sigmas.clone()),
            init_noise_sigma: 1.0,
            sampler: Box::new(FlowMatchEuler { sigmas, timesteps }),
        })
    }
}

/// diffusers' σ conversions (ρ = 7 for Karras).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conversion {
    None,
    Karras,
    Exponential,
}

impl Conversion {
    /// `steps` σs from `hi` down to `lo` (numpy linspace, as diffusers).
    fn apply(self, lo: f64, hi: f64, steps: usize) -> Vec<f64> {
        match self {
            Self::None => unreachable!("no conversion"),
            Self::Karras => {
                let rho = 7.0;
                let (a, b) = (hi.powf(1.0 / rho), lo.powf(1.0 / rho));
                linspace_numpy(0.0, 1.0, steps)
                    .into_iter()
                    .map(|r| (a + r * (b - a)).powf(rho))
                    .collect()
            }
            Self::Exponential => linspace_numpy(hi.ln(), lo.ln(), steps)
                .into_iter()
                .map(f64::exp)
                .collect(),
        }
    }
}

/// Python's `json.dumps` writes non-finite floats as the bare words `Infinity`, `-Infinity`
/// and `NaN`, which JSON does not allow: quote them (outside strings) so they parse.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w))
        {
            out.push('"');
            out.push_str(word);
            out.push('"');
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn invalid(key: &str, reason: String) -> DiffusersError {
    DiffusersError::Invalid {
        key: key.into(),
        reason,
    }
}

fn unsupported(key: &str, value: &str, hint: &str) -> DiffusersError {
    DiffusersError::Unsupported {
        key: key.into(),
        value: value.into(),
        hint: hint.into(),
    }
}

impl SchedulerClass {
    /// Whether the model input is x / √(σ² + 1) (diffusers' `scale_model_input`).
    pub fn scales_model_input(self) -> bool {
        self.is_euler_family()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_words_parse() {
        let text = r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "note": "NaN \" Infinity"}"#;
        let s = DiffusersScheduler::from_json(text).unwrap();
        assert_eq!(s.f64_or("lambda_min_clipped", 0.0).unwrap(), f64::NEG_INFINITY);
        assert_eq!(s.config["note"], "NaN \" Infinity");
    }
}
