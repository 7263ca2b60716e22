//! diffusers' schedulers loaded from their own `scheduler_config.json`, against diffusers
//! 0.42 itself: every diffusers case of `samplers.json` (the Gaussian-mixture oracle as the
//! model, the same initial and injected noise, float64), and diffusers' own golden-value
//! tests (`diffusers_golden.json`).

use burn::tensor::{DType, Tensor};
use diffusion_core::tensor::{max_rel_deviation, to_f64};
use diffusion_samplers::{
    DiffusersScheduler, DiscreteModel, FlowConvention, FlowModel, ModelForm, SchedulerClass, StepOptions,
    TimestepInterpolation,
};
use diffusion_tests::{best_dtype, device, fixture, floats, gmm2d, matrix, replay, tensor2};
use serde_json::Value;

fn tolerance() -> f64 {
    if best_dtype(&device()) == DType::F64 {
        1e-7
    } else {
        1e-3
    }
}

/// Runs a diffusers fixture case through our loader and samplers.
fn run_case(case: &Value) -> (Vec<f64>, usize, Vec<f64>) {
    let device = device();
    let dtype = best_dtype(&device);
    let scheduler = DiffusersScheduler::from_value(case["config"].clone()).unwrap();
    let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
    let options = StepOptions {
        eta: case["step_kwargs"]["eta"].as_f64().unwrap_or(0.0),
        lms_order: case["step_kwargs"]["order"].as_u64().unwrap_or(4) as usize,
    };
    let plan = scheduler.plan(steps, options).unwrap();
    let gm = gmm2d();
    let schedule = scheduler.schedule().clone();
    let (z, n) = matrix(&case["z"]);
    let x = tensor2(z, n, &device, dtype).mul_scalar(plan.sampler.init_noise_sigma());
    let mut noise = replay(&case["noise"]);
    let out = match scheduler.model_form().unwrap() {
        ModelForm::Discrete(p) => {
            let model = gm.discrete_model(&schedule, p, TimestepInterpolation::Sigma);
            let denoiser = DiscreteModel::new(model, schedule.clone(), p);
            plan.sampler.sample(&denoiser, x, &mut noise).unwrap()
        }
        ModelForm::Flow => {
            let model = gm.velocity_model(FlowConvention::DataToNoise, 1000.0);
            let denoiser = FlowModel::new(model, FlowConvention::DataToNoise, 1000.0);
            plan.sampler.sample(&denoiser, x, &mut noise).unwrap()
        }
    };
    (to_f64(&out.x), out.nfe, plan.timesteps)
}

fn reference(case: &Value) -> Vec<f64> {
    let key = if best_dtype(&device()) == DType::F64 {
        "x_final"
    } else {
        "x_final_f32"
    };
    matrix(&case[key]).0
}

#[test]
fn every_diffusers_case_matches() {
    let all = fixture("samplers.json");
    let mut checked = 0;
    let mut worst = (0.0f64, String::new());
    for case in all["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if case["library"] != "diffusers" || name.contains("ddim_inverse") {
            continue;
        }
        if case["reference_nonfinite"].as_bool() == Some(true) {
            continue; // UniPC-bh1 to σ = 0: diffusers returns NaN (−∞·0), we return x₀.
        }
        if diffusion_tests::is_slow_backend() && case["num_inference_steps"].as_u64() == Some(1000) {
            continue;
        }
        let (x, nfe, timesteps) = run_case(case);
        assert_eq!(nfe, case["nfe"].as_u64().unwrap() as usize, "{name} NFE");
        let expected_ts = floats(&case["timesteps"]);
        assert_eq!(timesteps.len(), expected_ts.len(), "{name} timesteps");
        for (a, b) in timesteps.iter().zip(&expected_ts) {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{name} timesteps: {a} vs {b}"
            );
        }
        let dev = max_rel_deviation(&x, &reference(case));
        if dev > worst.0 {
            worst = (dev, name.to_string());
        }
        assert!(dev < tolerance(), "{name}: max relative deviation {dev:.2e}");
        checked += 1;
    }
    assert!(
        checked >= 70,
        "only {checked} diffusers cases checked (worst {worst:?})"
    );
}

#[test]
fn unipc_bh1_to_zero_returns_the_denoised_sample() {
    // diffusers' last bh1 step multiplies B(h) = −∞ by 0 and returns NaN; every step before
    // agrees with it, and our last step returns x̂₀.
    let all = fixture("samplers.json");
    for case in all["cases"].as_array().unwrap() {
        if case["reference_nonfinite"].as_bool() != Some(true) {
            continue;
        }
        let (x, _, _) = run_case(case);
        assert!(x.iter().all(|v| v.is_finite()), "{}", case["name"]);
        let trajectory = case["trajectory"].as_array().unwrap();
        assert!(
            matrix(&trajectory[trajectory.len() - 2])
                .0
                .iter()
                .all(|v| v.is_finite())
        );
    }
}

#[test]
fn ddim_inversion_and_reconstruction_match() {
    let device = device();
    let dtype = best_dtype(&device);
    let gm = gmm2d();
    let all = fixture("samplers.json");
    for case in all["cases"].as_array().unwrap() {
        if !case["name"].as_str().unwrap().contains("ddim_inverse") {
            continue;
        }
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let inverse = DiffusersScheduler::from_value(case["config_inverse"].clone()).unwrap();
        assert_eq!(inverse.class(), SchedulerClass::DdimInverse);
        let plan = inverse.plan(steps, StepOptions::default()).unwrap();
        assert_eq!(plan.timesteps, floats(&case["timesteps_inverse"]));
        let schedule = inverse.schedule().clone();
        let model = gm.discrete_model(
            &schedule,
            diffusion_ddpm::Prediction::Epsilon,
            TimestepInterpolation::Sigma,
        );
        let denoiser = DiscreteModel::new(model, schedule.clone(), diffusion_ddpm::Prediction::Epsilon);
        let (x0, n) = matrix(&case["x0"]);
        let none = || replay(&Value::Null);
        let inverted = plan
            .sampler
            .sample(&denoiser, tensor2(x0, n, &device, dtype), &mut none())
            .unwrap();
        let key = if dtype == DType::F64 {
            "inverted"
        } else {
            "inverted_f32"
        };
        let dev = max_rel_deviation(&to_f64(&inverted.x), &matrix(&case[key]).0);
        assert!(dev < tolerance(), "{} inversion: {dev:.2e}", case["name"]);
        let forward = DiffusersScheduler::from_value(case["config"].clone()).unwrap();
        let back = forward.plan(steps, StepOptions::default()).unwrap();
        let out = back.sampler.sample(&denoiser, inverted.x, &mut none()).unwrap();
        let dev = max_rel_deviation(&to_f64(&out.x), &reference(case));
        assert!(dev < tolerance(), "{} reconstruction: {dev:.2e}", case["name"]);
    }
}

#[test]
fn schedule_fixture_grids_match_through_the_loader() {
    // The Euler-family grids with Karras / log-linear / zero-SNR and PNDM's PRK/PLMS lists.
    let all = fixture("schedules.json");
    let mut checked = 0;
    for case in all["timesteps"].as_array().unwrap() {
        let class = case["scheduler"].as_str().unwrap();
        if class != "EulerDiscreteScheduler" && class != "PNDMScheduler" {
            continue;
        }
        let mut config = case["config"].clone();
        config["_class_name"] = Value::String(class.into());
        let scheduler = DiffusersScheduler::from_value(config).unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let plan = scheduler.plan(steps, StepOptions::default()).unwrap();
        let what = format!("{class} {}", case["config"]);
        let expected = floats(&case["timesteps"]);
        assert_eq!(plan.timesteps.len(), expected.len(), "{what}");
        for (a, b) in plan.timesteps.iter().zip(&expected) {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{what}: timesteps {a} vs {b}"
            );
        }
        if class == "EulerDiscreteScheduler" {
            let sigmas = plan.sigmas.unwrap();
            let reference = floats(&case["sigmas"]);
            assert_eq!(sigmas.len(), reference.len(), "{what}");
            assert!(max_rel_deviation(&sigmas, &reference) < 1e-12, "{what}: sigmas");
            let init = case["init_noise_sigma"].as_f64().unwrap();
            assert!(
                (plan.init_noise_sigma - init).abs() <= 1e-12 * init,
                "{what}: init {} vs {init}",
                plan.init_noise_sigma
            );
        }
        checked += 1;
    }
    assert!(checked >= 40, "{checked}");
}

#[test]
fn golden_values_of_diffusers_tests() {
    // diffusers' own full-loop tests: the dummy model sample·t/(t + 1) on a deterministic
    // sample, driven like a pipeline (the cases whose loop feeds the step its own state).
    let device = device();
    let dtype = best_dtype(&device);
    let golden = fixture("diffusers_golden.json");
    let mut checked = 0;
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let plain = matches!(case["loop"].as_str(), Some("plain" | "pndm_prk_plms"));
        if !plain || case["x_final"].is_null() || case["add_noise"].is_object() || !case["noise"].is_null() {
            continue;
        }
        let mut config = case["config_full"].clone();
        if config.is_string() {
            config = serde_json::from_str(config.as_str().unwrap()).unwrap();
        }
        let Ok(scheduler) = DiffusersScheduler::from_value(config) else {
            panic!("{name}: config not loaded");
        };
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let options = StepOptions {
            eta: case["step_args"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            lms_order: 4,
        };
        let plan = scheduler.plan(steps, options).unwrap();
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let rows = shape[0];
        let sample_key = if shape.len() == 4 { "4d" } else { "3d" };
        let values = floats(&golden["dummy_sample_deter"][sample_key]["values"]);
        let x = tensor2(values, rows, &device, dtype).mul_scalar(plan.sampler.init_noise_sigma());
        // The dummy "ε" model: sample · t/(t + 1), with t the scheduler's timestep.
        let dummy = |x: Tensor<2>, t: Tensor<1>| {
            let t = to_f64(&t)[0];
            x.mul_scalar(t / (t + 1.0))
        };
        let prediction = match scheduler.model_form().unwrap() {
            ModelForm::Discrete(p) => p,
            ModelForm::Flow => diffusion_ddpm::Prediction::Epsilon,
        };
        let out = if scheduler.class() == SchedulerClass::FlowMatchEuler {
            let model = FlowModel::new(dummy, FlowConvention::DataToNoise, 1000.0);
            plan.sampler.sample(&model, x, &mut replay(&Value::Null)).unwrap()
        } else {
            let model = DiscreteModel::new(dummy, scheduler.schedule().clone(), prediction);
            plan.sampler.sample(&model, x, &mut replay(&Value::Null)).unwrap()
        };
        let ours = to_f64(&out.x);
        let dev = max_rel_deviation(&ours, &floats(&case["x_final"]));
        assert!(
            dev < if dtype == DType::F64 { 1e-9 } else { 1e-4 },
            "{name}: {dev:.2e}"
        );
        if let Some(expected) = case["expected"]["mean"].as_f64() {
            let mean = ours.iter().map(|v| v.abs()).sum::<f64>() / ours.len() as f64;
            let tol = case["expected"]["mean_tol"].as_f64().unwrap_or(1e-3);
            assert!(
                (mean - expected).abs() <= tol,
                "{name}: mean |x| {mean} vs diffusers' {expected}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} golden cases");
}
