//! 3×3 convolutions of stride 1 by Winograd's minimal filtering F(m×m, 3×3) (Lavin & Gray
//! 2016, "Fast Algorithms for Convolutional Neural Networks", §4). Each m×m block of outputs
//! comes from the α×α input tile d around it (α = m + 2) as
//!
//!   Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A,
//!
//! with α² multiplications where the direct form takes 9m². Summed over input channels, the
//! element-wise product becomes α² matrix products, one per tile position ξ (Lavin & Gray,
//! eq. 12): M_ξ = U_ξ · V_ξ, with U_ξ = (G g Gᵀ)_ξ as a `[C_out, C_in]` matrix and
//! V_ξ = (Bᵀ d B)_ξ as `[C_in, tiles]`. F(2×2, 3×3) does 2.25× fewer multiply–adds
//! than the im2col product of [`conv`](crate::conv); its transforms hold only 0, ±1 and ½,
//! which are exact in binary (their sums still round). F(4×4, 3×3) does 4× fewer,
//! and its transforms (entries up to 8 and ¹⁄₂₄) round at about 4·10⁻⁶ of the output's scale
//! (30-odd units in the last place, 10–30× the im2col product's rounding). Outputs of 4×4 or
//! more take F4.
//!
//! The gradients reuse the same pieces:
//! - ∂x is the same algorithm applied to ∂y, with the kernel flipped and its channels swapped
//!   (a stride-1 transposed convolution is a convolution);
//! - ∂g is the adjoint of each step: ∂M = A ∂Y Aᵀ per tile, ∂U_ξ = Σ_tiles ∂M_ξ V_ξᵀ (α²
//!   matrix products again), ∂g = Gᵀ ∂U G.
//!
//! Every transform is one two-sided product L X Rᵀ over stacks of vectors (`left`, `right`).
//! Tiles are taken in blocks of at most 128, fewer for layers of more than about 900 channels
//! so that a block's transformed values stay within 32 MB (whole images, or bands of tile rows
//! of a large image);
//! groups of whole images run in parallel, and when there are fewer groups than threads the
//! channels of each transform do.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::conv::{GROUP, per_chunk, with_buffer, with_scratch};
use crate::gemm::{Mat, matmul};
use crate::patches::Patches;
use crate::simd::wide;

/// A Winograd algorithm F(m×m, 3×3): output tiles of m×m from input tiles of α×α, α = m + 2,
/// with the transforms Bᵀ (α×α), G (α×3) and Aᵀ (m×α), row-major.
#[derive(Debug)]
struct Algorithm {
    m: usize,
    alpha: usize,
    bt: &'static [f32],
    g: &'static [f32],
    at: &'static [f32],
}

/// F(2×2, 3×3) (Lavin & Gray 2016, §4.1).
static F2: Algorithm = Algorithm {
    m: 2,
    alpha: 4,
    #[rustfmt::skip]
    bt: &[
        1.0, 0.0, -1.0, 0.0,
        0.0, 1.0, 1.0, 0.0,
        0.0, -1.0, 1.0, 0.0,
        0.0, 1.0, 0.0, -1.0,
    ],
    #[rustfmt::skip]
    g: &[
        1.0, 0.0, 0.0,
        0.5, 0.5, 0.5,
        0.5, -0.5, 0.5,
        0.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    at: &[
        1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, -1.0,
    ],
};

/// F(4×4, 3×3) at the points 0, ±1, ±2 and ∞ (Lavin & Gray 2016, §4.2).
static F4: Algorithm = Algorithm {
    m: 4,
    alpha: 6,
    #[rustfmt::skip]
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0,
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0,
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0,
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0,
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    g: &[
        1.0 / 4.0, 0.0, 0.0,
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0,
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0,
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0,
        0.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

impl Algorithm {
    /// Tile positions ξ: α².
    fn positions(&self) -> usize {
        self.alpha * self.alpha
    }

    /// Bᵀ, α×α.
    fn bt(&self) -> Transform {
        Transform::new(self.bt, self.alpha, self.alpha)
    }

    /// G, α×3.
    fn g(&self) -> Transform {
        Transform::new(self.g, self.alpha, 3)
    }

    /// Aᵀ, m×α.
    fn at(&self) -> Transform {
        Transform::new(self.at, self.m, self.alpha)
    }
}

/// One of the transform matrices, or its transpose: entry (i, k) of a `rows × cols` matrix.
#[derive(Clone, Copy, Debug)]
struct Transform {
    data: &'static [f32],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl Transform {
    fn new(data: &'static [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    /// The transpose, as a view of the same values.
    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            transposed: !self.transposed,
            data: self.data,
        }
    }

    /// Row `i` alone, as a 1 × cols matrix (of an untransposed matrix).
    fn row(self, i: usize) -> Self {
        assert!(!self.transposed, "rows are taken from stored matrices");
        Self::new(&self.data[i * self.cols..][..self.cols], 1, self.cols)
    }

    fn at(&self, i: usize, k: usize) -> f32 {
        if self.transposed {
            self.data[k * self.rows + i]
        } else {
            self.data[i * self.cols + k]
        }
    }
}

/// The algorithm for outputs of this size: F4 when both sides have 4 or more, else F2.
fn algorithm_for(output: [usize; 2]) -> &'static Algorithm {
    if output.iter().all(|&side| side >= 4) {
        &F4
    } else {
        &F2
    }
}

/// The most tiles one block transforms and multiplies at once (a few in the unit tests, so
/// that they cover images taken in bands and several images per block).
const TILES: usize = if cfg!(test) { 5 } else { 128 };

/// The most transformed values (input and output sides together, 32 MB of f32) a block holds;
/// wide layers take fewer than [`TILES`] tiles at once, never fewer than [`MIN_TILES`].
const BLOCK_VALUES: usize = 1 << 23;

/// The fewest tiles a block of a wide layer takes (a matrix product narrower than this wastes
/// its micro-kernel).
const MIN_TILES: usize = if cfg!(test) { 1 } else { 32 };

/// The most groups of images (of at least [`GROUP`], more for small images to fill a block or
/// for large batches) whose ∂U (α² values per channel pair) are held at once before they are
/// summed: 4 × 36 × 512² values (151 MB) for a 512-channel layer, whatever the batch.
const MAX_GROUPS: usize = 4;

/// Below this many input or output channels the im2col product is as fast (the first and last
/// layers of an image network, with 3 channels).
const MIN_CHANNELS: usize = 16;

/// Below this many output positions over the whole batch (32 tiles of F(4×4, 3×3)) the im2col
/// product is faster: the weight transform, α² values per channel pair written on every call
/// (9.4 MB for 256 channels), and α² products only a few tiles wide cost more than the 2.25–4×
/// fewer multiply–adds save. 256 → 256 channels, forward + both gradients, 2 threads:
/// 4×4 images, batch 8: 9.3 ms against 4.3 by im2col; batch 16: 11.4 against 8.2; batch 32
/// (512 positions): 13.1 against 18.2; 8×8, batch 4: 12.2 against 8.6; batch 8 (512):
/// 12.3 against 12.0; 16×16, batch 2 (512): 10.9 against 13.7.
const MIN_POSITIONS: usize = 512;

/// Whether the Winograd path computes this convolution: a 3×3 kernel of stride 1, at most 2
/// zero rows/columns before the image (the input gradient pads by 2 − p), enough channels
/// on both sides for the matrix products to pay for the transforms, and enough output positions
/// (512, `MIN_POSITIONS`) for them to pay for the weight transform.
pub fn applies(p: &Patches, c_out: usize) -> bool {
    fits(p)
        && p.channels >= MIN_CHANNELS
        && c_out >= MIN_CHANNELS
        && p.batch * p.output[0] * p.output[1] >= MIN_POSITIONS
}

/// A 3×3 kernel of stride 1 with at most 2 zero rows/columns before the image.
fn fits(p: &Patches) -> bool {
    p.kernel == [3, 3] && p.stride == [1, 1] && p.pad_begin.iter().all(|&pad| pad <= 2)
}

/// The tiling of one convolution: `channels` input planes of `input` size, read `pad` rows and
/// columns before their start, give `outputs` planes of `output` size in tiles of m×m.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    f: &'static Algorithm,
    batch: usize,
    channels: usize,
    outputs: usize,
    input: [usize; 2],
    pad: [usize; 2],
    output: [usize; 2],
    tiles: [usize; 2],
}

impl Tiling {
    /// # Panics
    /// If the convolution is not one [`fits`] describes.
    fn new(f: &'static Algorithm, p: &Patches, [channels, outputs]: [usize; 2], gradient: bool) -> Self {
        assert!(
            fits(p),
            "Winograd's F(m×m, 3×3) computes 3×3 convolutions of stride 1, not {p:?}"
        );
        // The input gradient is a convolution of ∂y (`outputs` planes of `p.output` size):
        // ∂x[i] = Σ_u ∂y[i + p − u] g[u] = Σ_u' ∂y[i − (2 − p) + u'] g[2 − u'].
        let (input, pad, output) = if gradient {
            (p.output, p.pad_begin.map(|pad| 2 - pad), p.input)
        } else {
            (p.input, p.pad_begin, p.output)
        };
        Self {
            f,
            batch: p.batch,
            channels,
            outputs,
            input,
            pad,
            output,
            tiles: output.map(|side| side.div_ceil(f.m)),
        }
    }

    /// The forward convolution of `p` into `c_out` channels.
    fn forward(f: &'static Algorithm, p: &Patches, c_out: usize) -> Self {
        Self::new(f, p, [p.channels, c_out], false)
    }

    /// The input gradient of `p`, a convolution of its `c_out` output planes.
    fn input_grad(f: &'static Algorithm, p: &Patches, c_out: usize) -> Self {
        Self::new(f, p, [c_out, p.channels], true)
    }

    fn tiles_per_image(&self) -> usize {
        self.tiles[0] * self.tiles[1]
    }

    fn image_len(&self) -> usize {
        self.channels * self.input[0] * self.input[1]
    }

    fn output_len(&self) -> usize {
        self.outputs * self.output[0] * self.output[1]
    }

    /// The values of one input row padded to whole tiles: m·(tiles per row + 1).
    fn line_len(&self) -> usize {
        self.f.m * (self.tiles[1] + 1)
    }

    /// The most tiles in a block: [`TILES`], fewer for wide layers.
    fn block_tiles(&self) -> usize {
        let per_tile = self.f.positions() * (self.channels + self.outputs);
        (BLOCK_VALUES / per_tile.max(1)).clamp(MIN_TILES, TILES)
    }

    /// Images per block when an image has fewer tiles than a block holds, else 1.
    fn images_per_block(&self) -> usize {
        self.block_tiles().div_ceil(self.tiles_per_image().max(1))
    }

    /// The blocks of a group of `images` images: several whole images, or bands of tile rows
    /// of one image.
    fn blocks(&self, images: usize) -> Vec<Block> {
        let ([rows, per_row], most) = (self.tiles, self.block_tiles());
        if self.tiles_per_image() >= most {
            let band = (most / per_row.max(1)).max(1);
            (0..images)
                .flat_map(|i| {
                    (0..rows)
                        .step_by(band)
                        .map(move |r| Block::new(i..i + 1, r..(r + band).min(rows)))
                })
                .collect()
        } else {
            let per_block = self.images_per_block();
            (0..images)
                .step_by(per_block)
                .map(|i| Block::new(i..(i + per_block).min(images), 0..rows))
                .collect()
        }
    }
}

/// Tiles of images `images` (counted within a group) and tile rows `rows`, numbered from the
/// block's first image and row: t = ((image − images.start) · rows + row − rows.start) · tiles
/// per row + column.
#[derive(Clone, Debug)]
struct Block {
    images: Range<usize>,
    rows: Range<usize>,
}

impl Block {
    fn new(images: Range<usize>, rows: Range<usize>) -> Self {
        Self { images, rows }
    }

    fn tiles(&self, t: &Tiling) -> usize {
        self.images.len() * self.rows.len() * t.tiles[1]
    }

    /// The first tile of tile row `row` of image `image` (`image` counted within the group).
    fn first_tile(&self, t: &Tiling, image: usize, row: usize) -> usize {
        ((image - self.images.start) * self.rows.len() + row - self.rows.start) * t.tiles[1]
    }
}

/// y = conv(x, w) + b for a convolution where [`applies`] holds; the arguments and the result
/// are as for [`conv2d`](crate::conv::conv2d).
///
/// # Panics
/// If the kernel is not 3×3 of stride 1 with at most 2 zero rows/columns before the image.
pub fn conv2d(x: &[f32], w: &[f32], bias: &[f32], p: &Patches) -> Vec<f32> {
    conv2d_with(algorithm_for(p.output), x, w, bias, p)
}

/// ∂x from ∂y for a convolution where [`applies`] holds (see
/// [`conv2d_input_grad`](crate::conv::conv2d_input_grad)).
///
/// # Panics
/// As [`conv2d`].
pub fn conv2d_input_grad(w: &[f32], dy: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
    conv2d_input_grad_with(algorithm_for(p.input), w, dy, p, c_out)
}

/// ∂W from the input and ∂y for a convolution where [`applies`] holds (see
/// [`conv2d_weight_grad`](crate::conv::conv2d_weight_grad)): `[C_out, C_in, 3, 3]`.
///
/// # Panics
/// As [`conv2d`].
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
    conv2d_weight_grad_with(algorithm_for(p.output), x, dy, p, c_out)
}

/// [`conv2d`] by the algorithm `f`.
fn conv2d_with(f: &'static Algorithm, x: &[f32], w: &[f32], bias: &[f32], p: &Patches) -> Vec<f32> {
    let t = Tiling::forward(f, p, bias.len());
    with_transformed_weights(f, w, |u| convolve(&t, x, u, bias))
}

/// [`conv2d_input_grad`] by the algorithm `f`.
fn conv2d_input_grad_with(
    f: &'static Algorithm,
    w: &[f32],
    dy: &[f32],
    p: &Patches,
    c_out: usize,
) -> Vec<f32> {
    let c_in = p.channels;
    let t = Tiling::input_grad(f, p, c_out);
    with_buffer(&FLIPPED, w.len(), |flipped| {
        flip_kernel(w, c_out, c_in, flipped);
        with_transformed_weights(f, flipped, |u| convolve(&t, dy, u, &vec![0.0; c_in]))
    })
}

/// [`conv2d_weight_grad`] by the algorithm `f`. Each group of images sums its ∂U over its
/// tiles; the groups' ∂U are summed in a fixed order (so the result does not depend on the
/// number of threads) and turned into the kernel gradient once.
fn conv2d_weight_grad_with(
    f: &'static Algorithm,
    x: &[f32],
    dy: &[f32],
    p: &Patches,
    c_out: usize,
) -> Vec<f32> {
    let t = Tiling::forward(f, p, c_out);
    let (c_in, pairs, xis) = (t.channels, c_out * p.channels, f.positions());
    let per_group = GROUP
        .max(t.images_per_block())
        .max(t.batch.div_ceil(MAX_GROUPS))
        .min(t.batch.max(1));
    let size = xis * pairs;
    let mut partial = vec![0.0f32; t.batch.div_ceil(per_group).max(1) * size];
    per_chunk(&mut partial, size, |g, du, parallel| {
        let first = g * per_group;
        let images = per_group.min(t.batch - first);
        let x = &x[first * t.image_len()..][..images * t.image_len()];
        let dy = &dy[first * t.output_len()..][..images * t.output_len()];
        for block in t.blocks(images) {
            let tiles = block.tiles(&t);
            with_scratch(xis * (c_in + c_out) * tiles, |buffer| {
                let (v, dm) = buffer.split_at_mut(xis * c_in * tiles);
                transform_input(&t, x, &block, v, parallel);
                transform_output_grad(&t, dy, &block, dm, parallel);
                for xi in 0..xis {
                    let dm = Mat::strided(&dm[xi * tiles..], c_out, tiles, xis * tiles);
                    let v = Mat::strided(&v[xi * tiles..], c_in, tiles, xis * tiles);
                    matmul(&mut du[xi * pairs..], c_in, dm, v.t(), true, parallel);
                }
            });
        }
    });
    let (total, rest) = partial.split_at_mut(size);
    total.par_chunks_mut(4096).enumerate().for_each(|(k, sum)| {
        for group in rest.chunks(size) {
            for (a, b) in sum.iter_mut().zip(&group[k * 4096..]) {
                *a += b;
            }
        }
    });
    weight_grad_from(f, total, pairs)
}

/// The convolution of `t` with transformed weights `u` (`[α², C_out, C_in]`), plus `bias`.
fn convolve(t: &Tiling, x: &[f32], u: &[f32], bias: &[f32]) -> Vec<f32> {
    let (c_in, c_out, xis) = (t.channels, t.outputs, t.f.positions());
    // Groups of whole images, as many as one block holds, so that the products' sizes (and
    // so their rounding) do not depend on the number of threads.
    let per_group = t.images_per_block().min(t.batch).max(1);
    let mut y = vec![0.0f32; t.batch * t.output_len()];
    per_chunk(&mut y, per_group * t.output_len(), |g, y, parallel| {
        let first = g * per_group;
        let images = y.len() / t.output_len();
        let x = &x[first * t.image_len()..][..images * t.image_len()];
        for block in t.blocks(images) {
            let tiles = block.tiles(t);
            with_scratch(xis * (c_in + c_out) * tiles, |buffer| {
                let (v, m) = buffer.split_at_mut(xis * c_in * tiles);
                transform_input(t, x, &block, v, parallel);
                for xi in 0..xis {
                    let u = Mat::new(&u[xi * c_out * c_in..], c_out, c_in);
                    let v = Mat::strided(&v[xi * tiles..], c_in, tiles, xis * tiles);
                    matmul(&mut m[xi * tiles..], xis * tiles, u, v, false, parallel);
                }
                transform_output(t, m, bias, &block, y, parallel);
            });
        }
    });
    y
}

thread_local! {
    /// The buffers of the transforms inside a block and of the weight transforms (the blocks
    /// themselves live in `conv`'s buffer).
    static TRANSFORM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The transformed weights of the convolution that the thread is computing: kept from one
    /// convolution to the next, so that the 4× (F(4×4, 3×3)) larger copy of the weights is
    /// neither zeroed nor paged in again at every call. It grows to the largest convolution's
    /// and stays for the thread's life (a thread started for one step, as the data-parallel
    /// workers are, allocates it afresh).
    static WEIGHTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The flipped kernel of the input gradient, kept in the same way.
    static FLIPPED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `then(U)` with U = G g Gᵀ of the kernel `w` ([`transform_weights`]) in the thread's buffer.
fn with_transformed_weights<R>(f: &Algorithm, w: &[f32], then: impl FnOnce(&[f32]) -> R) -> R {
    with_buffer(&WEIGHTS, f.positions() * (w.len() / 9), |u| {
        transform_weights(f, w, u);
        then(u)
    })
}

/// Channel pairs whose kernels one task transforms at once.
const PAIRS: usize = 512;

/// The kernel of the input gradient, g'[c, o, u, v] = g[o, c, 2 − u, 2 − v]: `[C_in, C_out, 3,
/// 3]` from the `[C_out, C_in, 3, 3]` kernel `w`, written over `flipped`.
fn flip_kernel(w: &[f32], c_out: usize, c_in: usize, flipped: &mut [f32]) {
    flipped
        .par_chunks_mut(9 * c_out)
        .enumerate()
        .for_each(|(c, out)| {
            for (o, kernel) in out.chunks_mut(9).enumerate() {
                let source = &w[(o * c_in + c) * 9..][..9];
                for (value, &s) in kernel.iter_mut().zip(source.iter().rev()) {
                    *value = s;
                }
            }
        });
}

/// U = G g Gᵀ for every channel pair of the `[pairs, 3, 3]` kernel `w`: `[α², pairs]`, written
/// over `u`. Each task computes the α rows U_{i·} of one row i of G, [`PAIRS`] pairs at a time.
fn transform_weights(f: &Algorithm, w: &[f32], u: &mut [f32]) {
    let pairs = w.len() / 9;
    debug_assert_eq!(u.len(), f.positions() * pairs);
    u.par_chunks_mut((f.alpha * pairs).max(1)).enumerate().for_each(|(i, u)| {
        with_buffer(&TRANSFORM, 12 * PAIRS, |buffer| {
            wide!(weight_rows(f: &Algorithm, w: &[f32], i: usize, u: &mut [f32], buffer: &mut [f32]))
        })
    });
}

/// The rows U_{ij} (j < α) of [`transform_weights`] for row i of G, with the kernels as 9 rows
/// over the pairs: (G g)_{i·} first, then (G g)_{i·} Gᵀ (`buffer`: 12·[`PAIRS`] values).
#[inline(always)]
fn weight_rows(f: &Algorithm, w: &[f32], i: usize, u: &mut [f32], buffer: &mut [f32]) {
    let pairs = w.len() / 9;
    for (k, w) in w.chunks(9 * PAIRS).enumerate() {
        let n = w.len() / 9;
        let (g, gg) = buffer.split_at_mut(9 * n);
        for (uv, row) in g.chunks_mut(n).enumerate() {
            every::<9>(row, &w[uv..]);
        }
        left(f.g().row(i), g, n, 3, gg, n, n);
        right(f.g(), gg, n, 1, &mut u[k * PAIRS..], pairs, n);
    }
}

/// ∂g = Gᵀ ∂U G for every channel pair (the adjoint of [`transform_weights`]): the
/// `[pairs, 3, 3]` kernel gradient from `[α², pairs]`, in parallel chunks of [`PAIRS`] pairs.
fn weight_grad_from(f: &Algorithm, du: &[f32], pairs: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; pairs * 9];
    let buffer = (3 * f.alpha + 9) * PAIRS;
    dw.par_chunks_mut(9 * PAIRS).enumerate().for_each(|(k, out)| {
        let du = &du[k * PAIRS..];
        with_buffer(&TRANSFORM, buffer, |b| {
            wide!(weight_grad_chunk(f: &Algorithm, du: &[f32], pairs: usize, out: &mut [f32], b: &mut [f32]))
        })
    });
    dw
}

/// [`weight_grad_from`] for the pairs whose gradients `out` holds, the first of them at the
/// start of `du` (rows `pairs` apart): Gᵀ ∂U, then (Gᵀ ∂U) G, then the 9 rows interleaved into
/// kernels (`buffer`: (3α + 9)·pairs values).
#[inline(always)]
fn weight_grad_chunk(f: &Algorithm, du: &[f32], pairs: usize, out: &mut [f32], buffer: &mut [f32]) {
    let (n, alpha) = (out.len() / 9, f.alpha);
    let (t, g) = buffer.split_at_mut(alpha * 3 * n);
    left(f.g().t(), du, pairs, alpha, t, n, n);
    right(f.g().t(), t, n, 3, g, n, n);
    for (uv, row) in g[..9 * n].chunks(n).enumerate() {
        scatter_every::<9>(&mut out[uv..], row);
    }
}

/// out(i, j) = Σ_k L_{ik} x(k, j) for a grid x of `L.cols × q` vectors of n values, row (k, j)
/// at (k·q + j)·`x_stride`; out is an `L.rows × q` grid, row (i, j) at (i·q + j)·`out_stride`.
#[inline(always)]
fn left(l: Transform, x: &[f32], x_stride: usize, q: usize, out: &mut [f32], out_stride: usize, n: usize) {
    for (row, o) in out.chunks_mut(out_stride).take(l.rows * q).enumerate() {
        let (i, j) = (row / q, row % q);
        combine(&mut o[..n], (0..l.cols).map(|k| l.at(i, k)), |k| {
            &x[(k * q + j) * x_stride..][..n]
        });
    }
}

/// out(i, j) = Σ_k x(i, k) R_{jk}, the product by Rᵀ on the right, for a grid x of
/// `p × R.cols` vectors (strides as in [`left`]); out is a `p × R.rows` grid.
#[inline(always)]
fn right(r: Transform, x: &[f32], x_stride: usize, p: usize, out: &mut [f32], out_stride: usize, n: usize) {
    for (row, o) in out.chunks_mut(out_stride).take(p * r.rows).enumerate() {
        let (i, j) = (row / r.rows, row % r.rows);
        combine(&mut o[..n], (0..r.cols).map(|k| r.at(j, k)), |k| {
            &x[(i * r.cols + k) * x_stride..][..n]
        });
    }
}

/// out += a · x.
#[inline(always)]
fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, x) in out.iter_mut().zip(x) {
        *o += a * x;
    }
}

/// out = Σ_k coefficients[k] · x(k) over the non-zero coefficients (zero if there are none).
#[inline(always)]
fn combine<'a>(out: &mut [f32], coefficients: impl Iterator<Item = f32>, x: impl Fn(usize) -> &'a [f32]) {
    let mut first = true;
    for (k, a) in coefficients.enumerate() {
        if a != 0.0 {
            if first {
                for (o, x) in out.iter_mut().zip(x(k)) {
                    *o = a * x;
                }
                first = false;
            } else {
                axpy(out, a, x(k));
            }
        }
    }
    if first {
        out.fill(0.0);
    }
}

/// V = Bᵀ d B for every tile of `block` and every channel: `[C_in, α², tiles]`. `x` holds the
/// group's images; zeros are read outside them. Channels run in parallel when `parallel`.
fn transform_input(t: &Tiling, x: &[f32], block: &Block, v: &mut [f32], parallel: bool) {
    let size = t.f.positions() * block.tiles(t);
    each_channel(
        v,
        size,
        parallel,
        t.line_len() + 2 * size,
        |c, v, buffer| wide!(input_channel(t: &Tiling, x: &[f32], block: &Block, c: usize, v: &mut [f32], buffer: &mut [f32])),
    );
}

/// [`transform_input`] for channel `c`: `v` is its `[α², tiles]`. The windows are gathered as
/// d[r][col][tile], then Bᵀ d B runs over all the block's tiles at once (`buffer`: a line and
/// 2α²·tiles values).
#[inline(always)]
fn input_channel(t: &Tiling, x: &[f32], block: &Block, c: usize, v: &mut [f32], buffer: &mut [f32]) {
    let (alpha, tiles) = (t.f.alpha, block.tiles(t));
    let size = alpha * alpha * tiles;
    let (line, rest) = buffer.split_at_mut(t.line_len());
    let (d, q) = rest.split_at_mut(size);
    input_windows(t, x, block, c, line, d);
    left(t.f.bt(), d, tiles, alpha, q, tiles, tiles);
    right(t.f.bt(), q, tiles, alpha, v, tiles, tiles);
}

/// The α×α input windows of the block's tiles on channel `c`, as d[r][col][tile] (`line`: a
/// buffer of one padded input row).
#[inline(always)]
fn input_windows(t: &Tiling, x: &[f32], block: &Block, c: usize, line: &mut [f32], d: &mut [f32]) {
    let ([h, w], [pad_y, pad_x], tw) = (t.input, t.pad, t.tiles[1]);
    let (m, alpha, tiles, width) = (t.f.m, t.f.alpha, block.tiles(t), line.len());
    for image in block.images.clone() {
        let plane = &x[(image * t.channels + c) * h * w..][..h * w];
        for row in block.rows.clone() {
            let first = block.first_tile(t, image, row);
            for r in 0..alpha {
                // Input row m·row + r − pad, with zeros outside the image.
                line.fill(0.0);
                let y = (m * row + r).wrapping_sub(pad_y);
                if y < h {
                    let columns = pad_x.min(width)..(w + pad_x).min(width);
                    let source = &plane[y * w..][columns.start - pad_x..columns.end - pad_x];
                    line[columns].copy_from_slice(source);
                }
                // Window column `col` of tile tx is line[m·tx + col].
                for col in 0..alpha {
                    let out = &mut d[(r * alpha + col) * tiles + first..][..tw];
                    match m {
                        2 => every::<2>(out, &line[col..]),
                        _ => every::<4>(out, &line[col..]),
                    }
                }
            }
        }
    }
}

/// y = Aᵀ M A + b for every tile of `block` (M: `[C_out, α², tiles]`, overwritten); the outputs
/// of a tile that fall outside the image are dropped. `y` holds the group's output images.
/// Output channels, then output planes, run in parallel when `parallel`.
fn transform_output(t: &Tiling, m: &mut [f32], bias: &[f32], block: &Block, y: &mut [f32], parallel: bool) {
    let (tiles, plane, size) = (block.tiles(t), t.output[0] * t.output[1], t.f.positions());
    // Y = Aᵀ M A + b per output channel, into the first m² rows of its M.
    each_chunk(m, size * tiles, parallel, |o, m| {
        let bias = bias[o];
        with_buffer(
            &TRANSFORM,
            t.f.m * t.f.alpha * tiles,
            |r| wide!(output_tiles(t: &Tiling, m: &mut [f32], bias: f32, tiles: usize, r: &mut [f32])),
        )
    });
    let planes = &mut y[block.images.start * t.outputs * plane..block.images.end * t.outputs * plane];
    let m = &*m;
    each_chunk(planes, plane, parallel, |k, out| {
        let (image, o) = (block.images.start + k / t.outputs, k % t.outputs);
        let values = &m[o * size * tiles..][..t.f.m * t.f.m * tiles];
        wide!(output_rows(t: &Tiling, values: &[f32], block: &Block, image: usize, out: &mut [f32]));
    });
}

/// Aᵀ M A + b over all tiles of one output channel: `m` is its `[α², tiles]`; the m² output
/// positions (a, b) are written to its first m² rows (`r`: a buffer of mα·tiles values).
#[inline(always)]
fn output_tiles(t: &Tiling, m: &mut [f32], bias: f32, tiles: usize, r: &mut [f32]) {
    let f = t.f;
    left(f.at(), m, tiles, f.alpha, r, tiles, tiles);
    right(f.at(), r, tiles, f.m, m, tiles, tiles);
    for value in &mut m[..f.m * f.m * tiles] {
        *value += bias;
    }
}

/// Writes the block's outputs of one plane `out` of `image` from their m² phases `values`
/// (`[m², tiles]`: phase (a, b) holds output (m·row + a, m·tx + b) of each tile), dropping those
/// beyond the image.
#[inline(always)]
fn output_rows(t: &Tiling, values: &[f32], block: &Block, image: usize, out: &mut [f32]) {
    let ([oh, ow], side, tiles) = (t.output, t.f.m, block.tiles(t));
    for row in block.rows.clone() {
        let first = block.first_tile(t, image, row);
        for a in 0..side.min(oh.saturating_sub(side * row)) {
            let dst = &mut out[(side * row + a) * ow..][..ow];
            let phases = &values[a * side * tiles..][..side * tiles];
            match side {
                2 => interleave::<2>(dst, phases, tiles, first),
                _ => interleave::<4>(dst, phases, tiles, first),
            }
        }
    }
}

/// ∂M = A ∂Y Aᵀ for every tile of `block` (the adjoint of [`transform_output`]):
/// `[C_out, α², tiles]` from the group's output gradients `dy`, zero beyond the image.
fn transform_output_grad(t: &Tiling, dy: &[f32], block: &Block, dm: &mut [f32], parallel: bool) {
    let (side, alpha, tiles) = (t.f.m, t.f.alpha, block.tiles(t));
    let buffer = (side * side + side * alpha) * tiles;
    each_channel(
        dm,
        alpha * alpha * tiles,
        parallel,
        buffer,
        |o, dm, buffer| wide!(output_grad_channel(t: &Tiling, dy: &[f32], block: &Block, o: usize, dm: &mut [f32], buffer: &mut [f32])),
    );
}

/// [`transform_output_grad`] for output channel `o`: `dm` is its `[α², tiles]`. The m² phases
/// s[a][b][tile] = ∂y[m·row + a, m·tx + b] first, then A s Aᵀ over all the block's tiles at once
/// (`buffer`: (m² + mα)·tiles values).
#[inline(always)]
fn output_grad_channel(t: &Tiling, dy: &[f32], block: &Block, o: usize, dm: &mut [f32], buffer: &mut [f32]) {
    let (side, alpha, tiles) = (t.f.m, t.f.alpha, block.tiles(t));
    let (s, e) = buffer.split_at_mut(side * side * tiles);
    output_grad_phases(t, dy, block, o, s);
    left(t.f.at().t(), s, tiles, side, e, tiles, tiles);
    right(t.f.at().t(), e, tiles, alpha, dm, tiles, tiles);
}

/// The output gradients of the block's tiles on channel `o` in their m² phases,
/// s[a][b][tile] = ∂y[m·row + a, m·tx + b] (zero beyond the image).
#[inline(always)]
fn output_grad_phases(t: &Tiling, dy: &[f32], block: &Block, o: usize, s: &mut [f32]) {
    let ([oh, ow], tw, side) = (t.output, t.tiles[1], t.f.m);
    let (tiles, plane) = (block.tiles(t), oh * ow);
    for image in block.images.clone() {
        let dy = &dy[(image * t.outputs + o) * plane..][..plane];
        for row in block.rows.clone() {
            let first = block.first_tile(t, image, row);
            for a in 0..side {
                let y = side * row + a;
                for b in 0..side {
                    let out = &mut s[(a * side + b) * tiles + first..][..tw];
                    out.fill(0.0);
                    if y < oh && b < ow {
                        let line = &dy[y * ow..][b..ow];
                        let n = line.len().div_ceil(side);
                        match side {
                            2 => every::<2>(&mut out[..n], line),
                            _ => every::<4>(&mut out[..n], line),
                        }
                    }
                }
            }
        }
    }
}

/// out[k] = x[S·k] for the k with S·k inside `x`.
#[inline(always)]
fn every<const S: usize>(out: &mut [f32], x: &[f32]) {
    for (value, &source) in out.iter_mut().zip(x.iter().step_by(S)) {
        *value = source;
    }
}

/// out[S·k] = x[k] for the k with S·k inside `out`.
#[inline(always)]
fn scatter_every<const S: usize>(out: &mut [f32], x: &[f32]) {
    for (o, &value) in out.iter_mut().step_by(S).zip(x) {
        *o = value;
    }
}

/// dst[S·k + b] = phases[b·stride + first + k] for the positions inside `dst`: S rows `stride`
/// apart interleaved into one.
#[inline(always)]
fn interleave<const S: usize>(dst: &mut [f32], phases: &[f32], stride: usize, first: usize) {
    for (k, group) in dst.chunks_mut(S).enumerate() {
        for (b, value) in group.iter_mut().enumerate() {
            *value = phases[b * stride + first + k];
        }
    }
}

/// Runs `f(channel, chunk, buffer)` over the `len`-value chunks of `out` (one per channel), in
/// parallel when `parallel`, each with a thread's transform buffer of `buffer` values.
fn each_channel(
    out: &mut [f32],
    len: usize,
    parallel: bool,
    buffer: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    each_chunk(out, len, parallel, |c, chunk| {
        with_buffer(&TRANSFORM, buffer, |b| f(c, chunk, b))
    });
}

/// Runs `f(index, chunk)` over the `len`-value chunks of `out`, in parallel when `parallel`.
fn each_chunk(out: &mut [f32], len: usize, parallel: bool, f: impl Fn(usize, &mut [f32]) + Sync) {
    if parallel {
        out.par_chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|k| ((k as f32 + seed) * 0.7548).sin()).collect()
    }

    /// Geometries with fewer than 16 channels, where `conv` takes its im2col products: odd and
    /// even sizes, paddings 0, 1 and 2 (asymmetric too), images taken in bands and several per
    /// block (`TILES` is 5 in tests), outputs smaller than a tile.
    fn cases() -> Vec<(Patches, usize)> {
        let same = [(1, 1), (1, 1)];
        vec![
            (Patches::new([3, 4, 6, 5], [3, 3], [1, 1], same).unwrap(), 5),
            (Patches::new([5, 3, 2, 3], [3, 3], [1, 1], same).unwrap(), 2),
            (
                Patches::new([2, 2, 11, 9], [3, 3], [1, 1], [(0, 0), (0, 0)]).unwrap(),
                3,
            ),
            (
                Patches::new([2, 3, 5, 4], [3, 3], [1, 1], [(2, 2), (2, 2)]).unwrap(),
                2,
            ),
            (
                Patches::new([3, 2, 9, 10], [3, 3], [1, 1], [(0, 2), (2, 1)]).unwrap(),
                4,
            ),
            (
                Patches::new([4, 3, 3, 3], [3, 3], [1, 1], [(0, 0), (0, 0)]).unwrap(),
                2,
            ),
            (Patches::new([2, 6, 16, 12], [3, 3], [1, 1], same).unwrap(), 3),
        ]
    }

    /// The largest difference relative to the largest reference value (at least 1).
    fn relative_difference(ours: &[f32], reference: &[f32]) -> f32 {
        assert_eq!(ours.len(), reference.len());
        let scale = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        ours.iter()
            .zip(reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
            / scale
    }

    /// Forward, input gradient and weight gradient by F2 and F4 against the im2col products of
    /// `conv` (themselves tested against the definition of a convolution and its adjoints):
    /// F2 within a few roundings, F4 within 10⁻⁵ of the values' scale.
    #[test]
    fn matches_the_im2col_convolution_and_its_gradients() {
        for (f, tol) in [(&F2, 1e-6), (&F4, 1e-5)] {
            let mut worst = 0.0f32;
            for (p, c_out) in cases() {
                assert!(
                    !applies(&p, c_out),
                    "{p:?} would not take the im2col path in `conv`"
                );
                let image = p.channels * p.input[0] * p.input[1];
                let x = values(p.batch * image, 0.5);
                let w = values(c_out * p.rows(), 2.0);
                let bias = values(c_out, 9.0);
                let g = values(p.batch * c_out * p.columns(), 4.0);
                let pairs = [
                    (conv2d_with(f, &x, &w, &bias, &p), conv::conv2d(&x, &w, &bias, &p)),
                    (
                        conv2d_input_grad_with(f, &w, &g, &p, c_out),
                        conv::conv2d_input_grad(&w, &g, &p, c_out),
                    ),
                    (
                        conv2d_weight_grad_with(f, &x, &g, &p, c_out),
                        conv::conv2d_weight_grad(&x, &g, &p, c_out),
                    ),
                ];
                for (which, (ours, im2col)) in ["y", "∂x", "∂W"].iter().zip(pairs) {
                    let err = relative_difference(&ours, &im2col);
                    worst = worst.max(err);
                    assert!(err < tol, "F{}, {p:?}, {which}: relative difference {err}", f.m);
                }
            }
            println!("F{}: largest relative difference {worst:e}", f.m);
        }
    }

    /// At a network's scale (64 channels, unit-variance inputs, weights of variance 1/fan-in),
    /// F4's forward values stay within 10⁻⁵ of the im2col product's scale (4.4·10⁻⁶ here; F2's
    /// and im2col's own rounding are near 10⁻⁷).
    #[test]
    fn f4_rounding_at_a_network_scale() {
        let p = Patches::new([2, 64, 16, 16], [3, 3], [1, 1], [(1, 1), (1, 1)]).unwrap();
        let c_out = 15; // below MIN_CHANNELS, so that `conv` takes the im2col product
        let x = values(2 * 64 * 256, 0.5)
            .iter()
            .map(|v| v * 1.41)
            .collect::<Vec<_>>();
        let w: Vec<f32> = values(c_out * p.rows(), 2.0)
            .iter()
            .map(|v| v / 24.0 * 1.41)
            .collect();
        let bias = vec![0.0; c_out];
        let err = relative_difference(
            &conv2d_with(&F4, &x, &w, &bias, &p),
            &conv::conv2d(&x, &w, &bias, &p),
        );
        println!("F4 at 64 channels: relative difference {err:e}");
        assert!(err < 1e-5, "{err}");
    }

    /// F2's transforms are exact in binary: a kernel with one 1 shifts the image exactly.
    #[test]
    fn a_unit_kernel_shifts_the_image_exactly_by_f2() {
        let p = Patches::new([1, 1, 5, 5], [3, 3], [1, 1], [(1, 1), (1, 1)]).unwrap();
        let x: Vec<f32> = (0..25).map(|k| k as f32 + 0.125).collect();
        for tap in 0..9 {
            let mut w = [0.0f32; 9];
            w[tap] = 1.0;
            let (di, dj) = (tap / 3, tap % 3);
            let y = conv2d_with(&F2, &x, &w, &[0.0], &p);
            for (k, value) in y.into_iter().enumerate() {
                let (i, j) = ((k / 5 + di) as isize - 1, (k % 5 + dj) as isize - 1);
                let want = if (0..5).contains(&i) && (0..5).contains(&j) {
                    x[(i * 5 + j) as usize]
                } else {
                    0.0
                };
                assert_eq!(value, want, "tap {tap}, output {k}");
            }
        }
    }

    /// The same values with one thread as with three.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        crate::assert_independent_of_threads(|| {
            [&F2, &F4]
                .into_iter()
                .flat_map(|f| cases().into_iter().map(move |case| (f, case)))
                .map(|(f, (p, c_out))| {
                    let x = values(p.batch * p.channels * p.input[0] * p.input[1], 0.5);
                    let w = values(c_out * p.rows(), 2.0);
                    let g = values(p.batch * c_out * p.columns(), 4.0);
                    [
                        conv2d_with(f, &x, &w, &values(c_out, 9.0), &p),
                        conv2d_input_grad_with(f, &w, &g, &p, c_out),
                        conv2d_weight_grad_with(f, &x, &g, &p, c_out),
                    ]
                })
                .collect::<Vec<_>>()
        });
    }

    #[test]
    fn applies_to_wide_3x3_convolutions_of_stride_1_over_enough_positions() {
        // 64 images, so that every case but `few` has at least 1024 output positions.
        let p = |channels, kernel, stride, pad| {
            Patches::new([64, channels, 8, 8], kernel, stride, [(pad, pad), (pad, pad)]).unwrap()
        };
        assert!(applies(&p(16, [3, 3], [1, 1], 1), 16));
        // 7 images of 8×8 are 448 output positions, fewer than MIN_POSITIONS.
        let few = Patches::new([7, 16, 8, 8], [3, 3], [1, 1], [(1, 1), (1, 1)]).unwrap();
        assert!(!applies(&few, 16));
        assert!(applies(&p(64, [3, 3], [1, 1], 2), 32));
        assert!(!applies(&p(64, [3, 3], [2, 2], 1), 64));
        assert!(!applies(&p(64, [1, 1], [1, 1], 0), 64));
        assert!(!applies(&p(64, [3, 3], [1, 1], 3), 64));
        assert!(!applies(&p(3, [3, 3], [1, 1], 1), 64));
        assert!(!applies(&p(64, [3, 3], [1, 1], 1), 3));
        assert!(std::ptr::eq(algorithm_for([4, 7]), &F4));
        assert!(std::ptr::eq(algorithm_for([3, 8]), &F2));
    }
}
