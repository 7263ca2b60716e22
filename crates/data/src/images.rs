//! A labelled set of 8-bit images held in memory, as the usual benchmarks are.

/// `n` images of `channels × height × width` bytes (channel-major, like the CIFAR files and
/// PyTorch tensors) with a class label each.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// The set's name (`cifar10-train`, …).
    pub name: String,
    /// Channels, height, width.
    pub shape: [usize; 3],
    /// The pixels, image after image, each `[C, H, W]`.
    pub pixels: Vec<u8>,
    /// The class of each image.
    pub labels: Vec<u32>,
    /// The class names, by label.
    pub classes: Vec<String>,
}

impl ImageSet {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The pixels of image `i`, `[C, H, W]`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The images of one class only (for class-restricted experiments).
    pub fn filter_class(&self, label: u32) -> ImageSet {
        let keep: Vec<usize> = (0..self.len()).filter(|&i| self.labels[i] == label).collect();
        self.select(&keep)
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            name: self.name.clone(),
            shape: self.shape,
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
        }
    }
}

/// `[0, 255]` → `[−1, 1]`: x/127.5 − 1 (DDPM's scaling).
pub fn to_signed_unit(byte: u8) -> f32 {
    byte as f32 / 127.5 - 1.0
}

/// `[−1, 1]` → `[0, 255]`, rounded and clamped (the inverse of [`to_signed_unit`] on the grid).
pub fn to_byte(x: f64) -> u8 {
    ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}
