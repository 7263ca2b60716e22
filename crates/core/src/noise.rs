//! Seeded, per-sample noise that does not depend on the batch or the backend.
//!
//! Sample `i` of seed `s` owns its own random stream: ChaCha12 seeded from `s` with stream
//! number `i`. Its noise is therefore the same whether it is drawn in a batch of 1 or of 64,
//! in any order of batches, and on any backend (numbers are drawn on the host in f64 and then
//! uploaded). Standard normals come from the Box–Muller transform of pairs of uniforms
//! `u = (x >> 11) · 2⁻⁵³` built from 64-bit outputs `x`: `z₀ = √(−2 ln(1 − u₁)) cos(2π u₂)`,
//! `z₁ = √(−2 ln(1 − u₁)) sin(2π u₂)`; an odd count drops the last `z₁`.
//!
//! A pair takes two 64-bit outputs, four of ChaCha's 32-bit words, so the stream can be cut
//! into blocks that start at known word positions: [`SampleNoise`] fills the blocks of all its
//! samples in parallel and gets the numbers the stream gives one after another.

use std::ops::Range;

use burn::tensor::{DType, Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rayon::prelude::*;

/// A source of standard normal noise for a batch of flattened samples.
///
/// Stochastic samplers take one explicitly, so that a run is reproducible and a test can
/// replay the exact noise a reference implementation drew.
pub trait NoiseSource {
    /// `n · features` standard normal numbers, row-major (`n` samples of `features` values).
    fn normal(&mut self, n: usize, features: usize) -> Vec<f64>;

    /// The same noise as a `[n, features]` tensor on `device` in `dtype`.
    fn normal_tensor(&mut self, n: usize, features: usize, device: &Device, dtype: DType) -> Tensor<2> {
        let values = self.normal(n, features);
        Tensor::from_data(TensorData::new(values, [n, features]), (device, dtype))
    }
}

/// The 64-bit generator of one sample: ChaCha12 with key from `seed` and stream `sample`.
pub fn sample_rng(seed: u64, sample: u64) -> ChaCha12Rng {
    let mut rng = ChaCha12Rng::seed_from_u64(seed);
    rng.set_stream(sample);
    rng
}

/// A uniform number in `[0, 1)` with 53 random bits.
pub fn uniform<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Fills `out` with standard normal numbers (Box–Muller, see the module documentation).
pub fn fill_normal<R: Rng + ?Sized>(rng: &mut R, out: &mut [f64]) {
    for pair in out.chunks_mut(2) {
        let u1 = uniform(rng);
        let u2 = uniform(rng);
        let radius = (-2.0 * (1.0 - u1).ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        pair[0] = radius * angle.cos();
        if let Some(second) = pair.get_mut(1) {
            *second = radius * angle.sin();
        }
    }
}

/// Per-sample noise streams for a batch of samples identified by global indices.
///
/// ```
/// use diffusion_core::noise::{NoiseSource, SampleNoise};
/// let mut all = SampleNoise::range(7, 0..4);
/// let mut last = SampleNoise::range(7, 3..4);
/// let a = all.normal(4, 3);
/// let b = last.normal(1, 3);
/// assert_eq!(&a[9..12], &b[..]); // sample 3 is the same in a batch of 4 and of 1
/// ```
#[derive(Clone, Debug)]
pub struct SampleNoise {
    seed: u64,
    samples: Vec<u64>,
    rngs: Vec<ChaCha12Rng>,
}

impl SampleNoise {
    /// Streams for the samples with the given global indices, under `seed`.
    pub fn new(seed: u64, samples: impl IntoIterator<Item = u64>) -> Self {
        let samples: Vec<u64> = samples.into_iter().collect();
        let rngs = samples.iter().map(|&i| sample_rng(seed, i)).collect();
        Self { seed, samples, rngs }
    }

    /// Streams for the samples `range` (e.g. `0..64`, or `64..128` for the second batch).
    pub fn range(seed: u64, range: Range<u64>) -> Self {
        Self::new(seed, range)
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The global indices of the samples, in batch order.
    pub fn samples(&self) -> &[u64] {
        &self.samples
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// `features` uniform numbers in `[0, 1)` for every sample, row-major.
    pub fn uniform(&mut self, features: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.len() * features);
        for rng in &mut self.rngs {
            out.extend((0..features).map(|_| uniform(rng)));
        }
        out
    }
}

impl NoiseSource for SampleNoise {
    /// # Panics
    /// If `n` differs from the number of samples the streams were made for: that is a
    /// programming error (the sampler and its noise disagree about the batch).
    fn normal(&mut self, n: usize, features: usize) -> Vec<f64> {
        assert_eq!(
            n,
            self.len(),
            "noise for {n} samples asked of streams made for {}",
            self.len()
        );
        let mut out = vec![0.0; n * features];
        if features == 0 {
            return out;
        }
        let rows = out.par_chunks_mut(features).zip(self.rngs.par_iter_mut());
        rows.for_each(|(row, rng)| fill_normal_in_blocks(rng, row));
        out
    }
}

/// Standard normal numbers per parallel task: an even count, so that every block starts a pair.
const BLOCK: usize = 1 << 13;

/// [`fill_normal`] from `rng`, in blocks of [`BLOCK`] numbers filled in parallel, each from a
/// copy of the stream moved to the block's first word; `rng` ends where the sequential fill
/// would leave it.
fn fill_normal_in_blocks(rng: &mut ChaCha12Rng, out: &mut [f64]) {
    if out.len() <= BLOCK {
        // One block: from the stream itself, without copying and moving it.
        return fill_normal(rng, out);
    }
    let start = rng.get_word_pos();
    // Two 64-bit outputs, four 32-bit words, a pair.
    let words = |values: usize| 4 * values.div_ceil(2) as u128;
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(k, block)| {
        let mut own = rng.clone();
        own.set_word_pos(start + words(k * BLOCK));
        fill_normal(&mut own, block);
    });
    rng.set_word_pos(start + words(out.len()));
}

/// Replays a fixed list of draws in order: the noise a reference implementation drew, so that
/// a stochastic sampler can be compared with it exactly.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    draws: Vec<Vec<f64>>,
    next: usize,
}

impl Replay {
    /// Replays `draws`, each `n · features` values row-major.
    pub fn new(draws: Vec<Vec<f64>>) -> Self {
        Self { draws, next: 0 }
    }

    /// How many draws were taken.
    pub fn consumed(&self) -> usize {
        self.next
    }

    /// How many draws there are.
    pub fn len(&self) -> usize {
        self.draws.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.draws.is_empty()
    }
}

impl NoiseSource for Replay {
    /// # Panics
    /// When the sampler asks for more draws than were recorded, or of another size: the
    /// sampler and the recording disagree, which is what a replay exists to catch.
    fn normal(&mut self, n: usize, features: usize) -> Vec<f64> {
        let draw = self
            .draws
            .get(self.next)
            .unwrap_or_else(|| panic!("draw {} asked of a replay of {}", self.next + 1, self.draws.len()));
        assert_eq!(
            draw.len(),
            n * features,
            "replayed draw {} has the wrong size",
            self.next
        );
        self.next += 1;
        draw.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_does_not_change_a_sample() {
        let mut big = SampleNoise::range(42, 0..64);
        let mut one = SampleNoise::new(42, [17]);
        let big_draws: Vec<Vec<f64>> = (0..3).map(|_| big.normal(64, 5)).collect();
        for draw in big_draws {
            assert_eq!(&draw[17 * 5..18 * 5], &one.normal(1, 5)[..]);
        }
    }

    #[test]
    fn parallel_blocks_give_the_sequential_stream() {
        // Rows across three blocks, odd (the last pair is cut), drawn twice, after a short row
        // and around uniforms: every draw must continue each stream where the last left it.
        let long = 2 * BLOCK + 3;
        let mut noise = SampleNoise::new(5, [0, 9]);
        let short = noise.normal(2, 5);
        let first = noise.normal(2, long);
        let uniforms = noise.uniform(3);
        let second = noise.normal(2, long);
        for (row, sample) in [0, 9].into_iter().enumerate() {
            let mut rng = sample_rng(5, sample);
            // The row's next `len` normals of its own stream, drawn one at a time.
            let expect = |rng: &mut ChaCha12Rng, draw: &[f64], len: usize| {
                let mut expected = vec![0.0; len];
                fill_normal(rng, &mut expected);
                assert_eq!(
                    &draw[row * len..(row + 1) * len],
                    &expected[..],
                    "sample {sample}"
                );
            };
            expect(&mut rng, &short, 5);
            expect(&mut rng, &first, long);
            let u: Vec<f64> = (0..3).map(|_| uniform(&mut rng)).collect();
            assert_eq!(&uniforms[row * 3..row * 3 + 3], &u[..], "sample {sample}");
            expect(&mut rng, &second, long);
        }
    }

    #[test]
    fn seeds_and_samples_differ() {
        let a = SampleNoise::new(1, [0]).normal(1, 4);
        let b = SampleNoise::new(2, [0]).normal(1, 4);
        let c = SampleNoise::new(1, [1]).normal(1, 4);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn normals_have_unit_moments() {
        let n = 200_000;
        let mut rng = sample_rng(3, 0);
        let mut z = vec![0.0; n];
        fill_normal(&mut rng, &mut z);
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = z.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n as f64 / var.powi(2);
        // Standard errors: mean 1/sqrt(n) = 0.0022, var sqrt(2/n) = 0.0032, kurtosis sqrt(24/n) = 0.011.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
        assert!((kurt - 3.0).abs() < 0.06, "kurtosis {kurt}");
        // The fraction beyond 1.96 is 5%: standard error sqrt(0.05 * 0.95 / n) = 0.0005.
        let tail = z.iter().filter(|x| x.abs() > 1.959_963_985).count() as f64 / n as f64;
        assert!((tail - 0.05).abs() < 0.0025, "tail {tail}");
    }

    #[test]
    fn uniform_is_in_the_unit_interval() {
        let u = SampleNoise::range(0, 0..3).uniform(1000);
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    }
}
