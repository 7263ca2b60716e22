//! im2col and its adjoint col2im on NCHW images: the lowering of a convolution to one matrix
//! product per image (Chellapilla et al. 2006), y_b = W · cols(x_b) with W of shape
//! `[C_out, C_in·k_h·k_w]`.
//!
//! `cols(x_b)[(c, i, j), (y, x)] = x[b, c, y·s_h + i − p_top, x·s_w + j − p_left]` (zero
//! outside the image), one image at a time so that the patch matrix can live in a reused
//! buffer (or a band of output rows at a time, for large images); for stride 1 every row
//! segment is a shifted contiguous copy.

use std::ops::Range;

use burn::backend::ops::ConvOptions;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;

/// The geometry of a 2-D convolution's patches (dilation 1, one group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patches {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Strides along the height and the width.
    pub stride: [usize; 2],
    /// Zero rows above and zero columns left of the image.
    pub pad_begin: [usize; 2],
    /// Zero rows below and zero columns right of the image, as the layer has them (the patches
    /// may stop short of some).
    pub pad_end: [usize; 2],
    /// Output height and width.
    pub output: [usize; 2],
}

impl Patches {
    /// The patches of a convolution with the given kernel, strides and padding (top/bottom,
    /// left/right); `None` when the kernel does not fit the padded input.
    pub fn new(
        [batch, channels, height, width]: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [(usize, usize); 2],
    ) -> Option<Self> {
        let out = |size: usize, (a, b): (usize, usize), k: usize, s: usize| {
            (size + a + b).checked_sub(k).map(|span| span / s + 1)
        };
        Some(Self {
            batch,
            channels,
            input: [height, width],
            kernel,
            stride,
            pad_begin: [padding[0].0, padding[1].0],
            pad_end: [padding[0].1, padding[1].1],
            output: [
                out(height, padding[0], kernel[0], stride[0])?,
                out(width, padding[1], kernel[1], stride[1])?,
            ],
        })
    }

    /// Rows of the patch matrix of one image: C_in·k_h·k_w.
    pub fn rows(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// The patches of `conv` on inputs of shape `input`; `None` for what the kernels do not
    /// take: groups, dilation, padding that depends on the input size (`Same`), stride 0, empty
    /// sizes, a channel count that is not the layer's, a kernel larger than the padded input.
    pub fn of_conv(conv: &Conv2d, input: [usize; 4]) -> Option<Self> {
        let [_, c_in, kh, kw] = conv.weight.dims();
        let plain = conv.groups == 1 && conv.dilation == [1, 1] && !conv.stride.contains(&0);
        let sizes = input.into_iter().chain(conv.weight.dims()).all(|d| d > 0);
        if !plain || !sizes || input[1] != c_in {
            return None;
        }
        let padding = match conv.padding {
            PaddingConfig2d::Valid => [(0, 0), (0, 0)],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
            _ => return None,
        };
        Self::new(input, [kh, kw], conv.stride, padding)
    }

    /// burn's options for the same convolution, with the layer's padding.
    pub fn conv_options(&self) -> ConvOptions<2> {
        let padding = [0, 1].map(|axis| (self.pad_begin[axis], self.pad_end[axis]));
        ConvOptions::new_with_padding(self.stride, padding, [1, 1], 1)
    }

    /// Columns of the patch matrix of one image: the output pixels.
    pub fn columns(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// The kernel offset (i, j) of patch row `r` (rows run over channels, then i, then j).
    fn offsets(&self, r: usize) -> (usize, usize) {
        ((r / self.kernel[1]) % self.kernel[0], r % self.kernel[1])
    }

    /// Output positions `o` along one axis whose input position `o·stride + offset − pad` lies
    /// in `0..size`.
    fn valid(&self, axis: usize, offset: usize) -> Range<usize> {
        let (size, s, pad) = (self.input[axis], self.stride[axis], self.pad_begin[axis]);
        let hi = (size + pad).saturating_sub(offset).div_ceil(s);
        let lo = pad.saturating_sub(offset).div_ceil(s);
        let hi = hi.min(self.output[axis]);
        lo.min(hi)..hi
    }

    /// The input index of output position `o` at kernel offset `offset` (for `o` in `valid`).
    fn source(&self, axis: usize, o: usize, offset: usize) -> usize {
        o * self.stride[axis] + offset - self.pad_begin[axis]
    }
}

/// Fills `cols` (`[C_in·k_h·k_w, (y₁ − y₀)·W_out]`, row-major) with the patches of output rows
/// `out_rows` = y₀..y₁ of one image `image` (`[C_in, H, W]`); every entry is written, so `cols`
/// may hold anything before. `0..H_out` gives the whole patch matrix.
pub fn im2col(image: &[f32], p: &Patches, out_rows: Range<usize>, cols: &mut [f32]) {
    let (plane, ow, y0) = (p.input[0] * p.input[1], p.output[1], out_rows.start);
    let n = check_sizes(p, image.len(), &out_rows, cols.len());
    for (r, row) in cols.chunks_mut(n).enumerate() {
        let channel = &image[r / (p.kernel[0] * p.kernel[1]) * plane..][..plane];
        // Zero what lies outside the image (only the borders, for the usual paddings).
        let ys = intersect(p.valid(0, p.offsets(r).0), &out_rows);
        if p.valid(1, p.offsets(r).1).is_empty() || ys.is_empty() {
            row.fill(0.0);
            continue;
        }
        row[..(ys.start - y0) * ow].fill(0.0);
        row[(ys.end - y0) * ow..].fill(0.0);
        for_each_segment(p, r, &out_rows, |y_src, x_src, y, xs| {
            let src = &channel[y_src * p.input[1]..][..p.input[1]];
            let segment = &mut row[(y - y0) * ow..][..ow];
            segment[..xs.start].fill(0.0);
            segment[xs.end..].fill(0.0);
            gather(&mut segment[xs], src, x_src, p.stride[1]);
        });
    }
}

/// The adjoint of [`im2col`]: adds every entry of the patch matrix `cols` of output rows
/// `out_rows` onto the pixel of `image` (`[C_in, H, W]`) it was copied from (the input gradient
/// of a convolution from its patch gradient).
pub fn col2im(cols: &[f32], p: &Patches, out_rows: Range<usize>, image: &mut [f32]) {
    let (plane, ow, y0) = (p.input[0] * p.input[1], p.output[1], out_rows.start);
    let n = check_sizes(p, image.len(), &out_rows, cols.len());
    for (r, row) in cols.chunks(n).enumerate() {
        let channel = &mut image[r / (p.kernel[0] * p.kernel[1]) * plane..][..plane];
        for_each_segment(p, r, &out_rows, |y_src, x_src, y, xs| {
            let dst = &mut channel[y_src * p.input[1]..][..p.input[1]];
            scatter_add(dst, &row[(y - y0) * ow..][xs], x_src, p.stride[1]);
        });
    }
}

/// Checks an image and a patch matrix of `out_rows` against `p`; returns the matrix's row length.
fn check_sizes(p: &Patches, image: usize, out_rows: &Range<usize>, cols: usize) -> usize {
    assert_eq!(
        image,
        p.channels * p.input[0] * p.input[1],
        "the image is not [C, H, W]"
    );
    assert!(
        out_rows.start <= out_rows.end && out_rows.end <= p.output[0],
        "output rows {out_rows:?} out of range"
    );
    let n = out_rows.len() * p.output[1];
    assert_eq!(cols, p.rows() * n, "the patch matrix has the wrong size");
    n
}

fn intersect(a: Range<usize>, b: &Range<usize>) -> Range<usize> {
    let (start, end) = (a.start.max(b.start), a.end.min(b.end));
    start.min(end)..end
}

/// Calls `f(input row, first input column, output row, output columns)` for every output row
/// in `out_rows` of patch row `r` that reads inside the image.
fn for_each_segment(
    p: &Patches,
    r: usize,
    out_rows: &Range<usize>,
    mut f: impl FnMut(usize, usize, usize, Range<usize>),
) {
    let (i, j) = p.offsets(r);
    let xs = p.valid(1, j);
    if xs.is_empty() {
        return;
    }
    let x_first = p.source(1, xs.start, j);
    for y in intersect(p.valid(0, i), out_rows) {
        f(p.source(0, y, i), x_first, y, xs.clone());
    }
}

/// `dst[k] = src[start + k·stride]`.
fn gather(dst: &mut [f32], src: &[f32], start: usize, stride: usize) {
    if stride == 1 {
        dst.copy_from_slice(&src[start..start + dst.len()]);
    } else {
        for (k, d) in dst.iter_mut().enumerate() {
            *d = src[start + k * stride];
        }
    }
}

/// `dst[start + k·stride] += src[k]`.
fn scatter_add(dst: &mut [f32], src: &[f32], start: usize, stride: usize) {
    if stride == 1 {
        for (d, s) in dst[start..start + src.len()].iter_mut().zip(src) {
            *d += s;
        }
    } else {
        for (k, s) in src.iter().enumerate() {
            dst[start + k * stride] += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct evaluation of the definition, for comparison.
    fn im2col_by_definition(x: &[f32], p: &Patches) -> Vec<f32> {
        let [kh, kw] = p.kernel;
        let mut out = Vec::new();
        for b in 0..p.batch {
            for c in 0..p.channels {
                for i in 0..kh {
                    for j in 0..kw {
                        for y in 0..p.output[0] {
                            for xo in 0..p.output[1] {
                                let yi = (y * p.stride[0] + i) as isize - p.pad_begin[0] as isize;
                                let xi = (xo * p.stride[1] + j) as isize - p.pad_begin[1] as isize;
                                let inside = (0..p.input[0] as isize).contains(&yi)
                                    && (0..p.input[1] as isize).contains(&xi);
                                out.push(if inside {
                                    x[((b * p.channels + c) * p.input[0] + yi as usize) * p.input[1]
                                        + xi as usize]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn cases() -> Vec<Patches> {
        vec![
            Patches::new([2, 3, 5, 6], [3, 3], [1, 1], [(1, 1), (1, 1)]).unwrap(),
            Patches::new([2, 2, 7, 6], [3, 3], [2, 2], [(1, 1), (1, 1)]).unwrap(),
            Patches::new([1, 2, 6, 5], [3, 2], [2, 1], [(0, 1), (2, 0)]).unwrap(),
            Patches::new([3, 4, 4, 4], [1, 1], [1, 1], [(0, 0), (0, 0)]).unwrap(),
            Patches::new([1, 1, 3, 3], [5, 5], [1, 1], [(2, 2), (2, 2)]).unwrap(),
        ]
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|k| ((k as f32 + seed) * 0.7548).sin()).collect()
    }

    #[test]
    fn im2col_follows_the_definition() {
        for p in cases() {
            let x = values(p.batch * p.channels * p.input[0] * p.input[1], 0.5);
            assert_eq!(batch_im2col(&x, &p), im2col_by_definition(&x, &p), "{p:?}");
        }
    }

    /// im2col of every image of a batch, into buffers holding garbage.
    fn batch_im2col(x: &[f32], p: &Patches) -> Vec<f32> {
        let image = p.channels * p.input[0] * p.input[1];
        let n = p.rows() * p.columns();
        let mut out = vec![f32::NAN; p.batch * n];
        for (cols, image) in out.chunks_mut(n).zip(x.chunks(image)) {
            im2col(image, p, 0..p.output[0], cols);
        }
        out
    }

    fn batch_col2im(cols: &[f32], p: &Patches) -> Vec<f32> {
        let image = p.channels * p.input[0] * p.input[1];
        let mut out = vec![0.0; p.batch * image];
        for (image, cols) in out.chunks_mut(image).zip(cols.chunks(p.rows() * p.columns())) {
            col2im(cols, p, 0..p.output[0], image);
        }
        out
    }

    /// col2im is the adjoint of im2col: ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ for all x and c.
    #[test]
    fn col2im_is_the_adjoint() {
        for p in cases() {
            let x = values(p.batch * p.channels * p.input[0] * p.input[1], 0.25);
            let c = values(p.batch * p.rows() * p.columns(), 3.0);
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a * b) as f64).sum::<f64>();
            let (lhs, rhs) = (dot(&batch_im2col(&x, &p), &c), dot(&x, &batch_col2im(&c, &p)));
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{p:?}: {lhs} vs {rhs}"
            );
        }
    }

    /// Bands of output rows are the matching columns of the whole patch matrix, and their
    /// col2im contributions add up to the whole one's.
    #[test]
    fn bands_of_output_rows_make_up_the_whole() {
        for p in cases() {
            let image_len = p.channels * p.input[0] * p.input[1];
            let x = values(image_len, 0.5);
            let single = Patches { batch: 1, ..p };
            let whole = batch_im2col(&x, &single);
            let (oh, ow, n) = (p.output[0], p.output[1], p.columns());
            let mut summed = vec![0.0; image_len];
            for band in [0..1.min(oh), 1.min(oh)..oh] {
                let width = band.len() * ow;
                let mut cols = vec![f32::NAN; p.rows() * width];
                im2col(&x, &single, band.clone(), &mut cols);
                for (r, row) in
                    cols.chunks(width.max(1))
                        .enumerate()
                        .take(if width == 0 { 0 } else { p.rows() })
                {
                    assert_eq!(row, &whole[r * n + band.start * ow..][..width], "{p:?} {band:?}");
                }
                col2im(&cols, &single, band, &mut summed);
            }
            let all = batch_col2im(&whole, &single);
            for (a, b) in summed.iter().zip(&all) {
                assert!((a - b).abs() < 1e-5, "{p:?}");
            }
        }
    }

    #[test]
    fn a_kernel_larger_than_the_padded_input_has_no_patches() {
        assert_eq!(Patches::new([1, 1, 2, 2], [5, 5], [1, 1], [(1, 1), (1, 1)]), None);
    }
}

#[cfg(all(test, feature = "flex"))]
mod layer_tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Device;

    use super::*;

    #[test]
    fn of_conv_takes_plain_layers_and_keeps_their_padding() {
        let device = Device::flex();
        let layer = |config: Conv2dConfig| config.init(&device);
        let pad = PaddingConfig2d::Explicit(1, 2, 0, 1);
        let plain = layer(
            Conv2dConfig::new([3, 4], [3, 2])
                .with_padding(pad.clone())
                .with_stride([2, 1]),
        );
        let p = Patches::of_conv(&plain, [2, 3, 7, 6]).unwrap();
        assert_eq!((p.pad_begin, p.pad_end, p.output), ([1, 2], [0, 1], [3, 8]));
        let options = p.conv_options();
        assert_eq!(options.padding, [(1, 0), (2, 1)]);
        let declined = [
            (
                "groups",
                layer(Conv2dConfig::new([4, 4], [3, 3]).with_groups(2)),
                [1, 4, 5, 5],
            ),
            (
                "dilation",
                layer(Conv2dConfig::new([3, 4], [3, 3]).with_dilation([2, 2])),
                [1, 3, 9, 9],
            ),
            (
                "stride 0",
                layer(Conv2dConfig::new([3, 4], [3, 3]).with_stride([0, 1])),
                [1, 3, 5, 5],
            ),
            (
                "same padding",
                layer(Conv2dConfig::new([3, 4], [3, 3]).with_padding(PaddingConfig2d::Same)),
                [1, 3, 5, 5],
            ),
            ("channels", layer(Conv2dConfig::new([3, 4], [3, 3])), [1, 2, 5, 5]),
            (
                "kernel over the input",
                layer(Conv2dConfig::new([3, 4], [3, 3])),
                [1, 3, 2, 5],
            ),
            (
                "empty batch",
                layer(Conv2dConfig::new([3, 4], [3, 3])),
                [0, 3, 5, 5],
            ),
        ];
        for (what, conv, input) in declined {
            assert_eq!(Patches::of_conv(&conv, input), None, "{what}");
        }
    }
}
