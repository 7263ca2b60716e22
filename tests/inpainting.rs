//! Inpainting and colourisation with an unconditional model: RePaint against diffusers'
//! `RePaintScheduler` (`scripts/fixtures/guidance.py`), and every method against the exact
//! conditional distribution of a Gaussian mixture given its known part.

use burn::tensor::{DType, Tensor};
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::tensor::{max_rel_deviation, to_f64};
use diffusion_ddpm::Prediction;
use diffusion_samplers::{
    DiscreteModel, GaussianMixture, KnownRegion, RePaint, Sampler, TimestepInterpolation, UndoRule,
};
use diffusion_schedules::DiscreteSchedule;
use diffusion_score::{ConditionalPc, PcSampler, Sde};
use diffusion_tests::{best_dtype, device, fixture, gmm2d, matrix, replay, tensor2};

fn f64_only() -> bool {
    best_dtype(&device()) == DType::F64
}

fn linear() -> DiscreteSchedule {
    DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap()
}

#[test]
fn repaint_reproduces_diffusers_repaint_pipeline() {
    let device = device();
    let dtype = best_dtype(&device);
    let cases = fixture("guidance.json");
    let m = gmm2d();
    let schedule = linear();
    let net = m.discrete_model(&schedule, Prediction::Epsilon, TimestepInterpolation::Sigma);
    let denoiser = DiscreteModel::new(net, schedule.clone(), Prediction::Epsilon);
    for case in cases["repaint"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (z, n) = matrix(&case["z"]);
        let (reference, _) = matrix(&case["original"]);
        let (mask, _) = matrix(&case["mask"]);
        let sampler = RePaint {
            schedule: schedule.clone(),
            num_inference_steps: case["num_inference_steps"].as_u64().unwrap() as usize,
            jump_length: case["jump_length"].as_u64().unwrap() as usize,
            jump_n_sample: case["jump_n_sample"].as_u64().unwrap() as usize,
            eta: case["config"]["eta"].as_f64().unwrap(),
            undo: UndoRule::Diffusers,
            region: KnownRegion::Mask(tensor2(mask, n, &device, dtype)),
            reference: tensor2(reference.clone(), n, &device, dtype),
        };
        let expected: Vec<usize> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(sampler.timesteps(), expected, "{name}: timesteps");
        let mut noise = replay(&case["noise"]);
        let out = sampler
            .sample(&denoiser, tensor2(z, n, &device, dtype), &mut noise)
            .unwrap();
        assert_eq!(
            noise.consumed(),
            case["noise"].as_array().unwrap().len(),
            "{name}: draws"
        );
        assert_eq!(out.nfe, case["nfe"].as_u64().unwrap() as usize, "{name}: NFE");
        let ours = to_f64(&out.x);
        let dev = max_rel_deviation(&ours, &matrix(&case["x_final"]).0);
        let tol = if f64_only() { 1e-9 } else { 1e-4 };
        assert!(dev < tol, "{name}: deviation {dev:.3e}");
        // The known coordinate is the reference's, exactly.
        for (row, r) in ours.chunks(2).zip(reference.chunks(2)) {
            assert!(
                (row[0] - r[0]).abs() <= if f64_only() { 0.0 } else { 1e-7 },
                "{name}: {row:?}"
            );
        }
    }
}

/// W₁ between two 1-D samples.
fn w1(a: &[f64], b: &[f64]) -> f64 {
    diffusion_metrics::wasserstein_1d_pow(a.to_vec(), b.to_vec(), 1.0)
}

fn column(rows: &[f64], d: usize, j: usize) -> Vec<f64> {
    rows.chunks(d).map(|r| r[j]).collect()
}

/// Coordinate 0 of the fixture mixture is known (1.2); given it, coordinate 1 is bimodal:
/// ≈ 0.45 N(1.5, 0.5²) + 0.55 N(−2, 0.2²).
const KNOWN: f64 = 1.2;

struct Inpainted {
    w1: f64,
    upper_mode: f64,
}

/// Inpaints coordinate 1 of `groups · k` rows with `sampler` and keeps one row per group of k
/// (for SMC, at a position independent of the values: after systematic resampling a fixed
/// position would favour low-index lineages). Compares with `exact`.
fn inpaint_2d(sampler: &dyn Sampler, groups: usize, k: usize, exact: &[f64]) -> Inpainted {
    let device = device();
    let dtype = best_dtype(&device);
    let m = gmm2d();
    let schedule = linear();
    let net = m.discrete_model(&schedule, Prediction::Epsilon, TimestepInterpolation::Sigma);
    let denoiser = DiscreteModel::new(net, schedule.clone(), Prediction::Epsilon);
    let n = groups * k;
    let mut noise = SampleNoise::range(3, 0..n as u64);
    let x = noise
        .normal_tensor(n, 2, &device, dtype)
        .mul_scalar(sampler.init_noise_sigma());
    let out = to_f64(&sampler.sample(&denoiser, x, &mut noise).unwrap().x);
    assert!(
        column(&out, 2, 0).iter().all(|v| (v - KNOWN).abs() < 1e-5),
        "known part kept"
    );
    let ours: Vec<f64> = (0..groups)
        .map(|g| out[2 * (g * k + (g * 7919 + 13) % k) + 1])
        .collect();
    Inpainted {
        w1: w1(&ours, exact),
        upper_mode: ours.iter().filter(|v| **v > 0.0).count() as f64 / groups as f64,
    }
}

fn reference_rows(n: usize) -> (Tensor<2>, Tensor<2>) {
    let device = device();
    let dtype = best_dtype(&device);
    (
        tensor2([1.0, 0.0].repeat(n), n, &device, dtype),
        tensor2([KNOWN, 0.0].repeat(n), n, &device, dtype),
    )
}

/// The unknown coordinate of exact conditional samples.
fn exact_unknown(seed: u64, n: usize) -> Vec<f64> {
    let m = gmm2d();
    column(
        &m.sample_conditional_host(&[vec![1.0, 0.0]], &[KNOWN], seed, 0..n as u64)
            .unwrap(),
        2,
        1,
    )
}

#[test]
fn smc_inpaints_the_exact_conditional_where_replacement_and_repaint_are_biased() {
    use diffusion_samplers::{SmcInpainting, successive_steps};
    use diffusion_schedules::{TimestepSpacing, timesteps};
    let n = 600;
    let exact = exact_unknown(11, n);
    let floor = w1(&exact_unknown(12, n), &exact);
    let exact_upper = exact.iter().filter(|v| **v > 0.0).count() as f64 / n as f64;

    let (mask, reference) = reference_rows(n);
    let replacement = RePaint::replacement(linear(), 50, KnownRegion::Mask(mask), reference);
    let repaint = RePaint {
        jump_length: 5,
        jump_n_sample: 10,
        ..replacement.clone()
    };
    let plain = inpaint_2d(&replacement, n, 1, &exact);
    let resampled = inpaint_2d(&repaint, n, 1, &exact);

    let k = 10;
    let (mask, reference) = reference_rows(n * k);
    let ts = timesteps(1000, 250, TimestepSpacing::Leading, 0).unwrap();
    let smc = SmcInpainting::new(
        successive_steps(&linear(), &ts),
        KnownRegion::Mask(mask),
        reference,
        k,
    );
    let smc = inpaint_2d(&smc, n, k, &exact);
    println!(
        "exact: upper-mode mass {exact_upper:.3}, W1 floor {floor:.4}\n\
         replacement (50 DDPM steps): W1 {:.4}, upper {:.3}\n\
         RePaint (50 steps, j = 5, r = 10): W1 {:.4}, upper {:.3}\n\
         SMCDiff (250 steps, K = {k}): W1 {:.4}, upper {:.3}",
        plain.w1, plain.upper_mode, resampled.w1, resampled.upper_mode, smc.w1, smc.upper_mode
    );
    assert!(smc.w1 < 2.5 * floor + 0.02, "SMC W1 {} vs floor {floor}", smc.w1);
    assert!(
        (smc.upper_mode - exact_upper).abs() < 0.07,
        "SMC upper {}",
        smc.upper_mode
    );
    // The documented bias: both put too much mass on the upper mode.
    for (name, r) in [("replacement", &plain), ("RePaint", &resampled)] {
        assert!(
            r.w1 > 4.0 * floor && r.upper_mode > exact_upper + 0.08,
            "{name}: W1 {}, upper {}",
            r.w1,
            r.upper_mode
        );
    }
}

#[test]
fn pc_inpainting_and_colorization_keep_the_known_part() {
    let device = device();
    let dtype = best_dtype(&device);
    let n = 1000;
    // Inpainting coordinate 0 of the 2-D mixture with VE PC sampling.
    let m = gmm2d();
    let mut pc = PcSampler::new(Sde::ve(0.01, 20.0, 300));
    pc.snr = 0.1;
    let (mask, reference) = reference_rows(n);
    let sampler = ConditionalPc::inpainting(pc.clone(), mask, reference);
    let mut noise = SampleNoise::range(4, 0..n as u64);
    let x = noise
        .normal_tensor(n, 2, &device, dtype)
        .mul_scalar(sampler.init_noise_sigma());
    let out = to_f64(&sampler.sample(&m, x, &mut noise).unwrap().x);
    let exact = exact_unknown(11, n);
    assert!(column(&out, 2, 0).iter().all(|v| (v - KNOWN).abs() < 1e-5));
    let pc_w1 = w1(&column(&out, 2, 1), &exact);
    println!("PC inpainting (VE, 300 steps, replacement): W1 {pc_w1:.4}");
    assert!(pc_w1.is_finite() && pc_w1 < 1.5);

    // Colourisation of a one-pixel RGB mixture: the grey level is kept, the colour is drawn
    // near the exact conditional given the grey level.
    let rgb = GaussianMixture::new(
        vec![0.5, 0.5],
        vec![vec![0.8, -0.4, -0.4], vec![-0.4, -0.4, 0.8]],
        vec![0.15, 0.15],
    )
    .unwrap();
    let gray = 0.0;
    let grey_rows = tensor2(vec![gray; 3 * n], n, &device, dtype);
    let sampler = ConditionalPc::colorization(pc, 3, grey_rows);
    let mut noise = SampleNoise::range(5, 0..n as u64);
    let x = noise
        .normal_tensor(n, 3, &device, dtype)
        .mul_scalar(sampler.init_noise_sigma());
    let out = to_f64(&sampler.sample(&rgb, x, &mut noise).unwrap().x);
    for row in out.chunks(3) {
        assert!(
            (row.iter().sum::<f64>() / 3.0 - gray).abs() < 1e-5,
            "grey level kept: {row:?}"
        );
    }
    let u = 1.0 / 3f64.sqrt();
    let exact = rgb
        .sample_conditional_host(&[vec![u, u, u]], &[3.0 * gray * u], 13, 0..n as u64)
        .unwrap();
    // Red is high in one component, blue in the other; both appear, in the right proportions.
    let red_share = |rows: &[f64]| rows.chunks(3).filter(|r| r[0] > r[2]).count() as f64 / n as f64;
    let (ours, truth) = (red_share(&out), red_share(&exact));
    println!("colourisation: red-dominant share {ours:.3} (exact {truth:.3})");
    assert!((ours - truth).abs() < 0.1, "{ours} vs {truth}");
    assert!(w1(&column(&out, 3, 0), &column(&exact, 3, 0)) < 0.2);
}

#[test]
fn inpainting_rejects_mismatched_inputs() {
    let device = device();
    let dtype = best_dtype(&device);
    let m = gmm2d();
    let schedule = linear();
    let net = m.discrete_model(&schedule, Prediction::Epsilon, TimestepInterpolation::Sigma);
    let denoiser = DiscreteModel::new(net, schedule.clone(), Prediction::Epsilon);
    let (mask, reference) = reference_rows(4);
    let x = tensor2(vec![0.0; 6], 3, &device, dtype);
    let mut noise = SampleNoise::range(0, 0..3);
    let sampler = RePaint::replacement(schedule.clone(), 10, KnownRegion::Mask(mask), reference);
    let err = sampler
        .sample(&denoiser, x.clone(), &mut noise)
        .unwrap_err()
        .to_string();
    assert!(err.contains("reference"), "{err}");
    let bad_mask = RePaint::replacement(
        schedule.clone(),
        10,
        KnownRegion::Mask(tensor2(vec![1.0; 9], 3, &device, dtype)),
        x.clone(),
    );
    let err = bad_mask
        .sample(&denoiser, x.clone(), &mut noise)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mask"), "{err}");
    let gray = ConditionalPc::colorization(PcSampler::new(Sde::ve(0.01, 20.0, 10)), 3, x.clone());
    let err = gray.sample(&m, x, &mut noise).unwrap_err().to_string();
    assert!(err.contains("channels"), "{err}");
}
