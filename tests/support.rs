//! Shared helpers of the integration tests: the backend under test, fixtures, comparisons.

use std::path::PathBuf;

use burn::tensor::{DType, Device};
use diffusion_core::{DeviceSpec, Precision, device::BACKEND_ENV};

/// The device under test, from `DIFFUSION_BACKEND` (default `flex`).
///
/// # Panics
/// With a clear message when the variable names a backend that is not compiled in.
pub fn device() -> Device {
    spec().open().unwrap_or_else(|e| panic!("{BACKEND_ENV}: {e}"))
}

/// The backend under test.
pub fn spec() -> DeviceSpec {
    DeviceSpec::from_env(BACKEND_ENV).unwrap_or_else(|e| panic!("{BACKEND_ENV}: {e}"))
}

/// The most precise float type the device computes in correctly: f64 where it can, else
/// f32 (see [`BackendKind::computes_in`](diffusion_core::BackendKind::computes_in)).
pub fn best_dtype(device: &Device) -> DType {
    if spec().backend.computes_in(Precision::F64) && device.supports_dtype(DType::F64) {
        DType::F64
    } else {
        DType::F32
    }
}

/// The precision of [`best_dtype`].
pub fn best_precision(device: &Device) -> Precision {
    Precision::of(best_dtype(device))
}

/// Whether the backend under test is the slow software-Vulkan one, where heavy tests
/// use smaller sizes.
pub fn is_slow_backend() -> bool {
    matches!(
        spec().backend,
        diffusion_core::BackendKind::Wgpu | diffusion_core::BackendKind::NdArray
    )
}

/// Whether to run the tests that train networks for many steps: always on flex and ndarray;
/// on wgpu only with `DIFFUSION_TRAIN_TESTS=1` (on the software Vulkan driver CI uses they
/// take minutes; set it on a real GPU).
pub fn run_training_tests() -> bool {
    let on = spec().backend != diffusion_core::BackendKind::Wgpu
        || std::env::var("DIFFUSION_TRAIN_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("skipped on wgpu: set DIFFUSION_TRAIN_TESTS=1 to train here");
    }
    on
}

/// The path of a committed fixture file under `tests/fixtures/`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A committed JSON fixture.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of numbers as `Vec<f64>`.
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|x| match x.as_str() {
            // Python writes non-finite floats as these words; fixtures store them as strings.
            Some("NaN") => f64::NAN,
            Some("Infinity") => f64::INFINITY,
            Some("-Infinity") => f64::NEG_INFINITY,
            _ => x.as_f64().unwrap_or_else(|| panic!("expected a number, got {x}")),
        })
        .collect()
}

/// A JSON array of arrays of numbers, flattened row-major, with its row count.
pub fn matrix(v: &serde_json::Value) -> (Vec<f64>, usize) {
    let rows = v
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of rows, got {v}"));
    (rows.iter().flat_map(floats).collect(), rows.len())
}

/// The largest |a − b| / max(|b|, floor) over two slices: relative error with an absolute
/// floor for values near 0.
pub fn max_rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch: {} vs {}", a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x == y {
                0.0
            } else {
                (x - y).abs() / y.abs().max(floor)
            }
        })
        .fold(0.0, f64::max)
}

/// Asserts [`max_rel_err`] ≤ `tol`, naming the case.
#[track_caller]
pub fn assert_close(what: &str, ours: &[f64], reference: &[f64], tol: f64) {
    let err = max_rel_err(ours, reference, 1e-300);
    assert!(
        err <= tol,
        "{what}: max relative error {err:.3e} > {tol:.1e}\n ours: {:?}\n  ref: {:?}",
        &ours[..ours.len().min(6)],
        &reference[..reference.len().min(6)]
    );
}

/// [`assert_close`] for quantities computed by cancellation (a KL of nearly equal Gaussians, the
/// log of a CDF that rounds to 1): the error is relative to `max(|reference|, floor)`, so values
/// near zero are held to `tol · floor` absolutely. Their last bits depend on the platform's libm
/// (glibc picks its `exp`/`log`/`tanh` by CPU features), which a purely relative test would
/// amplify without bound.
pub fn assert_close_floor(what: &str, ours: &[f64], reference: &[f64], tol: f64, floor: f64) {
    let err = max_rel_err(ours, reference, floor);
    assert!(
        err <= tol,
        "{what}: max error {err:.3e} (relative to max(|ref|, {floor:.0e})) > {tol:.1e}\n ours: {:?}\n  ref: {:?}",
        &ours[..ours.len().min(6)],
        &reference[..reference.len().min(6)]
    );
}

/// The noise draws of a fixture case (a JSON list of `[n][d]` arrays), replayed in order.
pub fn replay(v: &serde_json::Value) -> diffusion_core::noise::Replay {
    diffusion_core::noise::Replay::new(
        v.as_array()
            .map(|list| list.iter().map(|a| matrix(a).0).collect())
            .unwrap_or_default(),
    )
}

/// The mixture of `tests/fixtures/gmm2d.json`.
pub fn gmm2d() -> diffusion_samplers::GaussianMixture {
    diffusion_samplers::GaussianMixture::from_json(&fixture_path("gmm2d.json")).expect("fixture mixture")
}

/// A `[n, d]` tensor from row-major host values, on `device` in `dtype`.
pub fn tensor2(values: Vec<f64>, n: usize, device: &Device, dtype: DType) -> burn::tensor::Tensor<2> {
    let d = values.len() / n;
    diffusion_core::tensor::from_f64(values, [n, d], device, dtype)
}

/// A tensor read from a safetensors file: shape and values as f64 (F32, F64 and I64).
pub struct SafeTensor {
    /// The shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<f64>,
}

/// Every tensor of a safetensors file (the format: an 8-byte little-endian header length,
/// a JSON header of names → dtype, shape and byte offsets, then the data).
pub fn read_safetensors(path: &std::path::Path) -> std::collections::HashMap<String, SafeTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = std::collections::HashMap::new();
    for (name, meta) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let shape: Vec<usize> = meta["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let offsets = meta["data_offsets"].as_array().unwrap();
        let (a, b) = (
            offsets[0].as_u64().unwrap() as usize,
            offsets[1].as_u64().unwrap() as usize,
        );
        let raw = &data[a..b];
        let values: Vec<f64> = match meta["dtype"].as_str().unwrap() {
            "F32" => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            "F64" => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            "I64" => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{name}: dtype {other} not handled"),
        };
        out.insert(name.clone(), SafeTensor { shape, values });
    }
    out
}
