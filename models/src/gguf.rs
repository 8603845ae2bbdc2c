//! GGUF files: metadata (model shape, tokenizer) read without loading tensor data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::ModelError;

pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
}

impl GgufFile {
    /// Reads the header, metadata and tensor index (not the tensor data).
    pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
        let f = std::fs::File::open(path).map_err(|e| ModelError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        // Buffered: the header is hundreds of thousands of small fields (a 151,936-token vocabulary
        // and its merges, each string a length then its bytes), one `read` system call each
        // unbuffered, which was half of a 0.5B model's load time.
        let mut f = std::io::BufReader::with_capacity(1 << 20, f);
        let content = Content::read(&mut f).map_err(|e| ModelError::BadGguf {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn architecture(&self) -> Option<&str> {
        meta_str(self.metadata(), "general.architecture")
    }
}

pub fn meta_str<'a>(m: &'a HashMap<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(|v| v.to_string().ok()).map(String::as_str)
}

pub fn meta_u32(m: &HashMap<String, Value>, key: &str) -> Option<u32> {
    m.get(key).and_then(|v| match v {
        Value::U8(x) => Some(*x as u32),
        Value::U16(x) => Some(*x as u32),
        Value::U32(x) => Some(*x),
        Value::I32(x) if *x >= 0 => Some(*x as u32),
        Value::U64(x) => u32::try_from(*x).ok(),
        Value::I64(x) => u32::try_from(*x).ok(),
        _ => None,
    })
}

pub fn meta_bool(m: &HashMap<String, Value>, key: &str) -> Option<bool> {
    m.get(key).and_then(|v| v.to_bool().ok())
}

pub fn meta_array<'a>(m: &'a HashMap<String, Value>, key: &str) -> Result<&'a Vec<Value>, ModelError> {
    m.get(key)
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| ModelError::Metadata(key.into()))
}
