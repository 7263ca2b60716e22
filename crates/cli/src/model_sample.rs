//! `diffusion sample --model DIR` and `diffusion model-info`: sampling a network from a model
//! folder (ours or diffusers') with a diffusers scheduler config or any named sampler, and
//! printing architectures with their exact parameter counts.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor};
use diffusion_backbones::diffusers::{DiffusersConfig, parse_config};
use diffusion_backbones::{Backbone, Conditioning, LoadedModel, ModelConfig, load_folder, preset};
use diffusion_cli::{CliError, Result, default_vp_schedule};
use diffusion_core::Precision;
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::npy::NpyArray;
use diffusion_core::tensor::to_f64;
use diffusion_ddpm::Prediction;
use diffusion_samplers::{
    Denoiser, DiffusersScheduler, DiscreteModel, FlowConvention, FlowModel, ModelForm, StepOptions,
};

use crate::{ModelInfoArgs, SampleArgs, finish, sampler_options};

/// The network folder and the scheduler config of a model or pipeline folder.
fn resolve(dir: &Path) -> (PathBuf, Option<PathBuf>) {
    for sub in ["unet", "transformer"] {
        if dir.join(sub).join("config.json").exists() {
            let scheduler = dir.join("scheduler").join("scheduler_config.json");
            return (dir.join(sub), scheduler.exists().then_some(scheduler));
        }
    }
    (dir.to_path_buf(), None)
}

fn load_error(e: impl std::fmt::Display) -> CliError {
    CliError::Input(e.to_string())
}

/// `--class-label` against the model's class table: a class-conditional U-Net needs one of
/// its rows (our experiments' exported U-Nets keep the null label in the last row), a DiT
/// takes a class or its null class (the default), other models take none.
fn check_class_label(config: &ModelConfig, label: Option<i64>) -> Result<()> {
    let (rows, required) = match config {
        ModelConfig::Unet(c) => (c.num_class_embeds, true),
        ModelConfig::Dit(c) => (Some(c.num_classes + 1), false),
        ModelConfig::Mlp(_) => (None, false),
    };
    match (rows, label) {
        (None, Some(_)) => Err(CliError::Usage(
            "--class-label: this model is not class-conditional".into(),
        )),
        (Some(n), None) if required => Err(CliError::Usage(format!(
            "this U-Net is class-conditional: give --class-label K, 0 ≤ K < {n} (the last row \
             is the null label of models trained with classifier-free guidance)"
        ))),
        (Some(n), Some(k)) if !(0..n as i64).contains(&k) => Err(CliError::Usage(format!(
            "--class-label {k}: the model has labels 0 … {}",
            n - 1
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn sample(args: &SampleArgs, dir: &Path) -> Result<()> {
    if args.dtype == Some(Precision::F64) {
        return Err(CliError::Usage("models run in f32: drop --dtype f64".into()));
    }
    let (model_dir, pipeline_scheduler) = resolve(dir);
    let device = args.backend.open_with(Precision::F32)?;
    let LoadedModel { model, config } = load_folder(&model_dir, &device).map_err(load_error)?;
    check_class_label(&config, args.class_label)?;
    let shape = model.sample_shape();
    let features: usize = shape.iter().product();
    let range = match (&args.seeds, args.num_samples) {
        (Some(seeds), _) => Some(crate::evaluate::seed_range(seeds, args.shard.as_deref())?),
        (None, Some(n)) if n > 0 => Some(0..n as u64),
        _ => None,
    };
    let (x, n) = match (&args.init_noise, &range) {
        (Some(path), _) => {
            let z = NpyArray::read(path)?;
            let n = z.shape.first().copied().unwrap_or(0);
            if n == 0 || z.shape.iter().skip(1).product::<usize>() != features {
                return Err(CliError::Input(format!(
                    "{}: expected [n, {features}] or [n, {}], got {:?}",
                    path.display(),
                    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                    z.shape
                )));
            }
            let flat = NpyArray::from_f64(vec![n, features], z.to_f64())?;
            (flat.to_tensor::<2>(&device, Some(Precision::F32.dtype()))?, n)
        }
        (None, Some(range)) => {
            // Sample i's initial noise and its sampler noise are streams i of two seeds.
            let n = (range.end - range.start) as usize;
            let mut noise = SampleNoise::range(args.seed ^ 0x1a17, range.clone());
            (
                noise.normal_tensor(n, features, &device, Precision::F32.dtype()),
                n,
            )
        }
        _ => {
            return Err(CliError::Usage(
                "give --init-noise FILE, --num-samples N (> 0) or --seeds A-B".into(),
            ));
        }
    };
    let cond = Conditioning {
        class_labels: args.class_label.map(|k| Tensor::<1, Int>::full([n], k, &device)),
        context: None,
    };
    let net = |x: Tensor<2>, t: Tensor<1>| model.forward_flat(x, t, &cond);
    let learned_variance = model.output_factor() == 2;
    let mut noise = SampleNoise::range(args.seed, range.unwrap_or(0..n as u64));
    let scheduler_path = args.scheduler_config.clone().or(pipeline_scheduler);
    let (out, label) = match (&scheduler_path, &args.sampler) {
        (Some(_), Some(_)) if args.scheduler_config.is_some() => {
            return Err(CliError::Usage(
                "give --sampler NAME or --scheduler-config FILE, not both".into(),
            ));
        }
        (Some(path), None) => {
            let scheduler = DiffusersScheduler::from_file(path)?;
            let steps = args
                .steps
                .ok_or_else(|| CliError::Usage("a scheduler config needs --steps N".into()))?;
            let options = StepOptions {
                eta: args.eta.unwrap_or(0.0),
                lms_order: args.lms_order.unwrap_or(4),
            };
            let plan = scheduler.plan(steps, options)?;
            let x = x.mul_scalar(plan.sampler.init_noise_sigma());
            let out = match scheduler.model_form()? {
                ModelForm::Discrete(p) => {
                    let mut m = DiscreteModel::new(net, scheduler.schedule().clone(), p);
                    if learned_variance {
                        m = m.with_learned_variance();
                    }
                    plan.sampler.sample(&m, x, &mut noise)?
                }
                ModelForm::Flow => {
                    let t = scheduler.num_train_timesteps()? as f64;
                    plan.sampler.sample(
                        &FlowModel::new(net, FlowConvention::DataToNoise, t),
                        x,
                        &mut noise,
                    )?
                }
            };
            (out, scheduler.class().name().to_string())
        }
        (_, Some(name)) => {
            let built = sampler_options(args, None)?.build(name)?;
            let prediction: Prediction = args
                .prediction
                .as_deref()
                .unwrap_or("epsilon")
                .parse()
                .map_err(|e| CliError::Usage(format!("--prediction: {e}")))?;
            let mut m = DiscreteModel::new(net, default_vp_schedule(), prediction);
            if learned_variance {
                m = m.with_learned_variance();
            }
            let x = x.mul_scalar(built.sampler.init_noise_sigma());
            let mut out = built.sampler.sample(&m, x, &mut noise)?;
            if args.final_denoise
                && let Some(level) = built.final_level.filter(|l| l.sigma > 0.0)
            {
                out.x = m.denoise(out.x, level);
                out.nfe += 1;
            }
            (out, name.clone())
        }
        (None, None) => {
            return Err(CliError::Usage(
                "give --sampler NAME or --scheduler-config FILE (none found in the model folder)".into(),
            ));
        }
    };
    if let Some(grid) = &args.grid {
        if shape.len() != 3 {
            return Err(CliError::Usage(
                "--grid needs an image model ([C, H, W] samples)".into(),
            ));
        }
        let columns = (n as f64).sqrt().ceil() as usize;
        diffusion_viz::image_grid(grid, &to_f64(&out.x), [n, shape[0], shape[1], shape[2]], columns)
            .map_err(|e| CliError::Input(e.to_string()))?;
        eprintln!("wrote {}", grid.display());
    }
    finish(&out.x, out.nfe, &label, n, &args.out)
}

/// Thousands separated by commas.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn model_info(args: &ModelInfoArgs) -> Result<()> {
    let path = Path::new(&args.model);
    let config = if path.is_dir() {
        let (dir, _) = resolve(path);
        let file = if dir.join("model.json").exists() {
            dir.join("model.json")
        } else {
            dir.join("config.json")
        };
        config_of_file(&file)?
    } else if path.is_file() {
        config_of_file(path)?
    } else {
        preset(&args.model).map_err(|e| CliError::Usage(e.to_string()))?
    };
    match &config {
        ModelConfig::Unet(c) => {
            println!(
                "U-Net, {}×{} × {} → {} channels",
                c.sample_size, c.sample_size, c.in_channels, c.out_channels
            );
            let mut size = c.sample_size;
            for (i, (w, kind)) in c.block_out_channels.iter().zip(&c.down_blocks).enumerate() {
                println!(
                    "  level {i}: {size}×{size}, width {w}, {} residual blocks, {kind:?}",
                    c.layers_per_block
                );
                size /= 2;
            }
            println!(
                "  heads {:?}, {} conditioning, class embedding {:?}, cross-attention {:?}",
                c.heads,
                if c.scale_shift { "scale-shift" } else { "additive" },
                c.num_class_embeds,
                c.cross_attention_dim
            );
            println!("parameters: {}", grouped(c.num_params()));
        }
        ModelConfig::Dit(c) => {
            println!(
                "DiT, {}×{} × {} → {} channels, patch {}, {} tokens, width {}, depth {}, {} heads, {} classes",
                c.input_size,
                c.input_size,
                c.in_channels,
                c.out_channels,
                c.patch_size,
                c.grid() * c.grid(),
                c.hidden_size,
                c.depth,
                c.num_heads,
                c.num_classes
            );
            println!("parameters: {}", grouped(c.num_params()));
            println!(
                "parameters as the original DiT counts them (shared conditioning, fixed position table included): {}",
                grouped(c.original_param_count())
            );
        }
        ModelConfig::Mlp(c) => {
            println!(
                "MLP, {} → {}, width {}, {} blocks",
                c.data_dim, c.data_dim, c.hidden, c.blocks
            );
        }
    }
    println!(
        "forward: {:.2} GFLOP per sample (2 × multiply–accumulates of convolutions, linear layers and attention products)",
        config.forward_flops() / 1e9
    );
    Ok(())
}

fn config_of_file(path: &Path) -> Result<ModelConfig> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
    if json.get("_class_name").is_some() {
        return match parse_config(&json).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))? {
            DiffusersConfig::UNet(c) => Ok(ModelConfig::Unet(c)),
            DiffusersConfig::DiT(c) => Ok(ModelConfig::Dit(c)),
        };
    }
    serde_json::from_value(json).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))
}
