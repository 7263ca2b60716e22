//! A step-based training loop for any objective. The objective is a closure returning the
//! loss of (step, micro-batch), drawing its batch from streams seeded by (seed, step), so a run
//! is reproducible step by step and resumes exactly from a checkpoint.
//!
//! Per step: the micro-batch losses (each divided by their count) are back-propagated and their
//! gradients summed; a non-finite loss stops the run or skips the step; the global gradient
//! norm is clipped if asked; AdamW steps at the scheduled learning rate; every EMA is updated.
//! Every `log_every` steps the mean loss, the last gradient norm and the speed are reported;
//! checkpoints and sample hooks run on their own periods.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use diffusion_kernels::AdamW;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointState, latest_checkpoint, load_checkpoint, save_checkpoint};
use crate::config::{ComputePrecision, NanPolicy, TrainConfig};
use crate::ema::Ema;
use crate::error::{Result, TrainError};
use crate::grad::{accumulate, clip_grad_norm, grad_norm};
use crate::parallel::sharded_gradients;
use crate::progress::Progress;

/// One line of the training log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Steps completed.
    pub step: usize,
    /// The mean loss over the steps since the previous record.
    pub loss: f64,
    /// The learning rate.
    pub lr: f64,
    /// Seconds since the start of the run (of this process).
    pub elapsed_s: f64,
    /// Steps per second since the previous record.
    pub steps_per_s: f64,
    /// The global gradient norm of the last step (before clipping).
    #[serde(default)]
    pub grad_norm: Option<f64>,
}

/// Callbacks of a run.
pub trait TrainHooks<M> {
    /// A log record was written.
    fn on_log(&mut self, _record: &LogRecord) {}

    /// Every `sample_every` steps, with the first EMA (or the online weights off the tape).
    fn on_sample(&mut self, _step: usize, _model: &M) -> std::result::Result<(), String> {
        Ok(())
    }

    /// A checkpoint was written.
    fn on_checkpoint(&mut self, _step: usize, _dir: &Path) {}
}

/// Hooks that do nothing.
pub struct NoHooks;

impl<M> TrainHooks<M> for NoHooks {}

/// The gradients of a micro-batch: `(model, step, micro)` → its loss and the gradients of its
/// share of the step's loss.
type GradsOf<'a, M> = dyn FnMut(&M, usize, usize) -> Result<(f64, GradientsParams)> + 'a;

/// A training run: the online model, its optimiser, its EMAs and where it is.
pub struct Trainer<M: Module> {
    config: TrainConfig,
    model: Option<M>,
    optim: ModuleOptimizer,
    emas: Vec<Ema<M>>,
    step: usize,
    log: Vec<LogRecord>,
    skipped: Vec<usize>,
    run_dir: Option<PathBuf>,
    quiet: bool,
}

/// AdamW with the run's hyper-parameters, computed as PyTorch's `torch.optim.AdamW` (one pass
/// per parameter tensor on flex) with burn's optimiser state and checkpoints
/// (`diffusion_kernels::AdamW`).
fn optimizer(config: &TrainConfig) -> ModuleOptimizer {
    AdamW {
        beta_1: config.beta1,
        beta_2: config.beta2,
        epsilon: config.epsilon,
        weight_decay: config.weight_decay,
    }
    .init()
}

impl<M: Module> Trainer<M> {
    /// A fresh run of `model` (on an autodiff device).
    pub fn new(model: M, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let dtype = config.compute.dtype();
        if let Some(device) = model.devices().first()
            && !device.supports_dtype(dtype)
        {
            return Err(TrainError::Config(format!(
                "compute = {:?}: this device does not compute in {dtype:?}; use f32",
                config.compute
            )));
        }
        let emas = config
            .emas
            .iter()
            .map(|spec| Ema::new(spec.name.clone(), spec.schedule, &model))
            .collect();
        Ok(Self {
            optim: optimizer(&config),
            config,
            model: Some(model),
            emas,
            step: 0,
            log: Vec::new(),
            skipped: Vec::new(),
            run_dir: None,
            quiet: false,
        })
    }

    /// Writes checkpoints, `metrics.jsonl` and `loss.png` into `dir`.
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }

    /// No progress output (files are still written).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Resumes from the latest checkpoint of `run_dir` if there is one (an unreadable or
    /// mismatched checkpoint is an error, never a silent restart), else starts afresh.
    pub fn resume_or_new(model: M, config: TrainConfig, run_dir: impl Into<PathBuf>) -> Result<Self> {
        let run_dir = run_dir.into();
        let fresh = Self::new(model, config)?.with_run_dir(run_dir.clone());
        match latest_checkpoint(&run_dir) {
            None => Ok(fresh),
            Some((_, dir)) => fresh.restore(&dir),
        }
    }

    /// Replaces the state of the run by the checkpoint in `dir`.
    pub fn restore(mut self, dir: &Path) -> Result<Self> {
        let model = self.model.take().expect("a trainer holds its model");
        let restored = load_checkpoint(dir, model, optimizer(&self.config), self.emas, &self.config)?;
        self.model = Some(restored.model);
        self.optim = restored.optim;
        self.emas = restored.emas;
        self.step = restored.state.step;
        self.log = restored.state.log;
        self.skipped = restored.state.skipped;
        Ok(self)
    }

    /// The online model.
    pub fn model(&self) -> &M {
        self.model.as_ref().expect("a trainer holds its model")
    }

    /// The EMAs.
    pub fn emas(&self) -> &[Ema<M>] {
        &self.emas
    }

    /// Steps completed.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The log so far.
    pub fn log(&self) -> &[LogRecord] {
        &self.log
    }

    /// Steps skipped for a non-finite loss.
    pub fn skipped(&self) -> &[usize] {
        &self.skipped
    }

    /// The online model and the EMAs.
    pub fn into_parts(mut self) -> (M, Vec<Ema<M>>, Vec<LogRecord>) {
        (
            self.model.take().expect("a trainer holds its model"),
            self.emas,
            self.log,
        )
    }

    /// The weights sampling uses: the first EMA, or the online weights off the tape.
    pub fn sampling_model(&self) -> M {
        match self.emas.first() {
            Some(ema) => ema.model.clone(),
            None => self.model().valid(),
        }
    }

    /// Writes a checkpoint of the current state (needs a run folder).
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let dir = self
            .run_dir
            .as_ref()
            .ok_or_else(|| TrainError::Config("checkpoints need a run folder (with_run_dir)".into()))?;
        let state = CheckpointState {
            step: self.step,
            config: serde_json::to_value(&self.config).map_err(|e| TrainError::Config(e.to_string()))?,
            log: self.log.clone(),
            skipped: self.skipped.clone(),
        };
        save_checkpoint(
            dir,
            self.model(),
            &self.optim,
            &self.emas,
            &state,
            self.config.keep_checkpoints,
        )
    }

    /// Runs until `config.steps` steps are done. `loss(model, step, micro)` returns the mean
    /// loss of micro-batch `micro` of step `step` (both 0-based).
    pub fn run(
        &mut self,
        mut loss: impl FnMut(&M, usize, usize) -> Tensor<1>,
        hooks: &mut dyn TrainHooks<M>,
    ) -> Result<()> {
        let precision = self.config.compute;
        let weight = 1.0 / self.config.grad_accumulation as f64;
        let devices = self.model().devices();
        self.run_with(
            &devices,
            &mut |model, step, micro| {
                // The weights the loss sees: the f32 masters, or their bf16 copy on the tape.
                let compute = match precision {
                    ComputePrecision::F32 => None,
                    ComputePrecision::Bf16 => Some(cast_copy(model, precision.dtype())),
                };
                let l = loss(compute.as_ref().unwrap_or(model), step, micro);
                let value = l.clone().detach().into_scalar::<f64>();
                Ok((
                    value,
                    GradientsParams::from_grads(l.mul_scalar(weight).backward(), model),
                ))
            },
            hooks,
        )
    }

    /// Runs until `config.steps` steps are done, each micro-batch split over `devices` (data
    /// parallelism; the model lives on the first). `shards(step, micro)` prepares the
    /// micro-batch as one equal-sized shard per device, on the host; `loss(replica, shard,
    /// device)` returns the mean loss of a shard computed on `device` (autodiff). The step is
    /// the single-device step on the whole micro-batch: see [`sharded_gradients`].
    pub fn run_data_parallel<S: Send>(
        &mut self,
        devices: &[Device],
        mut shards: impl FnMut(usize, usize) -> Vec<S>,
        loss: impl Fn(&M, S, &Device) -> Tensor<1> + Sync,
        hooks: &mut dyn TrainHooks<M>,
    ) -> Result<()>
    where
        M: Send,
    {
        if devices.is_empty() {
            return Err(TrainError::Config(
                "data parallelism needs at least one device".into(),
            ));
        }
        let precision = self.config.compute;
        let weight = 1.0 / self.config.grad_accumulation as f64;
        self.run_with(
            devices,
            &mut |model, step, micro| {
                let parts = shards(step, micro);
                if parts.len() != devices.len() {
                    return Err(TrainError::Config(format!(
                        "{} shards for {} devices: give one shard per device",
                        parts.len(),
                        devices.len()
                    )));
                }
                Ok(sharded_gradients(model, devices, parts, precision, weight, &loss))
            },
            hooks,
        )
    }

    /// The training loop: `grads_of(model, step, micro)` returns the loss of a micro-batch and
    /// the gradients of its share of the step's loss (already divided by the accumulation);
    /// `devices` (the model's, and the data-parallel workers') have their generators re-seeded
    /// before every micro-batch.
    fn run_with(
        &mut self,
        devices: &[Device],
        grads_of: &mut GradsOf<'_, M>,
        hooks: &mut dyn TrainHooks<M>,
    ) -> Result<()> {
        let config = self.config.clone();
        let progress = Progress::new(config.steps, self.step, self.run_dir.as_deref(), self.quiet);
        progress.restart_log(&self.log);
        let start = Instant::now();
        let (mut window_loss, mut window_steps, mut last_time) = (0.0, 0usize, 0.0);
        let mut last_norm = None;
        let mut last_checkpoint: Option<PathBuf> = None;
        while self.step < config.steps {
            let step = self.step;
            let lr = config.lr_at(step);
            let model = self.model.take().expect("a trainer holds its model");
            let mut grads = GradientsParams::new();
            let mut step_loss = 0.0;
            let k = config.grad_accumulation;
            for micro in 0..k {
                seed_device_generator(devices, config.seed, (step * k + micro) as u64);
                let (value, g) = match grads_of(&model, step, micro) {
                    Ok(result) => result,
                    Err(e) => {
                        self.model = Some(model);
                        progress.finish();
                        return Err(e);
                    }
                };
                step_loss += value / k as f64;
                accumulate(&mut grads, g, &model);
            }
            if !step_loss.is_finite() {
                match config.nan_policy {
                    NanPolicy::Stop => {
                        self.model = Some(model);
                        progress.finish();
                        return Err(TrainError::NonFiniteLoss {
                            step: step + 1,
                            value: step_loss,
                            last_checkpoint: last_checkpoint.or_else(|| {
                                self.run_dir
                                    .as_deref()
                                    .and_then(latest_checkpoint)
                                    .map(|(_, p)| p)
                            }),
                        });
                    }
                    NanPolicy::Skip => {
                        progress.say(&format!("step {}: loss {step_loss}; step skipped", step + 1));
                        self.skipped.push(step + 1);
                        self.model = Some(model);
                        self.step += 1;
                        progress.tick();
                        continue;
                    }
                }
            }
            let log_now = (step + 1).is_multiple_of(config.log_every) || step + 1 == config.steps;
            if let Some(max) = config.grad_clip_norm {
                last_norm = Some(clip_grad_norm(&mut grads, &model, max));
            } else if log_now {
                last_norm = Some(grad_norm(&mut grads, &model));
            }
            let model = self.optim.step(lr, model, grads);
            for ema in &mut self.emas {
                ema.update(&model, step);
            }
            self.model = Some(model);
            self.step += 1;
            progress.tick();
            window_loss += step_loss;
            window_steps += 1;
            if log_now {
                let elapsed = start.elapsed().as_secs_f64();
                let record = LogRecord {
                    step: self.step,
                    loss: window_loss / window_steps as f64,
                    lr,
                    elapsed_s: elapsed,
                    steps_per_s: window_steps as f64 / (elapsed - last_time).max(1e-9),
                    grad_norm: last_norm,
                };
                self.log.push(record.clone());
                progress.record(&record, &self.log);
                hooks.on_log(&record);
                (window_loss, window_steps, last_time) = (0.0, 0, elapsed);
            }
            if config.sample_every > 0 && self.step.is_multiple_of(config.sample_every) {
                let m = self.sampling_model();
                hooks
                    .on_sample(self.step, &m)
                    .map_err(|e| TrainError::Hook(format!("sampling at step {}: {e}", self.step)))?;
            }
            let periodic = config.checkpoint_every > 0 && self.step.is_multiple_of(config.checkpoint_every);
            if self.run_dir.is_some() && (periodic || self.step == config.steps) {
                let dir = self.save_checkpoint()?;
                hooks.on_checkpoint(self.step, &dir);
                last_checkpoint = Some(dir);
            }
        }
        progress.finish();
        Ok(())
    }
}

/// Re-seeds the backend generators of `devices` from (seed, stream) before a micro-batch, where
/// stream = step · accumulation + micro. Everything we draw comes from per-sample host
/// streams; only burn's `Dropout` draws its masks from the backend's global generator, so
/// without this a resumed run would continue that generator from another state and drop other
/// units than the run it resumes. (Data-parallel workers that share one backend draw from it
/// concurrently, so their masks agree with a single-device run only in distribution.)
fn seed_device_generator(devices: &[Device], seed: u64, stream: u64) {
    use diffusion_core::noise::{sample_rng, uniform};
    let value = uniform(&mut sample_rng(seed ^ DROPOUT_STREAM, stream)).to_bits();
    for device in devices {
        device.seed(value);
    }
}

/// The key that separates the dropout seeds from the data streams of the same run seed.
const DROPOUT_STREAM: u64 = 0xd809_0a7e_5eed;

/// A copy of `model` with every float parameter cast to `dtype` as an operation on the tape
/// (same parameter ids): gradients of a loss computed with it flow back to the originals.
pub fn cast_copy<M: Module>(model: &M, dtype: burn::tensor::DType) -> M {
    struct Cast(burn::tensor::DType);
    impl burn::module::ModuleMapper for Cast {
        fn map_float<const D: usize>(
            &mut self,
            p: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let dtype = self.0;
            p.map(|t| t.cast(dtype))
        }
    }
    model.clone().map(&mut Cast(dtype))
}

/// Runs `config.steps` AdamW steps on `model` (on an autodiff device) without checkpoints or
/// EMAs: `loss(model, k)` returns the loss of step k. Returns the model and the log.
pub fn train<M: Module>(
    model: M,
    config: &TrainConfig,
    mut loss: impl FnMut(&M, usize) -> Tensor<1>,
    mut on_log: impl FnMut(&LogRecord),
) -> Result<(M, Vec<LogRecord>)> {
    struct Log<'a>(&'a mut dyn FnMut(&LogRecord));
    impl<M> TrainHooks<M> for Log<'_> {
        fn on_log(&mut self, record: &LogRecord) {
            (self.0)(record)
        }
    }
    let mut trainer = Trainer::new(model, config.clone())?.quiet(true);
    trainer.run(|m, step, _| loss(m, step), &mut Log(&mut on_log))?;
    let (model, _, log) = trainer.into_parts();
    Ok((model, log))
}
