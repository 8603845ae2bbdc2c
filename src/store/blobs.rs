//! Content-addressed blobs on disk: the artifact store's bytes (issue P7). Metadata rows live in
//! the `Store`; this holds only bytes, named by their sha256.
//!
//! Durability order, so that a crash at any point leaves no metadata row without its blob:
//! 1. bytes stream into `tmp/<uuid>.part`, hashed on the way (never buffered whole);
//! 2. the temp file is fsynced and renamed to `<aa>/<sha256>`, and the directory is fsynced;
//! 3. only then does the caller commit the metadata row.
//!
//! A crash before 3 leaves a blob (or a temp file) no row names: `collect` removes those at start.
//! Several processes may serve one data dir (a gateway and a runner); each holds a shared lock on
//! `.lock` while it has the store open, and collection runs only under the exclusive lock, so it
//! never removes a blob another live process has just written and not yet committed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The stream went past the caller's limit; nothing was kept.
    #[error("blob exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("not a sha256 hex digest: {0}")]
    BadId(String),
    #[error("blob store I/O: {0}")]
    Io(#[from] io::Error),
}

/// A stored blob: its sha256 (lowercase hex) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
}

/// Blobs under one data plane's directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Holds the shared lock on `.lock` for as long as any clone lives.
    _lock: Arc<File>,
}

/// What start-up collection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Collected {
    /// False when another live process holds the store (collection skipped).
    pub ran: bool,
    pub files: u64,
    pub bytes: u64,
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// fsync a directory, so that a rename into it survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

impl BlobStore {
    /// Opens (creating) `root`, with its `tmp/` directory, under a shared lock.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<BlobStore> {
        let (store, _) = BlobStore::open_inner(root.into(), None::<fn() -> Result<std::collections::HashSet<String>, BlobError>>)?;
        Ok(store)
    }

    /// Opens `root` and, when no other process has it open, removes temp files and the blobs
    /// `keep` (the ids metadata rows name) does not list.
    pub fn open_and_collect(
        root: impl Into<PathBuf>,
        keep: impl FnOnce() -> Result<std::collections::HashSet<String>, BlobError>,
    ) -> Result<(BlobStore, Collected), BlobError> {
        Ok(BlobStore::open_inner(root.into(), Some(keep))?)
    }

    fn open_inner(
        root: PathBuf,
        keep: Option<impl FnOnce() -> Result<std::collections::HashSet<String>, BlobError>>,
    ) -> io::Result<(BlobStore, Collected)> {
        fs::create_dir_all(root.join("tmp"))?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(".lock"))?;
        let mut done = Collected::default();
        let exclusive = keep.is_some() && lock.try_lock().is_ok();
        let store = BlobStore {
            root,
            _lock: Arc::new(lock),
        };
        if let (true, Some(keep)) = (exclusive, keep) {
            let res = keep().and_then(|ids| store.collect(|id| ids.contains(id)));
            match res {
                Ok((files, bytes)) => done = Collected { ran: true, files, bytes },
                Err(e) => tracing::warn!(error = %e, "blob collection skipped"),
            }
        }
        // From exclusive (or nothing) to shared: other processes may open the store now.
        store._lock.lock_shared()?;
        Ok((store, done))
    }

    /// The directory the blobs live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `sha256` lives (two-character fan-out, as git's objects).
    pub fn path(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        if !is_sha256(sha256) {
            return Err(BlobError::BadId(sha256.chars().take(80).collect()));
        }
        Ok(self.root.join(&sha256[..2]).join(sha256))
    }

    /// A writer for a new blob of at most `limit` bytes.
    pub fn writer(&self, limit: u64) -> Result<BlobWriter, BlobError> {
        let tmp = self.root.join("tmp").join(format!("{}.part", uuid::Uuid::new_v4()));
        let file = File::create(&tmp)?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file: Some(file),
            hash: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Opens blob `sha256` for reading; `NotFound` when it is not there (removed underneath).
    pub fn open_blob(&self, sha256: &str) -> Result<File, BlobError> {
        Ok(File::open(self.path(sha256)?)?)
    }

    /// Removes every temp file and every blob `keep` does not name. Run at start, before any
    /// write, with `keep` answering from the metadata rows. Returns (files removed, bytes freed).
    fn collect(&self, keep: impl Fn(&str) -> bool) -> Result<(u64, u64), BlobError> {
        let (mut files, mut bytes) = (0u64, 0u64);
        let mut remove = |p: &Path| -> io::Result<()> {
            let len = p.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(p)?;
            files += 1;
            bytes += len;
            Ok(())
        };
        for e in fs::read_dir(self.root.join("tmp"))? {
            let e = e?;
            if e.file_type()?.is_file() {
                remove(&e.path())?;
            }
        }
        for fan in fs::read_dir(&self.root)? {
            let fan = fan?;
            let name = fan.file_name();
            let name = name.to_string_lossy();
            if name == "tmp" || !fan.file_type()?.is_dir() {
                continue;
            }
            for e in fs::read_dir(fan.path())? {
                let e = e?;
                let id = e.file_name().to_string_lossy().into_owned();
                // Anything that is not a well-formed blob of this fan-out is not ours to keep.
                if !(is_sha256(&id) && id.starts_with(name.as_ref()) && keep(&id)) && e.file_type()?.is_file() {
                    remove(&e.path())?;
                }
            }
        }
        Ok((files, bytes))
    }
}

/// Streams one blob to disk. Dropped without `finish`, it leaves nothing behind.
pub struct BlobWriter {
    store: BlobStore,
    tmp: PathBuf,
    file: Option<File>,
    hash: Sha256,
    size: u64,
    limit: u64,
}

impl BlobWriter {
    /// Appends `buf`; past the limit, the blob is abandoned and `TooLarge` returned.
    pub fn write(&mut self, buf: &[u8]) -> Result<(), BlobError> {
        if self.size + buf.len() as u64 > self.limit {
            self.abandon();
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        let Some(f) = self.file.as_mut() else {
            return Err(BlobError::TooLarge { limit: self.limit });
        };
        f.write_all(buf)?;
        self.hash.update(buf);
        self.size += buf.len() as u64;
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the blob durable under its sha256 (fsync, rename, fsync of the directory) and
    /// returns its ref. Bytes already stored under that sha256 are kept and the copy dropped.
    pub fn finish(mut self) -> Result<BlobRef, BlobError> {
        let Some(f) = self.file.take() else {
            return Err(BlobError::TooLarge { limit: self.limit });
        };
        f.sync_all()?;
        drop(f);
        let sha256 = hex::encode(std::mem::take(&mut self.hash).finalize());
        let dest = self.store.path(&sha256)?;
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::create_dir_all(&dir)?;
        if dest.exists() {
            let _ = fs::remove_file(&self.tmp);
        } else {
            fs::rename(&self.tmp, &dest)?;
            sync_dir(&dir)?;
        }
        Ok(BlobRef { sha256, size: self.size })
    }

    fn abandon(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        self.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn temp_store(name: &str) -> (PathBuf, BlobStore) {
        let dir = std::env::temp_dir().join(format!("blobs-{name}-{}", uuid::Uuid::new_v4()));
        let s = BlobStore::open(&dir).expect("open");
        (dir, s)
    }

    fn read_all(s: &BlobStore, id: &str) -> Vec<u8> {
        let mut v = Vec::new();
        s.open_blob(id).expect("open").read_to_end(&mut v).expect("read");
        v
    }

    #[test]
    fn a_streamed_blob_is_stored_under_its_sha256_and_reads_back() {
        let (dir, s) = temp_store("stream");
        let mut w = s.writer(1 << 20).expect("writer");
        for chunk in [b"hello ".as_slice(), b"world"] {
            w.write(chunk).expect("write");
        }
        let r = w.finish().expect("finish");
        // sha256("hello world")
        assert_eq!(r.sha256, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        assert_eq!(r.size, 11);
        assert_eq!(read_all(&s, &r.sha256), b"hello world");
        assert!(s.path(&r.sha256).expect("path").starts_with(dir.join("b9")));
        // The same bytes again: one blob, the same ref, no temp file left.
        let mut w = s.writer(1 << 20).expect("writer");
        w.write(b"hello world").expect("write");
        assert_eq!(w.finish().expect("finish"), r);
        assert_eq!(fs::read_dir(dir.join("tmp")).expect("tmp").count(), 0);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn over_the_limit_nothing_is_kept() {
        let (dir, s) = temp_store("limit");
        let mut w = s.writer(10).expect("writer");
        w.write(b"0123456789").expect("at the limit");
        assert!(matches!(w.write(b"x"), Err(BlobError::TooLarge { limit: 10 })));
        assert!(w.finish().is_err());
        assert_eq!(fs::read_dir(dir.join("tmp")).expect("tmp").count(), 0);
        // An upload cut off mid-stream (the writer dropped unfinished) leaves nothing either.
        let mut w = s.writer(100).expect("writer");
        w.write(b"partial").expect("write");
        drop(w);
        assert_eq!(fs::read_dir(dir.join("tmp")).expect("tmp").count(), 0);
        assert_eq!(s.collect(|_| true).expect("collect"), (0, 0));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn collect_removes_temp_files_and_unreferenced_blobs_only() {
        let (dir, s) = temp_store("collect");
        let put = |b: &[u8]| {
            let mut w = s.writer(1 << 20).expect("writer");
            w.write(b).expect("write");
            w.finish().expect("finish")
        };
        let (kept, orphan) = (put(b"kept"), put(b"orphan"));
        // A crash mid-upload leaves a temp file; a stray file in a fan-out directory is not a blob.
        fs::write(dir.join("tmp").join("crashed.part"), b"half").expect("tmp");
        fs::write(dir.join(&kept.sha256[..2]).join("stray"), b"?").expect("stray");
        let (files, bytes) = s.collect(|id| id == kept.sha256).expect("collect");
        assert_eq!((files, bytes), (3, 4 + 6 + 1));
        assert_eq!(read_all(&s, &kept.sha256), b"kept");
        assert!(matches!(s.open_blob(&orphan.sha256), Err(BlobError::Io(e)) if e.kind() == io::ErrorKind::NotFound));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn collection_runs_only_when_no_other_holder_has_the_store_open() {
        let (dir, s) = temp_store("held");
        let mut w = s.writer(100).expect("writer");
        w.write(b"written, row not yet committed").expect("write");
        let blob = w.finish().expect("finish");
        // Another holder (here: `s`, as a live second process would) has the store open: a new
        // opener must not collect the blob it has just written.
        let (_s2, done) = BlobStore::open_and_collect(&dir, || Ok(Default::default())).expect("open");
        assert!(!done.ran);
        assert_eq!(read_all(&s, &blob.sha256), b"written, row not yet committed");
        drop((_s2, s));
        // Alone, the opener collects it (no row names it).
        let (s3, done) = BlobStore::open_and_collect(&dir, || Ok(Default::default())).expect("open");
        assert_eq!(
            done,
            Collected {
                ran: true,
                files: 1,
                bytes: 30
            }
        );
        assert!(s3.open_blob(&blob.sha256).is_err());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn ids_that_are_not_sha256_digests_are_refused() {
        let (dir, s) = temp_store("ids");
        for bad in [
            "../../etc/passwd",
            "",
            "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9",
            "ab",
        ] {
            assert!(matches!(s.open_blob(bad), Err(BlobError::BadId(_))), "{bad}");
        }
        let _ = fs::remove_dir_all(dir);
    }
}
