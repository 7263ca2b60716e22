//! 3×3 convolutions of stride 1 by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray
//! 2016, "Fast Algorithms for Convolutional Neural Networks", §4.1). Each 2×2 block of outputs
//! comes from the 4×4 input tile d around it as
//!
//!   Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A,
//!
//! with 16 multiplications where the direct form takes 36. Summed over input channels, the
//! element-wise product becomes 16 matrix products, one per tile position ξ (Lavin & Gray,
//! eq. 12): M_ξ = U_ξ · V_ξ, with U_ξ = (G g Gᵀ)_ξ as a `[C_out, C_in]` matrix and
//! V_ξ = (Bᵀ d B)_ξ as `[C_in, tiles]`: 2.25× fewer multiply–adds than the im2col product of
//! [`conv`](crate::conv). The transforms hold only 0, ±1 and ½, which are exact in binary.
//!
//! The gradients reuse the same pieces:
//! - ∂x is the same algorithm applied to ∂y, with the kernel flipped and its channels swapped
//!   (a stride-1 transposed convolution is a convolution);
//! - ∂g is the adjoint of each step: ∂M = A ∂Y Aᵀ per tile, ∂U_ξ = Σ_tiles ∂M_ξ V_ξᵀ (16
//!   matrix products again), ∂g = Gᵀ ∂U G.
//!
//! Tiles are taken in blocks of about [`TILES`] (whole images, or bands of tile rows of a
//! large image) so that the transformed blocks stay in cache; blocks of different images run
//! in parallel.

use std::ops::Range;

use rayon::prelude::*;

use crate::conv::{per_chunk, with_scratch};
use crate::gemm::{Mat, matmul};
use crate::patches::Patches;

/// Tile positions ξ: the 4×4 transformed tile.
const XI: usize = 16;

/// About how many tiles one block transforms and multiplies at once (a few rows in the unit
/// tests, so that they cover images taken in bands and several images per block).
const TILES: usize = if cfg!(test) { 6 } else { 256 };

/// Images whose weight-gradient terms one task sums, in order (at least; more for small
/// images, to fill a block).
const GROUP: usize = 4;

/// Whether the Winograd path computes this convolution: a 3×3 kernel of stride 1, at most 2
/// zero rows/columns before the image (the input gradient pads by 2 − p), and enough channels
/// on both sides for the 16 matrix products to pay for the transforms.
pub fn applies(p: &Patches, c_out: usize) -> bool {
    p.kernel == [3, 3]
        && p.stride == [1, 1]
        && p.pad_begin.iter().all(|&pad| pad <= 2)
        && p.channels >= MIN_CHANNELS
        && c_out >= MIN_CHANNELS
}

/// Below this many input or output channels the im2col product is as fast (the first and last
/// layers of an image network, with 3 channels).
const MIN_CHANNELS: usize = 16;

/// The tiling of one convolution: `channels` input planes of `input` size, read `pad` rows and
/// columns before their start, give `output`-sized planes in tiles of 2×2.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    batch: usize,
    channels: usize,
    input: [usize; 2],
    pad: [usize; 2],
    output: [usize; 2],
    tiles: [usize; 2],
}

impl Tiling {
    fn new(batch: usize, channels: usize, input: [usize; 2], pad: [usize; 2], output: [usize; 2]) -> Self {
        Self {
            batch,
            channels,
            input,
            pad,
            output,
            tiles: [output[0].div_ceil(2), output[1].div_ceil(2)],
        }
    }

    /// The forward convolution of `p`.
    fn forward(p: &Patches) -> Self {
        Self::new(p.batch, p.channels, p.input, p.pad_begin, p.output)
    }

    /// The input gradient of `p` as a convolution of ∂y (`c_out` planes of `p.output` size):
    /// ∂x[i] = Σ_u ∂y[i + p − u] g[u] = Σ_u' ∂y[i − (2 − p) + u'] g[2 − u'].
    fn input_grad(p: &Patches, c_out: usize) -> Self {
        let pad = p.pad_begin.map(|pad| 2 - pad);
        Self::new(p.batch, c_out, p.output, pad, p.input)
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
    let c_out = bias.len();
    let u = transform_weights(w, c_out, p.channels);
    convolve(&Tiling::forward(p), x, &u, bias)
}

/// ∂x from ∂y for a convolution where [`applies`] holds (see
/// [`conv2d_input_grad`](crate::conv::conv2d_input_grad)).
pub fn conv2d_input_grad(w: &[f32], dy: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
    let c_in = p.channels;
    // g'[c, o, u, v] = g[o, c, 2 − u, 2 − v].
    let mut flipped = vec![0.0f32; w.len()];
    for (o, c) in (0..c_out).flat_map(|o| (0..c_in).map(move |c| (o, c))) {
        let src = &w[(o * c_in + c) * 9..][..9];
        let dst = &mut flipped[(c * c_out + o) * 9..][..9];
        for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
            *d = *s;
        }
    }
    let u = transform_weights(&flipped, c_in, c_out);
    convolve(&Tiling::input_grad(p, c_out), dy, &u, &vec![0.0; c_in])
}

/// ∂W from the input and ∂y for a convolution where [`applies`] holds (see
/// [`conv2d_weight_grad`](crate::conv::conv2d_weight_grad)): `[C_out, C_in, 3, 3]`. Groups of
/// images are summed in a fixed order, so the result does not depend on the number of threads.
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], p: &Patches, c_out: usize) -> Vec<f32> {
    let t = Tiling::forward(p);
    let (c_in, image_out) = (t.channels, t.output_len(c_out));
    let per_group = GROUP.max(t.images_per_block()).min(t.batch.max(1));
    let size = XI * c_out * c_in;
    let mut partial = vec![0.0f32; t.batch.div_ceil(per_group).max(1) * size];
    per_chunk(&mut partial, size, |g, du, parallel| {
        let first = g * per_group;
        let images = per_group.min(t.batch - first);
        let x = &x[first * t.image_len()..][..images * t.image_len()];
        let dy = &dy[first * image_out..][..images * image_out];
        for block in t.blocks(images) {
            let tiles = block.tiles(&t);
            with_scratch(XI * (c_in + c_out) * tiles, |buffer| {
                let (v, dm) = buffer.split_at_mut(XI * c_in * tiles);
                transform_input(&t, x, &block, v, parallel);
                transform_output_grad(&t, dy, c_out, &block, dm, parallel);
                for xi in 0..XI {
                    let dm = Mat::strided(&dm[xi * tiles..], c_out, tiles, XI * tiles);
                    let v = Mat::strided(&v[xi * tiles..], c_in, tiles, XI * tiles);
                    matmul(&mut du[xi * c_out * c_in..], c_in, dm, v.t(), true, parallel);
                }
            });
        }
    });
    let (total, rest) = partial.split_at_mut(size);
    for group in rest.chunks(size) {
        for (a, b) in total.iter_mut().zip(group) {
            *a += b;
        }
    }
    weight_grad_from(total, c_out, c_in)
}

/// The convolution of `t` with transformed weights `u` (`[16, C_out, C_in]`), plus `bias`.
fn convolve(t: &Tiling, x: &[f32], u: &[f32], bias: &[f32]) -> Vec<f32> {
    let (c_in, c_out) = (t.channels, bias.len());
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
            with_scratch(XI * (c_in + c_out) * tiles, |buffer| {
                let (v, m) = buffer.split_at_mut(XI * c_in * tiles);
                transform_input(t, x, &block, v, parallel);
                for xi in 0..XI {
                    let u = Mat::new(&u[xi * c_out * c_in..], c_out, c_in);
                    let v = Mat::strided(&v[xi * tiles..], c_in, tiles, XI * tiles);
                    matmul(&mut m[xi * tiles..], XI * tiles, u, v, false, parallel);
                }
                transform_output(t, m, bias, &block, y, parallel);
            });
        }
    });
    y
}

/// U = G g Gᵀ for every (output, input) channel pair: `[16, C_out, C_in]` from the
/// `[C_out, C_in, 3, 3]` kernel, with G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
fn transform_weights(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let g_rows = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let mut u = vec![0.0f32; XI * c_out * c_in];
    for pair in 0..c_out * c_in {
        let g = &w[pair * 9..][..9];
        // G g: 4 rows of 3, then (G g) Gᵀ: each row through G again.
        let columns: [[f32; 4]; 3] = std::array::from_fn(|j| g_rows(g[j], g[3 + j], g[6 + j]));
        for i in 0..4 {
            let row = g_rows(columns[0][i], columns[1][i], columns[2][i]);
            for (j, value) in row.into_iter().enumerate() {
                u[(4 * i + j) * c_out * c_in + pair] = value;
            }
        }
    }
    u
}

/// ∂g = Gᵀ ∂U G for every channel pair: `[C_out, C_in, 3, 3]` from `[16, C_out, C_in]` (the
/// adjoint of [`transform_weights`]).
fn weight_grad_from(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    // Gᵀ applied to a 4-vector.
    let gt = |v: [f32; 4]| {
        [
            v[0] + 0.5 * (v[1] + v[2]),
            0.5 * (v[1] - v[2]),
            0.5 * (v[1] + v[2]) + v[3],
        ]
    };
    let pairs = c_out * c_in;
    let mut dw = vec![0.0f32; pairs * 9];
    for pair in 0..pairs {
        let at = |i: usize, j: usize| du[(4 * i + j) * pairs + pair];
        // Gᵀ ∂U: 3 rows of 4, then each row times G.
        let rows: [[f32; 3]; 4] = std::array::from_fn(|j| gt([at(0, j), at(1, j), at(2, j), at(3, j)]));
        for a in 0..3 {
            let row = gt([rows[0][a], rows[1][a], rows[2][a], rows[3][a]]);
            dw[pair * 9 + 3 * a..][..3].copy_from_slice(&row);
        }
    }
    dw
}

/// V = Bᵀ d B for every tile of `block` and every channel: `[C_in, 16, tiles]`, with
/// Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]. `x` holds the group's
/// images; zeros are read outside them. Channels run in parallel when `parallel`.
fn transform_input(t: &Tiling, x: &[f32], block: &Block, v: &mut [f32], parallel: bool) {
    let tiles = block.tiles(t);
    each_chunk(
        v,
        XI * tiles,
        parallel,
        |c, v| crate::wide!(input_channel(t: &Tiling, x: &[f32], block: &Block, c: usize, v: &mut [f32])),
    );
}

/// [`transform_input`] for channel `c`: `v` is its `[16, tiles]`.
#[inline(always)]
fn input_channel(t: &Tiling, x: &[f32], block: &Block, c: usize, v: &mut [f32]) {
    let ([h, w], [pad_y, pad_x], tw) = (t.input, t.pad, t.tiles[1]);
    let (tiles, n) = (block.tiles(t), tw + 1);
    {
        let mut line = vec![0.0f32; 2 * n];
        // The 4 input rows under a tile row, split into even and odd columns (so that every
        // loop below runs over consecutive values), then Bᵀ d along the rows.
        let mut d = vec![0.0f32; 8 * n];
        let mut q = vec![0.0f32; 8 * n];
        for image in block.images.clone() {
            let plane = &x[(image * t.channels + c) * h * w..][..h * w];
            for row in block.rows.clone() {
                for (r, (even, odd)) in d.chunks_mut(2 * n).map(|d| d.split_at_mut(n)).enumerate() {
                    line.fill(0.0);
                    let y = (2 * row + r).wrapping_sub(pad_y);
                    if y < h {
                        let columns = pad_x.min(2 * n)..(w + pad_x).min(2 * n);
                        line[columns.clone()]
                            .copy_from_slice(&plane[y * w..][columns.start - pad_x..columns.end - pad_x]);
                    }
                    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(line.chunks_exact(2)) {
                        (*e, *o) = (pair[0], pair[1]);
                    }
                }
                let [d0, d1, d2, d3] = split4(&d);
                let [q0, q1, q2, q3] = split4_mut(&mut q);
                for k in 0..2 * n {
                    q0[k] = d0[k] - d2[k];
                    q1[k] = d1[k] + d2[k];
                    q2[k] = d2[k] - d1[k];
                    q3[k] = d1[k] - d3[k];
                }
                // · B along the columns: with e, o the even and odd columns of a row,
                // (e₀ − e₁, o₀ + e₁, e₁ − o₀, o₀ − o₁) for each tile.
                let first = block.first_tile(t, image, row);
                for (i, q) in q.chunks(2 * n).enumerate() {
                    let (e0, e1, o0, o1) = (&q[..tw], &q[1..n], &q[n..n + tw], &q[n + 1..]);
                    let out = |j: usize| (4 * i + j) * tiles + first;
                    let [v0, v1, v2, v3] = four_rows(v, [out(0), out(1), out(2), out(3)], tw);
                    for k in 0..tw {
                        v0[k] = e0[k] - e1[k];
                        v1[k] = o0[k] + e1[k];
                        v2[k] = e1[k] - o0[k];
                        v3[k] = o0[k] - o1[k];
                    }
                }
            }
        }
    }
}

/// y = Aᵀ M A + b for every tile of `block` (M: `[C_out, 16, tiles]`), with
/// Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]; the outputs of a tile that fall outside the image (odd
/// output sizes) are dropped. `y` holds the group's output images; its planes run in parallel
/// when `parallel`.
fn transform_output(t: &Tiling, m: &[f32], bias: &[f32], block: &Block, y: &mut [f32], parallel: bool) {
    let ([oh, ow], c_out) = (t.output, bias.len());
    let (tiles, plane) = (block.tiles(t), oh * ow);
    let planes = &mut y[block.images.start * c_out * plane..block.images.end * c_out * plane];
    each_chunk(planes, plane, parallel, |k, out| {
        let (image, o) = (block.images.start + k / c_out, k % c_out);
        let (m, bias) = (&m[o * XI * tiles..][..XI * tiles], bias[o]);
        crate::wide!(output_plane(t: &Tiling, m: &[f32], bias: f32, block: &Block, image: usize, out: &mut [f32]));
    });
}

/// [`transform_output`] for one output plane `out` of `image`, from its `[16, tiles]` M.
#[inline(always)]
fn output_plane(t: &Tiling, m: &[f32], bias: f32, block: &Block, image: usize, out: &mut [f32]) {
    let ([oh, ow], tw) = (t.output, t.tiles[1]);
    let tiles = block.tiles(t);
    {
        // Aᵀ M (2 rows of 4 per tile), then · A: the even and odd output columns of each row.
        let mut r = vec![0.0f32; 8 * tw];
        let mut cols = vec![0.0f32; 2 * tw];
        for row in block.rows.clone() {
            let first = block.first_tile(t, image, row);
            let at = |xi: usize| &m[xi * tiles + first..][..tw];
            for (j, (r0, r1)) in r.chunks_mut(2 * tw).map(|r| r.split_at_mut(tw)).enumerate() {
                let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                for k in 0..tw {
                    r0[k] = m0[k] + m1[k] + m2[k];
                    r1[k] = m1[k] - m2[k] - m3[k];
                }
            }
            for a in 0..2 {
                let out_row = 2 * row + a;
                if out_row >= oh {
                    continue;
                }
                let rj = |j: usize| &r[j * 2 * tw + a * tw..][..tw];
                let (c0, c1, c2, c3) = (rj(0), rj(1), rj(2), rj(3));
                let (even, odd) = cols.split_at_mut(tw);
                for k in 0..tw {
                    even[k] = c0[k] + c1[k] + c2[k] + bias;
                    odd[k] = c1[k] - c2[k] - c3[k] + bias;
                }
                let dst = &mut out[out_row * ow..][..ow];
                for (x, value) in dst.iter_mut().enumerate() {
                    *value = cols[(x & 1) * tw + x / 2];
                }
            }
        }
    }
}

/// ∂M = A ∂Y Aᵀ for every tile of `block` (the adjoint of [`transform_output`]):
/// `[C_out, 16, tiles]` from the group's output gradients `dy`, zero beyond the image.
fn transform_output_grad(
    t: &Tiling,
    dy: &[f32],
    c_out: usize,
    block: &Block,
    dm: &mut [f32],
    parallel: bool,
) {
    let tiles = block.tiles(t);
    each_chunk(dm, XI * tiles, parallel, |o, dm| {
        crate::wide!(output_grad_channel(t: &Tiling, dy: &[f32], c_out: usize, block: &Block, o: usize, dm: &mut [f32]));
    });
}

/// [`transform_output_grad`] for output channel `o`: `dm` is its `[16, tiles]`.
#[inline(always)]
fn output_grad_channel(t: &Tiling, dy: &[f32], c_out: usize, block: &Block, o: usize, dm: &mut [f32]) {
    let ([oh, ow], tw) = (t.output, t.tiles[1]);
    let (tiles, plane) = (block.tiles(t), oh * ow);
    {
        // The even and odd columns of the tile row's two output rows, then ∂Y Aᵀ per row:
        // (y₀, y₀ + y₁, y₀ − y₁, −y₁), and A · along the columns.
        let mut split = vec![0.0f32; 4 * tw];
        let mut e = vec![0.0f32; 8 * tw];
        for image in block.images.clone() {
            let dy = &dy[(image * c_out + o) * plane..][..plane];
            for row in block.rows.clone() {
                for (a, (even, odd)) in split.chunks_mut(2 * tw).map(|s| s.split_at_mut(tw)).enumerate() {
                    even.fill(0.0);
                    odd.fill(0.0);
                    if 2 * row + a < oh {
                        for (x, &value) in dy[(2 * row + a) * ow..][..ow].iter().enumerate() {
                            [&mut *even, &mut *odd][x & 1][x / 2] = value;
                        }
                    }
                }
                for (a, rows) in e.chunks_mut(4 * tw).enumerate() {
                    let (y0, y1) = split[a * 2 * tw..][..2 * tw].split_at(tw);
                    let [e0, e1, e2, e3] = split4_mut(rows);
                    for k in 0..tw {
                        e0[k] = y0[k];
                        e1[k] = y0[k] + y1[k];
                        e2[k] = y0[k] - y1[k];
                        e3[k] = -y1[k];
                    }
                }
                let first = block.first_tile(t, image, row);
                let (top, bottom) = e.split_at(4 * tw);
                for j in 0..4 {
                    let (t_j, b_j) = (&top[j * tw..][..tw], &bottom[j * tw..][..tw]);
                    let out = |i: usize| (4 * i + j) * tiles + first;
                    let [m0, m1, m2, m3] = four_rows(dm, [out(0), out(1), out(2), out(3)], tw);
                    for k in 0..tw {
                        m0[k] = t_j[k];
                        m1[k] = t_j[k] + b_j[k];
                        m2[k] = t_j[k] - b_j[k];
                        m3[k] = -b_j[k];
                    }
                }
            }
        }
    }
}

/// Runs `f(index, chunk)` over the `len`-value chunks of `out`, in parallel when `parallel`.
fn each_chunk(out: &mut [f32], len: usize, parallel: bool, f: impl Fn(usize, &mut [f32]) + Sync) {
    if parallel {
        out.par_chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// The four equal quarters of `v`.
fn split4(v: &[f32]) -> [&[f32]; 4] {
    let q = v.len() / 4;
    std::array::from_fn(|i| &v[i * q..][..q])
}

/// The four equal quarters of `v`, mutably.
fn split4_mut(v: &mut [f32]) -> [&mut [f32]; 4] {
    let q = v.len() / 4;
    let (a, rest) = v.split_at_mut(q);
    let (b, rest) = rest.split_at_mut(q);
    let (c, d) = rest.split_at_mut(q);
    [a, b, c, d]
}

/// Four disjoint runs of `len` values of `v` starting at the (increasing, `len` or more
/// apart) offsets `at`.
fn four_rows(v: &mut [f32], at: [usize; 4], len: usize) -> [&mut [f32]; 4] {
    let (a, rest) = v[at[0]..].split_at_mut(at[1] - at[0]);
    let (b, rest) = rest.split_at_mut(at[2] - at[1]);
    let (c, d) = rest.split_at_mut(at[3] - at[2]);
    [&mut a[..len], &mut b[..len], &mut c[..len], &mut d[..len]]
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
    /// block (`TILES` is 6 in tests), a 1×1 output.
    fn cases() -> Vec<(Patches, usize)> {
        let same = [(1, 1), (1, 1)];
        vec![
            (Patches::new([3, 4, 6, 5], [3, 3], [1, 1], same).unwrap(), 5),
            (Patches::new([5, 3, 2, 3], [3, 3], [1, 1], same).unwrap(), 2),
            (
                Patches::new([2, 2, 7, 9], [3, 3], [1, 1], [(0, 0), (0, 0)]).unwrap(),
                3,
            ),
            (
                Patches::new([2, 3, 5, 4], [3, 3], [1, 1], [(2, 2), (2, 2)]).unwrap(),
                2,
            ),
            (
                Patches::new([3, 2, 5, 6], [3, 3], [1, 1], [(0, 2), (2, 1)]).unwrap(),
                4,
            ),
            (
                Patches::new([4, 3, 3, 3], [3, 3], [1, 1], [(0, 0), (0, 0)]).unwrap(),
                2,
            ),
        ]
    }

    fn max_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }

    /// Forward, input gradient and weight gradient against the im2col products of `conv`
    /// (themselves tested against the definition of a convolution and its adjoints).
    #[test]
    fn matches_the_im2col_convolution_and_its_gradients() {
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
                (conv2d(&x, &w, &bias, &p), conv::conv2d(&x, &w, &bias, &p)),
                (
                    conv2d_input_grad(&w, &g, &p, c_out),
                    conv::conv2d_input_grad(&w, &g, &p, c_out),
                ),
                (
                    conv2d_weight_grad(&x, &g, &p, c_out),
                    conv::conv2d_weight_grad(&x, &g, &p, c_out),
                ),
            ];
            for (which, (ours, im2col)) in ["y", "∂x", "∂W"].iter().zip(pairs) {
                let err = max_difference(&ours, &im2col);
                assert!(err < 2e-5, "{p:?}, {which}: max difference {err}");
            }
        }
    }

    /// The transforms carry a convolution with every kernel value in turn exactly: a kernel
    /// with one 1 shifts the image.
    #[test]
    fn a_unit_kernel_shifts_the_image_exactly() {
        let p = Patches::new([1, 1, 5, 5], [3, 3], [1, 1], [(1, 1), (1, 1)]).unwrap();
        let x: Vec<f32> = (0..25).map(|k| k as f32 + 0.125).collect();
        for tap in 0..9 {
            let mut w = [0.0f32; 9];
            w[tap] = 1.0;
            let (di, dj) = (tap / 3, tap % 3);
            let y = conv2d(&x, &w, &[0.0], &p);
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
            cases()
                .into_iter()
                .map(|(p, c_out)| {
                    let x = values(p.batch * p.channels * p.input[0] * p.input[1], 0.5);
                    let w = values(c_out * p.rows(), 2.0);
                    let g = values(p.batch * c_out * p.columns(), 4.0);
                    [
                        conv2d(&x, &w, &values(c_out, 9.0), &p),
                        conv2d_input_grad(&w, &g, &p, c_out),
                        conv2d_weight_grad(&x, &g, &p, c_out),
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
    }
}
