//! diffusers' `ScoreSdeVeScheduler` (the VE predictor–corrector sampler of Song et al. 2021
//! as packaged with NCSN++ checkpoints) read from its `scheduler_config.json` and mapped
//! onto [`PcSampler`]: reverse-diffusion predictor, Langevin corrector with batch-mean
//! norms, times linspace(1, ε, N) and N geometric discrete σ from σ_min to σ_max.

use std::path::Path;

use serde::Deserialize;

use crate::pc::{Corrector, PcSampler, Predictor};
use crate::sde::Sde;

/// A `scheduler_config.json` that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScoreSdeVeError {
    /// The file could not be read.
    #[error("cannot read the scheduler config {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not JSON of the expected shape.
    #[error("the scheduler config is not a ScoreSdeVeScheduler config: {0}")]
    Parse(#[from] serde_json::Error),
    /// A value out of range.
    #[error("invalid ScoreSdeVeScheduler config: {0}")]
    Invalid(String),
}

/// The fields of a diffusers `ScoreSdeVeScheduler` config (defaults as in diffusers).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct ScoreSdeVeConfig {
    /// `_class_name`, when present, must be `ScoreSdeVeScheduler`.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// N of training (and the default number of sampling steps).
    pub num_train_timesteps: usize,
    /// The corrector's signal-to-noise ratio r.
    pub snr: f64,
    /// σ_min.
    pub sigma_min: f64,
    /// σ_max.
    pub sigma_max: f64,
    /// The last time ε.
    pub sampling_eps: f64,
    /// Corrector steps per time.
    pub correct_steps: usize,
}

impl Default for ScoreSdeVeConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: 2000,
            snr: 0.15,
            sigma_min: 0.01,
            sigma_max: 1348.0,
            sampling_eps: 1e-5,
            correct_steps: 1,
        }
    }
}

impl ScoreSdeVeConfig {
    /// Parses a config from JSON text.
    pub fn from_json(text: &str) -> Result<Self, ScoreSdeVeError> {
        let config: Self = serde_json::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ScoreSdeVeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScoreSdeVeError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    fn validate(&self) -> Result<(), ScoreSdeVeError> {
        if let Some(name) = &self.class_name
            && name != "ScoreSdeVeScheduler"
        {
            return Err(ScoreSdeVeError::Invalid(format!(
                "_class_name is `{name}`; this reader takes ScoreSdeVeScheduler (use DiffusersScheduler for the others)"
            )));
        }
        if !(self.sigma_min > 0.0 && self.sigma_max > self.sigma_min) {
            return Err(ScoreSdeVeError::Invalid(format!(
                "need 0 < sigma_min < sigma_max, got {} and {}",
                self.sigma_min, self.sigma_max
            )));
        }
        if !(self.sampling_eps > 0.0 && self.sampling_eps < 1.0) {
            return Err(ScoreSdeVeError::Invalid(format!(
                "sampling_eps must lie in (0, 1), got {}",
                self.sampling_eps
            )));
        }
        Ok(())
    }

    /// The sampler of diffusers' `ScoreSdeVePipeline` with `steps` inference steps
    /// (diffusers sets both the times and the discrete σ table from it).
    pub fn sampler(&self, steps: usize) -> Result<PcSampler, ScoreSdeVeError> {
        if steps < 2 {
            return Err(ScoreSdeVeError::Invalid(format!(
                "need at least 2 steps, got {steps}"
            )));
        }
        Ok(PcSampler {
            sde: Sde::ve(self.sigma_min, self.sigma_max, steps),
            predictor: Predictor::ReverseDiffusion,
            corrector: Corrector::Langevin,
            snr: self.snr,
            corrector_steps: self.correct_steps,
            eps: self.sampling_eps,
            denoise: true,
            probability_flow: false,
            batch_norms: true,
        })
    }
}
