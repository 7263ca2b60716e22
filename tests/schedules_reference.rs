//! Schedules against numbers produced by diffusers 0.42 and k-diffusion 0.1.1 themselves
//! (`scripts/fixtures/schedules.py`, run in float64 by upcasting the libraries' float32).

use diffusion_schedules::{
    BetaSchedule, DiscreteSchedule, SigmaGrid, TimestepSpacing, flow_match_sigmas, timesteps,
    timesteps_fractional,
};
use diffusion_tests::{assert_close, fixture, floats};
use serde_json::Value;

/// f64 agreement: a few ulps over a 1000-step cumulative product.
const F64_TOL: f64 = 1e-12;
/// β recovered from ᾱ as 1 − ᾱ_t/ᾱ_{t−1} (zero-SNR rescale): the subtraction from 1 turns
/// ulp differences of ᾱ into ~1e-12 relative differences of small βs.
const BETA_FROM_RATIO_TOL: f64 = 1e-11;

fn schedule_from_config(config: &Value) -> DiscreteSchedule {
    let t = config["num_train_timesteps"].as_u64().unwrap() as usize;
    let start = config["beta_start"].as_f64().unwrap();
    let end = config["beta_end"].as_f64().unwrap();
    let kind = match config["beta_schedule"].as_str().unwrap() {
        "linear" => BetaSchedule::Linear { start, end },
        "scaled_linear" => BetaSchedule::ScaledLinear { start, end },
        "squaredcos_cap_v2" => BetaSchedule::cosine(),
        "sigmoid" => BetaSchedule::Sigmoid { start, end },
        other => panic!("unknown beta_schedule {other}"),
    };
    let s = DiscreteSchedule::new(&kind, t).unwrap();
    if config["rescale_betas_zero_snr"].as_bool().unwrap_or(false) {
        s.rescale_zero_terminal_snr().unwrap()
    } else {
        s
    }
}

fn discrete_case(name: &str) -> DiscreteSchedule {
    let all = fixture("schedules.json");
    let case = all["discrete"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no discrete case {name}"));
    schedule_from_config(&case["config"])
}

#[test]
fn beta_tables_match_diffusers() {
    let all = fixture("schedules.json");
    let cases = all["discrete"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let ours = schedule_from_config(&case["config"]);
        let beta_tol = if name.contains("zsnr") {
            BETA_FROM_RATIO_TOL
        } else {
            F64_TOL
        };
        assert_close(
            &format!("{name} betas"),
            ours.betas(),
            &floats(&case["f64"]["betas"]),
            beta_tol,
        );
        assert_close(
            &format!("{name} alphas_cumprod"),
            ours.alphas_cumprod(),
            &floats(&case["f64"]["alphas_cumprod"]),
            F64_TOL,
        );
        // diffusers' own float32 tables agree to float32 accuracy, accumulated over the
        // cumulative product (the zero-SNR rescale amplifies float32 error near t = 0).
        let f32_tol = if name.contains("zsnr") { 5e-4 } else { 5e-5 };
        assert_close(
            &format!("{name} alphas_cumprod vs float32"),
            ours.alphas_cumprod(),
            &floats(&case["f32"]["alphas_cumprod"]),
            f32_tol,
        );
    }
}

#[test]
fn zero_snr_rescale_matches_diffusers_function() {
    let all = fixture("schedules.json");
    for case in all["zero_snr"].as_array().unwrap() {
        let from = case["from"].as_str().unwrap();
        let ours = discrete_case(from).rescale_zero_terminal_snr().unwrap();
        let reference = floats(&case["betas"]);
        assert_close(
            &format!("zero-SNR {from}"),
            ours.betas(),
            &reference,
            BETA_FROM_RATIO_TOL,
        );
        assert_eq!(*reference.last().unwrap(), 1.0);
        assert_eq!(*ours.alphas_cumprod().last().unwrap(), 0.0);
    }
}

#[test]
fn inference_timesteps_match_diffusers() {
    let all = fixture("schedules.json");
    let mut checked = 0;
    for case in all["timesteps"].as_array().unwrap() {
        let scheduler = case["scheduler"].as_str().unwrap();
        let config = &case["config"];
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let t_len = config["num_train_timesteps"].as_u64().unwrap() as usize;
        let spacing: TimestepSpacing = config["timestep_spacing"].as_str().unwrap().parse().unwrap();
        let offset = config["steps_offset"].as_u64().unwrap_or(0) as usize;
        let what = format!("{scheduler} {spacing:?} offset {offset} N {n}");
        match scheduler {
            "DDIMScheduler" | "DDPMScheduler" => {
                let ours: Vec<f64> = timesteps(t_len, n, spacing, offset)
                    .unwrap()
                    .into_iter()
                    .map(|t| t as f64)
                    .collect();
                assert_eq!(ours, floats(&case["timesteps"]), "{what}");
            }
            "EulerDiscreteScheduler" => {
                let plain = config["interpolation_type"].as_str().unwrap_or("linear") == "linear"
                    && !config["use_karras_sigmas"].as_bool().unwrap_or(false)
                    && !config["rescale_betas_zero_snr"].as_bool().unwrap_or(false);
                if !plain {
                    continue; // Karras / log-linear / zero-SNR Euler grids: tested with the samplers.
                }
                let ours = timesteps_fractional(t_len, n, spacing, offset).unwrap();
                assert_close(&what, &ours, &floats(&case["timesteps"]), F64_TOL);
                // σ at the (fractional) timesteps: linear interpolation of the σ table in t.
                let schedule = schedule_from_config(config);
                let mut sigmas: Vec<f64> = ours.iter().map(|&t| schedule.t_to_sigma_linear(t)).collect();
                sigmas.push(0.0);
                assert_close(
                    &format!("{what} sigmas"),
                    &sigmas,
                    &floats(&case["sigmas"]),
                    F64_TOL,
                );
                // init_noise_sigma: σ_max for linspace/trailing, √(σ_max² + 1) for leading.
                let top = sigmas.iter().cloned().fold(0.0, f64::max);
                let init = if spacing == TimestepSpacing::Leading {
                    (top * top + 1.0).sqrt()
                } else {
                    top
                };
                let reference = case["init_noise_sigma"].as_f64().unwrap();
                assert!(
                    (init - reference).abs() <= F64_TOL * reference,
                    "{what}: {init} vs {reference}"
                );
            }
            _ => continue, // PNDM's PLMS/PRK timesteps: tested with the samplers.
        }
        checked += 1;
    }
    assert!(checked > 80, "only {checked} timestep cases checked");
}

#[test]
fn leading_spacing_does_not_reach_the_last_timestep() {
    for n in [10, 25, 50, 100, 250] {
        let t = timesteps(1000, n, TimestepSpacing::Leading, 0).unwrap();
        assert!(t[0] < 999, "N = {n}: {t:?}");
        let t = timesteps(1000, n, TimestepSpacing::Trailing, 0).unwrap();
        assert_eq!(t[0], 999);
    }
}

#[test]
fn k_diffusion_grids_match() {
    let all = fixture("schedules.json");
    let num = |c: &Value, k: &str| c[k].as_f64().unwrap();
    for case in all["karras"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let g = SigmaGrid::karras(
            n,
            num(case, "sigma_min"),
            num(case, "sigma_max"),
            num(case, "rho"),
        )
        .unwrap();
        assert_close(
            &format!("karras {case}"),
            g.sigmas(),
            &floats(&case["sigmas"]),
            F64_TOL,
        );
    }
    for case in all["exponential"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let g = SigmaGrid::exponential(n, num(case, "sigma_min"), num(case, "sigma_max")).unwrap();
        assert_close("exponential", g.sigmas(), &floats(&case["sigmas"]), F64_TOL);
    }
    for case in all["polyexponential"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let g = SigmaGrid::polyexponential(
            n,
            num(case, "sigma_min"),
            num(case, "sigma_max"),
            num(case, "rho"),
        )
        .unwrap();
        assert_close("polyexponential", g.sigmas(), &floats(&case["sigmas"]), F64_TOL);
    }
    for case in all["vp"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let g = SigmaGrid::vp(n, num(case, "beta_d"), num(case, "beta_min"), num(case, "eps_s")).unwrap();
        // k-diffusion computes exp(x) − 1, which loses ~1e-11 to cancellation at the small-σ
        // end (x ≈ 1e-4); we use expm1, exact there.
        assert_close("vp", g.sigmas(), &floats(&case["sigmas"]), 1e-10);
    }
}

#[test]
fn sigma_to_t_matches_k_diffusion() {
    let all = fixture("schedules.json");
    for case in all["sigma_to_t"].as_array().unwrap() {
        let from = case["alphas_cumprod_from"].as_str().unwrap();
        let s = discrete_case(from);
        assert!((s.sigma_min() - case["table_sigma_min"].as_f64().unwrap()).abs() < 1e-15);
        let queries = floats(&case["sigmas"]);
        let ours: Vec<f64> = queries.iter().map(|&q| s.sigma_to_t(q)).collect();
        // k-diffusion interpolates in log σ; absolute error in t (timesteps up to 999).
        let reference = floats(&case["t"]);
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            assert!(
                (a - b).abs() < 1e-9,
                "{from} sigma_to_t({}) = {a}, k-diffusion {b}",
                queries[i]
            );
        }
        let quantized: Vec<f64> = queries
            .iter()
            .map(|&q| s.sigma_to_t_quantized(q) as f64)
            .collect();
        assert_eq!(quantized, floats(&case["t_quantized"]), "{from} quantized");
    }
    for case in all["t_to_sigma"].as_array().unwrap() {
        let s = discrete_case(case["alphas_cumprod_from"].as_str().unwrap());
        // k-diffusion casts t to float32 first (`t_used` is what it interpolated at) and then
        // forms the weight 1 − w in float32: its result carries float32 rounding of the
        // weight, ~1e-7 relative after exp.
        let ours: Vec<f64> = floats(&case["t_used"]).iter().map(|&t| s.t_to_sigma(t)).collect();
        assert_close("t_to_sigma", &ours, &floats(&case["sigma"]), 1e-6);
    }
}

#[test]
fn flow_match_grid_matches_diffusers() {
    let all = fixture("schedules.json");
    let mut checked = 0;
    for case in all["flow_match"].as_array().unwrap() {
        if !case["f64"].as_bool().unwrap() {
            continue;
        }
        let config = &case["config"];
        let (ts, sigmas) = flow_match_sigmas(
            config["num_train_timesteps"].as_u64().unwrap() as usize,
            case["num_inference_steps"].as_u64().unwrap() as usize,
            config["shift"].as_f64().unwrap(),
        )
        .unwrap();
        assert_close("flow-match timesteps", &ts, &floats(&case["timesteps"]), F64_TOL);
        assert_close("flow-match sigmas", &sigmas, &floats(&case["sigmas"]), F64_TOL);
        checked += 1;
    }
    assert!(checked >= 4);
}

#[test]
fn no_nan_near_zero_noise_or_zero_signal() {
    let zsnr = discrete_case("linear_zsnr_T1000");
    for t in [0.0, 0.25, 998.0, 998.999, 999.0] {
        assert!(!zsnr.t_to_sigma(t).is_nan(), "t_to_sigma({t})");
        assert!(!zsnr.t_to_sigma_linear(t).is_nan(), "t_to_sigma_linear({t})");
        assert!(!zsnr.alpha_bar_at(t).is_nan(), "alpha_bar_at({t})");
    }
    for sigma in [0.0, 1e-300, 1e-3, 1e3, 1e300, f64::INFINITY] {
        assert!(!zsnr.sigma_to_t(sigma).is_nan(), "sigma_to_t({sigma})");
    }
    assert_eq!(zsnr.alpha_bar_at(999.0), 0.0);
    let cos = discrete_case("squaredcos_cap_v2_T1000");
    assert!(cos.betas().iter().all(|b| *b > 0.0 && *b <= 0.999));
}
