//! Which external data files an ONNX model needs, read from the protobuf wire
//! format as a stream: the weights are skipped with seeks, so a 2 GB file
//! costs a few reads and no memory, and no ONNX runtime is needed.
//!
//! Field numbers are onnx.proto3's. Tensors are looked for everywhere
//! `onnx.external_data_helper` looks: graph initializers, sparse
//! initializers, node attributes (subgraphs of `If`/`Loop` included) and
//! model-local functions.

use std::io::{self, BufReader, Read, Seek, SeekFrom};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    Function,
    Graph,
    Node,
    Attribute,
    Sparse,
    Tensor,
    Entry,
}

impl Kind {
    /// The message type a length-delimited field holds, when it is one we descend into.
    fn child(self, field: u64) -> Option<Kind> {
        use Kind::*;
        Some(match (self, field) {
            (Model, 7) | (Attribute, 6 | 11) => Graph,
            (Model, 25) => Function,
            (Function, 7) | (Graph, 1) => Node,
            (Graph, 5) | (Attribute, 5 | 10) | (Sparse, 1 | 2) => Tensor,
            (Graph, 15) | (Attribute, 22 | 23) => Sparse,
            (Node, 5) => Attribute,
            (Tensor, 13) => Entry,
            _ => return None,
        })
    }
}

/// TensorProto.DataLocation.EXTERNAL
const EXTERNAL: u64 = 1;
/// Deeper nesting than any real model has; a bound so a crafted file cannot exhaust the stack.
const MAX_DEPTH: usize = 64;
/// External-data keys and values are short strings.
const MAX_ENTRY: u64 = 4096;

/// The external data files an ONNX model references, relative to the ONNX
/// file's directory, in first-use order and each once; every location is
/// checked to stay inside that directory.
pub fn external_data<R: Read + Seek>(reader: R) -> io::Result<Vec<String>> {
    let (mut w, end) = Wire::new(reader)?;
    let mut found = Vec::new();
    w.walk(Kind::Model, end, 0, &mut Tensor::default(), &mut found)?;
    Ok(found)
}

#[derive(Default)]
struct Tensor {
    location: Option<String>,
    external: bool,
}

/// A protobuf reader over a seekable stream: what is not wanted is seeked past.
pub(crate) struct Wire<R> {
    r: BufReader<R>,
    pos: u64,
}

pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("not a valid ONNX file: {}", msg.into()))
}

impl<R: Read + Seek> Wire<R> {
    /// The reader at the start of the stream, and the stream's length.
    pub(crate) fn new(reader: R) -> io::Result<(Self, u64)> {
        let mut w = Wire { r: BufReader::with_capacity(1 << 16, reader), pos: 0 };
        let end = w.r.seek(SeekFrom::End(0))?;
        w.r.seek(SeekFrom::Start(0))?;
        Ok((w, end))
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The next field's number and wire type.
    pub(crate) fn tag(&mut self) -> io::Result<(u64, u64)> {
        let tag = self.varint()?;
        Ok((tag >> 3, tag & 7))
    }

    /// The end of a length-delimited field that starts here, inside `end`.
    pub(crate) fn child_end(&mut self, end: u64) -> io::Result<u64> {
        let len = self.varint()?;
        self.pos.checked_add(len).filter(|e| *e <= end).ok_or_else(|| invalid("truncated"))
    }

    /// Skips a field's value of wire type `wire` (its tag already read).
    pub(crate) fn skip_value(&mut self, wire: u64, end: u64) -> io::Result<()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.skip(8),
            5 => self.skip(4),
            2 => {
                let e = self.child_end(end)?;
                self.skip(e - self.pos)
            }
            w => Err(invalid(format!("unsupported wire type {w}"))),
        }
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8];
        self.r.read_exact(&mut b)?;
        self.pos += 1;
        Ok(b[0])
    }

    pub(crate) fn varint(&mut self) -> io::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(invalid("varint too long"))
    }

    pub(crate) fn skip(&mut self, n: u64) -> io::Result<()> {
        let n = i64::try_from(n).map_err(|_| invalid("field too long"))?;
        self.r.seek_relative(n)?;
        self.pos += n as u64;
        Ok(())
    }

    pub(crate) fn string(&mut self, n: u64) -> io::Result<String> {
        if n > MAX_ENTRY {
            return Err(invalid("a name or external data entry is too long"));
        }
        let mut buf = vec![0u8; n as usize];
        self.r.read_exact(&mut buf)?;
        self.pos += n;
        String::from_utf8(buf).map_err(|_| invalid("a name or external data entry is not UTF-8"))
    }

    /// Reads one message of `kind` that ends at byte `end`; `tensor`
    /// collects an enclosing tensor's external data fields.
    fn walk(
        &mut self,
        kind: Kind,
        end: u64,
        depth: usize,
        tensor: &mut Tensor,
        found: &mut Vec<String>,
    ) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(invalid("nested too deeply"));
        }
        let (mut key, mut value) = (None, None);
        while self.pos < end {
            let tag = self.varint()?;
            let field = tag >> 3;
            match tag & 7 {
                0 => {
                    let v = self.varint()?;
                    if kind == Kind::Tensor && field == 14 {
                        tensor.external = v == EXTERNAL;
                    }
                }
                1 => self.skip(8)?,
                5 => self.skip(4)?,
                2 => {
                    let len = self.varint()?;
                    let child_end =
                        self.pos.checked_add(len).filter(|e| *e <= end).ok_or_else(|| invalid("truncated"))?;
                    match (kind, kind.child(field)) {
                        (Kind::Entry, _) if field == 1 => key = Some(self.string(len)?),
                        (Kind::Entry, _) if field == 2 => value = Some(self.string(len)?),
                        (Kind::Tensor, Some(Kind::Entry)) => {
                            self.walk(Kind::Entry, child_end, depth + 1, tensor, found)?;
                        }
                        (_, Some(Kind::Tensor)) => {
                            let mut t = Tensor::default();
                            self.walk(Kind::Tensor, child_end, depth + 1, &mut t, found)?;
                            if let (true, Some(loc)) = (t.external, t.location) {
                                let loc = validate_relative_path(&loc)
                                    .map_err(|e| invalid(format!("external data location {loc:?}: {e}")))?;
                                if !found.contains(&loc) {
                                    found.push(loc);
                                }
                            }
                        }
                        (_, Some(child)) => self.walk(child, child_end, depth + 1, &mut Tensor::default(), found)?,
                        _ => self.skip(len)?,
                    }
                }
                w => return Err(invalid(format!("unsupported wire type {w}"))),
            }
        }
        if self.pos != end {
            return Err(invalid("a field runs past its message"));
        }
        if kind == Kind::Entry && key.as_deref() == Some("location") {
            tensor.location = value;
        }
        Ok(())
    }
}

/// A relative path that stays inside its base directory, normalised (`./a//b`
/// → `a/b`). Absolute paths, `..`, backslashes and NUL are refused: these
/// names come from files a client uploaded or MLflow stored, and decide
/// where Ferry writes.
pub fn validate_relative_path(p: &str) -> Result<String, String> {
    if p.starts_with('/') || p.contains('\\') || p.contains('\0') || p.contains(':') {
        return Err("must be a relative path inside the model directory".into());
    }
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err("must be a relative path inside the model directory".into());
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    pub(crate) fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    /// A length-delimited protobuf field.
    pub(crate) fn field(n: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(n << 3 | 2, &mut out);
        varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }
    fn entry(k: &str, v: &str) -> Vec<u8> {
        [field(1, k.as_bytes()), field(2, v.as_bytes())].concat()
    }
    fn tensor(name: &str, location: Option<&str>) -> Vec<u8> {
        let mut t = field(8, name.as_bytes());
        match location {
            Some(loc) => {
                t.extend(field(13, &entry("location", loc)));
                t.extend(field(13, &entry("offset", "0")));
                t.extend([14 << 3, 1]); // data_location = EXTERNAL
            }
            None => t.extend(field(9, &[7u8; 3000])), // raw_data, inline
        }
        t
    }

    #[test]
    fn finds_locations_in_initializers_subgraphs_and_sparse_tensors() {
        let subgraph = field(5, &tensor("S", Some("sub.bin")));
        let attr = [field(1, b"then_branch"), field(6, &subgraph)].concat();
        let node = [field(4, b"If"), field(5, &attr)].concat();
        let sparse = [field(1, &tensor("V", Some("sparse.bin"))), field(2, &tensor("I", None))].concat();
        let graph = [
            field(1, &node),
            field(5, &tensor("W1", Some("weights.data"))),
            field(5, &tensor("B1", None)),
            field(5, &tensor("W2", Some("./weights.data"))),
            field(15, &sparse),
        ]
        .concat();
        let model = [vec![8, 9], field(2, b"pytorch"), field(7, &graph)].concat();
        let found = external_data(Cursor::new(model)).unwrap();
        assert_eq!(found, ["sub.bin", "weights.data", "sparse.bin"]);
    }

    #[test]
    fn inline_model_has_none() {
        let model = field(7, &field(5, &tensor("W", None)));
        assert!(external_data(Cursor::new(model)).unwrap().is_empty());
    }

    #[test]
    fn a_location_outside_the_directory_is_refused() {
        for bad in ["../secret", "/etc/passwd", "a/../../b", "C:\\x"] {
            let model = field(7, &field(5, &tensor("W", Some(bad))));
            let err = external_data(Cursor::new(model)).unwrap_err();
            assert!(err.to_string().contains("inside the model directory"), "{bad}: {err}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [vec![0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f], vec![0x0b], vec![0x3a, 5, 1], vec![0xff; 20]] {
            assert!(external_data(Cursor::new(bytes)).is_err());
        }
        // Deep nesting is bounded.
        let mut g = field(5, &tensor("W", Some("x")));
        for _ in 0..30 {
            g = field(1, &field(5, &field(6, &g))); // node → attribute → subgraph
        }
        let err = external_data(Cursor::new(field(7, &g))).unwrap_err();
        assert!(err.to_string().contains("nested too deeply"), "{err}");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(validate_relative_path("./a//b.data").unwrap(), "a/b.data");
        for bad in ["", ".", "..", "/x", "a/../b", "a\\b", "x\0"] {
            assert!(validate_relative_path(bad).is_err(), "{bad:?}");
        }
    }
}
