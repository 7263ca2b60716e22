//! A step-based training loop for any objective: the objective is a closure that returns
//! the loss of step `k`, drawing its own batch from a generator seeded by (seed, k), so that
//! a run is reproducible step by step.

use std::time::Instant;

use burn::config::Config;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

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

/// One line of the training log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Steps completed.
    pub step: usize,
    /// The mean loss over the steps since the previous record.
    pub loss: f64,
    /// The learning rate.
    pub lr: f64,
    /// Seconds since the start of the run.
    pub elapsed_s: f64,
    /// Steps per second since the previous record.
    pub steps_per_s: f64,
}

/// Runs `config.steps` AdamW steps on `model`, which must live on an autodiff device.
///
/// `loss(model, k)` returns the scalar loss of step k (0-based). Every `log_every` steps
/// (and at the end) the mean loss is read back, passed to `on_log` and kept in the returned
/// log. A NaN or infinite loss stops the run with [`TrainError::NonFiniteLoss`].
pub fn train<M: Module>(
    mut model: M,
    config: &TrainConfig,
    mut loss: impl FnMut(&M, usize) -> Tensor<1>,
    mut on_log: impl FnMut(&LogRecord),
) -> Result<(M, Vec<LogRecord>)> {
    config.validate()?;
    let mut optim = AdamWConfig::new()
        .with_beta_1(config.beta1 as f32)
        .with_beta_2(config.beta2 as f32)
        .with_epsilon(config.epsilon as f32)
        .with_weight_decay(config.weight_decay as f32)
        .init();
    let start = Instant::now();
    let mut last = (0usize, 0.0f64);
    let mut window: Option<Tensor<1>> = None;
    let mut log = Vec::new();
    for step in 0..config.steps {
        let l = loss(&model, step);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        let detached = l.detach();
        window = Some(match window {
            Some(sum) => sum + detached,
            None => detached,
        });
        let lr = config.lr_at(step);
        model = optim.step(lr, model, grads);
        let done = step + 1;
        if done % config.log_every == 0 || done == config.steps {
            let count = (done - last.0) as f64;
            let sum: f64 = window.take().expect("a loss was added").into_scalar::<f64>();
            let mean = sum / count;
            if !mean.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: done,
                    value: mean,
                });
            }
            let elapsed = start.elapsed().as_secs_f64();
            let record = LogRecord {
                step: done,
                loss: mean,
                lr,
                elapsed_s: elapsed,
                steps_per_s: count / (elapsed - last.1).max(1e-9),
            };
            on_log(&record);
            log.push(record);
            last = (done, elapsed);
        }
    }
    Ok((model, log))
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
