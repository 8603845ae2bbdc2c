//! A paged KV cache: every layer's K (and V) for all sequences in one tensor `[kv_heads, rows,
//! head_dim]`, handed out in blocks of `BLOCK` positions. A sequence holds a table of blocks;
//! block handles are reference-counted, so a snapshot of a sequence shares its blocks and a
//! block returns to the free list when its last holder lets go. The pool starts small and
//! doubles when it runs out (copying into the larger tensors), so memory follows use. `shrink`
//! (which the engine calls once it has been idle a while) moves the held blocks to the front
//! of the pool and gives back the rest. A pool grows only by what it can take from its
//! `KvBudget`, which the pools of every model on one device share, so together they never
//! hold more than the device was judged to have room for; a pool that finds its budget spent
//! asks the other models' idle pools to shrink first (`KvBudget::reclaim`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use half::f16;

use crate::ModelError;

/// Positions per block. Larger blocks mean fewer indices to gather and more padding to mask.
pub const BLOCK: usize = 32;
/// Blocks in a fresh pool (512 positions).
const INITIAL_BLOCKS: usize = 16;
/// How long a pool that cannot grow waits for the other models' idle pools to shrink (a
/// shrink is a copy of the held blocks, milliseconds on a GPU, seconds at worst on a CPU).
const RECLAIM_WAIT: Duration = Duration::from_secs(5);

type FreeList = Arc<Mutex<FreeIds>>;

pub use crate::kv_budget::{BudgetMember, KvBudget, Reclaim};

/// The free block ids, ordered so allocation takes the lowest, and the pool's size in blocks.
struct FreeIds {
    ids: BTreeSet<u32>,
    blocks: u32,
}

struct Block {
    /// Where the block sits in the pool; `shrink` moves blocks (while nothing runs).
    id: AtomicU32,
    free: FreeList,
}

impl Block {
    fn id(&self) -> u32 {
        self.id.load(Ordering::Relaxed)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Ok(mut f) = self.free.lock() {
            // A block past the pool's end was cut off by a `shrink` that ran while this
            // block's last holder, on another thread, was letting go of it.
            if self.id() < f.blocks {
                f.ids.insert(self.id());
            }
        }
    }
}

/// A sequence's blocks and how many positions they hold.
#[derive(Clone, Default)]
pub struct BlockTable {
    blocks: Vec<Arc<Block>>,
    pub len: usize,
}

impl BlockTable {
    /// The pool row that holds position `pos`.
    pub fn row(&self, pos: usize) -> usize {
        self.blocks[pos / BLOCK].id() as usize * BLOCK + pos % BLOCK
    }

    /// Where the blocks sit in the pool now (`KvPool::shrink` may move them).
    pub fn block_ids(&self) -> Vec<u32> {
        self.blocks.iter().map(|b| b.id()).collect()
    }

    /// The blocks' identities, which stay the same while they are held (unlike their ids,
    /// which `shrink` changes): for telling which blocks tables share.
    pub fn block_keys(&self) -> Vec<usize> {
        self.blocks.iter().map(|b| Arc::as_ptr(b) as usize).collect()
    }

    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
        self.blocks.truncate(self.len.div_ceil(BLOCK));
    }
}

/// One layer's K and V on the host, position-major `[len, kv_heads, head_dim]` f16.
pub type HostKv = (Vec<f16>, Vec<f16>);

pub struct KvPool {
    /// Per layer: K and V, `[kv_heads, blocks * BLOCK, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    free: FreeList,
    /// One slot per pool block, so its length is the pool's size: the block handed out at
    /// that id (dead once its holders let go), which `shrink` moves.
    handed: Vec<Weak<Block>>,
    /// What the pool's growth draws on (None: it grows until the device is full).
    budget: Option<Arc<KvBudget>>,
}

impl Drop for KvPool {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give(self.bytes());
        }
    }
}

impl KvPool {
    pub fn new(n_layer: usize, kv_heads: usize, head_dim: usize, dtype: DType, device: &Device) -> Result<KvPool, ModelError> {
        let layers = (0..n_layer)
            .map(|_| {
                let z = || Tensor::zeros((kv_heads, INITIAL_BLOCKS * BLOCK, head_dim), dtype, device);
                Ok((z()?, z()?))
            })
            .collect::<Result<Vec<_>, candle_core::Error>>()?;
        Ok(KvPool {
            layers,
            free: Arc::new(Mutex::new(FreeIds {
                ids: (0..INITIAL_BLOCKS as u32).collect(),
                blocks: INITIAL_BLOCKS as u32,
            })),
            handed: (0..INITIAL_BLOCKS).map(|_| Weak::new()).collect(),
            budget: None,
        })
    }

    /// Caps the pool at `bytes` (all layers, K and V; at least the blocks it already has): a
    /// budget of its own.
    pub fn set_limit_bytes(&mut self, bytes: Option<usize>) {
        self.set_budget(bytes.map(KvBudget::new));
    }

    /// Makes the pool's growth draw on `budget` (None: unbounded). What the pool holds now
    /// counts against the new budget at once and is given back to the old one.
    pub fn set_budget(&mut self, budget: Option<Arc<KvBudget>>) {
        let bytes = self.bytes();
        if let Some(old) = self.budget.take() {
            old.give(bytes);
        }
        if let Some(b) = &budget {
            b.hold(bytes);
        }
        self.budget = budget;
    }

    pub fn budget(&self) -> Option<&Arc<KvBudget>> {
        self.budget.as_ref()
    }

    fn bytes_per_block(&self) -> usize {
        (self.bytes() / self.capacity_blocks().max(1)).max(1)
    }

    /// The most blocks the pool could grow to now: its size plus what its budget has left.
    fn max_blocks(&self) -> usize {
        match &self.budget {
            Some(b) => self.capacity_blocks() + b.available_bytes() / self.bytes_per_block(),
            None => usize::MAX,
        }
    }

    pub fn new_table(&self) -> BlockTable {
        BlockTable::default()
    }

    pub fn capacity_blocks(&self) -> usize {
        self.handed.len()
    }

    pub fn free_blocks(&self) -> usize {
        self.free.lock().map(|f| f.ids.len()).unwrap_or(0)
    }

    pub fn layer(&self, i: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[i];
        (k, v)
    }

    /// Makes `table` hold `len` positions: a shared block about to be written is copied first
    /// (so the other holders keep their contents), and new blocks are added as needed.
    pub fn reserve(&mut self, table: &mut BlockTable, len: usize) -> Result<(), ModelError> {
        let first = table.len.min(len);
        let bi = first / BLOCK;
        if bi < table.blocks.len() && Arc::strong_count(&table.blocks[bi]) > 1 {
            let fresh = self
                .alloc(1)?
                .pop()
                .ok_or_else(|| ModelError::Unsupported("KV pool: no block".into()))?;
            self.copy_block(table.blocks[bi].id(), fresh.id())?;
            table.blocks[bi] = fresh;
        }
        let need = len.div_ceil(BLOCK).saturating_sub(table.blocks.len());
        if need > 0 {
            table.blocks.extend(self.alloc(need)?);
        }
        table.len = len;
        Ok(())
    }

    fn alloc(&mut self, n: usize) -> Result<Vec<Arc<Block>>, ModelError> {
        let have = self.free_blocks();
        if have < n {
            let need = self.capacity_blocks() + n - have;
            let full = |cap: usize| ModelError::KvCacheFull {
                needed: need * BLOCK,
                limit: cap.saturating_mul(BLOCK),
            };
            let mut cap = self.max_blocks();
            if need > cap && self.reclaim() {
                cap = self.max_blocks();
            }
            if need > cap {
                return Err(full(cap));
            }
            // Doubling keeps growth (a copy of the pool) rare. Where the device or the budget
            // cannot hold double, smaller steps; just enough only as the last resort, since
            // growing by a block at a time would copy the whole pool for every new block.
            let mut grown = Err(full(cap));
            let size = self.capacity_blocks();
            for factor in [2.0, 1.5, 1.25, 0.0] {
                let to = ((size as f64 * factor) as usize).max(need).min(cap);
                grown = self.grow_within_budget(to);
                if grown.is_ok() {
                    break;
                }
            }
            if grown.is_err() && self.reclaim() {
                // Another pool took what `max_blocks` saw as left; just enough, once more.
                grown = self.grow_within_budget(need);
            }
            grown?;
        }
        let mut free = self.free.lock().map_err(|_| ModelError::Unsupported("KV pool poisoned".into()))?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = free
                .ids
                .pop_first()
                .ok_or_else(|| ModelError::Unsupported("KV pool: fewer free blocks than counted".into()))?;
            let b = Arc::new(Block {
                id: AtomicU32::new(id),
                free: self.free.clone(),
            });
            self.handed[id as usize] = Arc::downgrade(&b);
            out.push(b);
        }
        Ok(out)
    }

    /// Asks the budget's idle members to give back memory; true when anything came back. The
    /// wait is bounded because the asker is a request in flight: an engine that answers late
    /// leaves the asker with `KvCacheFull`, not a hang.
    fn reclaim(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.reclaim(RECLAIM_WAIT) > 0)
    }

    /// `grow`, with the growth first taken from the budget (and given back if it fails). Another
    /// pool may have taken what `max_blocks` saw as left, so the taking can fail too.
    fn grow_within_budget(&mut self, blocks: usize) -> Result<(), ModelError> {
        let extra = blocks.saturating_sub(self.capacity_blocks()) * self.bytes_per_block();
        if let Some(b) = &self.budget {
            if !b.take(extra) {
                return Err(ModelError::KvCacheFull {
                    needed: blocks * BLOCK,
                    limit: self.max_blocks().saturating_mul(BLOCK),
                });
            }
        }
        let grown = self.grow(blocks);
        if grown.is_err() {
            if let Some(b) = &self.budget {
                b.give(extra);
            }
        }
        grown
    }

    /// Layer by layer (so only one layer is held twice at a time); a failure leaves some layers
    /// larger than `capacity_blocks` says, which is harmless, and a retry skips them.
    fn grow(&mut self, blocks: usize) -> Result<(), ModelError> {
        let from = self.capacity_blocks();
        for (k, v) in self.layers.iter_mut() {
            for t in [k, v] {
                let (h, rows, d) = t.dims3()?;
                if rows >= blocks * BLOCK {
                    continue;
                }
                let bigger = Tensor::zeros((h, blocks * BLOCK, d), t.dtype(), t.device()).map_err(|e| {
                    let bytes = 2 * block_bytes(h, blocks, d, t.dtype());
                    ModelError::Unsupported(format!(
                        "KV cache: cannot grow from {} to {} positions ({} MiB per layer) on {:?}: {e}",
                        from * BLOCK,
                        blocks * BLOCK,
                        bytes >> 20,
                        t.device().location()
                    ))
                })?;
                bigger.slice_set(t, 1, 0)?;
                *t = bigger;
            }
        }
        let mut free = self.free.lock().map_err(|_| ModelError::Unsupported("KV pool poisoned".into()))?;
        free.ids.extend(from as u32..blocks as u32);
        free.blocks = blocks as u32;
        self.handed.resize(blocks, Weak::new());
        Ok(())
    }

    /// Shrinks the pool to the blocks still held (at least its first size), when that gives
    /// back at least a quarter of it: held blocks past that size are copied into free ones
    /// before it, keeping their contents (every table that holds one sees its new place), and
    /// the tensors are cut. Returns the bytes given back. Costs a copy of what is kept, so the
    /// engine calls it after a quiet spell, never while a step could be using block ids.
    pub fn shrink(&mut self) -> Result<usize, ModelError> {
        let free_list = self.free.clone();
        let mut free = free_list.lock().map_err(|_| ModelError::Unsupported("KV pool poisoned".into()))?;
        let blocks = self.capacity_blocks();
        let keep = (blocks - free.ids.len()).max(INITIAL_BLOCKS);
        if keep * 4 > blocks * 3 {
            return Ok(0);
        }
        let before = self.bytes();
        // Dropped once the free list is unlocked: a block's last holder going away locks it.
        let mut moved = Vec::new();
        for id in keep..blocks {
            let Some(b) = self.handed[id].upgrade() else { continue };
            // Held blocks past `keep` are no more than the free ids before it.
            let to = free
                .ids
                .pop_first()
                .filter(|&t| (t as usize) < keep)
                .ok_or_else(|| ModelError::Unsupported("KV pool: free blocks miscounted".into()))?;
            self.copy_block(id as u32, to)?;
            b.id.store(to, Ordering::Relaxed);
            self.handed[to as usize] = Arc::downgrade(&b);
            moved.push(b);
        }
        for (k, v) in self.layers.iter_mut() {
            for t in [k, v] {
                // Forced: with one KV head the narrow is contiguous and would keep the old
                // storage alive.
                *t = t.narrow(1, 0, keep * BLOCK)?.force_contiguous()?;
            }
        }
        free.ids.retain(|&id| (id as usize) < keep);
        free.blocks = keep as u32;
        self.handed.truncate(keep);
        drop(free);
        drop(moved);
        let freed = before - self.bytes();
        if let Some(b) = &self.budget {
            b.give(freed);
        }
        Ok(freed)
    }

    /// Bytes the pool holds now, all layers, K and V.
    pub fn bytes(&self) -> usize {
        self.layers
            .first()
            .map(|(k, _)| {
                let (h, _, d) = k.dims3().unwrap_or((0, 0, 0));
                2 * self.layers.len() * block_bytes(h, self.capacity_blocks(), d, k.dtype())
            })
            .unwrap_or(0)
    }

    /// The first `len` positions `table` holds, per layer, as position-major `[len, kv_heads,
    /// head_dim]` f16 on the host (K and V): a snapshot of a sequence, for the lower tiers of
    /// the prefix cache. Gathered and converted on the device, so one copy per tensor crosses
    /// to the host.
    pub fn read(&self, table: &BlockTable, len: usize) -> Result<Vec<HostKv>, ModelError> {
        if len > table.len {
            return Err(ModelError::Unsupported(format!(
                "KV pool: {len} positions asked of a table of {}",
                table.len
            )));
        }
        let Some((k0, _)) = self.layers.first() else {
            return Ok(Vec::new());
        };
        let rows: Vec<u32> = (0..len).map(|p| table.row(p) as u32).collect();
        let rows = Tensor::new(rows.as_slice(), k0.device())?;
        let host = |t: &Tensor| -> Result<Vec<f16>, ModelError> {
            let t = t.index_select(&rows, 1)?.transpose(0, 1)?.to_dtype(DType::F16)?;
            Ok(t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f16>()?)
        };
        self.layers.iter().map(|(k, v)| Ok((host(k)?, host(v)?))).collect()
    }

    /// A fresh table holding `layers` (per layer K and V, `[len, kv_heads, head_dim]` f16 as
    /// `read` gives them), converted to the pool's dtype. A failure (a wrong shape, a full
    /// pool) gives back what it took: the blocks written are the new table's alone.
    pub fn write(&mut self, layers: &[(&[f16], &[f16])], len: usize) -> Result<BlockTable, ModelError> {
        if layers.len() != self.layers.len() {
            return Err(ModelError::Unsupported(format!(
                "KV pool: {} layers given to {}",
                layers.len(),
                self.layers.len()
            )));
        }
        let mut table = self.new_table();
        if len == 0 {
            return Ok(table);
        }
        self.reserve(&mut table, len)?;
        let ids = table.block_ids();
        for ((k, v), (pk, pv)) in layers.iter().zip(&self.layers) {
            for (src, dst) in [(k, pk), (v, pv)] {
                let (h, _, d) = dst.dims3()?;
                if src.len() != len * h * d {
                    return Err(ModelError::Unsupported(format!(
                        "KV pool: {} values for {len} positions of {h}x{d}",
                        src.len()
                    )));
                }
                let t = Tensor::from_slice(src, (len, h, d), &Device::Cpu)?
                    .to_device(dst.device())?
                    .to_dtype(dst.dtype())?
                    .transpose(0, 1)?
                    .contiguous()?;
                for (b, id) in ids.iter().enumerate() {
                    let n = BLOCK.min(len - b * BLOCK);
                    let part = t.narrow(1, b * BLOCK, n)?.force_contiguous()?;
                    dst.slice_set(&part, 1, *id as usize * BLOCK)?;
                }
            }
        }
        Ok(table)
    }

    fn copy_block(&self, from: u32, to: u32) -> Result<(), ModelError> {
        for (k, v) in &self.layers {
            for t in [k, v] {
                // Forced: a narrow of a one-head pool is already contiguous and would share storage.
                let src = t.narrow(1, from as usize * BLOCK, BLOCK)?.force_contiguous()?;
                t.slice_set(&src, 1, to as usize * BLOCK)?;
            }
        }
        Ok(())
    }
}

fn block_bytes(heads: usize, blocks: usize, head_dim: usize, dtype: DType) -> usize {
    heads * blocks * BLOCK * head_dim * dtype.size_in_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> KvPool {
        KvPool::new(1, 1, 2, DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn blocks_come_back_when_the_last_holder_drops() {
        let mut p = pool();
        let mut a = p.new_table();
        p.reserve(&mut a, 70).unwrap();
        assert_eq!(a.blocks(), 3);
        assert_eq!(p.free_blocks(), INITIAL_BLOCKS - 3);
        let snapshot = a.clone();
        drop(a);
        assert_eq!(p.free_blocks(), INITIAL_BLOCKS - 3, "the snapshot still holds them");
        drop(snapshot);
        assert_eq!(p.free_blocks(), INITIAL_BLOCKS);
    }

    #[test]
    fn writing_into_a_shared_block_copies_it_first() {
        let mut p = pool();
        let mut a = p.new_table();
        p.reserve(&mut a, 40).unwrap();
        let (k, _) = p.layer(0);
        let marked = Tensor::new(&[[[7f32, 7.0]]], &Device::Cpu).unwrap();
        k.slice_set(&marked, 1, a.row(35)).unwrap();
        let snap = a.clone();
        // Extending `a` writes position 40, in its second block, which the snapshot shares.
        p.reserve(&mut a, 41).unwrap();
        assert_ne!(a.block_ids()[1], snap.block_ids()[1]);
        assert_eq!(a.block_ids()[0], snap.block_ids()[0], "full blocks stay shared");
        let (k, _) = p.layer(0);
        let copied = k.narrow(1, a.row(35), 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(copied, vec![7.0, 7.0]);
        // A block boundary needs no copy: the next write goes to a fresh block.
        let mut b = p.new_table();
        p.reserve(&mut b, 32).unwrap();
        let snap_b = b.clone();
        p.reserve(&mut b, 33).unwrap();
        assert_eq!(b.block_ids()[0], snap_b.block_ids()[0]);
    }

    #[test]
    fn written_kv_reads_back_position_major_across_blocks() {
        let mut p = KvPool::new(2, 2, 4, DType::F32, &Device::Cpu).unwrap();
        // Blocks held elsewhere first, so the written table's blocks are not the pool's first.
        let mut other = p.new_table();
        p.reserve(&mut other, 40).unwrap();
        let len = 70;
        let layer = |seed: usize| -> Vec<f16> {
            (0..len * 8)
                .map(|i| f16::from_f32(((i * 7 + seed) % 101) as f32 / 8.0 - 6.0))
                .collect()
        };
        let data: Vec<HostKv> = (0..2).map(|l| (layer(l), layer(l + 10))).collect();
        let refs: Vec<(&[f16], &[f16])> = data.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        let t = p.write(&refs, len).unwrap();
        assert_eq!((t.len, t.blocks()), (len, 3));
        assert!(t.block_ids()[0] >= 2, "blocks after the other table's");
        assert_eq!(p.read(&t, len).unwrap(), data);
        // Position 33, head 1, value 2 sits at the pool row of position 33 in layer 1's V.
        let (_, v1) = p.layer(1);
        let at = v1
            .narrow(0, 1, 1)
            .unwrap()
            .narrow(1, t.row(33), 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(at[2], data[1].1[33 * 8 + 4 + 2].to_f32());
        // A prefix is the first positions of each layer.
        assert_eq!(p.read(&t, 5).unwrap()[0].0, data[0].0[..5 * 8].to_vec());
        assert!(p.read(&t, 71).is_err());
        // Wrong sizes are refused, and the blocks taken for them come back.
        let free = p.free_blocks();
        let short: Vec<(&[f16], &[f16])> = data.iter().map(|(k, v)| (&k[..8], v.as_slice())).collect();
        assert!(p.write(&short, len).is_err());
        assert!(p.write(&refs[..1], len).is_err());
        assert_eq!(p.free_blocks(), free);
    }

    #[test]
    fn a_limited_pool_refuses_past_its_limit_and_keeps_what_it_holds() {
        let mut p = pool();
        let per_block = p.bytes() / INITIAL_BLOCKS;
        p.set_limit_bytes(Some(per_block * (INITIAL_BLOCKS + 8)));
        let mut a = p.new_table();
        p.reserve(&mut a, (INITIAL_BLOCKS + 8) * BLOCK).unwrap();
        assert_eq!(p.capacity_blocks(), INITIAL_BLOCKS + 8, "growth stops at the limit");
        let mut b = p.new_table();
        let err = p.reserve(&mut b, 1).unwrap_err();
        assert!(err.to_string().contains("the limit is 768"), "{err}");
        drop(a);
        p.reserve(&mut b, 1).unwrap();
    }

    #[test]
    fn the_pool_grows_and_keeps_what_it_held() {
        let mut p = pool();
        let mut a = p.new_table();
        p.reserve(&mut a, 1).unwrap();
        let (k, _) = p.layer(0);
        k.slice_set(&Tensor::new(&[[[3f32, 4.0]]], &Device::Cpu).unwrap(), 1, a.row(0))
            .unwrap();
        let mut big = p.new_table();
        p.reserve(&mut big, INITIAL_BLOCKS * BLOCK * 2).unwrap();
        assert!(p.capacity_blocks() >= INITIAL_BLOCKS * 2 + 1);
        assert_eq!(p.bytes(), 2 * p.capacity_blocks() * BLOCK * 2 * 4);
        let (k, _) = p.layer(0);
        let kept = k.narrow(1, a.row(0), 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(kept, vec![3.0, 4.0]);
        big.truncate(10);
        assert_eq!(big.blocks(), 1);
    }

    #[test]
    fn shrinking_moves_held_blocks_forward_and_gives_back_the_rest() {
        let mut p = pool();
        let mark = |p: &KvPool, row: usize, x: f32| {
            let (k, _) = p.layer(0);
            k.slice_set(&Tensor::new(&[[[x, x + 1.0]]], &Device::Cpu).unwrap(), 1, row).unwrap();
        };
        let read = |p: &KvPool, row: usize| {
            let (k, _) = p.layer(0);
            k.narrow(1, row, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let mut low = p.new_table();
        p.reserve(&mut low, 40).unwrap();
        assert_eq!(low.block_ids(), vec![0, 1], "lowest ids first");
        mark(&p, low.row(39), 5.0);
        let mut big = p.new_table();
        p.reserve(&mut big, INITIAL_BLOCKS * BLOCK * 3).unwrap();
        // A table held past where the pool will be cut, and a snapshot sharing its blocks.
        let mut high = p.new_table();
        p.reserve(&mut high, 2 * BLOCK + 3).unwrap();
        assert!(high.block_ids().iter().all(|&id| id as usize >= INITIAL_BLOCKS));
        mark(&p, high.row(0), 7.0);
        mark(&p, high.row(2 * BLOCK + 2), 9.0);
        let snap = high.clone();
        let keys = high.block_keys();
        let grown = p.capacity_blocks();
        drop(big);
        let bytes = p.bytes();
        let freed = p.shrink().unwrap();
        assert_eq!(p.capacity_blocks(), INITIAL_BLOCKS, "5 held blocks fit the first size");
        assert!(grown > INITIAL_BLOCKS * 3);
        assert_eq!(freed, bytes - p.bytes());
        assert_eq!(p.free_blocks(), INITIAL_BLOCKS - 5);
        assert!(high.block_ids().iter().all(|&id| (id as usize) < INITIAL_BLOCKS), "moved forward");
        assert_eq!(snap.block_ids(), high.block_ids(), "every holder sees the new places");
        assert_eq!(high.block_keys(), keys, "a moved block is the same block");
        assert_eq!(read(&p, low.row(39)), vec![5.0, 6.0]);
        assert_eq!(read(&p, high.row(0)), vec![7.0, 8.0]);
        assert_eq!(read(&p, high.row(2 * BLOCK + 2)), vec![9.0, 10.0]);
        assert_eq!(p.shrink().unwrap(), 0, "nothing more to give back");
        // Moved blocks go back to the free list under their new ids, and the pool grows again.
        drop(snap);
        drop(high);
        assert_eq!(p.free_blocks(), INITIAL_BLOCKS - 2);
        let mut again = p.new_table();
        p.reserve(&mut again, INITIAL_BLOCKS * BLOCK * 2).unwrap();
        let mut ids = again.block_ids();
        ids.extend(low.block_ids());
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), INITIAL_BLOCKS * 2 + 2, "no block handed out twice");
        assert!(ids.iter().all(|&id| (id as usize) < p.capacity_blocks()));
    }

    #[test]
    fn a_pool_mostly_in_use_is_not_cut() {
        let mut p = pool();
        let mut a = p.new_table();
        p.reserve(&mut a, INITIAL_BLOCKS * BLOCK * 2).unwrap();
        let mut b = p.new_table();
        p.reserve(&mut b, BLOCK).unwrap();
        assert_eq!(p.capacity_blocks(), INITIAL_BLOCKS * 4);
        drop(b);
        // 32 of 64 blocks held: cutting to 32 gives back half, so it happens.
        assert!(p.shrink().unwrap() > 0);
        assert_eq!(p.capacity_blocks(), INITIAL_BLOCKS * 2);
        // `a` grows by a block (the pool doubles to 64 again) and `c` takes 16: cutting to the
        // 49 held blocks would give back less than a quarter, not worth a copy of the pool.
        p.reserve(&mut a, INITIAL_BLOCKS * BLOCK * 2 + 1).unwrap();
        let mut c = p.new_table();
        p.reserve(&mut c, 16 * BLOCK).unwrap();
        assert_eq!(p.capacity_blocks(), INITIAL_BLOCKS * 4);
        assert_eq!(p.shrink().unwrap(), 0, "49 of 64 blocks held");
        assert_eq!(p.capacity_blocks(), INITIAL_BLOCKS * 4);
    }

    #[test]
    fn pools_sharing_a_budget_never_hold_more_than_it_together() {
        let (mut a, mut b) = (pool(), pool());
        let per_block = a.bytes() / INITIAL_BLOCKS;
        // Room for both first sizes and 20 blocks more, which either pool may take.
        let budget = KvBudget::new(per_block * (2 * INITIAL_BLOCKS + 20));
        a.set_budget(Some(budget.clone()));
        b.set_budget(Some(budget.clone()));
        let held = |a: &KvPool, b: &KvPool| a.bytes() + b.bytes();
        assert_eq!(budget.used_bytes(), held(&a, &b));
        // a doubles to 32 blocks (16 of the 20); one block more, and doubling is cut to the 36
        // the budget has room for.
        let mut ta = a.new_table();
        a.reserve(&mut ta, 20 * BLOCK).unwrap();
        assert_eq!(a.capacity_blocks(), 2 * INITIAL_BLOCKS);
        a.reserve(&mut ta, 2 * INITIAL_BLOCKS * BLOCK + 3).unwrap();
        assert_eq!(a.capacity_blocks(), 2 * INITIAL_BLOCKS + 4, "all the budget holds");
        assert_eq!(budget.used_bytes(), held(&a, &b));
        assert_eq!(budget.available_bytes(), 0);
        // b can fill its own first 16 blocks, and not one more while a holds the rest.
        let mut tb = b.new_table();
        b.reserve(&mut tb, INITIAL_BLOCKS * BLOCK).unwrap();
        let err = b.reserve(&mut tb, INITIAL_BLOCKS * BLOCK + 1).unwrap_err();
        assert!(
            matches!(err, ModelError::KvCacheFull { needed, limit } if needed == (INITIAL_BLOCKS + 1) * BLOCK && limit == INITIAL_BLOCKS * BLOCK),
            "{err}"
        );
        assert_eq!(tb.len, INITIAL_BLOCKS * BLOCK, "a refused reserve leaves the table as it was");
        // a lets go and shrinks: what it gives back is b's to take.
        drop(ta);
        assert!(a.shrink().unwrap() > 0);
        assert_eq!(a.capacity_blocks(), INITIAL_BLOCKS);
        b.reserve(&mut tb, 30 * BLOCK).unwrap();
        assert_eq!(b.capacity_blocks(), 2 * INITIAL_BLOCKS);
        assert_eq!(budget.used_bytes(), held(&a, &b));
        assert!(budget.used_bytes() <= budget.limit_bytes());
        // A dropped pool gives back all it held; a pool moved to another budget takes its
        // bytes along.
        drop(a);
        assert_eq!(budget.used_bytes(), b.bytes());
        let other = KvBudget::new(0);
        b.set_budget(Some(other.clone()));
        assert_eq!((budget.used_bytes(), other.used_bytes()), (0, b.bytes()));
    }

    #[test]
    fn two_threads_growing_at_once_stay_within_their_budget() {
        let per_block = pool().bytes() / INITIAL_BLOCKS;
        let budget = KvBudget::new(per_block * (2 * INITIAL_BLOCKS + 24));
        // Both pools hold their first size before either grows.
        let pools: Vec<KvPool> = (0..2)
            .map(|_| {
                let mut p = pool();
                p.set_budget(Some(budget.clone()));
                p
            })
            .collect();
        let grown: Vec<usize> = std::thread::scope(|s| {
            let hs: Vec<_> = pools
                .into_iter()
                .map(|mut p| {
                    s.spawn(move || {
                        let mut t = p.new_table();
                        // Grow a block at a time until the budget says no.
                        let mut len = 0;
                        while p.reserve(&mut t, len + BLOCK).is_ok() {
                            len += BLOCK;
                        }
                        let cap = p.capacity_blocks();
                        std::mem::forget(t);
                        std::mem::forget(p);
                        cap
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: usize = grown.iter().sum();
        assert!(total <= 2 * INITIAL_BLOCKS + 24, "{grown:?}");
        assert_eq!(budget.used_bytes(), total * per_block, "every growth was counted");
    }

    #[test]
    fn a_block_let_go_after_its_place_was_cut_off_is_not_freed() {
        let p = pool();
        // What a holder on another thread would drop after a `shrink` cut the pool below it.
        drop(Block {
            id: AtomicU32::new(INITIAL_BLOCKS as u32 + 5),
            free: p.free.clone(),
        });
        assert_eq!(p.free_blocks(), INITIAL_BLOCKS);
        assert!(p.free.lock().unwrap().ids.iter().all(|&id| (id as usize) < INITIAL_BLOCKS));
    }
}
