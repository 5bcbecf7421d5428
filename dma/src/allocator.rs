//! First-fit extent allocator over the offsets of one region: free extents
//! kept sorted and coalesced. Pure logic, no memory is touched here.

use std::collections::BTreeMap;

/// Allocation granule: every extent is a multiple of a cache line.
pub const GRANULE: usize = 64;

/// Free extents of a region, by start offset.
#[derive(Debug)]
pub struct Extents {
    len: usize,
    free: BTreeMap<usize, usize>,
    free_bytes: usize,
}

/// Rounds `n` up to a multiple of `to` (a power of two), or `None` on overflow.
pub fn round_up(n: usize, to: usize) -> Option<usize> {
    debug_assert!(to.is_power_of_two());
    n.checked_add(to - 1).map(|v| v & !(to - 1))
}

impl Extents {
    /// A fully free region of `len` bytes (a multiple of [`GRANULE`]).
    pub fn new(len: usize) -> Self {
        assert!(
            len > 0 && len.is_multiple_of(GRANULE),
            "region length {len}"
        );
        let mut free = BTreeMap::new();
        free.insert(0, len);
        Extents {
            len,
            free,
            free_bytes: len,
        }
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> usize {
        self.free_bytes
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.free_bytes == self.len
    }

    /// Takes `len` bytes (a multiple of [`GRANULE`]) at an offset that is a
    /// multiple of `align` (a power of two). Returns the offset.
    pub fn alloc(&mut self, len: usize, align: usize) -> Option<usize> {
        debug_assert!(len > 0 && len.is_multiple_of(GRANULE) && align.is_power_of_two());
        let (start, ext_len, at) = self.free.iter().find_map(|(&start, &ext_len)| {
            let at = round_up(start, align)?;
            let end = at.checked_add(len)?;
            (end <= start + ext_len).then_some((start, ext_len, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        let tail = start + ext_len - (at + len);
        if tail > 0 {
            self.free.insert(at + len, tail);
        }
        self.free_bytes -= len;
        Some(at)
    }

    /// Gives back `len` bytes at `offset`, merging with free neighbours.
    ///
    /// # Panics
    /// If the range overlaps free space or lies outside the region: a double
    /// free is a bug in the caller, never outside input.
    pub fn free(&mut self, offset: usize, len: usize) {
        assert!(offset + len <= self.len, "free beyond region end");
        let mut start = offset;
        let mut end = offset + len;
        if let Some((&p, &plen)) = self.free.range(..=offset).next_back() {
            assert!(p + plen <= offset, "double free at offset {offset:#x}");
            if p + plen == offset {
                self.free.remove(&p);
                start = p;
            }
        }
        if let Some((&n, &nlen)) = self.free.range(offset..).next() {
            assert!(n >= end, "double free at offset {offset:#x}");
            if n == end {
                self.free.remove(&n);
                end = n + nlen;
            }
        }
        self.free.insert(start, end - start);
        self.free_bytes += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_aligned_and_coalesces_on_free() {
        let mut e = Extents::new(1 << 20);
        let a = e.alloc(64, 64).unwrap();
        let b = e.alloc(4096, 4096).unwrap();
        assert_eq!(a, 0);
        assert_eq!(b, 4096);
        // The gap between 64 and 4096 is reused by a small request.
        assert_eq!(e.alloc(128, 64), Some(64));
        assert_eq!(e.free_bytes(), (1 << 20) - 64 - 4096 - 128);
        e.free(64, 128);
        e.free(a, 64);
        e.free(b, 4096);
        assert!(e.is_empty());
        // Fully coalesced: the whole region can be taken again.
        assert_eq!(e.alloc(1 << 20, 1 << 20), Some(0));
        assert_eq!(e.alloc(64, 64), None);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut e = Extents::new(8192);
        let a = e.alloc(4096, 64).unwrap();
        e.free(a, 4096);
        e.free(a, 4096);
    }
}
