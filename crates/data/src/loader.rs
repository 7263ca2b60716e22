//! Batches of an [`ImageSet`] on a device, in a deterministic order, loaded ahead of use.
//!
//! The order is a function of (seed, step) only: sample position p of the stream belongs to
//! epoch ⌊p / n⌋, whose permutation is a Fisher–Yates shuffle driven by the ChaCha12 stream
//! (seed, epoch); batch k is positions [kB, (k + 1)B). Whether position p is flipped
//! horizontally is one bit of SplitMix64(seed, p). So a run resumed at step k sees exactly the
//! batches it would have seen, with nothing to store, and changing the batch size does not
//! change the sequence of images. A background thread prepares the next batches (decoding,
//! flipping, scaling to [−1, 1]) while the device computes.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use diffusion_core::noise::sample_rng;
use rand::RngExt;

use crate::error::{DataError, Result};
use crate::images::{ImageSet, to_signed_unit};

/// How batches are drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// The seed of the order and the flips.
    pub seed: u64,
    /// Shuffle every epoch (else the set's order, repeated).
    pub shuffle: bool,
    /// Random horizontal flips (half of the images).
    pub hflip: bool,
    /// Batches [`DataLoader::stream`] prepares ahead on its background thread (at least 1).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// Shuffled, flipped, two batches ahead.
    pub fn new(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            seed,
            shuffle: true,
            hflip: true,
            prefetch: 2,
        }
    }
}

/// A batch on the host: `[B, C, H, W]` values in [−1, 1] and the labels.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// The step it belongs to.
    pub step: usize,
    /// Images, row-major `[B, C, H, W]`.
    pub pixels: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// The set's indices of the images.
    pub indices: Vec<usize>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
}

impl HostBatch {
    /// The images on `device` in `dtype`.
    pub fn images(&self, device: &Device, dtype: DType) -> Tensor<4> {
        Tensor::from_data(TensorData::new(self.pixels.clone(), self.shape), (device, dtype))
    }

    /// The labels on `device`.
    pub fn labels(&self, device: &Device) -> Tensor<1, Int> {
        let labels: Vec<i64> = self.labels.iter().map(|&l| l as i64).collect();
        Tensor::from_data(TensorData::new(labels, [self.labels.len()]), device)
    }
}

/// Batches of an image set.
#[derive(Clone, Debug)]
pub struct DataLoader {
    set: Arc<ImageSet>,
    config: LoaderConfig,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl DataLoader {
    /// A loader of `set`.
    pub fn new(set: impl Into<Arc<ImageSet>>, config: LoaderConfig) -> Result<Self> {
        let set = set.into();
        if set.is_empty() {
            return Err(DataError::Config(format!("the data set `{}` is empty", set.name)));
        }
        if config.batch_size == 0 {
            return Err(DataError::Config("the batch size must be positive".into()));
        }
        Ok(Self { set, config })
    }

    /// The data set.
    pub fn set(&self) -> &ImageSet {
        &self.set
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The permutation of epoch `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.set.len()).collect();
        if self.config.shuffle {
            let mut rng = sample_rng(self.config.seed, epoch);
            for i in (1..order.len()).rev() {
                let j = rng.random_range(0..=i);
                order.swap(i, j);
            }
        }
        order
    }

    /// Whether stream position `position` is flipped.
    pub fn flipped(&self, position: u64) -> bool {
        self.config.hflip && splitmix64(self.config.seed ^ splitmix64(position)) >> 63 == 1
    }

    /// The set's indices of batch `step`.
    pub fn indices(&self, step: usize) -> Vec<usize> {
        let n = self.set.len() as u64;
        let b = self.config.batch_size as u64;
        let mut cached: Option<(u64, Vec<usize>)> = None;
        (step as u64 * b..(step as u64 + 1) * b)
            .map(|p| {
                let epoch = p / n;
                if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    cached = Some((epoch, self.epoch_order(epoch)));
                }
                cached.as_ref().unwrap().1[(p % n) as usize]
            })
            .collect()
    }

    /// Batch `step` on the host.
    pub fn host_batch(&self, step: usize) -> HostBatch {
        let indices = self.indices(step);
        let [c, h, w] = self.set.shape;
        let mut pixels = Vec::with_capacity(indices.len() * c * h * w);
        let first = step as u64 * self.config.batch_size as u64;
        for (k, &i) in indices.iter().enumerate() {
            let image = self.set.image(i);
            if self.flipped(first + k as u64) {
                for row in image.chunks_exact(w) {
                    pixels.extend(row.iter().rev().map(|&b| to_signed_unit(b)));
                }
            } else {
                pixels.extend(image.iter().map(|&b| to_signed_unit(b)));
            }
        }
        HostBatch {
            step,
            labels: indices.iter().map(|&i| self.set.labels[i]).collect(),
            indices,
            pixels,
            shape: [self.config.batch_size, c, h, w],
        }
    }

    /// Batches `start, start + 1, …` prepared `prefetch` ahead on a background thread.
    pub fn stream(&self, start: usize) -> Prefetch {
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let loader = self.clone();
        let worker = std::thread::spawn(move || {
            for step in start.. {
                if tx.send(loader.host_batch(step)).is_err() {
                    break;
                }
            }
        });
        Prefetch {
            rx: Some(rx),
            worker: Some(worker),
        }
    }
}

/// Batches made ahead of use by a background thread; dropping it stops the thread.
pub struct Prefetch {
    rx: Option<Receiver<HostBatch>>,
    worker: Option<JoinHandle<()>>,
}

impl Iterator for Prefetch {
    type Item = HostBatch;

    fn next(&mut self) -> Option<HostBatch> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
