//! Elementwise maps over f32 slices in parallel chunks (for SiLU, GELU and the EMA's update),
//! and an exponential written so that the loops over it vectorise (for SiLU, GELU and the
//! softmax of attention).

use rayon::prelude::*;

use crate::simd::wide;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// f(x_i) for every element.
pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(out, x)| {
            let f = &f;
            wide!(<F: Fn(f32) -> f32> map_chunk(out: &mut [f32], x: &[f32], f: &F))
        });
    out
}

/// f(x_i, y_i) for every pair of elements.
pub fn map2(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(x.len(), y.len(), "elementwise operands differ in length");
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each(|(out, (x, y))| {
            let f = &f;
            wide!(<F: Fn(f32, f32) -> f32> map2_chunk(out: &mut [f32], x: &[f32], y: &[f32], f: &F))
        });
    out
}

/// out_i ← f(out_i, x_i) for every pair of elements, in place.
pub fn update(out: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert_eq!(out.len(), x.len(), "elementwise operands differ in length");
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(out, x)| {
            let f = &f;
            wide!(<F: Fn(f32, f32) -> f32> update_chunk(out: &mut [f32], x: &[f32], f: &F))
        });
}

/// `out_i = f(x_i)`, compiled a second time for AVX2 and FMA through `wide!` (`f`, a short
/// closure over inlined functions, is inlined into either version).
#[inline(always)]
fn map_chunk<F: Fn(f32) -> f32>(out: &mut [f32], x: &[f32], f: &F) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = f(x);
    }
}

/// `out_i = f(x_i, y_i)`, compiled for AVX2 and FMA as [`map_chunk`] is.
#[inline(always)]
fn map2_chunk<F: Fn(f32, f32) -> f32>(out: &mut [f32], x: &[f32], y: &[f32], f: &F) {
    for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
        *o = f(x, y);
    }
}

/// `out_i = f(out_i, x_i)`, compiled for AVX2 and FMA as [`map_chunk`] is.
#[inline(always)]
fn update_chunk<F: Fn(f32, f32) -> f32>(out: &mut [f32], x: &[f32], f: &F) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = f(*o, x);
    }
}

/// e^x for x in f32's range, within 2 ulp of the correctly rounded value (1 ulp = 2^-23
/// relative): x = n ln 2 + r with n = round(x / ln 2) and |r| ≤ ln 2 / 2 (ln 2 split in two
/// parts, Cody & Waite 1980), e^r by the degree-6 minimax polynomial of Cephes' `expf`
/// (Moshier 1989), and 2^n written into the exponent bits. Branch-free, so loops over it
/// vectorise. Inputs beyond ±87.3 are clamped: e^x saturates at 2^126 and 2^-126, which σ and
/// SiLU turn into their limits (1, 0, x and 0 to f32 precision).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 87.3);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    e_r * f32::from_bits(((n + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::silu::tests::points;

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        for &x in &points() {
            if x.abs() > 87.0 {
                continue;
            }
            let exact = (x as f64).exp();
            let err = (exp(x) as f64 - exact).abs() / exact;
            assert!(
                err <= 2.0 * f32::EPSILON as f64,
                "exp({x}): relative error {err:e}"
            );
        }
    }

    #[test]
    fn maps_apply_elementwise_across_chunks() {
        let x: Vec<f32> = (0..3 * CHUNK + 5).map(|i| i as f32).collect();
        assert!(map(&x, |v| 2.0 * v).iter().zip(&x).all(|(y, x)| *y == 2.0 * x));
        assert!(map2(&x, &x, |a, b| a - b).iter().all(|&d| d == 0.0));
    }
}
