//! Data sets in their real formats (written here), downloads and their checks, and the loader.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use diffusion_data::cifar::{cifar10_remote, read_records};
use diffusion_data::download::RemoteFile;
use diffusion_data::mnist::mnist_remotes;
use diffusion_data::{
    DataError, DataLoader, ImageSet, LoaderConfig, MnistKind, Split, fetch, load_cifar10, load_cifar100,
    load_image_folder, load_mnist, md5_file, read_idx,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diffusion-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Pixel `k` of record `r` of a synthetic file.
fn pixel(r: usize, k: usize) -> u8 {
    ((r * 31 + k * 7) % 256) as u8
}

/// A CIFAR binary file of `labels.len()` records with `label_bytes` label bytes each.
fn write_cifar(path: &Path, labels: &[Vec<u8>], first: usize) {
    let mut bytes = Vec::new();
    for (r, l) in labels.iter().enumerate() {
        bytes.extend(l);
        bytes.extend((0..3072).map(|k| pixel(first + r, k)));
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn md5_of_known_strings() {
    let dir = scratch("md5");
    for (text, md5) in [
        ("", "d41d8cd98f00b204e9800998ecf8427e"),
        ("abc", "900150983cd24fb0d6963f7d28e17f72"),
        (
            "The quick brown fox jumps over the lazy dog",
            "9e107d9d372bb6826bd81d3542a419d6",
        ),
    ] {
        let p = dir.join("f");
        std::fs::write(&p, text).unwrap();
        assert_eq!(md5_file(&p).unwrap(), md5);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cifar_binaries_load_from_folders_and_archives() {
    let root = scratch("cifar");
    let folder = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&folder).unwrap();
    for b in 1..=5 {
        let labels: Vec<Vec<u8>> = (0..2).map(|r| vec![((b * 2 + r) % 10) as u8]).collect();
        write_cifar(&folder.join(format!("data_batch_{b}.bin")), &labels, (b - 1) * 2);
    }
    write_cifar(&folder.join("test_batch.bin"), &[vec![9], vec![0], vec![4]], 100);
    // The archive of those files, served from a file:// URL with its checksum.
    let archive = root.join("cifar-10-binary.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&root)
        .arg("cifar-10-batches-bin")
        .status()
        .unwrap();
    assert!(status.success());
    let remote = RemoteFile::new(
        format!("file://{}", archive.display()),
        md5_file(&archive).unwrap(),
    );

    let train = load_cifar10(&root, Split::Train, &remote).unwrap();
    assert_eq!(train.len(), 10);
    assert_eq!(train.shape, [3, 32, 32]);
    assert_eq!(train.labels[..4], [2, 3, 4, 5]);
    assert_eq!(train.image(3)[..3], [pixel(3, 0), pixel(3, 1), pixel(3, 2)]);
    assert_eq!(train.classes[9], "truck");
    let test = load_cifar10(&root, Split::Test, &remote).unwrap();
    assert_eq!(test.labels, vec![9, 0, 4]);

    // From the archive alone (downloaded through file://, checked, extracted).
    let fresh = scratch("cifar-download");
    let loaded = load_cifar10(&fresh, Split::Test, &remote).unwrap();
    assert_eq!(loaded, test);
    assert!(fresh.join("cifar-10-binary.tar.gz").exists());

    // CIFAR-100: two label bytes (coarse, fine) and the class-name files.
    let c100 = root.join("cifar-100-binary");
    std::fs::create_dir_all(&c100).unwrap();
    write_cifar(&c100.join("train.bin"), &[vec![3, 77], vec![19, 5]], 0);
    let fine: String = (0..100).map(|i| format!("fine{i}\n")).collect();
    std::fs::write(c100.join("fine_label_names.txt"), fine).unwrap();
    let set = load_cifar100(&root, Split::Train, false, &cifar10_remote()).unwrap();
    assert_eq!(
        (set.labels.clone(), set.classes[77].as_str()),
        (vec![77, 5], "fine77")
    );
    let coarse = load_cifar100(&root, Split::Train, true, &cifar10_remote()).unwrap();
    assert_eq!((coarse.labels.clone(), coarse.num_classes()), (vec![3, 19], 20));

    // A truncated file is named.
    let bad = root.join("bad.bin");
    std::fs::write(&bad, vec![0u8; 3000]).unwrap();
    let err = read_records(&bad, 1, 0, &mut Vec::new(), &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.bin") && err.contains("3073-byte records"),
        "{err}"
    );
    for d in [root, fresh] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn downloads_fail_clearly_offline_and_on_bad_checksums() {
    let root = scratch("offline");
    // Nothing listens on port 9 of the loopback: the download fails at once.
    let remote = RemoteFile::new(
        "http://127.0.0.1:9/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
    );
    let err = load_cifar10(&root, Split::Train, &remote).unwrap_err();
    assert!(matches!(err, DataError::Download { .. }), "{err}");
    let text = err.to_string();
    let expected_path = root.join("cifar-10-binary.tar.gz");
    assert!(text.contains(&expected_path.display().to_string()), "{text}");
    assert!(text.contains("c32a1d4ab5d03f1284b67883e8d87530"), "{text}");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "no partial file is left"
    );
    // A file in place with the wrong checksum is refused, not replaced.
    std::fs::write(&expected_path, b"not the archive").unwrap();
    let err = fetch(&root, &remote).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("delete it"), "{err}");
    // A download that arrives with the wrong checksum is discarded.
    let source = root.join("source.bin");
    std::fs::write(&source, b"payload").unwrap();
    let wrong = RemoteFile::new(
        format!("file://{}", source.display()),
        "00000000000000000000000000000000",
    );
    let target = scratch("offline-target");
    let err = fetch(&target, &wrong).unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    for d in [root, target] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

fn gz(path: &Path, bytes: &[u8]) {
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

#[test]
fn mnist_idx_files_load_compressed_or_not() {
    let root = scratch("mnist");
    let pixels: Vec<u8> = (0..3 * 28 * 28).map(|k| (k % 251) as u8).collect();
    let remotes = mnist_remotes(MnistKind::Fashion);
    let images = root.join(&remotes[2].file_name);
    let labels = root.join(&remotes[3].file_name);
    gz(&images, &idx(&[3, 28, 28], &pixels));
    gz(&labels, &idx(&[3], &[7, 0, 9]));
    // Local files with their own checksums stand in for the mirror.
    let mut local = remotes.clone();
    local[2].md5 = md5_file(&images).unwrap();
    local[3].md5 = md5_file(&labels).unwrap();
    let set = load_mnist(&root, MnistKind::Fashion, Split::Test, &local).unwrap();
    assert_eq!((set.len(), set.shape), (3, [1, 28, 28]));
    assert_eq!(set.labels, vec![7, 0, 9]);
    assert_eq!(set.classes[9], "Ankle boot");
    assert_eq!(set.image(1), &pixels[784..1568]);
    // Uncompressed IDX, and its errors.
    let raw = root.join("raw-idx3-ubyte");
    std::fs::write(&raw, idx(&[2, 2], &[1, 2, 3, 4])).unwrap();
    assert_eq!(read_idx(&raw).unwrap(), (vec![2, 2], vec![1, 2, 3, 4]));
    std::fs::write(&raw, idx(&[2, 2], &[1, 2, 3])).unwrap();
    let err = read_idx(&raw).unwrap_err().to_string();
    assert!(err.contains("need 4 bytes"), "{err}");
    // The real files' checksums are refused for these stand-ins.
    let err = load_mnist(&root, MnistKind::Fashion, Split::Test, &remotes).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn image_folders_are_resized_centre_cropped_and_labelled() {
    let root = scratch("folder");
    for class in ["cats", "dogs"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
    }
    // 64 × 48, left half red, right half blue, a green stripe at the far left.
    let img = image::RgbImage::from_fn(64, 48, |x, _| {
        if x < 4 {
            image::Rgb([0, 255, 0])
        } else if x < 32 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    img.save(root.join("cats/a.png")).unwrap();
    img.save(root.join("dogs/b.jpg")).unwrap();
    std::fs::write(root.join("dogs/notes.txt"), "ignored").unwrap();
    let set = load_image_folder(&root, 16).unwrap();
    assert_eq!(set.classes, vec!["cats", "dogs"]);
    assert_eq!(set.labels, vec![0, 1]);
    assert_eq!(set.shape, [3, 16, 16]);
    // The centre crop drops the stripe and keeps red on the left, blue on the right.
    let png = set.image(0);
    let at = |c: usize, y: usize, x: usize| png[c * 256 + y * 16 + x];
    assert_eq!((at(0, 8, 0), at(1, 8, 0), at(2, 8, 0)), (255, 0, 0));
    assert_eq!((at(0, 8, 15), at(1, 8, 15), at(2, 8, 15)), (0, 0, 255));
    let jpg = set.image(1);
    assert!(
        jpg[8 * 16] > 200 && jpg[2 * 256 + 8 * 16 + 15] > 200,
        "JPEG decoded"
    );
    let err = load_image_folder(&root.join("cats/none"), 16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cats/none"), "{err}");
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let err = load_image_folder(&root.join("empty"), 16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no .png"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

fn toy_set(n: usize) -> ImageSet {
    ImageSet {
        name: "toy".into(),
        shape: [1, 2, 3],
        pixels: (0..n * 6).map(|k| (k % 256) as u8).collect(),
        labels: (0..n as u32).collect(),
        classes: (0..n).map(|i| i.to_string()).collect(),
    }
}

#[test]
fn loader_order_is_a_function_of_seed_and_step() {
    let set = Arc::new(toy_set(10));
    let loader = |b| DataLoader::new(set.clone(), LoaderConfig::new(b, 5)).unwrap();
    // Every epoch is a permutation; epochs differ.
    let (l4, l8) = (loader(4), loader(8));
    let mut e0 = l4.epoch_order(0);
    assert_ne!(e0, l4.epoch_order(1));
    e0.sort();
    assert_eq!(e0, (0..10).collect::<Vec<_>>());
    // The sequence of images does not depend on the batch size.
    let small: Vec<usize> = (0..4).flat_map(|s| l4.indices(s)).collect();
    let big: Vec<usize> = (0..2).flat_map(|s| l8.indices(s)).collect();
    assert_eq!(small, big);
    assert_eq!(
        small[..10]
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        10
    );
    // Scaling to [−1, 1] and flips (a flipped image is its rows reversed).
    let batch = l4.host_batch(1);
    assert_eq!(batch.shape, [4, 1, 2, 3]);
    for (k, &i) in batch.indices.iter().enumerate() {
        let raw: Vec<f32> = set.image(i).iter().map(|&b| b as f32 / 127.5 - 1.0).collect();
        let got = &batch.pixels[k * 6..(k + 1) * 6];
        let flipped: Vec<f32> = raw.chunks(3).flat_map(|r| r.iter().rev().copied()).collect();
        if l4.flipped(4 + k as u64) {
            assert_eq!(got, flipped.as_slice());
        } else {
            assert_eq!(got, raw.as_slice());
        }
        assert_eq!(batch.labels[k], set.labels[i]);
    }
    let flips = (0..1000).filter(|&p| l4.flipped(p)).count();
    assert!((400..600).contains(&flips), "about half are flipped: {flips}");
    // The background stream yields the same batches, from any step.
    let streamed: Vec<_> = l4.stream(3).take(3).collect();
    assert_eq!(streamed, (3..6).map(|s| l4.host_batch(s)).collect::<Vec<_>>());
    // On the device.
    let device = diffusion_tests::device();
    let images = batch.images(&device, burn::tensor::DType::F32);
    assert_eq!(images.dims(), [4, 1, 2, 3]);
    assert_eq!(batch.labels(&device).dims(), [4]);
    assert!(DataLoader::new(set.clone(), LoaderConfig::new(0, 1)).is_err());
    assert!(DataLoader::new(toy_set(0), LoaderConfig::new(2, 1)).is_err());
}

#[test]
fn shapes_are_seeded_per_image_and_labelled() {
    let all = diffusion_data::shapes(3, 0..60, 32);
    let tail = diffusion_data::shapes(3, 40..60, 32);
    assert_eq!(
        &all.pixels[40 * 3072..],
        &tail.pixels[..],
        "image i does not depend on the range"
    );
    assert_eq!(&all.labels[40..], &tail.labels[..]);
    assert_ne!(diffusion_data::shapes(4, 0..1, 32).pixels, all.image(0).to_vec());
    for kind in 0..3 {
        assert!(
            all.labels.iter().filter(|&&l| l == kind).count() >= 10,
            "every kind appears"
        );
    }
    // A plain background (the corner colour covers most pixels) and a shape of another colour.
    for i in 0..all.len() {
        let img = all.image(i);
        let corner = [img[0], img[1024], img[2048]];
        let same = (0..1024)
            .filter(|&p| [img[p], img[1024 + p], img[2048 + p]] == corner)
            .count();
        assert!((300..1000).contains(&same), "image {i}: {same} background pixels");
    }
}
