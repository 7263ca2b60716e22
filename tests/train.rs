//! The training loop: EMA schedules against k-diffusion and diffusers, exact resume, NaN
//! policies, clipping, accumulation, data parallelism and checkpoint hygiene.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor};
use diffusion_backbones::{Mlp, MlpConfig};
use diffusion_core::noise::{NoiseSource, SampleNoise, sample_rng};
use diffusion_core::tensor::to_f64;
use diffusion_ddpm::{ForwardProcess, Prediction, SimpleLoss, UniformTimesteps};
use diffusion_schedules::DiscreteSchedule;
use diffusion_tests::{device, gmm2d, run_training_tests, tensor2};
use diffusion_train::grad::{accumulate, clip_grad_norm, grad_norm, scale_grads};
use diffusion_train::{
    ComputePrecision, EmaSchedule, EmaSpec, LogRecord, NanPolicy, NoHooks, TrainConfig, TrainError,
    TrainHooks, Trainer, data_parallel_step, list_checkpoints, sharded_gradients,
};

/// Every parameter, flattened in visiting order.
fn params<M: Module>(m: &M) -> Vec<f64> {
    struct Flat(Vec<f64>);
    impl ModuleVisitor for Flat {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let v = p.val();
            let n = v.shape().num_elements();
            self.0.extend(to_f64(&v.reshape([n])));
        }
    }
    let mut f = Flat(Vec::new());
    m.visit(&mut f);
    f.0
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diffusion-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn model(ad: &Device) -> Mlp {
    MlpConfig::new(2)
        .with_hidden(16)
        .with_blocks(1)
        .with_time_embed_dim(8)
        .with_seed(7)
        .init(ad)
}

/// L_simple on the 2-D mixture; batch `micro` of step `step` has `b` samples drawn from
/// streams indexed by (step, micro), so a step's data depends on nothing else.
struct Objective {
    loss: SimpleLoss,
    ad: Device,
    b: usize,
    dtype: DType,
}

impl Objective {
    fn new(ad: &Device, b: usize) -> Self {
        let schedule = DiscreteSchedule::linear(100, 1e-3, 0.1).unwrap();
        Self {
            loss: SimpleLoss::new(ForwardProcess::new(schedule), Prediction::Epsilon),
            ad: ad.clone(),
            b,
            dtype: DType::F32,
        }
    }

    /// Samples `range` of the step's stream.
    fn loss_of(&self, m: &Mlp, step: usize, range: std::ops::Range<u64>) -> Tensor<1> {
        let n = (range.end - range.start) as usize;
        let base = (step * 1000) as u64;
        let r = base + range.start..base + range.end;
        let x0 = tensor2(gmm2d().sample_host(1, r.clone()), n, &self.ad, self.dtype);
        let noise = SampleNoise::range(2, r.clone()).normal_tensor(n, 2, &self.ad, self.dtype);
        let t: Vec<usize> = r
            .map(|i| UniformTimesteps { num_timesteps: 100 }.sample(&mut sample_rng(3, i), 1)[0])
            .collect();
        self.loss.loss(|x, t| m.forward(x, t), x0, &t, noise).unwrap()
    }

    fn call(&self, m: &Mlp, step: usize, micro: usize) -> Tensor<1> {
        let b = self.b as u64;
        self.loss_of(m, step, micro as u64 * b..(micro as u64 + 1) * b)
    }
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig::new()
        .with_steps(steps)
        .with_lr(2e-3)
        .with_warmup_steps(3)
        .with_decay(diffusion_train::LrDecay::Cosine)
        .with_log_every(1)
        .with_grad_clip_norm(Some(1.0))
        .with_grad_accumulation(2)
        .with_checkpoint_every(3)
        .with_keep_checkpoints(2)
        .with_emas(vec![
            EmaSpec {
                name: "warmup".into(),
                schedule: EmaSchedule::Warmup {
                    inv_gamma: 1.0,
                    power: 2.0 / 3.0,
                    min_decay: 0.0,
                    max_decay: 0.9999,
                    start_at: 0,
                },
            },
            EmaSpec {
                name: "edm".into(),
                schedule: EmaSchedule::HalfLife {
                    half_life_images: 50.0,
                    rampup_ratio: Some(0.05),
                    batch_size: 16,
                },
            },
        ])
}

fn curve(log: &[LogRecord]) -> Vec<(usize, f64, f64, Option<f64>)> {
    log.iter().map(|r| (r.step, r.loss, r.lr, r.grad_norm)).collect()
}

#[test]
fn ema_decays_match_k_diffusion_and_diffusers() {
    // k-diffusion's EMAWarmup(power=2/3, max_value=0.9999): get_value() after `step` steps.
    let kd = EmaSchedule::Warmup {
        inv_gamma: 1.0,
        power: 2.0 / 3.0,
        min_decay: 0.0,
        max_decay: 0.9999,
        start_at: 0,
    };
    for (step, value) in [
        (0, 0.0),
        (1, 0.3700394750525634),
        (2, 0.5192501432308638),
        (10, 0.7978199917664258),
        (100, 0.9538909949722393),
        (1000, 0.9900066611160449),
        (100000, 0.9995358442110055),
    ] {
        assert!((kd.decay(step) - value).abs() < 1e-15, "k-diffusion step {step}");
    }
    // EMAWarmup(inv_gamma=1, power=3/4, min_value=0.5, max_value=0.999, start_at=10).
    let kd2 = EmaSchedule::Warmup {
        inv_gamma: 1.0,
        power: 0.75,
        min_decay: 0.5,
        max_decay: 0.999,
        start_at: 10,
    };
    for (step, value) in [
        (0, 0.5),
        (5, 0.5),
        (10, 0.5),
        (11, 0.5),
        (20, 0.8344399739238298),
        (199, 0.9804595392756195),
    ] {
        assert!(
            (kd2.decay(step) - value).abs() < 1e-15,
            "k-diffusion start_at step {step}"
        );
    }
    // diffusers' EMAModel(decay=0.9999, use_ema_warmup=True, power=3/4).get_decay(k) is used
    // for the k-th optimiser step, i.e. our step k − 1.
    let df = EmaSchedule::Warmup {
        inv_gamma: 1.0,
        power: 0.75,
        min_decay: 0.0,
        max_decay: 0.9999,
        start_at: 0,
    };
    for (k, value) in [
        (1, 0.0),
        (2, 0.4053964424986395),
        (3, 0.5613086623491692),
        (11, 0.8344399739238298),
        (101, 0.9686123378245277),
        (1001, 0.9943808006210502),
        (100001, 0.999822173392694),
    ] {
        assert!((df.decay(k - 1) - value).abs() < 1e-15, "diffusers step {k}");
    }
    // EDM: β = 0.5^(B/h), h = min(500k images, 0.05 · images seen).
    let edm = EmaSchedule::HalfLife {
        half_life_images: 500_000.0,
        rampup_ratio: Some(0.05),
        batch_size: 512,
    };
    let seen = 1000.0 * 512.0;
    assert!((edm.decay(1000) - 0.5f64.powf(512.0 / (0.05 * seen))).abs() < 1e-15);
    let late = 0.5f64.powf(512.0 / 500_000.0);
    assert!((edm.decay(1_000_000) - late).abs() < 1e-15);
    assert_eq!(EmaSchedule::Constant { decay: 0.9999 }.decay(5), 0.9999);
}

#[test]
fn ema_update_is_the_weighted_average_off_the_tape() {
    let ad = device().autodiff();
    let online = model(&ad);
    let start = params(&online);
    let mut ema = diffusion_train::Ema::new("c", EmaSchedule::Constant { decay: 0.75 }, &online);
    // The same parameters (ids) with other values.
    struct Shift;
    impl burn::module::ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| t.mul_scalar(0.5).add_scalar(0.3))
        }
    }
    let moved = online.clone().map(&mut Shift);
    let target = params(&moved);
    ema.update(&moved, 0);
    let got = params(&ema.model);
    for ((g, s), t) in got.iter().zip(&start).zip(&target) {
        assert!((g - (0.75 * s + 0.25 * t)).abs() < 1e-6, "{g} vs {s}, {t}");
    }
    assert!(
        !ema.model.devices()[0].is_autodiff(),
        "the EMA lives off the tape"
    );
}

/// Fails the run at step `at` (a crash after the checkpoint before it).
struct CrashAt(usize);

impl<M> TrainHooks<M> for CrashAt {
    fn on_sample(&mut self, step: usize, _model: &M) -> Result<(), String> {
        if step == self.0 {
            Err("simulated crash".into())
        } else {
            Ok(())
        }
    }
}

#[test]
fn an_interrupted_run_resumes_bit_for_bit() {
    if !run_training_tests() {
        return;
    }
    let ad = device().autodiff();
    let objective = Objective::new(&ad, 8);
    let steps = 10;
    let uninterrupted_dir = scratch("whole");
    let mut whole = Trainer::new(model(&ad), config(steps))
        .unwrap()
        .with_run_dir(&uninterrupted_dir)
        .quiet(true);
    whole
        .run(|m, s, k| objective.call(m, s, k), &mut NoHooks)
        .unwrap();

    let dir = scratch("resumed");
    let crashing = config(steps).with_sample_every(7);
    let mut first = Trainer::resume_or_new(model(&ad), crashing.clone(), &dir)
        .unwrap()
        .quiet(true);
    let err = first
        .run(|m, s, k| objective.call(m, s, k), &mut CrashAt(7))
        .unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    assert_eq!(list_checkpoints(&dir).last().unwrap().0, 6);
    // A new process: a fresh model (another initialisation), resumed from step 6.
    let other_init = MlpConfig::new(2)
        .with_hidden(16)
        .with_blocks(1)
        .with_time_embed_dim(8)
        .with_seed(99)
        .init(&ad);
    let mut resumed = Trainer::resume_or_new(other_init, crashing, &dir)
        .unwrap()
        .quiet(true);
    assert_eq!(resumed.step(), 6);
    resumed
        .run(|m, s, k| objective.call(m, s, k), &mut NoHooks)
        .unwrap();

    assert_eq!(
        curve(whole.log()),
        curve(resumed.log()),
        "the loss curve is the same"
    );
    assert_eq!(
        params(whole.model()),
        params(resumed.model()),
        "the weights are the same"
    );
    for (a, b) in whole.emas().iter().zip(resumed.emas()) {
        assert_eq!(params(&a.model), params(&b.model), "EMA {}", a.name);
    }
    // Nothing half-written is left; the last two checkpoints are kept.
    let kept: Vec<usize> = list_checkpoints(&dir).iter().map(|c| c.0).collect();
    assert_eq!(kept, vec![9, 10]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The metrics file has one line per logged step, and the loss plot exists.
    let lines = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), steps, "{lines}");
    assert!(dir.join("loss.png").exists());
    for d in [uninterrupted_dir, dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

fn corrupt(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn bad_checkpoints_are_errors_never_a_fresh_start() {
    let ad = device().autodiff();
    let objective = Objective::new(&ad, 4);
    let dir = scratch("bad");
    let cfg = config(3).with_grad_accumulation(1).with_emas(vec![]);
    let mut t = Trainer::new(model(&ad), cfg.clone())
        .unwrap()
        .with_run_dir(&dir)
        .quiet(true);
    t.run(|m, s, k| objective.call(m, s, k), &mut NoHooks).unwrap();
    let ckpt = list_checkpoints(&dir).pop().unwrap().1;

    // Another configuration.
    let err = Trainer::resume_or_new(model(&ad), cfg.clone().with_lr(1e-2), &dir)
        .err()
        .expect("a mismatched configuration is refused");
    assert!(matches!(err, TrainError::Mismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("another training configuration"),
        "{err}"
    );
    // Another architecture.
    let wider = MlpConfig::new(2)
        .with_hidden(24)
        .with_blocks(1)
        .with_time_embed_dim(8)
        .init(&ad);
    let err = Trainer::resume_or_new(wider, cfg.clone(), &dir)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("model.bpk"), "{err}");
    // A longer run of the same configuration resumes.
    let longer = Trainer::resume_or_new(model(&ad), cfg.clone().with_steps(5), &dir).unwrap();
    assert_eq!(longer.step(), 3);
    // Corrupt files.
    corrupt(&ckpt.join("optim.bpk"));
    let err = Trainer::resume_or_new(model(&ad), cfg.clone(), &dir)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("optim.bpk"), "{err}");
    std::fs::write(ckpt.join("state.json"), "{ not json").unwrap();
    let err = Trainer::resume_or_new(model(&ad), cfg, &dir)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("state.json"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_non_finite_loss_stops_with_the_last_checkpoint_or_is_skipped() {
    let ad = device().autodiff();
    let objective = Objective::new(&ad, 4);
    let dir = scratch("nan");
    let cfg = config(6).with_grad_accumulation(1).with_checkpoint_every(2);
    let poisoned = |m: &Mlp, s: usize, k: usize| {
        let l = objective.call(m, s, k);
        if s == 4 { l.mul_scalar(f64::NAN) } else { l }
    };
    let mut t = Trainer::new(model(&ad), cfg.clone())
        .unwrap()
        .with_run_dir(&dir)
        .quiet(true);
    let err = t.run(poisoned, &mut NoHooks).unwrap_err();
    match &err {
        TrainError::NonFiniteLoss {
            step,
            last_checkpoint,
            ..
        } => {
            assert_eq!(*step, 5);
            assert!(
                last_checkpoint.as_ref().unwrap().ends_with("step-00000004"),
                "{err}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("step-00000004"), "{err}");

    let mut t = Trainer::new(model(&ad), cfg.with_nan_policy(NanPolicy::Skip))
        .unwrap()
        .quiet(true);
    let before = std::cell::RefCell::new(Vec::new());
    let mut after_4 = Vec::new();
    t.run(
        |m, s, k| {
            if s == 4 {
                *before.borrow_mut() = params(m);
            }
            if s == 5 {
                after_4 = params(m);
            }
            poisoned(m, s, k)
        },
        &mut NoHooks,
    )
    .unwrap();
    assert_eq!(t.skipped(), &[5]);
    assert_eq!(
        *before.borrow(),
        after_4,
        "a skipped step leaves the weights as they were"
    );
    assert!(params(t.model()).iter().all(|v| v.is_finite()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn clipping_and_accumulation_are_exact() {
    let ad = device().autodiff();
    let objective = Objective::new(&ad, 8);
    let m = model(&ad);
    // Two half-batches, each weighted ½, give the gradient of the whole batch.
    let whole = GradientsParams::from_grads(objective.loss_of(&m, 0, 0..16).backward(), &m);
    let mut acc = GradientsParams::new();
    for range in [0..8, 8..16] {
        let g = GradientsParams::from_grads(objective.loss_of(&m, 0, range).div_scalar(2.0).backward(), &m);
        accumulate(&mut acc, g, &m);
    }
    let (mut whole, mut acc) = (whole, acc);
    let (nw, na) = (grad_norm(&mut whole, &m), grad_norm(&mut acc, &m));
    assert!(nw > 0.0 && ((nw - na) / nw).abs() < 1e-5, "{nw} vs {na}");
    // Clipping rescales every gradient by max/(‖g‖ + 1e-6) and reports the norm before.
    let before = clip_grad_norm(&mut acc, &m, nw / 4.0);
    assert_eq!(before, na);
    let after = grad_norm(&mut acc, &m);
    assert!(
        ((after - nw / 4.0) / (nw / 4.0)).abs() < 1e-5,
        "clipped to the maximum: {after}"
    );
    let unchanged = clip_grad_norm(&mut whole, &m, 10.0 * nw);
    assert!((grad_norm(&mut whole, &m) - unchanged).abs() < 1e-6 * unchanged);
}

/// The gradients of a batch split over two workers are the whole batch's, scale included
/// (AdamW and clipping forgive a wrong scale, so the optimiser step alone cannot show it): the
/// mean of the shards' means is the batch mean, weighted here by 1/2 for two micro-batches.
#[test]
fn sharded_gradients_are_the_whole_batch_gradients() {
    let device = device();
    let ad = device.clone().autodiff();
    let objective = Objective::new(&ad, 8);
    let m = model(&ad);
    let whole_loss = objective.loss_of(&m, 0, 0..16);
    let whole_value = whole_loss.clone().into_scalar::<f64>();
    let mut whole = GradientsParams::from_grads(whole_loss.mul_scalar(0.5).backward(), &m);
    let shard_loss = |r: &Mlp, lo: u64, _: &Device| objective.loss_of(r, 0, lo..lo + 8);
    for devices in [vec![device.clone(), device.clone()], vec![device.clone()]] {
        let starts = if devices.len() == 2 { vec![0, 8] } else { vec![0] };
        let (value, mut sharded) =
            sharded_gradients(&m, &devices, starts, ComputePrecision::F32, 0.5, &shard_loss);
        if devices.len() == 1 {
            // One device sees only its shard: the first half of the batch.
            let half = objective.loss_of(&m, 0, 0..8).into_scalar::<f64>();
            assert!((value - half).abs() < 1e-6 * half.abs(), "{value} vs {half}");
            continue;
        }
        assert!(
            (value - whole_value).abs() < 1e-5 * whole_value.abs(),
            "{value} vs {whole_value}"
        );
        let (nw, ns) = (grad_norm(&mut whole, &m), grad_norm(&mut sharded, &m));
        assert!(nw > 1e-6, "the gradient is not trivial ({nw})");
        assert!((nw - ns).abs() < 1e-5 * nw, "gradient norms {nw} vs {ns}");
        // The same direction too: ‖g_whole − g_sharded‖ ≪ ‖g_whole‖.
        accumulate(&mut whole, negated(sharded, &m), &m);
        let diff = grad_norm(&mut whole, &m);
        assert!(diff < 1e-5 * nw, "the gradients differ by {diff} (norm {nw})");
    }
}

/// −g for every parameter's gradient.
fn negated(mut grads: GradientsParams, m: &Mlp) -> GradientsParams {
    scale_grads(&mut grads, m, -1.0);
    grads
}

#[test]
fn data_parallel_step_equals_the_single_device_step() {
    let device = device();
    let ad = device.clone().autodiff();
    let objective = Objective::new(&ad, 8);
    let cfg = TrainConfig::new();
    let m = model(&ad);
    let lr = 1e-2;
    let optimizer = || {
        diffusion_kernels::AdamW {
            beta_1: cfg.beta1,
            beta_2: cfg.beta2,
            epsilon: cfg.epsilon,
            weight_decay: cfg.weight_decay,
        }
        .init()
    };
    let mut single = optimizer();
    let grads = GradientsParams::from_grads(objective.loss_of(&m, 0, 0..16).backward(), &m);
    let one = single.step(lr, m.clone(), grads);

    let mut multi = optimizer();
    let devices = [device.clone(), device.clone()];
    let two = data_parallel_step(m.clone(), &mut multi, lr, &devices, |replica, shard, _dev| {
        let lo = shard as u64 * 8;
        objective.loss_of(replica, 0, lo..lo + 8)
    });
    let (a, b) = (params(&one), params(&two));
    let moved: f64 = a
        .iter()
        .zip(params(&m))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(moved > 1e-3, "the step moved the weights ({moved})");
    assert!(diff < 1e-5, "data parallel differs by {diff}");
}

#[test]
fn sample_grids_are_written_on_their_period() {
    let ad = device().autodiff();
    let objective = Objective::new(&ad, 4);
    let dir = scratch("grid");
    let cfg = config(4).with_grad_accumulation(1).with_sample_every(2);
    let mut t = Trainer::new(model(&ad), cfg)
        .unwrap()
        .with_run_dir(&dir)
        .quiet(true);
    let mut calls = Vec::new();
    let mut hook = diffusion_train::SampleGrid::new(&dir, 2, |m: &Mlp| {
        // The sampling weights are off the tape.
        calls.push(m.devices()[0].is_autodiff());
        Tensor::<4>::zeros([4, 3, 8, 8], &device())
    });
    t.run(|m, s, k| objective.call(m, s, k), &mut hook).unwrap();
    for step in [2, 4] {
        assert!(hook.path(step).exists(), "{}", hook.path(step).display());
    }
    assert!(!hook.path(3).exists());
    drop(hook);
    assert_eq!(calls, vec![false, false]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bf16_mixed_precision_trains_the_f32_master_weights() {
    if !run_training_tests() {
        return;
    }
    let ad = device().autodiff();
    let cfg = TrainConfig::new()
        .with_steps(60)
        .with_lr(3e-3)
        .with_log_every(20)
        .with_compute(ComputePrecision::Bf16);
    if !ad.supports_dtype(DType::BF16) {
        let err = Trainer::new(model(&ad), cfg).err().expect("refused").to_string();
        assert!(err.to_lowercase().contains("bf16"), "{err}");
        return;
    }
    let mut objective = Objective::new(&ad, 64);
    objective.dtype = DType::BF16;
    let mut mixed = Trainer::new(model(&ad), cfg.clone()).unwrap().quiet(true);
    mixed
        .run(|m, s, k| objective.call(m, s, k), &mut NoHooks)
        .unwrap();
    let objective = Objective::new(&ad, 64);
    let mut full = Trainer::new(model(&ad), cfg.with_compute(ComputePrecision::F32))
        .unwrap()
        .quiet(true);
    full.run(|m, s, k| objective.call(m, s, k), &mut NoHooks).unwrap();

    struct Dtypes(Vec<DType>);
    impl ModuleVisitor for Dtypes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.val().dtype());
        }
    }
    let mut dtypes = Dtypes(Vec::new());
    mixed.model().visit(&mut dtypes);
    assert!(
        dtypes.0.iter().all(|d| *d == DType::F32),
        "the master weights stay f32"
    );
    let (m, f) = (mixed.log(), full.log());
    assert!(m[2].loss < m[0].loss, "bf16 training learns: {m:?}");
    assert_ne!(
        params(mixed.model()),
        params(full.model()),
        "the passes really ran in bf16"
    );
    assert!((m[2].loss - f[2].loss).abs() < 0.25 * f[2].loss, "{m:?} vs {f:?}");
}
