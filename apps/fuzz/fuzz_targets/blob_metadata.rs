//! libFuzzer target: the blob store's super block, metadata page and mask
//! parsers never panic; a super block or metadata page that parses encodes
//! back to bytes that parse to the same thing; a metadata region of fuzzed
//! pages scans without panic.
#![no_main]

use bdev::blob::mask::{Mask, MaskType};
use bdev::blob::md_page::MdPage;
use bdev::blob::metadata::Metadata;
use bdev::blob::super_block::{Region, SuperBlock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut page = [0u8; 4096];
    let n = data.len().min(4092);
    page[..n].copy_from_slice(&data[..n]);
    // The CRC made right, so the fuzzer reaches past it.
    let crc = bdev::crc32c::checksum(&page[..4092]);
    page[4092..].copy_from_slice(&crc.to_le_bytes());
    if let Ok(sb) = SuperBlock::parse(&page) {
        assert_eq!(SuperBlock::parse(&sb.encode()).unwrap(), sb);
    }
    if let Ok(p) = MdPage::parse(0, &page)
        && let Ok(b) = p.encode()
    {
        assert_eq!(MdPage::parse(0, &b).unwrap(), p);
    }
    let _ = Mask::parse(MaskType::UsedClusters, &page);
    // Four metadata pages made of the input, scanned as a store's.
    let sb = SuperBlock {
        version: 3,
        clean: false,
        super_blob: u64::MAX,
        cluster_size: 1 << 20,
        used_page_mask: Region { start: 1, len: 1 },
        used_cluster_mask: Region { start: 2, len: 1 },
        md: Region { start: 4, len: 4 },
        bstype: [0; 16],
        used_blobid_mask: Region { start: 3, len: 1 },
        size: 64 << 20,
        io_unit_size: 512,
    };
    let mut read = |p: u32| {
        let mut pg = page;
        pg[8] ^= p as u8;
        let crc = bdev::crc32c::checksum(&pg[..4092]);
        pg[4092..].copy_from_slice(&crc.to_le_bytes());
        Ok(pg.to_vec())
    };
    if let Ok((m, _)) = Metadata::scan(&sb, &mut read) {
        let _ = m.check(&sb, None);
    }
});
