//! `guidance2d`: guidance and inpainting on an exact class-conditional 2-D Gaussian mixture.
//!
//! Writes into the run folder: `config.toml`, `metrics.json` (per method and scale: the share
//! of samples in the guided class, the mean distance to the nearest component mean relative to
//! the component's spread, and the sliced Wasserstein distance to the exact p(x | c); for
//! inpainting the 1-Wasserstein distance to the exact conditional and its floor), `table.md`,
//! and the figures `cfg.png`, `classifier.png`, `cfgpp.png` and `inpainting.png`.

use std::collections::BTreeMap;

use burn::tensor::{DType, Tensor, TensorData};
use clap::Parser;
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::tensor::to_f64;
use diffusion_ddpm::Prediction;
use diffusion_experiments::{CommonArgs, Result, Run, RunError, exit_on_error};
use diffusion_metrics::sliced_wasserstein;
use diffusion_samplers::{
    CfgPlusPlus, ClassifierFree, ClassifierGuidance, Denoiser, DiscreteModel, EdmSampler, GaussianMixture,
    KnownRegion, NoiseLevel, OdeMethod, RePaint, Sampler, SmcInpainting, TimestepInterpolation, VeGrid,
    successive_steps,
};
use diffusion_schedules::{DiscreteSchedule, SigmaGrid, TimestepSpacing, timesteps};
use diffusion_viz::{Axes, Curve, PALETTE, Points, ScatterPanel, line_plot, scatter_panels};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Config {
    seed: u64,
    mixture: MixtureConfig,
    sample: SampleConfig,
    inpaint: InpaintConfig,
}

#[derive(Serialize, Deserialize, Debug)]
struct MixtureConfig {
    components: usize,
    radius: f64,
    std: f64,
    classes: usize,
}

#[derive(Serialize, Deserialize, Debug)]
struct SampleConfig {
    class: usize,
    num_samples: usize,
    heun_steps: usize,
    cfg_scales: Vec<f64>,
    classifier_scales: Vec<f64>,
    ddim_steps: usize,
    cfgpp_lambdas: Vec<f64>,
}

#[derive(Serialize, Deserialize, Debug)]
struct InpaintConfig {
    known: f64,
    num_samples: usize,
    ddpm_steps: usize,
    jump_length: usize,
    jump_n_sample: usize,
    smc_steps: usize,
    smc_particles: usize,
}

/// What a set of guided samples looks like.
#[derive(Serialize, Clone)]
struct GuidedMetrics {
    /// The share of samples the exact classifier puts in the guided class.
    in_class: f64,
    /// Mean distance to the nearest component mean, in units of the component std (√2·Γ(3/2)/Γ(1)
    /// ≈ 1.25 for exact samples of an isotropic 2-D Gaussian).
    spread: f64,
    /// Sliced Wasserstein distance to exact samples of p(x | c).
    sw_to_conditional: f64,
    /// The share of samples nearest to each component mean.
    mode_shares: Vec<f64>,
}

/// Metrics at one guidance scale.
#[derive(Serialize)]
struct Scaled {
    scale: f64,
    #[serde(flatten)]
    metrics: GuidedMetrics,
}

#[derive(Serialize)]
struct InpaintMetrics {
    w1_to_exact: f64,
    nfe: usize,
}

#[derive(Serialize)]
struct Metrics {
    class: usize,
    sw_floor: f64,
    classifier_free: Vec<Scaled>,
    classifier: Vec<Scaled>,
    cfg_plus_plus: Vec<Scaled>,
    inpainting_w1_floor: f64,
    inpainting: BTreeMap<String, InpaintMetrics>,
    backend: String,
}

#[derive(Parser)]
#[command(
    about = "Guidance (CFG, classifier, CFG++) and inpainting (replacement, RePaint, SMCDiff) on an exact 2-D mixture"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// A few samples and steps: the whole pipeline in seconds.
    #[arg(long)]
    smoke: bool,
}

fn main() {
    let args = Args::parse();
    exit_on_error(run(&args));
}

fn fail(e: impl std::fmt::Display) -> RunError {
    RunError::Failed(e.to_string())
}

/// The ring mixture and its classes (component k in class k mod C).
fn mixture(cfg: &MixtureConfig) -> Result<(GaussianMixture, Vec<Vec<usize>>)> {
    let k = cfg.components;
    if k < 2 || cfg.classes < 2 || cfg.classes > k {
        return Err(RunError::Config(format!(
            "mixture: need at least 2 components and 2 ≤ classes ≤ components, got {k} and {}",
            cfg.classes
        )));
    }
    let means = (0..k)
        .map(|i| {
            let a = std::f64::consts::TAU * i as f64 / k as f64;
            vec![cfg.radius * a.cos(), cfg.radius * a.sin()]
        })
        .collect();
    let m = GaussianMixture::new(vec![1.0 / k as f64; k], means, vec![cfg.std; k]).map_err(fail)?;
    let classes = (0..cfg.classes)
        .map(|c| (c..k).step_by(cfg.classes).collect())
        .collect();
    Ok((m, classes))
}

struct Setup {
    m: GaussianMixture,
    classes: Vec<Vec<usize>>,
    class: usize,
    exact: Vec<f64>,
    device: burn::tensor::Device,
    dtype: DType,
    n: usize,
    seed: u64,
    std: f64,
}

impl Setup {
    fn measure(&self, x: &[f64]) -> GuidedMetrics {
        let t = Tensor::<2>::from_data(
            TensorData::new(x.to_vec(), [self.n, 2]),
            (&self.device, self.dtype),
        );
        let post = to_f64(&self.m.class_log_posterior(t, NoiseLevel::ve(1e-3), &self.classes));
        let c = self.classes.len();
        let class = |row: &[f64]| (0..c).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
        let target = self.class;
        let in_class = post.chunks(c).filter(|r| class(r) == target).count() as f64 / self.n as f64;
        let means = self
            .m
            .means_tensor(&Tensor::<2>::zeros([1, 2], (&self.device, DType::F64)));
        let means = to_f64(&means);
        let k = means.len() / 2;
        let mut mode_shares = vec![0.0; k];
        let mut spread = 0.0;
        for p in x.chunks(2) {
            let (j, d) = means
                .chunks(2)
                .map(|q| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt())
                .enumerate()
                .fold(
                    (0, f64::INFINITY),
                    |best, (j, d)| if d < best.1 { (j, d) } else { best },
                );
            mode_shares[j] += 1.0 / self.n as f64;
            spread += d / (self.n as f64 * self.std);
        }
        GuidedMetrics {
            in_class,
            spread,
            sw_to_conditional: sliced_wasserstein(x, &self.exact, 2, 256, self.seed),
            mode_shares,
        }
    }

    fn noise(&self, salt: u64) -> (SampleNoise, Tensor<2>) {
        let mut noise = SampleNoise::range(self.seed ^ salt, 0..self.n as u64);
        let x = noise.normal_tensor(self.n, 2, &self.device, self.dtype);
        (noise, x)
    }
}

fn run(args: &Args) -> Result<()> {
    let common = &args.common;
    common.one_device("guidance2d")?;
    let mut run: Run<Config> = Run::start("guidance2d", include_str!("configs/guidance2d.toml"), common)?;
    if args.smoke {
        let c = &mut run.config;
        c.sample.num_samples = 64;
        c.sample.heun_steps = 8;
        c.sample.ddim_steps = 10;
        c.inpaint.num_samples = 32;
        c.inpaint.ddpm_steps = 10;
        c.inpaint.jump_n_sample = 2;
        c.inpaint.smc_steps = 20;
        c.inpaint.smc_particles = 4;
    }
    let cfg = &run.config;
    let (m, classes) = mixture(&cfg.mixture)?;
    let c = cfg.sample.class;
    if c >= classes.len() {
        return Err(RunError::Config(format!(
            "sample.class = {c} but the mixture has {} classes",
            classes.len()
        )));
    }
    let conditional = m.restricted(&classes[c]).map_err(fail)?;
    let n = cfg.sample.num_samples;
    let setup = Setup {
        exact: conditional.sample_host(cfg.seed ^ 0xe4ac7, 0..n as u64),
        m: m.clone(),
        classes: classes.clone(),
        class: c,
        device: run.device.clone(),
        dtype: run.precision.dtype(),
        n,
        seed: cfg.seed,
        std: cfg.mixture.std,
    };
    let sw_floor = sliced_wasserstein(
        &conditional.sample_host(cfg.seed ^ 0xf1002, 0..n as u64),
        &setup.exact,
        2,
        256,
        cfg.seed,
    );
    run.say(format!(
        "guidance on a {}-component ring, class {c} ({:?}), {n} samples; SW floor {sw_floor:.4}",
        cfg.mixture.components, classes[c]
    ));

    let heun = EdmSampler::new(
        VeGrid::new(SigmaGrid::karras(cfg.sample.heun_steps, 0.002, 80.0, 7.0).map_err(fail)?),
        OdeMethod::Heun,
    );
    let sample = |model: &dyn Denoiser, sampler: &dyn Sampler, salt: u64| -> Result<Vec<f64>> {
        let (mut noise, z) = setup.noise(salt);
        let x = z.mul_scalar(sampler.init_noise_sigma());
        Ok(to_f64(&sampler.sample(model, x, &mut noise).map_err(fail)?.x))
    };

    let mut figures: Vec<Figure> = Vec::new();
    let mut cfg_metrics = Vec::new();
    let mut panels = Vec::new();
    for &w in &cfg.sample.cfg_scales {
        let guided = ClassifierFree::new(&conditional, &m, w);
        let x = sample(&guided, &heun, 1)?;
        let metrics = setup.measure(&x);
        run.say(format!("CFG w = {w}: {}", describe(&metrics)));
        cfg_metrics.push(Scaled { scale: w, metrics });
        panels.push((format!("CFG w = {w}"), x));
    }
    figures.push(("cfg.png", panels));

    let mut classifier_metrics = Vec::new();
    let mut panels = Vec::new();
    for &s in &cfg.sample.classifier_scales {
        let guided = ClassifierGuidance {
            base: &m,
            grad_log_p: |x: Tensor<2>, level: NoiseLevel| m.class_log_posterior_grad(x, level, &classes, c),
            scale: s,
        };
        let x = sample(&guided, &heun, 2)?;
        let metrics = setup.measure(&x);
        run.say(format!("classifier guidance s = {s}: {}", describe(&metrics)));
        classifier_metrics.push(Scaled { scale: s, metrics });
        panels.push((format!("classifier s = {s}"), x));
    }
    figures.push(("classifier.png", panels));

    // CFG++ on DDIM steps of the linear schedule; the oracle is evaluated at the VP levels.
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).map_err(fail)?;
    let ddim_steps = successive_steps(
        &schedule,
        &timesteps(1000, cfg.sample.ddim_steps, TimestepSpacing::Leading, 1).map_err(fail)?,
    );
    let mut cfgpp_metrics = Vec::new();
    let mut panels = Vec::new();
    for &lambda in &cfg.sample.cfgpp_lambdas {
        let sampler = CfgPlusPlus {
            steps: ddim_steps.clone(),
            uncond: &m,
            lambda,
        };
        let x = sample(&conditional, &sampler, 3)?;
        let metrics = setup.measure(&x);
        run.say(format!("CFG++ λ = {lambda}: {}", describe(&metrics)));
        cfgpp_metrics.push(Scaled {
            scale: lambda,
            metrics,
        });
        panels.push((format!("CFG++ λ = {lambda}"), x));
    }
    figures.push(("cfgpp.png", panels));

    let (inpainting, inpainting_w1_floor, histograms) = inpaint(&run, &m, &schedule)?;
    write_scatter_figures(&run, &figures, &setup.exact)?;
    write_histograms(&run, &histograms)?;
    let metrics = Metrics {
        class: c,
        sw_floor,
        classifier_free: cfg_metrics,
        classifier: classifier_metrics,
        cfg_plus_plus: cfgpp_metrics,
        inpainting_w1_floor,
        inpainting,
        backend: common.backend.to_string(),
    };
    run.write_text("table.md", &table(&metrics))?;
    run.write_json("metrics.json", &metrics)?;
    run.say(format!("wrote {}", run.dir().display()));
    Ok(())
}

fn describe(m: &GuidedMetrics) -> String {
    format!(
        "in class {:.3}, spread {:.3} σ, SW to p(x | c) {:.4}, modes {:.3?}",
        m.in_class, m.spread, m.sw_to_conditional, m.mode_shares
    )
}

/// Named sets of samples: scatter panels (2-D points) or histograms (1-D values).
type Panels = Vec<(String, Vec<f64>)>;

/// A figure file and its panels.
type Figure = (&'static str, Panels);

/// Inpainting of the second coordinate given the first: replacement, RePaint and SMCDiff
/// against the exact conditional.
fn inpaint(
    run: &Run<Config>,
    m: &GaussianMixture,
    schedule: &DiscreteSchedule,
) -> Result<(BTreeMap<String, InpaintMetrics>, f64, Panels)> {
    let cfg = &run.config.inpaint;
    let seed = run.config.seed;
    let device = run.device.clone();
    let dtype = run.precision.dtype();
    let n = cfg.num_samples;
    let basis = [vec![1.0, 0.0]];
    let exact_of = |s: u64| -> Result<Vec<f64>> {
        Ok(m.sample_conditional_host(&basis, &[cfg.known], s, 0..n as u64)
            .map_err(fail)?
            .chunks(2)
            .map(|r| r[1])
            .collect())
    };
    let exact = exact_of(seed ^ 0x1a1)?;
    let floor = w1(&exact_of(seed ^ 0x1a2)?, &exact);
    let net = m.discrete_model(schedule, Prediction::Epsilon, TimestepInterpolation::Sigma);
    let denoiser = DiscreteModel::new(net, schedule.clone(), Prediction::Epsilon);
    let rows = |k: usize, v: [f64; 2]| {
        Tensor::<2>::from_data(TensorData::new(v.repeat(k), [k, 2]), (&device, dtype))
    };
    let replacement = RePaint::replacement(
        schedule.clone(),
        cfg.ddpm_steps,
        KnownRegion::Mask(rows(n, [1.0, 0.0])),
        rows(n, [cfg.known, 0.0]),
    );
    let repaint = RePaint {
        jump_length: cfg.jump_length,
        jump_n_sample: cfg.jump_n_sample,
        ..replacement.clone()
    };
    let k = cfg.smc_particles.max(1);
    let smc = SmcInpainting::new(
        successive_steps(
            schedule,
            &timesteps(1000, cfg.smc_steps, TimestepSpacing::Leading, 0).map_err(fail)?,
        ),
        KnownRegion::Mask(rows(n * k, [1.0, 0.0])),
        rows(n * k, [cfg.known, 0.0]),
        k,
    );
    let mut metrics = BTreeMap::new();
    let mut histograms = vec![("exact".to_string(), exact.clone())];
    for (name, sampler, particles) in [
        ("replacement", &replacement as &dyn Sampler, 1),
        ("RePaint", &repaint as &dyn Sampler, 1),
        ("SMCDiff", &smc as &dyn Sampler, k),
    ] {
        let total = n * particles;
        let mut noise = SampleNoise::range(seed ^ 0x1a3, 0..total as u64);
        let x = noise.normal_tensor(total, 2, &device, dtype);
        let out = sampler.sample(&denoiser, x, &mut noise).map_err(fail)?;
        let all = to_f64(&out.x);
        // One sample per group, at a position independent of the values.
        let ours: Vec<f64> = (0..n)
            .map(|g| all[2 * (g * particles + (g * 7919 + 13) % particles) + 1])
            .collect();
        let d = w1(&ours, &exact);
        run.say(format!(
            "inpainting {name}: W1 to the exact conditional {d:.4} (floor {floor:.4}), {} NFE",
            out.nfe
        ));
        metrics.insert(
            name.to_string(),
            InpaintMetrics {
                w1_to_exact: d,
                nfe: out.nfe,
            },
        );
        histograms.push((name.to_string(), ours));
    }
    Ok((metrics, floor, histograms))
}

/// W₁ between two 1-D samples.
fn w1(a: &[f64], b: &[f64]) -> f64 {
    diffusion_metrics::wasserstein_1d_pow(a.to_vec(), b.to_vec(), 1.0)
}

fn write_scatter_figures(run: &Run<Config>, figures: &[Figure], exact: &[f64]) -> Result<()> {
    let r = run.config.mixture.radius + 4.0 * run.config.mixture.std;
    let range = Some(((-r, r), (-r, r)));
    for (file, panels) in figures {
        let clouds: Vec<Vec<Points>> = panels
            .iter()
            .map(|(label, xy)| {
                vec![Points {
                    label: label.as_str(),
                    xy,
                    color: PALETTE[0],
                }]
            })
            .chain(std::iter::once(vec![Points {
                label: "exact p(x | c)",
                xy: exact,
                color: PALETTE[2],
            }]))
            .collect();
        let titles: Vec<&str> = panels
            .iter()
            .map(|(t, _)| t.as_str())
            .chain(["exact p(x | c)"])
            .collect();
        let scatter: Vec<ScatterPanel> = titles
            .iter()
            .zip(&clouds)
            .map(|(title, clouds)| ScatterPanel { title, clouds })
            .collect();
        scatter_panels(&run.path(file), &scatter, (320, 340), range).map_err(fail)?;
    }
    Ok(())
}

fn write_histograms(run: &Run<Config>, histograms: &Panels) -> Result<()> {
    let (lo, hi, bins) = (-4.5, 4.5, 60);
    let width = (hi - lo) / bins as f64;
    let centres: Vec<f64> = (0..bins).map(|i| lo + (i as f64 + 0.5) * width).collect();
    let densities: Vec<Vec<f64>> = histograms
        .iter()
        .map(|(_, v)| {
            let mut h = vec![0.0; bins];
            for x in v {
                let i = ((x - lo) / width).floor();
                if (0.0..bins as f64).contains(&i) {
                    h[i as usize] += 1.0 / (v.len() as f64 * width);
                }
            }
            h
        })
        .collect();
    let curves: Vec<Curve> = histograms
        .iter()
        .zip(&densities)
        .enumerate()
        .map(|(i, ((label, _), y))| Curve {
            label: label.as_str(),
            x: &centres,
            y,
            color: PALETTE[i],
        })
        .collect();
    line_plot(
        &run.path("inpainting.png"),
        &format!("inpainting x₂ given x₁ = {}", run.config.inpaint.known),
        &curves,
        Axes {
            x_label: "x₂",
            y_label: "density",
            ..Axes::default()
        },
        (720, 420),
    )
    .map_err(fail)
}

fn table(m: &Metrics) -> String {
    let mut s =
        String::from("| method | scale | in class | spread (σ) | SW to p(x | c) |\n|---|---|---|---|---|\n");
    for (name, rows) in [
        ("classifier-free", &m.classifier_free),
        ("classifier", &m.classifier),
        ("CFG++", &m.cfg_plus_plus),
    ] {
        for row in rows {
            let g = &row.metrics;
            s.push_str(&format!(
                "| {name} | {} | {:.3} | {:.3} | {:.4} |\n",
                row.scale, g.in_class, g.spread, g.sw_to_conditional
            ));
        }
    }
    s.push_str(&format!(
        "\nSW floor (two exact sample sets): {:.4}\n\n",
        m.sw_floor
    ));
    s.push_str("| inpainting | W1 to exact | NFE |\n|---|---|---|\n");
    for (name, r) in &m.inpainting {
        s.push_str(&format!("| {name} | {:.4} | {} |\n", r.w1_to_exact, r.nfe));
    }
    s.push_str(&format!(
        "\nW1 floor (two exact sample sets): {:.4}\n",
        m.inpainting_w1_floor
    ));
    s
}
