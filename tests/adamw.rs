//! AdamW: diffusion-kernels' optimiser (one pass per parameter tensor on flex, tensor operations
//! elsewhere) against PyTorch's `torch.optim.AdamW` (tests/fixtures/adamw.json, written by
//! scripts/fixtures/adamw.py), and its checkpoints, which are burn's `AdamW`'s.

use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, AdamWState, GradientsParams, ModuleOptimizer, Optimizer};
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use diffusion_kernels::AdamW;

use diffusion_core::BackendKind;
use diffusion_tests::{assert_close_floor, device, fixture, floats, matrix, spec};

fn on_flex() -> bool {
    spec().backend == BackendKind::Flex
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.to_data().convert::<f64>().try_to_vec::<f64>().unwrap()
}

fn bits<const D: usize>(t: &Tensor<D>) -> Vec<u32> {
    t.to_data().iter::<f32>().map(f32::to_bits).collect()
}

/// The f32 values (the fixture's f64 text parses to within an f64 ulp of them).
fn single(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

fn vector(values: &[f64]) -> Tensor<1> {
    let (values, n) = (single(values), values.len());
    Tensor::from_data(TensorData::new(values, [n]), (&device(), DType::F32))
}

/// Six steps of PyTorch's AdamW (its single-tensor CPU loop) on a vector whose gradients span
/// 1e-3 to 1e3, with and without weight decay: the parameters and both moments after every step.
/// On flex (the kernel, whose multiply–adds are fused as PyTorch's vectorised loops fuse them)
/// the moments are PyTorch's bits; elsewhere (tensor operations) they are within rounding. The
/// parameters differ where PyTorch's square root (MKL's) is not correctly rounded, by an ulp or
/// two of max(|θ|, 1).
#[test]
fn adamw_matches_pytorch() {
    let doc = fixture("adamw.json");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let number = |key: &str| case[key].as_f64().unwrap();
        let optim = AdamW {
            beta_1: number("beta_1"),
            beta_2: number("beta_2"),
            epsilon: number("epsilon"),
            weight_decay: number("weight_decay"),
        };
        let (grads, steps) = matrix(&case["grads"]);
        let n = grads.len() / steps;
        let reference = |key: &str| matrix(&case[key]).0;
        let (params, m, v) = (reference("params"), reference("exp_avg"), reference("exp_avg_sq"));
        let mut param = vector(&floats(&case["initial"]));
        let mut state: Option<AdamWState<1>> = None;
        for k in 0..steps {
            let row = k * n..(k + 1) * n;
            let (next, next_state) = optim.step(number("lr"), param, vector(&grads[row.clone()]), state);
            let moments = &next_state.as_ref().expect("AdamW keeps a state").momentum;
            assert_eq!(moments.time, k + 1, "{name}: step count");
            let what = |x: &str| format!("{name}, step {}: {x}", k + 1);
            let (ours_m, ours_v) = (values(&moments.moment_1), values(&moments.moment_2));
            if on_flex() {
                assert_eq!(single(&ours_m), single(&m[row.clone()]), "{}", what("m"));
                assert_eq!(single(&ours_v), single(&v[row.clone()]), "{}", what("v"));
            }
            assert_close_floor(&what("θ"), &values(&next), &params[row.clone()], 2.5e-7, 1.0);
            // m cancels to near 0 where g changes sign: its error is relative to the larger of
            // |m| and the step's term (1 − β₁)|g|.
            let g = &grads[row.clone()];
            let err = ours_m
                .iter()
                .zip(&m[row.clone()])
                .zip(g)
                .map(|((a, b), g)| (a - b).abs() / b.abs().max((1.0 - optim.beta_1) * g.abs()));
            let err = err.fold(0.0, f64::max);
            assert!(err < 1e-6, "{}: relative error {err:e}", what("m"));
            assert_close_floor(&what("v"), &ours_v, &v[row], 1e-6, 1e-12);
            (param, state) = (next, next_state);
        }
    }
}

fn step(optim: &mut ModuleOptimizer, layer: Linear, x: &Tensor<2>) -> Linear {
    let grads = GradientsParams::from_grads(layer.forward(x.clone()).square().sum().backward(), &layer);
    optim.step(2e-3, layer, grads)
}

fn layer_bits(layer: &Linear) -> Vec<u32> {
    let mut out = bits(&layer.weight.val());
    out.extend(bits(&layer.bias.as_ref().unwrap().val()));
    out
}

/// A run resumes from its optimiser record (what a checkpoint stores) bit for bit: two steps,
/// the record loaded into a fresh optimiser, a third step, as three steps in one go. The records
/// of burn's `AdamW` hold the same state (step count and raw moments): ours resumes from burn's
/// and burn's from ours, to the rounding in which the two optimisers differ (burn rounds its
/// scalars to f32: relative 1e-5 on the second moment's increment).
#[test]
fn adamw_resumes_from_its_records_and_burns() {
    let ad = device().autodiff();
    let layer = LinearConfig::new(9, 7).init(&ad);
    let x = Tensor::<2>::random([5, 9], Distribution::Normal(0.0, 1.0), &ad);
    let hyper = AdamW {
        weight_decay: 0.02,
        epsilon: 1e-5,
        ..AdamW::default()
    };
    let ours = || hyper.init();
    let burns = || {
        AdamWConfig::new()
            .with_weight_decay(0.02)
            .with_epsilon(1e-5)
            .init()
    };
    let mut optim = ours();
    let mut l = layer.clone();
    for _ in 0..3 {
        l = step(&mut optim, l, &x);
    }
    let reference = layer_bits(&l);
    let cases = [
        (ours(), ours(), "ours from ours", true),
        (burns(), ours(), "ours from burn's", false),
        (ours(), burns(), "burn's from ours", false),
    ];
    for (mut first, second, what, exact) in cases {
        let l = step(&mut first, layer.clone(), &x);
        let l = step(&mut first, l, &x);
        let mut resumed = second.load_record(first.to_record());
        let third = layer_bits(&step(&mut resumed, l, &x));
        if exact {
            assert_eq!(third, reference, "{what}");
        } else {
            let f = |b: &[u32]| {
                b.iter()
                    .map(|&b| f64::from(f32::from_bits(b)))
                    .collect::<Vec<_>>()
            };
            assert_close_floor(what, &f(&third), &f(&reference), 1e-6, 1.0);
        }
    }
}
