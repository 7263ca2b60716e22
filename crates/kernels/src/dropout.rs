//! The mask of dropout (Srivastava et al. 2014, eq. 1–2): y = x ⊙ m / (1 − p), each
//! m_i ~ Bernoulli(1 − p) independently, drawn by a counter-based generator, so that element i's
//! draw is a function of (seed, i) alone: the same in any number of threads or chunks.
//!
//! Element i's draw is output i of SplitMix64 (Steele, Lea & Flood 2014; Vigna's reference
//! `splitmix64.c`) seeded with the key: z_i = mix(seed + (i + 1) γ), γ = 0x9E3779B97F4A7C15,
//! with mix Stafford's 64-bit finaliser ("variant 13"). It is kept when its top 24 bits, as a
//! uniform draw on [0, 1) in steps of 2⁻²⁴, fall below 1 − p, so
//! P(keep) = ⌈(1 − p) 2²⁴⌉ / 2²⁴, within 6·10⁻⁸ of 1 − p. Burn's own dropout draws every
//! element from the device's ChaCha generator one at a time, which was 2–3 % of a U-Net
//! training step; this mask costs a few integer operations per element.

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
    for (j, out) in out.iter_mut().enumerate() {
        let u = (draw(seed, first + j as u64) >> 40) as u32;
        *out = if u < threshold { scale } else { 0.0 };
    }
}

/// SplitMix64's increment, ⌊2⁶⁴/φ⌋ (odd).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Output `i` (from 0) of SplitMix64 seeded with `seed`.
#[inline(always)]
fn draw(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference outputs of SplitMix64 for seed 1234567 (Rosetta Code, "Pseudo-random
    /// numbers/Splitmix64", from Vigna's `splitmix64.c`) and the first for seed 0.
    #[test]
    fn draws_are_splitmix64() {
        let want = [
            6457827717110365317,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        for (i, want) in want.into_iter().enumerate() {
            assert_eq!(draw(1234567, i as u64), want);
        }
        assert_eq!(draw(0, 0), 0xe220_a839_7b1d_cdaf);
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
    /// pairs both kept is k² (k = 1 − p) within 4 standard deviations. The pairs (i, i + lag)
    /// overlap, each sharing an element with two others, so the variance of one pair's
    /// indicator, k²(1 − k²), gains 2 (k³ − k⁴).
    #[test]
    fn neighbours_are_independent() {
        let (n, keep) = (1 << 20, 0.5);
        let mask = keep_mask(n + CHUNK, keep, 7);
        for lag in [1, 2, CHUNK] {
            let both = (0..n).filter(|&i| mask[i] != 0.0 && mask[i + lag] != 0.0).count() as f64 / n as f64;
            let k2 = keep * keep;
            let variance = k2 * (1.0 - k2) + 2.0 * (keep * k2 - k2 * k2);
            let sd = (variance / n as f64).sqrt();
            assert!((both - k2).abs() <= 4.0 * sd, "lag {lag}: {both}");
        }
    }

    #[test]
    fn masks_do_not_depend_on_the_thread_count() {
        crate::assert_independent_of_threads(|| keep_mask(3 * CHUNK + 17, 0.8, 123));
    }
}
