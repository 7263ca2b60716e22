//! A folder of PNG/JPEG images, resized and centre-cropped to a square, labelled by subfolder
//! (as torchvision's `ImageFolder`: classes are the sorted subfolder names; images directly in
//! the folder form one class).
//!
//! Resizing follows guided-diffusion's `center_crop_arr`: halve with a 2 × 2 box filter while
//! the shorter side is at least twice the target, scale the shorter side to the target with a
//! bicubic (Catmull–Rom) filter, then crop the centre.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

use crate::error::{DataError, Result, io};
use crate::images::ImageSet;

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let path = entry.map_err(io(&d))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_image(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Halves an image with a 2 × 2 box filter (an odd last row or column is dropped).
fn halve(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width() / 2, img.height() / 2);
    RgbImage::from_fn(w, h, |x, y| {
        let mut sum = [0u32; 3];
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let p = img.get_pixel(2 * x + dx, 2 * y + dy);
            for c in 0..3 {
                sum[c] += p[c] as u32;
            }
        }
        image::Rgb(sum.map(|s| ((s + 2) / 4) as u8))
    })
}

/// Resizes the shorter side of `img` to `size` and crops the centre `size × size`.
pub fn center_crop(img: &DynamicImage, size: u32) -> RgbImage {
    let mut rgb = img.to_rgb8();
    while rgb.width().min(rgb.height()) >= 2 * size {
        rgb = halve(&rgb);
    }
    let scale = size as f64 / rgb.width().min(rgb.height()) as f64;
    let (w, h) = (
        ((rgb.width() as f64 * scale).round() as u32).max(size),
        ((rgb.height() as f64 * scale).round() as u32).max(size),
    );
    if (w, h) != (rgb.width(), rgb.height()) {
        rgb = image::imageops::resize(&rgb, w, h, FilterType::CatmullRom);
    }
    let (x0, y0) = ((w - size) / 2, (h - size) / 2);
    image::imageops::crop_imm(&rgb, x0, y0, size, size).to_image()
}

/// Every PNG/JPEG under `dir` as `[3, size, size]` RGB images.
pub fn load_image_folder(dir: &Path, size: u32) -> Result<ImageSet> {
    if size == 0 {
        return Err(DataError::Config("the image size must be positive".into()));
    }
    let files = images_in(dir)?;
    if files.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
            reason: "no .png, .jpg or .jpeg files in this folder or below".into(),
        });
    }
    let class_of = |path: &Path| -> String {
        let rel = path.strip_prefix(dir).unwrap_or(path);
        let mut parts = rel.components();
        match (parts.next(), parts.next()) {
            (Some(first), Some(_)) => first.as_os_str().to_string_lossy().into_owned(),
            _ => String::new(),
        }
    };
    let mut classes: Vec<String> = files.iter().map(|f| class_of(f)).collect();
    classes.sort();
    classes.dedup();
    let s = size as usize;
    let mut pixels = Vec::with_capacity(files.len() * 3 * s * s);
    let mut labels = Vec::with_capacity(files.len());
    for file in &files {
        let img = image::open(file).map_err(|e| DataError::Format {
            path: file.clone(),
            format: "PNG/JPEG image",
            reason: e.to_string(),
        })?;
        let rgb = center_crop(&img, size);
        for c in 0..3 {
            pixels.extend(rgb.pixels().map(|p| p[c]));
        }
        labels.push(classes.binary_search(&class_of(file)).expect("a listed class") as u32);
    }
    Ok(ImageSet {
        name: dir
            .file_name()
            .map_or("images".into(), |n| n.to_string_lossy().into_owned()),
        shape: [3, s, s],
        pixels,
        labels,
        classes,
    })
}
