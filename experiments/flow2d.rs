//! `flow2d`: conditional flow matching, OT-CFM and the 2-rectified flow on a 2-D toy set.
//!
//! Writes into the run folder: `config.toml`, `loss.csv`, `metrics.json` (per method the
//! sliced Wasserstein distance of Euler samples to fresh data at each step count, the
//! straightness of the flow, training time), `table.md` (the same as a table),
//! `sw_vs_steps.png` and `trajectories.png` (the ODE paths of each flow from noise to data).

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};
use clap::Parser;
use diffusion_backbones::{Mlp, MlpConfig};
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::tensor::{from_f64, to_f64};
use diffusion_data::Toy2d;
use diffusion_experiments::{CommonArgs, Result, Run, RunError, exit_on_error};
use diffusion_flow::{FlowMatcher, ReflowPairs, VelocityModel, cfm_loss, integrate_flow, straightness};
use diffusion_metrics::sliced_wasserstein;
use diffusion_samplers::FixedStep;
use diffusion_train::{LrDecay, TrainConfig, train};
use diffusion_viz::{Axes, Curve, PALETTE, TrajectoryPanel, line_plot, trajectories};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Config {
    seed: u64,
    data: DataConfig,
    model: ModelConfig,
    train: TrainSection,
    reflow: ReflowConfig,
    eval: EvalConfig,
}

#[derive(Serialize, Deserialize, Debug)]
struct DataConfig {
    name: String,
    batch_size: usize,
}

#[derive(Serialize, Deserialize, Debug)]
struct ModelConfig {
    hidden: usize,
    blocks: usize,
    time_embed_dim: usize,
    time_scale: f64,
}

#[derive(Serialize, Deserialize, Debug)]
struct TrainSection {
    steps: usize,
    lr: f64,
    warmup_steps: usize,
    decay: LrDecay,
    log_every: usize,
    sigma: f64,
}

#[derive(Serialize, Deserialize, Debug)]
struct ReflowConfig {
    pairs: usize,
    solver_steps: usize,
    steps: usize,
    lr: f64,
}

#[derive(Serialize, Deserialize, Debug)]
struct EvalConfig {
    steps: Vec<usize>,
    num_samples: usize,
    reference_size: usize,
    projections: usize,
    trajectories: usize,
}

#[derive(Serialize)]
struct MethodMetrics {
    /// Euler steps → SW₂ to fresh data.
    sliced_wasserstein: BTreeMap<usize, f64>,
    straightness: f64,
    final_loss: f64,
    train_seconds: f64,
}

#[derive(Serialize)]
struct Metrics {
    dataset: String,
    sliced_wasserstein_data_floor: f64,
    methods: BTreeMap<String, MethodMetrics>,
    backend: String,
    dtype: String,
}

#[derive(Parser)]
#[command(
    about = "Train CFM, OT-CFM and the 2-rectified flow on a 2-D toy set and compare few-step sampling"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() {
    let args = Args::parse();
    exit_on_error(run(&args.common));
}

/// Where a training batch's pairs come from.
enum Pairs<'a> {
    /// Fresh noise and fresh data, coupled by the matcher.
    Fresh { toy: Toy2d, matcher: FlowMatcher },
    /// Rows drawn from stored reflow pairs (host copies).
    Stored { x0: &'a [f64], x1: &'a [f64] },
}

struct Trained {
    model: Mlp,
    final_loss: f64,
    seconds: f64,
}

fn train_flow(
    run: &Run<Config>,
    label: &str,
    init: Mlp,
    pairs: &Pairs<'_>,
    steps: usize,
    lr: f64,
    csv: &mut String,
) -> Result<Trained> {
    let cfg = &run.config;
    let ad = init_device(run);
    let dtype = run.precision.dtype();
    let b = cfg.data.batch_size;
    let seed = cfg.seed;
    let fail = |e: &dyn std::fmt::Display| RunError::Failed(e.to_string());
    let train_cfg = TrainConfig::new()
        .with_steps(steps)
        .with_lr(lr)
        .with_warmup_steps(cfg.train.warmup_steps)
        .with_decay(cfg.train.decay)
        .with_log_every(cfg.train.log_every)
        .with_seed(seed);
    let rectified = FlowMatcher::rectified();
    let start = Instant::now();
    let (model, log) = train(
        init,
        &train_cfg,
        |model, step| {
            // Step k draws from streams seeded by (seed, k): data, noise, times, pair rows.
            let range = step as u64 * b as u64..(step as u64 + 1) * b as u64;
            let mut noise = SampleNoise::range(seed ^ 0xf10e_0001, range.clone());
            let t = noise.uniform(1);
            let batch = match pairs {
                Pairs::Fresh { toy, matcher } => {
                    let x1 = from_f64(toy.sample_host(seed, range.clone()), [b, 2], &ad, dtype);
                    let x0 = noise.normal_tensor(b, 2, &ad, dtype);
                    let eps = noise.normal_tensor(b, 2, &ad, dtype);
                    matcher
                        .sample(x0, x1, &t, Some(eps), &[])
                        .expect("batches of one size")
                }
                Pairs::Stored { x0, x1 } => {
                    let n = x0.len() / 2;
                    let rows: Vec<usize> = noise.uniform(1).iter().map(|u| (u * n as f64) as usize).collect();
                    let pick = |v: &[f64]| rows.iter().flat_map(|&i| [v[2 * i], v[2 * i + 1]]).collect();
                    let (x0, x1) = (
                        from_f64(pick(x0), [b, 2], &ad, dtype),
                        from_f64(pick(x1), [b, 2], &ad, dtype),
                    );
                    rectified.path_batch(&t, x0, x1, None)
                }
            };
            cfm_loss(&|x, t| model.forward(x, t), &batch).mean()
        },
        |r| {
            csv.push_str(&format!(
                "{label},{},{},{},{:.3}\n",
                r.step, r.loss, r.lr, r.elapsed_s
            ));
            run.say(format!(
                "{label:>6} step {:>6}  loss {:.5}  {:.1} steps/s",
                r.step, r.loss, r.steps_per_s
            ));
        },
    )
    .map_err(|e| fail(&e))?;
    Ok(Trained {
        model,
        final_loss: log.last().map(|r| r.loss).unwrap_or(f64::NAN),
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn init_device(run: &Run<Config>) -> Device {
    run.device.clone().autodiff()
}

fn run(args: &CommonArgs) -> Result<()> {
    args.one_device("flow2d")?;
    let run: Run<Config> = Run::start("flow2d", include_str!("configs/flow2d.toml"), args)?;
    let cfg = &run.config;
    let fail = |e: &dyn std::fmt::Display| RunError::Failed(e.to_string());
    let toy: Toy2d = cfg.data.name.parse().map_err(|e| fail(&e))?;
    if cfg.eval.steps.is_empty() || cfg.eval.steps.contains(&0) {
        return Err(RunError::Config(
            "eval.steps must list positive step counts".into(),
        ));
    }
    run.say(format!(
        "flow matching on {toy} ({}, {})",
        args.backend, args.dtype
    ));
    let ad = init_device(&run);
    let plain = run.device.clone();
    let dtype: DType = run.precision.dtype();
    let model_cfg = MlpConfig::new(2)
        .with_hidden(cfg.model.hidden)
        .with_blocks(cfg.model.blocks)
        .with_time_embed_dim(cfg.model.time_embed_dim)
        .with_time_scale(cfg.model.time_scale)
        .with_seed(cfg.seed);
    let mut csv = String::from("method,step,loss,lr,elapsed_s\n");
    let sigma = cfg.train.sigma;
    let (steps, lr) = (cfg.train.steps, cfg.train.lr);

    let cfm = train_flow(
        &run,
        "cfm",
        model_cfg.init(&ad),
        &Pairs::Fresh {
            toy,
            matcher: FlowMatcher::independent(sigma),
        },
        steps,
        lr,
        &mut csv,
    )?;
    let ot = train_flow(
        &run,
        "ot-cfm",
        model_cfg.init(&ad),
        &Pairs::Fresh {
            toy,
            matcher: FlowMatcher::optimal_transport(sigma),
        },
        steps,
        lr,
        &mut csv,
    )?;
    // Reflow: pairs of the cfm flow (integrated accurately), then the 2-rectified flow from
    // the cfm weights.
    let cfm_net = cfm.model.valid();
    let start = Instant::now();
    let noise0 = SampleNoise::range(cfg.seed ^ 0xf10e_0002, 0..cfg.reflow.pairs as u64).normal_tensor(
        cfg.reflow.pairs,
        2,
        &plain,
        dtype,
    );
    let pairs = ReflowPairs::generate(
        &VelocityModel(|x, t| cfm_net.forward(x, t)),
        noise0,
        FixedStep::Rk4,
        cfg.reflow.solver_steps,
    );
    pairs.save(&run.path("reflow-pairs")).map_err(|e| fail(&e))?;
    let (p0, p1) = (to_f64(&pairs.x0), to_f64(&pairs.x1));
    let pair_seconds = start.elapsed().as_secs_f64();
    let mut rf2 = train_flow(
        &run,
        "rf2",
        cfm.model.clone(),
        &Pairs::Stored { x0: &p0, x1: &p1 },
        cfg.reflow.steps,
        cfg.reflow.lr,
        &mut csv,
    )?;
    rf2.seconds += pair_seconds;
    run.write_text("loss.csv", &csv)?;

    // Evaluation: Euler at each step count from fixed noise, against fresh data.
    let n = cfg.eval.num_samples;
    let x0 = SampleNoise::range(cfg.seed ^ 0x5a3b_1e00, 0..n as u64).normal_tensor(n, 2, &plain, dtype);
    let fresh = toy.sample_host(cfg.seed ^ 0xe7a1, 0..cfg.eval.reference_size as u64);
    let floor = sliced_wasserstein(
        &toy.sample_host(cfg.seed ^ 0xe7a2, 0..n as u64),
        &fresh,
        2,
        cfg.eval.projections,
        1,
    );
    let mut methods = BTreeMap::new();
    let mut panels_paths = Vec::new();
    for (name, trained) in [("cfm", &cfm), ("ot-cfm", &ot), ("rf2", &rf2)] {
        let net = trained.model.valid();
        let field = VelocityModel(|x, t| net.forward(x, t));
        let mut sw = BTreeMap::new();
        for &k in &cfg.eval.steps {
            let x = to_f64(&integrate_flow(&field, x0.clone(), FixedStep::Euler, k));
            sw.insert(k, sliced_wasserstein(&x, &fresh, 2, cfg.eval.projections, 1));
        }
        let s = straightness(&field, x0.clone(), 100);
        run.say(format!(
            "{name:>6}: straightness {s:.4}, SW₂ by Euler steps {sw:?}"
        ));
        panels_paths.push(paths(
            &field,
            x0.clone().slice([0..cfg.eval.trajectories.min(n), 0..2]),
            100,
        ));
        methods.insert(
            name.to_string(),
            MethodMetrics {
                sliced_wasserstein: sw,
                straightness: s,
                final_loss: trained.final_loss,
                train_seconds: trained.seconds,
            },
        );
    }
    write_figures(&run, &methods, &panels_paths, floor)?;
    run.write_text("table.md", &table(&methods, &cfg.eval.steps, floor))?;
    run.write_json(
        "metrics.json",
        &Metrics {
            dataset: toy.to_string(),
            sliced_wasserstein_data_floor: floor,
            methods,
            backend: args.backend.to_string(),
            dtype: args.dtype.to_string(),
        },
    )?;
    run.say(format!("wrote {}", run.dir().display()));
    Ok(())
}

/// The Euler paths of `x0` through `field`, one `[steps + 1, 2]` row-major vector per point.
fn paths(field: &dyn diffusion_flow::VelocityField, x0: Tensor<2>, steps: usize) -> Vec<Vec<f64>> {
    let [n, _] = x0.dims();
    let mut out: Vec<Vec<f64>> = vec![Vec::with_capacity(2 * (steps + 1)); n];
    let mut x = x0;
    let h = 1.0 / steps as f64;
    for k in 0..=steps {
        for (path, p) in out.iter_mut().zip(to_f64(&x).chunks(2)) {
            path.extend_from_slice(p);
        }
        if k < steps {
            let v = field.velocity(x.clone(), k as f64 * h);
            x = x + v.mul_scalar(h);
        }
    }
    out
}

fn table(methods: &BTreeMap<String, MethodMetrics>, steps: &[usize], floor: f64) -> String {
    let mut s = String::from("| method | straightness |");
    for k in steps {
        s.push_str(&format!(" SW₂ @ {k} |"));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(steps.len()));
    s.push('\n');
    for (name, m) in methods {
        s.push_str(&format!("| {name} | {:.4} |", m.straightness));
        for k in steps {
            s.push_str(&format!(" {:.4} |", m.sliced_wasserstein[k]));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "\nSW₂ between two fresh data sets of the same size (the floor): {floor:.4}\n"
    ));
    s
}

fn write_figures(
    run: &Run<Config>,
    methods: &BTreeMap<String, MethodMetrics>,
    panel_paths: &[Vec<Vec<f64>>],
    floor: f64,
) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| RunError::Failed(e.to_string());
    let names: Vec<&String> = methods.keys().collect();
    let xs: Vec<Vec<f64>> = methods
        .values()
        .map(|m| m.sliced_wasserstein.keys().map(|&k| k as f64).collect())
        .collect();
    let ys: Vec<Vec<f64>> = methods
        .values()
        .map(|m| m.sliced_wasserstein.values().copied().collect())
        .collect();
    let floor_x = xs.first().cloned().unwrap_or_default();
    let floor_y = vec![floor; floor_x.len()];
    let mut curves: Vec<Curve> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Curve {
            label: name.as_str(),
            x: &xs[i],
            y: &ys[i],
            color: PALETTE[i],
        })
        .collect();
    curves.push(Curve {
        label: "data floor",
        x: &floor_x,
        y: &floor_y,
        color: PALETTE[7],
    });
    line_plot(
        &run.path("sw_vs_steps.png"),
        "sliced Wasserstein of Euler samples vs steps",
        &curves,
        Axes {
            x_label: "Euler steps",
            y_label: "SW₂ to data",
            log_x: true,
            log_y: true,
        },
        (640, 420),
    )
    .map_err(|e| fail(&e))?;
    // The paths were collected in the order cfm, ot-cfm, rf2, which is the BTreeMap's order.
    let panels: Vec<TrajectoryPanel> = names
        .iter()
        .zip(panel_paths)
        .enumerate()
        .map(|(i, (name, paths))| TrajectoryPanel {
            title: name.as_str(),
            paths,
            color: PALETTE[i],
        })
        .collect();
    trajectories(&run.path("trajectories.png"), &panels, (420, 420), None).map_err(|e| fail(&e))
}
