//! CTranslate2 model files (`model.bin`): the weights of faster-whisper directories. The file
//! is read through a memory map and each variable is a byte range of it, so opening one copies
//! nothing; `whisper_ct2` turns a whisper spec's variables into the tensors candle's whisper
//! loads.
//!
//! Layout (little-endian): `u32` binary version, a string spec name, `u32` spec revision, `u32`
//! variable count; per variable a string name, `u8` rank, rank × `u32` dims, `u8` dtype, `u32`
//! byte count, the bytes; then `u32` alias count and (alias, target) string pairs. A string is
//! a `u16` length counting a trailing NUL, then the bytes and the NUL.

use std::collections::HashMap;
use std::path::Path;

use crate::ModelError;

/// The binary versions this reader knows (faster-whisper's files are 6).
const VERSIONS: std::ops::RangeInclusive<u32> = 5..=6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_code(c: u8) -> Option<Ct2Dtype> {
        Some(match c {
            0 => Ct2Dtype::F32,
            1 => Ct2Dtype::I8,
            2 => Ct2Dtype::I16,
            3 => Ct2Dtype::I32,
            4 => Ct2Dtype::F16,
            5 => Ct2Dtype::Bf16,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Ct2Dtype::I8 => 1,
            Ct2Dtype::I16 | Ct2Dtype::F16 | Ct2Dtype::Bf16 => 2,
            Ct2Dtype::F32 | Ct2Dtype::I32 => 4,
        }
    }
}

/// One variable: its dtype, shape and where its bytes lie in the file.
#[derive(Debug, Clone)]
pub struct Ct2Var {
    pub dtype: Ct2Dtype,
    pub shape: Vec<usize>,
    offset: usize,
    len: usize,
}

/// An opened `model.bin`.
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    pub vars: HashMap<String, Ct2Var>,
    map: memmap2::Mmap,
}

impl Ct2Model {
    pub fn open(path: &Path) -> Result<Ct2Model, ModelError> {
        let file = std::fs::File::open(path).map_err(|e| bad(path, &format!("cannot open: {e}")))?;
        // SAFETY: mapped read-only; the file must not change while the model is loaded (as for
        // every weight file the gateway maps).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| bad(path, &format!("cannot map: {e}")))?;
        let mut r = Reader { b: &map, at: 0, path };
        let version = r.u32()?;
        if !VERSIONS.contains(&version) {
            return Err(bad(path, &format!("binary version {version} (this reader knows {VERSIONS:?})")));
        }
        let spec = r.string()?;
        let revision = r.u32()?;
        let count = r.u32()? as usize;
        let mut vars = HashMap::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let shape = (0..rank).map(|_| r.u32().map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
            let code = r.u8()?;
            let dtype = Ct2Dtype::from_code(code).ok_or_else(|| bad(path, &format!("{name}: dtype code {code}")))?;
            let len = r.u32()? as usize;
            let want = shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
            if want != Some(len) {
                return Err(bad(path, &format!("{name}: {len} bytes for shape {shape:?} of {dtype:?}")));
            }
            let offset = r.skip(len)?;
            vars.insert(name, Ct2Var { dtype, shape, offset, len });
        }
        // Aliases name a variable twice (whisper: the output projection is the embedding).
        let aliases = r.u32()? as usize;
        for _ in 0..aliases {
            let alias = r.string()?;
            let target = r.string()?;
            if let Some(v) = vars.get(&target).cloned() {
                vars.insert(alias, v);
            }
        }
        Ok(Ct2Model { spec, revision, vars, map })
    }

    /// A variable's raw bytes.
    pub fn bytes(&self, v: &Ct2Var) -> &[u8] {
        &self.map[v.offset..v.offset + v.len]
    }

    pub fn get(&self, name: &str) -> Result<&Ct2Var, ModelError> {
        self.vars
            .get(name)
            .ok_or_else(|| ModelError::Unsupported(format!("CTranslate2 model: no variable '{name}'")))
    }

    /// An integer scalar (e.g. `encoder/num_heads`).
    pub fn scalar(&self, name: &str) -> Result<i64, ModelError> {
        let v = self.get(name)?;
        let b = self.bytes(v);
        Ok(match (v.dtype, b.len()) {
            (Ct2Dtype::I8, 1) => b[0] as i8 as i64,
            (Ct2Dtype::I16, 2) => i16::from_le_bytes([b[0], b[1]]) as i64,
            (Ct2Dtype::I32, 4) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => {
                return Err(ModelError::Unsupported(format!(
                    "CTranslate2 model: '{name}' is not an integer scalar"
                )))
            }
        })
    }
}

fn bad(path: &Path, why: &str) -> ModelError {
    ModelError::Unsupported(format!("{}: not a CTranslate2 model file: {why}", path.display()))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ModelError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| {
            bad(
                self.path,
                &format!("truncated: {n} bytes wanted at {} of {}", self.at, self.b.len()),
            )
        })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn skip(&mut self, n: usize) -> Result<usize, ModelError> {
        let at = self.at;
        self.take(n)?;
        Ok(at)
    }

    fn u8(&mut self) -> Result<u8, ModelError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, ModelError> {
        let b = self.take(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        let s = self.take(n)?;
        let s = s.strip_suffix(&[0]).unwrap_or(s);
        String::from_utf8(s.to_vec()).map_err(|_| bad(self.path, "a name is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny model.bin written by hand, as CTranslate2 lays it out.
    fn file(vars: &[(&str, &[usize], u8, &[u8])], aliases: &[(&str, &str)]) -> Vec<u8> {
        let s = |o: &mut Vec<u8>, x: &str| {
            o.extend(((x.len() + 1) as u16).to_le_bytes());
            o.extend(x.as_bytes());
            o.push(0);
        };
        let mut o = Vec::new();
        o.extend(6u32.to_le_bytes());
        s(&mut o, "WhisperSpec");
        o.extend(3u32.to_le_bytes());
        o.extend((vars.len() as u32).to_le_bytes());
        for (name, shape, code, bytes) in vars {
            s(&mut o, name);
            o.push(shape.len() as u8);
            for d in *shape {
                o.extend((*d as u32).to_le_bytes());
            }
            o.push(*code);
            o.extend((bytes.len() as u32).to_le_bytes());
            o.extend(*bytes);
        }
        o.extend((aliases.len() as u32).to_le_bytes());
        for (a, t) in aliases {
            s(&mut o, a);
            s(&mut o, t);
        }
        o
    }

    fn write(bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("ct2-{}.bin", std::process::id() as u64 * 1000 + rand_tag()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn rand_tag() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn variables_scalars_and_aliases_are_read_in_place() {
        let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let p = write(&file(
            &[("dec/w", &[2, 3], 0, &w), ("enc/num_heads", &[], 2, &6i16.to_le_bytes())],
            &[("dec/proj", "dec/w")],
        ));
        let m = Ct2Model::open(&p).unwrap();
        assert_eq!((m.spec.as_str(), m.revision), ("WhisperSpec", 3));
        let v = m.get("dec/proj").unwrap();
        assert_eq!((v.dtype, v.shape.clone()), (Ct2Dtype::F32, vec![2, 3]));
        assert_eq!(m.bytes(v), &w[..]);
        assert_eq!(m.scalar("enc/num_heads").unwrap(), 6);
        assert!(m.get("nope").is_err());
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn truncated_mislabelled_and_foreign_files_are_refused() {
        let w = [0u8; 8];
        let good = file(&[("a", &[2], 0, &w)], &[]);
        for (bytes, want) in [
            (good[..good.len() - 6].to_vec(), "truncated"),
            (file(&[("a", &[3], 0, &w)], &[]), "8 bytes for shape [3]"),
            (file(&[("a", &[2], 9, &w)], &[]), "dtype code 9"),
            (b"GGUF\x03\x00\x00\x00".to_vec(), "binary version"),
        ] {
            let p = write(&bytes);
            let e = Ct2Model::open(&p).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{e}");
            let _ = std::fs::remove_file(p);
        }
    }
}
