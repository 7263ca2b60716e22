//! # diffusion-train
//!
//! Training for any objective: [`train`] runs AdamW steps on a loss closure, seeded and
//! step-based, with the mean loss logged every N steps.

pub mod error;
pub mod trainer;

pub use error::TrainError;
pub use trainer::{LogRecord, LrDecay, TrainConfig, train};
