//! Shapes: a built-in image data set that needs no download. Each 32 × 32 RGB image is one
//! coloured disc, square or triangle on a plain background; image i is drawn from the ChaCha12
//! stream (seed, i), so any image can be generated alone and a set is the same however it is
//! split. Edges are anti-aliased by 4 × 4 supersampling. The label is the kind of shape.

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

/// Whether point (x, y) lies in shape `kind` centred at (cx, cy) with radius r and rotation a.
fn inside(kind: usize, x: f64, y: f64, cx: f64, cy: f64, r: f64, a: f64) -> bool {
    let (dx, dy) = (x - cx, y - cy);
    let (u, v) = (dx * a.cos() + dy * a.sin(), -dx * a.sin() + dy * a.cos());
    match kind {
        0 => dx * dx + dy * dy <= r * r,
        1 => u.abs() <= r * 0.8 && v.abs() <= r * 0.8,
        _ => {
            // An equilateral triangle with circumradius r: inside all three edges.
            (0..3).all(|k| {
                let t = std::f64::consts::TAU * k as f64 / 3.0;
                u * t.cos() + v * t.sin() <= r * 0.5
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
    let r = s * (0.18 + 0.14 * uniform(&mut rng));
    let cx = r + (s - 2.0 * r) * uniform(&mut rng);
    let cy = r + (s - 2.0 * r) * uniform(&mut rng);
    let angle = std::f64::consts::TAU * uniform(&mut rng);
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
                    covered += inside(kind, px, py, cx, cy, r, angle) as u32;
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
