//! Submission and completion rings in DMA memory: tail and head indices,
//! ring wrap, and the completion phase tag.

use std::sync::atomic::{Ordering, compiler_fence};

use dma::DmaBuf;

use crate::spec::{Cqe, Sqe};

/// Orders the submission entry stores before the doorbell store. On x86-64
/// stores to write-back memory are not reordered with each other, so a
/// compiler barrier is enough (as SPDK's `spdk_wmb`); elsewhere a full fence.
#[inline]
pub(crate) fn wmb() {
    #[cfg(target_arch = "x86_64")]
    compiler_fence(Ordering::SeqCst);
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// Orders the completion phase-tag load before the loads of the rest of the
/// entry.
#[inline]
pub(crate) fn rmb() {
    #[cfg(target_arch = "x86_64")]
    compiler_fence(Ordering::SeqCst);
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// A submission ring of `entries` 64-byte slots.
#[derive(Debug)]
pub struct SubmissionRing {
    mem: DmaBuf,
    entries: u16,
    tail: u16,
    head: u16,
}

impl SubmissionRing {
    /// A ring over `mem`, which holds at least `entries` slots.
    pub fn new(mem: DmaBuf, entries: u16) -> Self {
        assert!(entries >= 2, "a ring needs two slots");
        assert!(mem.len() >= entries as usize * 64, "ring memory too small");
        SubmissionRing {
            mem,
            entries,
            tail: 0,
            head: 0,
        }
    }

    /// IO-virtual address of the ring.
    pub fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// The ring's memory.
    pub(crate) fn into_mem(self) -> DmaBuf {
        self.mem
    }

    /// The entry in `slot` (tests read back what was placed).
    #[cfg(test)]
    pub fn entry(&self, slot: u16) -> Sqe {
        self.mem.read_volatile::<Sqe>(slot as usize * 64)
    }

    /// Number of slots.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Current tail (the next slot to fill).
    pub fn tail(&self) -> u16 {
        self.tail
    }

    /// Whether every usable slot is taken (one slot always stays empty).
    pub fn is_full(&self) -> bool {
        (self.tail + 1) % self.entries == self.head
    }

    /// Writes `sqe` at the tail and advances it.
    ///
    /// # Panics
    /// If the ring is full; callers check [`SubmissionRing::is_full`].
    pub fn push(&mut self, sqe: &Sqe) {
        assert!(!self.is_full(), "submission ring overflow");
        self.mem
            .write_volatile::<Sqe>(self.tail as usize * 64, *sqe);
        self.tail = (self.tail + 1) % self.entries;
    }

    /// Records the head the controller reported in a completion.
    pub fn set_head(&mut self, head: u16) {
        if head < self.entries {
            self.head = head;
        }
    }

    /// Forgets every entry (after a controller reset).
    pub fn reset(&mut self) {
        self.tail = 0;
        self.head = 0;
    }
}

/// A completion ring of `entries` 16-byte slots.
#[derive(Debug)]
pub struct CompletionRing {
    mem: DmaBuf,
    entries: u16,
    head: u16,
    phase: bool,
}

impl CompletionRing {
    /// A ring over `mem` (zeroed here), which holds at least `entries` slots.
    pub fn new(mut mem: DmaBuf, entries: u16) -> Self {
        assert!(entries >= 2, "a ring needs two slots");
        assert!(mem.len() >= entries as usize * 16, "ring memory too small");
        mem.fill(0);
        CompletionRing {
            mem,
            entries,
            head: 0,
            phase: true,
        }
    }

    /// IO-virtual address of the ring.
    pub fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// The ring's memory.
    pub(crate) fn into_mem(self) -> DmaBuf {
        self.mem
    }

    /// Number of slots.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    #[cfg(test)]
    pub(crate) fn base_ptr(&self) -> *mut u8 {
        self.mem.as_ptr()
    }

    /// Current head.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The entry at the head if the controller has posted it (its phase tag
    /// matches the current phase).
    #[inline]
    pub fn peek(&self) -> Option<Cqe> {
        let off = self.head as usize * 16;
        let dw3: u32 = self.mem.read_volatile(off + 12);
        if (dw3 & (1 << 16) != 0) != self.phase {
            return None;
        }
        rmb();
        Some(Cqe {
            dw0: self.mem.read_volatile(off),
            dw1: self.mem.read_volatile(off + 4),
            dw2: self.mem.read_volatile(off + 8),
            dw3,
        })
    }

    /// How many entries from the head the controller has posted (not
    /// consumed): a look, nothing changes.
    pub fn posted(&self) -> usize {
        let (mut slot, mut phase) = (self.head, self.phase);
        for n in 0..self.entries as usize {
            let dw3: u32 = self.mem.read_volatile(slot as usize * 16 + 12);
            if (dw3 & (1 << 16) != 0) != phase {
                return n;
            }
            slot += 1;
            if slot == self.entries {
                slot = 0;
                phase = !phase;
            }
        }
        self.entries as usize
    }

    /// Consumes the head entry; the phase flips when the head wraps.
    #[inline]
    pub fn advance(&mut self) {
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
    }

    /// Zeroes the ring and starts again at phase 1 (after a controller reset,
    /// before the queue is created again).
    pub fn reset(&mut self) {
        self.mem.fill(0);
        self.head = 0;
        self.phase = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dma::{DmaConfig, DmaMemory};

    fn mem() -> DmaMemory {
        DmaMemory::new(DmaConfig::anonymous(8 << 20)).unwrap()
    }

    #[test]
    fn submission_ring_wraps_and_keeps_one_slot_free() {
        let m = mem();
        let mut sq = SubmissionRing::new(m.alloc(4 * 64, 4096).unwrap(), 4);
        for i in 0..3 {
            assert!(!sq.is_full());
            sq.push(&Sqe::new(i, 1));
        }
        assert!(sq.is_full(), "3 of 4 slots used: full");
        assert_eq!(sq.tail(), 3);
        sq.set_head(2);
        sq.push(&Sqe::new(9, 1));
        assert_eq!(sq.tail(), 0, "tail wrapped");
        sq.push(&Sqe::new(10, 1));
        assert!(sq.is_full());
        // A bogus head from a device is ignored.
        sq.set_head(200);
        assert!(sq.is_full());
    }

    #[test]
    fn completion_ring_phase_flips_on_wrap() {
        let m = mem();
        let buf = m.alloc(4 * 16, 4096).unwrap();
        let raw = buf.as_ptr();
        let mut cq = CompletionRing::new(buf, 4);
        let post = |slot: usize, cid: u16, phase: bool| {
            let dw3 = cid as u32 | (phase as u32) << 16;
            // SAFETY: in-bounds aligned write into the ring the test owns; no
            // reference into it exists.
            unsafe { raw.add(slot * 16 + 12).cast::<u32>().write_volatile(dw3) };
        };
        assert_eq!(cq.peek(), None);
        for round in 0..3u16 {
            let phase = round % 2 == 0;
            for slot in 0..4 {
                assert_eq!(cq.peek(), None, "round {round} slot {slot}: not yet posted");
                post(slot, round * 4 + slot as u16, phase);
                let e = cq.peek().expect("posted");
                assert_eq!(e.cid(), round * 4 + slot as u16);
                cq.advance();
            }
        }
        cq.reset();
        assert_eq!(cq.head(), 0);
        assert_eq!(cq.peek(), None);
    }
}
