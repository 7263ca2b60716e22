//! `diffusion`: schedules and sampling from the command line.
//!
//! ```text
//! diffusion schedule --scheduler-config scheduler_config.json [--steps N] --json
//! diffusion schedule --sigmas karras:n=10,min=0.002,max=80 --json
//! diffusion sample --oracle gmm.json --init-noise z.npy --out x.npy --sampler dpmpp-2m --steps 20
//! diffusion sample --oracle gmm.json --init-noise z.npy --out x.npy --scheduler-config cfg.json --steps 25
//! diffusion sample --oracle gmm.json --init-noise z.npy --out x.npy --sampler pc --sde vp --steps 500
//! diffusion likelihood --oracle gmm.json --data x.npy --out ll.npy --hutchinson 4
//! ```
//!
//! Every error is one message on stderr and exit status 2; nothing is written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::Tensor;
use clap::{Args, Parser, Subcommand};
use diffusion_cli::{
    CliError, OracleForm, Result, SamplerOptions, default_vp_schedule, final_denoise, oracle_denoiser,
};
use diffusion_core::noise::SampleNoise;
use diffusion_core::npy::NpyArray;
use diffusion_core::tensor::{from_f64_like, to_f64};
use diffusion_core::{DeviceSpec, Precision};
use diffusion_samplers::{
    Churn, DiffusersScheduler, DiscreteModel, FlowConvention, FlowModel, GaussianMixture, ModelForm, Sampler,
    StepOptions, TimestepInterpolation,
};
use diffusion_schedules::GridSpec;
use diffusion_score::{
    Divergence, Likelihood, Probe, Quantization, ScoreSdeVeConfig, Sde, SdeKind, bits_per_dim,
};

#[derive(Parser)]
#[command(
    name = "diffusion",
    version,
    about = "diffusion-lab: noise schedules, samplers and likelihoods from the command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a schedule: a diffusers scheduler's tables and grid, or a σ grid.
    Schedule(ScheduleArgs),
    /// Sample from the Gaussian-mixture oracle or a model folder with any sampler or diffusers
    /// scheduler.
    Sample(Box<SampleArgs>),
    /// Print a model's architecture and exact parameter count: a preset name, a model folder
    /// (ours or diffusers') or a diffusers config.json.
    ModelInfo(ModelInfoArgs),
    /// Exact log-likelihoods of data under the oracle's probability-flow ODE.
    Likelihood(LikelihoodArgs),
    /// FID (and the Inception Score) of image samples with pytorch-fid's Inception network.
    Fid(evaluate::FidArgs),
    /// Throughput: a backbone's training step or forward pass, or each sampler's per-step
    /// overhead (`diffusion bench train --model ddpm-cifar10 --batch 8`).
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct ModelInfoArgs {
    /// A preset (ddpm-cifar10, adm-imagenet64, dit-xl-2, …), a model folder or a config.json.
    model: String,
}

#[derive(Args)]
struct LikelihoodArgs {
    /// The oracle: {"weights": [...], "means": [[...], ...], "stds": [...]}.
    #[arg(long)]
    oracle: PathBuf,
    /// The data [n, d] (.npy, f32 or f64).
    #[arg(long)]
    data: PathBuf,
    /// Where to write log p(x) in nats, [n] (.npy, f64).
    #[arg(long)]
    out: PathBuf,
    /// The SDE whose probability flow is integrated: ve, vp or subvp.
    #[arg(long, default_value = "ve")]
    sde: String,
    /// σ_min of the VE SDE.
    #[arg(long)]
    sigma_min: Option<f64>,
    /// σ_max of the VE SDE.
    #[arg(long)]
    sigma_max: Option<f64>,
    /// The start time ε of the integration.
    #[arg(long, default_value_t = 1e-5)]
    eps: f64,
    /// Relative tolerance of the Dormand–Prince solver.
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// Absolute tolerance of the Dormand–Prince solver.
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// The exact divergence by reverse-mode autodiff (d passes) instead of the oracle's
    /// closed form.
    #[arg(long, conflicts_with = "hutchinson")]
    exact_trace: bool,
    /// Hutchinson's divergence estimate, averaged over N probes per sample.
    #[arg(long)]
    hutchinson: Option<usize>,
    /// The Hutchinson probes: rademacher or gaussian.
    #[arg(long, default_value = "rademacher", requires = "hutchinson")]
    probe: String,
    /// The data are uniformly dequantised B-bit values on [-1, 1]: add the offset of
    /// B - 1 bits to the reported bits/dim.
    #[arg(long)]
    bits: Option<u32>,
    /// The seed of the Hutchinson probes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Precision: f32 or f64.
    #[arg(long, default_value = "f64")]
    dtype: Precision,
    /// Backend: flex, ndarray, wgpu, cuda (optionally with `:index`), as compiled in.
    #[arg(long, default_value = "flex")]
    backend: DeviceSpec,
}

#[derive(Args)]
struct ScheduleArgs {
    /// A diffusers `scheduler_config.json`.
    #[arg(long, conflicts_with = "sigmas")]
    scheduler_config: Option<PathBuf>,
    /// A σ grid: karras:n=,min=,max=,rho= | exponential:n=,min=,max= |
    /// polyexponential:n=,min=,max=,rho= | vp:n=,beta_d=,beta_min=,eps_s= | a comma-separated list.
    #[arg(long)]
    sigmas: Option<String>,
    /// Inference steps (with --scheduler-config: adds timesteps, sigmas, init_noise_sigma).
    #[arg(long)]
    steps: Option<usize>,
    /// Print JSON (the fields diffusers exposes) instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct SampleArgs {
    /// The oracle: {"weights": [...], "means": [[...], ...], "stds": [...]}.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    oracle: Option<PathBuf>,
    /// A model folder: ours (model.json + weights), a diffusers model folder (config.json +
    /// diffusion_pytorch_model.safetensors) or a diffusers pipeline folder (unet/ or
    /// transformer/, and scheduler/scheduler_config.json, which is then used by default).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Standard normal noise [n, features] (.npy, f32 or f64). It is scaled by the sampler's
    /// initial noise level here: σ_max for σ grids, diffusers' init_noise_sigma for its
    /// schedulers. With --model, --num-samples draws it from --seed instead.
    #[arg(long, required_unless_present_any = ["num_samples", "seeds"])]
    init_noise: Option<PathBuf>,
    /// Draw this many samples' noise from --seed (per-sample streams).
    #[arg(long, conflicts_with_all = ["init_noise", "seeds"])]
    num_samples: Option<usize>,
    /// Sample indices A-B (inclusive) of --seed's per-sample streams, e.g. 0-49999: every
    /// sample's noise depends only on its index, so shards combine exactly.
    #[arg(long, conflicts_with = "init_noise")]
    seeds: Option<String>,
    /// Take shard I of N (0-based) of --seeds, e.g. 3/8.
    #[arg(long, requires = "seeds")]
    shard: Option<String>,
    /// Where to write the samples [n, features] (.npy, in --dtype).
    #[arg(long)]
    out: PathBuf,
    /// Also write the samples as a PNG grid (image models).
    #[arg(long)]
    grid: Option<PathBuf>,
    /// The class of every sample (class-conditional models: a U-Net needs one, the last row
    /// of our experiments' U-Nets is the null label; a DiT defaults to its null class).
    #[arg(long)]
    class_label: Option<i64>,
    /// What a model folder's network predicts when no scheduler config says: epsilon, v or sample.
    #[arg(long)]
    prediction: Option<String>,
    /// Precision: f32 or f64 (default f64 for the oracle, f32 for models, which run in f32).
    #[arg(long)]
    dtype: Option<Precision>,
    /// Backend: flex, ndarray, wgpu, cuda (optionally with `:index`), as compiled in.
    #[arg(long, default_value = "flex")]
    backend: DeviceSpec,
    /// A diffusers scheduler_config.json: its class, grid, defaults and model form.
    #[arg(long, conflicts_with = "sampler")]
    scheduler_config: Option<PathBuf>,
    /// A sampler by name (see --help of `diffusion sample`): ddpm, ddim, pndm, euler,
    /// euler-ancestral, heun, dpm2, dpm2-ancestral, lms, dpm-fast, dpm-adaptive,
    /// dpmpp-2s-ancestral, dpmpp-2m, dpmpp-2m-sde, dpmpp-3m-sde, unipc, em, flow-euler,
    /// ode-euler, ode-midpoint, ode-heun, ode-rk4, ode-dopri5, pc, ald.
    #[arg(long)]
    sampler: Option<String>,
    /// The SDE of pc: ve (σ ∈ [--sigma-min, --sigma-max], default [0.01, 50]), vp or subvp
    /// (β ∈ [0.1, 20]).
    #[arg(long)]
    sde: Option<String>,
    /// The predictor of pc: reverse-diffusion, euler-maruyama, ancestral or none.
    #[arg(long)]
    predictor: Option<String>,
    /// The corrector of pc: langevin, ald or none.
    #[arg(long)]
    corrector: Option<String>,
    /// The Langevin corrector's signal-to-noise ratio (pc; 0.16).
    #[arg(long)]
    snr: Option<f64>,
    /// Corrector steps per time (pc; 1) or Langevin steps per noise level (ald; 100).
    #[arg(long)]
    corrector_steps: Option<usize>,
    /// ε of annealed Langevin's step α_i = ε σ_i²/σ_L² (ald; 2e-5).
    #[arg(long)]
    step_lr: Option<f64>,
    /// Inference steps (default: 25 for σ grids, 50 for ddim/pndm, 1000 for ddpm).
    #[arg(long)]
    steps: Option<usize>,
    /// The σ grid (σ-grid samplers; default karras over [--sigma-min, --sigma-max]).
    #[arg(long)]
    sigmas: Option<String>,
    /// Function evaluations (dpm-fast).
    #[arg(long)]
    nfe: Option<usize>,
    /// Smallest σ (default 0.002).
    #[arg(long)]
    sigma_min: Option<f64>,
    /// Largest σ (default 80).
    #[arg(long)]
    sigma_max: Option<f64>,
    /// Relative tolerance (dpm-adaptive, ode-dopri5).
    #[arg(long)]
    rtol: Option<f64>,
    /// Absolute tolerance (dpm-adaptive, ode-dopri5).
    #[arg(long)]
    atol: Option<f64>,
    /// η of DDIM and the ancestral / SDE samplers.
    #[arg(long)]
    eta: Option<f64>,
    /// Solver order (lms, unipc, dpm-adaptive).
    #[arg(long)]
    order: Option<usize>,
    /// midpoint or heun (dpmpp-2m-sde).
    #[arg(long)]
    solver_type: Option<String>,
    /// EDM churn S_churn (euler, heun, dpm2).
    #[arg(long)]
    s_churn: Option<f64>,
    /// EDM S_tmin.
    #[arg(long, requires = "s_churn")]
    s_tmin: Option<f64>,
    /// EDM S_tmax.
    #[arg(long, requires = "s_churn")]
    s_tmax: Option<f64>,
    /// EDM S_noise.
    #[arg(long, requires = "s_churn")]
    s_noise: Option<f64>,
    /// Flow time shift (flow-euler).
    #[arg(long)]
    shift: Option<f64>,
    /// leading, trailing or linspace (ddpm, ddim, pndm).
    #[arg(long)]
    spacing: Option<String>,
    /// LMS order of a diffusers LMSDiscreteScheduler (4).
    #[arg(long)]
    lms_order: Option<usize>,
    /// The seed of the per-sample noise of stochastic samplers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Denoise at the last noise level of samplers that stop above σ = 0 (dpm-fast,
    /// dpm-adaptive, ode-* in VE time).
    #[arg(long)]
    final_denoise: bool,
    /// How the oracle is presented: ve, vp-eps, vp-v or flow (with --sampler; a diffusers
    /// scheduler implies its own). flow: the linear path from noise (t = 0) to data (t = 1);
    /// the ode-* samplers then step on a uniform t grid.
    #[arg(long)]
    oracle_form: Option<String>,
}

mod bench;
mod evaluate;
mod model_sample;

fn main() -> ExitCode {
    diffusion_kernels::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Schedule(args) => schedule(&args),
        Command::Sample(args) => sample(&args),
        Command::Likelihood(args) => likelihood(&args),
        Command::ModelInfo(args) => model_sample::model_info(&args),
        Command::Fid(args) => evaluate::fid(&args),
        Command::Bench(args) => bench::bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn schedule(args: &ScheduleArgs) -> Result<()> {
    let mut out = serde_json::Map::new();
    match (&args.scheduler_config, &args.sigmas) {
        (Some(path), None) => {
            let s = DiffusersScheduler::from_file(path)?;
            out.insert("_class_name".into(), s.class().name().into());
            out.insert("betas".into(), s.betas().into());
            out.insert("alphas_cumprod".into(), s.alphas_cumprod().into());
            if let Some(steps) = args.steps {
                let plan = s.plan(steps, StepOptions::default())?;
                out.insert("timesteps".into(), plan.timesteps.into());
                if let Some(sigmas) = plan.sigmas {
                    out.insert("sigmas".into(), sigmas.into());
                }
                out.insert("init_noise_sigma".into(), plan.init_noise_sigma.into());
            }
        }
        (None, Some(spec)) => {
            if args.steps.is_some() {
                return Err(CliError::Usage(
                    "--steps does not apply to --sigmas (the spec gives n)".into(),
                ));
            }
            let grid = spec.parse::<GridSpec>()?.build()?;
            out.insert("sigmas".into(), grid.sigmas().to_vec().into());
        }
        _ => {
            return Err(CliError::Usage(
                "give --scheduler-config FILE or --sigmas SPEC".into(),
            ));
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Object(out));
    } else {
        for (key, value) in out {
            match value {
                serde_json::Value::Array(a) if a.len() > 8 => {
                    let head: Vec<String> = a[..3].iter().map(|v| v.to_string()).collect();
                    let tail: Vec<String> = a[a.len() - 3..].iter().map(|v| v.to_string()).collect();
                    println!(
                        "{key} ({} values): [{}, …, {}]",
                        a.len(),
                        head.join(", "),
                        tail.join(", ")
                    );
                }
                other => println!("{key}: {other}"),
            }
        }
    }
    Ok(())
}

fn sample(args: &SampleArgs) -> Result<()> {
    if let Some(dir) = &args.model {
        return model_sample::sample(args, dir);
    }
    for (flag, set) in [
        ("--grid", args.grid.is_some()),
        ("--class-label", args.class_label.is_some()),
        ("--prediction", args.prediction.is_some()),
        ("--num-samples", args.num_samples.is_some()),
    ] {
        if set {
            return Err(CliError::Usage(format!(
                "{flag} applies to --model, not to --oracle"
            )));
        }
    }
    let oracle_path = args
        .oracle
        .as_ref()
        .expect("clap requires --oracle without --model");
    let init_noise = args
        .init_noise
        .as_ref()
        .ok_or_else(|| CliError::Usage("--oracle needs --init-noise".into()))?;
    let oracle = GaussianMixture::from_json(oracle_path).map_err(|e| CliError::Input(e.to_string()))?;
    let z = NpyArray::read(init_noise)?;
    if z.shape.len() != 2 || z.shape[1] != oracle.dim() {
        return Err(CliError::Input(format!(
            "{}: expected shape [n, {}] (the oracle's dimension), got {:?}",
            init_noise.display(),
            oracle.dim(),
            z.shape
        )));
    }
    let precision = args.dtype.unwrap_or(Precision::F64);
    let device = args.backend.open_with(precision)?;
    let dtype = precision.dtype();
    let n = z.shape[0];
    let x = z.to_tensor::<2>(&device, Some(dtype))?;
    let mut noise = SampleNoise::range(args.seed, 0..n as u64);
    let form = args
        .oracle_form
        .as_deref()
        .map(str::parse::<OracleForm>)
        .transpose()?;
    let (x, nfe, label) = match (&args.scheduler_config, &args.sampler) {
        (Some(path), None) => {
            for (flag, set) in [
                ("--sigmas", args.sigmas.is_some()),
                ("--nfe", args.nfe.is_some()),
                ("--oracle-form", form.is_some()),
                ("--order", args.order.is_some()),
                ("--s-churn", args.s_churn.is_some()),
                ("--final-denoise", args.final_denoise),
                ("--sde", args.sde.is_some()),
                ("--predictor", args.predictor.is_some()),
                ("--corrector", args.corrector.is_some()),
                ("--snr", args.snr.is_some()),
                ("--corrector-steps", args.corrector_steps.is_some()),
                ("--step-lr", args.step_lr.is_some()),
            ] {
                if set {
                    return Err(CliError::Usage(format!(
                        "{flag} does not apply to --scheduler-config (the scheduler sets it)"
                    )));
                }
            }
            let steps = args
                .steps
                .ok_or_else(|| CliError::Usage("--scheduler-config needs --steps N".into()))?;
            if is_score_sde_ve(path)? {
                let sampler = ScoreSdeVeConfig::from_file(path)?.sampler(steps)?;
                eprintln!(
                    "note: ScoreSdeVeScheduler's Langevin corrector sets its step from norms averaged over the batch, so each sample depends on the rest of its batch (as in diffusers)"
                );
                let x = x.mul_scalar(sampler.init_noise_sigma());
                let out = sampler.sample(&oracle, x, &mut noise)?;
                return finish(&out.x, out.nfe, "ScoreSdeVeScheduler", n, &args.out);
            }
            let scheduler = DiffusersScheduler::from_file(path)?;
            let options = StepOptions {
                eta: args.eta.unwrap_or(0.0),
                lms_order: args.lms_order.unwrap_or(4),
            };
            let plan = scheduler.plan(steps, options)?;
            let x = x.mul_scalar(plan.sampler.init_noise_sigma());
            let schedule = scheduler.schedule().clone();
            let out = match scheduler.model_form()? {
                ModelForm::Discrete(p) => {
                    let model = oracle.discrete_model(&schedule, p, TimestepInterpolation::Sigma);
                    plan.sampler
                        .sample(&DiscreteModel::new(model, schedule.clone(), p), x, &mut noise)?
                }
                ModelForm::Flow => {
                    let t_len = scheduler.num_train_timesteps()? as f64;
                    let model = oracle.velocity_model(FlowConvention::DataToNoise, t_len);
                    plan.sampler.sample(
                        &FlowModel::new(model, FlowConvention::DataToNoise, t_len),
                        x,
                        &mut noise,
                    )?
                }
            };
            (out.x, out.nfe, scheduler.class().name().to_string())
        }
        (None, Some(name)) => {
            let options = sampler_options(args, form)?;
            let built = options.build(name)?;
            let schedule = default_vp_schedule();
            let form = built.implied_form.or(form).unwrap_or(OracleForm::Ve);
            let denoiser = oracle_denoiser(&oracle, form, &schedule);
            let x = x.mul_scalar(built.sampler.init_noise_sigma());
            let out = built.sampler.sample(denoiser.as_ref(), x, &mut noise)?;
            let (x, extra): (Tensor<2>, usize) = if args.final_denoise {
                let used = usize::from(built.final_level.is_some_and(|l| l.sigma > 0.0));
                (final_denoise(denoiser.as_ref(), out.x, built.final_level), used)
            } else {
                (out.x, 0)
            };
            (x, out.nfe + extra, name.clone())
        }
        _ => {
            return Err(CliError::Usage(
                "give --sampler NAME or --scheduler-config FILE".into(),
            ));
        }
    };
    finish(&x, nfe, &label, n, &args.out)
}

/// The named-sampler options of the command line.
pub(crate) fn sampler_options(args: &SampleArgs, form: Option<OracleForm>) -> Result<SamplerOptions> {
    let churn = args.s_churn.map(|s_churn| Churn {
        s_churn,
        s_tmin: args.s_tmin.unwrap_or(0.0),
        s_tmax: args.s_tmax.unwrap_or(f64::INFINITY),
        s_noise: args.s_noise.unwrap_or(1.0),
    });
    if args.lms_order.is_some() {
        return Err(CliError::Usage(
            "--lms-order applies to a diffusers LMS scheduler; use --order".into(),
        ));
    }
    Ok(SamplerOptions {
        sigmas: args.sigmas.clone(),
        steps: args.steps,
        nfe: args.nfe,
        sigma_min: args.sigma_min,
        sigma_max: args.sigma_max,
        rtol: args.rtol,
        atol: args.atol,
        eta: args.eta,
        order: args.order,
        solver_type: args.solver_type.clone(),
        churn,
        shift: args.shift,
        spacing: args.spacing.clone(),
        form,
        sde: args.sde.clone(),
        predictor: args.predictor.clone(),
        corrector: args.corrector.clone(),
        snr: args.snr,
        corrector_steps: args.corrector_steps,
        step_lr: args.step_lr,
    })
}

/// Writes the samples unless any is not finite.
pub(crate) fn finish(x: &Tensor<2>, nfe: usize, label: &str, n: usize, out: &Path) -> Result<()> {
    let array = NpyArray::from_tensor(x);
    if array.to_f64().iter().any(|v| !v.is_finite()) {
        return Err(CliError::Input(format!(
            "{label} produced non-finite samples; nothing written"
        )));
    }
    array.write(out)?;
    eprintln!("{label}: {n} samples, NFE {nfe}, wrote {}", out.display());
    Ok(())
}

/// Whether a scheduler config names diffusers' ScoreSdeVeScheduler.
fn is_score_sde_ve(path: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Input(format!("{} is not JSON: {e}", path.display())))?;
    Ok(value["_class_name"] == "ScoreSdeVeScheduler")
}

fn likelihood(args: &LikelihoodArgs) -> Result<()> {
    let oracle = GaussianMixture::from_json(&args.oracle).map_err(|e| CliError::Input(e.to_string()))?;
    let data = NpyArray::read(&args.data)?;
    let d = oracle.dim();
    if data.shape.len() != 2 || data.shape[1] != d || data.shape[0] == 0 {
        return Err(CliError::Input(format!(
            "{}: expected shape [n, {d}] with n ≥ 1 (the oracle's dimension), got {:?}",
            args.data.display(),
            data.shape
        )));
    }
    let kind: SdeKind = args.sde.parse().map_err(CliError::Usage)?;
    let sde = match kind {
        SdeKind::Ve => Sde::ve(
            args.sigma_min.unwrap_or(0.01),
            args.sigma_max.unwrap_or(50.0),
            1000,
        ),
        _ if args.sigma_min.is_some() || args.sigma_max.is_some() => {
            return Err(CliError::Usage(
                "--sigma-min/--sigma-max set the VE SDE; VP and sub-VP use β ∈ [0.1, 20]".into(),
            ));
        }
        SdeKind::Vp => Sde::vp(0.1, 20.0, 1000),
        SdeKind::SubVp => Sde::subvp(0.1, 20.0, 1000),
    };
    if kind == SdeKind::Ve && !(sde.min > 0.0 && sde.max > sde.min) {
        return Err(CliError::Usage(format!(
            "need 0 < --sigma-min < --sigma-max, got {} and {}",
            sde.min, sde.max
        )));
    }
    let mut likelihood = Likelihood::new(sde);
    likelihood.eps = args.eps;
    likelihood.solver.rtol = args.rtol;
    likelihood.solver.atol = args.atol;
    let device = args.backend.open_with(args.dtype)?;
    let x = data.to_tensor::<2>(&device, Some(args.dtype.dtype()))?;
    let n = data.shape[0];
    let (log_prob, nfe) = match args.hutchinson {
        Some(0) => return Err(CliError::Usage("--hutchinson needs at least 1 probe".into())),
        Some(probes) => {
            let probe: Probe = args.probe.parse().map_err(CliError::Usage)?;
            // Each sample repeated `probes` times, each copy with its own probe; the
            // estimates of one sample are averaged.
            let rows = to_f64(&x);
            let repeated: Vec<f64> = rows.chunks(d).flat_map(|r| r.repeat(probes)).collect();
            let xs = from_f64_like(repeated, [n * probes, d], &x);
            let mut noise = SampleNoise::range(args.seed, 0..(n * probes) as u64);
            let out = likelihood.evaluate_denoiser(&oracle, xs, Divergence::Hutchinson(probe), &mut noise)?;
            let means = out
                .log_prob
                .chunks(probes)
                .map(|c| c.iter().sum::<f64>() / probes as f64)
                .collect();
            (means, out.stats.nfe)
        }
        None if args.exact_trace => {
            let mut noise = SampleNoise::range(args.seed, 0..n as u64);
            let out = likelihood.evaluate_denoiser(&oracle, x, Divergence::Exact, &mut noise)?;
            (out.log_prob, out.stats.nfe)
        }
        None => {
            let out = likelihood.evaluate(&oracle, x)?;
            (out.log_prob, out.stats.nfe)
        }
    };
    if log_prob.iter().any(|v| !v.is_finite()) {
        return Err(CliError::Input(
            "the likelihood is not finite; nothing written".into(),
        ));
    }
    let mean = log_prob.iter().sum::<f64>() / n as f64;
    let quantization = Quantization {
        bits: args.bits.unwrap_or(0),
        centered: true,
    };
    let bpd = if args.bits.is_some() {
        bits_per_dim(mean, d, quantization)
    } else {
        -mean / (d as f64 * std::f64::consts::LN_2)
    };
    NpyArray::from_f64(vec![n], log_prob)?.write(&args.out)?;
    println!("mean log-likelihood {mean:.6} nats, {bpd:.6} bits/dim ({n} samples, NFE {nfe})");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
