//! CIFAR-10 and CIFAR-100 in their official binary format (Krizhevsky 2009).
//!
//! A CIFAR-10 record is 1 label byte and 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
//! each 32 × 32 row-major); the training set is `data_batch_1.bin` … `data_batch_5.bin`
//! (10 000 records each), the test set `test_batch.bin`. A CIFAR-100 record has 2 label bytes
//! (coarse, fine) before its pixels; the sets are `train.bin` and `test.bin`. The archives come
//! from <https://www.cs.toronto.edu/~kriz/> with their published MD5s.

use std::path::{Path, PathBuf};

use crate::download::{RemoteFile, fetch};
use crate::error::{DataError, Result, io};
use crate::images::ImageSet;

const PIXELS: usize = 3 * 32 * 32;

/// Which split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training set (50 000 images).
    Train,
    /// The test set (10 000 images).
    Test,
}

/// The CIFAR-10 classes, by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The official CIFAR-10 binary archive.
pub fn cifar10_remote() -> RemoteFile {
    RemoteFile::new(
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
    )
}

/// The official CIFAR-100 binary archive.
pub fn cifar100_remote() -> RemoteFile {
    RemoteFile::new(
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
    )
}

/// Reads records of `label_bytes` label bytes (the label used is byte `label_index`) and 3072
/// pixels from `path` into `pixels` and `labels`.
pub fn read_records(
    path: &Path,
    label_bytes: usize,
    label_index: usize,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let record = label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            format: "CIFAR binary",
            reason: format!(
                "{} bytes is not a whole number of {record}-byte records",
                bytes.len()
            ),
        });
    }
    for r in bytes.chunks_exact(record) {
        labels.push(r[label_index] as u32);
        pixels.extend_from_slice(&r[label_bytes..]);
    }
    Ok(())
}

fn extract_tar_gz(archive: &Path, into: &Path) -> Result<()> {
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let tmp = into.join(format!(".extract{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(&tmp)
        .map_err(|e| DataError::Format {
            path: archive.to_path_buf(),
            format: "tar.gz",
            reason: e.to_string(),
        })?;
    for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
        let entry = entry.map_err(io(&tmp))?;
        let target = into.join(entry.file_name());
        if !target.exists() {
            std::fs::rename(entry.path(), &target).map_err(io(&target))?;
        }
    }
    std::fs::remove_dir_all(&tmp).map_err(io(&tmp))
}

/// The folder `folder` under `root`, extracted from `remote` (downloaded if needed) when it is
/// not there yet.
fn ensure_extracted(root: &Path, folder: &str, remote: &RemoteFile) -> Result<PathBuf> {
    let dir = root.join(folder);
    if !dir.is_dir() {
        let archive = fetch(root, remote)?;
        extract_tar_gz(&archive, root)?;
        if !dir.is_dir() {
            return Err(DataError::Format {
                path: archive,
                format: "CIFAR archive",
                reason: format!("it holds no folder `{folder}`"),
            });
        }
    }
    Ok(dir)
}

/// CIFAR-10 from `root` (which holds `cifar-10-batches-bin/`, or the archive, or nothing: then
/// it is downloaded from `remote`).
pub fn load_cifar10(root: &Path, split: Split, remote: &RemoteFile) -> Result<ImageSet> {
    let dir = ensure_extracted(root, "cifar-10-batches-bin", remote)?;
    let files: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in files {
        read_records(&dir.join(f), 1, 0, &mut pixels, &mut labels)?;
    }
    let set = ImageSet {
        name: format!("cifar10-{}", split_name(split)),
        shape: [3, 32, 32],
        pixels,
        labels,
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    check_labels(&set, &dir)?;
    Ok(set)
}

/// CIFAR-100 from `root` (as [`load_cifar10`]), labelled by its 100 fine classes or its 20
/// coarse superclasses.
pub fn load_cifar100(root: &Path, split: Split, coarse: bool, remote: &RemoteFile) -> Result<ImageSet> {
    let dir = ensure_extracted(root, "cifar-100-binary", remote)?;
    let file = match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    read_records(
        &dir.join(file),
        2,
        if coarse { 0 } else { 1 },
        &mut pixels,
        &mut labels,
    )?;
    let names_file = if coarse {
        "coarse_label_names.txt"
    } else {
        "fine_label_names.txt"
    };
    let count = if coarse { 20 } else { 100 };
    let classes = std::fs::read_to_string(dir.join(names_file))
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_else(|_| (0..count).map(|i| format!("class-{i}")).collect::<Vec<_>>());
    let set = ImageSet {
        name: format!("cifar100-{}", split_name(split)),
        shape: [3, 32, 32],
        pixels,
        labels,
        classes,
    };
    check_labels(&set, &dir)?;
    Ok(set)
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

fn check_labels(set: &ImageSet, dir: &Path) -> Result<()> {
    match set.labels.iter().find(|&&l| l as usize >= set.num_classes()) {
        Some(l) => Err(DataError::Format {
            path: dir.to_path_buf(),
            format: "CIFAR binary",
            reason: format!("label {l} is out of range for {} classes", set.num_classes()),
        }),
        None => Ok(()),
    }
}
