//! The flow crate against torchcfm and POT (`tests/fixtures/flow.json`, from
//! `scripts/fixtures/flow.py`), brute force, the mixture oracle, and training runs that show
//! reflow straightening a learned 2-D flow.

use burn::tensor::{DType, Tensor};
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::tensor::{max_rel_deviation, to_f64};
use diffusion_flow::{
    AffinePath, ClosedFormVelocityDivergence, Coupling, DenoiserVelocity, ExactVelocityDivergence,
    FlowMatcher, PlanSampling, ReflowPairs, SinkhornOptions, VelocityDenoiser, VelocityField, VelocityModel,
    assignment_cost, cfm_loss, distillation_loss, flow_log_likelihood, integrate_flow, optimal_assignment,
    path_level, sample_plan, sinkhorn_plan, squared_distances, straightness,
};
use diffusion_metrics::sliced_wasserstein;
use diffusion_samplers::{Denoiser, Dopri5, FixedStep, NoiseLevel, OdeSystem};
use diffusion_schedules::{CosineSchedule, VpLinear};
use diffusion_tests::{best_dtype, device, fixture, floats, gmm2d, is_slow_backend, matrix, tensor2};
use serde_json::Value;

fn data() -> Value {
    fixture("flow.json")
}

fn tol(dtype: DType, f64_tol: f64) -> f64 {
    if dtype == DType::F64 { f64_tol } else { 1e-4 }
}

#[track_caller]
fn assert_dev(what: &str, ours: &[f64], reference: &[f64], tol: f64) {
    let dev = max_rel_deviation(ours, reference);
    assert!(dev <= tol, "{what}: deviation {dev:.3e} > {tol:.1e}");
}

fn indices(v: &Value) -> Vec<usize> {
    floats(v).iter().map(|&x| x as usize).collect()
}

#[test]
fn matchers_reproduce_torchcfm() {
    let (device, fx) = (device(), data());
    let dtype = best_dtype(&device);
    let m = &fx["matchers"];
    let t = floats(&m["t"]);
    let tensor = |v: &Value| {
        let (x, n) = matrix(v);
        tensor2(x, n, &device, dtype)
    };
    for case in m["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let sigma = case["sigma"].as_f64().unwrap();
        let ot = &case["ot"];
        let matcher = match case["class"].as_str().unwrap() {
            "ConditionalFlowMatcher" => FlowMatcher::independent(sigma),
            "TargetConditionalFlowMatcher" => FlowMatcher::lipman(sigma),
            "VariancePreservingConditionalFlowMatcher" => FlowMatcher {
                path: AffinePath::Trig,
                ..FlowMatcher::independent(sigma)
            },
            "ExactOptimalTransportConditionalFlowMatcher" => FlowMatcher {
                plan_sampling: PlanSampling::WithReplacement,
                ..FlowMatcher::optimal_transport(sigma)
            },
            "SchrodingerBridgeConditionalFlowMatcher" => {
                let mut sb = FlowMatcher::schrodinger_bridge(sigma);
                sb.sinkhorn = SinkhornOptions::pot();
                if ot["method"] == "exact" {
                    sb.coupling = Coupling::ExactOt;
                }
                sb
            }
            other => panic!("unknown matcher {other}"),
        };
        let eps = tensor(&case["eps"]);
        let (x0, x1) = if ot.is_null() {
            (tensor(&m["x0"]), tensor(&m["x1"]))
        } else {
            // The plan, then the pairs drawn from it with torchcfm's uniforms.
            let (cost, n) = matrix(&ot["M"]);
            let plan = match matcher.coupling {
                Coupling::Sinkhorn { reg } => {
                    assert_eq!(reg, ot["reg"].as_f64().unwrap(), "{name}: ε = 2σ²");
                    sinkhorn_plan(&cost, n, n, reg, matcher.sinkhorn).unwrap()
                }
                _ => {
                    let cols = optimal_assignment(&cost, n).unwrap();
                    assert_eq!(cols, indices(&ot["perm"]), "{name}: assignment");
                    let mut plan = vec![0.0; n * n];
                    cols.iter()
                        .enumerate()
                        .for_each(|(i, &j)| plan[i * n + j] = 1.0 / n as f64);
                    plan
                }
            };
            assert_dev(&format!("{name} plan"), &plan, &matrix(&ot["pi"]).0, 1e-12);
            let uniforms = floats(&ot["uniforms"]);
            let (i, j) = sample_plan(&plan, n, &uniforms);
            assert_eq!(
                (i.clone(), j.clone()),
                (indices(&ot["i"]), indices(&ot["j"])),
                "{name}: pairs"
            );
            // The coupling itself, from the raw batches (torchcfm's cost is cdist², equal to
            // ours to 1e-14, which does not move the plan's choices here).
            matcher
                .couple(tensor(&m["x0"]), tensor(&m["x1"]), &uniforms)
                .unwrap()
        };
        assert_dev(
            &format!("{name} x0"),
            &to_f64(&x0),
            &matrix(&case["x0_used"]).0,
            tol(dtype, 1e-15),
        );
        assert_dev(
            &format!("{name} x1"),
            &to_f64(&x1),
            &matrix(&case["x1_used"]).0,
            tol(dtype, 1e-15),
        );
        // Lipman's matcher ignores x₀: its source is the noise.
        let lipman = case["class"] == "TargetConditionalFlowMatcher";
        let (source, noise) = if lipman {
            (eps.clone(), None)
        } else {
            (x0, Some(eps))
        };
        let batch = matcher.path_batch(&t, source, x1, noise);
        assert_dev(
            &format!("{name} xt"),
            &to_f64(&batch.xt),
            &matrix(&case["xt"]).0,
            tol(dtype, 1e-14),
        );
        assert_dev(
            &format!("{name} ut"),
            &to_f64(&batch.ut),
            &matrix(&case["ut"]).0,
            tol(dtype, 1e-13),
        );
    }
}

#[test]
fn exact_assignments_are_optimal() {
    let fx = data();
    for case in fx["exact_ot"]["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (x0, n) = matrix(&case["x0"]);
        let cost = squared_distances(&x0, &matrix(&case["x1"]).0, 2);
        let cols = optimal_assignment(&cost, n).unwrap();
        let ours = assignment_cost(&cost, n, &cols);
        let pot = case["total_cost"].as_f64().unwrap();
        assert!((ours - pot).abs() <= 1e-12 * pot, "{name}: {ours} vs POT {pot}");
        assert_eq!(cols, indices(&case["perm"]), "{name}");
    }
    // Brute force over all permutations of small random batches.
    for seed in 0..20u64 {
        let n = 2 + (seed as usize % 6);
        let a = SampleNoise::range(seed, 0..n as u64).normal(n, 2);
        let b = SampleNoise::range(seed + 100, 0..n as u64).normal(n, 2);
        let cost = squared_distances(&a, &b, 2);
        let best = permutations(n)
            .iter()
            .map(|p| assignment_cost(&cost, n, p))
            .fold(f64::INFINITY, f64::min);
        let ours = assignment_cost(&cost, n, &optimal_assignment(&cost, n).unwrap());
        assert!(
            (ours - best).abs() < 1e-12,
            "n = {n}: {ours} vs brute force {best}"
        );
    }
    assert!(
        optimal_assignment(&[0.0, f64::NAN, 1.0, 2.0], 2)
            .unwrap_err()
            .to_string()
            .contains("non-finite")
    );
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for k in 0..=p.len() {
            let mut q = p.clone();
            q.insert(k, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn sinkhorn_plans_match_pot_and_their_limits() {
    let fx = data();
    for case in fx["sinkhorn"]["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (cost, n) = matrix(&case["M"]);
        let reg = case["reg"].as_f64().unwrap();
        let pot = sinkhorn_plan(&cost, n, n, reg, SinkhornOptions::pot()).unwrap();
        assert_dev(
            &format!("{name} (POT's iteration)"),
            &pot,
            &matrix(&case["pi"]).0,
            1e-12,
        );
        // The converged log-domain plan: marginals exact, and within POT's stopping error.
        let plan = sinkhorn_plan(&cost, n, n, reg, SinkhornOptions::default()).unwrap();
        for i in 0..n {
            let row: f64 = plan[i * n..(i + 1) * n].iter().sum();
            let col: f64 = (0..n).map(|k| plan[k * n + i]).sum();
            assert!(
                (row - 1.0 / n as f64).abs() < 1e-12 && (col - 1.0 / n as f64).abs() < 1e-12,
                "{name}"
            );
        }
        assert_dev(
            &format!("{name} (log domain)"),
            &plan,
            &matrix(&case["pi"]).0,
            1e-6,
        );
    }
    // ε → 0 gives the exact plan's cost, ε → ∞ the independent one.
    let n = 16;
    let a = SampleNoise::range(1, 0..n as u64).normal(n, 2);
    let b = SampleNoise::range(2, 0..n as u64).normal(n, 2);
    let cost = squared_distances(&a, &b, 2);
    let exact = assignment_cost(&cost, n, &optimal_assignment(&cost, n).unwrap()) / n as f64;
    let dot = |p: &[f64]| p.iter().zip(&cost).map(|(p, c)| p * c).sum::<f64>();
    let sharp = dot(&sinkhorn_plan(&cost, n, n, 1e-3, SinkhornOptions::default()).unwrap());
    let flat = dot(&sinkhorn_plan(&cost, n, n, 1e4, SinkhornOptions::default()).unwrap());
    let independent = cost.iter().sum::<f64>() / (n * n) as f64;
    assert!(
        sharp >= exact - 1e-12 && sharp - exact < 0.005 * exact,
        "{sharp} vs {exact}"
    );
    assert!(
        (flat - independent).abs() < 1e-3 * independent,
        "{flat} vs {independent}"
    );
    assert!(sinkhorn_plan(&cost, n, n, 0.0, SinkhornOptions::default()).is_err());
}

/// The affine paths the oracle tests run on.
fn oracle_paths() -> Vec<(&'static str, AffinePath)> {
    vec![
        ("linear", AffinePath::Linear),
        ("lipman", AffinePath::LipmanOt { sigma_min: 0.01 }),
        ("trig", AffinePath::Trig),
        ("vp", AffinePath::VpLinear(VpLinear::default())),
        ("cosine", AffinePath::Cosine(CosineSchedule::default())),
    ]
}

#[test]
fn the_oracle_velocity_has_no_flow_matching_gap() {
    // L_CFM(v) = E‖v − u‖² = E‖v − v*‖² + E Var(u | x_t), and for a deterministic affine path
    // Var(u | x_t) = (ȧ − ḃ a/b)² tr Cov[x₁ | x_t]. Times on a grid of 40, 100 samples each.
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let (bins, per) = (40, if is_slow_backend() { 25 } else { 100 });
    let n = bins * per;
    let x1 = tensor2(oracle.sample_host(5, 0..n as u64), n, &device, dtype);
    let x0 = SampleNoise::range(6, 0..n as u64).normal_tensor(n, 2, &device, dtype);
    let grid: Vec<f64> = (0..bins)
        .map(|k| 0.02 + 0.96 * (k as f64 + 0.5) / bins as f64)
        .collect();
    let t: Vec<f64> = (0..n).map(|i| grid[i / per]).collect();
    for (name, path) in oracle_paths() {
        let matcher = FlowMatcher {
            path,
            ..FlowMatcher::rectified()
        };
        let batch = matcher.path_batch(&t, x0.clone(), x1.clone(), None);
        let field = DenoiserVelocity {
            denoiser: &oracle,
            path,
        };
        let (mut gap, mut extra) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (k, &tk) in grid.iter().enumerate() {
            let rows = k * per..(k + 1) * per;
            let x = batch.xt.clone().slice([rows.clone(), 0..2]);
            let u = to_f64(&batch.ut.clone().slice([rows, 0..2]));
            let v = to_f64(&field.velocity(x.clone(), tk));
            let c = path.coefficients(tk);
            let gain = c.da - c.db * c.a / c.b;
            let var = to_f64(&oracle.posterior_trace_cov(x, path_level(&path, tk)));
            for i in 0..per {
                let (dx, dy) = (v[2 * i] - u[2 * i], v[2 * i + 1] - u[2 * i + 1]);
                let loss = dx * dx + dy * dy;
                gap.push(loss - gain * gain * var[i]);
                // A velocity shifted by δ = (0.3, −0.1) costs ‖δ‖² = 0.1 more.
                extra.push((dx + 0.3).powi(2) + (dy - 0.1).powi(2) - loss);
            }
        }
        let (m, se) = mean_se(&gap);
        assert!(m.abs() < 4.0 * se, "{name}: L_CFM(v*) − E Var(u|x) = {m} ± {se}");
        let (m, se) = mean_se(&extra);
        assert!(
            (m - 0.1).abs() < 4.0 * se + 1e-9,
            "{name}: the shift costs {m} ± {se}, expected 0.1"
        );
    }
}

fn mean_se(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (m, (var / v.len() as f64).sqrt())
}

#[test]
fn the_vp_path_flow_is_the_probability_flow_ode() {
    // On a diffusion schedule's path the marginal velocity is minus the probability-flow
    // drift at τ = 1 − t: the flow ODE is the PF-ODE run forwards.
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let sde = diffusion_score::Sde::vp(0.1, 20.0, 1000);
    let score = diffusion_score::DenoiserScore::new(&oracle, &sde);
    let pf = diffusion_score::ProbabilityFlowOde::new(&sde, &score);
    let field = DenoiserVelocity {
        denoiser: &oracle,
        path: AffinePath::VpLinear(VpLinear::default()),
    };
    let x = tensor2(vec![-1.0, 0.3, 1.2, 1.7, 0.5, -1.5, 3.0, -2.5], 4, &device, dtype);
    for t in [0.05, 0.3, 0.6, 0.95] {
        let v = to_f64(&field.velocity(x.clone(), t));
        let drift: Vec<f64> = to_f64(&pf.derivative(x.clone(), 1.0 - t))
            .iter()
            .map(|d| -d)
            .collect();
        assert_dev(&format!("t = {t}"), &v, &drift, tol(dtype, 1e-10));
    }
}

#[test]
fn velocity_models_are_denoisers_at_any_level() {
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let x = tensor2(vec![-1.0, 0.3, 1.2, 1.7, 0.5, -1.5], 3, &device, dtype);
    for (name, path) in oracle_paths() {
        let field = DenoiserVelocity {
            denoiser: &oracle,
            path,
        };
        let back = VelocityDenoiser { field: &field, path };
        for level in [
            NoiseLevel::ve(0.3),
            NoiseLevel::ve(4.0),
            NoiseLevel::flow(0.5),
            NoiseLevel {
                alpha: 0.8,
                sigma: 0.6,
                timestep: None,
            },
        ] {
            let want = to_f64(&oracle.denoise(x.clone(), level));
            let got = to_f64(&back.denoise(x.clone(), level));
            assert_dev(&format!("{name} at {level:?}"), &got, &want, tol(dtype, 1e-8));
        }
    }
}

#[test]
fn the_oracle_flow_samples_the_mixture_and_gives_its_exact_density() {
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let n = 2000;
    let field = DenoiserVelocity {
        denoiser: &oracle,
        path: AffinePath::Linear,
    };
    let x0 = SampleNoise::range(3, 0..n as u64).normal_tensor(n, 2, &device, dtype);
    let samples = to_f64(&integrate_flow(&field, x0, FixedStep::Rk4, 50));
    let exact = oracle.sample_host(4, 0..n as u64);
    let floor = sliced_wasserstein(&oracle.sample_host(5, 0..n as u64), &exact, 2, 128, 1);
    let swd = sliced_wasserstein(&samples, &exact, 2, 128, 1);
    assert!(swd < 1.6 * floor, "SW₂ {swd:.4} vs floor {floor:.4}");
    // log p_{t₁}(x) through the ODE equals the exact density of the path's marginal at t₁:
    // the linear path starts from exactly N(0, I).
    let t1 = 1.0 - 1e-4;
    let x = tensor2(vec![-2.1, 0.3, 1.2, 1.7, 0.9, -1.6], 3, &device, dtype);
    let divergence = |x: Tensor<2>, level: NoiseLevel| oracle.denoiser_divergence(x, level);
    let closed = ClosedFormVelocityDivergence {
        denoiser: &oracle,
        divergence: &divergence,
        path: AffinePath::Linear,
    };
    let rtol = if dtype == DType::F64 { 1e-9 } else { 1e-5 };
    let solver = Dopri5 {
        rtol,
        atol: rtol,
        ..Dopri5::default()
    };
    let out = flow_log_likelihood(&closed, x.clone(), t1, &solver).unwrap();
    let want = to_f64(&oracle.log_prob(x.clone(), path_level(&AffinePath::Linear, t1)));
    for (a, b) in out.log_prob.iter().zip(&want) {
        assert!(
            (a - b).abs() < if dtype == DType::F64 { 1e-6 } else { 2e-3 },
            "log p {a} vs exact {b}"
        );
    }
    // The autodiff divergence of the velocity gives the same.
    let exact_div = ExactVelocityDivergence(&field);
    let auto = flow_log_likelihood(&exact_div, x, t1, &solver).unwrap();
    for (a, b) in auto.log_prob.iter().zip(&out.log_prob) {
        assert!(
            (a - b).abs() < if dtype == DType::F64 { 1e-7 } else { 2e-3 },
            "autodiff {a} vs closed {b}"
        );
    }
}

/// I(t) = cos(πt/2) x₀ + sin(πt/2) x₁ written as a plain interpolation, its derivative left to
/// the default central difference.
struct Arc;

impl diffusion_flow::Interpolant for Arc {
    fn interpolate(&self, t: &[f64], x0: Tensor<2>, x1: Tensor<2>) -> Tensor<2> {
        use std::f64::consts::FRAC_PI_2;
        let cos: Vec<f64> = t.iter().map(|t| (FRAC_PI_2 * t).cos()).collect();
        let sin: Vec<f64> = t.iter().map(|t| (FRAC_PI_2 * t).sin()).collect();
        diffusion_core::tensor::lincomb(x0, &cos, x1, &sin)
    }
}

#[test]
fn a_user_interpolant_needs_only_its_formula() {
    let device = device();
    let dtype = best_dtype(&device);
    let n = 6;
    let x0 = SampleNoise::range(1, 0..n as u64).normal_tensor(n, 2, &device, dtype);
    let x1 = SampleNoise::range(2, 0..n as u64).normal_tensor(n, 2, &device, dtype);
    let t = vec![0.0, 0.1, 0.35, 0.5, 0.8, 1.0];
    let ours = diffusion_flow::interpolant_batch(&Arc, &t, x0.clone(), x1.clone());
    let trig = FlowMatcher {
        path: AffinePath::Trig,
        ..FlowMatcher::rectified()
    }
    .path_batch(&t, x0, x1, None);
    assert_dev("x_t", &to_f64(&ours.xt), &to_f64(&trig.xt), tol(dtype, 1e-15));
    // The central difference (h = 1e-4, one-sided at the ends) against the exact derivative.
    assert_dev(
        "u_t",
        &to_f64(&ours.ut),
        &to_f64(&trig.ut),
        if dtype == DType::F64 { 1e-4 } else { 1e-2 },
    );
}

#[test]
fn every_sampler_runs_on_a_velocity_model() {
    // A velocity network seen as a denoiser: the EDM Heun sampler and DPM-Solver++(2M) on the
    // oracle's velocity field give what they give on the oracle itself.
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let field = DenoiserVelocity {
        denoiser: &oracle,
        path: AffinePath::Linear,
    };
    let model = VelocityDenoiser {
        field: &field,
        path: AffinePath::Linear,
    };
    let grid = diffusion_schedules::SigmaGrid::karras(12, 0.01, 40.0, 7.0).unwrap();
    let samplers: Vec<Box<dyn diffusion_samplers::Sampler>> = vec![
        Box::new(diffusion_samplers::EdmSampler::new(
            grid.clone(),
            diffusion_samplers::OdeMethod::Heun,
        )),
        Box::new(diffusion_samplers::DpmMultistep::two_m(grid)),
    ];
    let n = 16;
    for sampler in samplers {
        let x = SampleNoise::range(8, 0..n as u64)
            .normal_tensor(n, 2, &device, dtype)
            .mul_scalar(sampler.init_noise_sigma());
        let a = sampler
            .sample(&oracle, x.clone(), &mut SampleNoise::range(9, 0..n as u64))
            .unwrap();
        let b = sampler
            .sample(&model, x, &mut SampleNoise::range(9, 0..n as u64))
            .unwrap();
        assert_dev("samples", &to_f64(&b.x), &to_f64(&a.x), tol(dtype, 1e-8));
    }
}

#[test]
fn hutchinson_flow_likelihoods_are_unbiased() {
    let device = device();
    let dtype = best_dtype(&device);
    let oracle = gmm2d();
    let field = DenoiserVelocity {
        denoiser: &oracle,
        path: AffinePath::Linear,
    };
    let k = if is_slow_backend() { 16 } else { 64 };
    let x = tensor2([0.9, -1.6].repeat(k), k, &device, dtype);
    let probe = diffusion_samplers::Probe::Rademacher.draw(&mut SampleNoise::range(4, 0..k as u64), &x);
    let solver = Dopri5 {
        rtol: 1e-5,
        atol: 1e-5,
        ..Dopri5::default()
    };
    let t1 = 1.0 - 1e-4;
    let hutch = diffusion_flow::HutchinsonVelocityDivergence { field: &field, probe };
    let est = flow_log_likelihood(&hutch, x.clone(), t1, &solver)
        .unwrap()
        .log_prob;
    let want = to_f64(&oracle.log_prob(x.slice([0..1, 0..2]), path_level(&AffinePath::Linear, t1)))[0];
    let (m, se) = mean_se(&est);
    assert!(
        (m - want).abs() < 4.0 * se + 1e-3,
        "Hutchinson {m} ± {se} vs exact {want}"
    );
}

/// A network as a velocity model `(x, t) ↦ v`.
fn call(m: &diffusion_backbones::Mlp) -> impl Fn(Tensor<2>, Tensor<1>) -> Tensor<2> + '_ {
    move |x, t| m.forward(x, t)
}

/// SW₂ of Euler samples of `field` at several step counts.
fn euler_swd(field: &dyn VelocityField, x0: &Tensor<2>, exact: &[f64], steps: &[usize]) -> Vec<f64> {
    steps
        .iter()
        .map(|&k| {
            sliced_wasserstein(
                &to_f64(&integrate_flow(field, x0.clone(), FixedStep::Euler, k)),
                exact,
                2,
                128,
                9,
            )
        })
        .collect()
}

#[test]
fn reflow_straightens_a_learned_flow_and_distillation_gives_one_step_samples() {
    use burn::module::Module;
    use diffusion_backbones::MlpConfig;
    use diffusion_train::{TrainConfig, train};
    if !diffusion_tests::run_training_tests() {
        return;
    }
    let device = device().autodiff();
    let dtype = DType::F32;
    let oracle = gmm2d();
    let (batch, steps) = (256, if is_slow_backend() { 300 } else { 1500 });
    let config = TrainConfig::new()
        .with_steps(steps)
        .with_lr(2e-3)
        .with_log_every(steps);
    let init = || {
        MlpConfig::new(2)
            .with_hidden(64)
            .with_blocks(2)
            .with_time_scale(1000.0)
            .init(&device)
    };
    let matcher = FlowMatcher::rectified();
    // 1-rectified flow: independent pairs of noise and data.
    let (flow1, _) = train(
        init(),
        &config,
        |m, k| {
            let x1 = tensor2(
                oracle.sample_host(1000 + k as u64, 0..batch as u64),
                batch,
                &device,
                dtype,
            );
            let mut noise = SampleNoise::range(2000 + k as u64, 0..batch as u64);
            let x0 = noise.normal_tensor(batch, 2, &device, dtype);
            let t = noise.uniform(1);
            let b = matcher.path_batch(&t, x0, x1, None);
            cfm_loss(&call(m), &b).mean()
        },
        |_| {},
    )
    .unwrap();
    let (flow1_train, flow1) = (flow1.clone(), flow1.valid());
    let plain = device.clone().without_autodiff();
    let n = 2000;
    let x0 = SampleNoise::range(77, 0..n as u64).normal_tensor(n, 2, &plain, dtype);
    let exact = oracle.sample_host(78, 0..n as u64);
    let v1 = VelocityModel(call(&flow1));
    // Reflow: pairs from the 1-rectified flow, the 2-rectified flow trained on them (from the
    // 1-rectified weights, as Liu et al. do).
    let pool = 8192;
    let pairs_x0 = SampleNoise::range(3000, 0..pool as u64).normal_tensor(pool, 2, &plain, dtype);
    let pairs = ReflowPairs::generate(&v1, pairs_x0, FixedStep::Rk4, 50);
    let (p0, p1) = (to_f64(&pairs.x0), to_f64(&pairs.x1));
    let draw = |k: usize| {
        let idx: Vec<usize> = SampleNoise::range(4000 + k as u64, 0..batch as u64)
            .uniform(1)
            .iter()
            .map(|u| (u * pool as f64) as usize)
            .collect();
        let pick = |v: &[f64]| {
            idx.iter()
                .flat_map(|&i| [v[2 * i], v[2 * i + 1]])
                .collect::<Vec<f64>>()
        };
        (
            tensor2(pick(&p0), batch, &device, dtype),
            tensor2(pick(&p1), batch, &device, dtype),
        )
    };
    let (flow2, _) = train(
        flow1_train,
        &config,
        |m, k| {
            let (x0, x1) = draw(k);
            let t = SampleNoise::range(5000 + k as u64, 0..batch as u64).uniform(1);
            cfm_loss(&call(m), &matcher.path_batch(&t, x0, x1, None)).mean()
        },
        |_| {},
    )
    .unwrap();
    let (flow2_train, flow2) = (flow2.clone(), flow2.valid());
    let v2 = VelocityModel(call(&flow2));
    let (s1, s2) = (
        straightness(&v1, x0.clone(), 100),
        straightness(&v2, x0.clone(), 100),
    );
    let sw1 = euler_swd(&v1, &x0, &exact, &[1, 2, 10]);
    let sw2 = euler_swd(&v2, &x0, &exact, &[1, 2, 10]);
    eprintln!("straightness {s1:.4} → {s2:.4}; SW₂ at 1, 2, 10 Euler steps {sw1:.3?} → {sw2:.3?}");
    assert!(s2 < 0.5 * s1, "reflow should straighten: S = {s1:.4} → {s2:.4}");
    assert!(
        sw2[0] < 0.7 * sw1[0] && sw2[1] < sw1[1],
        "few-step samples should improve: {sw1:?} → {sw2:?}"
    );
    // Distillation of the 2-rectified flow into one step (pairs from it, loss at t = 0).
    let pairs2 = ReflowPairs::generate(&v2, pairs.x0.clone(), FixedStep::Rk4, 50);
    let (q0, q1) = (to_f64(&pairs2.x0), to_f64(&pairs2.x1));
    let distill_steps = steps / 3;
    let (student, _) = train(
        flow2_train,
        &TrainConfig::new()
            .with_steps(distill_steps)
            .with_lr(1e-3)
            .with_log_every(distill_steps),
        |m, k| {
            let idx: Vec<usize> = SampleNoise::range(6000 + k as u64, 0..batch as u64)
                .uniform(1)
                .iter()
                .map(|u| (u * pool as f64) as usize)
                .collect();
            let pick = |v: &[f64]| {
                idx.iter()
                    .flat_map(|&i| [v[2 * i], v[2 * i + 1]])
                    .collect::<Vec<f64>>()
            };
            let p = ReflowPairs {
                x0: tensor2(pick(&q0), batch, &device, dtype),
                x1: tensor2(pick(&q1), batch, &device, dtype),
            };
            distillation_loss(&call(m), &p).mean()
        },
        |_| {},
    )
    .unwrap();
    let student = student.valid();
    let held_out = SampleNoise::range(90, 0..n as u64).normal_tensor(n, 2, &plain, dtype);
    let target = ReflowPairs::generate(&v2, held_out, FixedStep::Rk4, 50);
    let before = distillation_loss(&call(&flow2), &target)
        .mean()
        .into_scalar::<f64>();
    let after = distillation_loss(&call(&student), &target)
        .mean()
        .into_scalar::<f64>();
    let one = euler_swd(&VelocityModel(call(&student)), &x0, &exact, &[1])[0];
    eprintln!("one-step error ‖x₀ + v(x₀, 0) − x₁‖² {before:.4} → {after:.4}; one-step SW₂ {one:.3}");
    assert!(
        after < 0.8 * before,
        "distillation should shrink the one-step error: {before} → {after}"
    );
    assert!(
        one < 1.05 * sw2[0],
        "one-step samples after distillation: {one} vs {}",
        sw2[0]
    );
}
