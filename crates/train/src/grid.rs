//! Sample grids during training: every `sample_every` steps the sampling weights (the first
//! EMA) draw the same seeded batch, written as `samples/step-XXXXXXXX.png` in the run folder,
//! so grids of different steps show the same noise developing into images.

use std::path::PathBuf;

use burn::tensor::Tensor;
use diffusion_core::tensor::to_f64;

use crate::trainer::TrainHooks;

/// A hook that writes a PNG grid of `sample(model)` (`[n, c, h, w]` in [−1, 1], drawn with a
/// fixed seed) at every sampling step.
pub struct SampleGrid<F> {
    dir: PathBuf,
    columns: usize,
    sample: F,
}

impl<F> SampleGrid<F> {
    /// Grids of `columns` columns under `run_dir/samples/`.
    pub fn new(run_dir: impl Into<PathBuf>, columns: usize, sample: F) -> Self {
        Self {
            dir: run_dir.into().join("samples"),
            columns,
            sample,
        }
    }

    /// The grid file of `step`.
    pub fn path(&self, step: usize) -> PathBuf {
        self.dir.join(format!("step-{step:08}.png"))
    }
}

impl<M, F: FnMut(&M) -> Tensor<4>> TrainHooks<M> for SampleGrid<F> {
    fn on_sample(&mut self, step: usize, model: &M) -> Result<(), String> {
        let images = (self.sample)(model);
        let dims = images.dims();
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        diffusion_viz::image_grid(&self.path(step), &to_f64(&images), dims, self.columns)
            .map_err(|e| e.to_string())
    }
}
