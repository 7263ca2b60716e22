//! 3×3 convolutions of stride 1 by Winograd's minimal filtering F(m×m, 3×3) (Lavin & Gray
//! 2016, "Fast Algorithms for Convolutional Neural Networks", §4). Each m×m block of outputs
//! comes from the α×α input tile d around it (α = m + 2) as
//!
//!   Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A,
//!
//! with α² multiplications where the direct form takes 9m². Summed over input channels, the
//! element-wise product becomes α² matrix products, one per tile position ξ (Lavin & Gray,
//! eq. 12): M_ξ = U_ξ · V_ξ, with U_ξ = (G g Gᵀ)_ξ as a `[C_out, C_in]` matrix and
//! V_ξ = (Bᵀ d B)_ξ as `[C_in, tiles]`. [`F2`], F(2×2, 3×3), does 2.25× fewer multiply–adds
//! than the im2col product of [`conv`](crate::conv), with transforms of 0, ±1 and ½ only (exact
//! in binary); [`F4`], F(4×4, 3×3), does 4× fewer, and its transforms (entries up to 8 and
//! ¹⁄₂₄) round at about 4·10⁻⁶ of the output's scale (30-odd units in the last place, 10–30×
//! the im2col product's rounding). Images of 4×4 or more outputs take F4.
//!
//! The gradients reuse the same pieces:
//! - ∂x is the same algorithm applied to ∂y, with the kernel flipped and its channels swapped
//!   (a stride-1 transposed convolution is a convolution);
//! - ∂g is the adjoint of each step: ∂M = A ∂Y Aᵀ per tile, ∂U_ξ = Σ_tiles ∂M_ξ V_ξᵀ (α²
//!   matrix products again), ∂g = Gᵀ ∂U G.
//!
//! Tiles are taken in blocks of about [`TILES`] (whole images, or bands of tile rows of a
//! large image) so that the transformed blocks stay in cache; blocks of different images run
//! in parallel, and so do the channels of a transform when there are too few blocks.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::conv::{per_chunk, with_buffer, with_scratch};
use crate::gemm::{Mat, matmul};
use crate::patches::Patches;

/// A Winograd algorithm F(m×m, 3×3): output tiles of m×m from input tiles of α×α, α = m + 2,
/// with the transforms Bᵀ (α×α), G (α×3) and Aᵀ (m×α), row-major.
#[derive(Debug)]
pub struct Algorithm {
    m: usize,
    alpha: usize,
    bt: &'static [f32],
    g: &'static [f32],
    at: &'static [f32],
}

/// F(2×2, 3×3) (Lavin & Gray 2016, §4.1).
pub static F2: Algorithm = Algorithm {
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
pub static F4: Algorithm = Algorithm {
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
}

/// The algorithm for outputs of this size: F4 when both sides have 4 or more, else F2.
fn algorithm_for(output: [usize; 2]) -> &'static Algorithm {
    if output.iter().all(|&side| side >= 4) {
        &F4
    } else {
        &F2
    }
}

/// About how many tiles one block transforms and multiplies at once (a few in the unit tests,
/// so that they cover images taken in bands and several images per block).
const TILES: usize = if cfg!(test) { 5 } else { 128 };

/// Images whose weight-gradient terms one task sums, in order (at least; more for small
/// images, to fill a block).
const GROUP: usize = 4;

/// Below this many input or output channels the im2col product is as fast (the first and last
/// layers of an image network, with 3 channels).
const MIN_CHANNELS: usize = 16;

/// Whether the Winograd path computes this convolution: a 3×3 kernel of stride 1, at most 2
/// zero rows/columns before the image (the input gradient pads by 2 − p), and enough channels
/// on both sides for the matrix products to pay for the transforms.
pub fn applies(p: &Patches, c_out: usize) -> bool {
    p.kernel == [3, 3]
        && p.stride == [1, 1]
        && p.pad_begin.iter().all(|&pad| pad <= 2)
        && p.channels >= MIN_CHANNELS
        && c_out >= MIN_CHANNELS
}

/// The tiling of one convolution: `channels` input planes of `input` size, read `pad` rows and
/// columns before their start, give `output`-sized planes in tiles of m×m.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    f: &'static Algorithm,
    batch: usize,
    channels: usize,
    input: [usize; 2],
    pad: [usize; 2],
    output: [usize; 2],
    tiles: [usize; 2],
}

impl Tiling {
    fn new(
        f: &'static Algorithm,
        [batch, channels]: [usize; 2],
        input: [usize; 2],
        pad: [usize; 2],
        output: [usize; 2],
    ) -> Self {
        let tiles = output.map(|side| side.div_ceil(f.m));
        Self {
            f,
            batch,
            channels,
            input,
            pad,
            output,
            tiles,
        }
    }

    /// The forward convolution of `p`.
    fn forward(f: &'static Algorithm, p: &Patches) -> Self {
        Self::new(f, [p.batch, p.channels], p.input, p.pad_begin, p.output)
    }

    /// The input gradient of `p` as a convolution of ∂y (`c_out` planes of `p.output` size):
    /// ∂x[i] = Σ_u ∂y[i + p − u] g[u] = Σ_u' ∂y[i − (2 − p) + u'] g[2 − u'].
    fn input_grad(f: &'static Algorithm, p: &Patches, c_out: usize) -> Self {
        let pad = p.pad_begin.map(|pad| 2 - pad);
        Self::new(f, [p.batch, c_out], p.output, pad, p.input)
    }

    fn tiles_per_image(&self) -> usize {
        self.tiles[0] * self.tiles[1]
    }

    fn image_len(&self) -> usize {
        self.channels * self.input[0] * self.input[1]
    }

    fn output_len(&self, c_out: usize) -> usize {
        c_out * self.output[0] * self.output[1]
    }

    /// Images per block when an image has fewer than [`TILES`] tiles, else 1.
    fn images_per_block(&self) -> usize {
        TILES.div_ceil(self.tiles_per_image().max(1))
    }

    /// The blocks of a group of `images` images: several whole images, or bands of tile rows
    /// of one image.
    fn blocks(&self, images: usize) -> Vec<Block> {
        let [rows, per_row] = self.tiles;
        if self.tiles_per_image() >= TILES {
            let band = (TILES / per_row.max(1)).max(1);
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

/// Tiles of images `images` (counted within a group) and tile rows `rows`, numbered
/// t = (image · rows + row) · tiles per row + column.
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
pub fn conv2d(x: &[f32], w: &[f32], bias: &[f32], p: &Patches) -> Vec<f32> {
    conv2d_with(algorithm_for(p.output), x, w, bias, p)
}

/// ∂x from ∂y for a convolution where [`applies`] holds (see
/// [`conv2d_input_grad`](crate::conv::conv2d_input_grad)).
pub fn conv2d_input_grad(w: &[f32], dy: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
    conv2d_input_grad_with(algorithm_for(p.input), w, dy, p, c_out)
}

/// ∂W from the input and ∂y for a convolution where [`applies`] holds (see
/// [`conv2d_weight_grad`](crate::conv::conv2d_weight_grad)): `[C_out, C_in, 3, 3]`.
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
    conv2d_weight_grad_with(algorithm_for(p.output), x, dy, p, c_out)
}

/// [`conv2d`] by the algorithm `f`.
pub fn conv2d_with(f: &'static Algorithm, x: &[f32], w: &[f32], bias: &[f32], p: &Patches) -> Vec<f32> {
    convolve(&Tiling::forward(f, p), x, &transform_weights(f, w), bias)
}

/// [`conv2d_input_grad`] by the algorithm `f`.
pub fn conv2d_input_grad_with(
    f: &'static Algorithm,
    w: &[f32],
    dy: &[f32],
    p: &Patches,
    c_out: usize,
) -> Vec<f32> {
    let c_in = p.channels;
    let u = transform_weights(f, &flipped_kernel(w, c_out, c_in));
    convolve(&Tiling::input_grad(f, p, c_out), dy, &u, &vec![0.0; c_in])
}

/// [`conv2d_weight_grad`] by the algorithm `f`. Groups of images are summed in a fixed order,
/// so the result does not depend on the number of threads.
pub fn conv2d_weight_grad_with(
    f: &'static Algorithm,
    x: &[f32],
    dy: &[f32],
    p: &Patches,
    c_out: usize,
) -> Vec<f32> {
    let t = Tiling::forward(f, p);
    let (c_in, image_out, xis) = (t.channels, t.output_len(c_out), f.positions());
    let per_group = GROUP.max(t.images_per_block()).min(t.batch.max(1));
    let size = xis * c_out * c_in;
    let mut partial = vec![0.0f32; t.batch.div_ceil(per_group).max(1) * size];
    per_chunk(&mut partial, size, |g, du, parallel| {
        let first = g * per_group;
        let images = per_group.min(t.batch - first);
        let x = &x[first * t.image_len()..][..images * t.image_len()];
        let dy = &dy[first * image_out..][..images * image_out];
        for block in t.blocks(images) {
            let tiles = block.tiles(&t);
            with_scratch(xis * (c_in + c_out) * tiles, |buffer| {
                let (v, dm) = buffer.split_at_mut(xis * c_in * tiles);
                transform_input(&t, x, &block, v, parallel);
                transform_output_grad(&t, dy, c_out, &block, dm, parallel);
                for xi in 0..xis {
                    let dm = Mat::strided(&dm[xi * tiles..], c_out, tiles, xis * tiles);
                    let v = Mat::strided(&v[xi * tiles..], c_in, tiles, xis * tiles);
                    matmul(&mut du[xi * c_out * c_in..], c_in, dm, v.t(), true, parallel);
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
    weight_grad_from(f, total, c_out * c_in)
}

/// The convolution of `t` with transformed weights `u` (`[α², C_out, C_in]`), plus `bias`.
fn convolve(t: &Tiling, x: &[f32], u: &[f32], bias: &[f32]) -> Vec<f32> {
    let (c_in, c_out, xis) = (t.channels, bias.len(), t.f.positions());
    let image_out = t.output_len(c_out);
    // Groups of whole images, as many as one block holds, so that the products' sizes (and
    // so their rounding) do not depend on the number of threads.
    let per_group = t.images_per_block().min(t.batch).max(1);
    let mut y = vec![0.0f32; t.batch * image_out];
    per_chunk(&mut y, per_group * image_out, |g, y, parallel| {
        let first = g * per_group;
        let images = y.len() / image_out;
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
    /// The per-channel buffers of the transforms (the blocks themselves live in `conv`'s).
    static TRANSFORM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Channel pairs whose kernels one task transforms at once.
const PAIRS: usize = 512;

/// The kernel of the input gradient, g'[c, o, u, v] = g[o, c, 2 − u, 2 − v]: `[C_in, C_out, 3,
/// 3]` from the `[C_out, C_in, 3, 3]` kernel `w`.
fn flipped_kernel(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut flipped = vec![0.0f32; w.len()];
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
    flipped
}

/// U = G g Gᵀ for every channel pair of the `[pairs, 3, 3]` kernel `w`: `[α², pairs]`. Each
/// task computes the α rows U_{i·} of one row i of G, [`PAIRS`] pairs at a time.
fn transform_weights(f: &Algorithm, w: &[f32]) -> Vec<f32> {
    let pairs = w.len() / 9;
    let mut u = vec![0.0f32; f.positions() * pairs];
    u.par_chunks_mut((f.alpha * pairs).max(1)).enumerate().for_each(|(i, u)| {
        with_buffer(&TRANSFORM, 12 * PAIRS, |buffer| {
            crate::wide!(weight_rows(f: &Algorithm, w: &[f32], i: usize, u: &mut [f32], buffer: &mut [f32]))
        })
    });
    u
}

/// The rows U_{ij} (j < α) of [`transform_weights`] for row i of G: with g the kernels as 9
/// rows over the pairs, (G g)_{iv} = Σ_u G_{iu} g_{uv}, then U_{ij} = Σ_v (G g)_{iv} G_{jv}.
#[inline(always)]
fn weight_rows(f: &Algorithm, w: &[f32], i: usize, u: &mut [f32], buffer: &mut [f32]) {
    let (pairs, alpha) = (w.len() / 9, f.alpha);
    for (k, w) in w.chunks(9 * PAIRS).enumerate() {
        let n = w.len() / 9;
        let (g, gg) = buffer.split_at_mut(9 * n);
        for (uv, row) in g.chunks_mut(n).enumerate() {
            every::<9>(row, &w[uv..]);
        }
        for (v, out) in gg[..3 * n].chunks_mut(n).enumerate() {
            combine(out, row_of(f.g, 3, i), |u| &g[(u * 3 + v) * n..][..n]);
        }
        for j in 0..alpha {
            let out = &mut u[j * pairs + k * PAIRS..][..n];
            combine(out, row_of(f.g, 3, j), |v| &gg[v * n..][..n]);
        }
    }
}

/// ∂g = Gᵀ ∂U G for every channel pair (the adjoint of [`transform_weights`]): the
/// `[pairs, 3, 3]` kernel gradient from `[α², pairs]`, in parallel chunks of [`PAIRS`] pairs.
fn weight_grad_from(f: &Algorithm, du: &[f32], pairs: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; pairs * 9];
    let buffer = (3 * f.alpha + 9) * PAIRS;
    dw.par_chunks_mut(9 * PAIRS).enumerate().for_each(|(k, out)| {
        let first = k * PAIRS;
        with_buffer(&TRANSFORM, buffer, |buffer| {
            crate::wide!(weight_grad_chunk(f: &Algorithm, du: &[f32], pairs: usize, first: usize, out: &mut [f32], buffer: &mut [f32]));
        })
    });
    dw
}

/// [`weight_grad_from`] for the pairs `first..` whose gradients `out` holds, in two steps
/// (`buffer`: at least (3α + 9)·pairs values), t_{iv} = Σ_j G_{jv} ∂U_{ij}, then ∂g_{uv} = Σ_i G_{iu} t_{iv}.
#[inline(always)]
fn weight_grad_chunk(
    f: &Algorithm,
    du: &[f32],
    pairs: usize,
    first: usize,
    out: &mut [f32],
    buffer: &mut [f32],
) {
    let (n, alpha) = (out.len() / 9, f.alpha);
    let (t, g) = buffer.split_at_mut(alpha * 3 * n);
    for (iv, row) in t.chunks_mut(n).enumerate() {
        let (i, v) = (iv / 3, iv % 3);
        combine(row, (0..alpha).map(|j| f.g[j * 3 + v]), |j| {
            &du[(i * alpha + j) * pairs + first..][..n]
        });
    }
    for (uv, row) in g[..9 * n].chunks_mut(n).enumerate() {
        let (u, v) = (uv / 3, uv % 3);
        combine(row, (0..alpha).map(|i| f.g[i * 3 + u]), |i| {
            &t[(i * 3 + v) * n..][..n]
        });
    }
    for (uv, row) in g[..9 * n].chunks(n).enumerate() {
        scatter_every::<9>(&mut out[uv..], row);
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
    let len = t.f.positions() * block.tiles(t);
    let (alpha, tiles) = (t.f.alpha, block.tiles(t));
    let buffer = t.f.m * (t.tiles[1] + 1) + 2 * alpha * alpha * tiles;
    each_chunk(v, len, parallel, |c, v| {
        with_buffer(
            &TRANSFORM,
            buffer,
            |buffer| crate::wide!(input_channel(t: &Tiling, x: &[f32], block: &Block, c: usize, v: &mut [f32], buffer: &mut [f32])),
        )
    });
}

/// [`transform_input`] for channel `c`: `v` is its `[α², tiles]`; `buffer` holds at least
/// m·(tiles per row + 1) + 2α²·tiles values. The arithmetic runs over
/// all the block's tiles at once: the windows are first gathered as d[r][c][tile], then
/// Bᵀ d along r and · B along c.
#[inline(always)]
fn input_channel(t: &Tiling, x: &[f32], block: &Block, c: usize, v: &mut [f32], buffer: &mut [f32]) {
    let (f, tiles) = (t.f, block.tiles(t));
    let (alpha, width) = (f.alpha, f.m * (t.tiles[1] + 1));
    let size = alpha * alpha * tiles;
    let (line, rest) = buffer.split_at_mut(width);
    let (d, q) = rest.split_at_mut(size);
    input_windows(t, x, block, c, line, &mut d[..size]);
    for (ic, q) in q[..size].chunks_mut(tiles).enumerate() {
        let (i, col) = (ic / alpha, ic % alpha);
        combine(q, row_of(f.bt, alpha, i), |r| {
            &d[(r * alpha + col) * tiles..][..tiles]
        });
    }
    for (xi, out) in v.chunks_mut(tiles).enumerate() {
        let (i, j) = (xi / alpha, xi % alpha);
        combine(out, row_of(f.bt, alpha, j), |col| {
            &q[(i * alpha + col) * tiles..][..tiles]
        });
    }
}

/// The α×α input windows of the block's tiles on channel `c`, as d[r][col][tile] (`line`: a
/// buffer of m·(tiles per row + 1) values or more).
#[inline(always)]
fn input_windows(t: &Tiling, x: &[f32], block: &Block, c: usize, line: &mut [f32], d: &mut [f32]) {
    let ([h, w], [pad_y, pad_x], tw) = (t.input, t.pad, t.tiles[1]);
    let (m, alpha, tiles) = (t.f.m, t.f.alpha, block.tiles(t));
    let line = &mut line[..m * (tw + 1)];
    let width = line.len();
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
    let ([oh, ow], c_out, xis) = (t.output, bias.len(), t.f.positions());
    let (tiles, plane, mm) = (block.tiles(t), oh * ow, t.f.m);
    // Y = Aᵀ M A per output channel, into the first m² rows of its M.
    let buffer = mm * t.f.alpha * tiles;
    each_chunk(m, xis * tiles, parallel, |o, m| {
        let bias = bias[o];
        with_buffer(
            &TRANSFORM,
            buffer,
            |r| crate::wide!(output_tiles(t: &Tiling, m: &mut [f32], bias: f32, tiles: usize, r: &mut [f32])),
        )
    });
    let planes = &mut y[block.images.start * c_out * plane..block.images.end * c_out * plane];
    let m = &*m;
    each_chunk(planes, plane, parallel, |k, out| {
        let (image, o) = (block.images.start + k / c_out, k % c_out);
        let values = &m[o * xis * tiles..][..mm * mm * tiles];
        crate::wide!(output_rows(t: &Tiling, values: &[f32], block: &Block, image: usize, out: &mut [f32]));
    });
}

/// Writes the block's outputs of one plane `out` of `image` from their m² phases `values`
/// (`[m², tiles]`), dropping those beyond the image.
#[inline(always)]
fn output_rows(t: &Tiling, values: &[f32], block: &Block, image: usize, out: &mut [f32]) {
    let ([oh, ow], mm, tiles) = (t.output, t.f.m, block.tiles(t));
    for row in block.rows.clone() {
        let first = block.first_tile(t, image, row);
        for a in 0..mm.min(oh.saturating_sub(mm * row)) {
            let dst = &mut out[(mm * row + a) * ow..][..ow];
            let phases = &values[a * mm * tiles..][..mm * tiles];
            match mm {
                2 => interleave::<2>(dst, phases, tiles, first),
                _ => interleave::<4>(dst, phases, tiles, first),
            }
        }
    }
}

/// Aᵀ M A + b over all tiles of one output channel: `m` is its `[α², tiles]`; the m² output
/// positions (a, b) are written to its first m² rows (`r`: a buffer of mα·tiles values).
#[inline(always)]
fn output_tiles(t: &Tiling, m: &mut [f32], bias: f32, tiles: usize, r: &mut [f32]) {
    let f = t.f;
    let (mm, alpha) = (f.m, f.alpha);
    for (aj, r) in r[..mm * alpha * tiles].chunks_mut(tiles).enumerate() {
        let (a, j) = (aj / alpha, aj % alpha);
        combine(r, row_of(f.at, alpha, a), |i| {
            &m[(i * alpha + j) * tiles..][..tiles]
        });
    }
    for (ab, out) in m.chunks_mut(tiles).take(mm * mm).enumerate() {
        let (a, b) = (ab / mm, ab % mm);
        combine(out, row_of(f.at, alpha, b), |j| {
            &r[(a * alpha + j) * tiles..][..tiles]
        });
        for value in out.iter_mut() {
            *value += bias;
        }
    }
}

/// ∂M = A ∂Y Aᵀ for every tile of `block` (the adjoint of [`transform_output`]):
/// `[C_out, α², tiles]` from the group's output gradients `dy`, zero beyond the image.
fn transform_output_grad(
    t: &Tiling,
    dy: &[f32],
    c_out: usize,
    block: &Block,
    dm: &mut [f32],
    parallel: bool,
) {
    let len = t.f.positions() * block.tiles(t);
    let (mm, tiles) = (t.f.m, block.tiles(t));
    let buffer = (mm * mm + mm * t.f.alpha) * tiles;
    each_chunk(dm, len, parallel, |o, dm| {
        with_buffer(&TRANSFORM, buffer, |buffer| {
            crate::wide!(output_grad_channel(t: &Tiling, dy: &[f32], c_out: usize, block: &Block, o: usize, dm: &mut [f32], buffer: &mut [f32]));
        })
    });
}

/// [`transform_output_grad`] for output channel `o`: `dm` is its `[α², tiles]` (`buffer`: at
/// least (m² + mα)·tiles values). With
/// s[a][b][tile] = ∂y[m·row + a, m·tx + b]: e[a][j] = Σ_b Aᵀ_{bj} s[a][b], then
/// ∂M_{ij} = Σ_a Aᵀ_{ai} e[a][j], over all the block's tiles at once.
#[inline(always)]
fn output_grad_channel(
    t: &Tiling,
    dy: &[f32],
    c_out: usize,
    block: &Block,
    o: usize,
    dm: &mut [f32],
    buffer: &mut [f32],
) {
    let f = t.f;
    let (tiles, mm, alpha) = (block.tiles(t), f.m, f.alpha);
    let (s, e) = buffer.split_at_mut(mm * mm * tiles);
    output_grad_phases(t, dy, c_out, block, o, s);
    for (aj, e) in e[..mm * alpha * tiles].chunks_mut(tiles).enumerate() {
        let (a, j) = (aj / alpha, aj % alpha);
        combine(e, (0..mm).map(|b| f.at[b * alpha + j]), |b| {
            &s[(a * mm + b) * tiles..][..tiles]
        });
    }
    for (xi, out) in dm.chunks_mut(tiles).enumerate() {
        let (i, j) = (xi / alpha, xi % alpha);
        combine(out, (0..mm).map(|a| f.at[a * alpha + i]), |a| {
            &e[(a * alpha + j) * tiles..][..tiles]
        });
    }
}

/// The output gradients of the block's tiles on channel `o` in their m² phases,
/// s[a][b][tile] = ∂y[m·row + a, m·tx + b] (zero beyond the image).
#[inline(always)]
fn output_grad_phases(t: &Tiling, dy: &[f32], c_out: usize, block: &Block, o: usize, s: &mut [f32]) {
    let ([oh, ow], tw, mm) = (t.output, t.tiles[1], t.f.m);
    let (tiles, plane) = (block.tiles(t), oh * ow);
    for image in block.images.clone() {
        let dy = &dy[(image * c_out + o) * plane..][..plane];
        for row in block.rows.clone() {
            let first = block.first_tile(t, image, row);
            for a in 0..mm {
                let y = mm * row + a;
                for b in 0..mm {
                    let out = &mut s[(a * mm + b) * tiles + first..][..tw];
                    out.fill(0.0);
                    if y < oh && b < ow {
                        let line = &dy[y * ow..][b..ow];
                        let n = line.len().div_ceil(mm);
                        match mm {
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

/// dst[S·k + b] = phases[b·stride + first + k] for the positions inside `dst` (the inverse of
/// [`deinterleave`], from rows `stride` apart).
#[inline(always)]
fn interleave<const S: usize>(dst: &mut [f32], phases: &[f32], stride: usize, first: usize) {
    for (k, group) in dst.chunks_mut(S).enumerate() {
        for (b, value) in group.iter_mut().enumerate() {
            *value = phases[b * stride + first + k];
        }
    }
}

/// Row `i` of a row-major matrix with `n` columns.
fn row_of(matrix: &[f32], n: usize, i: usize) -> impl Iterator<Item = f32> + '_ {
    matrix[i * n..][..n].iter().copied()
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
    /// F4's forward values stay within 2·10⁻⁶ of the im2col product's scale.
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
    fn applies_to_wide_3x3_convolutions_of_stride_1_only() {
        let p = |channels, kernel, stride, pad| {
            Patches::new([2, channels, 8, 8], kernel, stride, [(pad, pad), (pad, pad)]).unwrap()
        };
        assert!(applies(&p(16, [3, 3], [1, 1], 1), 16));
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
