//! The Inception-v3 feature extractor of FID (Heusel et al. 2017) as pytorch-fid builds it from
//! the TensorFlow graph `pt_inception-2015-12-05`: torchvision's Inception-v3 with the FID
//! variants of its mixed blocks (average pools that do not count padding, a max pool in the last
//! block), 1008 classes, batch norms with ε = 0.001. Images in [0, 1] are resized to 299 × 299
//! by bilinear interpolation (half-pixel centres, no antialiasing: `F.interpolate(...,
//! mode='bilinear', align_corners=False)`), scaled to [−1, 1], and mapped to the 2048 pool3
//! features (and the 1008 logits the Inception Score uses).
//!
//! The weights cannot be downloaded here: pass pytorch-fid's `pt_inception-2015-12-05-*.pth`
//! (or a safetensors export of it) to [`InceptionV3::load`]; its tensor names are used as they
//! are.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::store::{KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, activation::relu};

use crate::error::{MetricsError, Result};

/// Pool3 features per image.
pub const FEATURES: usize = 2048;
/// Classes of the TF graph's classifier (1000 ImageNet classes and 8 unused).
pub const CLASSES: usize = 1008;

/// Convolution (no bias) → batch norm (ε = 0.001) → ReLU.
#[derive(Module, Debug)]
pub struct BasicConv2d {
    conv: Conv2d,
    bn: BatchNorm,
}

impl BasicConv2d {
    fn new(device: &Device, io: [usize; 2], kernel: [usize; 2], stride: usize, pad: [usize; 2]) -> Self {
        Self {
            conv: Conv2dConfig::new(io, kernel)
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad[0], pad[1], pad[0], pad[1]))
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            bn: BatchNormConfig::new(io[1]).with_epsilon(1e-3).init(device),
        }
    }

    fn square(device: &Device, io: [usize; 2], k: usize, stride: usize, pad: usize) -> Self {
        Self::new(device, io, [k, k], stride, [pad, pad])
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.bn.forward(self.conv.forward(x)))
    }
}

fn avg_pool_3x3() -> AvgPool2d {
    // The FID blocks average without counting the zero padding (TF's behaviour).
    AvgPool2dConfig::new([3, 3])
        .with_strides([1, 1])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_count_include_pad(false)
        .init()
}

fn max_pool_3x3(stride: usize, pad: usize) -> MaxPool2d {
    MaxPool2dConfig::new([3, 3])
        .with_strides([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init()
}

/// Mixed_5b–5d (`FIDInceptionA`).
#[derive(Module, Debug)]
pub struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
    pool: AvgPool2d,
}

impl InceptionA {
    fn new(d: &Device, c: usize, pool_features: usize) -> Self {
        Self {
            branch1x1: BasicConv2d::square(d, [c, 64], 1, 1, 0),
            branch5x5_1: BasicConv2d::square(d, [c, 48], 1, 1, 0),
            branch5x5_2: BasicConv2d::square(d, [48, 64], 5, 1, 2),
            branch3x3dbl_1: BasicConv2d::square(d, [c, 64], 1, 1, 0),
            branch3x3dbl_2: BasicConv2d::square(d, [64, 96], 3, 1, 1),
            branch3x3dbl_3: BasicConv2d::square(d, [96, 96], 3, 1, 1),
            branch_pool: BasicConv2d::square(d, [c, pool_features], 1, 1, 0),
            pool: avg_pool_3x3(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self.branch5x5_2.forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        let bp = self.branch_pool.forward(self.pool.forward(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// Mixed_6a (`InceptionB`): the grid reduction 35 → 17.
#[derive(Module, Debug)]
pub struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    pool: MaxPool2d,
}

impl InceptionB {
    fn new(d: &Device, c: usize) -> Self {
        Self {
            branch3x3: BasicConv2d::square(d, [c, 384], 3, 2, 0),
            branch3x3dbl_1: BasicConv2d::square(d, [c, 64], 1, 1, 0),
            branch3x3dbl_2: BasicConv2d::square(d, [64, 96], 3, 1, 1),
            branch3x3dbl_3: BasicConv2d::square(d, [96, 96], 3, 2, 0),
            pool: max_pool_3x3(2, 0),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        Tensor::cat(vec![b3, bd, self.pool.forward(x)], 1)
    }
}

/// Mixed_6b–6e (`FIDInceptionC`): factorised 7 × 7 convolutions.
#[derive(Module, Debug)]
pub struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7_1: BasicConv2d,
    branch7x7_2: BasicConv2d,
    branch7x7_3: BasicConv2d,
    branch7x7dbl_1: BasicConv2d,
    branch7x7dbl_2: BasicConv2d,
    branch7x7dbl_3: BasicConv2d,
    branch7x7dbl_4: BasicConv2d,
    branch7x7dbl_5: BasicConv2d,
    branch_pool: BasicConv2d,
    pool: AvgPool2d,
}

impl InceptionC {
    fn new(d: &Device, c: usize, c7: usize) -> Self {
        let row = |io| BasicConv2d::new(d, io, [1, 7], 1, [0, 3]);
        let col = |io| BasicConv2d::new(d, io, [7, 1], 1, [3, 0]);
        Self {
            branch1x1: BasicConv2d::square(d, [c, 192], 1, 1, 0),
            branch7x7_1: BasicConv2d::square(d, [c, c7], 1, 1, 0),
            branch7x7_2: row([c7, c7]),
            branch7x7_3: col([c7, 192]),
            branch7x7dbl_1: BasicConv2d::square(d, [c, c7], 1, 1, 0),
            branch7x7dbl_2: col([c7, c7]),
            branch7x7dbl_3: row([c7, c7]),
            branch7x7dbl_4: col([c7, c7]),
            branch7x7dbl_5: row([c7, 192]),
            branch_pool: BasicConv2d::square(d, [c, 192], 1, 1, 0),
            pool: avg_pool_3x3(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = [&self.branch7x7_1, &self.branch7x7_2, &self.branch7x7_3]
            .iter()
            .fold(x.clone(), |h, layer| layer.forward(h));
        let bd = [
            &self.branch7x7dbl_1,
            &self.branch7x7dbl_2,
            &self.branch7x7dbl_3,
            &self.branch7x7dbl_4,
            &self.branch7x7dbl_5,
        ]
        .iter()
        .fold(x.clone(), |h, layer| layer.forward(h));
        let bp = self.branch_pool.forward(self.pool.forward(x));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }
}

/// Mixed_7a (`InceptionD`): the grid reduction 17 → 8.
#[derive(Module, Debug)]
pub struct InceptionD {
    branch3x3_1: BasicConv2d,
    branch3x3_2: BasicConv2d,
    branch7x7x3_1: BasicConv2d,
    branch7x7x3_2: BasicConv2d,
    branch7x7x3_3: BasicConv2d,
    branch7x7x3_4: BasicConv2d,
    pool: MaxPool2d,
}

impl InceptionD {
    fn new(d: &Device, c: usize) -> Self {
        Self {
            branch3x3_1: BasicConv2d::square(d, [c, 192], 1, 1, 0),
            branch3x3_2: BasicConv2d::square(d, [192, 320], 3, 2, 0),
            branch7x7x3_1: BasicConv2d::square(d, [c, 192], 1, 1, 0),
            branch7x7x3_2: BasicConv2d::new(d, [192, 192], [1, 7], 1, [0, 3]),
            branch7x7x3_3: BasicConv2d::new(d, [192, 192], [7, 1], 1, [3, 0]),
            branch7x7x3_4: BasicConv2d::square(d, [192, 192], 3, 2, 0),
            pool: max_pool_3x3(2, 0),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3_2.forward(self.branch3x3_1.forward(x.clone()));
        let b7 = [
            &self.branch7x7x3_1,
            &self.branch7x7x3_2,
            &self.branch7x7x3_3,
            &self.branch7x7x3_4,
        ]
        .iter()
        .fold(x.clone(), |h, layer| layer.forward(h));
        Tensor::cat(vec![b3, b7, self.pool.forward(x)], 1)
    }
}

/// Mixed_7b (`FIDInceptionE_1`, average pool) and Mixed_7c (`FIDInceptionE_2`, max pool).
#[derive(Module, Debug)]
pub struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    avg: AvgPool2d,
    max: MaxPool2d,
    max_pool: bool,
}

impl InceptionE {
    fn new(d: &Device, c: usize, max_pool: bool) -> Self {
        Self {
            branch1x1: BasicConv2d::square(d, [c, 320], 1, 1, 0),
            branch3x3_1: BasicConv2d::square(d, [c, 384], 1, 1, 0),
            branch3x3_2a: BasicConv2d::new(d, [384, 384], [1, 3], 1, [0, 1]),
            branch3x3_2b: BasicConv2d::new(d, [384, 384], [3, 1], 1, [1, 0]),
            branch3x3dbl_1: BasicConv2d::square(d, [c, 448], 1, 1, 0),
            branch3x3dbl_2: BasicConv2d::square(d, [448, 384], 3, 1, 1),
            branch3x3dbl_3a: BasicConv2d::new(d, [384, 384], [1, 3], 1, [0, 1]),
            branch3x3dbl_3b: BasicConv2d::new(d, [384, 384], [3, 1], 1, [1, 0]),
            branch_pool: BasicConv2d::square(d, [c, 192], 1, 1, 0),
            avg: avg_pool_3x3(),
            max: max_pool_3x3(1, 1),
            max_pool,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let h = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![self.branch3x3_2a.forward(h.clone()), self.branch3x3_2b.forward(h)],
            1,
        );
        let h = self
            .branch3x3dbl_2
            .forward(self.branch3x3dbl_1.forward(x.clone()));
        let bd = Tensor::cat(
            vec![
                self.branch3x3dbl_3a.forward(h.clone()),
                self.branch3x3dbl_3b.forward(h),
            ],
            1,
        );
        let pooled = if self.max_pool {
            self.max.forward(x)
        } else {
            self.avg.forward(x)
        };
        Tensor::cat(vec![b1, b3, bd, self.branch_pool.forward(pooled)], 1)
    }
}

/// pytorch-fid's FID Inception-v3 (names as in its state dict, lower-cased).
#[derive(Module, Debug)]
pub struct InceptionV3 {
    conv2d_1a_3x3: BasicConv2d,
    conv2d_2a_3x3: BasicConv2d,
    conv2d_2b_3x3: BasicConv2d,
    conv2d_3b_1x1: BasicConv2d,
    conv2d_4a_3x3: BasicConv2d,
    mixed_5b: InceptionA,
    mixed_5c: InceptionA,
    mixed_5d: InceptionA,
    mixed_6a: InceptionB,
    mixed_6b: InceptionC,
    mixed_6c: InceptionC,
    mixed_6d: InceptionC,
    mixed_6e: InceptionC,
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
    fc: Linear,
    pool: MaxPool2d,
}

/// pool3 features and logits of a batch.
#[derive(Clone, Debug)]
pub struct InceptionOutput {
    /// `[n, 2048]`.
    pub pool3: Tensor<2>,
    /// `[n, 1008]`.
    pub logits: Tensor<2>,
}

impl InceptionV3 {
    /// The architecture with zero weights (load real ones with [`InceptionV3::load`]).
    pub fn new(device: &Device) -> Self {
        let d = device;
        Self {
            conv2d_1a_3x3: BasicConv2d::square(d, [3, 32], 3, 2, 0),
            conv2d_2a_3x3: BasicConv2d::square(d, [32, 32], 3, 1, 0),
            conv2d_2b_3x3: BasicConv2d::square(d, [32, 64], 3, 1, 1),
            conv2d_3b_1x1: BasicConv2d::square(d, [64, 80], 1, 1, 0),
            conv2d_4a_3x3: BasicConv2d::square(d, [80, 192], 3, 1, 0),
            mixed_5b: InceptionA::new(d, 192, 32),
            mixed_5c: InceptionA::new(d, 256, 64),
            mixed_5d: InceptionA::new(d, 288, 64),
            mixed_6a: InceptionB::new(d, 288),
            mixed_6b: InceptionC::new(d, 768, 128),
            mixed_6c: InceptionC::new(d, 768, 160),
            mixed_6d: InceptionC::new(d, 768, 160),
            mixed_6e: InceptionC::new(d, 768, 192),
            mixed_7a: InceptionD::new(d, 768),
            mixed_7b: InceptionE::new(d, 1280, false),
            mixed_7c: InceptionE::new(d, 2048, true),
            fc: LinearConfig::new(FEATURES, CLASSES)
                .with_initializer(Initializer::Zeros)
                .init(device),
            pool: max_pool_3x3(2, 0),
        }
    }

    /// Loads pytorch-fid's weights: its `.pth` file (`pt_inception-2015-12-05-6726825d.pth`) or
    /// a safetensors file with the same tensor names. Every tensor must be found with its shape.
    pub fn load(device: &Device, path: &Path) -> Result<Self> {
        let file_err = |reason: String| MetricsError::File {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(file_err(
                "no such file: pass pytorch-fid's pt_inception-2015-12-05-6726825d.pth (from its GitHub \
                 releases), or a safetensors export of it"
                    .into(),
            ));
        }
        let mut model = Self::new(device);
        let result = if path.extension().is_some_and(|e| e == "safetensors") {
            model
                .load_from(&mut safetensors(SafetensorsStore::from_file(path)))
                .map_err(|e| e.to_string())
        } else {
            let mut store = PytorchStore::from_file(path)
                .remap(remapper())
                .allow_partial(true)
                .validate(false);
            model.load_from(&mut store).map_err(|e| e.to_string())
        };
        complete(result).map_err(file_err)?;
        Ok(model)
    }

    /// Loads from the bytes of a safetensors file with pytorch-fid's tensor names.
    pub fn load_safetensors_bytes(device: &Device, bytes: Vec<u8>) -> Result<Self> {
        let mut model = Self::new(device);
        let result = model.load_from(&mut safetensors(SafetensorsStore::from_bytes(Some(bytes))));
        complete(result.map_err(|e| e.to_string())).map_err(MetricsError::Shape)?;
        Ok(model)
    }

    /// The 299 × 299 input in [−1, 1] of images in [0, 1] of any size (pytorch-fid's resize).
    pub fn preprocess(images: Tensor<4>) -> Tensor<4> {
        let resized = interpolate(
            images,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([299, 299]),
        );
        resized.mul_scalar(2.0).sub_scalar(1.0)
    }

    /// The network on preprocessed input, stage by stage (`stages` receives each named stage's
    /// output, for debugging against pytorch-fid).
    pub fn forward_stages(&self, x: Tensor<4>, mut stage: impl FnMut(&str, &Tensor<4>)) -> InceptionOutput {
        let mut h = x;
        let mut step = |name: &str, h: Tensor<4>| {
            stage(name, &h);
            h
        };
        h = step("Conv2d_1a_3x3", self.conv2d_1a_3x3.forward(h));
        h = step("Conv2d_2a_3x3", self.conv2d_2a_3x3.forward(h));
        h = step("Conv2d_2b_3x3", self.conv2d_2b_3x3.forward(h));
        h = step("maxpool1", self.pool.forward(h));
        h = step("Conv2d_3b_1x1", self.conv2d_3b_1x1.forward(h));
        h = step("Conv2d_4a_3x3", self.conv2d_4a_3x3.forward(h));
        h = step("maxpool2", self.pool.forward(h));
        h = step("Mixed_5b", self.mixed_5b.forward(h));
        h = step("Mixed_5c", self.mixed_5c.forward(h));
        h = step("Mixed_5d", self.mixed_5d.forward(h));
        h = step("Mixed_6a", self.mixed_6a.forward(h));
        h = step("Mixed_6b", self.mixed_6b.forward(h));
        h = step("Mixed_6c", self.mixed_6c.forward(h));
        h = step("Mixed_6d", self.mixed_6d.forward(h));
        h = step("Mixed_6e", self.mixed_6e.forward(h));
        h = step("Mixed_7a", self.mixed_7a.forward(h));
        h = step("Mixed_7b", self.mixed_7b.forward(h));
        h = step("Mixed_7c", self.mixed_7c.forward(h));
        let [n, c, _, _] = h.dims();
        let pooled = step("avgpool", h.mean_dim(3).mean_dim(2));
        let pool3 = pooled.reshape([n, c]);
        let logits = self.fc.forward(pool3.clone());
        InceptionOutput { pool3, logits }
    }

    /// pool3 features and logits of images in [0, 1] (`[n, 3, h, w]`, any size).
    pub fn forward(&self, images: Tensor<4>) -> InceptionOutput {
        self.forward_stages(Self::preprocess(images), |_, _| {})
    }
}

/// A safetensors store with PyTorch's layouts and pytorch-fid's names.
fn safetensors(store: SafetensorsStore) -> SafetensorsStore {
    store
        .with_from_adapter(PyTorchToBurnAdapter)
        .remap(remapper())
        .allow_partial(true)
        .validate(false)
}

/// Refuses a load that left tensors missing or failed on shapes.
fn complete(
    result: std::result::Result<burn::store::ApplyResult, String>,
) -> std::result::Result<(), String> {
    let result = result?;
    let missing: Vec<&String> = result.missing.iter().map(|(k, _)| k).collect();
    if missing.is_empty() && result.errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not pytorch-fid's Inception weights: missing {missing:?}, errors {:?}",
            result.errors
        ))
    }
}

/// pytorch-fid's names → ours (its modules are capitalised).
fn remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![(r"^Conv2d_", "conv2d_"), (r"^Mixed_", "mixed_")])
        .expect("valid patterns")
}
