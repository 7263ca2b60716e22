//! The score crate against closed forms and the mixture oracle: score-matching objectives
//! at and away from the true score, forward-mode JVPs, training an MLP by explicit and
//! sliced score matching, Langevin dynamics' stationary law, the SDE marginals by
//! simulation, exact and Hutchinson divergences, and NCSNv2's published settings.

use burn::tensor::{DType, Tensor};
use diffusion_backbones::{Mlp, MlpConfig};
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::tensor::{from_f64_like, to_f64};
use diffusion_ddpm::Prediction;
use diffusion_metrics::{mmd_squared, sliced_wasserstein};
use diffusion_samplers::{
    DiscreteModel, GaussianMixture, NoiseLevel, Sampler, TimestepInterpolation, euler_maruyama_step,
};
use diffusion_score::likelihood::DenoiserDivergence;
use diffusion_score::ncsn::{erfc, ladder_overlap, ladder_ratio, normal_cdf, step_size};
use diffusion_score::{
    AnnealedLangevin, Divergence, ExactTrace, HutchinsonTrace, LangevinDynamics, Likelihood, PcSampler,
    Probe, Quantization, Reduction, ScoreModel, Sde, bits_per_dim, denoising_score_matching, dequantize,
    explicit_score_matching, geometric_sigmas, ladder_draw, sde_score_matching, sliced_score_matching,
};
use diffusion_tests::{best_dtype, device, gmm2d, is_slow_backend, tensor2};
use diffusion_train::{TrainConfig, train};

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The standard error of the mean of `v`.
fn std_err(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64 / v.len() as f64).sqrt()
}

/// Exact samples of the mixture noised to VE level σ.
fn noisy_samples(oracle: &GaussianMixture, n: usize, sigma: f64, seed: u64) -> Vec<f64> {
    let x0 = oracle.sample_host(seed, 0..n as u64);
    let z = SampleNoise::range(seed + 1, 0..n as u64).normal(n, 2);
    x0.iter().zip(&z).map(|(a, b)| a + sigma * b).collect()
}

/// The oracle's score at a fixed VE level, as a score model that ignores its conditioning.
fn oracle_score(oracle: &GaussianMixture, sigma: f64) -> impl Fn(Tensor<2>, Tensor<1>) -> Tensor<2> + '_ {
    move |x, _| oracle.score(x, NoiseLevel::ve(sigma))
}

#[test]
fn explicit_and_sliced_score_matching_agree_and_are_minimised_by_the_true_score() {
    let device = device();
    let dtype = best_dtype(&device);
    let (oracle, sigma, n) = (gmm2d(), 0.5, 4000);
    let x = tensor2(noisy_samples(&oracle, n, sigma, 11), n, &device, dtype);
    let cond = x.zeros_like().slice([0..n, 0..1]).reshape([n]);
    let truth = oracle_score(&oracle, sigma);
    let esm = to_f64(&explicit_score_matching(&truth, x.clone(), cond.clone()));
    // Integration by parts: E[tr ∇s] = −E‖s‖², so E[tr ∇s + ‖s‖²] = 0 at the true score.
    let sq = to_f64(
        &oracle
            .score(x.clone(), NoiseLevel::ve(sigma))
            .square()
            .sum_dim(1)
            .reshape([n]),
    );
    let paired: Vec<f64> = esm.iter().zip(&sq).map(|(e, s)| e + 0.5 * s).collect();
    assert!(
        mean(&paired).abs() < 4.0 * std_err(&paired),
        "E[tr ∇s + ‖s‖²] = {}",
        mean(&paired)
    );
    // A shifted score costs exactly ½‖c‖² more in expectation (E[s] = 0 under p).
    let c = [0.3, -0.2];
    let shifted = |x: Tensor<2>, cond: Tensor<1>| {
        let shift = from_f64_like(c.to_vec(), [1, 2], &x);
        truth(x, cond) + shift
    };
    let esm_shift = to_f64(&explicit_score_matching(&shifted, x.clone(), cond.clone()));
    let gap: Vec<f64> = esm_shift.iter().zip(&esm).map(|(a, b)| a - b).collect();
    let half_c2 = 0.5 * (c[0] * c[0] + c[1] * c[1]);
    assert!(
        (mean(&gap) - half_c2).abs() < 4.0 * std_err(&gap),
        "gap {} vs {half_c2}",
        mean(&gap)
    );
    // Sliced score matching estimates the same objective, with and without variance reduction.
    let mut noise = SampleNoise::range(5, 0..n as u64);
    for probe in [Probe::Gaussian, Probe::Rademacher, Probe::Sphere] {
        let projections: Vec<Tensor<2>> = (0..4).map(|_| probe.draw(&mut noise, &x)).collect();
        for reduced in [false, true] {
            let ssm = to_f64(&sliced_score_matching(
                &truth,
                x.clone(),
                cond.clone(),
                &projections,
                reduced,
            ));
            let diff: Vec<f64> = ssm.iter().zip(&esm).map(|(a, b)| a - b).collect();
            assert!(
                mean(&diff).abs() < 4.0 * std_err(&diff),
                "{probe:?} reduced={reduced}: SSM − ESM = {} ± {}",
                mean(&diff),
                std_err(&diff)
            );
        }
    }
}

#[test]
fn denoising_score_matching_is_minimised_by_the_noisy_score() {
    let device = device();
    let dtype = best_dtype(&device);
    let (oracle, n) = (gmm2d(), 4000);
    let x0 = tensor2(oracle.sample_host(21, 0..n as u64), n, &device, dtype);
    let z = SampleNoise::range(22, 0..n as u64).normal_tensor(n, 2, &device, dtype);
    // An NCSN ladder of three levels, one drawn per sample.
    let uniforms = SampleNoise::range(23, 0..n as u64).uniform(1);
    let sigmas = ladder_draw(&[2.0, 0.5, 0.1], &uniforms);
    for level in [0.1, 0.5, 2.0] {
        let share = sigmas.iter().filter(|s| **s == level).count() as f64 / n as f64;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.03,
            "level {level} drawn for {share} of the samples"
        );
    }
    // The true score of each sample's level (three levels, selected by masks).
    let grouped = |x: Tensor<2>, cond: Tensor<1>| {
        let s = to_f64(&cond);
        let mut out = x.zeros_like();
        for level in [0.1, 0.5, 2.0] {
            let mask: Vec<f64> = s.iter().map(|v| if *v == level { 1.0 } else { 0.0 }).collect();
            let mask = from_f64_like(mask, [s.len(), 1], &x);
            out = out + oracle.score(x.clone(), NoiseLevel::ve(level)) * mask;
        }
        out
    };
    let base = to_f64(&denoising_score_matching(
        &grouped,
        x0.clone(),
        &sigmas,
        z.clone(),
        2.0,
    ));
    // λ = σ²: E ½‖σ s + z‖² = ½ (d − σ² E‖s‖²) at the true score; a shift c costs ½ σ² ‖c‖².
    let c = [0.2, 0.1];
    let shifted = |x: Tensor<2>, cond: Tensor<1>| {
        let shift = from_f64_like(c.to_vec(), [1, 2], &x);
        grouped(x, cond) + shift
    };
    let moved = to_f64(&denoising_score_matching(
        &shifted,
        x0.clone(),
        &sigmas,
        z.clone(),
        2.0,
    ));
    let gap: Vec<f64> = moved
        .iter()
        .zip(&base)
        .zip(&sigmas)
        .map(|((a, b), s)| (a - b) / (s * s))
        .collect();
    let half_c2 = 0.5 * (c[0] * c[0] + c[1] * c[1]);
    assert!(
        (mean(&gap) - half_c2).abs() < 4.0 * std_err(&gap),
        "gap {} vs {half_c2}",
        mean(&gap)
    );
    // A zero model pays exactly ½ σ^p ‖z/σ‖².
    let zero = |x: Tensor<2>, _c: Tensor<1>| x.zeros_like();
    let loss = to_f64(&denoising_score_matching(
        &zero,
        x0.clone(),
        &sigmas,
        z.clone(),
        1.0,
    ));
    let zs = to_f64(&z);
    for i in 0..6 {
        let expect = 0.5 * sigmas[i] * (zs[2 * i].powi(2) + zs[2 * i + 1].powi(2)) / sigmas[i].powi(2);
        assert!(
            (loss[i] - expect).abs() < 1e-5 * expect.max(1.0),
            "{i}: {} vs {expect}",
            loss[i]
        );
    }
}

#[test]
fn continuous_objective_weightings_are_consistent() {
    let device = device();
    let dtype = best_dtype(&device);
    let (oracle, n) = (gmm2d(), 64);
    let sde = Sde::vp(0.1, 20.0, 1000);
    let x0 = tensor2(oracle.sample_host(31, 0..n as u64), n, &device, dtype);
    let z = SampleNoise::range(32, 0..n as u64).normal_tensor(n, 2, &device, dtype);
    let t: Vec<f64> = (0..n).map(|i| 0.01 + 0.98 * i as f64 / n as f64).collect();
    let model = |x: Tensor<2>, _c: Tensor<1>| x.clone().mul_scalar(-0.7).add_scalar(0.1);
    let plain = to_f64(&sde_score_matching(
        &model,
        &sde,
        x0.clone(),
        &t,
        z.clone(),
        false,
        Reduction::HalfSum,
    ));
    let lik = to_f64(&sde_score_matching(
        &model,
        &sde,
        x0.clone(),
        &t,
        z.clone(),
        true,
        Reduction::HalfSum,
    ));
    let mean_red = to_f64(&sde_score_matching(
        &model,
        &sde,
        x0,
        &t,
        z,
        false,
        Reduction::Mean,
    ));
    for i in 0..n {
        let (g2, s2) = (sde.diffusion(t[i]).powi(2), sde.marginal(t[i]).1.powi(2));
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
        // g² ‖s + z/σ‖² = (g²/σ²) ‖σ s + z‖²; the mean over 2 features is the half sum.
        assert!(
            rel(lik[i], plain[i] * g2 / s2) < 1e-4,
            "{i}: {} vs {}",
            lik[i],
            plain[i] * g2 / s2
        );
        assert!(rel(mean_red[i], plain[i]) < 1e-5);
    }
}

/// An MLP as an unconditional score model with its exact forward-mode JVP.
struct MlpScore<'a>(&'a Mlp);

impl ScoreModel for MlpScore<'_> {
    fn score(&self, x: Tensor<2>, cond: Tensor<1>) -> Tensor<2> {
        self.0.forward(x, cond)
    }

    fn score_jvp(&self, x: Tensor<2>, cond: Tensor<1>, v: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        self.0.forward_jvp(x, cond, v)
    }
}

#[test]
fn mlp_forward_jvp_is_the_directional_derivative() {
    let device = device();
    for fourier in [0, 8] {
        check_jvp(&device, fourier);
    }
}

fn check_jvp(device: &burn::tensor::Device, fourier: usize) {
    let device = device.clone();
    let mlp = MlpConfig::new(3)
        .with_hidden(32)
        .with_blocks(2)
        .with_fourier_features(fourier)
        .with_fourier_scale(0.5)
        .init(&device);
    assert_eq!(mlp.data_dim(), 3);
    let n = 5;
    let x = SampleNoise::range(41, 0..n as u64).normal_tensor(n, 3, &device, DType::F32);
    let v = SampleNoise::range(42, 0..n as u64).normal_tensor(n, 3, &device, DType::F32);
    let t = from_f64_like(vec![0.3; n], [n], &x);
    let (out, jvp) = mlp.forward_jvp(x.clone(), t.clone(), v.clone());
    let plain = mlp.forward(x.clone(), t.clone());
    assert!(to_f64(&(out - plain).abs()).iter().all(|e| *e < 1e-6));
    // Richardson-extrapolated central differences: error O(h⁴).
    let central = |h: f64| {
        (mlp.forward(x.clone() + v.clone().mul_scalar(h), t.clone())
            - mlp.forward(x.clone() - v.clone().mul_scalar(h), t.clone()))
        .div_scalar(2.0 * h)
    };
    let fd = (central(1e-2).mul_scalar(4.0) - central(2e-2)).div_scalar(3.0);
    let (jvp, fd) = (to_f64(&jvp), to_f64(&fd));
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = jvp
        .iter()
        .zip(&fd)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err < 2e-3 * scale, "JVP off by {err} (scale {scale})");
}

/// Trains an MLP score on N(μ, diag(1, ¼)) by `objective` and returns the relative RMS error
/// of the learned score against −Σ⁻¹(x − μ) on fresh samples.
fn train_gaussian_score(objective: &dyn Fn(&Mlp, Tensor<2>, &mut SampleNoise) -> Tensor<1>) -> f64 {
    let device = device().autodiff();
    let (mu, var): ([f64; 2], [f64; 2]) = ([1.0, -0.5], [1.0, 0.25]);
    let sample = |seed: u64, n: usize| -> Vec<f64> {
        let z = SampleNoise::range(seed, 0..n as u64).normal(n, 2);
        z.chunks(2)
            .flat_map(|r| [mu[0] + var[0].sqrt() * r[0], mu[1] + var[1].sqrt() * r[1]])
            .collect()
    };
    let model = MlpConfig::new(2).with_hidden(64).with_blocks(2).init(&device);
    let steps = if is_slow_backend() { 100 } else { 400 };
    let config = TrainConfig::new()
        .with_steps(steps)
        .with_lr(3e-3)
        .with_log_every(steps);
    let (model, _) = train(
        model,
        &config,
        |m, k| {
            let batch = 256;
            let x = tensor2(sample(1000 + k as u64, batch), batch, &device, DType::F32);
            let mut noise = SampleNoise::range(5000 + k as u64, 0..batch as u64);
            objective(m, x, &mut noise).mean()
        },
        |_| {},
    )
    .unwrap();
    let n = 500;
    let test = sample(7, n);
    let x = tensor2(test.clone(), n, &device, DType::F32);
    let learned = to_f64(&model.forward(x.clone(), x.zeros_like().slice([0..n, 0..1]).reshape([n])));
    let truth: Vec<f64> = test
        .iter()
        .enumerate()
        .map(|(i, v)| -(v - mu[i % 2]) / var[i % 2])
        .collect();
    let err: f64 = learned.iter().zip(&truth).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f64 = truth.iter().map(|b| b * b).sum();
    (err / norm).sqrt()
}

#[test]
fn explicit_and_sliced_score_matching_train_an_mlp_to_the_true_score() {
    let uncond = |x: &Tensor<2>| {
        x.zeros_like()
            .slice([0..x.dims()[0], 0..1])
            .reshape([x.dims()[0]])
    };
    let bound = if is_slow_backend() { 0.35 } else { 0.15 };
    let esm = train_gaussian_score(&|m, x, _| explicit_score_matching(&MlpScore(m), x.clone(), uncond(&x)));
    assert!(esm < bound, "explicit score matching: relative error {esm:.3}");
    if is_slow_backend() {
        return; // one training run is enough where every step takes a third of a second
    }
    let ssm = train_gaussian_score(&|m, x, noise| {
        let v = vec![Probe::Rademacher.draw(noise, &x)];
        sliced_score_matching(&MlpScore(m), x.clone(), uncond(&x), &v, true)
    });
    assert!(ssm < bound, "sliced score matching: relative error {ssm:.3}");
}

#[test]
fn langevin_dynamics_has_the_closed_form_stationary_variance() {
    // For N(0, s²), x ← x − ε x/s² + √(2ε) z is stationary at v = s²/(1 − ε/(2s²)):
    // unadjusted Langevin is biased by its step (NCSNv2's Technique 4 rests on this).
    let device = device();
    let dtype = best_dtype(&device);
    let (s2, eps, n) = (1.0, 0.2, 20_000);
    let x = SampleNoise::range(51, 0..n as u64).normal_tensor(n, 1, &device, dtype);
    let chain = LangevinDynamics {
        step: eps,
        steps: 100,
    };
    let out = to_f64(&chain.run(
        &|x: Tensor<2>| x.mul_scalar(-1.0 / s2),
        x,
        &mut SampleNoise::range(52, 0..n as u64),
    ));
    let var = out.iter().map(|v| v * v).sum::<f64>() / n as f64;
    let expect = s2 / (1.0 - eps / (2.0 * s2));
    // The variance of the sample variance of a Gaussian is 2v²/n.
    assert!(
        (var - expect).abs() < 4.0 * (2.0 / n as f64).sqrt() * expect,
        "{var} vs {expect}"
    );
    assert!((var - s2).abs() > 0.05, "the step bias is visible");
}

/// SW₂ of `samples` to exact mixture draws, and the floor: the mean SW₂ between exact sets
/// of the same size (itself noisy at a few thousand points: 0.11–0.17 here).
fn swd_and_floor(oracle: &GaussianMixture, samples: &[f64]) -> (f64, f64) {
    let n = samples.len() / 2;
    let a = oracle.sample_host(900, 0..n as u64);
    let floor = (901..905)
        .map(|seed| sliced_wasserstein(&oracle.sample_host(seed, 0..n as u64), &a, 2, 128, 3))
        .sum::<f64>()
        / 4.0;
    (sliced_wasserstein(samples, &a, 2, 128, 3), floor)
}

/// The unbiased MMD² of `samples` to exact draws, and the spread of MMD² between exact
/// sets of the same size (its root mean square over four pairs: the null's scale).
fn mmd_and_null(oracle: &GaussianMixture, samples: &[f64]) -> (f64, f64) {
    let n = samples.len() / 2;
    let a = oracle.sample_host(900, 0..n as u64);
    let null = (901..905)
        .map(|seed| mmd_squared(&oracle.sample_host(seed, 0..n as u64), &a, 2, Some(0.5)).powi(2))
        .sum::<f64>()
        / 4.0;
    (mmd_squared(samples, &a, 2, Some(0.5)), null.sqrt())
}

/// Asserts that the share of samples nearest to each mixture mean is the mixture weight,
/// within 4 standard errors (a sampler that misplaces mass between modes fails this).
#[track_caller]
fn assert_mode_weights(name: &str, oracle: &GaussianMixture, samples: &[f64]) {
    let n = samples.len() / 2;
    let (means, weights) = ([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], [0.5, 0.3, 0.2]);
    assert_eq!(oracle.components(), 3);
    let mut counts = [0usize; 3];
    for p in samples.chunks(2) {
        let d = |m: &[f64; 2]| (p[0] - m[0]).powi(2) + (p[1] - m[1]).powi(2);
        let k = (0..3)
            .min_by(|&a, &b| d(&means[a]).total_cmp(&d(&means[b])))
            .unwrap();
        counts[k] += 1;
    }
    for k in 0..3 {
        let share = counts[k] as f64 / n as f64;
        let se = (weights[k] * (1.0 - weights[k]) / n as f64).sqrt();
        assert!(
            (share - weights[k]).abs() < 4.0 * se + 0.01,
            "{name}: mode {k} holds {share:.3}, weight {}",
            weights[k]
        );
    }
}

#[test]
fn annealed_langevin_and_predictor_corrector_sample_the_mixture() {
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let n = 2000;
    let start = |sigma: f64| {
        SampleNoise::range(60, 0..n as u64)
            .normal_tensor(n, 2, &device, dtype)
            .mul_scalar(sigma)
    };
    // NCSN's sampler (ε = 2e-5) on a 20-level ladder from 5 to 0.01; T = 100 steps per level
    // (50 on the slow backends).
    let mut ald = AnnealedLangevin::ncsn(geometric_sigmas(5.0, 0.01, 20));
    if is_slow_backend() {
        ald.steps_per_level = 50;
    }
    let mut runs = vec![(
        "ALD",
        ald.sample(&oracle, start(5.0), &mut SampleNoise::range(61, 0..n as u64)),
    )];
    for (name, sde) in [
        ("PC VE", Sde::ve(0.01, 5.0, 200)),
        ("PC VP", Sde::vp(0.1, 20.0, 200)),
    ] {
        let pc = PcSampler::new(sde);
        let x = start(pc.init_noise_sigma());
        runs.push((
            name,
            pc.sample(&oracle, x, &mut SampleNoise::range(62, 0..n as u64)),
        ));
    }
    for (name, out) in runs {
        let samples = to_f64(&out.unwrap().x);
        let (swd, floor) = swd_and_floor(&oracle, &samples);
        assert!(swd < 1.6 * floor, "{name}: SW₂ {swd:.4} vs floor {floor:.4}");
        let (mmd, null) = mmd_and_null(&oracle, &samples);
        assert!(
            mmd < 5.0 * null,
            "{name}: MMD² {mmd:.2e} vs null spread {null:.2e}"
        );
        assert_mode_weights(name, &oracle, &samples);
    }
}

#[test]
fn a_ddpm_epsilon_model_serves_as_an_ncsn() {
    // A DDPM ε-network (the oracle's, on the linear β schedule) called by the VE
    // predictor-corrector sampler through Tweedie's formula gives the oracle's own samples.
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let schedule = diffusion_schedules::DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let eps = oracle.discrete_model(&schedule, Prediction::Epsilon, TimestepInterpolation::LogSigma);
    let ddpm = DiscreteModel::new(eps, schedule.clone(), Prediction::Epsilon);
    let n = 64;
    let pc = PcSampler::new(Sde::ve(0.02, 5.0, 50));
    let x = SampleNoise::range(60, 0..n as u64)
        .normal_tensor(n, 2, &device, dtype)
        .mul_scalar(5.0);
    let a = to_f64(
        &pc.sample(&oracle, x.clone(), &mut SampleNoise::range(63, 0..n as u64))
            .unwrap()
            .x,
    );
    let b = to_f64(
        &pc.sample(&ddpm, x, &mut SampleNoise::range(63, 0..n as u64))
            .unwrap()
            .x,
    );
    let dev = diffusion_core::tensor::max_rel_deviation(&b, &a);
    assert!(
        dev < if dtype == DType::F64 { 1e-10 } else { 1e-3 },
        "DDPM as NCSN deviates by {dev:e}"
    );
}

#[test]
fn sde_marginals_match_simulation() {
    let device = device();
    let dtype = best_dtype(&device);
    let n = if is_slow_backend() { 4000 } else { 20_000 };
    for sde in [
        Sde::vp(0.1, 20.0, 1000),
        Sde::subvp(0.1, 20.0, 1000),
        Sde::ve(0.01, 5.0, 1000),
    ] {
        let x0 = 1.5;
        let mut x = from_f64_like(vec![x0; n], [n, 1], &tensor2(vec![0.0], 1, &device, dtype));
        let mut noise = SampleNoise::range(70, 0..n as u64);
        let steps = 1000;
        for k in 0..steps {
            let t = k as f64 / steps as f64;
            x = euler_maruyama_step(&sde, x, t, 1.0 / steps as f64, &mut noise);
            if k + 1 == steps / 2 || k + 1 == steps {
                let t = (k + 1) as f64 / steps as f64;
                let v = to_f64(&x);
                let (alpha, sigma) = sde.marginal(t);
                let m = mean(&v);
                let sd = (v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
                assert!(
                    (m - alpha * x0).abs() < 4.0 * sigma / (n as f64).sqrt() + 2e-3,
                    "{:?} t={t}: mean {m} vs {}",
                    sde.kind,
                    alpha * x0
                );
                assert!(
                    (sd / sigma - 1.0).abs() < 0.03,
                    "{:?} t={t}: std {sd} vs {sigma}",
                    sde.kind
                );
            }
        }
    }
}

#[test]
fn exact_and_hutchinson_divergences_match_the_closed_form() {
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let level = NoiseLevel::ve(0.7);
    let x = tensor2(vec![-1.0, 0.3, 1.2, 1.7, 0.5, -1.5, 3.0, -2.5], 4, &device, dtype);
    let (_, closed) = oracle.denoise_with_divergence(x.clone(), level);
    let (d_exact, exact) = ExactTrace(&oracle).denoise_with_divergence(x.clone(), level);
    let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
    for (a, b) in to_f64(&exact).iter().zip(to_f64(&closed)) {
        assert!(
            (a - b).abs() < tol * b.abs().max(1.0),
            "autodiff trace {a} vs closed form {b}"
        );
    }
    assert!(!d_exact.is_autodiff(), "values come back off the tape");
    // Hutchinson: unbiased, and Rademacher probes have the smaller variance.
    let k = 2000;
    let rows = to_f64(&x);
    let repeated: Vec<f64> = (0..k).flat_map(|_| rows[2..4].to_vec()).collect();
    let xs = tensor2(repeated, k, &device, dtype);
    let target = to_f64(&closed)[1];
    let mut spread = Vec::new();
    for probe in [Probe::Gaussian, Probe::Rademacher] {
        let v = probe.draw(&mut SampleNoise::range(80, 0..k as u64), &xs);
        let est = to_f64(
            &HutchinsonTrace {
                denoiser: &oracle,
                probe: v,
            }
            .denoise_with_divergence(xs.clone(), level)
            .1,
        );
        assert!(
            (mean(&est) - target).abs() < 4.0 * std_err(&est),
            "{probe:?}: {} vs {target}",
            mean(&est)
        );
        spread.push(std_err(&est));
    }
    assert!(
        spread[1] < spread[0],
        "Rademacher {} vs Gaussian {}",
        spread[1],
        spread[0]
    );
}

#[test]
fn likelihood_through_any_denoiser_agrees_with_the_closed_form_divergence() {
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let mut likelihood = Likelihood::new(Sde::vp(0.1, 20.0, 1000));
    let tight = dtype == DType::F64;
    likelihood.solver.rtol = if tight { 1e-8 } else { 1e-5 };
    likelihood.solver.atol = likelihood.solver.rtol;
    let x = tensor2(vec![-2.1, 0.3, 1.2, 1.7, 0.9, -1.6], 3, &device, dtype);
    let closed = likelihood.evaluate(&oracle, x.clone()).unwrap();
    let mut noise = SampleNoise::range(90, 0..3);
    let exact = likelihood
        .evaluate_denoiser(&oracle, x.clone(), Divergence::Exact, &mut noise)
        .unwrap();
    let tol = if tight { 1e-7 } else { 1e-3 };
    for (a, b) in exact.log_prob.iter().zip(&closed.log_prob) {
        assert!((a - b).abs() < tol, "autodiff {a} vs closed form {b}");
    }
    // Against the exact density: the ODE carries p_ε to p_T up to the solver tolerance.
    let eps_level = |t: f64| {
        let (alpha, sigma) = likelihood.sde.marginal(t);
        NoiseLevel {
            alpha,
            sigma,
            timestep: None,
        }
    };
    let exact_eps = to_f64(&oracle.log_prob(x.clone(), eps_level(likelihood.eps)));
    let terminal = to_f64(&oracle.log_prob(closed.latent.clone(), eps_level(1.0)));
    for i in 0..3 {
        let composed = terminal[i] + closed.delta[i];
        assert!(
            (composed - exact_eps[i]).abs() < if tight { 1e-6 } else { 2e-3 },
            "{composed} vs {}",
            exact_eps[i]
        );
        // With the N(0, I) prior the error is the prior's mismatch with p_T (about 5e-3 nats).
        assert!((closed.log_prob[i] - exact_eps[i]).abs() < 2e-2);
    }
    // Hutchinson's estimate is unbiased: 64 probes of one point average to the exact value.
    let k = if is_slow_backend() { 16 } else { 64 };
    let copies = tensor2([-2.1, 0.3].repeat(k), k, &device, dtype);
    let mut noise = SampleNoise::range(91, 0..k as u64);
    let hutch = likelihood
        .evaluate_denoiser(
            &oracle,
            copies,
            Divergence::Hutchinson(Probe::Rademacher),
            &mut noise,
        )
        .unwrap();
    let (m, se) = (mean(&hutch.log_prob), std_err(&hutch.log_prob));
    assert!(
        (m - closed.log_prob[0]).abs() < 4.0 * se + 1e-3,
        "Hutchinson {m} ± {se} vs exact {}",
        closed.log_prob[0]
    );
}

#[test]
fn ncsnv2_techniques_reproduce_the_published_settings() {
    // Φ and erfc against tabulated values.
    for (x, want) in [
        (1.96, 0.9750021048517795),
        (-3.0, 0.0013498980316300933),
        (0.0, 0.5),
    ] {
        assert!((normal_cdf(x) - want).abs() < 1e-15, "Φ({x}) = {}", normal_cdf(x));
    }
    for (x, want) in [
        (0.5, 0.4795001221869535),
        (5.0, 1.537_459_794_428_035e-12),
        (2.9, 4.109787809945884e-5),
        (1.2, 0.08968602177036462),
    ] {
        assert!(((erfc(x) - want) / want).abs() < 1e-13, "erfc({x}) = {}", erfc(x));
    }
    // CIFAR-10: σ₁ = 50, L = 232, σ_L = 0.01, T = 5 → ε = 6.2e-6; CelebA 64: σ₁ = 90, L = 500,
    // ε = 3.3e-6 (Song & Ermon 2020, Appendix B.1).
    for (sigma_max, levels, want) in [(50.0, 232, 6.2e-6), (90.0, 500, 3.3e-6)] {
        let gamma = (sigma_max / 0.01f64).powf(1.0 / (levels - 1) as f64);
        let eps = step_size(gamma, 0.01, 5);
        assert!(
            (eps - want).abs() < 0.05e-6,
            "σ₁ = {sigma_max}: ε = {eps:e}, published {want:e}"
        );
    }
    let gamma = (50.0f64 / 0.01).powf(1.0 / 231.0);
    assert!((ladder_overlap(gamma, 3072) - 0.566966).abs() < 1e-5);
    let ratio = ladder_ratio(3072);
    assert!((ladder_overlap(ratio, 3072) - 0.5).abs() < 1e-12 && ratio > 1.0);
}

#[test]
fn bits_per_dim_and_dequantisation_follow_their_definitions() {
    let q = Quantization::default();
    assert_eq!(q.offset_bits(), 7.0);
    assert_eq!(
        Quantization {
            bits: 8,
            centered: false
        }
        .offset_bits(),
        8.0
    );
    let x = dequantize(&[0.0, 255.0, 128.0], &[0.0, 0.5, 0.25], q);
    assert_eq!(
        x,
        vec![-1.0, 2.0 * 255.5 / 256.0 - 1.0, 2.0 * 128.25 / 256.0 - 1.0]
    );
    // The uniform density on [−1, 1]^d (log p = −d ln 2) is 8 bits per 8-bit value.
    let d = 3072;
    let uniform = -(d as f64) * std::f64::consts::LN_2;
    assert!((bits_per_dim(uniform, d, q) - 8.0).abs() < 1e-12);
}

#[test]
fn pc_sampler_refuses_settings_that_do_not_exist() {
    let mut pc = PcSampler::new(Sde::subvp(0.1, 20.0, 100));
    pc.predictor = diffusion_score::Predictor::Ancestral;
    assert!(pc.validate().unwrap_err().to_string().contains("sub-VP"));
    let mut pc = PcSampler::new(Sde::vp(0.1, 20.0, 100));
    pc.eps = 0.0;
    assert!(pc.validate().unwrap_err().to_string().contains("ε"));
    let mut ald = AnnealedLangevin::ncsn(vec![0.1, 1.0]);
    let x = tensor2(vec![0.0, 0.0], 1, &device(), DType::F32);
    let err = ald
        .sample(&gmm2d(), x.clone(), &mut SampleNoise::range(0, 0..1))
        .unwrap_err();
    assert!(err.to_string().contains("decreasing"), "{err}");
    ald.sigmas = vec![];
    assert!(ald.sample(&gmm2d(), x, &mut SampleNoise::range(0, 0..1)).is_err());
}
