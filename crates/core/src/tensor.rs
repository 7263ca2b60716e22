//! Moving numbers between the host and a device, and per-sample broadcasting.
//!
//! Library code never relies on a device's default float type: new tensors take the dtype
//! of the tensors they are combined with, so an f64 computation stays f64 end to end.

use burn::tensor::{DType, Device, Tensor, TensorData};

/// The values of a float tensor on the host, as f64 (row-major).
pub fn to_f64<const D: usize>(tensor: &Tensor<D>) -> Vec<f64> {
    tensor
        .to_data()
        .try_into_vec_as::<f64>()
        .expect("a float tensor converts to f64")
}

/// A tensor of `shape` from host values, on `device` in `dtype`.
///
/// # Panics
/// If `values.len()` is not the number of elements of `shape` (a programming error).
pub fn from_f64<const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), (device, dtype))
}

/// A tensor of `shape` from host values, on the device and in the dtype of `like`.
pub fn from_f64_like<const D: usize, const E: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    like: &Tensor<E>,
) -> Tensor<D> {
    from_f64(values, shape, &like.device(), like.dtype())
}

/// A scalar per sample, shaped `[n, 1, …, 1]` to broadcast against `like` (`[n, …]`).
///
/// # Panics
/// If `values.len()` differs from the batch size of `like`.
pub fn per_sample<const D: usize>(values: &[f64], like: &Tensor<D>) -> Tensor<D> {
    let n = like.dims()[0];
    assert_eq!(
        values.len(),
        n,
        "{} per-sample values for a batch of {n}",
        values.len()
    );
    let mut shape = [1usize; D];
    shape[0] = n;
    from_f64_like(values.to_vec(), shape, like)
}

/// `x` times a coefficient that is either shared by the batch (`coefs.len() == 1`, a
/// scalar multiply) or given per sample (`coefs.len() == n`, broadcast as `[n, 1, …, 1]`).
///
/// # Panics
/// If `coefs` has neither length 1 nor the batch size (a programming error).
pub fn scale<const D: usize>(x: Tensor<D>, coefs: &[f64]) -> Tensor<D> {
    match coefs {
        [c] => x.mul_scalar(*c),
        _ if coefs.windows(2).all(|w| w[0] == w[1]) && !coefs.is_empty() => x.mul_scalar(coefs[0]),
        _ => {
            let s = per_sample(coefs, &x);
            x * s
        }
    }
}

/// `a·ca + b·cb` with shared or per-sample coefficients (see [`scale`]).
pub fn lincomb<const D: usize>(a: Tensor<D>, ca: &[f64], b: Tensor<D>, cb: &[f64]) -> Tensor<D> {
    scale(a, ca) + scale(b, cb)
}

/// `[n, d₁, …, d_k]` flattened to `[n, d₁⋯d_k]`, with the original shape to undo it.
pub fn flatten_batch<const D: usize>(x: Tensor<D>) -> (Tensor<2>, [usize; D]) {
    let dims = x.dims();
    let n = dims[0];
    let features = dims[1..].iter().product();
    (x.reshape([n, features]), dims)
}

/// Undoes [`flatten_batch`].
pub fn unflatten_batch<const D: usize>(x: Tensor<2>, dims: [usize; D]) -> Tensor<D> {
    x.reshape(dims)
}

/// The largest absolute value of `a − b` relative to the largest absolute value of `b`
/// (or absolute when `b` is all zeros): the deviation measure of our reference tests.
pub fn max_rel_deviation(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared arrays differ in length");
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    if scale > 0.0 { diff / scale } else { diff }
}
