//! SiLU (Elfwing et al. 2018; "swish", Ramachandran et al. 2017), silu(x) = x · σ(x), and its
//! derivative silu'(x) = σ(x) · (1 + x · (1 − σ(x))), on f32 slices: in parallel chunks, with
//! an exponential written so that the compiler vectorises it.

use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// silu(x) for every element.
pub fn silu(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(out, x)| {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = silu_value(x);
            }
        });
    out
}

/// grad · silu'(x) for every element.
pub fn silu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(out, (x, grad))| {
            for ((o, &x), &g) in out.iter_mut().zip(x).zip(grad) {
                *o = g * silu_and_slope(x).1;
            }
        });
    out
}

/// silu(x) = x σ(x), σ(x) = 1 / (1 + e^(−x)).
#[inline(always)]
pub(crate) fn silu_value(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// (silu(x), silu'(x)) with silu'(x) = σ(x) (1 + x (1 − σ(x))), where 1 − σ(x) = e^(−x) σ(x)
/// avoids the cancellation of 1 − σ(x) for large x.
#[inline(always)]
pub(crate) fn silu_and_slope(x: f32) -> (f32, f32) {
    let e = exp(-x);
    let s = 1.0 / (1.0 + e);
    (x * s, s * (1.0 + x * (e * s)))
}

/// e^x for x in f32's range, within 2 ulp of the correctly rounded value (1 ulp = 2^-23
/// relative): x = n ln 2 + r with n = round(x / ln 2) and |r| ≤ ln 2 / 2 (ln 2 split in two
/// parts, Cody & Waite 1980), e^r by the degree-6 minimax polynomial of Cephes' `expf`
/// (Moshier 1989), and 2^n written into the exponent bits. Branch-free, so loops over it
/// vectorise. Inputs beyond ±87.3 are clamped: e^x saturates at 2^126 and 2^-126, which σ and
/// SiLU turn into their limits (1, 0, x and 0 to f32 precision).
#[inline(always)]
fn exp(x: f32) -> f32 {
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

    /// Points from −100 to 100, dense near 0, plus the extremes.
    fn points() -> Vec<f32> {
        let mut x: Vec<f32> = (-20_000..=20_000).map(|k| k as f32 * 1e-3).collect();
        x.extend((-1000..=1000).map(|k| k as f32 * 0.1));
        x.extend([
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            0.0,
            -0.0,
            87.0,
            -87.0,
            88.5,
            -88.5,
        ]);
        x
    }

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
    fn silu_and_its_derivative_match_f64() {
        let x = points();
        let grad: Vec<f32> = x.iter().map(|x| 1.0 + 0.5 * (x * 3.1).sin()).collect();
        let (y, dy) = (silu(&x), silu_backward(&x, &grad));
        for k in 0..x.len() {
            let (xk, g) = (x[k] as f64, grad[k] as f64);
            let s = 1.0 / (1.0 + (-xk).exp());
            let (want, dwant) = (xk * s, g * s * (1.0 + xk * (1.0 - s)));
            let tol = |v: f64| 4.0 * f32::EPSILON as f64 * v.abs().max(1.0);
            assert!(
                (y[k] as f64 - want).abs() <= tol(want),
                "silu({xk}) = {} not {want}",
                y[k]
            );
            assert!(
                (dy[k] as f64 - dwant).abs() <= tol(dwant),
                "silu'({xk}) = {} not {dwant}",
                dy[k]
            );
        }
    }
}
