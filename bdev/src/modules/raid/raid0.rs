//! RAID 0's layout (SPDK's): the RAID's blocks in strips of `2^shift`
//! blocks dealt round-robin over `n` members; strip `s` is on member
//! `s % n`, at strip row `s / n` of the member's data area. An I/O within
//! one strip goes to one member (the layer splits I/O at strip boundaries:
//! the RAID's optimal I/O boundary is its strip); a range (flush, unmap,
//! write zeroes) becomes one contiguous range per member.

/// Where a block of a RAID 0 lives: (member, block within the member's
/// data area).
pub fn map_block(block: u64, shift: u32, n: u64) -> (usize, u64) {
    let strip = block >> shift;
    let within = block & ((1u64 << shift) - 1);
    ((strip % n) as usize, ((strip / n) << shift) + within)
}

/// The range `offset..offset + num` of a RAID 0 as one range per member
/// (start and length within its data area; `None` for a member it does
/// not touch), written into `out[..n]`.
pub fn member_ranges(offset: u64, num: u64, shift: u32, n: u64, out: &mut [Option<(u64, u64)>]) {
    for o in out.iter_mut().take(n as usize) {
        *o = None;
    }
    if num == 0 || n == 0 {
        return;
    }
    let strip = 1u64 << shift;
    let last = offset + num - 1;
    let (first_strip, last_strip) = (offset >> shift, last >> shift);
    let (first_member, last_member) = (first_strip % n, last_strip % n);
    let (first_row, last_row) = (first_strip / n, last_strip / n);
    for m in 0..n {
        // The member's first block in the range: in the first row when its
        // strip there is at or after the first strip, else in the next.
        let start = match m.cmp(&first_member) {
            std::cmp::Ordering::Less => (first_row + 1) << shift,
            std::cmp::Ordering::Equal => (first_row << shift) + (offset & (strip - 1)),
            std::cmp::Ordering::Greater => first_row << shift,
        };
        // Its last: in the last row when its strip there is at or before
        // the last strip, else in the row before.
        let end = match m.cmp(&last_member) {
            std::cmp::Ordering::Less => ((last_row + 1) << shift) - 1,
            std::cmp::Ordering::Equal => (last_row << shift) + (last & (strip - 1)),
            std::cmp::Ordering::Greater => match last_row {
                0 => continue,
                r => (r << shift) - 1,
            },
        };
        if start <= end {
            out[m as usize] = Some((start, end - start + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spdk_layout() {
        // Strips of 128 blocks over 2 members (the fixture's layout).
        assert_eq!(map_block(0, 7, 2), (0, 0));
        assert_eq!(map_block(127, 7, 2), (0, 127));
        assert_eq!(map_block(128, 7, 2), (1, 0));
        assert_eq!(map_block(256, 7, 2), (0, 128));
        assert_eq!(map_block(300, 7, 3), (2, 44));
        let mut r = [None; 3];
        // Strips 1..=4 of 3 members (strip 8 blocks): members 1, 2, 0, 1.
        member_ranges(8, 32, 3, 3, &mut r);
        assert_eq!(r, [Some((8, 8)), Some((0, 16)), Some((0, 8))]);
    }

    proptest! {
        /// Every block of the range lands in exactly its member's range,
        /// and the ranges hold nothing else.
        #[test]
        fn ranges_cover_exactly_the_blocks(offset in 0u64..4096, num in 1u64..2048, shift in 0u32..6, n in 1u64..6) {
            let mut r = [None; 8];
            member_ranges(offset, num, shift, n, &mut r);
            let mut counts = [0u64; 8];
            for b in offset..offset + num {
                let (m, mb) = map_block(b, shift, n);
                let (s, len) = r[m].expect("the member of a block in range has a range");
                prop_assert!(mb >= s && mb < s + len, "block {} -> member {} block {} outside {:?}", b, m, mb, (s, len));
                counts[m] += 1;
            }
            for m in 0..n as usize {
                prop_assert_eq!(r[m].map_or(0, |(_, l)| l), counts[m], "member {}", m);
            }
        }
    }
}
