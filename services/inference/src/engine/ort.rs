//! ONNX Runtime: loading the shared library, building sessions for a model
//! and running one. The only module that speaks `ort`'s types.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use ::ort::{
    session::{
        HasSelectedOutputs, OutputSelector, RunOptions, Session,
        builder::{GraphOptimizationLevel, PrepackedWeights, SessionBuilder},
    },
    value::{DynValue, PrimitiveTensorElementType, Tensor, TensorElementType, ValueType},
};

use super::{
    Engine, SessionOptions,
    batcher::{BatchPolicy, Batcher, ExecStats, Runner},
    cores,
    inline::Inline,
};
use crate::{
    error::ServeError,
    tensor::{DType, NamedTensor, Signature, TensorData, TensorSpec},
};

// ort grows new element types with ONNX; anything not listed is refused.
#[allow(clippy::wildcard_enum_match_arm)]
fn dtype_from_ort(t: TensorElementType) -> Option<DType> {
    Some(match t {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Bool => DType::Bool,
        TensorElementType::String => DType::Str,
        _ => return None,
    })
}

/// The process-wide ONNX Runtime, loaded from a shared library at start.
#[derive(Clone)]
pub struct Runtime {
    env: ort::environment::Environment,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

impl Runtime {
    /// Loads `libonnxruntime.so` from `library`; `telemetry`: whether ONNX
    /// Runtime's own usage events stay on (Config::ort_telemetry).
    pub fn load(library: &Path, telemetry: bool) -> Result<Self, String> {
        let env = ort::init_from(library)
            .map_err(|e| format!("loading ONNX Runtime from {}: {e}", library.display()))?
            .with_name("ferry")
            .with_telemetry(telemetry)
            .build()
            .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))?;
        Ok(Self { env })
    }

    /// Builds the model's sessions, reads its signature and starts one worker
    /// thread per session. `stats` is shared by every version of the model.
    pub fn load_model(
        &self,
        file: &Path,
        opts: SessionOptions,
        thread_name: &str,
        stats: Arc<ExecStats>,
    ) -> Result<Engine, String> {
        let level = match opts.optimization_level {
            0 => GraphOptimizationLevel::Disable,
            1 => GraphOptimizationLevel::Level1,
            2 => GraphOptimizationLevel::Level2,
            _ => GraphOptimizationLevel::All,
        };
        let small = model_bytes(file) <= THROUGHPUT_DEFAULT_MAX_BYTES;
        // Where a version gets several sessions, every one is handed the same
        // weight tensors, and the same packed forms of them, instead of its own
        // copies. A lone session is left alone: ONNX Runtime frees a weight it
        // has packed unless the weight is shared, so alone it holds ~1x anyway.
        let several = small || opts.sessions > 1 || opts.throughput_sessions.is_some_and(|n| n > 0);
        let (mut shared, mapped) = if several { shared_weights(file) } else { (Vec::new(), Arc::default()) };
        let prepacked = PrepackedWeights::new();
        let build = |shared: &[(String, Arc<DynValue>)], intra_threads: usize, tensors: Tensors| {
            let mut builder = Session::builder(&self.env).map_err(|e| e.to_string())?;
            if tensors == Tensors::Small {
                builder = for_small_tensors(builder)?;
            }
            for (name, value) in shared {
                builder = builder.with_initializer(name, Arc::clone(value)).map_err(|e| e.to_string())?;
            }
            builder
                .with_prepacked_weights(&prepacked)
                .map_err(|e| e.to_string())?
                .with_intra_threads(intra_threads)
                .map_err(|e| e.to_string())?
                .with_inter_threads(opts.inter_threads)
                .map_err(|e| e.to_string())?
                .with_intra_op_spinning(opts.spinning)
                .map_err(|e| e.to_string())?
                .with_inter_op_spinning(opts.spinning)
                .map_err(|e| e.to_string())?
                .with_optimization_level(level)
                .map_err(|e| e.to_string())?
                .commit_from_file(file)
                .map_err(|e| format!("ONNX Runtime rejected the model: {e}"))
        };
        let first = match build(&shared, opts.intra_threads, Tensors::Any) {
            Ok(first) => first,
            // Whatever ONNX Runtime makes of a weight handed in, the model as
            // stored must still load: each session then reads its own.
            Err(e) if !shared.is_empty() => {
                tracing::warn!(error = %e, "ONNX Runtime refused the shared weights; each session loads its own");
                shared.clear();
                build(&shared, opts.intra_threads, Tensors::Any)?
            }
            Err(e) => return Err(e),
        };
        let signature = Signature {
            inputs: first.inputs().iter().map(|o| spec(o.name(), o.dtype())).collect::<Result<_, _>>()?,
            outputs: first.outputs().iter().map(|o| spec(o.name(), o.dtype())).collect::<Result<_, _>>()?,
        };
        if signature.inputs.is_empty() || signature.outputs.is_empty() {
            return Err("the model declares no inputs or no outputs".into());
        }
        let batch = if signature.batchable() { opts.batch } else { BatchPolicy::OFF };
        let all_outputs: Arc<[String]> = signature.outputs.iter().map(|o| o.name.clone()).collect();
        let runner = |session| OrtRunner {
            session,
            signature: signature.clone(),
            all_outputs: Arc::clone(&all_outputs),
            selected: Vec::new(),
            _weights: Arc::clone(&mapped),
        };
        let mut runners = vec![runner(first)];
        // Time a few single-row runs to decide whether the model is cheap enough to run inline.
        let single_row = signature.zero_inputs();
        let mut fastest = Duration::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            runners[0].run(single_row.clone(), &[]).map_err(|e| format!("warm-up failed: {e}"))?;
            fastest = fastest.min(started.elapsed());
        }
        // One inline session per core: each async worker thread can run one at once.
        let inline = if fastest < opts.inline_below {
            let n = cores();
            // A cheap model gains nothing from a thread pool; it runs on the caller's thread.
            let runners =
                (0..n).map(|_| build(&shared, 1, Tensors::Small).map(runner)).collect::<Result<Vec<_>, _>>()?;
            Some(Inline::new(runners, batch.max_rows))
        } else {
            None
        };
        let wanted = opts.throughput_sessions.unwrap_or(if small { cores() } else { 0 });
        let throughput = inline.is_none() && batch.enabled() && wanted > 0 && opts.intra_threads > 1;
        let (wide_sessions, narrow_sessions) = if throughput { (1, wanted) } else { (opts.sessions.max(1), 0) };
        for _ in 1..wide_sessions {
            runners.push(runner(build(&shared, opts.intra_threads, Tensors::Any)?));
        }
        let narrow =
            (0..narrow_sessions).map(|_| build(&shared, 1, Tensors::Any).map(runner)).collect::<Result<Vec<_>, _>>()?;
        let (workers, wide) = if throughput { (narrow, runners.pop()) } else { (runners, None) };
        let batcher = Batcher::start(thread_name, workers, wide, batch, Arc::clone(&stats))
            .map_err(|e| format!("starting the model's worker threads: {e}"))?;
        // Every session has packed what it computes with by now.
        mapped.release();
        Ok(Engine { signature, batcher, inline, stats })
    }
}

/// What a session's runs allocate: `Small` for a session that runs a cheap
/// model inline (one request of a few rows at a time).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tensors {
    Small,
    Any,
}

/// Session options for tensors of a few bytes: without ONNX Runtime's CPU
/// arena and memory patterns, which cost more per run than they save there.
/// Callgrind, the iris model in process: 30.1k → 25.5k instructions per call
/// (arena alone 26.3k); in Ferry −4.1k per request on every API. Other
/// sessions keep ONNX Runtime's defaults: the medium MLP's in-process rate
/// did not move with the arena off (batch 1 and 32, three rounds each), so
/// nothing argues for leaving its defaults there.
fn for_small_tensors(mut builder: SessionBuilder) -> Result<SessionBuilder, String> {
    use ::ort::AsPointer;
    // SAFETY: the builder's own live options; the status returned is consumed.
    unsafe { ::ort::Error::result_from_status((::ort::api().DisableCpuMemArena)(builder.ptr_mut())) }
        .map_err(|e| e.to_string())?;
    builder.with_memory_pattern(false).map_err(|e| e.to_string())
}

// Sequences, maps and whatever ONNX adds next are all refused the same way.
#[allow(clippy::wildcard_enum_match_arm)]
fn spec(name: &str, ty: &ValueType) -> Result<TensorSpec, String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = dtype_from_ort(*ty).ok_or_else(|| format!("{name}: tensor type {ty:?} is not supported"))?;
            Ok(TensorSpec { name: name.to_owned(), dtype, shape: shape.iter().copied().collect() })
        }
        other => Err(format!("{name}: only tensor inputs and outputs are supported, not {other:?}")),
    }
}

/// The model's size on disk: the ONNX file and its external data files
/// (`mlflow.onnx.log_model` keeps nearly all the weights in those).
fn model_bytes(file: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let dir = file.parent().unwrap_or(Path::new("."));
    let external = std::fs::File::open(file).and_then(ferry_artifact::external_data).unwrap_or_default();
    len(file) + external.iter().map(|name| len(&dir.join(name))).sum::<u64>()
}

/// Initializers below this stay with ONNX Runtime, one copy per session:
/// sharing them saves little and costs a call per session each.
const SHARE_MIN_BYTES: u64 = 4096;

/// The model's large weights as tensors every session of the version uses,
/// and the files they point into. A weight is the file's own bytes, mapped,
/// where they lie aligned to their element type (external data as
/// `mlflow.onnx.log_model` writes it); the rest (inline `raw_data`, mostly)
/// are written once, aligned, into a file of their own in the version's
/// folder (`ALIGNED_WEIGHTS`) and mapped from there; a weight of a type not
/// mapped, or when that file cannot be written, is a copy. A model file this
/// cannot read shares nothing; ONNX Runtime reports what is wrong with it.
fn shared_weights(file: &Path) -> (Vec<(String, Arc<DynValue>)>, Arc<Mapped>) {
    let found = match ferry_artifact::initializers(file, SHARE_MIN_BYTES) {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(file = %file.display(), error = %e, "weights not shared between sessions");
            return (Vec::new(), Arc::default());
        }
    };
    let mut maps: Vec<(std::path::PathBuf, Option<memmap2::Mmap>)> = Vec::new();
    let mut tensors = Vec::with_capacity(found.len());
    let mut unaligned = Vec::new();
    let mut push = |t: &ferry_artifact::Initializer, value: Option<DynValue>| {
        if let Some(value) = value {
            tensors.push((t.name.clone(), Arc::new(value)));
        }
    };
    for t in &found {
        if element(t.data_type).is_none() {
            push(t, copied(t));
            continue;
        }
        let i = match maps.iter().position(|(f, _)| *f == t.file) {
            Some(i) => i,
            None => {
                maps.push((t.file.clone(), map(&t.file).ok()));
                maps.len() - 1
            }
        };
        match maps[i].1.as_ref().and_then(|m| mapped(m, t, t.offset)) {
            Some(value) => push(t, Some(value)),
            None => unaligned.push(t),
        }
    }
    if !unaligned.is_empty() {
        let dir = file.parent().unwrap_or(Path::new("."));
        match aligned_copy(dir, &unaligned) {
            Ok((m, offsets)) => {
                for (t, at) in unaligned.into_iter().zip(offsets) {
                    push(t, mapped(&m, t, at).or_else(|| copied(t)));
                }
                maps.push((dir.join(ALIGNED_WEIGHTS), Some(m)));
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "unaligned weights copied, not mapped");
                for t in unaligned {
                    push(t, copied(t));
                }
            }
        }
    }
    (tensors, Arc::new(Mapped(maps.into_iter().filter_map(|(_, m)| m).collect())))
}

/// Maps a file of a version's folder read-only.
fn map(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let f = std::fs::File::open(path)?;
    // SAFETY: a version's files are written once, in a staging folder renamed
    // into place (`ALIGNED_WEIGHTS`: renamed over), and removed only by
    // unlinking: nothing truncates or rewrites a file while it is mapped.
    unsafe { memmap2::Mmap::map(&f) }
}

/// The file in a version's folder that holds its unaligned weights, aligned.
const ALIGNED_WEIGHTS: &str = ".ferry-aligned-weights";

/// How `ALIGNED_WEIGHTS` is named while it is written.
const ALIGNED_WEIGHTS_TEMP: &str = ".ferry-aligned-weights.tmp";

/// A temp file this old was left by a process that stopped mid-write: a
/// write takes milliseconds to seconds.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// Writes `weights` one after another, each at a 64-byte boundary, into
/// `ALIGNED_WEIGHTS` in `dir` (a new file renamed over any old one) and maps
/// it; returns the mapping and each weight's offset. Written at every load,
/// not trusted from an earlier one: ~20 ms for 20 MB.
fn aligned_copy(dir: &Path, weights: &[&ferry_artifact::Initializer]) -> std::io::Result<(memmap2::Mmap, Vec<u64>)> {
    use std::io::{Read, Seek, Write};
    remove_stale_temps(dir);
    let mut tmp = tempfile::Builder::new().prefix(ALIGNED_WEIGHTS_TEMP).tempfile_in(dir)?;
    let mut offsets = Vec::with_capacity(weights.len());
    let mut at = 0u64;
    {
        let mut out = std::io::BufWriter::new(tmp.as_file_mut());
        for t in weights {
            let pad = at.next_multiple_of(64) - at;
            out.write_all(&[0u8; 64][..pad as usize])?;
            at += pad;
            offsets.push(at);
            let mut src = std::fs::File::open(&t.file)?;
            src.seek(std::io::SeekFrom::Start(t.offset))?;
            let copied = std::io::copy(&mut src.take(t.len), &mut out)?;
            if copied != t.len {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("{} is cut short", t.name)));
            }
            at += copied;
        }
        out.flush()?;
    }
    let path = dir.join(ALIGNED_WEIGHTS);
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok((map(&path)?, offsets))
}

/// Removes what a process stopped mid-write left in `dir`: temp files of
/// `ALIGNED_WEIGHTS` older than `STALE_TEMP`. A younger one may be another
/// load's of the same version (two variants on it), so it stays.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let temp = e.file_name().to_str().is_some_and(|n| n.starts_with(ALIGNED_WEIGHTS_TEMP));
        let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if temp && age.is_some_and(|a| a > STALE_TEMP) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Read-only mappings of a version's files that its shared weights point
/// into; every session holds them, so they outlive the last one.
#[derive(Default)]
pub(super) struct Mapped(Vec<memmap2::Mmap>);

impl Mapped {
    /// Gives the mapped pages back: ONNX Runtime keeps its own packed form of
    /// the weights a matrix product uses and does not read the originals
    /// again, so they need not stay resident beside it (a version's sessions
    /// then hold ~1x the file instead of 2x). A weight an operator does read
    /// is paged back in from the file on first touch.
    fn release(&self) {
        for m in &self.0 {
            // SAFETY: a shared, read-only file mapping: dropped pages read back
            // the file's bytes, never zeros.
            if let Err(e) = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) } {
                tracing::debug!(error = %e, "mapped weights stay resident");
            }
        }
    }
}

/// ONNX Runtime's element type and size for a `TensorProto.DataType` whose
/// stored bytes are the element values on this machine; `None` otherwise.
fn element(data_type: i32) -> Option<(::ort::sys::ONNXTensorElementDataType, usize)> {
    use ::ort::sys::ONNXTensorElementDataType as E;
    if cfg!(target_endian = "big") {
        return None;
    }
    // ONNX Runtime's element types number as TensorProto.DataType does.
    Some(match data_type {
        1 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4),
        2 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1),
        3 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, 1),
        4 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, 2),
        5 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, 2),
        6 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 4),
        7 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8),
        11 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, 8),
        12 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32, 4),
        13 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, 8),
        _ => return None,
    })
}

/// One initializer as a tensor over its bytes at `start` in `map`, without a
/// copy; `None` for types `element` does not map, or bytes not aligned to
/// their element there.
fn mapped(map: &memmap2::Mmap, t: &ferry_artifact::Initializer, start: u64) -> Option<DynValue> {
    use ::ort::{AsPointer, memory::MemoryInfo};
    let (ty, size) = element(t.data_type)?;
    let start = usize::try_from(start).ok()?;
    let bytes = map.get(start..start.checked_add(usize::try_from(t.len).ok()?)?)?;
    let elements = t.dims.iter().try_fold(1usize, |n, d| n.checked_mul(usize::try_from(*d).ok()?))?;
    if elements.checked_mul(size)? != bytes.len() || !(bytes.as_ptr() as usize).is_multiple_of(size) {
        return None;
    }
    let api = ::ort::api();
    let info = MemoryInfo::default();
    let mut value = std::ptr::null_mut();
    // SAFETY: `bytes` lies in a read-only mapping that every session using the
    // tensor keeps alive (`OrtRunner::_weights`); ONNX Runtime only reads an
    // initializer handed in, and the tensor does not own or free the bytes.
    let status = unsafe {
        (api.CreateTensorWithDataAsOrtValue)(
            info.ptr(),
            bytes.as_ptr().cast_mut().cast(),
            bytes.len(),
            t.dims.as_ptr(),
            t.dims.len(),
            ty,
            &mut value,
        )
    };
    if !status.0.is_null() {
        // SAFETY: a status ONNX Runtime returned, released once.
        unsafe { (api.ReleaseStatus)(status.0) };
        return None;
    }
    // SAFETY: a tensor just created on the CPU; its data is not the allocator's to free.
    Some(unsafe { DynValue::from_ptr(std::ptr::NonNull::new(value)?, Some(&::ort::memory::Allocator::default())) })
}

/// One initializer as a tensor of its own; `None` for element types left to
/// ONNX Runtime or bytes that do not match the shape.
fn copied(t: &ferry_artifact::Initializer) -> Option<DynValue> {
    fn typed<T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static, const N: usize>(
        t: &ferry_artifact::Initializer,
        from_le: fn([u8; N]) -> T,
    ) -> Option<DynValue> {
        let elements = t.dims.iter().try_fold(1usize, |n, d| n.checked_mul(usize::try_from(*d).ok()?))?;
        if elements.checked_mul(N)? != usize::try_from(t.len).ok()? {
            return None;
        }
        let data = t.read().ok()?;
        let values: Vec<T> = data.chunks_exact(N).filter_map(|c| c.try_into().ok().map(from_le)).collect();
        Tensor::from_array((t.dims.clone(), values)).ok().map(Tensor::into_dyn)
    }
    // TensorProto.DataType; float16 and friends stay with ONNX Runtime.
    match t.data_type {
        1 => typed(t, f32::from_le_bytes),
        2 => typed(t, u8::from_le_bytes),
        3 => typed(t, i8::from_le_bytes),
        4 => typed(t, u16::from_le_bytes),
        5 => typed(t, i16::from_le_bytes),
        6 => typed(t, i32::from_le_bytes),
        7 => typed(t, i64::from_le_bytes),
        9 => typed(t, |[b]: [u8; 1]| b != 0),
        11 => typed(t, f64::from_le_bytes),
        12 => typed(t, u32::from_le_bytes),
        13 => typed(t, u64::from_le_bytes),
        _ => None,
    }
}

/// Largest model file that gets throughput sessions by default. They share
/// the weights, mapped (`shared_weights`): ~1x the file for any number of
/// sessions, as for one session alone; a weight that must be copied stays
/// beside its packed form (~2x for such weights; BENCHMARKS.md).
const THROUGHPUT_DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// One ONNX Runtime session, owned by one worker thread (no lock on the hot path).
pub(super) struct OrtRunner {
    session: Session,
    signature: Signature,
    all_outputs: Arc<[String]>,
    /// Run options asking for only some outputs, one per set of outputs
    /// asked for (the last [`SELECTIONS`] sets): an output not asked for is
    /// never made into a value, extracted or freed. A REST `/predict` of the
    /// tiny model asks for one of its two outputs.
    selected: Vec<(Vec<String>, RunOptions<HasSelectedOutputs>)>,
    /// The files the session's shared weights point into; dropped after it.
    _weights: Arc<Mapped>,
}

/// Sets of outputs a runner keeps run options for.
const SELECTIONS: usize = 4;

/// The run options selecting `outputs` (distinct, fewer than the session's
/// `all` outputs; their names were checked against the signature before the
/// request was queued, in `tensor::validate`), from `cache` or made and kept
/// there (in place of the oldest when it is full); `None` when the session's
/// default, every output, serves.
fn selecting<'a>(
    cache: &'a mut Vec<(Vec<String>, RunOptions<HasSelectedOutputs>)>,
    all: usize,
    outputs: &[String],
) -> Result<Option<&'a RunOptions<HasSelectedOutputs>>, ServeError> {
    let distinct = || outputs.iter().enumerate().all(|(i, o)| !outputs[..i].contains(o));
    if outputs.is_empty() || outputs.len() >= all || !distinct() {
        return Ok(None);
    }
    let at = match cache.iter().position(|(names, _)| names.as_slice() == outputs) {
        Some(at) => at,
        None => {
            let selector = outputs.iter().fold(OutputSelector::no_default(), |s, name| s.with(name));
            let options = RunOptions::new().map_err(|e| ServeError::Model(e.to_string()))?;
            if cache.len() == SELECTIONS {
                cache.remove(0);
            }
            cache.push((outputs.to_vec(), options.with_outputs(selector)));
            cache.len() - 1
        }
    };
    Ok(cache.get(at).map(|(_, options)| options))
}

impl Runner for OrtRunner {
    fn run(&mut self, inputs: Vec<NamedTensor>, outputs: &[String]) -> Result<Vec<NamedTensor>, ServeError> {
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for t in inputs {
            let shape = t.shape;
            // Owned vectors move into the tensor: no copy of the request's data.
            let v = match t.data {
                TensorData::F32(d) => Tensor::from_array((shape, d)).map(|t| t.into_dyn()),
                TensorData::F64(d) => Tensor::from_array((shape, d)).map(|t| t.into_dyn()),
                TensorData::I32(d) => Tensor::from_array((shape, d)).map(|t| t.into_dyn()),
                TensorData::I64(d) => Tensor::from_array((shape, d)).map(|t| t.into_dyn()),
                TensorData::Bool(d) => Tensor::from_array((shape, d)).map(|t| t.into_dyn()),
                TensorData::Str(d) => Tensor::from_string_array((shape, d.as_slice())).map(|t| t.into_dyn()),
            }
            .map_err(|e| ServeError::InvalidArgument(format!("input {}: {e}", t.name)))?;
            values.push((t.name, v));
        }
        let result = match selecting(&mut self.selected, self.all_outputs.len(), outputs)? {
            Some(options) => self.session.run_with_options(values, options),
            None => self.session.run(values),
        }
        .map_err(|e| ServeError::Model(e.to_string()))?;
        let wanted: &[String] = if outputs.is_empty() { &self.all_outputs } else { outputs };
        let mut out = Vec::with_capacity(wanted.len());
        for name in wanted {
            let s = self
                .signature
                .outputs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| ServeError::InvalidArgument(format!("unknown output {name:?}")))?;
            let v = result
                .get(&s.name)
                .ok_or_else(|| ServeError::Model(format!("the model produced no output {:?}", s.name)))?;
            out.push(extract(&s.name, s.dtype, v)?);
        }
        Ok(out)
    }
}

fn extract(name: &str, dtype: DType, v: &DynValue) -> Result<NamedTensor, ServeError> {
    let err = |e: ort::Error| ServeError::Model(format!("output {name}: {e}"));
    let (shape, data) = match dtype {
        DType::F32 => v.try_extract_tensor::<f32>().map(|(s, d)| (s.clone(), TensorData::F32(d.to_vec()))),
        DType::F64 => v.try_extract_tensor::<f64>().map(|(s, d)| (s.clone(), TensorData::F64(d.to_vec()))),
        DType::I32 => v.try_extract_tensor::<i32>().map(|(s, d)| (s.clone(), TensorData::I32(d.to_vec()))),
        DType::I64 => v.try_extract_tensor::<i64>().map(|(s, d)| (s.clone(), TensorData::I64(d.to_vec()))),
        DType::Bool => v.try_extract_tensor::<bool>().map(|(s, d)| (s.clone(), TensorData::Bool(d.to_vec()))),
        DType::Str => v.try_extract_strings().map(|(s, d)| (s.clone(), TensorData::Str(d))),
    }
    .map_err(err)?;
    Ok(NamedTensor { name: name.to_owned(), shape: shape.iter().copied().collect(), data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_copy_aligns_each_weight_and_clears_only_stale_temps() {
        let dir = tempfile::tempdir().unwrap();
        // Two weights at odd offsets, as inline raw_data lies in a protobuf.
        let model = dir.path().join("model.onnx");
        let (a, b) = ([1u8; 12], [2u8; 8]);
        std::fs::write(&model, [&[9u8; 3][..], &a, &[9u8; 5], &b].concat()).unwrap();
        let weight = |name: &str, offset: u64, len: u64| ferry_artifact::Initializer {
            name: name.into(),
            data_type: 1,
            dims: vec![i64::try_from(len / 4).unwrap()],
            file: model.clone(),
            offset,
            len,
        };
        let (wa, wb) = (weight("a", 3, 12), weight("b", 20, 8));
        let stale = dir.path().join(format!("{ALIGNED_WEIGHTS_TEMP}old"));
        let fresh = dir.path().join(format!("{ALIGNED_WEIGHTS_TEMP}new"));
        for f in [&stale, &fresh] {
            std::fs::write(f, b"partial").unwrap();
        }
        let old = std::time::SystemTime::now() - STALE_TEMP - Duration::from_secs(60);
        std::fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();

        let (map, offsets) = aligned_copy(dir.path(), &[&wa, &wb]).unwrap();
        assert_eq!(offsets, [0, 64]);
        assert_eq!(&map[0..12], &a);
        assert_eq!(&map[64..72], &b);
        assert!(!stale.exists(), "a temp file left by a crash is removed");
        assert!(fresh.exists(), "a temp file another load may be writing stays");
        let temps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(ALIGNED_WEIGHTS_TEMP))
            .count();
        assert_eq!(temps, 1, "the write's own temp file was renamed into place");
        assert!(dir.path().join(ALIGNED_WEIGHTS).exists());
    }
}
