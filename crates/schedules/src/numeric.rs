//! The small numeric routines whose exact behaviour the reference libraries depend on.
//!
//! A port is exact only if it rounds, spaces and interpolates as numpy and PyTorch do:
//! numpy rounds half to even, `torch.linspace` fills from both ends, `np.arange` with a
//! float step has `ceil((stop − start)/step)` elements.

/// `numpy.linspace(start, stop, num)` (endpoint included): `start + i·step`, last = `stop`.
pub fn linspace_numpy(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// `torch.linspace(start, end, steps)`: the first half from `start`, the second from `end`.
pub fn linspace_torch(start: f64, end: f64, steps: usize) -> Vec<f64> {
    match steps {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f64;
            let half = steps / 2;
            // A fused multiply-add, as PyTorch's CPU kernel compiles to: bit-exact.
            (0..steps)
                .map(|i| {
                    if i < half {
                        step.mul_add(i as f64, start)
                    } else {
                        (-step).mul_add((steps - i - 1) as f64, end)
                    }
                })
                .collect()
        }
    }
}

/// `numpy.arange(start, stop, step)` for a float step: `ceil((stop − start)/step)` values.
pub fn arange_numpy(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    let len = if len.is_finite() && len > 0.0 {
        len as usize
    } else {
        0
    };
    (0..len).map(|i| start + i as f64 * step).collect()
}

/// `numpy.round`: to the nearest integer, halves to even.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// `numpy.interp(x, xp, fp)` for increasing `xp`: linear interpolation, clamped at the ends.
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    assert_eq!(xp.len(), fp.len(), "interp: xp and fp differ in length");
    assert!(!xp.is_empty(), "interp: empty table");
    let n = xp.len();
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[n - 1] {
        return fp[n - 1];
    }
    // The last j with xp[j] <= x.
    let j = xp.partition_point(|&v| v <= x) - 1;
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

/// The logistic function 1 / (1 + e⁻ˣ), accurate for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// log(1 + eˣ), accurate for large |x|.
pub fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_rounds_half_to_even() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-0.5), -0.0);
    }

    #[test]
    fn arange_counts_like_numpy() {
        // np.arange(1000, 0, -1000/3) has 3 values: 1000, 666.67, 333.33.
        assert_eq!(arange_numpy(1000.0, 0.0, -1000.0 / 3.0).len(), 3);
        assert_eq!(arange_numpy(0.0, 1.0, 0.25), vec![0.0, 0.25, 0.5, 0.75]);
    }

    #[test]
    fn linspaces_hit_both_ends() {
        let n = linspace_numpy(0.0, 999.0, 7);
        assert_eq!((n[0], n[6]), (0.0, 999.0));
        let t = linspace_torch(1e-4, 0.02, 1000);
        assert_eq!((t[0], t[999]), (1e-4, 0.02));
        assert_eq!(linspace_torch(0.0, 1.0, 1), vec![0.0]);
    }

    #[test]
    fn interp_clamps_and_interpolates() {
        let xp = [0.0, 1.0, 2.0];
        let fp = [10.0, 20.0, 40.0];
        assert_eq!(interp(-1.0, &xp, &fp), 10.0);
        assert_eq!(interp(1.5, &xp, &fp), 30.0);
        assert_eq!(interp(1.0, &xp, &fp), 20.0);
        assert_eq!(interp(9.0, &xp, &fp), 40.0);
    }

    #[test]
    fn logistic_helpers_are_stable() {
        assert_eq!(sigmoid(-800.0), 0.0);
        assert_eq!(sigmoid(800.0), 1.0);
        assert_eq!(softplus(800.0), 800.0);
        assert!((softplus(0.0) - 2f64.ln()).abs() < 1e-16);
    }
}
