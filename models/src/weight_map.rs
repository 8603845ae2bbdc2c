//! The GGUF file's memory map, moved into 2 MiB pages after load on Linux.
//!
//! Decode reads every weight once per token, so a step streams the whole file. In 4 KiB
//! page-cache pages the native 0.5B decoded at 42–46 tok/s here; the same bytes in anonymous
//! 2 MiB pages gave 50–52 (`benches/NOTES.md`). File-backed transparent huge pages are not
//! available on this kernel (`MADV_COLLAPSE` on the file map: EINVAL), and copying before the
//! model is ready would cost a second or more of load (faulting and zeroing huge pages). So the
//! file is mapped as before, at a 2 MiB-aligned address, and is ready at once; a background
//! thread copies it into 2 MiB pages, and the next forward pass that finds the copy ready and
//! no other pass running swaps it in place with `mremap`: the addresses every matrix holds stay
//! valid and read the same bytes. `ABSTRACTGATEWAY_HUGE_PAGES=0` keeps the page-cache map
//! (shared between processes and reclaimable, where anonymous pages are not).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// Where the weights are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// The file's page-cache pages (the default elsewhere, and with `ABSTRACTGATEWAY_HUGE_PAGES=0`).
    File,
    /// Being copied into 2 MiB pages.
    Copying,
    /// Copied; swapped in at the next forward pass that runs alone.
    Ready,
    /// In anonymous 2 MiB pages.
    Huge,
    /// The copy or the swap failed (the file map stays; logged once).
    Failed,
}

impl Pages {
    /// As `/discovery/providers` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Pages::File => "file",
            Pages::Copying => "copying",
            Pages::Ready => "ready",
            Pages::Huge => "huge",
            Pages::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> Pages {
        match v {
            1 => Pages::Copying,
            2 => Pages::Ready,
            3 => Pages::Huge,
            4 => Pages::Failed,
            _ => Pages::File,
        }
    }
}

/// Whether weights should be moved into huge pages: Linux with transparent huge pages not
/// `never`, and `ABSTRACTGATEWAY_HUGE_PAGES` not `0`.
pub fn huge_pages_wanted() -> bool {
    if std::env::var("ABSTRACTGATEWAY_HUGE_PAGES").is_ok_and(|v| v.trim() == "0") {
        return false;
    }
    cfg!(target_os = "linux")
        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").is_ok_and(|s| !s.contains("[never]"))
}

/// A read-only map of a whole file. Readers hold `reading()` while they use the bytes, so that
/// the swap into huge pages never runs under them.
pub struct WeightMap {
    inner: imp::Map,
    state: AtomicU8,
    gate: RwLock<()>,
    copy: Mutex<Option<imp::Anon>>,
}

impl AsRef<[u8]> for WeightMap {
    fn as_ref(&self) -> &[u8] {
        self.inner.bytes()
    }
}

impl WeightMap {
    /// Maps `file` read-only (at a 2 MiB boundary on Linux, so that the swapped-in copy keeps
    /// its huge pages); with `huge`, starts the background copy.
    pub fn open(file: &std::fs::File, huge: bool) -> std::io::Result<Arc<WeightMap>> {
        let map = Arc::new(WeightMap {
            inner: imp::Map::open(file)?,
            state: AtomicU8::new(0),
            gate: RwLock::new(()),
            copy: Mutex::new(None),
        });
        if huge && imp::SUPPORTED && !map.as_ref().as_ref().is_empty() {
            map.state.store(1, Ordering::Release);
            // A weak reference: a model dropped during the copy ends it (benchmarks load and
            // drop models back to back).
            let bg = Arc::downgrade(&map);
            let map_len = map.inner.map_len();
            let spawned = std::thread::Builder::new().name("weights-to-huge-pages".into()).spawn(move || {
                let t = std::time::Instant::now();
                let copied = imp::Anon::copy_of(map_len, |off, dst| {
                    let m = bg.upgrade()?;
                    let src = m.inner.bytes();
                    let n = dst.len().min(src.len().saturating_sub(off));
                    dst[..n].copy_from_slice(&src[off..off + n]);
                    Some(())
                });
                let Some(m) = bg.upgrade() else { return };
                match copied {
                    Ok(Some(anon)) => {
                        *m.copy.lock().unwrap_or_else(|e| e.into_inner()) = Some(anon);
                        m.state.store(2, Ordering::Release);
                        tracing::debug!(ms = t.elapsed().as_millis() as u64, "weights copied into 2 MiB pages");
                        // Swap now if no pass is running (an idle model), else in a gap between
                        // two passes; a pass that starts first swaps it itself.
                        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
                        while m.pages() == Pages::Ready && std::time::Instant::now() < until {
                            m.try_swap();
                            std::thread::sleep(std::time::Duration::from_micros(200));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        m.state.store(4, Ordering::Release);
                        tracing::warn!("weights stay in 4 KiB page-cache pages: copying them into huge pages failed: {e}");
                    }
                }
            });
            if spawned.is_err() {
                map.state.store(4, Ordering::Release);
            }
        }
        Ok(map)
    }

    pub fn pages(&self) -> Pages {
        Pages::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Held while the bytes are read. Swaps the huge-page copy in first when it is ready and
    /// no other reader holds the map.
    pub fn reading(&self) -> RwLockReadGuard<'_, ()> {
        self.try_swap();
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps the copy in when it is ready and no reader holds the map.
    fn try_swap(&self) {
        if self.state.load(Ordering::Acquire) != 2 {
            return;
        }
        let Ok(_alone) = self.gate.try_write() else { return };
        let anon = self.copy.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(anon) = anon {
            match self.inner.replace_with(anon) {
                Ok(()) => {
                    self.state.store(3, Ordering::Release);
                    tracing::info!(mib = self.inner.len() >> 20, "weights now in 2 MiB pages");
                }
                Err(e) => {
                    self.state.store(4, Ordering::Release);
                    tracing::warn!("weights stay in 4 KiB page-cache pages: swapping in the huge-page copy failed: {e}");
                }
            }
        }
    }

    /// Waits up to `limit` for the copy to finish and be swapped in (benchmarks time steady
    /// state). Returns where the weights are.
    pub fn settle(&self, limit: std::time::Duration) -> Pages {
        let t = std::time::Instant::now();
        loop {
            match self.pages() {
                Pages::Copying if t.elapsed() < limit => std::thread::sleep(std::time::Duration::from_millis(10)),
                Pages::Ready if t.elapsed() < limit => {
                    drop(self.reading());
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                p => return p,
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::AsRawFd;

    pub const SUPPORTED: bool = true;
    const HUGE: usize = 2 << 20;

    /// `len` bytes at a `HUGE`-aligned address, mapped over `map_len` (page-rounded) bytes.
    pub struct Map {
        ptr: *mut u8,
        len: usize,
        map_len: usize,
    }

    // SAFETY: the mapping is read-only and owned; it is unmapped once, on drop.
    unsafe impl Send for Map {}
    unsafe impl Sync for Map {}

    fn page() -> usize {
        // SAFETY: sysconf has no preconditions.
        (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
    }

    /// Reserves `map_len` bytes at a `HUGE` boundary (PROT_NONE), returning the aligned start.
    fn reserve_aligned(map_len: usize) -> std::io::Result<*mut u8> {
        // SAFETY: a fresh anonymous reservation; only its own excess is unmapped below.
        unsafe {
            let span = map_len + HUGE;
            let p = libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            let start = p as usize;
            let aligned = start.next_multiple_of(HUGE);
            if aligned > start {
                libc::munmap(p, aligned - start);
            }
            let end = aligned + map_len;
            if start + span > end {
                libc::munmap(end as *mut libc::c_void, start + span - end);
            }
            Ok(aligned as *mut u8)
        }
    }

    impl Map {
        pub fn open(file: &std::fs::File) -> std::io::Result<Map> {
            let len = usize::try_from(file.metadata()?.len()).map_err(|_| std::io::Error::other("file too large to map"))?;
            if len == 0 {
                return Ok(Map {
                    ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
                    len: 0,
                    map_len: 0,
                });
            }
            let map_len = len.next_multiple_of(page());
            let at = reserve_aligned(map_len)?;
            // SAFETY: MAP_FIXED over our own reservation of exactly map_len bytes. Like llama.cpp,
            // we rely on the file not being truncated while the model is loaded.
            let p = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    map_len,
                    libc::PROT_READ,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                let e = std::io::Error::last_os_error();
                // SAFETY: the reservation is ours.
                unsafe { libc::munmap(at as *mut libc::c_void, map_len) };
                return Err(e);
            }
            // SAFETY: within the mapping; advice only.
            unsafe { libc::madvise(p, map_len, libc::MADV_WILLNEED) };
            Ok(Map {
                ptr: p as *mut u8,
                len,
                map_len,
            })
        }

        pub fn bytes(&self) -> &[u8] {
            // SAFETY: `len` readable bytes from `ptr` while the map lives (or a dangling pointer
            // with len 0).
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }

        pub fn len(&self) -> usize {
            self.len
        }

        pub fn map_len(&self) -> usize {
            self.map_len
        }

        /// Moves `anon`'s pages over this map's range (same bytes; no reader may hold the map).
        pub fn replace_with(&self, anon: Anon) -> std::io::Result<()> {
            // SAFETY: both ranges are map_len bytes at HUGE boundaries and ours; MREMAP_FIXED
            // replaces the file map's pages with the copy's atomically (one system call), and
            // the copy's range is consumed (forgotten below, not unmapped).
            let p = unsafe {
                libc::mremap(
                    anon.ptr as *mut libc::c_void,
                    self.map_len,
                    self.map_len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    self.ptr as *mut libc::c_void,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            std::mem::forget(anon);
            Ok(())
        }
    }

    impl Drop for Map {
        fn drop(&mut self) {
            if self.map_len > 0 {
                // SAFETY: our mapping, unmapped once.
                unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.map_len) };
            }
        }
    }

    /// A read-only anonymous copy of a `Map` in 2 MiB pages.
    pub struct Anon {
        ptr: *mut u8,
        map_len: usize,
    }

    // SAFETY: owned memory, handed from the copying thread to the swapping one.
    unsafe impl Send for Anon {}

    impl Anon {
        /// A copy in 2 MiB pages, filled a huge page at a time by `fill(offset, chunk)`; None
        /// when `fill` gives up (the model was dropped).
        pub fn copy_of(map_len: usize, mut fill: impl FnMut(usize, &mut [u8]) -> Option<()>) -> std::io::Result<Option<Anon>> {
            let at = reserve_aligned(map_len)?;
            let anon = Anon { ptr: at, map_len };
            // SAFETY: our reservation, made readable and writable and advised.
            unsafe {
                if libc::mprotect(at as *mut libc::c_void, map_len, libc::PROT_READ | libc::PROT_WRITE) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::madvise(at as *mut libc::c_void, map_len, libc::MADV_HUGEPAGE) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let mut off = 0;
            while off < map_len {
                let n = HUGE.min(map_len - off);
                // SAFETY: bytes off..off + n of our writable mapping, borrowed once at a time.
                let dst = unsafe { std::slice::from_raw_parts_mut(at.add(off), n) };
                if fill(off, dst).is_none() {
                    return Ok(None);
                }
                off += n;
            }
            // SAFETY: our mapping; read-only from here on, like the file map it replaces.
            if unsafe { libc::mprotect(at as *mut libc::c_void, map_len, libc::PROT_READ) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Some(anon))
        }
    }

    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: our mapping, unmapped once (a swapped-in copy is forgotten instead).
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.map_len) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub const SUPPORTED: bool = false;

    pub struct Map(memmap2::Mmap);

    impl Map {
        pub fn open(file: &std::fs::File) -> std::io::Result<Map> {
            // SAFETY: the file is mapped read-only. Like llama.cpp, we rely on it not being
            // truncated while the model is loaded (that would fault on access).
            let m = unsafe { memmap2::Mmap::map(file) }?;
            #[cfg(unix)]
            let _ = m.advise(memmap2::Advice::WillNeed);
            Ok(Map(m))
        }
        pub fn bytes(&self) -> &[u8] {
            &self.0
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        pub fn map_len(&self) -> usize {
            self.0.len()
        }
        pub fn replace_with(&self, anon: Anon) -> std::io::Result<()> {
            match anon {}
        }
    }

    pub enum Anon {}

    impl Anon {
        pub fn copy_of(_: usize, _: impl FnMut(usize, &mut [u8]) -> Option<()>) -> std::io::Result<Option<Anon>> {
            Err(std::io::Error::other("huge pages are moved on Linux only"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("weight-map-{}-{}", std::process::id(), bytes.len()));
        std::fs::File::create(&path).and_then(|mut f| f.write_all(bytes)).expect("write");
        let f = std::fs::File::open(&path).expect("open");
        let _ = std::fs::remove_file(&path);
        f
    }

    #[test]
    fn the_map_reads_the_file_and_the_swapped_copy_reads_the_same_bytes_at_the_same_address() {
        // 5 MiB + 123 bytes: two whole huge pages and a tail in small pages.
        let bytes: Vec<u8> = (0..(5 << 20) + 123)
            .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let f = file_of(&bytes);
        let map = WeightMap::open(&f, true).expect("map");
        let before = map.as_ref().as_ref().as_ptr();
        assert_eq!(map.as_ref().as_ref(), &bytes[..]);
        let pages = map.settle(std::time::Duration::from_secs(30));
        if cfg!(target_os = "linux") {
            assert_eq!(pages, Pages::Huge, "copied and swapped in");
        } else {
            assert_eq!(pages, Pages::File);
        }
        let _r = map.reading();
        assert_eq!(map.as_ref().as_ref().as_ptr(), before, "the address every matrix holds");
        assert_eq!(map.as_ref().as_ref(), &bytes[..], "the same bytes");
        if huge_pages_wanted() {
            // The move kept the copy's 2 MiB pages (both ranges start at a 2 MiB boundary).
            assert!(anon_huge_kib(before) >= 2048, "no huge pages in the weights' mapping");
        }
    }

    /// AnonHugePages of the mapping that starts at `at` (/proc/self/smaps), in KiB.
    fn anon_huge_kib(at: *const u8) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let head = format!("{:x}-", at as usize);
        smaps
            .lines()
            .skip_while(|l| !l.starts_with(&head))
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn without_huge_pages_the_file_map_stays() {
        let f = file_of(b"GGUF and a little more");
        let map = WeightMap::open(&f, false).expect("map");
        assert_eq!(map.settle(std::time::Duration::from_secs(1)), Pages::File);
        assert_eq!(map.as_ref().as_ref(), b"GGUF and a little more");
    }

    #[test]
    fn a_reader_holding_the_map_defers_the_swap() {
        let bytes = vec![7u8; 3 << 20];
        let f = file_of(&bytes);
        let map = WeightMap::open(&f, true).expect("map");
        let held = map.reading();
        if map.pages() == Pages::Huge {
            // The 3 MiB copy finished, and was swapped in, before this first reader arrived
            // (a loaded host can pause the test thread that long): there was nothing to defer.
            assert!(map.as_ref().as_ref().iter().all(|&b| b == 7));
            return;
        }
        let t = std::time::Instant::now();
        while map.pages() == Pages::Copying && t.elapsed() < std::time::Duration::from_secs(30) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Another reader arrives while the first still reads: no swap under it.
        drop(map.reading());
        if cfg!(target_os = "linux") {
            assert_eq!(map.pages(), Pages::Ready);
        }
        drop(held);
        let _r = map.reading();
        if cfg!(target_os = "linux") {
            assert_eq!(map.pages(), Pages::Huge);
        }
        assert!(map.as_ref().as_ref().iter().all(|&b| b == 7));
    }
}
