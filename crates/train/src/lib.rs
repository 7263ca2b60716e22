//! # diffusion-train
//!
//! Training for any objective, built for long runs:
//!
//! - [`trainer`]: the step-based loop (AdamW, warm-up and decay, gradient clipping and
//!   accumulation, bf16 mixed precision, NaN policy, logging), and [`train`] for short runs;
//! - [`ema`]: EMAs of the weights (constant, warm-up, EDM half-life);
//! - [`checkpoint`]: atomic checkpoints that resume exactly;
//! - [`grad`]: global gradient norms, clipping, accumulation;
//! - [`grid`]: sample grids as PNG during training, from a fixed seed;
//! - [`progress`]: progress bar or log lines, `metrics.jsonl`, `loss.png`;
//! - [`parallel`]: data parallelism over several devices.

pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod error;
pub mod grad;
pub mod grid;
pub mod parallel;
pub mod progress;
pub mod trainer;

pub use checkpoint::{CheckpointState, latest_checkpoint, list_checkpoints};
pub use config::{ComputePrecision, EmaSpec, LrDecay, NanPolicy, TrainConfig};
pub use ema::{Ema, EmaSchedule};
pub use error::TrainError;
pub use grid::SampleGrid;
pub use parallel::{data_parallel_step, sharded_gradients};
pub use trainer::{LogRecord, NoHooks, TrainHooks, Trainer, cast_copy, train};
