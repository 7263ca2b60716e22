//! Shapes: a built-in image data set that needs no download. Each 32 × 32 RGB image is one
//! coloured disc, square or triangle (upright, of random size and place) on a plain
//! background; image i is drawn from the ChaCha12 stream (seed, i), so any image can be
//! generated alone and a set is the same however it is split. Edges are anti-aliased by 4 × 4
//! supersampling. The label is the kind of shape.

use diffusion_core::noise::{sample_rng, uniform};

use crate::images::ImageSet;

/// The kinds of shape, by label.
pub const SHAPE_CLASSES: [&str; 3] = ["disc", "square", "triangle"];

/// A palette of saturated and muted colours (RGB).
const PALETTE: [[u8; 3]; 10] = [
    [230, 57, 70],
    [244, 162, 97],
    [233, 196, 106],
    [42, 157, 143],
    [38, 70, 83],
    [69, 123, 157],
    [168, 218, 220],
    [241, 250, 238],
    [131, 56, 236],
    [255, 190, 11],
];

/// The range of the circumradius as a fraction of the image side: 8 to 12.8 pixels at 32 × 32,
/// so that a triangle or square spans 13–22 pixels and its kind is plain at this resolution.
const RADIUS: (f64, f64) = (0.25, 0.40);

/// Whether point (x, y) lies in shape `kind` centred at (cx, cy) with circumradius r. Shapes
/// are upright: squares axis-aligned, triangles with a flat base and the apex up.
fn inside(kind: usize, x: f64, y: f64, cx: f64, cy: f64, r: f64) -> bool {
    let (dx, dy) = (x - cx, y - cy);
    match kind {
        0 => dx * dx + dy * dy <= r * r,
        1 => dx.abs() <= r * 0.8 && dy.abs() <= r * 0.8,
        _ => {
            // An equilateral triangle with circumradius r: inside its three edges, whose outward
            // normals point down (image y grows downwards) and 120° either side of it.
            (0..3).all(|k| {
                let t = std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * k as f64 / 3.0;
                dx * t.cos() + dy * t.sin() <= r * 0.5
            })
        }
    }
}

/// Image `index` of `seed`: `[3, size, size]` bytes and its label.
pub fn shape_image(seed: u64, index: u64, size: usize) -> (Vec<u8>, u32) {
    let mut rng = sample_rng(seed, index);
    let mut pick = |n: usize| ((uniform(&mut rng) * n as f64) as usize).min(n - 1);
    let kind = pick(3);
    let background = pick(PALETTE.len());
    let mut colour = pick(PALETTE.len() - 1);
    if colour >= background {
        colour += 1;
    }
    let s = size as f64;
    let r = s * (RADIUS.0 + (RADIUS.1 - RADIUS.0) * uniform(&mut rng));
    let cx = r + (s - 2.0 * r) * uniform(&mut rng);
    let cy = r + (s - 2.0 * r) * uniform(&mut rng);
    let mut pixels = vec![0u8; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let mut covered = 0;
            for sy in 0..4 {
                for sx in 0..4 {
                    let (px, py) = (
                        x as f64 + (sx as f64 + 0.5) / 4.0,
                        y as f64 + (sy as f64 + 0.5) / 4.0,
                    );
                    covered += inside(kind, px, py, cx, cy, r) as u32;
                }
            }
            let w = covered as f64 / 16.0;
            for c in 0..3 {
                let value = w * PALETTE[colour][c] as f64 + (1.0 - w) * PALETTE[background][c] as f64;
                pixels[c * size * size + y * size + x] = value.round() as u8;
            }
        }
    }
    (pixels, kind as u32)
}

/// Images `range` of `seed` as a set.
pub fn shapes(seed: u64, range: std::ops::Range<u64>, size: usize) -> ImageSet {
    let mut pixels = Vec::with_capacity((range.end - range.start) as usize * 3 * size * size);
    let mut labels = Vec::new();
    for i in range {
        let (p, l) = shape_image(seed, i, size);
        pixels.extend(p);
        labels.push(l);
    }
    ImageSet {
        name: "shapes".into(),
        shape: [3, size, size],
        pixels,
        labels,
        classes: SHAPE_CLASSES.iter().map(|s| s.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pixels that differ from the background (the corner, which no shape reaches), as
    /// (covered count, bounding-box width and height, count in the top and bottom rows).
    fn footprint(pixels: &[u8], size: usize) -> (usize, usize, usize, usize, usize) {
        let plane = size * size;
        let differs = |i: usize| (0..3).any(|c| pixels[c * plane + i] != pixels[c * plane]);
        let (mut x0, mut x1, mut y0, mut y1, mut count) = (size, 0, size, 0, 0);
        for y in 0..size {
            for x in 0..size {
                if differs(y * size + x) {
                    (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
                    count += 1;
                }
            }
        }
        let row = |y: usize| (0..size).filter(|&x| differs(y * size + x)).count();
        (count, x1 + 1 - x0, y1 + 1 - y0, row(y0), row(y1))
    }

    #[test]
    fn shapes_are_upright_and_of_the_stated_size() {
        let mut seen = [0; 3];
        for i in 0..300 {
            let (pixels, kind) = shape_image(11, i, 32);
            let (count, w, h, top, bottom) = footprint(&pixels, 32);
            let fill = count as f64 / (w * h) as f64;
            let span = w.max(h);
            // The smallest square is 12.8 px a side, the largest disc 25.6 px across (plus the
            // anti-aliased edge pixels); RADIUS (0.22, 0.40) or (0.25, 0.43) fails this.
            assert!((13..=27).contains(&span), "image {i}: {w} x {h}");
            match kind {
                0 => assert!(
                    w.abs_diff(h) <= 1 && (0.7..0.9).contains(&fill),
                    "disc {i}: {w}x{h}, fill {fill}"
                ),
                // Axis-aligned: a square fills its bounding box (a rotated one fills 50–70 %).
                1 => assert!(
                    w.abs_diff(h) <= 1 && fill > 0.9,
                    "square {i}: {w}x{h}, fill {fill}"
                ),
                // Apex up: the top row is a few pixels, the base row is the widest.
                _ => assert!(
                    3 * top < bottom && (0.4..0.7).contains(&fill),
                    "triangle {i}: top {top}, bottom {bottom}, fill {fill}"
                ),
            }
            seen[kind as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 70), "{seen:?}");
    }
}
