//! Evaluation metrics against pytorch-fid and torch-fidelity (`scripts/fixtures/fid.py`,
//! `scripts/fixtures/inception.py`), and the FID Inception network on formula weights.

use burn::tensor::{DType, Tensor, TensorData};
use diffusion_core::tensor::to_f64;
use diffusion_metrics::frechet::{FeatureStats, frechet_distance};
use diffusion_metrics::inception::InceptionV3;
use diffusion_metrics::inception_score::{inception_score, softmax_rows};
use diffusion_metrics::kid::{kid, kid_of_subsets};
use diffusion_metrics::npz::{read_npz, write_npz};
use diffusion_metrics::precision_recall::precision_recall;
use diffusion_tests::{device, fixture, fixture_path, floats, run_training_tests};
use serde_json::Value;

fn matrix(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().flat_map(floats).collect()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn fid_matches_pytorch_fid_and_high_precision() {
    let all = fixture("fid.json");
    for case in all["fid_cases"].as_array().unwrap() {
        let d = case["d"].as_u64().unwrap() as usize;
        let name = case["name"].as_str().unwrap();
        let a = FeatureStats::from_features(&matrix(&case["features_1"]), d).unwrap();
        let b = FeatureStats::from_features(&matrix(&case["features_2"]), d).unwrap();
        for (ours, reference) in [
            (&a.mu, floats(&case["mu_1"])),
            (&a.sigma, matrix(&case["sigma_1"])),
            (&b.sigma, matrix(&case["sigma_2"])),
        ] {
            let err = ours
                .iter()
                .zip(&reference)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "{name}: statistics differ by {err}");
        }
        let fid = frechet_distance(&a, &b).unwrap();
        let exact = case["fid_mp_from_sigma"].as_f64().unwrap();
        let singular = case["rank_sigma_1"].as_u64().unwrap() < d as u64;
        // A singular Σ leaves √(rounding noise) in the trace for every f64 method.
        let tol = if singular { 1e-7 } else { 1e-12 };
        assert!(rel(fid, exact) < tol, "{name}: FID {fid} vs {exact}");
        let pytorch_fid = case["fid_pytorch_fid"].as_f64().unwrap();
        assert!(
            rel(fid, pytorch_fid) < if singular { 1e-7 } else { 1e-12 },
            "{name}: {fid} vs pytorch-fid {pytorch_fid}"
        );
    }
    let case = &all["fid_cases"][0];
    let a = FeatureStats::from_features(&matrix(&case["features_1"]), 8).unwrap();
    assert!(
        frechet_distance(&a, &a).unwrap().abs() < 1e-12,
        "FID of a set with itself is 0"
    );
    let wrong = FeatureStats::from_features(&[0.0; 9], 3).unwrap();
    assert!(
        frechet_distance(&a, &wrong)
            .unwrap_err()
            .to_string()
            .contains("dimension")
    );
}

#[test]
fn reference_statistics_read_from_numpy_npz() {
    let all = fixture("fid.json");
    let mu = floats(&all["npz"]["mu"]);
    let sigma = matrix(&all["npz"]["sigma"]);
    // Both archives hold the same float64 arrays (stored and deflated); the JSON copy of the
    // values went through a decimal round trip.
    let stored = FeatureStats::read_npz(&fixture_path("fid_stats.npz")).unwrap();
    let deflated = FeatureStats::read_npz(&fixture_path("fid_stats_compressed.npz")).unwrap();
    assert_eq!(stored, deflated);
    assert_eq!(stored.sigma.len(), 64);
    for (ours, reference) in [(&stored.mu, &mu), (&stored.sigma, &sigma)] {
        let err = ours
            .iter()
            .zip(reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-15, "npz vs JSON: {err}");
    }
    let dir = std::env::temp_dir().join(format!("diffusion-npz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stats.npz");
    let stats = FeatureStats::read_npz(&fixture_path("fid_stats.npz")).unwrap();
    stats.write_npz(&path).unwrap();
    assert_eq!(FeatureStats::read_npz(&path).unwrap(), stored);
    assert_eq!(read_npz(&path).unwrap().len(), 2);
    // Missing arrays and non-archives are named.
    let only_mu = diffusion_core::npy::NpyArray::from_f64(vec![2], vec![1.0, 2.0]).unwrap();
    write_npz(&path, &[("mu", only_mu)]).unwrap();
    let err = FeatureStats::read_npz(&path).unwrap_err().to_string();
    assert!(err.contains("no array `sigma`"), "{err}");
    std::fs::write(&path, b"not a zip").unwrap();
    let err = FeatureStats::read_npz(&path).unwrap_err().to_string();
    assert!(err.contains("not a readable .npz"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn kid_matches_torch_fidelity() {
    let all = fixture("fid.json");
    let case = &all["fid_cases"][2];
    let d = case["d"].as_u64().unwrap() as usize;
    let (a, b) = (matrix(&case["features_1"]), matrix(&case["features_2"]));
    for key in ["full", "subsets"] {
        let k = &all["kid"][key];
        let subsets: Vec<(Vec<usize>, Vec<usize>)> = k["indices_1"]
            .as_array()
            .unwrap()
            .iter()
            .zip(k["indices_2"].as_array().unwrap())
            .map(|(i, j)| (indices(i), indices(j)))
            .collect();
        let (mean, std) = kid_of_subsets(&a, &b, d, &subsets).unwrap();
        assert!(rel(mean, k["mean"].as_f64().unwrap()) < 1e-12, "{key}: {mean}");
        assert!((std - k["std"].as_f64().unwrap()).abs() < 1e-12, "{key}: {std}");
    }
    // Our own seeded subsets: reproducible, and the full-size subset is the permutation-invariant value.
    let (m1, _) = kid(&a, &b, d, 3, 50, 9).unwrap();
    assert_eq!(kid(&a, &b, d, 3, 50, 9).unwrap().0, m1);
    let (full, _) = kid(&a, &b, d, 1, 200, 1).unwrap();
    assert!(rel(full, all["kid"]["full"]["mean"].as_f64().unwrap()) < 1e-12);
    assert!(kid(&a, &b, d, 1, 201, 1).is_err());
}

#[test]
fn inception_score_and_precision_recall_match_torch_fidelity() {
    let all = fixture("fid.json");
    let isc = &all["isc"];
    let logits = matrix(&isc["logits"]);
    let probs = softmax_rows(&logits, 10);
    let (mean, std) = inception_score(&probs, 10, 10, 0).unwrap();
    let reference = &isc["noshuffle"];
    assert!(
        rel(mean, reference["mean"].as_f64().unwrap()) < 1e-12,
        "IS {mean}"
    );
    assert!(
        rel(std, reference["std"].as_f64().unwrap()) < 1e-10,
        "IS std {std}"
    );

    let prc = &all["prc"];
    let (precision, recall) = precision_recall(&matrix(&prc["real"]), &matrix(&prc["fake"]), 8, 3).unwrap();
    assert_eq!(precision, prc["precision_exact"].as_f64().unwrap());
    assert_eq!(recall, prc["recall_exact"].as_f64().unwrap());
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// u in [0, 1) of element `i` of `key` (the fixture's formula).
fn formula_u(key: &str, i: u64) -> f64 {
    let z = splitmix64(fnv1a64(key.as_bytes()).wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The fixture's weights as a safetensors file with pytorch-fid's names.
fn formula_weights() -> Vec<u8> {
    let keys = std::fs::read_to_string(fixture_path("inception_keys.txt")).unwrap();
    let (mut header, mut data) = (serde_json::Map::new(), Vec::<u8>::new());
    for line in keys.lines() {
        let (key, shape) = line.split_once(' ').unwrap();
        if key.ends_with("num_batches_tracked") {
            continue;
        }
        let shape: Vec<usize> = serde_json::from_str(shape).unwrap();
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product();
        let value = |i: usize| {
            let u = formula_u(key, i as u64);
            let v = 2.0 * u - 1.0;
            if key.ends_with("conv.weight") {
                v * (6.0 / fan_in as f64).sqrt()
            } else if key.ends_with("bn.weight") {
                1.0 + 0.1 * v
            } else if key.ends_with("bn.running_var") {
                1.0 + 0.5 * u
            } else if key == "fc.weight" {
                v * (3.0f64 / 2048.0).sqrt()
            } else {
                0.1 * v // bn.bias, bn.running_mean, fc.bias
            }
        };
        let start = data.len();
        for i in 0..n {
            data.extend((value(i) as f32).to_le_bytes());
        }
        header.insert(
            key.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while !(text.len() + 8).is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    out
}

#[test]
fn fid_inception_matches_pytorch_fid() {
    if !run_training_tests() {
        return;
    }
    let all = fixture("inception.json");
    let spot = &all["spot_checks"][0];
    let key = spot["key"].as_str().unwrap();
    assert_eq!(
        format!("{:016x}", fnv1a64(key.as_bytes())),
        spot["seed_hex"].as_str().unwrap()
    );
    assert_eq!(
        formula_u(key, spot["i"].as_u64().unwrap()),
        spot["u"].as_f64().unwrap()
    );

    let device = device();
    let net = InceptionV3::load_safetensors_bytes(&device, formula_weights()).unwrap();
    let shape = [2usize, 3, 40, 30];
    let input: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| formula_u("input", i as u64) as f32)
        .collect();
    let images = Tensor::<4>::from_data(TensorData::new(input, shape), (&device, DType::F32));
    let mut stages = Vec::new();
    let x = InceptionV3::preprocess(images);
    stages.push(("resize_normalize".to_string(), moments(&x)));
    let out = net.forward_stages(x, |name, h| stages.push((name.to_string(), moments(h))));
    for (reference, (name, (mean, std))) in all["stages_f64"].as_array().unwrap().iter().zip(&stages) {
        assert_eq!(reference["name"].as_str().unwrap(), name);
        let (rm, rs) = (
            reference["mean"].as_f64().unwrap(),
            reference["std"].as_f64().unwrap(),
        );
        assert!(
            (mean - rm).abs() < 1e-4 * rs && rel(*std, rs) < 1e-4,
            "{name}: ({mean}, {std}) vs ({rm}, {rs})"
        );
    }
    let pool3 = to_f64(&out.pool3);
    let reference = matrix(&all["pool3_f64"]);
    let scale = reference.iter().map(|v| v.abs()).fold(0.0, f64::max);
    let err = pool3
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        err < 2e-6 * scale.max(1.0),
        "pool3 differs by {err} (scale {scale})"
    );
    let logits = to_f64(&out.logits);
    let reference = matrix(&all["logits_f64"]);
    let err = logits
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err < 2e-5, "logits differ by {err}");
    // Weights that are not pytorch-fid's are refused by name.
    let err = InceptionV3::load(&device, std::path::Path::new("/nonexistent/pt_inception.pth"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pt_inception-2015-12-05"), "{err}");
}

fn moments(h: &Tensor<4>) -> (f64, f64) {
    let v = to_f64(h);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}
