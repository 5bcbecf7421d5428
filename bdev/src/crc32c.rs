//! CRC32C (Castagnoli, reflected), as SPDK's on-disk formats use it: the
//! RAID superblock with initial value 0 and no final inversion
//! ([`update`] from 0), the blobstore's super block and metadata pages as
//! the standard checksum ([`checksum`]: initial value and final inversion
//! all ones).

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

/// `crc` carried over `data` (no inversion either side; SPDK's
/// `spdk_crc32c_update`).
pub fn update(crc: u32, data: &[u8]) -> u32 {
    data.iter().fold(crc, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// The standard CRC32C of `data` (initial value and final inversion all
/// ones): 0xE3069283 for "123456789".
pub fn checksum(data: &[u8]) -> u32 {
    !update(!0, data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_value() {
        assert_eq!(super::checksum(b"123456789"), 0xE306_9283);
    }
}
