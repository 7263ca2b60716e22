//! Reflow of an image flow (Liu et al. 2022, "Flow straight and fast", §2.2): draw noise x₀,
//! integrate it through the current flow to x₁ = Z₁(x₀), keep the pairs, and train the next
//! flow — initialised from the current one — by flow matching on the straight paths between
//! the fixed pairs. One round turns the 1-rectified flow (I-CFM) into the 2-rectified flow,
//! whose paths are straighter, so few-step Euler sampling loses less.
//!
//! The pairs of round r live in `RUN/reflow-r/pairs/{x0,x1}.npy` and its checkpoints in
//! `RUN/reflow-r/checkpoints`, so an interrupted round resumes without redrawing them. Pair i
//! of round r starts from stream (seed, r, i); training example p of the round is pair
//! hash(seed, r, p) mod N, drawn with replacement.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{DType, Device, Tensor, TensorData};
use diffusion_backbones::{Backbone, Conditioning, Model};
use diffusion_core::noise::{NoiseSource, SampleNoise, sample_rng, uniform};
use diffusion_core::npy::NpyArray;
use diffusion_flow::{FlowMatcher, VelocityModel, straightness};
use diffusion_train::{NoHooks, Trainer};
use serde::{Deserialize, Serialize};

use crate::family::{FLOW_TIME_SCALE, Family};
use crate::image::{ImageConfig, draw_from, train_config};
use crate::{Result, Run, RunError};

/// `[reflow]`: rounds of reflow after the flow is trained (flow matching only).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReflowSection {
    /// Rounds after the first flow (0: none; 1: the 2-rectified flow).
    pub rounds: usize,
    /// (noise, sample) pairs drawn from the previous flow in each round.
    pub pairs: usize,
    /// Training steps of each round (batches as `[train]`).
    pub steps: usize,
    /// The learning rate of each round (after `train.warmup_steps` of warm-up).
    pub lr: f64,
    /// The solver of the pairs: `ode-dopri5` (adaptive) or `ode-euler`.
    pub sampler: String,
    /// Euler steps of `ode-euler`.
    pub sampler_steps: usize,
    /// Uniform Euler steps of the straightness estimate (Liu et al., eq. 9).
    pub straightness_steps: usize,
}

/// What one round did.
#[derive(Serialize, Debug, Clone)]
pub struct ReflowReport {
    /// The round (1 makes the 2-rectified flow).
    pub round: usize,
    /// Pairs drawn.
    pub pairs: usize,
    /// Training steps.
    pub steps: usize,
    /// The mean loss of the last logged window.
    pub final_loss: f64,
    /// Straightness S of the previous flow and of the new one, on the same 16 noise draws.
    pub straightness_before: f64,
    /// See `straightness_before`.
    pub straightness_after: f64,
    /// Wall time of the round (pairs and training).
    pub seconds: f64,
}

/// What a round was made from, kept in `reflow-r/source.json`: a resumed round must continue
/// from the same flow with the same pairs, never silently reuse another's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct RoundSource {
    /// Training steps of the flow the pairs come from (the run's, or the previous round's).
    base_steps: usize,
    seed: u64,
    pairs: usize,
    sampler: String,
    sampler_steps: usize,
    tolerance: f64,
}

/// Records the source of round `round` in its folder, or checks it against the one there.
fn check_source(run: &Run<ImageConfig>, round: usize, source: &RoundSource) -> Result<()> {
    let dir = run.path(&format!("reflow-{round}"));
    let path = dir.join("source.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| RunError::Io {
            path: path.clone(),
            source: e,
        })?;
        let found: RoundSource = serde_json::from_str(&text).map_err(fail)?;
        if &found != source {
            return Err(RunError::Failed(format!(
                "{} was made from another flow or settings ({found:?}, now {source:?}); \
                 delete {} to redo the round",
                path.display(),
                dir.display()
            )));
        }
        return Ok(());
    }
    if dir.exists() {
        return Err(RunError::Failed(format!(
            "{} has no source.json, so its pairs and checkpoints cannot be trusted; delete it to redo the round",
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|e| RunError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let text = serde_json::to_string_pretty(source).map_err(fail)?;
    diffusion_core::fs::write_atomic(&path, text.as_bytes()).map_err(fail)
}

/// The training rows of one device: pair noise and pair samples, `[per, F]` each.
struct PairShard {
    x0: Vec<f32>,
    x1: Vec<f32>,
    first: u64,
}

/// Checks `[reflow]` against the family before anything is trained (`tolerance`: the adaptive
/// solvers' `eval.ode_tolerance`).
pub fn validate(section: Option<&ReflowSection>, family: &Family, tolerance: f64) -> Result<()> {
    let Some(r) = section.filter(|r| r.rounds > 0) else {
        return Ok(());
    };
    if !matches!(family, Family::Flow(_)) {
        return Err(RunError::Config(
            "reflow.rounds > 0: reflow is for flow matching (diffusion.loss = cfm | ot-cfm)".into(),
        ));
    }
    if r.pairs == 0 || r.steps == 0 || r.sampler_steps == 0 || r.straightness_steps == 0 {
        return Err(RunError::Config(
            "[reflow]: pairs, steps, sampler_steps and straightness_steps must be positive".into(),
        ));
    }
    family
        .sampler(&r.sampler, r.sampler_steps, 0.0, tolerance)
        .map(|_| ())
}

/// S(Z) of the flow `model` on 16 fixed noise draws (`steps` uniform Euler steps).
fn straightness_of(model: &Model, features: usize, seed: u64, steps: usize, device: &Device) -> f64 {
    let x0 = SampleNoise::range(seed ^ 0x57a1, 0..16).normal_tensor(16, features, device, DType::F32);
    let cond = Conditioning::default();
    let field = VelocityModel(|x, t: Tensor<1>| model.forward_flat(x, t.mul_scalar(FLOW_TIME_SCALE), &cond));
    straightness(&field, x0, steps)
}

/// The pairs of round `round` from the flow `model`: read from `dir` if a previous attempt
/// wrote them, else drawn in batches of `eval.batch_size` and written there.
fn pairs(
    run: &Run<ImageConfig>,
    model: &Model,
    family: &Family,
    round: usize,
    features: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let cfg = &run.config;
    let r = cfg.reflow.as_ref().expect("validated");
    let dir = run.path(&format!("reflow-{round}/pairs"));
    let (p0, p1) = (dir.join("x0.npy"), dir.join("x1.npy"));
    if p0.exists() && p1.exists() {
        let read = |path: &std::path::Path| -> Result<Vec<f32>> {
            let a = NpyArray::read(path).map_err(|e| RunError::Failed(e.to_string()))?;
            if a.shape != [r.pairs, features] {
                return Err(RunError::Failed(format!(
                    "{}: shape {:?}, expected [{}, {features}] (reflow.pairs changed? delete the folder)",
                    path.display(),
                    a.shape,
                    r.pairs
                )));
            }
            Ok(a.to_f64().into_iter().map(|v| v as f32).collect())
        };
        run.say(format!("reflow {round}: pairs read from {}", dir.display()));
        return Ok((read(&p0)?, read(&p1)?));
    }
    let mut solver_cfg = cfg.clone();
    solver_cfg.sample.sampler = r.sampler.clone();
    let device = &run.device;
    let (mut x0, mut x1) = (Vec::new(), Vec::new());
    let batch = cfg.eval.batch_size.max(1);
    for lo in (0..r.pairs).step_by(batch) {
        let hi = (lo + batch).min(r.pairs);
        let range = lo as u64..hi as u64;
        let noise = SampleNoise::range(cfg.seed ^ 0x2ef1 ^ ((round as u64) << 40), range.clone())
            .normal_tensor(hi - lo, features, device, DType::F32);
        let sample = draw_from(model, &solver_cfg, family, r.sampler_steps, range, noise.clone())?;
        x0.extend(noise.into_data().try_into_vec_as::<f32>().map_err(fail)?);
        x1.extend(sample.into_data().try_into_vec_as::<f32>().map_err(fail)?);
        run.say(format!("reflow {round}: {hi}/{} pairs", r.pairs));
    }
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Io {
        path: dir.clone(),
        source,
    })?;
    for (path, values) in [(&p0, &x0), (&p1, &x1)] {
        NpyArray::from_f32(vec![r.pairs, features], values.clone())
            .and_then(|a| a.write(path))
            .map_err(fail)?;
    }
    Ok((x0, x1))
}

fn fail(e: impl std::fmt::Display) -> RunError {
    RunError::Failed(e.to_string())
}

/// Round `round` of reflow from the flow `previous` (EMA weights, off the tape, trained for
/// `base_steps` steps) of family `flow`, whose sampler draws the pairs: returns the
/// new flow's EMA weights and the round's report.
pub fn reflow_round(
    run: &Run<ImageConfig>,
    previous: &Model,
    base_steps: usize,
    flow: &Family,
    round: usize,
) -> Result<(Model, ReflowReport)> {
    let start = Instant::now();
    let cfg = &run.config;
    let r = cfg.reflow.as_ref().expect("validated");
    let features: usize = previous.sample_shape().iter().product();
    let source = RoundSource {
        base_steps,
        seed: cfg.seed,
        pairs: r.pairs,
        sampler: r.sampler.clone(),
        sampler_steps: r.sampler_steps,
        tolerance: cfg.eval.ode_tolerance,
    };
    check_source(run, round, &source)?;
    let (x0, x1) = pairs(run, previous, flow, round, features)?;
    // The next flow matches the straight paths between the fixed pairs: independent
    // coupling (the pairs are the coupling), no spread.
    let rectified = Family::Flow(FlowMatcher::independent(0.0));
    let dir = run.path(&format!("reflow-{round}"));
    let ad = run.device.clone().autodiff();
    let mut trainer = Trainer::resume_or_new(
        previous.clone().fork(&ad).train(),
        train_config(cfg, r.steps, r.lr),
        &dir,
    )
    .map_err(fail)?;
    let k = cfg.train.grad_accumulation.max(1);
    let micro = cfg.train.batch_size / k;
    let per = micro / run.devices.len();
    let seed = cfg.seed ^ 0x2ef2 ^ ((round as u64) << 40);
    let shards = |step: usize, j: usize| -> Vec<PairShard> {
        let first = ((step * k + j) * micro) as u64;
        (0..run.devices.len())
            .map(|d| {
                let lo = first + (d * per) as u64;
                let rows: Vec<usize> = (lo..lo + per as u64)
                    .map(|p| ((uniform(&mut sample_rng(seed, p)) * r.pairs as f64) as usize).min(r.pairs - 1))
                    .collect();
                let gather = |v: &[f32]| -> Vec<f32> {
                    rows.iter()
                        .flat_map(|&i| v[i * features..(i + 1) * features].iter().copied())
                        .collect()
                };
                PairShard {
                    x0: gather(&x0),
                    x1: gather(&x1),
                    first: lo,
                }
            })
            .collect()
    };
    let dtype = cfg.train.precision.dtype();
    let loss = |m: &Model, shard: PairShard, ad: &Device| {
        let tensor = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [per, features]), (ad, dtype));
        let cond = Conditioning::default();
        rectified.loss_with_noise(
            &|x, t| m.forward_flat(x, t, &cond),
            tensor(shard.x1),
            tensor(shard.x0),
            shard.first..shard.first + per as u64,
            seed,
        )
    };
    if trainer.step() > 0 {
        run.say(format!("reflow {round}: resumed at step {}", trainer.step()));
    }
    trainer
        .run_data_parallel(&run.devices, shards, loss, &mut NoHooks)
        .map_err(fail)?;
    let next = trainer.sampling_model();
    let steps = r.straightness_steps;
    let report = ReflowReport {
        round,
        pairs: r.pairs,
        steps: trainer.step(),
        final_loss: trainer.log().last().map_or(f64::NAN, |l| l.loss),
        straightness_before: straightness_of(previous, features, cfg.seed, steps, &run.device),
        straightness_after: straightness_of(&next, features, cfg.seed, steps, &run.device),
        seconds: start.elapsed().as_secs_f64(),
    };
    run.say(format!(
        "reflow {round}: loss {:.4}, straightness {:.4} → {:.4}",
        report.final_loss, report.straightness_before, report.straightness_after
    ));
    Ok((next, report))
}
