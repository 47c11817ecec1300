//! Where a model's large weights lie in its files, so that every ONNX Runtime
//! session of a version can be handed the same tensors instead of each
//! decoding its own copy from the file (a 21 MB model served from three
//! sessions held three copies), and so that those tensors can be the file's
//! own bytes, mapped, rather than a copy.
//!
//! Only the main graph's initializers stored the way exporters store large
//! tensors are taken: `raw_data` inline, or external data beside the file
//! (what `mlflow.onnx.log_model` writes by default). Anything else — typed
//! repeated fields, segments, subgraph weights, strings, tensors below the
//! size floor, names that are also graph inputs (overridable) — stays in the
//! model for ONNX Runtime to load as usual.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use crate::onnx::{Wire, invalid, validate_relative_path};

/// One initializer's name, ONNX element type, shape, and where its
/// little-endian bytes are: `len` bytes at `offset` in `file` (the model
/// itself for inline `raw_data`, or an external data file beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initializer {
    pub name: String,
    /// `TensorProto.DataType`: 1 float, 2 uint8, 3 int8, 6 int32, 7 int64, 11 double, …
    pub data_type: i32,
    pub dims: Vec<i64>,
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl Initializer {
    /// The bytes, read from the file.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut f = File::open(&self.file)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = vec![0u8; usize::try_from(self.len).map_err(|_| invalid("initializer too long"))?];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }
}

/// `TensorProto.DataLocation.EXTERNAL`
const EXTERNAL: u64 = 1;

/// The main graph's initializers of at least `min_bytes` stored as raw bytes,
/// inline or in external data files inside `model`'s directory.
pub fn initializers(model: &Path, min_bytes: u64) -> io::Result<Vec<Initializer>> {
    let dir = model.parent().unwrap_or(Path::new("."));
    let (mut w, end) = Wire::new(File::open(model)?)?;
    let mut out = Vec::new();
    let mut inputs = Vec::new();
    while w.pos() < end {
        let (field, wire) = w.tag()?;
        if field == 7 && wire == 2 {
            let graph_end = w.child_end(end)?;
            graph(&mut w, graph_end, min_bytes, (model, dir), &mut out, &mut inputs)?;
        } else {
            w.skip_value(wire, end)?;
        }
    }
    out.retain(|t| !inputs.contains(&t.name));
    Ok(out)
}

fn graph<R: Read + Seek>(
    w: &mut Wire<R>,
    end: u64,
    min_bytes: u64,
    files: (&Path, &Path),
    out: &mut Vec<Initializer>,
    inputs: &mut Vec<String>,
) -> io::Result<()> {
    while w.pos() < end {
        let (field, wire) = w.tag()?;
        match (field, wire) {
            (5, 2) => {
                let tensor_end = w.child_end(end)?;
                if let Some(t) = tensor(w, tensor_end, min_bytes, files)? {
                    out.push(t);
                }
            }
            (11, 2) => {
                // ValueInfoProto: only its name (field 1).
                let info_end = w.child_end(end)?;
                while w.pos() < info_end {
                    match w.tag()? {
                        (1, 2) => {
                            let e = w.child_end(info_end)?;
                            let n = e - w.pos();
                            inputs.push(w.string(n)?);
                        }
                        (_, wire) => w.skip_value(wire, info_end)?,
                    }
                }
            }
            (_, wire) => w.skip_value(wire, end)?,
        }
    }
    Ok(())
}

/// One TensorProto; `None` when it is not one to share. `files`: the model and its directory.
fn tensor<R: Read + Seek>(
    w: &mut Wire<R>,
    end: u64,
    min_bytes: u64,
    (model, dir): (&Path, &Path),
) -> io::Result<Option<Initializer>> {
    let (mut name, mut data_type, mut dims, mut raw) = (String::new(), 0i32, Vec::new(), None);
    let (mut external, mut location, mut offset, mut length) = (false, None, 0u64, None);
    let mut other = false;
    while w.pos() < end {
        let (field, wire) = w.tag()?;
        match (field, wire) {
            (1, 0) => dims.push(w.varint()? as i64),
            (1, 2) => {
                let e = w.child_end(end)?;
                while w.pos() < e {
                    dims.push(w.varint()? as i64);
                }
            }
            (2, 0) => data_type = i32::try_from(w.varint()?).map_err(|_| invalid("data type out of range"))?,
            (8, 2) => {
                let e = w.child_end(end)?;
                let n = e - w.pos();
                name = w.string(n)?;
            }
            (9, 2) => {
                let e = w.child_end(end)?;
                let n = e - w.pos();
                if n >= min_bytes {
                    raw = Some((w.pos(), n));
                }
                w.skip(n)?;
            }
            (13, 2) => {
                let e = w.child_end(end)?;
                let (mut key, mut value) = (String::new(), String::new());
                while w.pos() < e {
                    match w.tag()? {
                        (1, 2) => {
                            let f = w.child_end(e)?;
                            key = w.string(f - w.pos())?;
                        }
                        (2, 2) => {
                            let f = w.child_end(e)?;
                            value = w.string(f - w.pos())?;
                        }
                        (_, wire) => w.skip_value(wire, e)?,
                    }
                }
                let number = |v: &str| v.parse::<u64>().map_err(|_| invalid(format!("external data {key} {v:?}")));
                match key.as_str() {
                    "location" => location = Some(value),
                    "offset" => offset = number(&value)?,
                    "length" => length = Some(number(&value)?),
                    _ => {}
                }
            }
            (14, 0) => external = w.varint()? == EXTERNAL,
            // segment, typed data fields, anything newer: ONNX Runtime's to read.
            (3 | 4 | 5 | 6 | 7 | 10 | 11, _) => {
                other = true;
                w.skip_value(wire, end)?;
            }
            (_, wire) => w.skip_value(wire, end)?,
        }
    }
    if other || name.is_empty() || dims.iter().any(|d| *d < 0) {
        return Ok(None);
    }
    let (file, offset, len) = match (external, location, raw) {
        (true, Some(loc), _) => {
            let loc =
                validate_relative_path(&loc).map_err(|e| invalid(format!("external data location {loc:?}: {e}")))?;
            let file = dir.join(&loc);
            let size = std::fs::metadata(&file)?.len();
            let length = length.unwrap_or(size.saturating_sub(offset));
            if offset.checked_add(length).is_none_or(|e| e > size) {
                return Err(invalid(format!("{name}: external data past the end of {loc}")));
            }
            if length < min_bytes {
                return Ok(None);
            }
            (file, offset, length)
        }
        (false, _, Some((at, n))) => (model.to_path_buf(), at, n),
        _ => return Ok(None),
    };
    Ok(Some(Initializer { name, data_type, dims, file, offset, len }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::tests::{field, varint};

    fn num(n: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(n << 3, &mut out);
        varint(v, &mut out);
        out
    }
    fn entry(k: &str, v: &str) -> Vec<u8> {
        field(13, &[field(1, k.as_bytes()), field(2, v.as_bytes())].concat())
    }
    fn raw(name: &str, dims: &[u64], data: &[u8]) -> Vec<u8> {
        let mut t: Vec<u8> = dims.iter().flat_map(|d| num(1, *d)).collect();
        t.extend(num(2, 1));
        t.extend(field(8, name.as_bytes()));
        t.extend(field(9, data));
        t
    }

    fn write(dir: &Path, graph: &[u8]) -> std::path::PathBuf {
        let model = [num(1, 8), field(2, b"pytorch"), field(7, graph)].concat();
        let p = dir.join("model.onnx");
        std::fs::write(&p, model).unwrap();
        p
    }

    #[test]
    fn reads_inline_and_external_weights_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let ext: Vec<u8> = (0..=255u8).cycle().take(4096 + 64).collect();
        std::fs::write(dir.path().join("weights.data"), &ext).unwrap();
        let mut external = [num(1, 16), num(1, 16), num(2, 1), field(8, b"W2")].concat();
        external.extend(entry("location", "./weights.data"));
        external.extend(entry("offset", "64"));
        external.extend(entry("length", "1024"));
        external.extend(num(14, 1));
        let typed = [num(1, 2), num(2, 1), field(8, b"T"), field(4, &[0u8; 8])].concat();
        let graph = [
            field(5, &raw("W1", &[4, 64], &[7u8; 1024])),
            field(5, &raw("small", &[2], &[1u8; 8])),
            field(5, &external),
            field(5, &typed),
            field(5, &raw("overridable", &[256], &[1u8; 1024])),
            field(11, &field(1, b"overridable")),
        ]
        .concat();
        let got = initializers(&write(dir.path(), &graph), 1024).unwrap();
        let names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["W1", "W2"]);
        assert_eq!(got[0].dims, [4, 64]);
        assert_eq!(got[0].file, dir.path().join("model.onnx"));
        assert_eq!(got[0].read().unwrap(), vec![7u8; 1024]);
        let w2 = &got[1];
        assert_eq!((w2.data_type, w2.dims.as_slice(), w2.offset, w2.len), (1, &[16i64, 16][..], 64, 1024));
        assert_eq!(w2.file, dir.path().join("./weights.data"));
        assert_eq!(w2.read().unwrap(), ext[64..1088]);
    }

    #[test]
    fn external_data_outside_the_directory_or_past_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.data"), [0u8; 100]).unwrap();
        for (loc, len) in [("../secret", "4"), ("/etc/passwd", "4"), ("w.data", "4096")] {
            let mut t = [num(1, 1), num(2, 1), field(8, b"W")].concat();
            t.extend(entry("location", loc));
            t.extend(entry("length", len));
            t.extend(num(14, 1));
            let err = initializers(&write(dir.path(), &field(5, &t)), 1).unwrap_err();
            assert!(err.to_string().contains("not a valid ONNX file"), "{loc}: {err}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [vec![0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f], vec![0x3a, 5, 0x2a, 9], vec![0xff; 20]] {
            let p = dir.path().join("bad.onnx");
            std::fs::write(&p, bytes).unwrap();
            assert!(initializers(&p, 1).is_err());
        }
    }
}
