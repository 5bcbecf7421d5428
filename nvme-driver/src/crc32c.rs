//! CRC32C (Castagnoli, reflected), as SPDK's on-disk formats and NVMe/TCP
//! use it: the RAID superblock with initial value 0 and no final
//! inversion ([`update`] from 0), the blobstore's super block and metadata
//! pages and NVMe/TCP's header and data digests as the standard checksum
//! ([`checksum`]: initial value and final inversion all ones).
//!
//! On x86-64 with SSE 4.2 the CRC32 instruction does the work, eight bytes
//! at a time (chosen at run time); elsewhere a table does, a byte at a
//! time.

const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static TABLE: [u32; 256] = table();

fn update_table(crc: u32, data: &[u8]) -> u32 {
    data.iter().fold(crc, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut c = u64::from(crc);
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        c = _mm_crc32_u64(c, u64::from_le_bytes(a));
    }
    let mut c = c as u32;
    for &b in chunks.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    c
}

/// `crc` carried over `data` (no inversion either side; SPDK's
/// `spdk_crc32c_update`).
pub fn update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2 (checked just above), the only
        // requirement of `update_sse42`.
        return unsafe { update_sse42(crc, data) };
    }
    update_table(crc, data)
}

/// The standard CRC32C of `data` (initial value and final inversion all
/// ones): 0xE3069283 for "123456789".
pub fn checksum(data: &[u8]) -> u32 {
    !update(!0, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(checksum(b"123456789"), 0xE306_9283);
        assert_eq!(!update_table(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn instruction_and_table_agree() {
        let data: Vec<u8> = (0..1031u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 1000, 1031] {
            for start in [0, 1, 3] {
                let d = &data[start..len.max(start)];
                assert_eq!(
                    update(0x1234_5678, d),
                    update_table(0x1234_5678, d),
                    "len {len}"
                );
            }
        }
    }
}
