//! The ODE integrators and the probability-flow ODE against closed-form solutions.

use burn::tensor::{DType, Tensor};
use diffusion_core::tensor::to_f64;
use diffusion_samplers::{
    Dopri5, FixedStep, FlowConvention, FlowTime, GaussianMixture, OdeSampler, OdeSystem, ProbabilityFlow,
    Sampler,
};
use diffusion_tests::{best_dtype, device, replay, tensor2};

/// x' = −x·t on [0, 2]: x(t) = x₀ e^{−t²/2}.
fn decay(x: Tensor<2>, t: f64) -> Tensor<2> {
    x.mul_scalar(-t)
}

#[test]
fn fixed_step_methods_converge_at_their_order() {
    let device = device();
    let dtype = best_dtype(&device);
    if dtype != DType::F64 {
        return; // convergence rates need f64 to be visible down to small errors
    }
    let exact = (-2.0f64).exp();
    for (method, order) in [
        (FixedStep::Euler, 1.0),
        (FixedStep::Midpoint, 2.0),
        (FixedStep::Heun, 2.0),
        (FixedStep::Rk4, 4.0),
    ] {
        let err = |n: usize| {
            let ts: Vec<f64> = (0..=n).map(|i| 2.0 * i as f64 / n as f64).collect();
            let x = method.integrate(&decay, tensor2(vec![1.0], 1, &device, dtype), &ts);
            (to_f64(&x)[0] - exact).abs()
        };
        let rate = (err(20) / err(40)).log2();
        assert!(
            (rate - order).abs() < 0.15,
            "{method:?}: observed order {rate:.3}"
        );
    }
}

#[test]
fn dopri5_meets_its_tolerance_and_counts_evaluations() {
    let device = device();
    let dtype = best_dtype(&device);
    let tol = if dtype == DType::F64 { 1e-8 } else { 1e-5 };
    let options = Dopri5 {
        rtol: tol,
        atol: tol,
        ..Dopri5::default()
    };
    let x0 = tensor2(vec![1.0, -2.0, 0.5, 3.0], 2, &device, dtype);
    let (x, stats) = options.integrate(&decay, x0.clone(), 0.0, 2.0).unwrap();
    let expect: Vec<f64> = [1.0, -2.0, 0.5, 3.0]
        .iter()
        .map(|v| v * (-2.0f64).exp())
        .collect();
    let got = to_f64(&x);
    for (a, b) in got.iter().zip(&expect) {
        assert!((a - b).abs() < 50.0 * tol, "{a} vs {b}");
    }
    assert_eq!(stats.nfe, 1 + 1 + 6 * (stats.accepted + stats.rejected));
    // Backwards integration recovers the start.
    let (back, _) = options.integrate(&decay, x, 2.0, 0.0).unwrap();
    for (a, b) in to_f64(&back).iter().zip(&to_f64(&x0)) {
        assert!((a - b).abs() < 100.0 * tol, "{a} vs {b}");
    }
    // An impossible budget is an error, not a silent result.
    let tight = Dopri5 {
        max_steps: 2,
        ..options
    };
    assert!(tight.integrate(&decay, x0, 0.0, 2.0).is_err());
}

/// A single Gaussian N(μ, s²): the VE probability-flow ODE has the exact solution
/// x(σ) = μ + (x(σ₀) − μ) √((s² + σ²)/(s² + σ₀²)).
fn gaussian() -> GaussianMixture {
    GaussianMixture::new(vec![1.0], vec![vec![0.7, -1.3]], vec![0.5]).unwrap()
}

#[test]
fn probability_flow_matches_the_gaussian_closed_form() {
    let device = device();
    let dtype = best_dtype(&device);
    let gm = gaussian();
    let (s0, s1): (f64, f64) = (40.0, 0.01);
    let x0 = [3.0, -20.0, -15.0, 8.0];
    let exact: Vec<f64> = x0
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mu = if i % 2 == 0 { 0.7 } else { -1.3 };
            mu + (v - mu) * ((0.25 + s1 * s1) / (0.25 + s0 * s0)).sqrt()
        })
        .collect();
    let tol = if dtype == DType::F64 { 1e-6 } else { 2e-3 };
    let options = Dopri5 {
        rtol: 1e-9,
        atol: 1e-9,
        ..Dopri5::default()
    };
    let sampler = OdeSampler::dopri5(FlowTime::VeSigma, options, s0, s1);
    let out = sampler
        .sample(
            &gm,
            tensor2(x0.to_vec(), 2, &device, dtype),
            &mut replay(&serde_json::Value::Null),
        )
        .unwrap();
    for (a, b) in to_f64(&out.x).iter().zip(&exact) {
        assert!((a - b).abs() < tol * (1.0 + b.abs()), "{a} vs {b}");
    }
    assert!(out.nfe > 10);
    // The same path in flow time: x₁ − x₀ moves along the straight line of the Gaussian.
    let f = ProbabilityFlow::new(&gm, FlowTime::Flow(FlowConvention::NoiseToData));
    let v = to_f64(&f.derivative(tensor2(vec![0.0, 0.0], 1, &device, dtype), 0.5));
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn flow_ode_in_both_conventions_is_the_same_path() {
    let device = device();
    let dtype = best_dtype(&device);
    let gm = gaussian();
    let z = tensor2(vec![0.3, -1.1, 2.0, 0.4], 2, &device, dtype);
    let n_steps = 50;
    let forward: Vec<f64> = (0..=n_steps).map(|i| i as f64 / n_steps as f64).collect();
    let backward: Vec<f64> = forward.iter().map(|t| 1.0 - t).collect();
    let a = OdeSampler::fixed(
        FlowTime::Flow(FlowConvention::NoiseToData),
        FixedStep::Rk4,
        forward,
    );
    let b = OdeSampler::fixed(
        FlowTime::Flow(FlowConvention::DataToNoise),
        FixedStep::Rk4,
        backward,
    );
    let none = || replay(&serde_json::Value::Null);
    let xa = to_f64(&a.sample(&gm, z.clone(), &mut none()).unwrap().x);
    let xb = to_f64(&b.sample(&gm, z, &mut none()).unwrap().x);
    let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
    for (p, q) in xa.iter().zip(&xb) {
        assert!((p - q).abs() < tol, "{p} vs {q}");
    }
    assert_eq!(a.init_noise_sigma(), 1.0);
    assert_eq!(b.init_noise_sigma(), 1.0);
}
