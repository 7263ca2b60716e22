//! MNIST and Fashion-MNIST in the IDX format (LeCun et al.), gzip-compressed as published.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (0x08: unsigned bytes), the
//! number of dimensions — then one 32-bit size per dimension and the data. Images are
//! `[n, 28, 28]`, labels `[n]`.

use std::io::Read;
use std::path::Path;

use crate::cifar::Split;
use crate::download::{RemoteFile, fetch};
use crate::error::{DataError, Result, io};
use crate::images::ImageSet;

/// Which of the two data sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MnistKind {
    /// Handwritten digits.
    Digits,
    /// Zalando's Fashion-MNIST.
    Fashion,
}

/// The four files of a data set (train images, train labels, test images, test labels), from
/// the mirrors torchvision uses, with their published MD5s.
pub fn mnist_remotes(kind: MnistKind) -> [RemoteFile; 4] {
    let (base, md5s) = match kind {
        MnistKind::Digits => (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            [
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ],
        ),
        MnistKind::Fashion => (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            [
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ],
        ),
    };
    let names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ];
    std::array::from_fn(|i| RemoteFile::new(format!("{base}{}", names[i]), md5s[i]))
}

const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Reads an IDX file of unsigned bytes (gzip-compressed if its name ends in `.gz`): its
/// dimensions and data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(io(path))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(path, "no IDX magic number".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(
            path,
            format!(
                "data type 0x{:02x}; only unsigned bytes (0x08) are used",
                bytes[2]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(bad(path, "truncated header".into()));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let count: usize = dims.iter().product();
    if bytes.len() != header + count {
        return Err(bad(
            path,
            format!(
                "dimensions {dims:?} need {count} bytes of data, found {}",
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn bad(path: &Path, reason: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        format: "IDX",
        reason,
    }
}

/// MNIST or Fashion-MNIST from `root` (downloading the files from `remotes` that are missing),
/// as `[1, 28, 28]` images.
pub fn load_mnist(root: &Path, kind: MnistKind, split: Split, remotes: &[RemoteFile; 4]) -> Result<ImageSet> {
    let (images, labels) = match split {
        Split::Train => (&remotes[0], &remotes[1]),
        Split::Test => (&remotes[2], &remotes[3]),
    };
    let image_path = fetch(root, images)?;
    let label_path = fetch(root, labels)?;
    let (dims, pixels) = read_idx(&image_path)?;
    let (label_dims, label_bytes) = read_idx(&label_path)?;
    if dims.len() != 3 || label_dims.len() != 1 || label_dims[0] != dims[0] {
        return Err(bad(
            &image_path,
            format!("images {dims:?} and labels {label_dims:?} do not pair up as [n, h, w] and [n]"),
        ));
    }
    let classes: Vec<String> = match kind {
        MnistKind::Digits => (0..10).map(|d| d.to_string()).collect(),
        MnistKind::Fashion => FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(l) = label_bytes.iter().find(|&&l| l >= 10) {
        return Err(bad(
            &label_path,
            format!("label {l} is out of range for 10 classes"),
        ));
    }
    let name = match kind {
        MnistKind::Digits => "mnist",
        MnistKind::Fashion => "fashion-mnist",
    };
    Ok(ImageSet {
        name: format!("{name}-{}", if split == Split::Train { "train" } else { "test" }),
        shape: [1, dims[1], dims[2]],
        pixels,
        labels: label_bytes.into_iter().map(u32::from).collect(),
        classes,
    })
}
