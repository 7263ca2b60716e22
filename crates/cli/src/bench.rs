//! `diffusion bench`: throughput of a backbone's training step and of its forward pass, and the
//! per-step cost of every sampler beyond its model. Each measurement runs `--warmup` untimed
//! iterations, then `--iters` timed ones, each ended by a device sync; it prints the median
//! (with the minimum and maximum), images per second, the achieved GFLOP/s from the model's
//! FLOP count (`ModelConfig::forward_flops`; a training step counted as 3 forward passes) and
//! the process's peak resident memory during the measurement (Linux). Nothing here asserts a
//! speed: it reports.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, LinearConfig, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::tensor::Distribution;
use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use clap::{Args, Subcommand};
use diffusion_backbones::{Backbone, Conditioning, Model, ModelConfig, preset};
use diffusion_cli::{CliError, Result, SamplerOptions};
use diffusion_core::DeviceSpec;
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_samplers::{Denoiser, NoiseLevel};
use serde_json::json;

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    kind: BenchKind,
}

#[derive(Subcommand)]
enum BenchKind {
    /// One training step: forward, backward of the ε-MSE, AdamW.
    Train(ModelBench),
    /// Forward passes without an autodiff tape (the cost of one sampler step).
    Sample(ModelBench),
    /// Each sampler's time per step beyond its model, on the standard-normal oracle
    /// D(x, σ) = α x/(α² + σ²) (exact for N(0, I) data, and nearly free).
    Samplers(SamplerBench),
    /// An n × n matrix product: the backend's dense-kernel throughput, the ceiling of the
    /// convolutions and linear layers.
    Matmul(MatmulBench),
    /// The layers diffusion-kernels computes on flex, forward and backward, through its kernels
    /// and through burn's own operations: convolutions, group norm + SiLU and SiLU at the sizes
    /// of the CPU U-Net of `shapes`, attention and GELU at DiT-S/2's.
    Kernels(KernelBench),
}

#[derive(Args)]
struct KernelBench {
    /// Images per call.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Backend (the kernels apply to flex; on wgpu and CUDA the convolutions are lowered to
    /// matrix products; elsewhere both columns are burn's operations).
    #[arg(long, default_value = "flex")]
    backend: DeviceSpec,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct MatmulBench {
    /// The matrix side n.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// f32, f16 or bf16 (where the backend has it).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Timed iterations.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Backend.
    #[arg(long, default_value = "flex")]
    backend: DeviceSpec,
}

#[derive(Args)]
struct ModelBench {
    /// A preset: ddpm-cifar10, adm-cifar10, dit-s-2, … (`diffusion model-info NAME`).
    #[arg(long, default_value = "ddpm-cifar10")]
    model: String,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed iterations first (allocation, autotuning, caches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Backend: flex, ndarray, wgpu, cuda (optionally with `:index`), as compiled in.
    #[arg(long, default_value = "flex")]
    backend: DeviceSpec,
    /// For a DiT preset: the image channels (3 for 32×32 RGB images rather than the preset's
    /// 4 latent channels); the output has twice as many (learned Σ).
    #[arg(long)]
    in_channels: Option<usize>,
    /// For a DiT preset: the number of classes (the preset's 1000 otherwise).
    #[arg(long)]
    classes: Option<usize>,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct SamplerBench {
    /// The samplers (names as `diffusion sample --sampler`).
    #[arg(
        long,
        num_args = 1..,
        default_values_t = ["ddpm", "ddim", "pndm", "euler", "euler-ancestral", "heun", "dpm2", "lms",
            "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m-sde", "unipc", "em", "ode-rk4"].map(String::from)
    )]
    samplers: Vec<String>,
    /// Sampler steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Samples.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Features per sample (3072: a 32×32 RGB image).
    #[arg(long, default_value_t = 3072)]
    features: usize,
    /// Backend.
    #[arg(long, default_value = "flex")]
    backend: DeviceSpec,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(crate) fn bench(args: &BenchArgs) -> Result<()> {
    match &args.kind {
        BenchKind::Train(b) => model_bench(b, true),
        BenchKind::Sample(b) => model_bench(b, false),
        BenchKind::Samplers(b) => sampler_bench(b),
        BenchKind::Matmul(b) => matmul_bench(b),
        BenchKind::Kernels(b) => kernel_bench(b),
    }
}

/// A layer timed both ways: burn's operations and diffusion-kernels'.
struct KernelCase {
    name: String,
    shape: [usize; 4],
    burn: Box<dyn Fn(Tensor<4>) -> Tensor<4>>,
    kernels: Box<dyn Fn(Tensor<4>) -> Tensor<4>>,
}

fn kernel_cases(n: usize, device: &Device) -> Vec<KernelCase> {
    let conv = |c_in: usize, c_out: usize, side: usize, stride: usize| {
        let layer = Conv2dConfig::new([c_in, c_out], [3, 3])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device);
        let same = layer.clone();
        let strided = if stride > 1 {
            format!(", stride {stride}")
        } else {
            String::new()
        };
        KernelCase {
            name: format!("conv 3×3 {c_in}→{c_out}, {side}×{side}{strided}"),
            shape: [n, c_in, side, side],
            burn: Box::new(move |x| layer.forward(x)),
            kernels: Box::new(move |x| diffusion_kernels::conv2d(&same, x)),
        }
    };
    let norm = |c: usize, side: usize| {
        let layer = GroupNormConfig::new(16, c).init(device);
        let same = layer.clone();
        KernelCase {
            name: format!("group norm (16 groups) + SiLU, {c} ch, {side}×{side}"),
            shape: [n, c, side, side],
            burn: Box::new(move |x| silu(layer.forward(x))),
            kernels: Box::new(move |x| diffusion_kernels::group_norm_silu(&same, x)),
        }
    };
    let silu_case = |c: usize, side: usize| KernelCase {
        name: format!("SiLU, {c} ch, {side}×{side}"),
        shape: [n, c, side, side],
        burn: Box::new(silu),
        kernels: Box::new(diffusion_kernels::silu),
    };
    // DiT-S/2's layers on 32×32 images: 256 tokens of width 384 in 6 heads, and the MLP's
    // 1536-wide GELU. The inputs are `[B, 1, tokens, width]`; attention attends x to itself.
    let (tokens, width) = (256, 384);
    let attention_case = KernelCase {
        name: format!("attention, {tokens} tokens, 6 heads of 64"),
        shape: [n, 1, tokens, width],
        burn: Box::new(move |x| {
            let x: Tensor<3> = x.reshape([n, tokens, width]);
            diffusion_kernels::burn_attention(x.clone(), x.clone(), x, 6).reshape([n, 1, tokens, width])
        }),
        kernels: Box::new(move |x| {
            let x: Tensor<3> = x.reshape([n, tokens, width]);
            diffusion_kernels::attention(x.clone(), x.clone(), x, 6).reshape([n, 1, tokens, width])
        }),
    };
    let mlp = LinearConfig::new(width, 1536).init(device);
    let same = mlp.clone();
    let linear_case = KernelCase {
        name: format!("linear {width}→1536, {tokens} tokens"),
        shape: [n, 1, tokens, width],
        burn: Box::new(move |x| mlp.forward(x)),
        kernels: Box::new(move |x| diffusion_kernels::linear(&same, x)),
    };
    let gelu_case = KernelCase {
        name: format!("GELU (tanh), {tokens} tokens × 1536"),
        shape: [n, 1, tokens, 1536],
        burn: Box::new(gelu_tanh_composed),
        kernels: Box::new(diffusion_kernels::gelu_tanh),
    };
    vec![
        conv(32, 32, 32, 1),
        conv(64, 64, 16, 1),
        conv(96, 32, 32, 1),
        conv(32, 32, 32, 2),
        conv(128, 128, 32, 1),
        conv(256, 256, 8, 1),
        norm(32, 32),
        norm(96, 32),
        silu_case(32, 32),
        attention_case,
        gelu_case,
        linear_case,
    ]
}

/// GELU-tanh as x σ(2√(2/π)(x + 0.044715 x³)) from burn's operations (what DiT ran before).
fn gelu_tanh_composed(x: Tensor<4>) -> Tensor<4> {
    let k = 2.0 * (2.0 / std::f64::consts::PI).sqrt();
    let cubic = x.clone() * x.clone() * x.clone();
    let z = (x.clone() + cubic.mul_scalar(0.044715)).mul_scalar(k);
    x * burn::tensor::activation::sigmoid(z)
}

fn kernel_bench(b: &KernelBench) -> Result<()> {
    if b.batch == 0 || b.iters == 0 {
        return Err(usage("--batch and --iters must be at least 1"));
    }
    let device = b.backend.open().map_err(|e| usage(e.to_string()))?.autodiff();
    println!(
        "forward + backward (∂x and the layer's parameters), batch {}, median of {}:",
        b.batch, b.iters
    );
    let mut results = Vec::new();
    for case in kernel_cases(b.batch, &device) {
        let x = Tensor::<4>::random(case.shape, Distribution::Normal(0.0, 1.0), &device);
        let out = (case.burn)(x.clone()).dims();
        let g = Tensor::<4>::random(out, Distribution::Normal(0.0, 1.0), &device);
        let time = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| -> Result<f64> {
            let times = time_iterations(2, b.iters, &device, || {
                let x = x.clone().require_grad();
                let grads = (f(x.clone()) * g.clone()).sum().backward();
                x.grad(&grads)
            })?;
            Ok(summary(&times).0)
        };
        let (burn, kernels) = (time(&case.burn)?, time(&case.kernels)?);
        println!(
            "  {:48} burn {:8.2} ms   kernels {:8.2} ms   {:5.2}×",
            case.name,
            burn * 1e3,
            kernels * 1e3,
            burn / kernels
        );
        results.push(json!({"case": case.name, "burn_s": burn, "kernels_s": kernels}));
    }
    if let Some(path) = &b.json {
        write_json(
            path,
            &json!({"backend": b.backend.to_string(), "batch": b.batch, "results": results}),
        )?;
    }
    Ok(())
}

fn matmul_bench(b: &MatmulBench) -> Result<()> {
    let dtype = match b.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => return Err(usage(format!("--dtype {other}: expected f32, f16 or bf16"))),
    };
    let device = b.backend.open().map_err(|e| usage(e.to_string()))?;
    if !device.supports_dtype(dtype) {
        return Err(usage(format!("{} does not compute in {}", b.backend, b.dtype)));
    }
    let n = b.size;
    let mut noise = SampleNoise::range(2, 0..n as u64);
    let a = noise.normal_tensor(n, n, &device, DType::F32).cast(dtype);
    let c = noise.normal_tensor(n, n, &device, DType::F32).cast(dtype);
    let times = time_iterations(3, b.iters, &device, || a.clone().matmul(c.clone()))?;
    let (median, min, _) = summary(&times);
    let flop = 2.0 * (n as f64).powi(3);
    println!(
        "matmul {n}×{n} {} on {}: {median:.4} s (median of {}), {:.1} GFLOP/s (best {:.1})",
        b.dtype,
        b.backend,
        b.iters,
        flop / median / 1e9,
        flop / min / 1e9
    );
    Ok(())
}

fn usage(m: impl Into<String>) -> CliError {
    CliError::Usage(m.into())
}

/// The model under test, with DiT presets adapted by `--in-channels` / `--classes`.
fn model_config(b: &ModelBench) -> Result<ModelConfig> {
    let mut config = preset(&b.model).map_err(|e| usage(e.to_string()))?;
    match &mut config {
        ModelConfig::Dit(c) => {
            if let Some(ch) = b.in_channels {
                c.in_channels = ch;
                c.out_channels = 2 * ch;
            }
            if let Some(k) = b.classes {
                c.num_classes = k;
            }
        }
        _ if b.in_channels.is_some() || b.classes.is_some() => {
            return Err(usage("--in-channels and --classes apply to DiT presets only"));
        }
        _ => {}
    }
    Ok(config)
}

/// Waits for the device's queued work; its failure is an error, not a shorter time.
fn sync(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|e| CliError::Device(format!("the device failed to synchronise: {e:?}")))
}

/// Seconds of each timed iteration: `step` and the device sync after it, with the step's
/// output held until the sync (on a lazy or asynchronous backend, work whose result is dropped
/// unread might otherwise not be timed).
fn time_iterations<T>(
    warmup: usize,
    iters: usize,
    device: &Device,
    mut step: impl FnMut() -> T,
) -> Result<Vec<f64>> {
    let sync = || sync(device);
    for _ in 0..warmup {
        let out = step();
        sync()?;
        drop(out);
    }
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            let out = step();
            sync()?;
            let seconds = start.elapsed().as_secs_f64();
            drop(out);
            Ok(seconds)
        })
        .collect()
}

/// (median, min, max).
fn summary(times: &[f64]) -> (f64, f64, f64) {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let n = t.len();
    let median = if n % 2 == 1 {
        t[n / 2]
    } else {
        0.5 * (t[n / 2 - 1] + t[n / 2])
    };
    (median, t[0], t[n - 1])
}

/// Resets the process's peak resident set size (Linux: `/proc/self/clear_refs`).
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident set size since the last reset, in bytes (Linux `VmHWM`).
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A random batch: images, timesteps, class labels (for class-conditional models).
fn inputs(
    config: &ModelConfig,
    model: &Model,
    batch: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<1>, Conditioning) {
    let features: usize = model.sample_shape().iter().product();
    let mut noise = SampleNoise::range(0, 0..batch as u64);
    let x = noise.normal_tensor(batch, features, device, DType::F32);
    let t: Vec<f32> = (0..batch).map(|i| ((i * 397) % 1000) as f32).collect();
    let t = Tensor::<1>::from_data(TensorData::new(t, [batch]), (device, DType::F32));
    let classes = match config {
        ModelConfig::Dit(c) => Some(c.num_classes),
        ModelConfig::Unet(c) => c.num_class_embeds,
        ModelConfig::Mlp(_) => None,
    };
    let cond = Conditioning {
        class_labels: classes.map(|k| {
            let labels: Vec<i64> = (0..batch).map(|i| (i % k) as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), device)
        }),
        context: None,
    };
    (x, t, cond)
}

fn model_bench(b: &ModelBench, train: bool) -> Result<()> {
    if b.batch == 0 || b.iters == 0 {
        return Err(usage("--batch and --iters must be at least 1"));
    }
    let config = model_config(b)?;
    let device = b.backend.open().map_err(|e| usage(e.to_string()))?;
    let flops_per_image = config.forward_flops() * if train { 3.0 } else { 1.0 };
    reset_peak_memory();
    let params;
    let times = if train {
        let device = device.autodiff();
        let mut model = Some(config.init(&device));
        params = model.as_ref().map_or(0, |m| m.num_params());
        let mut optim = diffusion_kernels::AdamW::default().init();
        let (x, t, cond) = inputs(&config, model.as_ref().expect("model"), b.batch, &device);
        let target = x.clone().zeros_like().add_scalar(0.1);
        time_iterations(b.warmup, b.iters, &device, || {
            let m = model.take().expect("model");
            let out = m.forward_flat(x.clone(), t.clone(), &cond);
            let out = out.narrow(1, 0, target.dims()[1]);
            let loss = (out - target.clone()).square().mean();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            model = Some(optim.step(1e-4, m, grads));
        })?
    } else {
        let model = config.init(&device);
        params = model.num_params();
        let (x, t, cond) = inputs(&config, &model, b.batch, &device);
        time_iterations(b.warmup, b.iters, &device, || {
            model.forward_flat(x.clone(), t.clone(), &cond)
        })?
    };
    let peak = peak_memory();
    let (median, min, max) = summary(&times);
    let images_per_s = b.batch as f64 / median;
    let gflops = flops_per_image * images_per_s / 1e9;
    let what = if train { "train" } else { "sample" };
    println!(
        "{what} {} batch {} on {}: {median:.4} s/step (median of {}; min {min:.4}, max {max:.4}), \
         {images_per_s:.2} images/s, {gflops:.1} GFLOP/s achieved ({:.2} GFLOP per image{}), peak RSS {}",
        b.model,
        b.batch,
        b.backend,
        b.iters,
        flops_per_image / 1e9,
        if train { ", 3 × forward" } else { "" },
        peak.map_or("n/a".into(), |p| format!(
            "{:.2} GiB",
            p as f64 / (1u64 << 30) as f64
        )),
    );
    if let Some(path) = &b.json {
        let value = json!({
            "kind": what, "model": b.model, "batch": b.batch, "backend": b.backend.to_string(),
            "iters": b.iters, "warmup": b.warmup, "seconds": times, "median_s": median,
            "images_per_s": images_per_s, "gflop_per_image": flops_per_image / 1e9,
            "gflops_achieved": gflops, "peak_rss_bytes": peak,
            "params": params,
        });
        write_json(path, &value)?;
    }
    Ok(())
}

fn write_json(path: &PathBuf, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON of plain values");
    std::fs::write(path, text + "\n").map_err(|e| CliError::Input(format!("{}: {e}", path.display())))
}

/// The exact denoiser of N(0, I) data, timing itself.
struct TimedStandardNormal {
    seconds: std::cell::Cell<f64>,
}

impl Denoiser for TimedStandardNormal {
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        // The sampler's queued work runs outside the model's time (a failed sync shows in the
        // benchmark's own syncs around the whole run, which `denoise` cannot report).
        let _ = x.device().sync();
        let start = Instant::now();
        let factor = level.alpha / (level.alpha * level.alpha + level.sigma * level.sigma);
        let out = x.mul_scalar(factor);
        let _ = out.device().sync();
        self.seconds
            .set(self.seconds.get() + start.elapsed().as_secs_f64());
        out
    }
}

fn sampler_bench(b: &SamplerBench) -> Result<()> {
    let device = b.backend.open().map_err(|e| usage(e.to_string()))?;
    let mut rows = Vec::new();
    println!(
        "sampler overhead on {}: {} samples × {} features, {} steps; time beyond the model per step",
        b.backend, b.batch, b.features, b.steps
    );
    for name in &b.samplers {
        let options = SamplerOptions {
            steps: Some(b.steps),
            ..SamplerOptions::default()
        };
        let built = options.build(name)?;
        if built.implied_form.is_some() {
            return Err(usage(format!(
                "{name}: a flow sampler; this benchmark takes denoiser samplers"
            )));
        }
        let oracle = TimedStandardNormal {
            seconds: std::cell::Cell::new(0.0),
        };
        let mut noise = SampleNoise::range(1, 0..b.batch as u64);
        let x = noise
            .normal_tensor(b.batch, b.features, &device, DType::F32)
            .mul_scalar(built.sampler.init_noise_sigma());
        sync(&device)?;
        let start = Instant::now();
        let out = built.sampler.sample(&oracle, x, &mut noise)?;
        sync(&device)?;
        let total = start.elapsed().as_secs_f64();
        let overhead = (total - oracle.seconds.get()) / b.steps as f64;
        println!(
            "  {name:<16} {:>8.3} ms/step beyond the model ({} NFE, total {total:.2} s)",
            overhead * 1e3,
            out.nfe
        );
        rows.push(json!({"sampler": name, "overhead_ms_per_step": overhead * 1e3, "nfe": out.nfe, "total_s": total}));
    }
    if let Some(path) = &b.json {
        let value = json!({
            "backend": b.backend.to_string(), "batch": b.batch, "features": b.features,
            "steps": b.steps, "samplers": rows,
        });
        write_json(path, &value)?;
    }
    Ok(())
}
