//! AES-XTS (IEEE 1619) over segment lists, on one of four engines
//! ([`Engine`], chosen per cipher: the process's default unless named).
//!
//! The `xts-mode` crate encrypts one 16-byte block at a time. Here, on
//! x86-64, the VAES kernels (`vaes.rs`) cipher 16 blocks per iteration on
//! ymm or zmm registers, and the AES-NI kernel (`aesni.rs`) keeps eight
//! blocks in registers and doubles their tweaks in general-purpose
//! registers between the rounds; the `soft` engine hands the `aes` crate
//! as many blocks as its backend takes at once (`ParBlocksSize`),
//! whitening them with tweaks computed in the same pass. Tweaks double in
//! GF(2^128) with the 0x87 polynomial (on SSE2 registers on x86-64), and
//! the first tweaks of up to [`TWEAK_BATCH`] data units are encrypted with
//! one parallel call. Nothing here needs `-C target-cpu=native`.
//!
//! Data units are whole 16-byte blocks: no ciphertext stealing (a logical
//! block is 512..65536 bytes). Segments may be cut at any byte, even inside
//! an AES block: such a block is gathered into a 16-byte stack buffer.

use aes::cipher::consts::U16;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    Array, Block, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt,
    BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit,
    ParBlocks,
};
use aes::{Aes128, Aes256};

use super::Engine;
use crate::{BdevError, IoVec};

/// Data units whose first tweaks are encrypted together.
pub const TWEAK_BATCH: usize = 16;

/// How the cipher writes its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// Through the caches: the output is read again soon (a read's
    /// plaintext for the caller, in-place work).
    Cached,
    /// Past the caches where the kernel can (non-temporal stores, AES-NI
    /// kernel, 16-byte aligned output): ciphertext for a device or a disk in
    /// memory, which this core will not read again soon. Saves reading
    /// every destination line before writing it.
    Streaming,
}

/// Which way data goes through the cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Plaintext to ciphertext.
    Encrypt,
    /// Ciphertext to plaintext.
    Decrypt,
}

/// One 128-bit lane: a block or a tweak, kept in an SSE2 register on
/// x86-64 (SSE2 is part of the x86-64 baseline: no run-time detection).
#[cfg(target_arch = "x86_64")]
mod lane {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_loadu_si128, _mm_set_epi32, _mm_shuffle_epi32, _mm_slli_epi32,
        _mm_srai_epi32, _mm_storeu_si128, _mm_xor_si128,
    };

    #[derive(Clone, Copy)]
    pub struct Lane(pub __m128i);

    impl Default for Lane {
        #[inline(always)]
        fn default() -> Self {
            Lane::from_bytes([0; 16])
        }
    }

    impl Lane {
        #[inline(always)]
        pub fn from_bytes(b: [u8; 16]) -> Lane {
            // SAFETY: reads 16 bytes from a local array (unaligned load).
            Lane(unsafe { _mm_loadu_si128(b.as_ptr().cast()) })
        }

        /// # Safety
        /// `p` is valid for a 16-byte read.
        #[inline(always)]
        pub unsafe fn load(p: *const u8) -> Lane {
            // SAFETY: the caller vouches for 16 readable bytes.
            Lane(unsafe { _mm_loadu_si128(p.cast()) })
        }

        /// # Safety
        /// `p` is valid for a 16-byte write.
        #[inline(always)]
        pub unsafe fn store(self, p: *mut u8) {
            // SAFETY: the caller vouches for 16 writable bytes.
            unsafe { _mm_storeu_si128(p.cast(), self.0) }
        }

        #[inline(always)]
        #[allow(unused_unsafe)]
        pub fn xor(self, o: Lane) -> Lane {
            // SAFETY: SSE2 is always present on x86-64.
            Lane(unsafe { _mm_xor_si128(self.0, o.0) })
        }

        /// Multiplication by x (alpha) in GF(2^128) mod x^128 + x^7 + x^2 +
        /// x + 1, the block read as a little-endian number (IEEE 1619 5.2):
        /// each 32-bit lane shifts left by one, the bit leaving lane i
        /// enters lane i+1, the bit leaving the top folds back as 0x87.
        #[inline(always)]
        #[allow(unused_unsafe)]
        pub fn double(self) -> Lane {
            // SAFETY: SSE2 is always present on x86-64.
            unsafe {
                let carry = _mm_srai_epi32::<31>(self.0);
                let carry = _mm_shuffle_epi32::<0x93>(carry);
                let carry = _mm_and_si128(carry, _mm_set_epi32(1, 1, 1, 0x87));
                Lane(_mm_xor_si128(_mm_slli_epi32::<1>(self.0), carry))
            }
        }
    }
}

/// The portable lane: a little-endian `u128`.
#[cfg(not(target_arch = "x86_64"))]
mod lane {
    #[derive(Clone, Copy, Default)]
    pub struct Lane(u128);

    impl Lane {
        #[inline(always)]
        pub fn from_bytes(b: [u8; 16]) -> Lane {
            Lane(u128::from_le_bytes(b))
        }

        /// # Safety
        /// `p` is valid for a 16-byte read.
        #[inline(always)]
        pub unsafe fn load(p: *const u8) -> Lane {
            // SAFETY: the caller vouches for 16 readable bytes.
            Lane::from_bytes(unsafe { p.cast::<[u8; 16]>().read_unaligned() })
        }

        /// # Safety
        /// `p` is valid for a 16-byte write.
        #[inline(always)]
        pub unsafe fn store(self, p: *mut u8) {
            // SAFETY: the caller vouches for 16 writable bytes.
            unsafe { p.cast::<[u8; 16]>().write_unaligned(self.0.to_le_bytes()) }
        }

        #[inline(always)]
        pub fn xor(self, o: Lane) -> Lane {
            Lane(self.0 ^ o.0)
        }

        #[inline(always)]
        pub fn double(self) -> Lane {
            Lane((self.0 << 1) ^ ((self.0 >> 127) * 0x87))
        }
    }
}

pub(crate) use lane::Lane;

/// A contiguous run of whole blocks of one data unit, and its running tweak.
struct Run {
    src: *const u8,
    dst: *mut u8,
    blocks: usize,
    tweak: *mut Lane,
}

/// Whitens `p` blocks from `src` into `buf` with consecutive tweaks from `t`
/// (kept in `tw`), leaving `t` at the next tweak.
///
/// # Safety
/// `src` is valid for `16 * p` bytes of reads.
#[inline(always)]
unsafe fn whiten_in(src: *const u8, buf: &mut [Block<Aes128>], tw: &mut [Lane], t: &mut Lane) {
    for (i, (b, w)) in buf.iter_mut().zip(tw.iter_mut()).enumerate() {
        *w = *t;
        // SAFETY: block i of the run is in bounds (caller).
        let x = unsafe { Lane::load(src.add(16 * i)) }.xor(*t);
        // SAFETY: `b` is a 16-byte block.
        unsafe { x.store(b.as_mut_ptr()) };
        *t = t.double();
    }
}

/// Whitens the blocks of `buf` again with `tw` and writes them to `dst`.
///
/// # Safety
/// `dst` is valid for `16 * buf.len()` bytes of writes.
#[inline(always)]
unsafe fn whiten_out(dst: *mut u8, buf: &[Block<Aes128>], tw: &[Lane]) {
    for (i, (b, w)) in buf.iter().zip(tw).enumerate() {
        // SAFETY: `b` is a 16-byte block; block i of `dst` is in bounds.
        unsafe { Lane::load(b.as_ptr()).xor(*w).store(dst.add(16 * i)) };
    }
}

macro_rules! run_closure {
    ($name:ident, $closure:ident, $backend:ident, $par:ident, $one:ident) => {
        struct $name(Run);

        impl BlockSizeUser for $name {
            type BlockSize = U16;
        }

        impl $closure for $name {
            #[inline(always)]
            fn call<B: $backend<BlockSize = U16>>(self, backend: &B) {
                let Run {
                    mut src,
                    mut dst,
                    blocks: mut n,
                    tweak,
                } = self.0;
                let p = B::ParBlocksSize::USIZE;
                // SAFETY: the tweak is the caller's local, exclusively ours
                // for the call.
                let t = unsafe { &mut *tweak };
                if p > 1 {
                    let mut buf: ParBlocks<B> = Default::default();
                    let mut tw: Array<Lane, B::ParBlocksSize> = Default::default();
                    while n >= p {
                        // SAFETY: `p` blocks remain in the run (caller's
                        // bounds); all are read before any is written, so
                        // `src == dst` is fine.
                        unsafe { whiten_in(src, &mut buf, &mut tw, t) };
                        backend.$par(&mut buf);
                        // SAFETY: as above.
                        unsafe { whiten_out(dst, &buf, &tw) };
                        // SAFETY: advancing within the run.
                        unsafe {
                            src = src.add(16 * p);
                            dst = dst.add(16 * p);
                        }
                        n -= p;
                    }
                }
                let mut one: [Block<Aes128>; 1] = Default::default();
                let mut w = [Lane::default()];
                while n > 0 {
                    // SAFETY: one block remains in the run.
                    unsafe { whiten_in(src, &mut one, &mut w, t) };
                    backend.$one(&mut one[0]);
                    // SAFETY: as above.
                    unsafe { whiten_out(dst, &one, &w) };
                    // SAFETY: advancing within the run.
                    unsafe {
                        src = src.add(16);
                        dst = dst.add(16);
                    }
                    n -= 1;
                }
            }
        }
    };
}

run_closure!(
    EncRun,
    BlockCipherEncClosure,
    BlockCipherEncBackend,
    encrypt_par_blocks_inplace,
    encrypt_block_inplace
);
run_closure!(
    DecRun,
    BlockCipherDecClosure,
    BlockCipherDecBackend,
    decrypt_par_blocks_inplace,
    decrypt_block_inplace
);

/// A position in a list of segments.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    segs: &'a [IoVec],
    idx: usize,
    off: usize,
}

impl<'a> Cursor<'a> {
    fn new(segs: &'a [IoVec], skip: usize) -> Self {
        let mut c = Cursor {
            segs,
            idx: 0,
            off: 0,
        };
        c.advance(skip);
        c
    }

    /// The contiguous bytes from here to the end of the current segment.
    fn span(&self) -> (*mut u8, usize) {
        match self.segs.get(self.idx) {
            Some(s) => (s.ptr.wrapping_add(self.off), s.len - self.off),
            None => (std::ptr::null_mut(), 0),
        }
    }

    fn advance(&mut self, mut n: usize) {
        while let Some(s) = self.segs.get(self.idx) {
            if self.off + n < s.len {
                self.off += n;
                return;
            }
            n -= s.len - self.off;
            self.idx += 1;
            self.off = 0;
            if n == 0 {
                // Skip empty segments so `span` always shows bytes.
                while self.segs.get(self.idx).is_some_and(|s| s.len == 0) {
                    self.idx += 1;
                }
                return;
            }
        }
        assert_eq!(n, 0, "segments shorter than the data");
    }

    /// Copies the next `out.len()` bytes out and moves past them.
    ///
    /// # Safety
    /// The segments are valid for reads.
    unsafe fn gather(&mut self, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let (p, len) = self.span();
            assert!(len > 0, "segments shorter than the data");
            let n = len.min(out.len() - done);
            // SAFETY: `n` bytes are in the current segment (caller).
            unsafe { std::ptr::copy_nonoverlapping(p, out[done..].as_mut_ptr(), n) };
            done += n;
            self.advance(n);
        }
    }

    /// Copies `src` in and moves past it.
    ///
    /// # Safety
    /// The segments are valid for writes.
    unsafe fn scatter(&mut self, src: &[u8]) {
        let mut done = 0;
        while done < src.len() {
            let (p, len) = self.span();
            assert!(len > 0, "segments shorter than the data");
            let n = len.min(src.len() - done);
            // SAFETY: `n` bytes are in the current segment (caller).
            unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), p, n) };
            done += n;
            self.advance(n);
        }
    }
}

/// The cipher pair of one key: data cipher (key) and tweak cipher (key2).
/// The `aes` round keys are zeroized when dropped. Unboxed on purpose: a
/// key lives once, in an `Arc`, and the hot path should not chase a pointer.
#[allow(clippy::large_enum_variant)]
enum Ciphers {
    Aes128 { data: Aes128, tweak: Aes128 },
    Aes256 { data: Aes256, tweak: Aes256 },
}

/// An XTS-AES-128 or XTS-AES-256 cipher: the expanded data and tweak keys,
/// and the [`Engine`] that runs it. `Debug` shows the key size and the
/// engine, never key material.
pub struct XtsCipher {
    c: Ciphers,
    /// The AES-NI round keys, for the `aesni` and `vaes*` engines.
    #[cfg(target_arch = "x86_64")]
    ni: Option<Ni>,
    engine: Engine,
    /// The VAES kernel's registers, for the `vaes*` engines (`vaes256`
    /// folds tweak carries with `vpclmulqdq` when the CPU has it, else with
    /// shifts, as on QEMU's TCG CPU).
    #[cfg(target_arch = "x86_64")]
    width: Option<super::vaes::Width>,
}

/// Round keys for the AES-NI and VAES kernels.
#[cfg(target_arch = "x86_64")]
enum Ni {
    Aes128(Box<super::aesni::NiKeys<11>>),
    Aes256(Box<super::aesni::NiKeys<15>>),
}

impl std::fmt::Debug for XtsCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "XtsCipher(AES-{}, engine {}, keys redacted)",
            self.key_bits(),
            self.engine
        )
    }
}

impl XtsCipher {
    /// A cipher from the data key `key` and the tweak key `key2`, 16 bytes
    /// each (XTS-AES-128) or 32 bytes each (XTS-AES-256), on the process's
    /// engine ([`Engine::process_default`]). Equal keys are accepted here
    /// (IEEE 1619's first vector uses them); [`super::key_create`] refuses
    /// them.
    ///
    /// # Errors
    /// [`BdevError::Invalid`] naming `key` or `key2` for a bad length, or
    /// `CRYPTO_ENGINE` for an engine this CPU cannot run.
    pub fn new(key: &[u8], key2: &[u8]) -> Result<XtsCipher, BdevError> {
        XtsCipher::with_engine(key, key2, Engine::process_default()?)
    }

    /// As [`XtsCipher::new`], on `engine`.
    ///
    /// # Errors
    /// As [`XtsCipher::new`]; [`BdevError::Invalid`] naming `engine` when
    /// this CPU cannot run it.
    pub fn with_engine(key: &[u8], key2: &[u8], engine: Engine) -> Result<XtsCipher, BdevError> {
        if let Some(why) = engine.unavailable_reason() {
            return Err(BdevError::invalid("engine", why));
        }
        XtsCipher::build(key, key2, engine)
    }

    /// As [`XtsCipher::with_engine`], without asking whether the engine is
    /// available beyond its CPU features (the self-test's own ciphers).
    fn build(key: &[u8], key2: &[u8], engine: Engine) -> Result<XtsCipher, BdevError> {
        if !engine.cpu_has() {
            return Err(BdevError::invalid(
                "engine",
                format!("{engine} needs {}, which this CPU lacks", engine.needs()),
            ));
        }
        let bad = |what: &str, n: usize| {
            BdevError::invalid(what, format!("{n} bytes; XTS-AES takes 16 or 32 bytes"))
        };
        if key2.len() != key.len() {
            return Err(BdevError::invalid(
                "key2",
                format!(
                    "{} bytes while key has {}; both halves must be the same length",
                    key2.len(),
                    key.len()
                ),
            ));
        }
        // `try_into` borrows the caller's bytes as a key array: no copy.
        let c = match key.len() {
            16 => Ciphers::Aes128 {
                data: Aes128::new(key.try_into().map_err(|_| bad("key", 16))?),
                tweak: Aes128::new(key2.try_into().map_err(|_| bad("key2", 16))?),
            },
            32 => Ciphers::Aes256 {
                data: Aes256::new(key.try_into().map_err(|_| bad("key", 32))?),
                tweak: Aes256::new(key2.try_into().map_err(|_| bad("key2", 32))?),
            },
            n => return Err(bad("key", n)),
        };
        #[cfg(target_arch = "x86_64")]
        let ni = if engine != Engine::Soft {
            use super::aesni::NiKeys;
            // SAFETY: every engine but `soft` needs AES-NI, and the CPU
            // has `engine`'s features (checked above).
            unsafe {
                Some(
                    match (<&[u8; 16]>::try_from(key), <&[u8; 32]>::try_from(key)) {
                        (Ok(k), _) => Ni::Aes128(Box::new(NiKeys::<11>::new(k))),
                        (_, Ok(k)) => Ni::Aes256(Box::new(NiKeys::<15>::new(k))),
                        _ => unreachable!("key length checked above"),
                    },
                )
            }
        } else {
            None
        };
        Ok(XtsCipher {
            c,
            #[cfg(target_arch = "x86_64")]
            ni,
            engine,
            #[cfg(target_arch = "x86_64")]
            width: match engine {
                Engine::Vaes512 => Some(super::vaes::Width::Z512),
                Engine::Vaes256 => Some(super::vaes::Width::Y256 {
                    clmul: std::arch::is_x86_feature_detected!("vpclmulqdq"),
                }),
                Engine::Aesni | Engine::Soft => None,
            },
        })
    }

    /// The engine that runs this cipher.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// 128 or 256.
    pub fn key_bits(&self) -> u32 {
        match self.c {
            Ciphers::Aes128 { .. } => 128,
            Ciphers::Aes256 { .. } => 256,
        }
    }

    /// Encrypts `data` in place as consecutive data units of `unit_len`
    /// bytes, unit `i` with tweak `first_tweak + i` (little-endian, as
    /// dm-crypt's `plain64` and SPDK's SIMPLE_LBA).
    ///
    /// # Panics
    /// When `unit_len` is not a positive multiple of 16 or `data` is not
    /// whole units.
    pub fn encrypt_units(&self, data: &mut [u8], unit_len: usize, first_tweak: u128) {
        self.units_in_place(Direction::Encrypt, data, unit_len, first_tweak)
    }

    /// Decrypts `data` in place; as [`XtsCipher::encrypt_units`].
    ///
    /// # Panics
    /// As [`XtsCipher::encrypt_units`].
    pub fn decrypt_units(&self, data: &mut [u8], unit_len: usize, first_tweak: u128) {
        self.units_in_place(Direction::Decrypt, data, unit_len, first_tweak)
    }

    /// Encrypts or decrypts `src` into `dst` (same length) as consecutive
    /// data units; as [`XtsCipher::encrypt_units`].
    ///
    /// # Panics
    /// As [`XtsCipher::encrypt_units`], and when the lengths differ.
    pub fn crypt_units_to(
        &self,
        dir: Direction,
        src: &[u8],
        dst: &mut [u8],
        unit_len: usize,
        first_tweak: u128,
    ) {
        assert_eq!(src.len(), dst.len(), "source and destination lengths");
        let units = check_units(src.len(), unit_len);
        let s = [IoVec {
            ptr: src.as_ptr().cast_mut(),
            iova: 0,
            len: src.len(),
        }];
        let d = [IoVec {
            ptr: dst.as_mut_ptr(),
            iova: 0,
            len: dst.len(),
        }];
        // SAFETY: both slices are valid and distinct (`&` and `&mut`); the
        // source is only read.
        unsafe {
            self.crypt_segs(dir, &s, 0, &d, 0, unit_len, units, Store::Cached, |u| {
                first_tweak.wrapping_add(u as u128)
            })
        };
    }

    fn units_in_place(&self, dir: Direction, data: &mut [u8], unit_len: usize, first: u128) {
        let units = check_units(data.len(), unit_len);
        let seg = [IoVec {
            ptr: data.as_mut_ptr(),
            iova: 0,
            len: data.len(),
        }];
        // SAFETY: one valid, exclusively borrowed slice, in place.
        unsafe {
            self.crypt_segs(dir, &seg, 0, &seg, 0, unit_len, units, Store::Cached, |u| {
                first.wrapping_add(u as u128)
            })
        };
    }

    /// Runs `units` data units of `unit_len` bytes from `src` (from byte
    /// `src_skip`) into `dst` (from byte `dst_skip`), unit `u` with tweak
    /// `tweak_of(u)`: [`XtsCipher::crypt_segs`] over segments the bdev
    /// layer vouches for.
    ///
    /// # Panics
    /// As [`XtsCipher::crypt_segs`].
    #[allow(clippy::too_many_arguments)]
    pub fn crypt(
        &self,
        dir: Direction,
        src: crate::Segments<'_>,
        src_skip: usize,
        dst: crate::SegmentsMut<'_>,
        dst_skip: usize,
        unit_len: usize,
        units: u64,
        store: Store,
        tweak_of: impl Fn(u64) -> u128,
    ) {
        // SAFETY: `src` is readable and `dst` writable and held exclusively
        // for the call (the layer's segment types); being borrowed one
        // shared and one unique, they are not the same I/O's data.
        unsafe {
            self.crypt_segs(
                dir,
                src.iovs(),
                src_skip,
                dst.iovs(),
                dst_skip,
                unit_len,
                units,
                store,
                tweak_of,
            )
        }
    }

    /// As [`XtsCipher::crypt`], in place over `data` from byte `skip`.
    ///
    /// # Panics
    /// As [`XtsCipher::crypt_segs`].
    #[allow(clippy::too_many_arguments)]
    pub fn crypt_in_place(
        &self,
        dir: Direction,
        data: crate::SegmentsMut<'_>,
        skip: usize,
        unit_len: usize,
        units: u64,
        store: Store,
        tweak_of: impl Fn(u64) -> u128,
    ) {
        let v = data.iovs();
        // SAFETY: `data` is writable and held exclusively for the call; in
        // place (the same bytes at the same positions).
        unsafe { self.crypt_segs(dir, v, skip, v, skip, unit_len, units, store, tweak_of) }
    }

    /// Runs `units` data units of `unit_len` bytes from the segments `src`
    /// (from byte `src_skip`) to `dst` (from byte `dst_skip`); unit `u`
    /// (0-based) uses the tweak value `tweak_of(u)`. Segments may be cut
    /// anywhere.
    ///
    /// # Safety
    /// `src` must be valid for reads and `dst` for writes of every byte
    /// processed, with no device touching them; the two must be the same
    /// bytes at the same positions (in place) or not overlap at all.
    ///
    /// # Panics
    /// When `unit_len` is not a positive multiple of 16, or the segments
    /// hold fewer bytes than the units.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn crypt_segs(
        &self,
        dir: Direction,
        src: &[IoVec],
        src_skip: usize,
        dst: &[IoVec],
        dst_skip: usize,
        unit_len: usize,
        units: u64,
        store: Store,
        tweak_of: impl Fn(u64) -> u128,
    ) {
        assert!(
            unit_len > 0 && unit_len.is_multiple_of(16),
            "XTS data unit of {unit_len} bytes: needs whole 16-byte blocks"
        );
        let stream = store == Store::Streaming;
        let mut s = Cursor::new(src, src_skip);
        let mut d = Cursor::new(dst, dst_skip);
        let mut first = [Block::<Aes128>::default(); TWEAK_BATCH];
        let mut u = 0u64;
        while u < units {
            let k = (units - u).min(TWEAK_BATCH as u64) as usize;
            for (j, b) in first[..k].iter_mut().enumerate() {
                *b = Array(tweak_of(u + j as u64).to_le_bytes());
            }
            match &self.c {
                Ciphers::Aes128 { tweak, .. } => tweak.encrypt_blocks(&mut first[..k]),
                Ciphers::Aes256 { tweak, .. } => tweak.encrypt_blocks(&mut first[..k]),
            }
            for b in &first[..k] {
                let mut t = Lane::from_bytes(b.0);
                let mut left = unit_len;
                while left > 0 {
                    let (sp, sl) = s.span();
                    let (dp, dl) = d.span();
                    let whole = sl.min(dl).min(left) & !15;
                    if whole > 0 {
                        // SAFETY: `whole` bytes lie in the current segment
                        // on both sides (caller's validity).
                        unsafe { self.run(dir, sp, dp, whole / 16, &mut t, stream) };
                        s.advance(whole);
                        d.advance(whole);
                        left -= whole;
                    } else {
                        // An AES block cut by a segment boundary.
                        let mut tmp = [0u8; 16];
                        // SAFETY: caller's validity of the segments.
                        unsafe { s.gather(&mut tmp) };
                        let p = tmp.as_mut_ptr();
                        // SAFETY: a local 16-byte block, in place.
                        unsafe { self.run(dir, p, p, 1, &mut t, false) };
                        // SAFETY: as above.
                        unsafe { d.scatter(&tmp) };
                        left -= 16;
                    }
                }
            }
            u += k as u64;
        }
        #[cfg(target_arch = "x86_64")]
        if stream && self.ni.is_some() {
            // Orders the AES-NI and VAES kernels' non-temporal stores.
            super::aesni::sfence();
        }
    }

    /// # Safety
    /// `blocks` whole blocks readable at `src`, writable at `dst`.
    #[inline]
    unsafe fn run(
        &self,
        dir: Direction,
        src: *const u8,
        dst: *mut u8,
        blocks: usize,
        t: &mut Lane,
        stream: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if let Some(ni) = &self.ni {
            use super::vaes;
            // SAFETY: `ni` exists only for engines that need AES-NI, and
            // the CPU's features for the engine were checked at
            // construction (the VAES widths' too); the caller vouches for
            // the blocks.
            unsafe {
                match (ni, self.width) {
                    (Ni::Aes128(k), Some(w)) => vaes::run(k, w, dir, src, dst, blocks, t, stream),
                    (Ni::Aes256(k), Some(w)) => vaes::run(k, w, dir, src, dst, blocks, t, stream),
                    (Ni::Aes128(k), None) => k.run(dir, src, dst, blocks, t, stream),
                    (Ni::Aes256(k), None) => k.run(dir, src, dst, blocks, t, stream),
                }
            }
            return;
        }
        let _ = stream;
        let r = Run {
            src,
            dst,
            blocks,
            tweak: t,
        };
        match (&self.c, dir) {
            (Ciphers::Aes128 { data, .. }, Direction::Encrypt) => {
                data.encrypt_with_backend(EncRun(r))
            }
            (Ciphers::Aes128 { data, .. }, Direction::Decrypt) => {
                data.decrypt_with_backend(DecRun(r))
            }
            (Ciphers::Aes256 { data, .. }, Direction::Encrypt) => {
                data.encrypt_with_backend(EncRun(r))
            }
            (Ciphers::Aes256 { data, .. }, Direction::Decrypt) => {
                data.decrypt_with_backend(DecRun(r))
            }
        }
    }
}

/// The known-answer self-test of [`Engine::unavailable_reason`]: `engine`
/// against `soft` on AES-128 and AES-256, both directions, two 512-byte
/// units and one unit of 19 blocks, with a tweak whose low half carries.
pub(super) fn self_test(engine: Engine) -> Result<(), String> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    };
    for klen in [16, 32] {
        let key: Vec<u8> = (0..klen).map(|_| next()).collect();
        let key2: Vec<u8> = (0..klen).map(|_| next()).collect();
        let data: Vec<u8> = (0..1024).map(|_| next()).collect();
        let fast = XtsCipher::build(&key, &key2, engine).map_err(|e| e.to_string())?;
        let soft = XtsCipher::build(&key, &key2, Engine::Soft).map_err(|e| e.to_string())?;
        for (unit, len) in [(512, 1024), (19 * 16, 19 * 16)] {
            let first = u128::from(u64::MAX);
            for dir in [Direction::Encrypt, Direction::Decrypt] {
                let (mut want, mut got) = (vec![0; len], vec![0; len]);
                soft.crypt_units_to(dir, &data[..len], &mut want, unit, first);
                fast.crypt_units_to(dir, &data[..len], &mut got, unit, first);
                if got != want {
                    let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                    return Err(format!(
                        "AES-{} {dir:?} of {unit}-byte units differs from the soft engine from \
                         byte {at} (block {} of its unit)",
                        klen * 8,
                        (at % unit) / 16
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_units(len: usize, unit_len: usize) -> u64 {
    assert!(
        unit_len > 0 && unit_len.is_multiple_of(16),
        "XTS data unit of {unit_len} bytes: needs whole 16-byte blocks"
    );
    assert!(
        len.is_multiple_of(unit_len),
        "{len} bytes are not whole {unit_len}-byte data units"
    );
    (len / unit_len) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Segments cut at random bytes (inside AES blocks too) give the same
    /// result as one contiguous buffer, in place and out of place.
    #[test]
    fn cut_segments_match_contiguous() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        for round in 0..200 {
            let klen = if round % 2 == 0 { 16 } else { 32 };
            let key: Vec<u8> = (0..klen).map(|_| rng(&mut seed) as u8).collect();
            let key2: Vec<u8> = (0..klen).map(|_| rng(&mut seed) as u8).collect();
            let x = XtsCipher::new(&key, &key2).unwrap();
            let unit = [16, 32, 512, 4096][(rng(&mut seed) % 4) as usize];
            let units = 1 + rng(&mut seed) % 5;
            let len = unit * units as usize;
            let data: Vec<u8> = (0..len).map(|_| rng(&mut seed) as u8).collect();
            let first = rng(&mut seed) as u128;
            let mut want = data.clone();
            x.encrypt_units(&mut want, unit, first);
            // Cut the data into up to 6 segments at random bytes.
            let mut cuts: Vec<usize> = (0..(rng(&mut seed) % 6))
                .map(|_| (rng(&mut seed) as usize) % len)
                .collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            let mut buf = data.clone();
            let base = buf.as_mut_ptr();
            let segs: Vec<IoVec> = cuts
                .windows(2)
                .map(|w| IoVec {
                    ptr: base.wrapping_add(w[0]),
                    iova: 0,
                    len: w[1] - w[0],
                })
                .collect();
            // SAFETY: the segments cover `buf`, in place.
            unsafe {
                x.crypt_segs(
                    Direction::Encrypt,
                    &segs,
                    0,
                    &segs,
                    0,
                    unit,
                    units,
                    Store::Cached,
                    |u| first.wrapping_add(u as u128),
                )
            };
            assert_eq!(buf, want, "round {round}: in place over {cuts:?}");
            let mut out = vec![0u8; len];
            let d = [IoVec {
                ptr: out.as_mut_ptr(),
                iova: 0,
                len,
            }];
            let mut src = data.clone();
            let sb = src.as_mut_ptr();
            let ssegs: Vec<IoVec> = segs
                .iter()
                .map(|s| IoVec {
                    ptr: sb.wrapping_add(s.ptr as usize - base as usize),
                    ..*s
                })
                .collect();
            // SAFETY: distinct buffers, both valid.
            unsafe {
                x.crypt_segs(
                    Direction::Encrypt,
                    &ssegs,
                    0,
                    &d,
                    0,
                    unit,
                    units,
                    Store::Streaming,
                    |u| first.wrapping_add(u as u128),
                )
            };
            assert_eq!(out, want, "round {round}: out of place");
            // SAFETY: as above, back again.
            unsafe {
                x.crypt_segs(
                    Direction::Decrypt,
                    &segs,
                    0,
                    &segs,
                    0,
                    unit,
                    units,
                    Store::Cached,
                    |u| first.wrapping_add(u as u128),
                )
            };
            assert_eq!(buf, data, "round {round}: decrypts back");
        }
    }

    /// Every engine this CPU runs (and `vaes256` with its tweak carries
    /// folded by shifts as well as by `vpclmulqdq`) gives the `soft`
    /// engine's bytes: random keys, tweaks, unit lengths from 1 to 40
    /// blocks (whole loop groups, whole registers and single blocks left
    /// over), in place and apart, cached and streaming. The cross-engine
    /// tests that say by name which engines this CPU lacks are in
    /// `tests/crypto.rs`.
    #[test]
    fn every_engine_here_matches_soft() {
        let mut engines: Vec<(Engine, bool)> = Engine::ALL
            .into_iter()
            .filter(|e| e.available() && *e != Engine::Soft)
            .map(|e| (e, true))
            .collect();
        if Engine::Vaes256.available() {
            engines.push((Engine::Vaes256, false));
        }
        let mut seed = 0x0ddb_a11c_afe5_eed5u64;
        for round in 0..200 {
            let klen = if round % 2 == 0 { 16 } else { 32 };
            let key: Vec<u8> = (0..klen).map(|_| rng(&mut seed) as u8).collect();
            let key2: Vec<u8> = (0..klen).map(|_| rng(&mut seed) as u8).collect();
            let slow = XtsCipher::with_engine(&key, &key2, Engine::Soft).unwrap();
            let unit = 16 * (1 + (rng(&mut seed) % 40) as usize);
            let units = 1 + (rng(&mut seed) % 6) as usize;
            let first = u128::from(rng(&mut seed)) << 64 | u128::from(rng(&mut seed));
            let data: Vec<u8> = (0..unit * units).map(|_| rng(&mut seed) as u8).collect();
            for dir in [Direction::Encrypt, Direction::Decrypt] {
                let mut want = vec![0; data.len()];
                slow.crypt_units_to(dir, &data, &mut want, unit, first);
                for &(engine, clmul) in &engines {
                    #[allow(unused_mut)]
                    let mut fast = XtsCipher::with_engine(&key, &key2, engine).unwrap();
                    #[cfg(target_arch = "x86_64")]
                    if let Some(super::super::vaes::Width::Y256 { clmul: c }) = &mut fast.width {
                        *c &= clmul;
                    }
                    let what = format!("round {round}: {engine} (clmul {clmul}) {dir:?}");
                    let mut got = vec![0; data.len()];
                    fast.crypt_units_to(dir, &data, &mut got, unit, first);
                    assert!(got == want, "{what}, {unit}-byte units, apart");
                    let mut inplace = data.clone();
                    fast.units_in_place(dir, &mut inplace, unit, first);
                    assert!(inplace == want, "{what}, {unit}-byte units, in place");
                }
            }
        }
    }

    /// Non-temporal output gives the same bytes as cached output, on
    /// 16-byte aligned destinations (the streaming kernel) and misaligned
    /// ones (which fall back to cached stores).
    #[test]
    fn streaming_stores_match_cached_ones() {
        let mut seed = 0x5eed_0f57_4ea3u64;
        for round in 0..40 {
            let klen = if round % 2 == 0 { 16 } else { 32 };
            let key: Vec<u8> = (0..klen).map(|_| rng(&mut seed) as u8).collect();
            let key2: Vec<u8> = (0..klen).map(|_| rng(&mut seed) as u8).collect();
            let x = XtsCipher::new(&key, &key2).unwrap();
            let unit = [512, 4096][round % 2];
            let units = 1 + (rng(&mut seed) % 4) as usize;
            let len = unit * units;
            let data: Vec<u8> = (0..len).map(|_| rng(&mut seed) as u8).collect();
            let first = rng(&mut seed) as u128;
            for dir in [Direction::Encrypt, Direction::Decrypt] {
                let mut want = vec![0u8; len];
                x.crypt_units_to(dir, &data, &mut want, unit, first);
                // 16-aligned storage, used from offset 0 and from offset 1.
                let mut store = vec![0u128; len / 16 + 1];
                let base = store.as_mut_ptr().cast::<u8>();
                for skew in [0, 1] {
                    let s = [IoVec {
                        ptr: data.as_ptr().cast_mut(),
                        iova: 0,
                        len,
                    }];
                    let d = [IoVec {
                        ptr: base.wrapping_add(skew),
                        iova: 0,
                        len,
                    }];
                    // SAFETY: `store` holds `len + 16` bytes; the source is
                    // only read and distinct.
                    let got = unsafe {
                        x.crypt_segs(
                            dir,
                            &s,
                            0,
                            &d,
                            0,
                            unit,
                            units as u64,
                            Store::Streaming,
                            |u| first.wrapping_add(u as u128),
                        );
                        std::slice::from_raw_parts(base.add(skew), len).to_vec()
                    };
                    assert!(got == want, "round {round}: {dir:?}, skew {skew}");
                }
            }
        }
    }

    #[test]
    fn debug_never_shows_keys() {
        let x = XtsCipher::new(&[0xab; 32], &[0xcd; 32]).unwrap();
        let s = format!("{x:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
        assert!(XtsCipher::new(&[1; 24], &[2; 24]).is_err());
        assert!(XtsCipher::new(&[1; 16], &[2; 32]).is_err());
    }
}
