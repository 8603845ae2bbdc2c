//! KV snapshots: a sequence's keys and values written to disk so that a prompt prefix computed
//! once can be served again after eviction, after a restart, or from an export.
//!
//! The container is safetensors (an 8-byte length, a JSON header, raw little-endian tensors;
//! nothing executable, unlike pickle): per layer `k.{l}` and `v.{l}` as `[tokens, kv_heads,
//! head_dim]`, position-major so a prefix can be cut from them, and `token_ids` (U32). The `q8`
//! form stores each 32-value run of a row as I8 with one f16 scale (`k.{l}.scale`), as
//! llama.cpp's q8_0 does: about half the bytes, values within 1/254 of each run's largest.
//!
//! Its `__metadata__` carries a fingerprint (`Fingerprint`) that must match the loaded model
//! field by field, and the sha256 of the tensors' bytes. Loading checks, in this order, the
//! header's size, the fingerprint, every tensor's dtype and shape, then the sha256, and only then
//! builds the cache: a file from another model, a tampered byte or a truncated write is refused
//! with a code (`SnapshotError::code`) before any byte reaches a sequence.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use half::f16;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

/// The container's format name, in the metadata; a different one is refused.
pub const FORMAT: &str = "abstractgateway-kv/1";
/// The largest header read. Ours are a few KiB (the token ids are a tensor, not metadata); a
/// length past this is a corrupt or hostile file, refused before anything is allocated.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Values per q8 scale.
const Q8_RUN: usize = 32;

/// What must match before a snapshot's KV may be used: the weights that computed it, the
/// tokenizer and chat template that made its tokens, the cache's geometry and dtype, the rotary
/// parameters baked into its keys, and the version of the kernels' numerics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub weights_sha256: String,
    pub tokenizer_sha256: String,
    pub chat_template_sha256: String,
    /// Architecture name (`llama`, `qwen2`, …).
    pub arch: String,
    /// The dtype the backend holds K and V in (the container always stores f16, or q8): `f16`
    /// on the native backend, the pool's (`bf16`, `f32`) on the dense one.
    pub kv_dtype: String,
    pub n_layer: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Rotary base, rotated dimensions and sliding window, as text.
    pub rope: String,
    /// Positions per KV block of the backend that wrote it.
    pub block_size: usize,
    /// Bumped whenever the kernels change what the cached K and V hold for the same input.
    pub numerics: String,
}

impl Fingerprint {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("weights_sha256", self.weights_sha256.clone()),
            ("tokenizer_sha256", self.tokenizer_sha256.clone()),
            ("chat_template_sha256", self.chat_template_sha256.clone()),
            ("arch", self.arch.clone()),
            ("kv_dtype", self.kv_dtype.clone()),
            ("n_layer", self.n_layer.to_string()),
            ("n_kv_head", self.n_kv_head.to_string()),
            ("head_dim", self.head_dim.to_string()),
            ("rope", self.rope.clone()),
            ("block_size", self.block_size.to_string()),
            ("numerics", self.numerics.clone()),
        ]
    }

    /// Values per position per layer, in K (and again in V).
    pub fn row(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// A short stable id: names the disk tier's directory of this model's snapshots.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        for (k, v) in self.fields() {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..8])
    }

    /// The first field where `meta` differs from this fingerprint.
    fn mismatch(&self, meta: &HashMap<String, String>) -> Option<SnapshotError> {
        self.fields().into_iter().find_map(|(field, want)| {
            let got = meta.get(field).cloned().unwrap_or_default();
            (got != want).then_some(SnapshotError::Mismatch { field, want, got })
        })
    }
}

/// One sequence's KV on the host: per layer `len × row` f16 keys and values, and its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct KvState {
    pub tokens: Vec<u32>,
    pub k: Vec<Vec<f16>>,
    pub v: Vec<Vec<f16>>,
    /// The logits after the last token, where known: a prompt served whole from a snapshot
    /// then needs no prefill at all.
    pub logits: Option<Vec<f32>>,
}

impl KvState {
    /// Bytes the KV takes in memory (f16).
    pub fn kv_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.len() * 2).sum()
    }

    /// A state of `n` positions in `fp`'s shape with pseudo-random values (benchmarks of the
    /// snapshot format on shapes whose weights are not here, e.g. Llama-3-8B's).
    pub fn synthetic(n: usize, fp: &Fingerprint, seed: u64) -> KvState {
        let layer = |l: usize| -> Vec<f16> {
            let mut x = seed ^ (l as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..n * fp.row())
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    f16::from_f32((x % 2001) as f32 / 1000.0 - 1.0)
                })
                .collect()
        };
        KvState {
            tokens: (0..n as u32).collect(),
            k: (0..fp.n_layer).into_par_iter().map(layer).collect(),
            v: (0..fp.n_layer).into_par_iter().map(|l| layer(l + 1000)).collect(),
            logits: None,
        }
    }

    /// Keeps the first `n` positions.
    /// A copy of the first `n` positions (the logits only where that is all of it), in buffers
    /// with room to grow (`kv_buffer`).
    pub fn prefix(&self, n: usize) -> KvState {
        let n = n.min(self.tokens.len());
        let copy = |layer: &Vec<f16>| -> Vec<f16> {
            let keep = layer.len() / self.tokens.len().max(1) * n;
            let mut v = Vec::with_capacity(keep + keep / 2);
            v.extend_from_slice(&layer[..keep]);
            v
        };
        KvState {
            tokens: self.tokens[..n].to_vec(),
            k: self.k.iter().map(copy).collect(),
            v: self.v.iter().map(copy).collect(),
            logits: if n == self.tokens.len() { self.logits.clone() } else { None },
        }
    }

    pub fn truncate(&mut self, n: usize) {
        if n >= self.tokens.len() {
            return;
        }
        let len = self.tokens.len().max(1);
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            let row = layer.len() / len;
            layer.truncate(n * row);
        }
        self.tokens.truncate(n);
        self.logits = None;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    None,
    Q8,
}

impl Quant {
    pub fn as_str(self) -> &'static str {
        match self {
            Quant::None => "none",
            Quant::Q8 => "q8",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot at {0}")]
    NotFound(String),
    #[error("the file is truncated: {0}")]
    Truncated(String),
    #[error("the header claims {len} bytes, more than the {max} allowed")]
    HeaderTooLarge { len: u64, max: u64 },
    #[error("not a KV snapshot: {0}")]
    Corrupt(String),
    #[error("made by another model or build: {field} is '{got}', this model's is '{want}'")]
    Mismatch { field: &'static str, want: String, got: String },
    #[error("the tensors' sha256 does not match the header's: the file was changed after it was written")]
    Checksum,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl SnapshotError {
    /// A stable code for clients and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SnapshotError::NotFound(_) => "not_found",
            SnapshotError::Truncated(_) => "truncated",
            SnapshotError::HeaderTooLarge { .. } => "header_too_large",
            SnapshotError::Corrupt(_) => "corrupt",
            SnapshotError::Mismatch { .. } => "fingerprint_mismatch",
            SnapshotError::Checksum => "checksum_mismatch",
            SnapshotError::Io(_) => "io_error",
        }
    }
}

/// A thread pool of its own for snapshot work done in the background (the disk tier's reader
/// and writer). On rayon's global pool, a read's or a write's parallel hashing would queue the
/// engine's own parallel matmuls behind it, stalling every decode step for its whole length:
/// measured as an 84–89 ms gap in another stream's tokens during a 2,446-token SmolLM2 read.
/// A quarter of the cores (at least one), so decoding keeps the rest. None: the global pool.
pub fn background_pool(name: &str) -> Option<rayon::ThreadPool> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let name = name.to_string();
    rayon::ThreadPoolBuilder::new()
        .num_threads((cores / 4).max(1))
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .map_err(|e| tracing::warn!(error = %e, "no thread pool for background KV snapshot work"))
        .ok()
}

/// Runs `f` on `pool`, or here where there is none.
pub fn on_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// A layer's K or V buffer of `len` zeros with room to grow by half again. A sequence restored
/// from it appends to it; at exactly `len`, its first decode step would copy every layer into
/// a larger buffer, on the engine thread. The spare room is never touched until used (no memory
/// is committed for it).
pub fn kv_buffer(len: usize) -> Vec<f16> {
    // Zeroed allocation (calloc: fresh pages, not written), then cut: the spare part keeps
    // its capacity and costs nothing until written.
    let mut v = vec![f16::ZERO; len + len / 2];
    v.truncate(len);
    v
}

fn f16_bytes(x: &[f16]) -> &[u8] {
    bytemuck::cast_slice(x)
}

/// 1.5 · 2²³: a float in [2²³, 2²⁴) has unit spacing, so adding this to |x| < 2²² rounds x to
/// an integer held in the low mantissa bits (offset by 2²², whose low byte is 0).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantizes rows of `row` values into (I8 values, one f16 scale per `Q8_RUN`).
fn q8_encode(x: &[f16]) -> (Vec<u8>, Vec<f16>) {
    use half::slice::HalfFloatSliceExt;
    let mut q = vec![0u8; x.len()];
    let mut scales = Vec::with_capacity(x.len() / Q8_RUN);
    // Runs are converted in bulk (F16C where the CPU has it), not value by value.
    let mut f = [0f32; Q8_RUN];
    for (run, out) in x.chunks(Q8_RUN).zip(q.chunks_mut(Q8_RUN)) {
        let f = &mut f[..run.len()];
        run.convert_to_f32_slice(f);
        // Integer max over the f16 bits without their sign (the same order as |x| for numbers)
        // and the add-and-subtract rounding below vectorise; `f32::max` (NaN rules), `round` (a
        // libm call) and saturating casts did not, and made the quantizer 3× slower than the
        // write it feeds.
        let amax = f16::from_bits(run.iter().fold(0u16, |m, v| m.max(v.to_bits() & 0x7fff))).to_f32();
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (v, o) in f.iter().zip(out.iter_mut()) {
            // |v·inv| ≤ 127: adding 1.5·2²³ rounds it to an integer (to even on ties) in the
            // mantissa's low bits, which are its two's complement byte.
            let r = v * inv + ROUND_MAGIC;
            *o = r.to_bits() as u8;
        }
        scales.push(f16::from_f32(d));
    }
    (q, scales)
}

fn q8_decode(q: &[u8], scales: &[f16]) -> Vec<f16> {
    use half::slice::HalfFloatSliceExt;
    let mut out = kv_buffer(q.len());
    let mut f = [0f32; Q8_RUN];
    for ((run, d), o) in q.chunks(Q8_RUN).zip(scales).zip(out.chunks_mut(Q8_RUN)) {
        let d = d.to_f32();
        let f = &mut f[..run.len()];
        for (x, &b) in f.iter_mut().zip(run) {
            *x = (b as i8) as f32 * d;
        }
        o.convert_from_f32_slice(f);
    }
    out
}

/// The sha256 over the tensors in name order (name, then bytes): independent of where the
/// container places them. Tensors are hashed in parallel, then their digests together.
fn content_sha256(tensors: &[(String, Dtype, Vec<usize>, &[u8])]) -> String {
    let digests: Vec<(&str, [u8; 32])> = tensors
        .par_iter()
        .map(|(name, _, _, bytes)| (name.as_str(), tensor_digest(name, bytes)))
        .collect();
    combine(digests)
}

/// The tensors' digests, in name order, hashed together.
fn combine(mut digests: Vec<(&str, [u8; 32])>) -> String {
    digests.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (_, d) in digests {
        h.update(d);
    }
    hex::encode(h.finalize())
}

/// One tensor's digest: its name, then its bytes.
fn tensor_digest(name: &str, bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(bytes);
    h.finalize().into()
}

/// Writes `state` as a snapshot at `path` atomically: a temporary file beside it, fsynced, then
/// renamed over `path`, and the directory fsynced, so a crash leaves the old file or the new one,
/// never half of one. `extra` goes into the metadata (keys, scope, …). Returns the bytes written
/// and the tensors' sha256.
pub fn write(
    path: &Path,
    state: &KvState,
    fp: &Fingerprint,
    quant: Quant,
    extra: &BTreeMap<String, String>,
) -> Result<(u64, String), SnapshotError> {
    let n = state.tokens.len();
    let row = fp.row();
    if n == 0 {
        return Err(SnapshotError::Corrupt("an empty sequence has nothing to save".into()));
    }
    if state.k.len() != fp.n_layer || state.v.len() != fp.n_layer || state.k.iter().chain(&state.v).any(|l| l.len() != n * row) {
        return Err(SnapshotError::Corrupt("the KV does not have this model's shape".into()));
    }
    // q8 needs whole runs per row; a model whose rows are not (none we run) is saved as f16.
    let quant = if row.is_multiple_of(Q8_RUN) { quant } else { Quant::None };
    let ids: Vec<u8> = state.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let mut owned: Vec<Owned> = Vec::new();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, &[u8])> = vec![("token_ids".into(), Dtype::U32, vec![n], &ids)];
    if let Some(l) = &state.logits {
        tensors.push(("logits".into(), Dtype::F32, vec![l.len()], bytemuck::cast_slice(l)));
    }
    match quant {
        Quant::None => {
            for (l, (k, v)) in state.k.iter().zip(&state.v).enumerate() {
                let shape = vec![n, fp.n_kv_head, fp.head_dim];
                tensors.push((format!("k.{l}"), Dtype::F16, shape.clone(), f16_bytes(k)));
                tensors.push((format!("v.{l}"), Dtype::F16, shape, f16_bytes(v)));
            }
        }
        Quant::Q8 => {
            let parts: Vec<Vec<Owned>> = state
                .k
                .par_iter()
                .zip(&state.v)
                .enumerate()
                .map(|(l, (k, v))| {
                    let mut out = Vec::new();
                    for (name, x) in [("k", k), ("v", v)] {
                        let (q, s) = q8_encode(x);
                        out.push((format!("{name}.{l}"), Dtype::I8, vec![n, fp.n_kv_head, fp.head_dim], q));
                        out.push((
                            format!("{name}.{l}.scale"),
                            Dtype::F16,
                            vec![n, row / Q8_RUN],
                            bytemuck::cast_slice(&s).to_vec(),
                        ));
                    }
                    out
                })
                .collect();
            owned = parts.into_iter().flatten().collect();
            for (name, dt, shape, bytes) in &owned {
                tensors.push((name.clone(), *dt, shape.clone(), bytes));
            }
        }
    }
    let mut meta: HashMap<String, String> = extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in fp.fields() {
        meta.insert(k.into(), v);
    }
    meta.insert("format".into(), FORMAT.into());
    meta.insert("quant".into(), quant.as_str().into());
    meta.insert("token_count".into(), n.to_string());
    let sha = content_sha256(&tensors);
    meta.insert("content_sha256".into(), sha.clone());
    let views = tensors
        .iter()
        .map(|(name, dt, shape, bytes)| {
            TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| SnapshotError::Corrupt(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tmp = temp_path(path);
    let written = (|| -> Result<u64, SnapshotError> {
        safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(e) => SnapshotError::Io(e),
            other => SnapshotError::Corrupt(other.to_string()),
        })?;
        let f = std::fs::File::open(&tmp)?;
        f.sync_all()?;
        let len = f.metadata()?.len();
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            // The rename is durable once the directory is.
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(len)
    })();
    drop(owned);
    match written {
        Ok(len) => Ok((len, sha)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A tensor built for writing: name, dtype, shape, bytes.
type Owned = (String, Dtype, Vec<usize>, Vec<u8>);

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Reads the header only: the metadata and where the data starts. Bounded (`MAX_HEADER_BYTES`)
/// before anything is allocated, and the file must be as long as the header says.
fn read_header(f: &mut std::fs::File, file_len: u64) -> Result<(safetensors::tensor::Metadata, u64), SnapshotError> {
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| SnapshotError::Truncated("shorter than its length prefix".into()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES {
        return Err(SnapshotError::HeaderTooLarge {
            len: n,
            max: MAX_HEADER_BYTES,
        });
    }
    if 8 + n > file_len {
        return Err(SnapshotError::Truncated(format!(
            "the header needs {} bytes, the file has {file_len}",
            8 + n
        )));
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head)?;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(&head).map_err(|e| SnapshotError::Corrupt(format!("header: {e}")))?;
    let data_len = meta.data_len() as u64;
    if 8 + n + data_len > file_len {
        return Err(SnapshotError::Truncated(format!(
            "the header describes {} bytes of tensors, the file holds {}",
            data_len,
            file_len - 8 - n
        )));
    }
    Ok((meta, 8 + n))
}

fn open(path: &Path) -> Result<(std::fs::File, u64), SnapshotError> {
    let f = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SnapshotError::NotFound(path.display().to_string()),
        _ => SnapshotError::Io(e),
    })?;
    let len = f.metadata()?.len();
    Ok((f, len))
}

/// A snapshot's metadata and token ids, without its KV (what the disk tier indexes at start),
/// checked against `fp`.
pub fn peek(path: &Path, fp: &Fingerprint) -> Result<(HashMap<String, String>, Vec<u32>), SnapshotError> {
    let (mut f, file_len) = open(path)?;
    let (meta, data_at) = read_header(&mut f, file_len)?;
    let md = checked_metadata(&meta, fp)?;
    let info = meta
        .info("token_ids")
        .ok_or_else(|| SnapshotError::Corrupt("no token_ids".into()))?;
    let (a, b) = info.data_offsets;
    let mut ids = vec![0u8; b.saturating_sub(a)];
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(data_at + a as u64))?;
    f.read_exact(&mut ids)?;
    Ok((md, bytemuck::pod_collect_to_vec::<u8, u32>(&ids)))
}

fn checked_metadata(meta: &safetensors::tensor::Metadata, fp: &Fingerprint) -> Result<HashMap<String, String>, SnapshotError> {
    let md = meta.metadata().clone().unwrap_or_default();
    if md.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(SnapshotError::Corrupt(format!(
            "format is '{}', expected '{FORMAT}'",
            md.get("format").map(String::as_str).unwrap_or("")
        )));
    }
    if let Some(e) = fp.mismatch(&md) {
        return Err(e);
    }
    Ok(md)
}

/// A tensor's bytes read into a buffer of its own type (so that f16 K/V need no second copy).
enum Buf {
    Bytes(Vec<u8>),
    F16(Vec<f16>),
}

impl Buf {
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Bytes(b) => b,
            Buf::F16(v) => bytemuck::cast_slice(v),
        }
    }
}

/// Reads and checks a snapshot written for `fp`: header size, fingerprint, each tensor's dtype,
/// shape and extent, the sha256; only then is the KV used. Returns it with the metadata.
///
/// Each tensor is read straight into its final buffer (`pread`, in parallel) and hashed there
/// while in cache: one copy out of the page cache, one first touch of the memory, one pass of
/// sha256 — a whole-file read first would fault in and copy every byte twice.
pub fn read(path: &Path, fp: &Fingerprint) -> Result<(KvState, HashMap<String, String>), SnapshotError> {
    use std::os::unix::fs::FileExt;
    let (mut f, file_len) = open(path)?;
    let (meta, data_at) = read_header(&mut f, file_len)?;
    let md = checked_metadata(&meta, fp)?;
    let n: usize = md
        .get("token_count")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| SnapshotError::Corrupt("no token_count".into()))?;
    let quant = match md.get("quant").map(String::as_str) {
        Some("q8") => Quant::Q8,
        Some("none") | None => Quant::None,
        Some(q) => return Err(SnapshotError::Corrupt(format!("unknown quant '{q}'"))),
    };
    let row = fp.row();
    let kv_shape = vec![n, fp.n_kv_head, fp.head_dim];
    let mut expect: Vec<(String, Dtype, Vec<usize>)> = vec![("token_ids".into(), Dtype::U32, vec![n])];
    for l in 0..fp.n_layer {
        for kv in ["k", "v"] {
            match quant {
                Quant::None => expect.push((format!("{kv}.{l}"), Dtype::F16, kv_shape.clone())),
                Quant::Q8 => {
                    expect.push((format!("{kv}.{l}"), Dtype::I8, kv_shape.clone()));
                    expect.push((format!("{kv}.{l}.scale"), Dtype::F16, vec![n, row / Q8_RUN]));
                }
            }
        }
    }
    let infos = meta.tensors();
    if let Some(l) = infos.get("logits") {
        if l.dtype != Dtype::F32 || l.shape.len() != 1 {
            return Err(SnapshotError::Corrupt("logits is not a vector of F32".into()));
        }
        expect.push(("logits".into(), Dtype::F32, l.shape.clone()));
    }
    if infos.len() != expect.len() {
        return Err(SnapshotError::Corrupt(format!(
            "{} tensors, expected {}",
            infos.len(),
            expect.len()
        )));
    }
    let data_len = file_len - data_at;
    let mut plan: Vec<(&str, u64, usize, bool)> = Vec::with_capacity(expect.len());
    for (name, dt, shape) in &expect {
        let t = infos.get(name).ok_or_else(|| SnapshotError::Corrupt(format!("no tensor {name}")))?;
        if t.dtype != *dt || t.shape != *shape {
            return Err(SnapshotError::Corrupt(format!(
                "{name} is {:?} {:?}, expected {dt:?} {shape:?}",
                t.dtype, t.shape
            )));
        }
        let (a, b) = t.data_offsets;
        let want = shape.iter().product::<usize>() * dt.bitsize() / 8;
        if b < a || b - a != want || b as u64 > data_len {
            return Err(SnapshotError::Truncated(format!(
                "{name} lies outside the file's {data_len} bytes of tensors"
            )));
        }
        let f16 = *dt == Dtype::F16 && quant == Quant::None && name != "logits";
        plan.push((name.as_str(), data_at + a as u64, want, f16));
    }
    let done = plan
        .par_iter()
        .map(|&(name, at, len, f16)| {
            let mut buf = if f16 {
                Buf::F16(kv_buffer(len / 2))
            } else {
                Buf::Bytes(vec![0u8; len])
            };
            let bytes: &mut [u8] = match &mut buf {
                Buf::Bytes(b) => b,
                Buf::F16(v) => bytemuck::cast_slice_mut(v),
            };
            f.read_exact_at(bytes, at).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated(format!("{name} ends past the end of the file")),
                _ => SnapshotError::Io(e),
            })?;
            let digest = tensor_digest(name, buf.bytes());
            Ok((name, digest, buf))
        })
        .collect::<Result<Vec<_>, SnapshotError>>()?;
    if md.get("content_sha256") != Some(&combine(done.iter().map(|(n, d, _)| (*n, *d)).collect())) {
        return Err(SnapshotError::Checksum);
    }
    let mut bufs: HashMap<&str, Buf> = done.into_iter().map(|(n, _, b)| (n, b)).collect();
    let mut take = |name: &str| -> Buf { bufs.remove(name).unwrap_or(Buf::Bytes(Vec::new())) };
    let tokens = bytemuck::pod_collect_to_vec::<u8, u32>(take("token_ids").bytes());
    let logits = infos
        .contains_key("logits")
        .then(|| bytemuck::pod_collect_to_vec::<u8, f32>(take("logits").bytes()));
    // Per layer, K then V: f16 as read, q8 with its scales (dequantized in parallel).
    let parts: Vec<(Buf, Option<Buf>)> = (0..fp.n_layer)
        .flat_map(|l| [format!("k.{l}"), format!("v.{l}")])
        .map(|name| {
            let values = take(&name);
            let scales = matches!(values, Buf::Bytes(_)).then(|| take(&format!("{name}.scale")));
            (values, scales)
        })
        .collect();
    let mut layers: Vec<Vec<f16>> = parts
        .into_par_iter()
        .map(|(values, scales)| match (values, scales) {
            (Buf::F16(v), _) => v,
            (q, s) => q8_decode(
                q.bytes(),
                &bytemuck::pod_collect_to_vec::<u8, f16>(s.as_ref().map(Buf::bytes).unwrap_or(&[])),
            ),
        })
        .collect();
    let mut k = Vec::with_capacity(fp.n_layer);
    let mut v = Vec::with_capacity(fp.n_layer);
    for pair in layers.chunks_mut(2) {
        k.push(std::mem::take(&mut pair[0]));
        v.push(std::mem::take(&mut pair[1]));
    }
    Ok((KvState { tokens, k, v, logits }, md))
}

/// The sha256 of a file, streamed (for the export sidecar and the artifact record).
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Writes `bytes` at `path` atomically (temporary file, fsync, rename).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprint {
        Fingerprint {
            weights_sha256: "w".repeat(64),
            tokenizer_sha256: "t".into(),
            chat_template_sha256: "c".into(),
            arch: "llama".into(),
            kv_dtype: "f16".into(),
            n_layer: 2,
            n_kv_head: 2,
            head_dim: 32,
            rope: "base=10000 n_rot=32".into(),
            block_size: 1,
            numerics: "test/1".into(),
        }
    }

    fn state(n: usize) -> KvState {
        let row = 64;
        let layer = |seed: usize| {
            (0..n * row)
                .map(|i| f16::from_f32(((i * 7 + seed) % 101) as f32 / 50.0 - 1.0))
                .collect()
        };
        KvState {
            tokens: (0..n as u32).collect(),
            k: vec![layer(1), layer(2)],
            v: vec![layer(3), layer(4)],
            logits: Some(vec![0.5, -1.0, 2.0]),
        }
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("kvsnap-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_snapshot_round_trips_exactly_and_leaves_no_temporary_file() {
        let d = dir();
        let p = d.join("a.safetensors");
        let s = state(5);
        let (bytes, sha) = write(&p, &s, &fp(), Quant::None, &BTreeMap::from([("key".into(), "k1".into())])).unwrap();
        assert_eq!(bytes, std::fs::metadata(&p).unwrap().len());
        let (back, md) = read(&p, &fp()).unwrap();
        assert_eq!(back, s);
        assert_eq!(md["key"], "k1");
        assert_eq!(md["content_sha256"], sha);
        let (_, ids) = peek(&p, &fp()).unwrap();
        assert_eq!(ids, s.tokens);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    #[test]
    fn q8_codes_are_rounded_signed_bytes() {
        // One run whose largest magnitude is 2: scale 2/127, codes round(x·63.5).
        let mut x = vec![f16::ZERO; Q8_RUN];
        for (i, v) in [-2.0f32, 2.0, 1.0, -1.0, 0.01, -0.01, 0.0, 0.5].into_iter().enumerate() {
            x[i] = f16::from_f32(v);
        }
        let (q, s) = q8_encode(&x);
        let codes: Vec<i8> = q[..8].iter().map(|&b| b as i8).collect();
        assert_eq!(codes, vec![-127, 127, 64, -64, 1, -1, 0, 32]);
        assert_eq!(s[0], f16::from_f32(2.0 / 127.0));
        let back = q8_decode(&q, &s);
        assert_eq!((back[0].to_f32(), back[1].to_f32()), (-2.0, 2.0));
    }

    #[test]
    fn q8_is_about_half_the_bytes_and_close() {
        let d = dir();
        let (full, _) = write(&d.join("f"), &state(64), &fp(), Quant::None, &BTreeMap::new()).unwrap();
        let (q8, _) = write(&d.join("q"), &state(64), &fp(), Quant::Q8, &BTreeMap::new()).unwrap();
        assert!(q8 * 10 < full * 6, "{q8} vs {full}");
        let (back, md) = read(&d.join("q"), &fp()).unwrap();
        assert_eq!(md["quant"], "q8");
        let s = state(64);
        for (a, b) in s.k.iter().flatten().zip(back.k.iter().flatten()) {
            assert!((a.to_f32() - b.to_f32()).abs() <= 1.0 / 127.0 + 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn a_truncated_tampered_foreign_or_huge_file_is_refused_with_its_code() {
        let d = dir();
        let p = d.join("a");
        write(&p, &state(8), &fp(), Quant::None, &BTreeMap::new()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let code = |b: &[u8]| {
            let q = d.join("b");
            std::fs::write(&q, b).unwrap();
            read(&q, &fp()).map(|_| ()).unwrap_err().code()
        };
        assert_eq!(code(&bytes[..bytes.len() - 10]), "truncated");
        assert_eq!(code(&bytes[..4]), "truncated");
        let mut t = bytes.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(code(&t), "checksum_mismatch");
        let mut h = bytes.clone();
        h[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert_eq!(code(&h), "header_too_large");
        assert_eq!(code(b"not a snapshot at all"), "header_too_large");
        let mut other = fp();
        other.weights_sha256 = "x".repeat(64);
        let e = read(&p, &other).unwrap_err();
        assert_eq!(e.code(), "fingerprint_mismatch");
        assert!(e.to_string().contains("weights_sha256"), "{e}");
        assert_eq!(read(&d.join("missing"), &fp()).unwrap_err().code(), "not_found");
    }

    #[test]
    fn truncating_a_state_keeps_a_prefix() {
        let p = state(6).prefix(2);
        assert_eq!((p.tokens.clone(), p.logits.clone()), (vec![0, 1], None));
        assert_eq!(p.k[0], state(6).k[0][..128].to_vec());
        assert!(p.k[0].capacity() >= 192, "room to grow");
        assert_eq!(state(6).prefix(9).logits, state(6).logits, "all of it keeps the logits");
        let mut s = state(6);
        s.truncate(2);
        assert_eq!(s.tokens, vec![0, 1]);
        assert_eq!(s.k[0], state(6).k[0][..128].to_vec());
        assert_eq!(s.logits, None);
    }
}
