//! The Gaussian-mixture oracle against finite differences and Monte Carlo: every closed
//! form is checked by a computation that does not use it.

use burn::tensor::{DType, Device};
use diffusion_core::tensor::to_f64;
use diffusion_ddpm::Prediction;
use diffusion_samplers::{Denoiser, GaussianMixture, NoiseLevel, TimestepInterpolation};
use diffusion_schedules::DiscreteSchedule;
use diffusion_tests::{best_dtype, device, gmm2d, tensor2};

fn points() -> Vec<f64> {
    vec![-2.1, 0.3, 1.2, 1.1, 0.9, -1.7, 0.0, 0.0, 3.0, -3.0]
}

fn levels() -> Vec<NoiseLevel> {
    vec![
        NoiseLevel::ve(0.05),
        NoiseLevel::ve(0.7),
        NoiseLevel::ve(5.0),
        NoiseLevel::vp(0.3),
        NoiseLevel::flow(0.4),
    ]
}

fn log_prob_at(
    gm: &GaussianMixture,
    x: &[f64],
    level: NoiseLevel,
    device: &Device,
    dtype: DType,
) -> Vec<f64> {
    to_f64(&gm.log_prob(tensor2(x.to_vec(), x.len() / 2, device, dtype), level))
}

/// ∇ log p by central differences of the closed-form log-density.
fn fd_score(
    gm: &GaussianMixture,
    x: &[f64],
    level: NoiseLevel,
    h: f64,
    device: &Device,
    dtype: DType,
) -> Vec<f64> {
    let mut score = vec![0.0; x.len()];
    for j in 0..2 {
        let shift = |s: f64| -> Vec<f64> {
            x.iter()
                .enumerate()
                .map(|(i, v)| if i % 2 == j { v + s } else { *v })
                .collect()
        };
        let plus = log_prob_at(gm, &shift(h), level, device, dtype);
        let minus = log_prob_at(gm, &shift(-h), level, device, dtype);
        for i in 0..x.len() / 2 {
            score[2 * i + j] = (plus[i] - minus[i]) / (2.0 * h);
        }
    }
    score
}

#[test]
fn denoiser_is_tweedie_of_the_log_density() {
    let device = device();
    let dtype = best_dtype(&device);
    if dtype != DType::F64 {
        return; // finite differences need f64 (wgpu has none); the f32 path is checked below
    }
    let gm = gmm2d();
    let x = points();
    for level in levels() {
        let score = fd_score(&gm, &x, level, 1e-5, &device, dtype);
        let d = to_f64(&gm.denoise(tensor2(x.clone(), 5, &device, dtype), level));
        // Tweedie: D = (x + σ² ∇ log p)/α.
        for i in 0..x.len() {
            let tweedie = (x[i] + level.sigma * level.sigma * score[i]) / level.alpha;
            assert!(
                (d[i] - tweedie).abs() < 1e-6 * (1.0 + level.sigma * level.sigma),
                "{level:?} point {i}: D {} vs Tweedie {tweedie}",
                d[i]
            );
        }
        let closed = to_f64(&gm.score(tensor2(x.clone(), 5, &device, dtype), level));
        for i in 0..x.len() {
            assert!(
                (closed[i] - score[i]).abs() < 1e-5 * (1.0 + score[i].abs()),
                "{level:?} score {i}"
            );
        }
    }
}

#[test]
fn divergence_matches_finite_differences_of_the_denoiser() {
    let device = device();
    let dtype = best_dtype(&device);
    if dtype != DType::F64 {
        return;
    }
    let gm = gmm2d();
    let x = points();
    let h = 1e-5;
    for level in levels() {
        let div = to_f64(&gm.denoiser_divergence(tensor2(x.clone(), 5, &device, dtype), level));
        let mut fd = [0.0; 5];
        for j in 0..2 {
            let shifted = |s: f64| -> Vec<f64> {
                let v: Vec<f64> = x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| if i % 2 == j { v + s } else { *v })
                    .collect();
                to_f64(&gm.denoise(tensor2(v, 5, &device, dtype), level))
            };
            let (p, m) = (shifted(h), shifted(-h));
            for i in 0..5 {
                fd[i] += (p[2 * i + j] - m[2 * i + j]) / (2.0 * h);
            }
        }
        for i in 0..5 {
            assert!(
                (div[i] - fd[i]).abs() < 1e-5 * (1.0 + fd[i].abs()),
                "{level:?} point {i}: {} vs {}",
                div[i],
                fd[i]
            );
        }
    }
}

#[test]
fn density_and_denoiser_match_monte_carlo() {
    let device = device();
    let dtype = best_dtype(&device);
    let gm = gmm2d();
    let x = [0.8, 0.4, -1.0, -0.5];
    let level = NoiseLevel::vp(0.4); // α = 0.63, σ = 0.77: the posterior is broad, MC converges
    let m = 200_000;
    let x0 = gm.sample_host(11, 0..m);
    // p(x) = E_{x₀}[N(x; α x₀, σ² I)], E[x₀ | x] = E[x₀ N(·)] / E[N(·)].
    for p in 0..2 {
        let (xa, xb) = (x[2 * p], x[2 * p + 1]);
        let (mut sw, mut sx, mut sy) = (0.0, 0.0, 0.0);
        for s in x0.chunks_exact(2) {
            let (dx, dy) = (xa - level.alpha * s[0], xb - level.alpha * s[1]);
            let w = (-(dx * dx + dy * dy) / (2.0 * level.sigma * level.sigma)).exp()
                / (2.0 * std::f64::consts::PI * level.sigma * level.sigma);
            sw += w;
            sx += w * s[0];
            sy += w * s[1];
        }
        let mc_logp = (sw / m as f64).ln();
        let (mc_x, mc_y) = (sx / sw, sy / sw);
        let xs = tensor2(vec![xa, xb], 1, &device, dtype);
        let logp = to_f64(&gm.log_prob(xs.clone(), level))[0];
        let d = to_f64(&gm.denoise(xs, level));
        // Relative standard errors are below 0.5% at this m; allow 2% (f32 adds 1e-6).
        assert!((logp - mc_logp).abs() < 0.02, "log p {logp} vs MC {mc_logp}");
        assert!(
            (d[0] - mc_x).abs() < 0.02 && (d[1] - mc_y).abs() < 0.02,
            "D {d:?} vs MC ({mc_x}, {mc_y})"
        );
    }
}

#[test]
fn flow_velocity_solves_the_continuity_equation() {
    // ∂ₜ log pₜ + u·∇ log pₜ + ∇·u = 0 for the linear path x_t = (1 − t) ε + t x₀,
    // with every derivative taken by finite differences of closed forms.
    let device = device();
    let dtype = best_dtype(&device);
    if dtype != DType::F64 {
        return;
    }
    let gm = gmm2d();
    let x = points();
    let level = |t: f64| NoiseLevel {
        alpha: t,
        sigma: 1.0 - t,
        timestep: None,
    };
    let h = 1e-5;
    for t in [0.2, 0.5, 0.8] {
        let dt: Vec<f64> = log_prob_at(&gm, &x, level(t + h), &device, dtype)
            .iter()
            .zip(log_prob_at(&gm, &x, level(t - h), &device, dtype))
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect();
        let grad = fd_score(&gm, &x, level(t), h, &device, dtype);
        let u = to_f64(&gm.flow_velocity(tensor2(x.clone(), 5, &device, dtype), t));
        let mut div = [0.0; 5];
        for j in 0..2 {
            let shifted = |s: f64| -> Vec<f64> {
                let v: Vec<f64> = x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| if i % 2 == j { v + s } else { *v })
                    .collect();
                to_f64(&gm.flow_velocity(tensor2(v, 5, &device, dtype), t))
            };
            let (p, m) = (shifted(h), shifted(-h));
            for i in 0..5 {
                div[i] += (p[2 * i + j] - m[2 * i + j]) / (2.0 * h);
            }
        }
        for i in 0..5 {
            let residual = dt[i] + u[2 * i] * grad[2 * i] + u[2 * i + 1] * grad[2 * i + 1] + div[i];
            assert!(
                residual.abs() < 1e-4 * (1.0 + dt[i].abs()),
                "t {t} point {i}: residual {residual}"
            );
        }
    }
}

#[test]
fn discrete_model_forms_agree_with_the_denoiser() {
    let device = device();
    let dtype = best_dtype(&device);
    let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
    let gm = gmm2d();
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let x = tensor2(points(), 5, &device, dtype);
    for t in [0.0, 10.0, 499.0, 999.0, 123.4] {
        for interp in [TimestepInterpolation::LogSigma, TimestepInterpolation::Sigma] {
            let sigma = match interp {
                TimestepInterpolation::LogSigma => schedule.t_to_sigma(t),
                TimestepInterpolation::Sigma => schedule.t_to_sigma_linear(t),
            };
            let ab = 1.0 / (1.0 + sigma * sigma);
            let level = NoiseLevel::vp(ab);
            let d = to_f64(&gm.denoise(x.clone(), level));
            for prediction in [Prediction::Epsilon, Prediction::Sample, Prediction::V] {
                let model = gm.discrete_model(&schedule, prediction, interp);
                let t_tensor = diffusion_core::tensor::from_f64(vec![t; 5], [5], &device, dtype);
                let out = model(x.clone(), t_tensor);
                let back = to_f64(&prediction.to_x0(out, x.clone(), &[level.alpha], &[level.sigma]));
                let err = diffusion_tests::max_rel_err(&back, &d, 1.0);
                assert!(err < tol, "t {t} {interp:?} {prediction:?}: {err}");
            }
        }
    }
}

#[test]
fn exact_samples_have_the_mixture_moments() {
    let gm = gmm2d();
    let m = 100_000;
    let s = gm.sample_host(3, 0..m);
    let mean_x = s.chunks_exact(2).map(|p| p[0]).sum::<f64>() / m as f64;
    // E[x] = 0.5·(−2) + 0.3·1.5 + 0.2·1 = −0.35; std of the mean ≈ 1.7/√m = 0.005.
    assert!((mean_x + 0.35).abs() < 0.025, "{mean_x}");
    assert!(GaussianMixture::new(vec![0.5, 0.6], vec![vec![0.0], vec![1.0]], vec![1.0, 1.0]).is_err());
    assert!(GaussianMixture::new(vec![1.0], vec![vec![0.0]], vec![0.0]).is_err());
    assert!(GaussianMixture::new(vec![0.5, 0.5], vec![vec![0.0], vec![1.0, 2.0]], vec![1.0, 1.0]).is_err());
}
