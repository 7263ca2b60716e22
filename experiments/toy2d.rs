//! `toy2d`: trains a DDPM on a 2-D toy distribution and samples from it.
//!
//! Writes into the run folder: `config.toml` (resolved), `loss.csv` and `loss.png`,
//! `samples.npy`, `samples.png` (samples against fresh data) and `metrics.json` (the sliced
//! Wasserstein distance of the samples to fresh data, and of fresh data to fresh data as
//! the floor an exact sampler would reach).

use std::time::Instant;

use burn::module::Module;
use clap::Parser;
use diffusion_backbones::MlpConfig;
use diffusion_core::noise::{NoiseSource, SampleNoise, sample_rng};
use diffusion_core::npy::NpyArray;
use diffusion_core::tensor::{from_f64, to_f64};
use diffusion_data::Toy2d;
use diffusion_ddpm::{ForwardProcess, Prediction, SimpleLoss, UniformTimesteps};
use diffusion_experiments::{CommonArgs, Result, Run, RunError, exit_on_error};
use diffusion_metrics::sliced_wasserstein;
use diffusion_samplers::{Ddim, Ddpm, DiscreteModel, Sampler, successive_steps};
use diffusion_schedules::{DiscreteSchedule, TimestepSpacing, timesteps};
use diffusion_train::{LrDecay, TrainConfig, train};
use diffusion_viz::{Axes, Curve, PALETTE, Points, line_plot, scatter};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Config {
    seed: u64,
    data: DataConfig,
    schedule: ScheduleConfig,
    model: ModelConfig,
    train: TrainSection,
    sample: SampleConfig,
    eval: EvalConfig,
}

#[derive(Serialize, Deserialize, Debug)]
struct DataConfig {
    name: String,
    batch_size: usize,
}

#[derive(Serialize, Deserialize, Debug)]
struct ScheduleConfig {
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
}

#[derive(Serialize, Deserialize, Debug)]
struct ModelConfig {
    hidden: usize,
    blocks: usize,
    time_embed_dim: usize,
}

#[derive(Serialize, Deserialize, Debug)]
struct TrainSection {
    steps: usize,
    lr: f64,
    warmup_steps: usize,
    decay: LrDecay,
    weight_decay: f64,
    log_every: usize,
}

#[derive(Serialize, Deserialize, Debug)]
struct SampleConfig {
    sampler: String,
    steps: usize,
    spacing: String,
    eta: f64,
    num_samples: usize,
}

#[derive(Serialize, Deserialize, Debug)]
struct EvalConfig {
    projections: usize,
    reference_size: usize,
}

#[derive(Serialize)]
struct Metrics {
    dataset: String,
    sampler: String,
    nfe: usize,
    sliced_wasserstein: f64,
    sliced_wasserstein_data_floor: f64,
    final_loss: f64,
    train_seconds: f64,
    sample_seconds: f64,
    backend: String,
    dtype: String,
}

#[derive(Parser)]
#[command(about = "Train a DDPM on a 2-D toy distribution and sample from it")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() {
    let args = Args::parse();
    exit_on_error(run(&args.common));
}

fn run(args: &CommonArgs) -> Result<()> {
    args.one_device("toy2d")?;
    let run: Run<Config> = Run::start("toy2d", include_str!("configs/toy2d.toml"), args)?;
    let cfg = &run.config;
    let fail = |e: &dyn std::fmt::Display| RunError::Failed(e.to_string());
    let toy: Toy2d = cfg.data.name.parse().map_err(|e| fail(&e))?;
    let spacing: TimestepSpacing = cfg.sample.spacing.parse().map_err(|e| fail(&e))?;
    let schedule = DiscreteSchedule::linear(
        cfg.schedule.num_train_timesteps,
        cfg.schedule.beta_start,
        cfg.schedule.beta_end,
    )
    .map_err(|e| fail(&e))?;
    let inference =
        timesteps(cfg.schedule.num_train_timesteps, cfg.sample.steps, spacing, 0).map_err(|e| fail(&e))?;
    run.say(format!(
        "{} on {} ({}, {})",
        cfg.sample.sampler, toy, args.backend, args.dtype
    ));

    // Model, initialised from the run's seed.
    let device = run.device.clone();
    let dtype = device.settings().float_dtype.into();
    let ad = device.clone().autodiff();
    ad.seed(cfg.seed);
    let model = MlpConfig::new(2)
        .with_hidden(cfg.model.hidden)
        .with_blocks(cfg.model.blocks)
        .with_time_embed_dim(cfg.model.time_embed_dim)
        .init(&ad);

    // Training: step k draws its data, timesteps and noise from streams seeded by (seed, k).
    let loss = SimpleLoss::new(ForwardProcess::new(schedule.clone()), Prediction::Epsilon);
    let sampler_t = UniformTimesteps {
        num_timesteps: schedule.len(),
    };
    let b = cfg.data.batch_size;
    let train_cfg = TrainConfig::new()
        .with_steps(cfg.train.steps)
        .with_lr(cfg.train.lr)
        .with_warmup_steps(cfg.train.warmup_steps)
        .with_decay(cfg.train.decay)
        .with_weight_decay(cfg.train.weight_decay)
        .with_log_every(cfg.train.log_every)
        .with_seed(cfg.seed);
    let start = Instant::now();
    let mut csv = String::from("step,loss,lr,elapsed_s,steps_per_s\n");
    let (model, log) = train(
        model,
        &train_cfg,
        |model, step| {
            let k = step as u64;
            let x0 = from_f64(
                toy.sample_host(cfg.seed, k * b as u64..(k + 1) * b as u64),
                [b, 2],
                &ad,
                dtype,
            );
            let mut rng = sample_rng(cfg.seed ^ 0x5eed_0001, k);
            let t = sampler_t.sample(&mut rng, b);
            let noise = SampleNoise::range(cfg.seed ^ 0x5eed_0002, k * b as u64..(k + 1) * b as u64)
                .normal_tensor(b, 2, &ad, dtype);
            loss.loss(|x, t| model.forward(x, t), x0, &t, noise)
                .expect("shapes are consistent by construction")
        },
        |r| {
            csv.push_str(&format!(
                "{},{},{},{:.3},{:.2}\n",
                r.step, r.loss, r.lr, r.elapsed_s, r.steps_per_s
            ));
            run.say(format!(
                "step {:>6}  loss {:.5}  {:.1} steps/s",
                r.step, r.loss, r.steps_per_s
            ));
        },
    )
    .map_err(|e| fail(&e))?;
    let train_seconds = start.elapsed().as_secs_f64();
    run.write_text("loss.csv", &csv)?;
    let steps: Vec<f64> = log.iter().map(|r| r.step as f64).collect();
    let losses: Vec<f64> = log.iter().map(|r| r.loss).collect();
    line_plot(
        &run.path("loss.png"),
        "training loss (L_simple)",
        &[Curve {
            label: "loss",
            x: &steps,
            y: &losses,
            color: PALETTE[0],
        }],
        Axes {
            x_label: "step",
            y_label: "loss",
            log_x: false,
            log_y: true,
        },
        (640, 400),
    )
    .map_err(|e| fail(&e))?;

    // Sampling with the trained network seen as a denoiser, on the plain device.
    let net = model.valid();
    let denoiser = DiscreteModel::new(|x, t| net.forward(x, t), schedule.clone(), Prediction::Epsilon);
    let steps = successive_steps(&schedule, &inference);
    let sampler: Box<dyn Sampler> = match cfg.sample.sampler.as_str() {
        "ddpm" => Box::new(Ddpm::new(steps)),
        "ddim" => Box::new(Ddim::new(steps, cfg.sample.eta)),
        other => {
            return Err(RunError::Config(format!(
                "sample.sampler = `{other}`: expected ddpm or ddim"
            )));
        }
    };
    let n = cfg.sample.num_samples;
    let mut noise = SampleNoise::range(cfg.seed ^ 0x5a3b_1e00, 0..n as u64);
    let start = Instant::now();
    let x_init = noise
        .normal_tensor(n, 2, &device, dtype)
        .mul_scalar(sampler.init_noise_sigma());
    let out = sampler
        .sample(&denoiser, x_init, &mut noise)
        .map_err(|e| fail(&e))?;
    let sample_seconds = start.elapsed().as_secs_f64();
    let samples = to_f64(&out.x);
    NpyArray::from_tensor(&out.x)
        .write(run.path("samples.npy"))
        .map_err(|e| fail(&e))?;

    // Evaluation against fresh data (a seed never used in training).
    let m = cfg.eval.reference_size;
    let fresh = toy.sample_host(cfg.seed ^ 0xe7a1, 0..m as u64);
    let fresh2 = toy.sample_host(cfg.seed ^ 0xe7a2, 0..n as u64);
    let sw = sliced_wasserstein(&samples, &fresh, 2, cfg.eval.projections, 1);
    let floor = sliced_wasserstein(&fresh2, &fresh, 2, cfg.eval.projections, 1);
    scatter(
        &run.path("samples.png"),
        &format!(
            "{toy}: DDPM samples ({}, NFE {}) vs data — SW₂ {sw:.4}",
            cfg.sample.sampler, out.nfe
        ),
        &[
            Points {
                label: "data",
                xy: &fresh,
                color: PALETTE[7],
            },
            Points {
                label: "samples",
                xy: &samples,
                color: PALETTE[0],
            },
        ],
        (640, 640),
        None,
    )
    .map_err(|e| fail(&e))?;
    let metrics = Metrics {
        dataset: toy.to_string(),
        sampler: cfg.sample.sampler.clone(),
        nfe: out.nfe,
        sliced_wasserstein: sw,
        sliced_wasserstein_data_floor: floor,
        final_loss: log.last().map(|r| r.loss).unwrap_or(f64::NAN),
        train_seconds,
        sample_seconds,
        backend: args.backend.to_string(),
        dtype: args.dtype.to_string(),
    };
    run.write_json("metrics.json", &metrics)?;
    run.say(format!(
        "sliced Wasserstein {sw:.4} (fresh data vs fresh data: {floor:.4}); train {train_seconds:.1} s, sample {sample_seconds:.1} s"
    ));
    run.say(format!("wrote {}", run.dir().display()));
    Ok(())
}
