//! The image pipeline shared by `shapes` and the `cifar-*` experiments: data, a U-Net or DiT,
//! the family's objective (`family`: DDPM's L_simple or hybrid loss, EDM, flow matching, NCSN,
//! score SDEs), the training loop with EMA, checkpoints, resume and sample grids, then
//! evaluation (samples from seeded per-sample streams, FID with pytorch-fid's Inception network
//! when its weights are given, bits/dim on test images: the DDPM bound or the
//! probability-flow likelihood).
//!
//! Every random draw of step k is a function of (seed, k): batch order and flips (the
//! loader), timesteps, noise and a class-conditional model's label dropout (per-sample streams
//! indexed by the sample's position in the training stream). So `--resume RUN_DIR` continues
//! exactly, and a run with `--smoke` runs the whole pipeline on small generated data in the
//! real file format in seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use clap::Parser;
use diffusion_backbones::unet::{DownBlockKind, UpBlockKind};
use diffusion_backbones::{Backbone, Conditioning, Model, ModelConfig, drop_labels, preset};
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::npy::NpyArray;
use diffusion_core::tensor::to_f64;
use diffusion_data::cifar::cifar10_remote;
use diffusion_data::{DataLoader, ImageSet, LoaderConfig, Split};
use diffusion_ddpm::{ForwardProcess, ModelVariance, Prediction, Vlb};
use diffusion_flow::{HutchinsonVelocityDivergence, VelocityModel, flow_log_likelihood};
use diffusion_metrics::frechet::{FeatureStats, frechet_distance};
use diffusion_metrics::inception::{FEATURES, InceptionV3};
use diffusion_samplers::{Dopri5, Probe, batched_cfg};
use diffusion_schedules::DiscreteSchedule;
use diffusion_train::{ComputePrecision, EmaSchedule, EmaSpec, LrDecay, SampleGrid, TrainConfig, Trainer};
use serde::{Deserialize, Serialize};

use crate::family::{FLOW_TIME_SCALE, Family, ScoreObjective, initial_noise};
use crate::{CommonArgs, Result, Run, RunError};

/// The options of an image experiment.
#[derive(Parser, Debug, Clone)]
pub struct ImageArgs {
    /// Backend, output folder, configuration overrides, seed.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Run the whole pipeline (data in the real format, a few steps, checkpoint, resume,
    /// sampling, metrics) on tiny settings in seconds.
    #[arg(long)]
    pub smoke: bool,
    /// Continue the run in this folder from its latest checkpoint (its config.toml is used;
    /// `--set train.steps=N` extends it).
    #[arg(long, conflicts_with_all = ["out", "config"])]
    pub resume: Option<PathBuf>,
}

/// The configuration of an image experiment (`experiments/configs/*.toml`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ImageConfig {
    /// The seed of the run (initialisation, data order, noise).
    pub seed: u64,
    /// The data set.
    pub data: DataSection,
    /// The network.
    pub model: ModelSection,
    /// The diffusion process and objective.
    pub diffusion: DiffusionSection,
    /// Optimisation.
    pub train: TrainSection,
    /// Sampling.
    pub sample: SampleSection,
    /// Evaluation.
    pub eval: EvalSection,
    /// EDM's settings (`diffusion.loss = edm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edm: Option<crate::family::EdmSection>,
    /// Score models' settings (`diffusion.loss = ncsn | sde-ve | sde-vp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<crate::family::ScoreSection>,
    /// Reflow rounds after training (flow matching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reflow: Option<crate::reflow::ReflowSection>,
}

/// One device's share of a micro-batch, on the host.
struct Shard {
    /// Images, row-major `[per, C·H·W]`.
    pixels: Vec<f32>,
    /// Their labels.
    labels: Vec<u32>,
    /// The training-stream position of the first.
    first: u64,
}

/// `[data]`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DataSection {
    /// `cifar10`, `shapes` or `folder`.
    pub name: String,
    /// Where the files are (or are downloaded to).
    pub root: String,
    /// Images of `shapes` to generate for training (its test set has a tenth as many).
    pub size: usize,
    /// Image side (`folder`: the resize target; others are 32).
    pub image_size: usize,
    /// Random horizontal flips.
    pub hflip: bool,
}

/// `[model]`: a named architecture, optionally narrowed.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ModelSection {
    /// A preset (`ddpm-cifar10`, `adm-cifar10`, …).
    pub preset: String,
    /// Dropout.
    pub dropout: f64,
    /// Channels per level (replaces the preset's; with `attention`).
    #[serde(default)]
    pub channels: Option<Vec<usize>>,
    /// Self-attention per level.
    #[serde(default)]
    pub attention: Option<Vec<bool>>,
    /// Residual blocks per level.
    #[serde(default)]
    pub layers_per_block: Option<usize>,
    /// Group-norm groups.
    #[serde(default)]
    pub norm_num_groups: Option<usize>,
    /// Condition the network on the data set's labels (a DiT always is, a U-Net when `true`):
    /// the U-Net's class table gets one row more than there are classes, the null label of
    /// classifier-free guidance.
    #[serde(default)]
    pub class_conditional: Option<bool>,
    /// A class-conditional model: the probability of training with the null label
    /// (classifier-free guidance, Ho & Salimans 2022; 0.1 when absent). Unconditional models
    /// ignore it.
    #[serde(default)]
    pub class_dropout: Option<f64>,
}

/// `[diffusion]`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DiffusionSection {
    /// `linear` or `cosine`.
    pub schedule: String,
    /// T.
    pub num_train_timesteps: usize,
    /// β₁ of the linear schedule.
    pub beta_start: f64,
    /// β_T of the linear schedule.
    pub beta_end: f64,
    /// `simple` (L_simple, ε, fixed Σ), `hybrid` (Improved DDPM: learned-range Σ, λ = 0.001),
    /// `edm` (Karras et al.'s preconditioning and σ distribution, `[edm]`), `cfm` or `ot-cfm`
    /// (flow matching, independent or minibatch-OT pairs); see [`crate::family`].
    pub loss: String,
    /// The DDPM family's loss weighting over timesteps: `uniform` (L_simple), `snr`,
    /// `min-snr-γ` (Hang et al. 2023, e.g. `min-snr-5`) or `p2` (Choi et al. 2022, γ = k = 1).
    #[serde(default = "uniform")]
    pub weighting: String,
}

fn uniform() -> String {
    "uniform".into()
}

/// `[train]`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TrainSection {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam(W) learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// `constant` or `cosine`.
    pub decay: LrDecay,
    /// Global gradient-norm clip (0: none).
    pub grad_clip_norm: f64,
    /// Micro-batches per step.
    pub grad_accumulation: usize,
    /// EMA decay (its maximum with a warm-up).
    pub ema_decay: f64,
    /// 0: a constant decay; p > 0: k-diffusion's warm-up β = 1 − (1 + k)^(−p) up to `ema_decay`
    /// (short runs: the average then forgets the initial weights).
    pub ema_warmup_power: f64,
    /// Log every N steps.
    pub log_every: usize,
    /// Checkpoint every N steps.
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Write a sample grid every N steps (0: never).
    pub sample_every: usize,
    /// `f32`, or `bf16` mixed precision (bf16 passes, f32 master weights) where the device has it.
    pub precision: ComputePrecision,
}

/// `[sample]`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SampleSection {
    /// DDPM family: `ddpm` (ancestral) or `ddim`; others: any `diffusion sample` sampler
    /// (`heun`, `ode-euler`, `ode-dopri5`, …).
    pub sampler: String,
    /// Inference steps.
    pub steps: usize,
    /// DDIM's η.
    pub eta: f64,
    /// Images in a grid.
    pub grid_size: usize,
    /// Inference steps of the grids written during training.
    pub grid_steps: usize,
    /// Class-conditional models: the classifier-free guidance scale w (1: the conditional model).
    #[serde(default)]
    pub guidance_scale: Option<f64>,
}

/// `[eval]`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct EvalSection {
    /// Samples drawn after training (seeds 0..N of the sampling stream).
    pub num_samples: usize,
    /// Images per sampling batch.
    pub batch_size: usize,
    /// pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (empty: no FID).
    pub inception_weights: String,
    /// Reference statistics (.npz); empty: computed from the training images.
    pub fid_reference: String,
    /// Test images whose full bound (bits/dim) is evaluated (0: none).
    pub bpd_images: usize,
    /// The tolerance (rtol = atol) of the adaptive ODE solvers: `ode-dopri5` sampling and the
    /// ODE likelihoods (score_sde and torchcfm's FID evaluation: 1e-5).
    #[serde(default = "default_ode_tolerance")]
    pub ode_tolerance: f64,
}

fn default_ode_tolerance() -> f64 {
    1e-5
}

/// The settings `--smoke` replaces, as `--set` items.
pub const SMOKE: &[&str] = &[
    "data.size=24",
    "model.channels=[16, 32]",
    "model.attention=[false, true]",
    "model.layers_per_block=1",
    "model.norm_num_groups=8",
    "diffusion.num_train_timesteps=20",
    "train.steps=4",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.sample_every=2",
    "sample.steps=4",
    "sample.grid_size=4",
    "sample.grid_steps=2",
    "eval.num_samples=6",
    "eval.batch_size=4",
    "eval.bpd_images=2",
    "eval.ode_tolerance=1e-2",
];

fn fail(e: impl std::fmt::Display) -> RunError {
    RunError::Failed(e.to_string())
}

/// The run's arguments with `--resume` and `--smoke` resolved.
fn resolve_args(args: &ImageArgs) -> CommonArgs {
    let mut common = args.common.clone();
    if let Some(dir) = &args.resume {
        common.config = Some(dir.join("config.toml"));
        common.out = Some(dir.clone());
    }
    if args.smoke && args.resume.is_none() {
        let mut smoke: Vec<String> = SMOKE.iter().map(|s| s.to_string()).collect();
        smoke.extend(common.overrides);
        common.overrides = smoke;
    }
    common
}

/// Writes `set` as CIFAR-10 binary batches (the real format) under `root`, for smoke runs.
fn write_cifar_like(root: &Path, train: &ImageSet, test: &ImageSet) -> Result<()> {
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let records = |set: &ImageSet, range: std::ops::Range<usize>| {
        range
            .flat_map(|i| std::iter::once(set.labels[i] as u8).chain(set.image(i).iter().copied()))
            .collect::<Vec<u8>>()
    };
    let per = train.len().div_ceil(5);
    for b in 0..5 {
        let range = (b * per).min(train.len())..((b + 1) * per).min(train.len());
        std::fs::write(
            dir.join(format!("data_batch_{}.bin", b + 1)),
            records(train, range),
        )
        .map_err(fail)?;
    }
    std::fs::write(dir.join("test_batch.bin"), records(test, 0..test.len())).map_err(fail)
}

/// The training and test images.
fn load_data(cfg: &ImageConfig, smoke: bool, run_dir: &Path) -> Result<(ImageSet, ImageSet)> {
    let d = &cfg.data;
    let shapes =
        |offset: u64, n: usize| diffusion_data::shapes(cfg.seed ^ 0x5ba9e5 ^ offset, 0..n as u64, 32);
    match d.name.as_str() {
        "shapes" => Ok((shapes(0, d.size), shapes(1, (d.size / 10).max(2)))),
        "cifar10" => {
            let root = if smoke {
                // Generated images in the CIFAR binary format, read by the real loader.
                let root = run_dir.join("smoke-data");
                write_cifar_like(&root, &shapes(0, d.size), &shapes(1, 4))?;
                root
            } else {
                PathBuf::from(&d.root)
            };
            let remote = cifar10_remote();
            Ok((
                diffusion_data::load_cifar10(&root, Split::Train, &remote).map_err(fail)?,
                diffusion_data::load_cifar10(&root, Split::Test, &remote).map_err(fail)?,
            ))
        }
        "folder" => {
            let set =
                diffusion_data::load_image_folder(Path::new(&d.root), d.image_size as u32).map_err(fail)?;
            let test = set.select(&(0..set.len().min(16)).collect::<Vec<_>>());
            Ok((set, test))
        }
        other => Err(RunError::Config(format!(
            "data.name = `{other}`: expected cifar10, shapes or folder"
        ))),
    }
}

/// The network of `[model]` for images of `shape`.
fn model_config(
    cfg: &ImageConfig,
    shape: [usize; 3],
    output_factor: usize,
    classes: usize,
    smoke: bool,
) -> Result<ModelConfig> {
    let m = &cfg.model;
    // The null label must be trained: guidance and the likelihoods use it.
    if let Some(p) = m.class_dropout
        && !(p > 0.0 && p < 1.0)
    {
        return Err(RunError::Config(format!(
            "model.class_dropout must lie in (0, 1), got {p}: guidance and bits/dim use the \
             null label, which it trains"
        )));
    }
    if let Some(w) = cfg.sample.guidance_scale
        && !(w >= 0.0 && w.is_finite())
    {
        return Err(RunError::Config(format!(
            "sample.guidance_scale must be finite and ≥ 0 (1: no guidance), got {w}"
        )));
    }
    let mut config = preset(&m.preset).map_err(fail)?;
    match &mut config {
        ModelConfig::Unet(u) => {
            u.dropout = m.dropout;
            u.seed = cfg.seed;
            u.sample_size = shape[1];
            u.in_channels = shape[0];
            u.out_channels = shape[0] * output_factor;
            if let Some(channels) = &m.channels {
                let attention = m.attention.clone().unwrap_or_else(|| vec![false; channels.len()]);
                if attention.len() != channels.len() {
                    return Err(RunError::Config(
                        "model.attention needs one entry per level of model.channels".into(),
                    ));
                }
                // A narrowed network keeps whole heads of at most its narrowest width.
                let narrowest = channels.iter().copied().min();
                if let (diffusion_backbones::unet::Heads::Width(w), Some(c)) = (u.heads, narrowest)
                    && c < w
                {
                    u.heads = diffusion_backbones::unet::Heads::Width(c);
                }
                u.block_out_channels = channels.clone();
                u.down_blocks = attention
                    .iter()
                    .map(|&a| {
                        if a {
                            DownBlockKind::Attn
                        } else {
                            DownBlockKind::Plain
                        }
                    })
                    .collect();
                u.up_blocks = attention
                    .iter()
                    .rev()
                    .map(|&a| if a { UpBlockKind::Attn } else { UpBlockKind::Plain })
                    .collect();
            }
            if let Some(l) = m.layers_per_block {
                u.layers_per_block = l;
            }
            // The class table is ours (the classes and the null label) or none: a preset's
            // own table (ADM ImageNet's 1000 classes) does not fit this data set.
            u.num_class_embeds = None;
            if m.class_conditional == Some(true) {
                if classes < 2 {
                    return Err(RunError::Config(format!(
                        "model.class_conditional needs a labelled data set: `{}` has {classes} \
                         class(es) (a `folder` data set is labelled by one subfolder per class)",
                        cfg.data.name
                    )));
                }
                u.num_class_embeds = Some(classes + 1);
            }
            if let Some(g) = m.norm_num_groups {
                u.norm_num_groups = g;
                if u.attn_norm_num_groups.is_some() {
                    u.attn_norm_num_groups = Some(g);
                }
            }
            u.validate()
                .map_err(|e| RunError::Config(format!("model: {e}")))?;
        }
        ModelConfig::Dit(d) => {
            if m.class_conditional == Some(false) {
                return Err(RunError::Config(format!(
                    "model.preset = `{}` is a class-conditional DiT: set model.class_conditional = true",
                    m.preset
                )));
            }
            d.seed = cfg.seed;
            d.input_size = shape[1];
            d.in_channels = shape[0];
            d.out_channels = shape[0] * output_factor;
            d.num_classes = classes;
            d.class_dropout_prob = m.class_dropout.unwrap_or(0.1);
            if smoke {
                // A DiT with 2 blocks of width 64 (`[model]`'s U-Net keys do not apply).
                (d.depth, d.hidden_size, d.num_heads) = (2, 64, 2);
            }
            d.validate()
                .map_err(|e| RunError::Config(format!("model: {e}")))?;
        }
        ModelConfig::Mlp(_) => {
            return Err(RunError::Config(format!(
                "model.preset = `{}`: the image pipeline trains U-Nets and DiTs",
                m.preset
            )));
        }
    }
    Ok(config)
}

fn schedule(cfg: &DiffusionSection) -> Result<DiscreteSchedule> {
    match cfg.schedule.as_str() {
        "linear" => {
            DiscreteSchedule::linear(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end).map_err(fail)
        }
        "cosine" => DiscreteSchedule::cosine(cfg.num_train_timesteps).map_err(fail),
        other => Err(RunError::Config(format!(
            "diffusion.schedule = `{other}`: expected linear or cosine"
        ))),
    }
}

/// Images `[n, C·H·W]` of `range` of the sampling streams, drawn with `steps` steps of the
/// configured sampler (for DDPM, x̂₀ clipped to [−1, 1] at every step, as Ho et al.'s sampler
/// and diffusers' `clip_sample`), clipped to [−1, 1].
fn draw(
    model: &Model,
    cfg: &ImageConfig,
    family: &Family,
    steps: usize,
    range: std::ops::Range<u64>,
    device: &Device,
) -> Result<Tensor<2>> {
    let features: usize = model.sample_shape().iter().product();
    let sampler = family.sampler(&cfg.sample.sampler, steps, cfg.sample.eta, cfg.eval.ode_tolerance)?;
    let x = initial_noise(sampler.as_ref(), cfg.seed, range.clone(), features, device);
    Ok(draw_from(model, cfg, family, steps, range, x)?.clamp(-1.0, 1.0))
}

/// The configured sampler's output from the initial noise `x` of samples `range` (unclipped).
pub(crate) fn draw_from(
    model: &Model,
    cfg: &ImageConfig,
    family: &Family,
    steps: usize,
    range: std::ops::Range<u64>,
    x: Tensor<2>,
) -> Result<Tensor<2>> {
    let features: usize = model.sample_shape().iter().product();
    let device = x.device();
    let sampler = family.sampler(&cfg.sample.sampler, steps, cfg.sample.eta, cfg.eval.ode_tolerance)?;
    let mut noise = SampleNoise::range(cfg.seed ^ 0x5a3b_1e00, range.clone());
    // A class-conditional model draws sample i of class i mod C, with classifier-free guidance
    // (w = 1: the conditional model alone, without the unconditional half).
    let net: Box<dyn Fn(Tensor<2>, Tensor<1>) -> Tensor<2> + '_> = match null_class(model) {
        Some(null) => {
            let labels: Vec<i64> = range.map(|i| (i % null as u64) as i64).collect();
            let n = labels.len();
            let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &device);
            let conditional = move |x: Tensor<2>, t: Tensor<1>, l: Tensor<1, Int>| {
                let cond = Conditioning {
                    class_labels: Some(l),
                    context: None,
                };
                model.forward_flat(x, t, &cond)
            };
            match cfg.sample.guidance_scale.unwrap_or(1.0) {
                1.0 => Box::new(move |x, t| conditional(x, t, labels.clone())),
                scale => Box::new(batched_cfg(conditional, labels, null, scale, features)),
            }
        }
        None => Box::new(unconditional(model)),
    };
    let denoiser = family.denoiser(&net);
    let out = sampler.sample(denoiser.as_ref(), x, &mut noise).map_err(fail)?;
    Ok(out.x)
}

/// The null label of a class-conditional model: the last row of its class table, which
/// classifier-free guidance trains as "no class" (a DiT's `num_classes`; the `classes + 1`-th
/// row of a U-Net of `model.class_conditional`). `None` for an unconditional model.
pub(crate) fn null_class(model: &Model) -> Option<i64> {
    match model {
        Model::Dit(dit) => Some(dit.null_class() as i64),
        Model::Unet(unet) => unet
            .class_embedding
            .as_ref()
            .map(|table| table.weight.dims()[0] as i64 - 1),
        Model::Mlp(_) => None,
    }
}

/// The model's prediction with every sample given the null label: the unconditional model
/// of a class-conditional one (the model itself for an unconditional one), which the
/// likelihoods evaluate.
pub(crate) fn unconditional(model: &Model) -> impl Fn(Tensor<2>, Tensor<1>) -> Tensor<2> + '_ {
    let null = null_class(model);
    move |x: Tensor<2>, t: Tensor<1>| {
        let n = x.dims()[0];
        let cond = Conditioning {
            class_labels: null.map(|k| Tensor::<1, Int>::full([n], k, &x.device())),
            context: None,
        };
        model.forward_flat(x, t, &cond)
    }
}

/// Writes the EMA weights as a model folder (`RUN/model`: model.json, model.safetensors and,
/// for the DDPM family, a diffusers DDPMScheduler config, which `diffusion sample --model`
/// reads).
fn export_model(
    run_dir: &Path,
    cfg: &ImageConfig,
    family: &Family,
    config: &ModelConfig,
    model: &Model,
) -> Result<()> {
    let dir = run_dir.join("model");
    diffusion_backbones::save_folder(
        &dir,
        config,
        model,
        diffusion_backbones::WeightFormat::Safetensors,
    )
    .map_err(fail)?;
    if family.schedule().is_none() {
        return Ok(());
    }
    let d = &cfg.diffusion;
    let scheduler = serde_json::json!({
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": d.num_train_timesteps,
        "beta_schedule": if d.schedule == "cosine" { "squaredcos_cap_v2" } else { "linear" },
        "beta_start": d.beta_start,
        "beta_end": d.beta_end,
        "prediction_type": "epsilon",
        "variance_type": if d.loss == "hybrid" { "learned_range" } else { "fixed_small" },
        "clip_sample": true,
    });
    let text = serde_json::to_string_pretty(&scheduler).map_err(fail)?;
    diffusion_core::fs::write_atomic(&dir.join("scheduler_config.json"), text.as_bytes()).map_err(fail)
}

/// The mean full variational bound (bits/dim) of the 8-bit images `pixels` (Ho et al. 2020,
/// §4.3: L_0 … L_T with the discretised decoder); a class-conditional model is evaluated as
/// its unconditional model (the null label).
fn bound_bits_per_dim(
    model: &Model,
    schedule: &DiscreteSchedule,
    pixels: &[u8],
    seed: u64,
    device: &Device,
) -> Result<f64> {
    let features: usize = model.sample_shape().iter().product();
    let m = pixels.len() / features;
    let variance = if model.output_factor() == 2 {
        ModelVariance::LearnedRange
    } else {
        ModelVariance::FixedLarge
    };
    let vlb = Vlb::new(
        ForwardProcess::new(schedule.clone()),
        Prediction::Epsilon,
        variance,
    );
    let values: Vec<f32> = pixels
        .iter()
        .map(|&b| diffusion_data::images::to_signed_unit(b))
        .collect();
    let x0 = Tensor::<2>::from_data(TensorData::new(values, [m, features]), (device, DType::F32));
    let report = vlb
        .evaluate(unconditional(model), x0, |t| {
            SampleNoise::range(seed ^ 0xb9d0 ^ ((t as u64) << 20), 0..m as u64).normal_tensor(
                m,
                features,
                device,
                DType::F32,
            )
        })
        .map_err(fail)?;
    Ok(to_f64(&report.total).iter().sum::<f64>() / m as f64)
}

/// The mean bits/dim of the 8-bit images `pixels` under the model's ODE: uniformly
/// dequantised, log p by the instantaneous change of variables with Hutchinson's trace
/// (Rademacher probes) and RK45 at `eval.ode_tolerance` (1e-5 in score_sde's likelihood, App. D of Song
/// et al. 2021). For a score SDE the ODE is its probability flow from t = ε; for a flow it is
/// dx/dt = v(x, t) from the data at t = 1 to N(0, I) at t = 0 (Lipman et al. 2023, App. C).
/// `model` lives on an autodiff device (the divergence is a reverse pass); a class-conditional
/// model is evaluated unconditionally (the null label).
fn ode_bits_per_dim(
    model: &Model,
    family: &Family,
    pixels: &[u8],
    features: usize,
    seed: u64,
    tolerance: f64,
) -> Result<f64> {
    use diffusion_score::{Divergence, Likelihood, Quantization, bits_per_dim, dequantize};
    let m = pixels.len() / features;
    let levels: Vec<f64> = pixels.iter().map(|&b| f64::from(b)).collect();
    let mut noise = SampleNoise::range(seed ^ 0xde0a, 0..m as u64);
    let values = dequantize(&levels, &noise.uniform(features), Quantization::default());
    let device = model.devices().first().cloned().unwrap_or_default();
    let x = diffusion_core::tensor::from_f64(values, [m, features], &device, DType::F32);
    let net = unconditional(model);
    let solver = Dopri5 {
        rtol: tolerance,
        atol: tolerance,
        ..Dopri5::default()
    };
    let log_prob = match family {
        Family::Score {
            objective: ScoreObjective::Sde(sde),
            ..
        } => {
            let denoiser = family.denoiser(&net);
            Likelihood {
                solver,
                ..Likelihood::new(sde.clone())
            }
            .evaluate_denoiser(
                denoiser.as_ref(),
                x,
                Divergence::Hutchinson(Probe::Rademacher),
                &mut noise,
            )
            .map_err(fail)?
            .log_prob
        }
        Family::Flow(_) => flow_log_prob(&net, x, &mut noise, &solver)?,
        _ => {
            return Err(RunError::Config(
                "bits/dim by an ODE: a score SDE or a flow".into(),
            ));
        }
    };
    let bpd: f64 = log_prob
        .iter()
        .map(|&lp| bits_per_dim(lp, features, Quantization::default()))
        .sum();
    Ok(bpd / m as f64)
}

/// log p(x) in nats of data `x` under the flow of the velocity network `net` (which sees
/// t ∈ [0, 1] scaled by [`FLOW_TIME_SCALE`]): the ODE from the data at t = 1 back to N(0, I)
/// at t = 0 with Hutchinson's trace (Rademacher probes from `noise`).
fn flow_log_prob(
    net: crate::family::Net<'_>,
    x: Tensor<2>,
    noise: &mut dyn diffusion_core::noise::NoiseSource,
    solver: &Dopri5,
) -> Result<Vec<f64>> {
    let field = VelocityModel(|x, t: Tensor<1>| net(x, t.mul_scalar(FLOW_TIME_SCALE)));
    let probe = Probe::Rademacher.draw(noise, &x);
    let divergence = HutchinsonVelocityDivergence { field: &field, probe };
    Ok(flow_log_likelihood(&divergence, x, 1.0, solver)
        .map_err(fail)?
        .log_prob)
}

/// What an image run reports.
#[derive(Serialize)]
struct Metrics {
    experiment: String,
    steps: usize,
    final_loss: f64,
    train_seconds: f64,
    sampler: String,
    sample_steps: usize,
    /// The classifier-free guidance scale of a class-conditional model's samples (`None`:
    /// an unconditional model).
    guidance_scale: Option<f64>,
    num_samples: usize,
    sample_seconds: f64,
    fid: Option<f64>,
    fid_reference: Option<String>,
    bits_per_dim: Option<f64>,
    bpd_images: usize,
    backend: String,
    reflow: Vec<crate::reflow::ReflowReport>,
}

/// The trainer's settings of `[train]`, with `steps` steps at learning rate `lr`.
pub(crate) fn train_config(cfg: &ImageConfig, steps: usize, lr: f64) -> TrainConfig {
    let t = &cfg.train;
    TrainConfig::new()
        .with_steps(steps)
        .with_lr(lr)
        .with_warmup_steps(t.warmup_steps)
        .with_decay(t.decay)
        .with_log_every(t.log_every)
        .with_seed(cfg.seed)
        .with_grad_clip_norm((t.grad_clip_norm > 0.0).then_some(t.grad_clip_norm))
        .with_grad_accumulation(t.grad_accumulation.max(1))
        .with_emas(vec![EmaSpec {
            name: format!("{}", t.ema_decay),
            schedule: if t.ema_warmup_power > 0.0 {
                EmaSchedule::Warmup {
                    inv_gamma: 1.0,
                    power: t.ema_warmup_power,
                    min_decay: 0.0,
                    max_decay: t.ema_decay,
                    start_at: 0,
                }
            } else {
                EmaSchedule::Constant { decay: t.ema_decay }
            },
        }])
        .with_checkpoint_every(t.checkpoint_every)
        .with_keep_checkpoints(t.keep_checkpoints)
        .with_sample_every(t.sample_every)
        .with_compute(t.precision)
}

/// The `main` of image experiment `name` (`about`: its one-line description for `--help`, its
/// committed configuration `config`): parses the options, runs, and exits with status 2 and
/// one error line on failure.
pub fn image_main(name: &'static str, about: &'static str, config: &str) {
    use clap::{Args, Command, FromArgMatches};
    diffusion_kernels::keep_freed_memory();
    let matches = ImageArgs::augment_args(Command::new(name))
        .about(about)
        .get_matches();
    let args = ImageArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    crate::exit_on_error(run_image(name, config, &args));
}

/// Runs an image experiment: `name`, its committed configuration, the parsed options.
pub fn run_image(name: &str, default_config: &str, args: &ImageArgs) -> Result<()> {
    let common = resolve_args(args);
    let run: Run<ImageConfig> = Run::start(name, default_config, &common)?;
    let cfg = run.config.clone();
    let device = run.device.clone();
    // A resumed smoke run finds its generated data in its folder.
    let smoke = args.smoke || run.dir().join("smoke-data").exists();
    let (train_set, test_set) = load_data(&cfg, smoke, run.dir())?;
    let shape = train_set.shape;
    run.say(format!(
        "{}: {} training images of {:?}, {} test",
        train_set.name,
        train_set.len(),
        shape,
        test_set.len()
    ));

    let family = Family::new(
        &cfg.diffusion.loss,
        schedule(&cfg.diffusion)?,
        cfg.edm.as_ref(),
        cfg.score.as_ref(),
    )?
    .with_weighting(&cfg.diffusion.weighting)?;
    // Checked before training, so that a typo never surfaces at the first sample grid.
    let tolerance = cfg.eval.ode_tolerance;
    if !(tolerance > 0.0 && tolerance.is_finite()) {
        return Err(RunError::Config(format!(
            "eval.ode_tolerance must be positive, got {tolerance}"
        )));
    }
    for steps in [cfg.sample.steps, cfg.sample.grid_steps] {
        family.sampler(&cfg.sample.sampler, steps, cfg.sample.eta, tolerance)?;
    }
    crate::reflow::validate(cfg.reflow.as_ref(), &family, tolerance)?;
    let classes = train_set.num_classes();
    let model_cfg = model_config(&cfg, shape, family.output_factor(), classes, smoke)?;
    let ad = device.clone().autodiff();
    let model = model_cfg.init(&ad);
    // A class-conditional model's label dropout: (probability, its null label), the null label
    // being the one sampling and the likelihoods use.
    let label_dropout = null_class(&model).map(|null| {
        let p = match &model_cfg {
            ModelConfig::Dit(d) => d.class_dropout_prob,
            _ => cfg.model.class_dropout.unwrap_or(0.1),
        };
        (p, null)
    });
    if label_dropout.is_some() && cfg.reflow.as_ref().is_some_and(|r| r.rounds > 0) {
        return Err(RunError::Config(
            "reflow.rounds > 0 needs an unconditional flow: set model.class_conditional = false \
             or reflow.rounds = 0 (a DiT is always class-conditional)"
                .into(),
        ));
    }
    run.say(format!(
        "{}{} with {} parameters",
        cfg.model.preset,
        if label_dropout.is_some() {
            format!(", conditioned on {classes} classes")
        } else {
            String::new()
        },
        model.num_params()
    ));

    let t = &cfg.train;
    let k = t.grad_accumulation.max(1);
    if !t.batch_size.is_multiple_of(k) {
        return Err(RunError::Config(
            "train.batch_size must be a multiple of train.grad_accumulation".into(),
        ));
    }
    let micro = t.batch_size / k;
    if !micro.is_multiple_of(run.devices.len()) {
        return Err(RunError::Config(format!(
            "--devices: the micro-batch of {micro} (train.batch_size / train.grad_accumulation) \
             does not split evenly over {} devices",
            run.devices.len()
        )));
    }
    let train_cfg = train_config(&cfg, t.steps, t.lr);
    let compute_dtype = t.precision.dtype();
    let mut trainer = Trainer::resume_or_new(model, train_cfg, run.dir()).map_err(fail)?;
    if trainer.step() > 0 {
        run.say(format!("resumed at step {}", trainer.step()));
    }

    // Batches of micro-batch index s = step·k + micro, prepared on a background thread.
    let loader = DataLoader::new(
        Arc::new(train_set),
        LoaderConfig {
            batch_size: micro,
            seed: cfg.seed,
            shuffle: true,
            hflip: cfg.data.hflip,
            prefetch: 4,
        },
    )
    .map_err(fail)?;
    let mut stream = loader.stream(trainer.step() * k);
    let features = shape.iter().product::<usize>();
    let start = Instant::now();
    let grid_cfg = cfg.clone();
    let grid_device = device.clone();
    let mut grid = SampleGrid::new(
        run.dir(),
        (cfg.sample.grid_size as f64).sqrt().ceil() as usize,
        |m: &Model| {
            let n = grid_cfg.sample.grid_size as u64;
            draw(
                m,
                &grid_cfg,
                &family,
                grid_cfg.sample.grid_steps,
                0..n,
                &grid_device,
            )
            .map(|x| x.reshape([n as usize, shape[0], shape[1], shape[2]]))
            .unwrap_or_else(|e| panic!("sampling a grid: {e}"))
        },
    );
    // Each micro-batch is split evenly over the devices; shard d holds examples
    // first + d·per … of the training stream, so every example's noise and label dropout are
    // the same however many devices share the batch.
    let per = micro / run.devices.len();
    let shards = |step: usize, j: usize| -> Vec<Shard> {
        let index = step * k + j;
        let batch = stream.next().expect("the loader never ends");
        assert_eq!(batch.step, index, "batches arrive in order");
        (0..run.devices.len())
            .map(|d| Shard {
                pixels: batch.pixels[d * per * features..(d + 1) * per * features].to_vec(),
                labels: batch.labels[d * per..(d + 1) * per].to_vec(),
                first: (index * micro + d * per) as u64,
            })
            .collect()
    };
    let shard_loss = |m: &Model, shard: Shard, ad: &Device| {
        let x0 = Tensor::<2>::from_data(
            TensorData::new(shard.pixels, [per, features]),
            (ad, compute_dtype),
        );
        let positions = shard.first..shard.first + per as u64;
        // A class-conditional model sees each label, or the null label with the dropout
        // probability (a uniform per example of the training stream).
        let cond = match label_dropout {
            Some((p, null)) => {
                let labels: Vec<i64> = shard.labels.iter().map(|&l| l as i64).collect();
                let u = SampleNoise::range(cfg.seed ^ 0xc1a5, positions.clone()).uniform(1);
                let kept = drop_labels(&labels, &u, p, null);
                Conditioning {
                    class_labels: Some(Tensor::from_data(TensorData::new(kept, [per]), ad)),
                    context: None,
                }
            }
            None => Conditioning::default(),
        };
        family.loss(&|x, t| m.forward_flat(x, t, &cond), x0, positions, cfg.seed)
    };
    trainer
        .run_data_parallel(&run.devices, shards, shard_loss, &mut grid)
        .map_err(fail)?;
    drop(grid);
    let train_seconds = start.elapsed().as_secs_f64();
    let final_loss = trainer.log().last().map_or(f64::NAN, |r| r.loss);
    let mut device_model = trainer.sampling_model();
    let mut reflows: Vec<crate::reflow::ReflowReport> = Vec::new();
    for round in 1..=cfg.reflow.as_ref().map_or(0, |r| r.rounds) {
        let base_steps = reflows.last().map_or(trainer.step(), |r| r.steps);
        let (next, report) = crate::reflow::reflow_round(&run, &device_model, base_steps, &family, round)?;
        device_model = next;
        reflows.push(report);
    }
    export_model(run.dir(), &cfg, &family, &model_cfg, &device_model)?;

    // Samples from seeds 0..N of the sampling streams, in batches (each sample's noise is its own).
    let e = &cfg.eval;
    let start = Instant::now();
    let mut samples = Vec::with_capacity(e.num_samples * features);
    for lo in (0..e.num_samples).step_by(e.batch_size.max(1)) {
        let hi = (lo + e.batch_size.max(1)).min(e.num_samples);
        let x = draw(
            &device_model,
            &cfg,
            &family,
            cfg.sample.steps,
            lo as u64..hi as u64,
            &device,
        )?;
        samples.extend(to_f64(&x));
        run.say(format!("sampled {hi}/{}", e.num_samples));
    }
    let sample_seconds = start.elapsed().as_secs_f64();
    let n = e.num_samples;
    NpyArray::from_f64(vec![n, shape[0], shape[1], shape[2]], samples.clone())
        .and_then(|a| a.write(run.path("samples.npy")))
        .map_err(fail)?;
    let shown = n.min(64);
    diffusion_viz::image_grid(
        &run.path("samples.png"),
        &samples[..shown * features],
        [shown, shape[0], shape[1], shape[2]],
        (shown as f64).sqrt().ceil() as usize,
    )
    .map_err(fail)?;

    // FID with pytorch-fid's network, when its weights are given.
    let (fid, fid_reference) = if e.inception_weights.is_empty() {
        run.say("no eval.inception_weights: FID skipped (give pytorch-fid's pt_inception-2015-12-05-6726825d.pth)");
        (None, None)
    } else {
        let net = InceptionV3::load(&device, Path::new(&e.inception_weights)).map_err(fail)?;
        let stats_of = |images: &[f64]| -> Result<FeatureStats> {
            let mut pool3 = Vec::new();
            for chunk in images.chunks(e.batch_size.max(1) * features) {
                let m = chunk.len() / features;
                let values: Vec<f32> = chunk.iter().map(|v| ((v + 1.0) / 2.0) as f32).collect();
                let x = Tensor::<4>::from_data(
                    TensorData::new(values, [m, shape[0], shape[1], shape[2]]),
                    (&device, DType::F32),
                );
                pool3.extend(to_f64(&net.forward(x).pool3));
            }
            FeatureStats::from_features(&pool3, FEATURES).map_err(fail)
        };
        let (reference, label) = if e.fid_reference.is_empty() {
            let set = loader.set();
            let pixels: Vec<f64> = set.pixels.iter().map(|&b| b as f64 / 127.5 - 1.0).collect();
            let stats = stats_of(&pixels)?;
            stats.write_npz(&run.path("reference-stats.npz")).map_err(fail)?;
            (stats, format!("{} training images", set.len()))
        } else {
            (
                FeatureStats::read_npz(Path::new(&e.fid_reference)).map_err(fail)?,
                e.fid_reference.clone(),
            )
        };
        let stats = stats_of(&samples)?;
        (
            Some(frechet_distance(&stats, &reference).map_err(fail)?),
            Some(label),
        )
    };

    // Bits/dim of test images with the EMA weights: the full variational bound (DDPM), or the
    // probability-flow ODE's exact likelihood (score SDEs).
    let m = e.bpd_images.min(test_set.len());
    let test_pixels = &test_set.pixels[..m * features];
    let bits_per_dim = match (&family, m > 0) {
        (Family::Ddpm { schedule, .. }, true) => Some(bound_bits_per_dim(
            &device_model,
            schedule,
            test_pixels,
            cfg.seed,
            &device,
        )?),
        (
            Family::Score {
                objective: ScoreObjective::Sde(_),
                ..
            }
            | Family::Flow(_),
            true,
        ) => {
            let model = device_model.fork(&device.clone().autodiff());
            Some(ode_bits_per_dim(
                &model,
                &family,
                test_pixels,
                features,
                cfg.seed,
                e.ode_tolerance,
            )?)
        }
        (_, true) => {
            run.say("eval.bpd_images: bits/dim are computed for DDPM, score SDEs and flows; skipped");
            None
        }
        (_, false) => None,
    };

    let metrics = Metrics {
        experiment: name.to_string(),
        steps: trainer.step(),
        final_loss,
        train_seconds,
        sampler: cfg.sample.sampler.clone(),
        sample_steps: cfg.sample.steps,
        guidance_scale: label_dropout.map(|_| cfg.sample.guidance_scale.unwrap_or(1.0)),
        num_samples: n,
        sample_seconds,
        fid,
        fid_reference,
        bits_per_dim,
        bpd_images: m,
        backend: match &common.devices {
            Some(list) => list
                .specs(&common.backend)
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(","),
            None => common.backend.to_string(),
        },
        reflow: reflows,
    };
    run.write_json("metrics.json", &metrics)?;
    run.say(format!(
        "loss {final_loss:.4}; FID {}; {}; wrote {}",
        fid.map_or("skipped".into(), |f| format!("{f:.2}")),
        bits_per_dim.map_or("no bound".into(), |b| format!(
            "{b:.3} bits/dim on {m} test images"
        )),
        run.dir().display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flow likelihood of the pipeline, with the network replaced by the exact velocity of
    /// the straight path from N(0, I) to data N(0, s² I): v(x, t) = (t s² − (1 − t)) x / (t² s² +
    /// (1 − t)²), seen through the network's time scale. The divergence is a multiple of the
    /// identity, so Hutchinson's estimate is exact and log p must equal log N(x; 0, s² I).
    #[test]
    fn flow_bits_come_from_the_data_end_of_the_flow() {
        let device = diffusion_core::DeviceSpec::from_env(diffusion_core::device::BACKEND_ENV)
            .and_then(|spec| spec.open())
            .expect("the test backend opens")
            .autodiff();
        let (s, n, d) = (0.5_f64, 4, 6);
        let values: Vec<f64> = (0..n * d).map(|i| 0.3 * ((i as f64) * 0.7).sin()).collect();
        let x = diffusion_core::tensor::from_f64(values.clone(), [n, d], &device, DType::F32);
        let net = |x: Tensor<2>, tau: Tensor<1>| {
            let t = tau.div_scalar(FLOW_TIME_SCALE).reshape([n, 1]);
            let one_minus = t.clone().neg().add_scalar(1.0);
            let num = t.clone().mul_scalar(s * s) - one_minus.clone();
            let var = t.square().mul_scalar(s * s) + one_minus.square();
            x * (num / var)
        };
        let solver = Dopri5 {
            rtol: 1e-6,
            atol: 1e-6,
            ..Dopri5::default()
        };
        let mut noise = SampleNoise::range(7, 0..n as u64);
        let log_prob = flow_log_prob(&net, x, &mut noise, &solver).unwrap();
        for (i, lp) in log_prob.iter().enumerate() {
            let sq: f64 = values[i * d..(i + 1) * d].iter().map(|v| v * v).sum();
            let exact = -0.5 * d as f64 * (2.0 * std::f64::consts::PI * s * s).ln() - sq / (2.0 * s * s);
            assert!((lp - exact).abs() < 1e-3, "sample {i}: {lp} vs {exact}");
        }
    }

    /// A class-conditional U-Net's unconditional model is the network at the null label (the
    /// last row of its class table), not the network without a class embedding.
    #[test]
    fn the_unconditional_model_sees_the_null_label() {
        let device = diffusion_core::DeviceSpec::from_env(diffusion_core::device::BACKEND_ENV)
            .and_then(|spec| spec.open())
            .expect("the test backend opens");
        let mut cfg: ImageConfig = toml::from_str(include_str!("../configs/shapes.toml")).unwrap();
        cfg.model.class_conditional = Some(true);
        let model = model_config(&cfg, [3, 16, 16], 1, 3, false)
            .unwrap()
            .init(&device);
        assert_eq!(null_class(&model), Some(3));
        let x = SampleNoise::range(3, 0..2).normal_tensor(2, 3 * 16 * 16, &device, DType::F32);
        let t = Tensor::<1>::from_floats([0.1, -0.4], &device);
        let at = |label: Option<i64>| {
            let cond = Conditioning {
                class_labels: label.map(|k| Tensor::<1, Int>::full([2], k, &device)),
                context: None,
            };
            to_f64(&model.forward_flat(x.clone(), t.clone(), &cond))
        };
        let unconditional = to_f64(&unconditional(&model)(x.clone(), t.clone()));
        assert_eq!(unconditional, at(Some(3)));
        let differs = unconditional
            .iter()
            .zip(at(Some(0)))
            .any(|(a, b)| (a - b).abs() > 1e-4);
        assert!(differs, "label 0 gives the null label's output");
        // Without labels the class-conditional U-Net refuses to run (as diffusers' does).
        let Model::Unet(unet) = &model else {
            panic!("a U-Net")
        };
        let image = x.clone().reshape([2, 3, 16, 16]);
        let refused = unet.check(&image, &t, &Conditioning::default());
        assert!(refused.unwrap_err().to_string().contains("class-conditional"));
        cfg.model.class_conditional = Some(false);
        let plain = model_config(&cfg, [3, 16, 16], 1, 3, false)
            .unwrap()
            .init(&device);
        assert_eq!(null_class(&plain), None);
        // A preset's own class table (ADM ImageNet's 1000 classes) is not kept: its rows
        // would not be this data set's classes, nor its last row a trained null label.
        cfg.model.preset = "adm-imagenet64".into();
        for (conditional, table) in [(false, None), (true, Some(4))] {
            cfg.model.class_conditional = Some(conditional);
            let ModelConfig::Unet(u) = model_config(&cfg, [3, 16, 16], 1, 3, false).unwrap() else {
                panic!("adm-imagenet64 is a U-Net")
            };
            assert_eq!(u.num_class_embeds, table);
        }
    }
}
