//! The mask of dropout (Srivastava et al. 2014, eq. 1–2): y = x ⊙ m / (1 − p), each
//! m_i ~ Bernoulli(1 − p) independently, drawn by a counter-based generator, so that element i's
//! draw is a function of (seed, i) alone: the same in any number of threads or chunks.
//!
//! u_i = h(seed, i) is a 32-bit hash (two rounds of Wellons' `lowbias32` mixer, a bijection of
//! u32 with full avalanche, keyed by the seed's two halves); element i is kept when its top 24
//! bits, as a uniform draw on [0, 1) in steps of 2⁻²⁴, fall below 1 − p, so
//! P(keep) = ⌈(1 − p) 2²⁴⌉ / 2²⁴, within 6·10⁻⁸ of 1 − p. Burn's own dropout draws every
//! element from the device's ChaCha generator one at a time, which was 2–3 % of a U-Net
//! training step; this mask costs a few operations per element, vectorised.

use rayon::prelude::*;

use crate::simd::wide;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// The dropout multipliers m_i / (1 − p) for `len` elements: 0 for a dropped element,
/// 1 / (1 − p) for a kept one (`keep` = 1 − p, in (0, 1]).
///
/// # Panics
/// If `keep` is not in (0, 1].
pub fn keep_mask(len: usize, keep: f64, seed: u64) -> Vec<f32> {
    assert!(
        keep > 0.0 && keep <= 1.0,
        "dropout keeps a share in (0, 1], not {keep}"
    );
    let threshold = (keep * (1u64 << 24) as f64).ceil() as u32;
    let scale = (1.0 / keep) as f32;
    let mut mask = vec![0.0f32; len];
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(k, out)| {
        let first = (k * CHUNK) as u64;
        wide!(fill(out: &mut [f32], first: u64, seed: u64, threshold: u32, scale: f32))
    });
    mask
}

/// `out[j]` = `scale` if element `first + j` is kept, else 0.
#[inline(always)]
fn fill(out: &mut [f32], first: u64, seed: u64, threshold: u32, scale: f32) {
    let (low, high) = (seed as u32, (seed >> 32) as u32);
    for (j, out) in out.iter_mut().enumerate() {
        let i = first + j as u64;
        let u = draw(i, low, high) >> 8;
        *out = if u < threshold { scale } else { 0.0 };
    }
}

/// The 32-bit draw of element `i` under the key (`low`, `high`).
#[inline(always)]
fn draw(i: u64, low: u32, high: u32) -> u32 {
    mix(mix(i as u32 ^ low) ^ ((i >> 32) as u32).wrapping_add(high))
}

/// Wellons' `lowbias32` integer hash (2018): a bijection of u32 in which every input bit
/// changes each output bit with probability close to ½.
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mixer is a bijection: distinct inputs give distinct outputs (here on 2¹⁶ inputs).
    #[test]
    fn the_mixer_is_a_bijection() {
        let mut seen: Vec<u32> = (0..1u32 << 16).map(mix).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 1 << 16, "distinct inputs give distinct outputs");
    }

    /// Kept shares within 4 standard deviations of 1 − p, only 0 and 1/(1 − p), and the same
    /// mask for the same seed, another mask for another seed.
    #[test]
    fn masks_keep_their_share_and_repeat_for_a_seed() {
        let n = 1_000_003;
        for keep in [0.9, 0.5, 0.1, 1.0] {
            let mask = keep_mask(n, keep, 42);
            let scale = (1.0 / keep) as f32;
            assert!(mask.iter().all(|&m| m == 0.0 || m == scale));
            let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / n as f64;
            let sd = (keep * (1.0 - keep) / n as f64).sqrt();
            assert!((kept - keep).abs() <= 4.0 * sd + 1e-7, "keep {keep}: kept {kept}");
            assert_eq!(mask, keep_mask(n, keep, 42));
        }
        assert_ne!(keep_mask(1000, 0.5, 1), keep_mask(1000, 0.5, 2));
    }

    /// Neighbouring elements (and elements one chunk apart) are uncorrelated: the share of
    /// pairs both kept is (1 − p)² within 4 standard deviations.
    #[test]
    fn neighbours_are_independent() {
        let (n, keep) = (1 << 20, 0.5);
        let mask = keep_mask(n + CHUNK, keep, 7);
        for lag in [1, 2, CHUNK] {
            let both = (0..n).filter(|&i| mask[i] != 0.0 && mask[i + lag] != 0.0).count() as f64 / n as f64;
            let p = keep * keep;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((both - p).abs() <= 4.0 * sd, "lag {lag}: {both}");
        }
    }

    #[test]
    fn masks_do_not_depend_on_the_thread_count() {
        crate::assert_independent_of_threads(|| keep_mask(3 * CHUNK + 17, 0.8, 123));
    }
}
