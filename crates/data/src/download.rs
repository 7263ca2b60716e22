//! Downloads on first use, verified by the published MD5.
//!
//! A file is fetched with the system's `curl` (or `wget`) into a temporary name beside its
//! destination, checked, and renamed into place, so a failed or interrupted download never
//! leaves a file that looks complete. A file already in place is checked and used; offline, the
//! error says where to put the file by hand (as it does with `DIFFUSION_OFFLINE=1`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use md5::{Digest, Md5};

use crate::error::{DataError, Result, io};

/// Set to `1` to forbid downloads (compute nodes without a network, hermetic tests): a missing
/// file is then the error that says where to place it.
pub const OFFLINE_ENV: &str = "DIFFUSION_OFFLINE";

/// A file of a published data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// Where it is published (`file://` works too).
    pub url: String,
    /// Its name on disk.
    pub file_name: String,
    /// Its published MD5, lowercase hex.
    pub md5: String,
}

impl RemoteFile {
    /// A file named by the last segment of its URL.
    pub fn new(url: impl Into<String>, md5: impl Into<String>) -> Self {
        let url = url.into();
        let file_name = url.rsplit('/').next().unwrap_or("download").to_string();
        Self {
            url,
            file_name,
            md5: md5.into(),
        }
    }
}

/// The MD5 of a file, lowercase hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn verify(path: &Path, md5: &str) -> Result<()> {
    let actual = md5_file(path)?;
    if actual.eq_ignore_ascii_case(md5) {
        Ok(())
    } else {
        Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: md5.to_string(),
            actual,
        })
    }
}

/// Runs the first downloader that exists; `Err` is the reason to report.
fn download(url: &str, to: &Path) -> std::result::Result<(), String> {
    let attempts: [(&str, Vec<&std::ffi::OsStr>); 2] = [
        (
            "curl",
            vec![
                "-fsSL".as_ref(),
                "--retry".as_ref(),
                "2".as_ref(),
                "-o".as_ref(),
                to.as_os_str(),
                url.as_ref(),
            ],
        ),
        (
            "wget",
            vec!["-q".as_ref(), "-O".as_ref(), to.as_os_str(), url.as_ref()],
        ),
    ];
    let mut reasons = Vec::new();
    for (program, args) in attempts {
        match Command::new(program).args(&args).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Err(format!("{program} failed with {}: {}", out.status, stderr.trim()));
            }
            Err(e) => reasons.push(format!("{program}: {e}")),
        }
    }
    Err(format!("no downloader found ({})", reasons.join("; ")))
}

/// The file in `dir`, downloaded and verified if it is not there yet. A file in place with the
/// wrong checksum is an error (never silently replaced).
pub fn fetch(dir: &Path, file: &RemoteFile) -> Result<PathBuf> {
    let path = dir.join(&file.file_name);
    if path.exists() {
        verify(&path, &file.md5)?;
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".{}.part{}", file.file_name, std::process::id()));
    let failed = |reason: String| DataError::Download {
        url: file.url.clone(),
        path: path.clone(),
        md5: file.md5.clone(),
        reason,
    };
    if std::env::var_os(OFFLINE_ENV).is_some_and(|v| v == "1") {
        return Err(failed(format!("downloads are turned off ({OFFLINE_ENV}=1)")));
    }
    if let Err(reason) = download(&file.url, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(reason));
    }
    if let Err(e) = verify(&tmp, &file.md5) {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(format!("the downloaded file does not match: {e}")));
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}
