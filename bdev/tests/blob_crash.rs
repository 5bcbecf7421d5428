//! Crash consistency of the blob store: 1,000 seeded power cuts, each at
//! a random device write in the middle of a random workload (creates of
//! thick and thin blobs, writes that allocate thin clusters, flushes,
//! resizes, snapshots, clones, deletions including a snapshot's merge into
//! its clone, inflations and decouplings, xattr changes), on the power-cut bdev with 4 KiB and
//! 512-byte blocks (a 4 KiB atomic unit). After each cut the store must
//! load, with:
//! - every blob an acknowledged operation left, none it removed, and the
//!   operation the cut interrupted either fully done or not at all (its
//!   blob whole or gone, its snapshot made or not);
//! - every block holding a value it may hold: the last one written before
//!   an acknowledged FLUSH of the blob, or one written since (never an
//!   older one, another blob's, or the device's stale bytes);
//! - `fsck` clean, no leaked cluster.
//!
//! The seed of a failing case is printed; `BLOB_CRASH_SEED=n` reruns it
//! alone, `BLOB_CRASH_CASES=n` runs n cases.

mod common;

use std::collections::BTreeMap;

use bdev::blob::store::BlobChannel;
use bdev::blob::{Blob, BlobError, BlobOptions, Blobstore, ClearMethod, StoreOptions};
use bdev::modules::powercut;
use common::{Rng, nop, on};

const CLUSTER: u32 = 16 << 10;

/// One blob as the test expects it.
#[derive(Clone, Debug, PartialEq)]
struct MBlob {
    /// Per block: None reads through the parent (or zeros); Some: the
    /// values the block may hold (tags; 0 is zeros).
    blocks: Vec<Option<Vec<u32>>>,
    ro: bool,
    parent: Option<u64>,
    xattr: Option<Vec<u8>>,
}

type Model = BTreeMap<u64, MBlob>;

/// The values block `i` of blob `id` may read.
fn resolve(m: &Model, id: u64, i: usize) -> Vec<u32> {
    let mut b = &m[&id];
    loop {
        if let Some(Some(c)) = b.blocks.get(i) {
            return c.clone();
        }
        match b.parent {
            Some(p) if i < m[&p].blocks.len() => b = &m[&p],
            _ => return vec![0],
        }
    }
}

fn clones(m: &Model, id: u64) -> Vec<u64> {
    m.iter()
        .filter(|(_, b)| b.parent == Some(id))
        .map(|(k, _)| *k)
        .collect()
}

fn fill(tag: u32, bs: usize) -> Vec<u8> {
    if tag == 0 {
        return vec![0; bs];
    }
    let mut v = vec![(tag as u8) ^ 0x5a; bs];
    v[..4].copy_from_slice(&tag.to_le_bytes());
    v
}

fn decode(b: &[u8]) -> Option<u32> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let tag = u32::from_le_bytes(b[..4].try_into().ok()?);
    (fill(tag, b.len()) == b).then_some(tag)
}

/// How an operation ended.
enum Outcome {
    /// Acknowledged: the model after it.
    Done(Model),
    /// Refused without a change.
    Refused,
    /// Interrupted by the cut: the model if it did not happen, if it did.
    Cut(Model, Model),
}

struct Case {
    rng: Rng,
    bs: usize,
    upc: usize,
    next_tag: u32,
}

fn is_cut(e: &BlobError) -> bool {
    matches!(e, BlobError::Io { .. })
}

impl Case {
    async fn write(&mut self, s: &Blobstore, ch: &BlobChannel, m: &Model, id: u64) -> Outcome {
        let b = s.open_blob(id).unwrap();
        let size = m[&id].blocks.len();
        let n = 1 + self.rng.below(8.min(size as u64)) as usize;
        let off = self.rng.below((size - n + 1) as u64) as usize;
        let mut data = Vec::with_capacity(n * self.bs);
        let mut after = m.clone();
        for i in off..off + n {
            self.next_tag += 1;
            data.extend(fill(self.next_tag, self.bs));
            let mut c = resolve(m, id, i);
            c.push(self.next_tag);
            after.get_mut(&id).unwrap().blocks[i] = Some(c);
        }
        if std::env::var("BLOB_CRASH_TRACE").is_ok() {
            eprintln!(
                "write {id:#x} blocks {off}..{} tags {}..",
                off + n,
                self.next_tag + 1 - n as u32
            );
        }
        let mut buf = ch.alloc_buf(data.len()).unwrap();
        buf.write_at(0, &data);
        match b.write(ch, off as u64, n as u64, buf).await {
            Ok(buf) => {
                ch.free_buf(buf);
                if std::env::var("BLOB_CRASH_TRACE").is_ok() {
                    eprintln!(
                        "  allocated {:?} parent {:x?}",
                        (0..b.num_clusters())
                            .map(|c| b.is_allocated(c))
                            .collect::<Vec<_>>(),
                        b.parent()
                    );
                }
                Outcome::Done(after)
            }
            Err(e) if is_cut(&e) => Outcome::Cut(m.clone(), after),
            Err(e) => panic!("write: {e}"),
        }
    }

    async fn step(&mut self, s: &Blobstore, ch: &BlobChannel, m: &Model) -> Outcome {
        let ids: Vec<u64> = m.keys().copied().collect();
        let writable: Vec<u64> = ids.iter().copied().filter(|i| !m[i].ro).collect();
        let ro: Vec<u64> = ids.iter().copied().filter(|i| m[i].ro).collect();
        let pick = |rng: &mut Rng, v: &[u64]| v[rng.below(v.len() as u64) as usize];
        let op = self.rng.below(100);
        if std::env::var("BLOB_CRASH_TRACE").is_ok() {
            eprintln!("op {op}");
        }
        match op {
            _ if ids.is_empty() || (op < 12 && ids.len() < 6) => {
                let thin = self.rng.below(2) == 0;
                let n = 1 + self.rng.below(6);
                let r = s
                    .create_blob(&BlobOptions {
                        num_clusters: n,
                        thin,
                        xattrs: vec![],
                    })
                    .await;
                let mb = MBlob {
                    blocks: vec![Some(vec![0]); n as usize * self.upc],
                    ro: false,
                    parent: None,
                    xattr: None,
                };
                match r {
                    Ok(id) => {
                        let mut after = m.clone();
                        after.insert(id, mb);
                        Outcome::Done(after)
                    }
                    Err(BlobError::NoSpace(_)) => Outcome::Refused,
                    Err(e) if is_cut(&e) => {
                        let mut after = m.clone();
                        after.insert(u64::MAX, mb);
                        Outcome::Cut(m.clone(), after)
                    }
                    Err(e) => panic!("create: {e}"),
                }
            }
            0..=54 if !writable.is_empty() => {
                let id = pick(&mut self.rng, &writable);
                self.write(s, ch, m, id).await
            }
            55..=64 => {
                let id = pick(&mut self.rng, &ids);
                let b = s.open_blob(id).unwrap();
                if std::env::var("BLOB_CRASH_TRACE").is_ok() {
                    eprintln!("flush {id:#x}");
                }
                match b.flush(ch).await {
                    Ok(()) => {
                        let mut after = m.clone();
                        let n = m[&id].blocks.len();
                        for i in 0..n {
                            let last = *resolve(m, id, i).last().unwrap();
                            // Reads through a parent stay so (the parent's
                            // values collapse with its own flush).
                            if m[&id].blocks[i].is_some() {
                                after.get_mut(&id).unwrap().blocks[i] = Some(vec![last]);
                            }
                        }
                        Outcome::Done(after)
                    }
                    Err(e) if is_cut(&e) => Outcome::Cut(m.clone(), m.clone()),
                    Err(e) => panic!("flush: {e}"),
                }
            }
            65..=71 if !writable.is_empty() => {
                let id = pick(&mut self.rng, &writable);
                let n = 1 + self.rng.below(8);
                let b = s.open_blob(id).unwrap();
                let mut after = m.clone();
                let blocks = &mut after.get_mut(&id).unwrap().blocks;
                // Thin (or thick, no parent): new blocks read through the
                // parent or zeros.
                blocks.resize(n as usize * self.upc, None);
                match b.resize(n).await {
                    Ok(()) => {
                        if std::env::var("BLOB_CRASH_TRACE").is_ok() {
                            eprintln!("resized {id:#x} to {n}");
                        }
                        Outcome::Done(after)
                    }
                    Err(BlobError::NoSpace(_)) => Outcome::Refused,
                    Err(e) if is_cut(&e) => Outcome::Cut(m.clone(), after),
                    Err(e) => panic!("resize: {e}"),
                }
            }
            72..=79 if !writable.is_empty() && ids.len() < 8 => {
                let id = pick(&mut self.rng, &writable);
                let mut after = m.clone();
                let x = after.get_mut(&id).unwrap();
                let snap = MBlob {
                    blocks: x.blocks.clone(),
                    ro: true,
                    parent: x.parent,
                    xattr: None,
                };
                x.blocks = vec![None; x.blocks.len()];
                x.parent = Some(u64::MAX);
                after.insert(u64::MAX, snap);
                if std::env::var("BLOB_CRASH_TRACE").is_ok() {
                    eprintln!("snapshot {id:#x}");
                }
                match s.create_snapshot(id, &[]).await {
                    Ok(sid) => {
                        let sb = after.remove(&u64::MAX).unwrap();
                        after.insert(sid, sb);
                        after.get_mut(&id).unwrap().parent = Some(sid);
                        Outcome::Done(after)
                    }
                    Err(BlobError::NoSpace(_)) => Outcome::Refused,
                    Err(e) if is_cut(&e) => Outcome::Cut(m.clone(), after),
                    Err(e) => panic!("snapshot: {e}"),
                }
            }
            80..=85 if !ro.is_empty() && ids.len() < 8 => {
                let id = pick(&mut self.rng, &ro);
                let mut after = m.clone();
                after.insert(
                    u64::MAX,
                    MBlob {
                        blocks: vec![None; m[&id].blocks.len()],
                        ro: false,
                        parent: Some(id),
                        xattr: None,
                    },
                );
                if std::env::var("BLOB_CRASH_TRACE").is_ok() {
                    eprintln!("clone {id:#x}");
                }
                match s.create_clone(id, &[]).await {
                    Ok(cid) => {
                        let c = after.remove(&u64::MAX).unwrap();
                        after.insert(cid, c);
                        Outcome::Done(after)
                    }
                    Err(BlobError::NoSpace(_)) => Outcome::Refused,
                    Err(e) if is_cut(&e) => Outcome::Cut(m.clone(), after),
                    Err(e) => panic!("clone: {e}"),
                }
            }
            86..=93 => {
                let id = pick(&mut self.rng, &ids);
                let cl = clones(m, id);
                let mut after = m.clone();
                let gone = after.remove(&id).unwrap();
                if cl.len() == 1 {
                    let c = after.get_mut(&cl[0]).unwrap();
                    // What the clone read through the snapshot it now
                    // has; past the snapshot's end, zeros.
                    for i in 0..c.blocks.len() {
                        if c.blocks[i].is_none() {
                            c.blocks[i] = match gone.blocks.get(i) {
                                Some(b) => b.clone(),
                                None => Some(vec![0]),
                            };
                        }
                    }
                    c.parent = gone.parent;
                }
                if std::env::var("BLOB_CRASH_TRACE").is_ok() {
                    eprintln!("delete {id:#x} (clones {cl:x?})");
                }
                match s.delete_blob(id).await {
                    Ok(()) => {
                        assert!(cl.len() < 2, "deleted a snapshot with {} clones", cl.len());
                        Outcome::Done(after)
                    }
                    Err(BlobError::Busy { .. }) => {
                        assert!(cl.len() >= 2, "busy without two clones");
                        Outcome::Refused
                    }
                    Err(e) if is_cut(&e) => Outcome::Cut(m.clone(), after),
                    Err(e) => panic!("delete: {e}"),
                }
            }
            94..=96 if !writable.is_empty() => {
                // Inflate or decouple: the blob reads the same.
                let id = pick(&mut self.rng, &writable);
                let mut after = m.clone();
                let n = m[&id].blocks.len();
                // Inflate: every block, no parent. Decouple: the
                // parent's blocks, and the parent's parent next.
                let p = m[&id].parent;
                let x = after.get_mut(&id).unwrap();
                for i in 0..n {
                    let take = op == 94
                        || p.is_some_and(|p| m[&p].blocks.get(i).is_some_and(Option::is_some));
                    if x.blocks[i].is_none() && take {
                        x.blocks[i] = Some(resolve(m, id, i));
                    }
                }
                x.parent = if op == 94 {
                    None
                } else {
                    p.and_then(|p| m[&p].parent)
                };
                let r = if op == 94 {
                    s.inflate(id).await
                } else {
                    s.decouple_parent(id).await
                };
                match r {
                    Ok(()) => Outcome::Done(after),
                    Err(BlobError::NoSpace(_) | BlobError::Invalid { .. }) => {
                        // No space midway: clusters allocated so far stay
                        // (the blob reads the same), the parent too.
                        let mut kept = m.clone();
                        kept.get_mut(&id).unwrap().blocks = after[&id].blocks.clone();
                        Outcome::Done(kept)
                    }
                    Err(e) if is_cut(&e) => {
                        let mut kept = m.clone();
                        kept.get_mut(&id).unwrap().blocks = after[&id].blocks.clone();
                        Outcome::Cut(kept, after)
                    }
                    Err(e) => panic!("inflate/decouple: {e}"),
                }
            }
            _ if !writable.is_empty() => {
                let id = pick(&mut self.rng, &writable);
                let len = 1 + self.rng.below(64) as usize;
                let v = self.rng.bytes(len);
                let b = s.open_blob(id).unwrap();
                b.set_xattr("k", &v).unwrap();
                if std::env::var("BLOB_CRASH_TRACE").is_ok() {
                    eprintln!("xattr on {id:#x}: {} bytes", v.len());
                }
                let mut after = m.clone();
                after.get_mut(&id).unwrap().xattr = Some(v);
                match b.sync_md().await {
                    Ok(()) => Outcome::Done(after),
                    Err(e) if is_cut(&e) => Outcome::Cut(m.clone(), after),
                    Err(e) => panic!("xattr: {e}"),
                }
            }
            _ => Outcome::Refused,
        }
    }
}

/// Whether store `s` shows model `m` (blobs, sizes, parents, flags,
/// xattrs), with `u64::MAX` standing for the one blob id not known in
/// advance; the model with real ids if so.
fn matches(s: &Blobstore, m: &Model, upc: usize) -> Option<Model> {
    let ids = s.blob_ids();
    let mut m = m.clone();
    if let Some(b) = m.remove(&u64::MAX) {
        let new: Vec<u64> = ids.iter().copied().filter(|i| !m.contains_key(i)).collect();
        if new.len() != 1 {
            return None;
        }
        for x in m.values_mut() {
            if x.parent == Some(u64::MAX) {
                x.parent = Some(new[0]);
            }
        }
        m.insert(new[0], b);
    }
    if ids != m.keys().copied().collect::<Vec<_>>() {
        return None;
    }
    for (id, mb) in &m {
        let b = s.open_blob(*id).ok()?;
        if b.num_clusters() as usize * upc != mb.blocks.len()
            || b.is_read_only() != mb.ro
            || b.parent() != mb.parent
        {
            return None;
        }
        if mb.xattr.is_some() && b.xattr("k") != mb.xattr {
            eprintln!("blob {id:#x}: xattr {:?} want {:?}", b.xattr("k"), mb.xattr);
            return None;
        }
    }
    Some(m)
}

async fn check_data(s: &Blobstore, ch: &BlobChannel, m: &Model, bs: usize) -> Result<(), String> {
    for (id, mb) in m {
        let b: Blob = s.open_blob(*id).unwrap();
        let n = mb.blocks.len();
        let buf = ch.alloc_buf(n * bs).unwrap();
        let buf = b
            .read(ch, 0, n as u64, buf)
            .await
            .map_err(|e| format!("reading blob {id:#x}: {e}"))?;
        let mut v = vec![0u8; n * bs];
        buf.read_at(0, &mut v);
        ch.free_buf(buf);
        for i in 0..n {
            let want = resolve(m, *id, i);
            let got = decode(&v[i * bs..(i + 1) * bs]);
            if !got.is_some_and(|t| want.contains(&t)) {
                return Err(format!(
                    "blob {id:#x} block {i}: {got:?}, expected one of {want:?}; allocated {:?}, parent {:x?}",
                    (0..b.num_clusters())
                        .map(|c| b.is_allocated(c))
                        .collect::<Vec<_>>(),
                    b.parent()
                ));
            }
        }
    }
    Ok(())
}

/// A case's result: the next tag, whether the cut fell inside an
/// operation.
fn run_case(seed: u64, dev: &'static str, bs: usize, tag_base: u32) -> Result<(u32, bool), String> {
    on(0, move || async move {
        let o = StoreOptions {
            cluster_size: CLUSTER,
            md_pages: Some(64),
            bstype: "CRASH".into(),
            clear: ClearMethod::None,
        };
        let s = Blobstore::init(bdev::open(dev, true, nop).unwrap(), &o)
            .await
            .map_err(|e| format!("init: {e}"))?;
        let ch = s.io_channel().unwrap();
        let mut case = Case {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            bs,
            upc: CLUSTER as usize / bs,
            next_tag: tag_base,
        };
        let after = case.rng.below(250);
        powercut::arm(dev, after, seed).unwrap();
        let mut m = Model::new();
        let mut alternatives = None;
        for _ in 0..80 {
            let o = case.step(&s, &ch, &m).await;
            if std::env::var("BLOB_CRASH_TRACE").is_ok() {
                let what = match &o {
                    Outcome::Done(_) => "done",
                    Outcome::Refused => "refused",
                    Outcome::Cut(..) => "cut",
                };
                eprintln!("  -> {what}; blobs {:x?}", s.blob_ids());
            }
            match o {
                Outcome::Done(n) => m = n,
                Outcome::Refused => {}
                Outcome::Cut(a, b) => {
                    alternatives = Some((a, b));
                    break;
                }
            }
            if powercut::is_off(dev).unwrap() {
                break;
            }
        }
        if !powercut::is_off(dev).unwrap() {
            powercut::cut(dev, seed).unwrap();
        }
        let inside = alternatives.is_some();
        let (a, b) = alternatives.unwrap_or_else(|| (m.clone(), m.clone()));
        drop(ch);
        drop(s);
        powercut::power_on(dev).unwrap();
        let s = Blobstore::load(bdev::open(dev, true, nop).unwrap())
            .await
            .map_err(|e| format!("load after the cut: {e}"))?;
        let ch = s.io_channel().unwrap();
        let upc = case.upc;
        // The outcome with the operation first: where both fit (a write
        // whose metadata is unchanged), its values are a superset.
        let m = matches(&s, &b, upc)
            .or_else(|| matches(&s, &a, upc))
            .ok_or_else(|| {
                let found: Vec<String> = s
                    .blob_ids()
                    .into_iter()
                    .map(|id| {
                        let b = s.open_blob(id).unwrap();
                        format!(
                            "{id:#x}: {} clusters ro {} parent {:x?}",
                            b.num_clusters(),
                            b.is_read_only(),
                            b.parent()
                        )
                    })
                    .collect();
                format!("the store shows neither outcome: {found:#?}\nwithout: {a:?}\nwith: {b:?}")
            })?;
        if let Err(e) = check_data(&s, &ch, &m, bs).await {
            let d = bdev::open(dev, false, nop).unwrap();
            let l = bdev::blob::load::load(&d).await.unwrap();
            for b in l.metadata.blobs.values() {
                eprintln!(
                    "{:#x}: pages {:?} table {:?} clusters {:?} n {}",
                    b.id, b.pages, b.extent_table, b.clusters, b.num_clusters
                );
            }
            return Err(e);
        }
        let r = s.check().await.map_err(|e| format!("fsck: {e}"))?;
        if !r.problems.is_empty() {
            return Err(format!("fsck: {:#?}", r.problems));
        }
        let allocated: u64 = s
            .blob_ids()
            .into_iter()
            .map(|id| s.open_blob(id).unwrap().allocated_clusters())
            .sum();
        if allocated + s.free_clusters() != s.total_data_clusters() {
            return Err(format!(
                "{allocated} clusters allocated, {} free, {} in all: leaked",
                s.free_clusters(),
                s.total_data_clusters()
            ));
        }
        Ok((case.next_tag, inside))
    })
}

#[test]
fn a_thousand_power_cuts_leave_the_store_consistent() {
    common::runtime();
    powercut::create("crash4k", (4 << 20) / 4096, 4096, None).unwrap();
    powercut::create("crash512", (4 << 20) / 512, 512, Some(4096)).unwrap();
    let cases: u64 = std::env::var("BLOB_CRASH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let only: Option<u64> = std::env::var("BLOB_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut tag = 0u32;
    let mut inside = 0;
    for seed in only.map_or(0..cases, |s| s..s + 1) {
        let (dev, bs) = if seed % 2 == 0 {
            ("crash4k", 4096)
        } else {
            ("crash512", 512)
        };
        match run_case(seed, dev, bs, tag) {
            Ok((t, i)) => {
                tag = t;
                inside += u32::from(i);
            }
            Err(e) => panic!("seed {seed} ({dev}): {e}\nrerun: BLOB_CRASH_SEED={seed}"),
        }
    }
    println!("{inside} cuts fell inside an operation, the rest between two");
}
