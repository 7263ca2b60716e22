//! Exponential moving averages of the weights, θ̄ ← β θ̄ + (1 − β) θ after every optimiser step,
//! with the decay β of step k from one of the schedules diffusion models use:
//!
//! - constant β (DDPM: 0.9999);
//! - warm-up: β = 1 − (1 + k/γ)^(−p), clamped to [β_min, β_max] (k-diffusion's `EMAWarmup`,
//!   diffusers' `EMAModel` with `use_ema_warmup`; p = 2/3 suits runs of ~1M steps, 3/4 shorter);
//! - EDM's half-life: β = 0.5^(B / h) with h the half-life in images, optionally ramped up as
//!   h = min(h, ρ · images seen) (Karras et al. 2022, Appendix F.3).
//!
//! The EMA copies live off the autodiff tape (a `valid()` copy keeps the parameters' ids), so
//! they never record operations; several can run at once.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// How the decay of an EMA evolves with the step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EmaSchedule {
    /// β fixed.
    Constant {
        /// β.
        decay: f64,
    },
    /// β = 1 − (1 + k/γ)^(−p) clamped to [min, max], k = max(0, step − `start_at`).
    Warmup {
        /// γ (1).
        inv_gamma: f64,
        /// p (2/3 or 3/4).
        power: f64,
        /// β_min (0).
        min_decay: f64,
        /// β_max (0.9999).
        max_decay: f64,
        /// Steps before the warm-up starts.
        start_at: usize,
    },
    /// β = 0.5^(batch/h), h = half-life in images, ramped as min(h, ρ · images seen).
    HalfLife {
        /// The half-life in images (EDM: 500 000).
        half_life_images: f64,
        /// ρ of the ramp-up (EDM: 0.05), or none.
        rampup_ratio: Option<f64>,
        /// Images per optimiser step.
        batch_size: usize,
    },
}

impl EmaSchedule {
    /// The decay applied after step `step` (0-based; the update after the first optimiser step
    /// uses step 0).
    pub fn decay(&self, step: usize) -> f64 {
        match *self {
            Self::Constant { decay } => decay,
            Self::Warmup {
                inv_gamma,
                power,
                min_decay,
                max_decay,
                start_at,
            } => {
                let k = step.saturating_sub(start_at) as f64;
                let value = 1.0 - (1.0 + k / inv_gamma).powf(-power);
                value.clamp(min_decay, max_decay)
            }
            Self::HalfLife {
                half_life_images,
                rampup_ratio,
                batch_size,
            } => {
                // Images seen before this step, as EDM counts them when it updates the EMA.
                let seen = (step * batch_size) as f64;
                let h = match rampup_ratio {
                    Some(r) => half_life_images.min(seen * r),
                    None => half_life_images,
                };
                0.5f64.powf(batch_size as f64 / h.max(1e-8))
            }
        }
    }
}

/// An EMA of a model's weights.
#[derive(Clone, Debug)]
pub struct Ema<M> {
    /// Its name (for files and logs), e.g. `ema-0.9999`.
    pub name: String,
    /// The schedule of its decay.
    pub schedule: EmaSchedule,
    /// The averaged model, off the tape.
    pub model: M,
}

/// The online weights by parameter id, flattened and off the tape.
struct Collect(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().without_autodiff();
        let n = value.shape().num_elements();
        self.0.insert(param.id, value.reshape([n]));
    }
}

struct Update {
    online: HashMap<ParamId, Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Update {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(source) = self.online.remove(&param.id) else {
            return param;
        };
        let decay = self.decay;
        param.map(|ema| {
            let shape = ema.shape();
            diffusion_kernels::ema_update(ema, source.reshape(shape), decay)
        })
    }
}

impl<M: Module> Ema<M> {
    /// An EMA starting from `model` (its `valid()` copy: the same parameter ids, off the tape).
    pub fn new(name: impl Into<String>, schedule: EmaSchedule, model: &M) -> Self {
        Self {
            name: name.into(),
            schedule,
            model: model.valid(),
        }
    }

    /// θ̄ ← β θ̄ + (1 − β) θ with the decay of `step`.
    pub fn update(&mut self, online: &M, step: usize) {
        let mut collect = Collect(HashMap::new());
        online.visit(&mut collect);
        // The online model's copy holds the place while the average is mapped, so that the
        // average's tensors are its own and update in place.
        let model = std::mem::replace(&mut self.model, online.valid());
        self.model = model.map(&mut Update {
            online: collect.0,
            decay: self.schedule.decay(step),
        });
    }
}
