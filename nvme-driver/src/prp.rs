//! Physical Region Page (PRP) construction: turning a scatter-gather list of
//! IO-virtual segments into PRP1, PRP2 and a PRP list, with every alignment
//! rule of the specification checked.
//!
//! Rules (NVMe base specification, 4.1.1): the first segment may start at any
//! dword-aligned offset within a page; every later segment must start on a
//! page boundary; every segment but the last must end on a page boundary.
//! One entry per memory page touched; PRP2 is the second entry when exactly
//! two are needed, else the address of a list holding entries 2..n.

/// Why a buffer cannot be described with PRPs (the bdev layer bounce-buffers
/// such buffers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrpError {
    /// No data was given, or a segment is empty.
    #[error("empty data segment {segment}")]
    Empty {
        /// Index of the segment.
        segment: usize,
    },
    /// The first segment is not dword aligned.
    #[error("data buffer at IOVA {iova:#x} is not 4-byte aligned")]
    Unaligned {
        /// The offending address.
        iova: u64,
    },
    /// A later segment does not start on a page boundary, or an earlier one
    /// does not end on one.
    #[error("segment {segment} breaks PRP page alignment (a gap inside a page)")]
    Gap {
        /// Index of the segment.
        segment: usize,
    },
    /// More pages than one PRP list page holds.
    #[error("transfer of {bytes} bytes needs {pages} PRP entries, more than {max}")]
    TooLarge {
        /// Bytes in the transfer.
        bytes: usize,
        /// Entries needed.
        pages: usize,
        /// Entries possible.
        max: usize,
    },
}

/// The data pointer of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prps {
    /// PRP entry 1.
    pub prp1: u64,
    /// PRP entry 2 (0, the second page, or the list's address).
    pub prp2: u64,
    /// Entries written to the list.
    pub list_len: usize,
    /// Bytes described.
    pub bytes: usize,
}

/// Checks `segments` against the PRP rules (see the module docs) without
/// building anything; returns (pages touched, bytes). What a device's
/// "can it take these buffers" test needs, at the cost of one pass.
pub fn validate(segments: &[(u64, usize)], page: usize) -> Result<(usize, usize), PrpError> {
    debug_assert!(page.is_power_of_two());
    let mask = page as u64 - 1;
    if segments.is_empty() {
        return Err(PrpError::Empty { segment: 0 });
    }
    let mut pages = 0usize;
    let mut bytes = 0usize;
    let last = segments.len() - 1;
    for (i, &(iova, len)) in segments.iter().enumerate() {
        if len == 0 {
            return Err(PrpError::Empty { segment: i });
        }
        if i == 0 && iova & 3 != 0 {
            return Err(PrpError::Unaligned { iova });
        }
        if i > 0 && iova & mask != 0 {
            return Err(PrpError::Gap { segment: i });
        }
        let end = iova + len as u64;
        if i < last && end & mask != 0 {
            return Err(PrpError::Gap { segment: i });
        }
        let first_page = iova & !mask;
        let last_page = (end - 1) & !mask;
        pages += ((last_page - first_page) / page as u64) as usize + 1;
        bytes += len;
    }
    Ok((pages, bytes))
}

/// Builds the PRPs for `segments` (IOVA, length) with memory page size `page`
/// (a power of two). List entries are written through `list(index, entry)`
/// into a list of at most `list_cap` entries located at `list_iova` (page
/// aligned). Nothing is written on error.
pub fn build(
    segments: &[(u64, usize)],
    page: usize,
    list_iova: u64,
    list_cap: usize,
    mut list: impl FnMut(usize, u64),
) -> Result<Prps, PrpError> {
    let (pages, bytes) = validate(segments, page)?;
    let mask = page as u64 - 1;
    if pages > list_cap + 1 {
        return Err(PrpError::TooLarge {
            bytes,
            pages,
            max: list_cap + 1,
        });
    }
    // Second pass: emit the page addresses.
    let prp1 = segments[0].0;
    let mut n = 0usize; // entries emitted after the first
    let mut second = 0u64;
    let mut first_done = false;
    for &(iova, len) in segments {
        let end = iova + len as u64;
        let mut p = iova & !mask;
        while p < end {
            if !first_done {
                first_done = true;
            } else {
                if n == 0 {
                    second = p;
                }
                if pages > 2 {
                    list(n, p);
                }
                n += 1;
            }
            p += page as u64;
        }
    }
    let (prp2, list_len) = match pages {
        1 => (0, 0),
        2 => (second, 0),
        _ => (list_iova, n),
    };
    Ok(Prps {
        prp1,
        prp2,
        list_len,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = 4096;
    const LIST: u64 = 0xdead_0000;

    fn run(segs: &[(u64, usize)]) -> Result<(Prps, Vec<u64>), PrpError> {
        let mut list = vec![0u64; 512];
        let r = build(segs, P, LIST, 512, |i, e| list[i] = e)?;
        list.truncate(r.list_len);
        Ok((r, list))
    }

    #[test]
    fn one_page_aligned_and_offset() {
        let (r, l) = run(&[(0x10000, 4096)]).unwrap();
        assert_eq!((r.prp1, r.prp2, r.bytes), (0x10000, 0, 4096));
        assert!(l.is_empty());
        let (r, _) = run(&[(0x10200, 512)]).unwrap();
        assert_eq!((r.prp1, r.prp2), (0x10200, 0));
        // Offset buffer reaching exactly the page end is still one page.
        let (r, _) = run(&[(0x10200, 4096 - 0x200)]).unwrap();
        assert_eq!(r.prp2, 0);
    }

    #[test]
    fn two_pages_use_prp2_directly() {
        let (r, l) = run(&[(0x10000, 8192)]).unwrap();
        assert_eq!((r.prp1, r.prp2), (0x10000, 0x11000));
        assert!(l.is_empty());
        // Misaligned start crossing one boundary: two pages.
        let (r, _) = run(&[(0x10e00, 4096)]).unwrap();
        assert_eq!((r.prp1, r.prp2), (0x10e00, 0x11000));
    }

    #[test]
    fn three_or_more_pages_use_a_list() {
        let (r, l) = run(&[(0x10000, 3 * 4096)]).unwrap();
        assert_eq!((r.prp1, r.prp2), (0x10000, LIST));
        assert_eq!(l, vec![0x11000, 0x12000]);
        // Misaligned start: 8 KiB from offset 0x800 touches 3 pages.
        let (r, l) = run(&[(0x10800, 8192)]).unwrap();
        assert_eq!((r.prp1, r.prp2), (0x10800, LIST));
        assert_eq!(l, vec![0x11000, 0x12000]);
    }

    #[test]
    fn scatter_gather_segments() {
        // Tail of one page, two whole pages elsewhere, head of another page.
        let segs = [(0x10c00, 0x400), (0x50000, 8192), (0x90000, 100)];
        let (r, l) = run(&segs).unwrap();
        assert_eq!(r.prp1, 0x10c00);
        assert_eq!(r.prp2, LIST);
        assert_eq!(l, vec![0x50000, 0x51000, 0x90000]);
        assert_eq!(r.bytes, 0x400 + 8192 + 100);
        // Two segments, two pages.
        let (r, _) = run(&[(0x10000, 4096), (0x80000, 4096)]).unwrap();
        assert_eq!((r.prp1, r.prp2), (0x10000, 0x80000));
    }

    #[test]
    fn alignment_violations_are_rejected() {
        assert_eq!(run(&[]), Err(PrpError::Empty { segment: 0 }));
        assert_eq!(run(&[(0x10000, 0)]), Err(PrpError::Empty { segment: 0 }));
        assert_eq!(
            run(&[(0x10002, 512)]),
            Err(PrpError::Unaligned { iova: 0x10002 })
        );
        // Second segment not page aligned.
        assert_eq!(
            run(&[(0x10000, 4096), (0x20200, 512)]),
            Err(PrpError::Gap { segment: 1 })
        );
        // First segment not ending on a page boundary.
        assert_eq!(
            run(&[(0x10000, 2048), (0x20000, 512)]),
            Err(PrpError::Gap { segment: 0 })
        );
    }

    #[test]
    fn limits_are_enforced() {
        // 513 pages fit (1 in PRP1 + 512 in the list); 514 do not.
        let (r, l) = run(&[(0x100000, 513 * 4096)]).unwrap();
        assert_eq!(l.len(), 512);
        assert_eq!(r.bytes, 513 * 4096);
        assert_eq!(
            run(&[(0x100000, 514 * 4096)]),
            Err(PrpError::TooLarge {
                bytes: 514 * 4096,
                pages: 514,
                max: 513
            })
        );
    }
}
