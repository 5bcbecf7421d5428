//! The crypto vbdev: IEEE 1619 known answers, equality with the `xts-mode`
//! crate, named keys, the I/O path over malloc and null bdevs (split
//! segments, chunked writes, write zeroes, pass-through types), a volume
//! decrypted by OpenSSL, the tweak modes, and resize and removal through
//! one and two layers.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use aes::Aes128;
use aes::cipher::{Array, KeyInit};
use bdev::modules::crypto::{self, Direction, Engine, XtsCipher};
use bdev::modules::{malloc, null, passthru};
use bdev::{BdevError, BdevEvent, BdevIo, IoStatus, IoType, IoVec};
use common::{Rng, on, wait_until};
use dma::DmaBuf;
use xts_mode::{Xts128, get_tweak_default};

fn nop(_: &str, _: BdevEvent) {}

mod xts_engines;

use xts_engines::{
    K128_1, K128_2, K256_1, K256_2, check_engine, check_kat, hex, reference, unhex, vectors_128,
    vectors_256,
};

#[test]
fn ieee1619_xts_aes_128_vectors_1_to_9() {
    for v in vectors_128() {
        check_kat(v, None);
    }
}

#[test]
fn ieee1619_xts_aes_256_vectors_10_to_14() {
    for v in vectors_256() {
        check_kat(v, None);
    }
}

// ---------------------------------------------------------------------------
// Every engine: each test is ignored, with the reason, where the CPU that
// built the tests lacks the engine (bdev/build.rs sets `crypto_cpu_*`).
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(crypto_cpu_vaes512),
    ignore = "skipped: vaes512 needs VAES, AVX-512F, AVX-512BW and VPCLMULQDQ, which this CPU lacks"
)]
fn engine_vaes512_ieee1619_vectors_and_equal_to_xts_mode() {
    check_engine(Engine::Vaes512, 0x7a51_2e9c);
}

#[test]
#[cfg_attr(
    not(crypto_cpu_vaes256),
    ignore = "skipped: vaes256 needs VAES and AVX2, which this CPU lacks"
)]
fn engine_vaes256_ieee1619_vectors_and_equal_to_xts_mode() {
    check_engine(Engine::Vaes256, 0x7a25_6e9c);
}

#[test]
#[cfg_attr(
    not(crypto_cpu_aesni),
    ignore = "skipped: aesni needs AES-NI, which this CPU lacks"
)]
fn engine_aesni_ieee1619_vectors_and_equal_to_xts_mode() {
    check_engine(Engine::Aesni, 0xae5a_1e9c);
}

#[test]
fn engine_soft_ieee1619_vectors_and_equal_to_xts_mode() {
    check_engine(Engine::Soft, 0x50f7_e9c0);
}

#[test]
fn the_default_engine_is_the_best_this_cpu_runs_and_is_reported() {
    let x = XtsCipher::new(&[1; 16], &[2; 16]).unwrap();
    match std::env::var(crypto::ENGINE_ENV) {
        Ok(v) => assert_eq!(Some(x.engine()), Engine::parse(&v)),
        Err(_) => assert_eq!(x.engine(), Engine::best()),
    }
    assert!(format!("{x:?}").contains(x.engine().name()));
    let e = Engine::ALL.into_iter().find(|e| !e.available());
    if let Some(e) = e {
        let err = XtsCipher::with_engine(&[1; 16], &[2; 16], e).unwrap_err();
        assert!(err.to_string().contains(e.needs()), "{err}");
    }
}

#[test]
fn equals_xts_mode_on_random_data_sector_sizes_and_lbas() {
    let seed = 0x5eed_c0de_1234_5678u64;
    println!("seed {seed:#x}");
    let mut rng = Rng(seed);
    for round in 0..300 {
        let klen = if rng.next().is_multiple_of(2) { 16 } else { 32 };
        let key = rng.bytes(klen);
        let key2 = rng.bytes(klen);
        let unit = if rng.next().is_multiple_of(2) {
            512
        } else {
            4096
        };
        let units = 1 + (rng.next() % 40) as usize;
        let lba = match round % 3 {
            0 => rng.next() % 1_000_000,
            1 => rng.next(),
            _ => u64::MAX - (rng.next() % 1000),
        } as u128;
        let data = rng.bytes(unit * units);
        let x = XtsCipher::new(&key, &key2).unwrap();
        for dir in [Direction::Encrypt, Direction::Decrypt] {
            let mut want = data.clone();
            reference(&key, &key2, dir, &mut want, unit, lba);
            let mut got = data.clone();
            match dir {
                Direction::Encrypt => x.encrypt_units(&mut got, unit, lba),
                Direction::Decrypt => x.decrypt_units(&mut got, unit, lba),
            }
            assert!(
                got == want,
                "seed {seed:#x} round {round}: {dir:?} of {units} x {unit} B at LBA {lba}, \
                 AES-{} differs from xts-mode",
                klen * 8
            );
        }
    }
}

#[test]
#[should_panic(expected = "whole 16-byte blocks")]
fn data_units_must_be_whole_aes_blocks() {
    let x = XtsCipher::new(&[1; 16], &[2; 16]).unwrap();
    x.encrypt_units(&mut [0; 40], 20, 0);
}

// ---------------------------------------------------------------------------
// Named keys.
// ---------------------------------------------------------------------------

const HEX_A128: &str = "000102030405060708090a0b0c0d0e0f";
const HEX_B128: &str = "f0e0d0c0b0a090807060504030201000";

fn invalid_what(e: &BdevError) -> &str {
    match e {
        BdevError::Invalid { what, .. } => what,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn keys_are_created_listed_refused_and_destroyed() {
    crypto::key_create("k_api", "AES_XTS", HEX_A128, HEX_B128, None).unwrap();
    let got = crypto::keys_get(Some("k_api"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["name"], "k_api");
    assert_eq!(got[0]["cipher"], "AES_XTS");
    assert_eq!(got[0]["key"], HEX_A128);
    assert_eq!(got[0]["key2"], HEX_B128);
    assert_eq!(got[0]["tweak_mode"], "SIMPLE_LBA");
    assert!(crypto::keys_get(None).iter().any(|k| k["name"] == "k_api"));
    assert!(crypto::keys_get(Some("k_none")).is_empty());
    let cfg = crypto::keys_config_json();
    assert!(
        cfg.iter()
            .any(|c| c["method"] == "accel_crypto_key_create" && c["params"]["name"] == "k_api")
    );

    // Every refusal names the parameter and never shows key material.
    let secret = "00112233445566778899aabbccddeeff";
    let cases: Vec<(&str, Result<(), BdevError>)> = vec![
        (
            "key2",
            crypto::key_create("k_bad", "AES_XTS", secret, secret, None),
        ),
        (
            "key2",
            crypto::key_create("k_bad", "AES_XTS", &secret.to_uppercase(), secret, None),
        ),
        (
            "key",
            crypto::key_create("k_bad", "AES_XTS", &secret[..30], HEX_B128, None),
        ),
        (
            "key",
            crypto::key_create(
                "k_bad",
                "AES_XTS",
                &format!("{}zz", &secret[..30]),
                HEX_B128,
                None,
            ),
        ),
        (
            "key2",
            crypto::key_create(
                "k_bad",
                "AES_XTS",
                secret,
                &format!("{HEX_B128}{HEX_B128}"),
                None,
            ),
        ),
        (
            "key2",
            crypto::key_create("k_bad", "AES_XTS", secret, "", None),
        ),
        (
            "key",
            crypto::key_create("k_bad", "AES_XTS", &format!("{secret}0011"), HEX_B128, None),
        ),
        (
            "cipher",
            crypto::key_create("k_bad", "AES_CBC", secret, HEX_B128, None),
        ),
        (
            "tweak_mode",
            crypto::key_create("k_bad", "AES_XTS", secret, HEX_B128, Some("LBA_SIDEWAYS")),
        ),
        (
            "name",
            crypto::key_create("k_api", "AES_XTS", secret, HEX_B128, None),
        ),
        (
            "name",
            crypto::key_create("", "AES_XTS", secret, HEX_B128, None),
        ),
    ];
    for (what, r) in cases {
        let e = r.unwrap_err();
        assert_eq!(invalid_what(&e), what, "{e}");
        let msg = format!("{e} {e:?}");
        assert!(
            !msg.contains(&secret[..16]) && !msg.to_lowercase().contains("00112233"),
            "key material in an error: {msg}"
        );
    }
    let e = crypto::key_create("k_bad", "AES_XTS", secret, secret, None).unwrap_err();
    assert!(e.to_string().contains("different"), "{e}");
    assert!(crypto::keys_get(Some("k_bad")).is_empty());

    // The other SPDK tweak modes and 256-bit keys.
    for (i, mode) in [
        "SIMPLE_LBA",
        "JOIN_NEG_LBA_WITH_LBA",
        "INCR_512_FULL_LBA",
        "INCR_512_UPPER_LBA",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("k_mode{i}");
        crypto::key_create(&name, "AES_XTS", K256_1, K256_2, Some(mode)).unwrap();
        assert_eq!(crypto::keys_get(Some(&name))[0]["tweak_mode"], mode);
        crypto::key_destroy(&name).unwrap();
    }

    // Destroy: refused while a bdev uses the key, then allowed.
    malloc::create("m_keyuse", 64, 512, None).unwrap();
    crypto::create("m_keyuse", "c_keyuse", "k_api", None).unwrap();
    let e = crypto::key_destroy("k_api").unwrap_err();
    assert!(
        matches!(&e, BdevError::Busy { bdev, .. } if bdev == "c_keyuse"),
        "{e:?}"
    );
    assert!(e.to_string().contains("k_api"), "{e}");
    assert_eq!(
        invalid_what(&crypto::create("m_keyuse", "c_keyuse2", "k_missing", None).unwrap_err()),
        "key_name"
    );
    on(0, || async {
        crypto::delete("c_keyuse").await.unwrap();
        malloc::delete("m_keyuse").await.unwrap();
    });
    crypto::key_destroy("k_api").unwrap();
    assert_eq!(
        invalid_what(&crypto::key_destroy("k_api").unwrap_err()),
        "key_name"
    );
    assert!(crypto::keys_get(Some("k_api")).is_empty());
}

#[test]
fn key_debug_output_is_redacted() {
    crypto::key_create("k_dbg", "AES_XTS", HEX_A128, HEX_B128, None).unwrap();
    malloc::create("m_dbg", 16, 512, None).unwrap();
    let b = crypto::create("m_dbg", "c_dbg", "k_dbg", None).unwrap();
    let x = XtsCipher::new(&unhex(HEX_A128), &unhex(HEX_B128)).unwrap();
    for s in [
        format!("{x:?}"),
        format!("{b:?}"),
        b.dump_info_json().to_string(),
    ] {
        assert!(
            !s.contains("0102030405") && !s.contains("f0e0d0c0"),
            "key material shown: {s}"
        );
    }
    on(0, || async {
        crypto::delete("c_dbg").await.unwrap();
        malloc::delete("m_dbg").await.unwrap();
    });
    crypto::key_destroy("k_dbg").unwrap();
}

// ---------------------------------------------------------------------------
// The bdev.
// ---------------------------------------------------------------------------

fn dma(data: &[u8], extra: usize) -> DmaBuf {
    let mut b = bdev::memory().alloc(data.len() + extra, 4096).unwrap();
    b.fill(0xee);
    b.write_at(0, data);
    b
}

fn read_all(b: &DmaBuf, off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    b.read_at(off, &mut v);
    v
}

/// Submits over caller segments and waits for the status.
async fn io_iovs(ch: &bdev::BdevChannel, ty: IoType, lba: u64, n: u64, iov: &[IoVec]) -> IoStatus {
    use std::cell::Cell;
    use std::rc::Rc;
    fn cb(io: &mut BdevIo, st: IoStatus) {
        // SAFETY: `ctx` is the `Rc` leaked below, rebuilt once.
        let slot = unsafe { Rc::from_raw(io.ctx() as *const Cell<Option<IoStatus>>) };
        slot.set(Some(st));
    }
    let slot = Rc::new(Cell::new(None));
    let ctx = Rc::into_raw(slot.clone()) as usize;
    // SAFETY: the caller's buffers outlive the wait below.
    unsafe { ch.submit_iovs(ty, lba, n, iov, false, cb, ctx).unwrap() };
    loop {
        if let Some(st) = slot.get() {
            return st;
        }
        reactor::yield_now().await;
    }
}

async fn read_blocks(ch: &bdev::BdevChannel, lba: u64, n: u64, bs: usize) -> Vec<u8> {
    let len = n as usize * bs;
    let (st, b) = ch
        .io(
            IoType::Read,
            Some(bdev::memory().alloc(len, 4096).unwrap()),
            lba,
            n,
            false,
        )
        .await
        .unwrap();
    assert_eq!(st, IoStatus::Success, "read {n} blocks at {lba}");
    read_all(&b.unwrap(), 0, len)
}

/// Writes through the crypto bdev from cut segments, reads back, checks
/// what lies in the base against the cipher, and every other I/O type.
/// Directly over malloc the crypto bdev uses malloc's zero-copy windows;
/// with `via_passthru` (malloc → passthru → crypto) it writes through its
/// DMA buffers and decrypts in place.
fn round_trip(bs: usize, key: &str, key2: &str, seed: u64, via_passthru: bool) {
    let tag = format!("{bs}_{}_{}", key.len() * 4, via_passthru as u8);
    let (kname, mname, cname) = (
        format!("k_rt{tag}"),
        format!("m_rt{tag}"),
        format!("c_rt{tag}"),
    );
    crypto::key_create(&kname, "AES_XTS", key, key2, None).unwrap();
    let blocks = (4 << 20) / bs as u64;
    malloc::create(&mname, blocks, bs as u32, None).unwrap();
    let pname = format!("p_rt{tag}");
    let base = if via_passthru {
        passthru::create(&mname, &pname, None).unwrap();
        pname.as_str()
    } else {
        mname.as_str()
    };
    assert_eq!(
        bdev::get(base).unwrap().io_type_supported(IoType::Zcopy),
        !via_passthru
    );
    let b = crypto::create(base, &cname, &kname, None).unwrap();
    assert!(!b.io_type_supported(IoType::Zcopy));
    assert_eq!((b.block_size() as usize, b.num_blocks()), (bs, blocks));
    assert_eq!(b.module(), "crypto");
    for ty in [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
        IoType::Reset,
    ] {
        assert!(b.io_type_supported(ty), "{ty:?}");
    }
    assert!(!b.io_type_supported(IoType::Compare));
    let info = b.dump_info_json();
    assert_eq!(info["crypto"]["base_bdev_name"], base);
    assert_eq!(info["crypto"]["key_name"], kname.as_str());
    let engine = XtsCipher::new(&[1; 16], &[2; 16]).unwrap().engine();
    assert_eq!(info["crypto"]["engine"], engine.name());
    let cfg = b.write_config_json().unwrap();
    assert_eq!(cfg["method"], "bdev_crypto_create");
    assert_eq!(cfg["params"]["key_name"], kname.as_str());
    assert_eq!(
        bdev::get(base).unwrap().claimed_by().as_deref(),
        Some("crypto")
    );
    let x = XtsCipher::new(&unhex(key), &unhex(key2)).unwrap();
    let (c2, m2) = (cname.clone(), mname.clone());
    on(0, move || async move {
        let mut rng = Rng(seed);
        let desc = bdev::open(&c2, true, nop).unwrap();
        let ch = desc.get_io_channel().unwrap();
        let raw_desc = bdev::open(&m2, false, nop).unwrap();
        let raw = raw_desc.get_io_channel().unwrap();
        // Never-written blocks of the (zeroed) malloc disk read as the
        // decryption of zeroes.
        let mut expected = vec![0u8; blocks as usize * bs];
        x.decrypt_units(&mut expected, bs, 0);
        for i in 0..40 {
            // Up to 300 KiB (more than one 128 KiB chunk), from up to four
            // segments cut at odd bytes (inside AES blocks and blocks).
            let n = if i % 8 == 0 {
                (300 << 10) / bs as u64
            } else {
                1 + rng.next() % 24
            };
            let lba = rng.next() % (blocks - n);
            let len = n as usize * bs;
            let data = rng.bytes(len);
            let buf = dma(&data, 64);
            let mut cuts = vec![0, len];
            for _ in 0..(i % 4) {
                cuts.push(1 + (rng.next() as usize) % (len - 1));
            }
            cuts.sort_unstable();
            cuts.dedup();
            let iov: Vec<IoVec> = cuts
                .windows(2)
                .map(|w| IoVec::of(&buf, w[0], w[1] - w[0]))
                .collect();
            let st = io_iovs(&ch, IoType::Write, lba, n, &iov).await;
            assert_eq!(st, IoStatus::Success, "write {i}: {n} blocks at {lba}");
            assert_eq!(
                read_all(&buf, 0, len),
                data,
                "write {i}: the caller's buffer was modified"
            );
            expected[lba as usize * bs..][..len].copy_from_slice(&data);
            // Read back into other cut segments.
            let rb = dma(&vec![0; len], 64);
            let riov: Vec<IoVec> = cuts
                .windows(2)
                .map(|w| IoVec::of(&rb, w[0] + 3, w[1] - w[0]))
                .collect();
            let st = io_iovs(&ch, IoType::Read, lba, n, &riov).await;
            assert_eq!(st, IoStatus::Success);
            assert!(read_all(&rb, 3, len) == data, "read {i} differs");
            // At rest: the ciphertext of each block under its LBA.
            let mut want = data.clone();
            x.encrypt_units(&mut want, bs, lba as u128);
            let at_rest = read_blocks(&raw, lba, n, bs).await;
            assert!(at_rest != data, "write {i}: plaintext at rest");
            assert!(at_rest == want, "write {i}: not XTS(LBA) at rest");
        }
        // A write with FUA (the DMA-buffer path even over a zero-copy
        // base): read back, ciphertext at rest.
        let (fl, fnb) = (blocks - 9, 9);
        let fdata = rng.bytes(fnb as usize * bs);
        let (st, _) = ch
            .io(IoType::Write, Some(dma(&fdata, 0)), fl, fnb, true)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        expected[fl as usize * bs..][..fdata.len()].copy_from_slice(&fdata);
        assert!(read_blocks(&ch, fl, fnb, bs).await == fdata, "FUA write");
        let mut want = fdata.clone();
        x.encrypt_units(&mut want, bs, fl as u128);
        assert!(read_blocks(&raw, fl, fnb, bs).await == want, "FUA at rest");
        // Write zeroes (more than a DMA chunk and a zero-copy window):
        // zeroes read back, ciphertext at rest.
        let (zl, zn) = (7, (1200 << 10) / bs as u64 + 3);
        let (st, _) = ch
            .io(IoType::WriteZeroes, None, zl, zn, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::Success);
        expected[zl as usize * bs..][..zn as usize * bs].fill(0);
        let got = read_blocks(&ch, zl, zn, bs).await;
        assert!(got.iter().all(|&b| b == 0), "write zeroes read back");
        let at_rest = read_blocks(&raw, zl, zn, bs).await;
        let mut want = vec![0u8; zn as usize * bs];
        x.encrypt_units(&mut want, bs, zl as u128);
        assert!(at_rest == want, "encrypted zeroes at rest");
        // Pass-through types.
        for ty in [IoType::Flush, IoType::Reset] {
            let (st, _) = ch.io(ty, None, 0, blocks, false).await.unwrap();
            assert_eq!(st, IoStatus::Success, "{ty:?}");
        }
        let (st, _) = ch
            .io(IoType::Compare, Some(dma(&vec![0; bs], 0)), 0, 1, false)
            .await
            .unwrap();
        assert_eq!(st, IoStatus::NotSupported);
        // Unmap reaches the base (malloc zeroes it): the block then reads
        // as the decryption of zeroes, not as zeroes.
        let (st, _) = ch.io(IoType::Unmap, None, 3, 1, false).await.unwrap();
        assert_eq!(st, IoStatus::Success);
        assert!(read_blocks(&raw, 3, 1, bs).await.iter().all(|&b| b == 0));
        let mut undefined = vec![0u8; bs];
        x.decrypt_units(&mut undefined, bs, 3);
        assert_eq!(read_blocks(&ch, 3, 1, bs).await, undefined);
        expected[3 * bs..4 * bs].copy_from_slice(&undefined);
        // Everything, 1 MiB at a time.
        let step = (1 << 20) / bs as u64;
        let mut lba = 0;
        while lba < blocks {
            let n = step.min(blocks - lba);
            let got = read_blocks(&ch, lba, n, bs).await;
            assert!(
                got == expected[lba as usize * bs..][..n as usize * bs],
                "final read at {lba}"
            );
            lba += n;
        }
        drop((ch, raw));
        drop((desc, raw_desc));
    });
    let st = b.stats();
    assert!(st.of(IoType::Write).ops >= 40 && st.of(IoType::Read).ops > 40);
    on(0, move || async move {
        crypto::delete(&cname).await.unwrap();
        if via_passthru {
            passthru::delete(&pname).await.unwrap();
        }
        assert!(bdev::get(&mname).unwrap().claimed_by().is_none());
        malloc::delete(&mname).await.unwrap();
    });
    crypto::key_destroy(&kname).unwrap();
}

#[test]
fn round_trip_over_malloc_512_aes128() {
    round_trip(512, HEX_A128, HEX_B128, 11, false);
}

#[test]
fn round_trip_over_passthru_512_aes128() {
    round_trip(512, HEX_A128, HEX_B128, 12, true);
}

#[test]
fn round_trip_over_malloc_4096_aes256() {
    round_trip(4096, K256_1, K256_2, 13, false);
}

#[test]
fn round_trip_over_passthru_4096_aes256() {
    round_trip(4096, K256_1, K256_2, 14, true);
}

/// Both cores write and read their own halves at once, many I/Os in
/// flight each.
#[test]
fn io_from_both_cores_at_queue_depth() {
    crypto::key_create("k_cores", "AES_XTS", K256_1, K256_2, None).unwrap();
    malloc::create("m_cores_c", 2 * 4096, 4096, None).unwrap();
    crypto::create("m_cores_c", "c_cores", "k_cores", None).unwrap();
    let done: Vec<_> = [0u32, 1]
        .into_iter()
        .map(|core| {
            std::thread::spawn(move || {
                on(core, move || async move {
                    use std::cell::Cell;
                    thread_local!(static N: Cell<u32> = const { Cell::new(0) });
                    fn cb(io: &mut BdevIo, st: IoStatus) {
                        assert_eq!(st, IoStatus::Success, "at {}", io.offset_blocks());
                        N.with(|n| n.set(n.get() + 1));
                    }
                    let desc = bdev::open("c_cores", true, nop).unwrap();
                    let ch = desc.get_io_channel().unwrap();
                    let base = core as u64 * 4096;
                    for i in 0..128u64 {
                        let data = vec![(i as u8) ^ (core as u8 * 0x80); 8 * 4096];
                        ch.write(dma(&data, 0), base + i * 32, 8, false, cb, 0)
                            .unwrap();
                    }
                    while N.with(|n| n.get()) < 128 {
                        reactor::yield_now().await;
                    }
                    for i in 0..128u64 {
                        let got = read_blocks(&ch, base + i * 32, 8, 4096).await;
                        assert!(got.iter().all(|&b| b == (i as u8) ^ (core as u8 * 0x80)));
                    }
                    drop(ch);
                    drop(desc);
                })
            })
        })
        .collect();
    for t in done {
        t.join().unwrap();
    }
    on(0, || async {
        crypto::delete("c_cores").await.unwrap();
        malloc::delete("m_cores_c").await.unwrap();
    });
    crypto::key_destroy("k_cores").unwrap();
}

/// The other SPDK tweak modes against `xts-mode` with the same tweaks.
#[test]
fn tweak_modes_match_their_definition() {
    use bdev::modules::crypto::TweakMode;
    let (k1, k2) = (unhex(K128_1), unhex(K128_2));
    let xm = Xts128::new(
        Aes128::new(k1.as_slice().try_into().unwrap()),
        Aes128::new(k2.as_slice().try_into().unwrap()),
    );
    for (i, mode) in [
        TweakMode::SimpleLba,
        TweakMode::JoinNegLbaWithLba,
        TweakMode::Incr512FullLba,
        TweakMode::Incr512UpperLba,
    ]
    .into_iter()
    .enumerate()
    {
        for bs in [512usize, 4096] {
            let (k, m, c) = (
                format!("k_tw{i}_{bs}"),
                format!("m_tw{i}_{bs}"),
                format!("c_tw{i}_{bs}"),
            );
            crypto::key_create(&k, "AES_XTS", K128_1, K128_2, Some(mode.name())).unwrap();
            malloc::create(&m, 64, bs as u32, None).unwrap();
            crypto::create(&m, &c, &k, None).unwrap();
            let mut rng = Rng(7 + i as u64);
            let data = rng.bytes(5 * bs);
            let (c2, m2, d2) = (c.clone(), m.clone(), data.clone());
            let at_rest = on(0, move || async move {
                let desc = bdev::open(&c2, true, nop).unwrap();
                let ch = desc.get_io_channel().unwrap();
                let (st, _) = ch
                    .io(IoType::Write, Some(dma(&d2, 0)), 9, 5, false)
                    .await
                    .unwrap();
                assert_eq!(st, IoStatus::Success);
                assert_eq!(read_blocks(&ch, 9, 5, bs).await, d2);
                let rd = bdev::open(&m2, false, nop).unwrap();
                let raw = rd.get_io_channel().unwrap();
                let v = read_blocks(&raw, 9, 5, bs).await;
                drop((ch, raw));
                drop((desc, rd));
                v
            });
            let mut want = data.clone();
            let per = (bs / 512) as u128;
            match mode {
                TweakMode::SimpleLba => xm.encrypt_area(&mut want, bs, 9, get_tweak_default),
                TweakMode::JoinNegLbaWithLba => xm.encrypt_area(&mut want, bs, 9, |lba| {
                    let l = lba as u64;
                    let t = ((!l & (u64::MAX >> 1)) as u128) << 64 | l as u128;
                    Array(t.to_le_bytes())
                }),
                TweakMode::Incr512FullLba => {
                    xm.encrypt_area(&mut want, 512, 9 * per, get_tweak_default)
                }
                TweakMode::Incr512UpperLba => {
                    xm.encrypt_area(&mut want, 512, 9 * per, |n| Array((n << 64).to_le_bytes()))
                }
            }
            assert!(at_rest == want, "{} with {bs}-byte blocks", mode.name());
            on(0, move || async move {
                crypto::delete(&c).await.unwrap();
                malloc::delete(&m).await.unwrap();
            });
            crypto::key_destroy(&k).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Interoperability: the volume at rest, decrypted by OpenSSL.
// ---------------------------------------------------------------------------

fn openssl() -> &'static str {
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => "openssl",
        _ => panic!(
            "the interoperability test needs the `openssl` command on PATH \
             (Debian: apt-get install openssl)"
        ),
    }
}

/// `openssl enc -aes-<bits>-ecb -nopad` over `data`, encrypting or
/// decrypting with `key`.
fn openssl_ecb(key: &[u8], decrypt: bool, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(openssl())
        .args([
            "enc",
            &format!("-aes-{}-ecb", key.len() * 8),
            if decrypt { "-d" } else { "-e" },
            "-nopad",
            "-K",
            &hex(key),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "openssl enc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Multiplication by alpha (IEEE 1619 5.2), written here independently of
/// the module.
fn times_alpha(t: &mut [u8; 16]) {
    let carry = t[15] >> 7;
    for i in (1..16).rev() {
        t[i] = (t[i] << 1) | (t[i - 1] >> 7);
    }
    t[0] = (t[0] << 1) ^ (0x87 * carry);
}

/// Decrypts `ct` (whole blocks of `bs` bytes from `first_lba`) with
/// OpenSSL: `openssl enc` refuses XTS ciphers ("enc XTS ciphers not
/// supported"), so XTS is put together here from OpenSSL's AES (ECB, one
/// call for every block's tweak, one for all the data):
/// `P_j = D_K1(C_j ^ T_j) ^ T_j`, `T_0 = E_K2(LBA as 16 LE bytes)`,
/// `T_{j+1} = T_j * alpha`.
fn openssl_xts_decrypt(key: &[u8], key2: &[u8], first_lba: u64, bs: usize, ct: &[u8]) -> Vec<u8> {
    let blocks = ct.len() / bs;
    let ivs: Vec<u8> = (0..blocks)
        .flat_map(|i| ((first_lba + i as u64) as u128).to_le_bytes())
        .collect();
    let t0 = openssl_ecb(key2, false, &ivs);
    assert_eq!(t0.len(), ivs.len());
    let mut tweaks = Vec::with_capacity(ct.len());
    for b in 0..blocks {
        let mut t: [u8; 16] = t0[16 * b..16 * b + 16].try_into().unwrap();
        for _ in 0..bs / 16 {
            tweaks.extend_from_slice(&t);
            times_alpha(&mut t);
        }
    }
    let x: Vec<u8> = ct.iter().zip(&tweaks).map(|(c, t)| c ^ t).collect();
    let d = openssl_ecb(key, true, &x);
    assert_eq!(d.len(), ct.len());
    d.iter().zip(&tweaks).map(|(p, t)| p ^ t).collect()
}

/// Python's `cryptography` (OpenSSL's EVP AES-XTS), when installed: a
/// second, whole-XTS decryption, block by block with the LBA as IV.
fn python_xts_decrypt(
    key: &[u8],
    key2: &[u8],
    first_lba: u64,
    bs: usize,
    ct: &[u8],
) -> Option<Vec<u8>> {
    use std::io::Write;
    let script = "import sys\n\
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
        k = bytes.fromhex(sys.argv[1]); lba = int(sys.argv[2]); bs = int(sys.argv[3])\n\
        ct = sys.stdin.buffer.read(); out = b''\n\
        for i in range(len(ct) // bs):\n\
        \x20   d = Cipher(algorithms.AES(k), modes.XTS((lba + i).to_bytes(16, 'little'))).decryptor()\n\
        \x20   out += d.update(ct[i * bs:(i + 1) * bs]) + d.finalize()\n\
        sys.stdout.buffer.write(out)\n";
    let probe = Command::new("python3")
        .args(["-c", "import cryptography"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        // CI installs it (ci/install-host-deps) and requires the check.
        assert!(
            std::env::var_os("CRYPTO_REQUIRE_EVP_XTS").is_none(),
            "CRYPTO_REQUIRE_EVP_XTS is set but python3 cannot import `cryptography` \
             (pip install cryptography, or run ci/install-host-deps)"
        );
        println!("python3 with `cryptography` not found: EVP XTS cross-check skipped");
        return None;
    }
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            &format!("{}{}", hex(key), hex(key2)),
            &first_lba.to_string(),
            &bs.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = ct.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success(), "python XTS decryption failed");
    Some(out.stdout)
}

#[test]
fn volume_decrypts_with_openssl() {
    assert!(
        Command::new(openssl())
            .arg("version")
            .output()
            .unwrap()
            .status
            .success()
    );
    for (i, (bs, key, key2)) in [
        (512usize, K256_1, K256_2),
        (4096, K256_1, K256_2),
        (512, HEX_A128, HEX_B128),
        (4096, K128_1, K128_2),
    ]
    .into_iter()
    .enumerate()
    {
        let (k, m, c) = (
            format!("k_ossl{i}"),
            format!("m_ossl{i}"),
            format!("c_ossl{i}"),
        );
        crypto::key_create(&k, "AES_XTS", key, key2, None).unwrap();
        malloc::create(&m, 256, bs as u32, None).unwrap();
        crypto::create(&m, &c, &k, None).unwrap();
        let first = 100 + i as u64 * 13;
        let data = Rng(99 + i as u64).bytes(24 * bs);
        let (c2, m2, d2) = (c.clone(), m.clone(), data.clone());
        let dump = on(0, move || async move {
            let desc = bdev::open(&c2, true, nop).unwrap();
            let ch = desc.get_io_channel().unwrap();
            let (st, _) = ch
                .io(IoType::Write, Some(dma(&d2, 0)), first, 24, false)
                .await
                .unwrap();
            assert_eq!(st, IoStatus::Success);
            // The raw volume, read from the malloc bdev directly.
            let rd = bdev::open(&m2, false, nop).unwrap();
            let raw = rd.get_io_channel().unwrap();
            let v = read_blocks(&raw, first, 24, bs).await;
            drop((ch, raw));
            drop((desc, rd));
            v
        });
        assert!(dump != data);
        let (k1, k2) = (unhex(key), unhex(key2));
        let plain = openssl_xts_decrypt(&k1, &k2, first, bs, &dump);
        assert!(
            plain == data,
            "AES-{} {bs}-byte blocks: OpenSSL decrypts something else",
            k1.len() * 8
        );
        if let Some(p) = python_xts_decrypt(&k1, &k2, first, bs, &dump) {
            assert!(p == data, "EVP AES-XTS decrypts something else");
        }
        on(0, move || async move {
            crypto::delete(&c).await.unwrap();
            malloc::delete(&m).await.unwrap();
        });
        crypto::key_destroy(&k).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------

fn resize_follows(levels: &[&str], tag: &str) {
    let key = format!("k_rs{tag}");
    crypto::key_create(&key, "AES_XTS", HEX_A128, HEX_B128, None).unwrap();
    let null_name = format!("n_rs{tag}");
    null::create(&null_name, 1024 * 2048, 512, None, null::ReadFill::Zeroes).unwrap();
    let mut below = null_name.clone();
    let mut made = vec![];
    for l in levels {
        let name = format!("{l}_rs{tag}");
        match *l {
            "pt" => {
                passthru::create(&below, &name, None).unwrap();
            }
            _ => {
                crypto::create(&below, &name, &key, None).unwrap();
            }
        }
        made.push(name.clone());
        below = name;
    }
    let top = below;
    let seen: Arc<Mutex<Vec<(String, BdevEvent)>>> = Arc::default();
    let (s2, t2) = (seen.clone(), top.clone());
    let desc = on(1, move || async move {
        bdev::open(&t2, false, move |n, e| {
            s2.lock().unwrap().push((n.to_owned(), e))
        })
        .unwrap()
    });
    null::resize(&null_name, 2048).unwrap();
    wait_until("Resize at the top", {
        let seen = seen.clone();
        move || !seen.lock().unwrap().is_empty()
    });
    let want = 2048 * 2048;
    for name in &made {
        assert_eq!(bdev::get(name).unwrap().num_blocks(), want, "{name}");
    }
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[(
            top.clone(),
            BdevEvent::Resize {
                old_blocks: 1024 * 2048,
                new_blocks: want
            }
        )]
    );
    // I/O at the new end works through every layer.
    on(1, move || async move {
        let ch = desc.get_io_channel().unwrap();
        assert!(
            read_blocks(&ch, want - 1, 1, 512).await.len() == 512,
            "read at the new end"
        );
        drop(ch);
        drop(desc);
    });
    // Removing the base removes every layer and frees the key.
    on(
        0,
        move || async move { null::delete(&null_name).await.unwrap() },
    );
    wait_until("the stack to go", move || {
        made.iter().all(|n| bdev::get(n).is_none())
    });
    wait_until("the key to be free", move || {
        crypto::key_destroy(&key).is_ok()
    });
}

#[test]
fn resize_reaches_crypto_and_its_opener() {
    resize_follows(&["c"], "1");
}

#[test]
fn resize_reaches_crypto_over_passthru() {
    resize_follows(&["pt", "c"], "2");
}

#[test]
fn create_refuses_bad_bases_and_names() {
    crypto::key_create("k_refuse", "AES_XTS", HEX_A128, HEX_B128, None).unwrap();
    assert!(matches!(
        crypto::create("nowhere", "c_refuse", "k_refuse", None),
        Err(BdevError::NotFound(_))
    ));
    malloc::create("m_refuse", 16, 512, None).unwrap();
    crypto::create("m_refuse", "c_refuse", "k_refuse", None).unwrap();
    assert!(matches!(
        crypto::create("m_refuse", "c_refuse", "k_refuse", None),
        Err(BdevError::Exists(_))
    ));
    assert!(matches!(
        crypto::create("m_refuse", "c_refuse2", "k_refuse", None),
        Err(BdevError::Claimed { .. })
    ));
    // The failed creations left no user on the key.
    on(0, || async {
        crypto::delete("c_refuse").await.unwrap();
        assert!(matches!(
            crypto::delete("m_refuse").await,
            Err(BdevError::NotFound(_))
        ));
        malloc::delete("m_refuse").await.unwrap();
    });
    crypto::key_destroy("k_refuse").unwrap();
}
