//! DDPM and DDIM against diffusers 0.42 itself: the same Gaussian-mixture oracle as the
//! model, the same initial noise and the same injected noise, run in float64
//! (`scripts/fixtures/samplers.py`). Steps are built here from the scheduler's rules:
//! DDPM steps to the next timestep of its list, DDIM to t − T div N with
//! `final_alpha_cumprod` past 0.

use burn::tensor::DType;
use diffusion_core::tensor::{max_rel_deviation, to_f64};
use diffusion_ddpm::Prediction;
use diffusion_samplers::{Ddim, Ddpm, DiscreteModel, Sampler, TimestepInterpolation, VarianceType, VpStep};
use diffusion_schedules::DiscreteSchedule;
use diffusion_tests::{best_dtype, device, fixture, floats, gmm2d, matrix, replay, tensor2};
use serde_json::Value;

fn schedule(config: &Value) -> DiscreteSchedule {
    let s = DiscreteSchedule::linear(
        config["num_train_timesteps"].as_u64().unwrap() as usize,
        config["beta_start"].as_f64().unwrap(),
        config["beta_end"].as_f64().unwrap(),
    )
    .unwrap();
    if config["rescale_betas_zero_snr"].as_bool().unwrap_or(false) {
        s.rescale_zero_terminal_snr().unwrap()
    } else {
        s
    }
}

fn prediction(config: &Value) -> Prediction {
    config["prediction_type"].as_str().unwrap().parse().unwrap()
}

/// Runs one case on the backend under test and returns (max relative deviation from the
/// reference, the reference used, NFE, whether the noise was fully consumed).
fn run_case(
    case: &Value,
    build: impl Fn(&DiscreteSchedule, &[f64], &Value) -> Box<dyn Sampler>,
) -> (f64, usize) {
    let device = device();
    let dtype = best_dtype(&device);
    let config = &case["config"];
    let schedule = schedule(config);
    let gm = gmm2d();
    let model = gm.discrete_model(&schedule, prediction(config), TimestepInterpolation::Sigma);
    let denoiser = DiscreteModel::new(model, schedule.clone(), prediction(config));
    let timesteps = floats(&case["timesteps"]);
    let sampler = build(&schedule, &timesteps, case);
    let (z, n) = matrix(&case["z"]);
    let x = tensor2(z, n, &device, dtype).mul_scalar(sampler.init_noise_sigma());
    let mut noise = replay(&case["noise"]);
    let out = sampler.sample(&denoiser, x, &mut noise).unwrap();
    let reference = if dtype == DType::F64 {
        &case["x_final"]
    } else {
        &case["x_final_f32"]
    };
    let dev = max_rel_deviation(&to_f64(&out.x), &matrix(reference).0);
    assert_eq!(
        out.nfe,
        case["nfe"].as_u64().unwrap() as usize,
        "{} NFE",
        case["name"]
    );
    (dev, out.nfe)
}

fn tolerance() -> f64 {
    if best_dtype(&device()) == DType::F64 {
        1e-7
    } else {
        1e-3
    }
}

fn ddpm_steps(schedule: &DiscreteSchedule, timesteps: &[f64]) -> Vec<VpStep> {
    let ab = schedule.alphas_cumprod();
    timesteps
        .iter()
        .enumerate()
        .map(|(i, &t)| VpStep {
            timestep: t,
            alpha_bar: ab[t as usize],
            alpha_bar_prev: timesteps.get(i + 1).map(|&p| ab[p as usize]).unwrap_or(1.0),
            // diffusers adds noise whenever t > 0.
            add_noise: t > 0.0,
        })
        .collect()
}

fn ddim_steps(schedule: &DiscreteSchedule, timesteps: &[f64], config: &Value) -> Vec<VpStep> {
    let ab = schedule.alphas_cumprod();
    let ratio = (schedule.len() / timesteps.len()) as i64;
    let final_ab = if config["set_alpha_to_one"].as_bool().unwrap() {
        1.0
    } else {
        ab[0]
    };
    timesteps
        .iter()
        .map(|&t| {
            let prev = t as i64 - ratio;
            VpStep {
                timestep: t,
                alpha_bar: ab[t as usize],
                alpha_bar_prev: if prev >= 0 { ab[prev as usize] } else { final_ab },
                add_noise: true,
            }
        })
        .collect()
}

fn cases(prefix: &str) -> Vec<Value> {
    fixture("samplers.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with(prefix))
        .cloned()
        .collect()
}

#[test]
fn ddpm_matches_diffusers() {
    let cases = cases("diffusers/ddpm/");
    assert!(cases.len() >= 13, "{} DDPM cases", cases.len());
    for case in &cases {
        if diffusion_tests::is_slow_backend() && case["num_inference_steps"].as_u64() == Some(1000) {
            continue;
        }
        let (dev, _) = run_case(case, |schedule, timesteps, case| {
            let config = &case["config"];
            Box::new(Ddpm {
                steps: ddpm_steps(schedule, timesteps),
                variance: serde_json::from_value::<VarianceType>(config["variance_type"].clone()).unwrap(),
                clip_sample: config["clip_sample"].as_bool().unwrap().then(|| {
                    diffusion_ddpm::X0Clip::Static {
                        range: config["clip_sample_range"].as_f64().unwrap(),
                    }
                }),
            })
        });
        assert!(
            dev < tolerance(),
            "{}: max relative deviation {dev:.2e}",
            case["name"]
        );
    }
}

#[test]
fn ddim_matches_diffusers() {
    let cases = cases("diffusers/ddim/");
    assert!(cases.len() >= 18, "{} DDIM cases", cases.len());
    for case in &cases {
        let (dev, _) = run_case(case, |schedule, timesteps, case| {
            let eta = case["step_kwargs"]["eta"].as_f64().unwrap_or(0.0);
            Box::new(Ddim::new(ddim_steps(schedule, timesteps, &case["config"]), eta))
        });
        assert!(
            dev < tolerance(),
            "{}: max relative deviation {dev:.2e}",
            case["name"]
        );
    }
}
