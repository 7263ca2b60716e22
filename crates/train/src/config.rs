//! The configuration of a training run: AdamW with warm-up and a decay schedule, gradient
//! clipping and accumulation, the EMAs to keep, checkpointing and what a non-finite loss does.

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::ema::EmaSchedule;
use crate::error::{Result, TrainError};

/// Configuration of a training run.
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// Number of optimiser steps.
    #[config(default = 2000)]
    pub steps: usize,
    /// AdamW learning rate.
    #[config(default = 1e-3)]
    pub lr: f64,
    /// AdamW decoupled weight decay.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// AdamW β₁.
    #[config(default = 0.9)]
    pub beta1: f64,
    /// AdamW β₂.
    #[config(default = 0.999)]
    pub beta2: f64,
    /// AdamW ε.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Linear warm-up from 0 over this many steps.
    #[config(default = 0)]
    pub warmup_steps: usize,
    /// After warm-up: `constant`, or `cosine` decay to `min_lr_ratio · lr` at the last step.
    #[config(default = "LrDecay::Constant")]
    pub decay: LrDecay,
    /// The floor of the cosine decay, as a fraction of `lr`.
    #[config(default = 0.0)]
    pub min_lr_ratio: f64,
    /// Log the mean loss every this many steps.
    #[config(default = 100)]
    pub log_every: usize,
    /// The seed of the run (model initialisation and every batch).
    #[config(default = 0)]
    pub seed: u64,
    /// Clip the global gradient norm to this value (PyTorch's `clip_grad_norm_`).
    #[config(default = "None")]
    pub grad_clip_norm: Option<f64>,
    /// Micro-batches per optimiser step; their gradients are averaged.
    #[config(default = 1)]
    pub grad_accumulation: usize,
    /// What a NaN or infinite loss does.
    #[config(default = "NanPolicy::Stop")]
    pub nan_policy: NanPolicy,
    /// The EMAs of the weights to keep (the first is the one sampling uses by default).
    #[config(default = "Vec::new()")]
    pub emas: Vec<EmaSpec>,
    /// Write a checkpoint every this many steps (0: only at the end); needs a run folder.
    #[config(default = 0)]
    pub checkpoint_every: usize,
    /// Keep the last this many checkpoints.
    #[config(default = 3)]
    pub keep_checkpoints: usize,
    /// Call the sampling hook every this many steps (0: never).
    #[config(default = 0)]
    pub sample_every: usize,
    /// The precision the loss is computed in; the weights, gradients and optimiser state stay
    /// f32 either way.
    #[config(default = "ComputePrecision::F32")]
    pub compute: ComputePrecision,
}

/// The precision of the forward and backward passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputePrecision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: the loss sees a bf16 copy of the weights, cast on the tape, so the
    /// gradients reach the f32 master weights (the objective should build its inputs in bf16
    /// too: [`ComputePrecision::dtype`]). Where the device computes in bf16 (flex, CUDA).
    Bf16,
}

impl ComputePrecision {
    /// The dtype the objective's inputs should have.
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Self::F32 => burn::tensor::DType::F32,
            Self::Bf16 => burn::tensor::DType::BF16,
        }
    }
}

/// What a NaN or infinite loss does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NanPolicy {
    /// Stop with an error naming the step and the last good checkpoint.
    #[default]
    Stop,
    /// Skip the optimiser step (the weights stay as they were) and go on.
    Skip,
}

/// A named EMA of the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmaSpec {
    /// Its name, used in file names (`ema-{name}.bpk`).
    pub name: String,
    /// Its decay schedule.
    pub schedule: EmaSchedule,
}

impl TrainConfig {
    /// Checks the values; returns a message naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr = {} must be positive", self.lr));
        }
        if self.log_every == 0 {
            return bad("log_every must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad(format!(
                "betas ({}, {}) must lie in [0, 1)",
                self.beta1, self.beta2
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(format!("min_lr_ratio = {} must lie in [0, 1]", self.min_lr_ratio));
        }
        if self.weight_decay < 0.0 || self.epsilon <= 0.0 {
            return bad("weight_decay must be >= 0 and epsilon > 0".into());
        }
        if self.grad_accumulation == 0 {
            return bad("grad_accumulation must be at least 1".into());
        }
        if let Some(c) = self.grad_clip_norm
            && !(c > 0.0 && c.is_finite())
        {
            return bad(format!("grad_clip_norm = {c} must be positive"));
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints must be at least 1".into());
        }
        let mut names: Vec<&str> = self.emas.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) || names.iter().any(|n| n.is_empty() || n.contains('/')) {
            return bad("EMA names must be distinct, non-empty and contain no '/'".into());
        }
        Ok(())
    }
}

/// How the learning rate decays after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrDecay {
    /// No decay.
    #[default]
    Constant,
    /// Half a cosine period from `lr` down to `min_lr_ratio · lr` (Loshchilov & Hutter 2017).
    Cosine,
}

impl TrainConfig {
    /// The learning rate of step k (0-based): linear warm-up to `lr` over `warmup_steps`,
    /// reaching `lr` at step `warmup_steps − 1`, then the decay.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            LrDecay::Constant => self.lr,
            LrDecay::Cosine => {
                let span = (self.steps - self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let floor = self.lr * self.min_lr_ratio;
                floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let c = TrainConfig::new()
            .with_steps(110)
            .with_lr(1.0)
            .with_warmup_steps(10)
            .with_decay(LrDecay::Cosine)
            .with_min_lr_ratio(0.1);
        assert_eq!(c.lr_at(0), 0.1);
        assert_eq!(c.lr_at(9), 1.0);
        assert_eq!(c.lr_at(10), 1.0);
        assert!((c.lr_at(60) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(109) - 0.1).abs() < 1e-3);
        assert!(c.validate().is_ok());
        assert!(c.clone().with_min_lr_ratio(2.0).validate().is_err());
        assert!(TrainConfig::new().with_steps(0).validate().is_err());
    }
}
