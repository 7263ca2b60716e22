//! The σ-grid samplers against k-diffusion 0.1.1 itself: the Gaussian-mixture oracle as the
//! model, the same σ grid, initial noise and injected noise, in float64
//! (`scripts/fixtures/samplers.py`).

use burn::tensor::DType;
use diffusion_core::tensor::{max_rel_deviation, to_f64};
use diffusion_ddpm::Prediction;
use diffusion_samplers::{
    AncestralSampler, Churn, DiscreteModel, DpmMultistep, DpmSolverAdaptive, DpmSolverFast, EdmSampler, Lms,
    OdeMethod, Sampler, SolverType, TimestepInterpolation, VeGrid,
};
use diffusion_schedules::{DiscreteSchedule, SigmaGrid};
use diffusion_tests::{best_dtype, device, fixture, floats, gmm2d, matrix, replay, tensor2};
use serde_json::Value;

fn cases(prefix: &str) -> Vec<Value> {
    fixture("samplers.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with(prefix))
        .cloned()
        .collect()
}

fn grid(case: &Value) -> VeGrid {
    VeGrid::new(SigmaGrid::new(floats(&case["sigmas"])).unwrap())
}

fn kwarg(case: &Value, key: &str, default: f64) -> f64 {
    case["kwargs"][key].as_f64().unwrap_or(default)
}

/// The sampler a k-diffusion case names.
fn sampler_for(case: &Value) -> Box<dyn Sampler> {
    let name = case["name"].as_str().unwrap();
    let family = name.split('/').nth(1).unwrap();
    match family {
        "euler" => Box::new(EdmSampler::new(grid(case), OdeMethod::Euler)),
        "heun" => Box::new(EdmSampler::new(grid(case), OdeMethod::Heun)),
        "heun_churn" => Box::new(EdmSampler::new(grid(case), OdeMethod::Heun).with_churn(Churn {
            s_churn: kwarg(case, "s_churn", 0.0),
            s_tmin: kwarg(case, "s_tmin", 0.0),
            s_tmax: kwarg(case, "s_tmax", f64::INFINITY),
            s_noise: kwarg(case, "s_noise", 1.0),
        })),
        "dpm_2" => Box::new(EdmSampler::new(grid(case), OdeMethod::Dpm2)),
        "euler_ancestral" => {
            Box::new(AncestralSampler::new(grid(case), OdeMethod::Euler).with_eta(kwarg(case, "eta", 1.0)))
        }
        "dpm_2_ancestral" => {
            Box::new(AncestralSampler::new(grid(case), OdeMethod::Dpm2).with_eta(kwarg(case, "eta", 1.0)))
        }
        "dpmpp_2s_ancestral" => Box::new(
            AncestralSampler::new(grid(case), OdeMethod::DpmppTwoS).with_eta(kwarg(case, "eta", 1.0)),
        ),
        "lms" => Box::new(Lms::new(grid(case), kwarg(case, "order", 4.0) as usize)),
        "dpmpp_2m" => Box::new(DpmMultistep::two_m(grid(case))),
        "dpmpp_2m_sde_midpoint" => Box::new(DpmMultistep::two_m_sde(grid(case), SolverType::Midpoint)),
        "dpmpp_2m_sde_heun" => Box::new(DpmMultistep::two_m_sde(grid(case), SolverType::Heun)),
        "dpmpp_3m_sde" => Box::new(DpmMultistep::three_m_sde(grid(case))),
        "dpm_fast" => Box::new(DpmSolverFast::new(
            kwarg(case, "sigma_min", 0.0),
            kwarg(case, "sigma_max", 0.0),
            kwarg(case, "n", 0.0) as usize,
        )),
        "dpm_adaptive" => Box::new(DpmSolverAdaptive {
            order: kwarg(case, "order", 3.0) as usize,
            rtol: kwarg(case, "rtol", 0.05),
            atol: kwarg(case, "atol", 0.0078),
            ..DpmSolverAdaptive::new(kwarg(case, "sigma_min", 0.0), kwarg(case, "sigma_max", 0.0))
        }),
        other => panic!("no sampler for k-diffusion case family {other}"),
    }
}

/// Runs a case with the oracle as the VE denoiser; returns the max relative deviation.
fn deviation(case: &Value) -> f64 {
    let device = device();
    let dtype = best_dtype(&device);
    let sampler = sampler_for(case);
    let (z, n) = matrix(&case["z"]);
    let init = case["init_noise_sigma"].as_f64().unwrap();
    assert!(
        (sampler.init_noise_sigma() - init).abs() <= 1e-12 * init,
        "{}",
        case["name"]
    );
    let x = tensor2(z, n, &device, dtype).mul_scalar(init);
    let mut noise = replay(&case["noise"]);
    let gm = gmm2d();
    let out = sampler.sample(&gm, x, &mut noise).unwrap();
    assert_eq!(
        out.nfe,
        case["nfe"].as_u64().unwrap() as usize,
        "{} NFE",
        case["name"]
    );
    assert_eq!(
        noise.consumed(),
        noise.len(),
        "{} consumed {} of {} noise draws",
        case["name"],
        noise.consumed(),
        noise.len()
    );
    max_rel_deviation(&to_f64(&out.x), &matrix(&case["x_final"]).0)
}

fn tolerance() -> f64 {
    // f64 against k-diffusion's float64 run; f32 against the same float64 reference.
    if best_dtype(&device()) == DType::F64 {
        1e-7
    } else {
        2e-3
    }
}

#[test]
fn sigma_grid_samplers_match_k_diffusion() {
    let all = cases("k-diffusion/");
    let mut checked = 0;
    for case in &all {
        let name = case["name"].as_str().unwrap();
        if name.contains("discrete_eps_ddpm") {
            continue;
        }
        let dev = deviation(case);
        assert!(dev < tolerance(), "{name}: max relative deviation {dev:.2e}");
        checked += 1;
    }
    assert!(checked >= 38, "only {checked} k-diffusion cases");
}

#[test]
fn discrete_eps_model_matches_k_diffusion() {
    // k-diffusion's DiscreteEpsDDPMDenoiser: the ε-model is called at t = sigma_to_t(σ)
    // (fractional, or rounded with quantize), with input x/√(σ² + 1).
    let device = device();
    let dtype = best_dtype(&device);
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let gm = gmm2d();
    for case in cases("k-diffusion/discrete_eps_ddpm/") {
        let quantize = case["quantize"].as_bool().unwrap();
        assert!((schedule.sigma_min() - case["model_sigma_min"].as_f64().unwrap()).abs() < 1e-15);
        let model = gm.discrete_model(&schedule, Prediction::Epsilon, TimestepInterpolation::LogSigma);
        let denoiser = DiscreteModel::new(model, schedule.clone(), Prediction::Epsilon).quantized(quantize);
        let sampler = EdmSampler::new(grid(&case), OdeMethod::Euler);
        let (z, n) = matrix(&case["z"]);
        let x = tensor2(z, n, &device, dtype).mul_scalar(sampler.init_noise_sigma());
        let out = sampler.sample(&denoiser, x, &mut replay(&case["noise"])).unwrap();
        let dev = max_rel_deviation(&to_f64(&out.x), &matrix(&case["x_final"]).0);
        assert!(dev < tolerance(), "{}: {dev:.2e}", case["name"]);
    }
}

#[test]
fn per_sample_adaptive_does_not_depend_on_the_batch() {
    let device = device();
    let dtype = best_dtype(&device);
    let gm = gmm2d();
    let sampler = DpmSolverAdaptive {
        per_sample: true,
        ..DpmSolverAdaptive::new(0.01, 80.0)
    };
    let z = diffusion_core::noise::NoiseSource::normal(
        &mut diffusion_core::noise::SampleNoise::range(4, 0..6),
        6,
        2,
    );
    let run = |rows: std::ops::Range<usize>| {
        let x = tensor2(
            z[rows.start * 2..rows.end * 2].to_vec(),
            rows.len(),
            &device,
            dtype,
        )
        .mul_scalar(80.0);
        to_f64(&sampler.sample(&gm, x, &mut replay(&Value::Null)).unwrap().x)
    };
    let all = run(0..6);
    let last = run(5..6);
    assert_eq!(&all[10..12], &last[..]);
}

/// EDM's preconditioned denoiser and loss against k-diffusion's `layers.Denoiser`
/// (`scripts/fixtures/edm.py`): the same inner network F(c_in x, c_noise) with c_noise = ¼ ln σ,
/// the same x, σ and noise.
#[test]
fn edm_preconditioning_matches_k_diffusion_denoiser() {
    use burn::tensor::Tensor;
    use diffusion_core::tensor::from_f64_like;
    use diffusion_samplers::{Denoiser, EdmDenoiser, EdmLoss, EdmPreconditioning, NoiseLevel};
    let f = fixture("edm.json");
    let device = device();
    let dtype = best_dtype(&device);
    let (w, d) = matrix(&f["w"]);
    let b = floats(&f["b"]);
    // F(u, c) = tanh(u W + c b).
    let net = |u: Tensor<2>, c: Tensor<1>| {
        let n = u.dims()[0];
        let wt = from_f64_like(w.clone(), [d, d], &u);
        let bt = from_f64_like(b.clone(), [1, d], &u);
        (u.matmul(wt) + c.reshape([n, 1]) * bt).tanh()
    };
    let precond = EdmPreconditioning { sigma_data: 0.5 };
    let sigmas = floats(&f["sigma"]);
    for (i, &s) in sigmas.iter().enumerate() {
        let (skip, out, input, noise_cond) = precond.coefficients(s);
        let expected = [
            f["c_skip"][i].as_f64().unwrap(),
            f["c_out"][i].as_f64().unwrap(),
            f["c_in"][i].as_f64().unwrap(),
        ];
        for (ours, theirs) in [skip, out, input].iter().zip(expected) {
            assert!(
                (ours - theirs).abs() <= 1e-15 * theirs.abs().max(1.0),
                "σ = {s}: {ours} vs {theirs}"
            );
        }
        assert_eq!(noise_cond, s.ln() / 4.0);
    }
    let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
    let (x, n) = matrix(&f["x"]);
    let denoiser = EdmDenoiser { net, precond };
    for (i, &s) in sigmas.iter().enumerate() {
        let row = tensor2(x[i * d..(i + 1) * d].to_vec(), 1, &device, dtype);
        let ours = to_f64(&denoiser.denoise(row, NoiseLevel::ve(s)));
        let theirs = matrix(&f["denoised"]).0[i * d..(i + 1) * d].to_vec();
        assert!(
            max_rel_deviation(&ours, &theirs) < tol,
            "σ = {s}: {ours:?} vs {theirs:?}"
        );
    }
    // The λ(σ)-weighted D-space loss equals k-diffusion's F-space loss (weighting "karras").
    let loss = EdmLoss::default();
    let ours = to_f64(&loss.loss(
        &denoiser.net,
        tensor2(x.clone(), n, &device, dtype),
        &sigmas,
        tensor2(matrix(&f["noise"]).0, n, &device, dtype),
    ))[0];
    let theirs = floats(&f["loss_per_sample"]).iter().sum::<f64>() / n as f64;
    assert!(
        (ours - theirs).abs() < 1e3 * tol * theirs,
        "loss {ours} vs {theirs}"
    );
    assert_eq!(loss.sigmas(&[0.0, 1.0]), vec![(-1.2f64).exp(), 0.0f64.exp()]);
}
