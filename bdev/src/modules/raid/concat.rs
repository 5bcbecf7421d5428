//! Concat's layout (SPDK's): the members' data areas one after another, in
//! slot order, each rounded down to whole strips; a block lives on the
//! member whose span holds it. An I/O that crosses a member boundary is
//! split there (the layer splits I/O at strip boundaries, and member spans
//! are whole strips); a range becomes one range per member it touches.

/// Where a block of a concat lives, given each member's size in blocks
/// (`sizes`, in slot order): (member, block within its data area), or
/// `None` past the end.
pub fn map_block(block: u64, sizes: &[u64]) -> Option<(usize, u64)> {
    let mut start = 0u64;
    for (m, &size) in sizes.iter().enumerate() {
        if block < start + size {
            return Some((m, block - start));
        }
        start += size;
    }
    None
}

/// The range `offset..offset + num` as one range per member (start and
/// length within its data area; `None` where it does not reach), into
/// `out[..sizes.len()]`. Blocks past the end are not placed anywhere.
pub fn member_ranges(offset: u64, num: u64, sizes: &[u64], out: &mut [Option<(u64, u64)>]) {
    let end = offset.saturating_add(num);
    let mut start = 0u64;
    for (m, &size) in sizes.iter().enumerate() {
        let (a, b) = (offset.max(start), end.min(start + size));
        out[m] = (a < b).then(|| (a - start, b - a));
        start += size;
    }
}

/// A member's usable size: its data area rounded down to whole strips of
/// `2^shift` blocks.
pub fn member_size(data_size: u64, shift: u32) -> u64 {
    (data_size >> shift) << shift
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn members_one_after_another() {
        let sizes = [128, 256, 64];
        assert_eq!(map_block(0, &sizes), Some((0, 0)));
        assert_eq!(map_block(127, &sizes), Some((0, 127)));
        assert_eq!(map_block(128, &sizes), Some((1, 0)));
        assert_eq!(map_block(447, &sizes), Some((2, 63)));
        assert_eq!(map_block(448, &sizes), None);
        let mut r = [None; 3];
        member_ranges(100, 400, &sizes, &mut r);
        assert_eq!(r, [Some((100, 28)), Some((0, 256)), Some((0, 64))]);
        assert_eq!(member_size(1000, 6), 960);
    }

    proptest! {
        #[test]
        fn ranges_cover_exactly_the_blocks(offset in 0u64..600, num in 1u64..600, a in 1u64..200, b in 1u64..200, c in 1u64..200) {
            let sizes = [a, b, c];
            let mut r = [None; 3];
            member_ranges(offset, num, &sizes, &mut r);
            let mut counts = [0u64; 3];
            for blk in offset..offset + num {
                if let Some((m, mb)) = map_block(blk, &sizes) {
                    let (s, len) = r[m].expect("a range for the member");
                    prop_assert!(mb >= s && mb < s + len);
                    counts[m] += 1;
                }
            }
            for m in 0..3 {
                prop_assert_eq!(r[m].map_or(0, |(_, l)| l), counts[m]);
            }
        }
    }
}
