//! One digest over every file of a model, recorded as `ferry.sha256`.
//!
//! A model in one file has that file's SHA-256, what `sha256sum model.onnx`
//! prints (so digests from before external data was supported still hold).
//! A model with external data has the SHA-256 of a manifest listing each of
//! its files, the ONNX file included, as `sha256sum` prints them
//! (`<hex>  <path relative to the model directory>`), one per line, sorted
//! by path byte-wise. Inside the model directory:
//!
//! ```sh
//! sha256sum model.onnx *.data | LC_ALL=C sort -k2 | sha256sum
//! ```

use std::{io::Read, path::Path};

use sha2::{Digest, Sha256};

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Relative to the model directory.
    pub path: String,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    pub size: u64,
}

/// The digest over all of a model's files.
#[derive(Debug, Clone, Copy)]
pub struct ModelDigest;

impl ModelDigest {
    /// The `sha256sum`-style manifest the digest of a multi-file model is taken over.
    pub fn manifest(files: &[FileDigest]) -> String {
        let mut sorted: Vec<&FileDigest> = files.iter().collect();
        sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        sorted.iter().map(|f| format!("{}  {}\n", f.sha256, f.path)).collect()
    }

    /// The model's digest: the file's own for one file, the manifest's for several.
    pub fn of(files: &[FileDigest]) -> String {
        match files {
            [one] => one.sha256.clone(),
            _ => hex::encode(Sha256::digest(Self::manifest(files).as_bytes())),
        }
    }
}

/// SHA-256 and size of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> FileDigest {
        FileDigest { path: path.into(), sha256: hex::encode(Sha256::digest(content)), size: content.len() as u64 }
    }

    #[test]
    fn one_file_is_its_own_digest() {
        let f = file("model.onnx", b"graph");
        assert_eq!(ModelDigest::of(std::slice::from_ref(&f)), f.sha256);
    }

    #[test]
    fn several_files_hash_a_sorted_manifest() {
        let (m, a, b) = (file("model.onnx", b"graph"), file("a.data", b"A"), file("B.data", b"B"));
        let manifest = ModelDigest::manifest(&[m.clone(), a.clone(), b.clone()]);
        // Byte-wise order: upper case first, as `LC_ALL=C sort` puts it.
        assert_eq!(manifest, format!("{}  B.data\n{}  a.data\n{}  model.onnx\n", b.sha256, a.sha256, m.sha256));
        let d = ModelDigest::of(&[m.clone(), a.clone(), b.clone()]);
        assert_eq!(d, hex::encode(Sha256::digest(manifest.as_bytes())));
        // The order files are given in does not matter; their content does.
        assert_eq!(ModelDigest::of(&[b.clone(), m.clone(), a]), d);
        assert_ne!(ModelDigest::of(&[m, b, file("a.data", b"changed")]), d);
    }

    #[test]
    fn matches_sha256sum_in_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let files = [("model.onnx", &b"graph"[..]), ("w1.data", b"one"), ("w2.data", b"two")];
        let mut digests = Vec::new();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
            let (sha256, size) = hash_file(&dir.path().join(name)).unwrap();
            digests.push(FileDigest { path: name.into(), sha256, size });
        }
        let Ok(out) = std::process::Command::new("sh")
            .arg("-c")
            .arg("sha256sum model.onnx *.data | LC_ALL=C sort -k2 | sha256sum")
            .current_dir(dir.path())
            .output()
        else {
            return; // no shell: the manifest test above still pins the format
        };
        let shell = String::from_utf8_lossy(&out.stdout);
        assert_eq!(shell.split_whitespace().next(), Some(ModelDigest::of(&digests).as_str()));
    }
}
