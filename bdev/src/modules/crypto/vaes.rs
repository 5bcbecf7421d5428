//! The x86-64 vector-AES (VAES) XTS kernels: one AES instruction ciphers
//! two blocks (`vaes256`, ymm registers) or four (`vaes512`, zmm).
//!
//! One loop, written once over a [`Wide`] register type, ciphers 16
//! blocks (256 bytes) per iteration: 8 ymm or 4 zmm registers of blocks,
//! each with a register of its own tweaks. Every round key is broadcast to
//! all lanes once per call. A block is whitened on the way in with one
//! three-way xor (block, tweak, first round key) and on the way out for
//! free: the last round's key is xored with the tweak (OpenSSL's trick).
//!
//! Tweaks: lane `j` of register `i` holds the tweak of block `i * B + j`
//! (B blocks per register), so the tweaks of the next iteration are these
//! times x^16 in GF(2^128): a two-byte shift left in each 128-bit lane,
//! the 16 bits shifted out folded back as their carry-less product with
//! 0x87 (one `vpclmulqdq` where the CPU has VPCLMULQDQ, else
//! `c ^ c<<1 ^ c<<2 ^ c<<7`, which is the same product written out: QEMU's
//! TCG CPU offers VAES without VPCLMULQDQ). Three of the four bits of
//! 0x87 stay within 23 bits, so nothing folds twice.
//!
//! The last blocks of a call that do not fill a register are left to the
//! AES-NI kernel (VAES implies AES-NI), with the tweak handed over.
//! Output goes through the caches, or past them (non-temporal stores) when
//! asked for and the destination is aligned to the register size.
//! Round keys are the AES-NI kernel's, expanded once per key.

use std::arch::x86_64::{
    __m128i, __m256i, __m512i, _MM_HINT_ET0, _MM_HINT_T0, _MM_PERM_BADC, _mm_prefetch,
    _mm256_aesdec_epi128, _mm256_aesdeclast_epi128, _mm256_aesenc_epi128, _mm256_aesenclast_epi128,
    _mm256_and_si256, _mm256_broadcastsi128_si256, _mm256_bslli_epi128, _mm256_bsrli_epi128,
    _mm256_castsi256_si128, _mm256_clmulepi64_epi128, _mm256_loadu_si256, _mm256_set_epi64x,
    _mm256_set_m128i, _mm256_set1_epi64x, _mm256_shuffle_epi32, _mm256_slli_epi64,
    _mm256_srli_epi64, _mm256_storeu_si256, _mm256_stream_si256, _mm256_xor_si256,
    _mm512_aesdec_epi128, _mm512_aesdeclast_epi128, _mm512_aesenc_epi128, _mm512_aesenclast_epi128,
    _mm512_and_si512, _mm512_broadcast_i32x4, _mm512_bslli_epi128, _mm512_bsrli_epi128,
    _mm512_castsi128_si512, _mm512_castsi512_si128, _mm512_clmulepi64_epi128, _mm512_inserti32x4,
    _mm512_loadu_si512, _mm512_set_epi64, _mm512_set1_epi64, _mm512_shuffle_epi32,
    _mm512_slli_epi64, _mm512_srli_epi64, _mm512_storeu_si512, _mm512_stream_si512,
    _mm512_ternarylogic_epi64, _mm512_xor_si512,
};

use super::aesni::NiKeys;
use super::xts::{Direction, Lane};

/// Blocks per loop iteration: the tweaks advance by x^16 from one
/// iteration to the next (a two-byte shift).
const GROUP: usize = 16;

/// Which registers a kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    /// ymm: VAES + AVX2.
    Y256 {
        /// Fold the tweaks' carries with `vpclmulqdq` (else with shifts).
        clmul: bool,
    },
    /// zmm: VAES + AVX-512F/BW + VPCLMULQDQ.
    Z512,
}

/// A register of 128-bit lanes (blocks or tweaks) and the operations the
/// kernel needs on it. Every method is `#[inline(always)]` and called only
/// from the `#[target_feature]` functions below, which have the features
/// the intrinsics need.
trait Wide: Copy {
    /// Blocks per register.
    const BLOCKS: usize;
    /// # Safety
    /// `p` readable for `16 * BLOCKS` bytes.
    unsafe fn load(p: *const u8) -> Self;
    /// # Safety
    /// `p` writable for `16 * BLOCKS` bytes.
    unsafe fn store(self, p: *mut u8);
    /// # Safety
    /// `p` writable for `16 * BLOCKS` bytes and aligned to that size.
    unsafe fn stream(self, p: *mut u8);
    fn bcast(k: __m128i) -> Self;
    fn xor(self, o: Self) -> Self;
    fn xor3(self, a: Self, b: Self) -> Self;
    fn enc(self, k: Self) -> Self;
    fn enclast(self, k: Self) -> Self;
    fn dec(self, k: Self) -> Self;
    fn declast(self, k: Self) -> Self;
    /// Every lane times x^16.
    fn mul_x16<const CLMUL: bool>(self) -> Self;
    /// Every lane times x^BLOCKS (setup only: from one register's tweaks
    /// to the next's).
    fn mul_x_blocks(self) -> Self;
    /// The tweaks `t, t·x, …` of `BLOCKS` consecutive blocks.
    fn tweaks(t: Lane) -> Self;
    /// The first lane.
    fn lane0(self) -> __m128i;
}

/// A ymm register: two lanes.
#[derive(Clone, Copy)]
struct Y(__m256i);

/// A zmm register: four lanes.
#[derive(Clone, Copy)]
struct Z(__m512i);

// The `#[allow(unused_unsafe)]`s: intrinsics are safe to call inside
// `#[target_feature]` functions, and these methods are only inlined there;
// as written, outside such a function, the calls need `unsafe`.
impl Wide for Y {
    const BLOCKS: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        // SAFETY: the caller vouches for the bytes; AVX is present.
        Y(unsafe { _mm256_loadu_si256(p.cast()) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut u8) {
        // SAFETY: as `load`.
        unsafe { _mm256_storeu_si256(p.cast(), self.0) }
    }
    #[inline(always)]
    unsafe fn stream(self, p: *mut u8) {
        // SAFETY: as `load`, 32-byte aligned (caller).
        unsafe { _mm256_stream_si256(p.cast(), self.0) }
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn bcast(k: __m128i) -> Self {
        // SAFETY: AVX2 (every caller has it).
        Y(unsafe { _mm256_broadcastsi128_si256(k) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn xor(self, o: Self) -> Self {
        // SAFETY: AVX2.
        Y(unsafe { _mm256_xor_si256(self.0, o.0) })
    }
    #[inline(always)]
    fn xor3(self, a: Self, b: Self) -> Self {
        self.xor(a).xor(b)
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn enc(self, k: Self) -> Self {
        // SAFETY: VAES + AVX.
        Y(unsafe { _mm256_aesenc_epi128(self.0, k.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn enclast(self, k: Self) -> Self {
        // SAFETY: VAES + AVX.
        Y(unsafe { _mm256_aesenclast_epi128(self.0, k.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn dec(self, k: Self) -> Self {
        // SAFETY: VAES + AVX.
        Y(unsafe { _mm256_aesdec_epi128(self.0, k.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn declast(self, k: Self) -> Self {
        // SAFETY: VAES + AVX.
        Y(unsafe { _mm256_aesdeclast_epi128(self.0, k.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn mul_x16<const CLMUL: bool>(self) -> Self {
        // SAFETY: AVX2, and VPCLMULQDQ where CLMUL (the caller's features).
        unsafe {
            let c = _mm256_bsrli_epi128::<14>(self.0);
            let s = _mm256_bslli_epi128::<2>(self.0);
            let fold = if CLMUL {
                _mm256_clmulepi64_epi128::<0x00>(c, _mm256_set1_epi64x(0x87))
            } else {
                let c1 = _mm256_slli_epi64::<1>(c);
                let c2 = _mm256_slli_epi64::<2>(c);
                let c7 = _mm256_slli_epi64::<7>(c);
                _mm256_xor_si256(_mm256_xor_si256(c, c1), _mm256_xor_si256(c2, c7))
            };
            Y(_mm256_xor_si256(s, fold))
        }
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn mul_x_blocks(self) -> Self {
        // Times x^2: each 64-bit half shifts left by 2; the top 2 bits of
        // the low half enter the high half, those of the high half fold
        // into the low half as their product with 0x87.
        // SAFETY: AVX2.
        unsafe {
            let a = _mm256_slli_epi64::<2>(self.0);
            let b = _mm256_shuffle_epi32::<0x4e>(_mm256_srli_epi64::<62>(self.0));
            let m = _mm256_and_si256(b, _mm256_set_epi64x(0, -1, 0, -1));
            let f = _mm256_xor_si256(
                _mm256_xor_si256(_mm256_slli_epi64::<1>(m), _mm256_slli_epi64::<2>(m)),
                _mm256_slli_epi64::<7>(m),
            );
            Y(_mm256_xor_si256(_mm256_xor_si256(a, b), f))
        }
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn tweaks(t: Lane) -> Self {
        // SAFETY: AVX.
        Y(unsafe { _mm256_set_m128i(t.double().0, t.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn lane0(self) -> __m128i {
        // SAFETY: AVX.
        unsafe { _mm256_castsi256_si128(self.0) }
    }
}

impl Wide for Z {
    const BLOCKS: usize = 4;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        // SAFETY: the caller vouches for the bytes; AVX-512F is present.
        Z(unsafe { _mm512_loadu_si512(p.cast()) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut u8) {
        // SAFETY: as `load`.
        unsafe { _mm512_storeu_si512(p.cast(), self.0) }
    }
    #[inline(always)]
    unsafe fn stream(self, p: *mut u8) {
        // SAFETY: as `load`, 64-byte aligned (caller).
        unsafe { _mm512_stream_si512(p.cast(), self.0) }
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn bcast(k: __m128i) -> Self {
        // SAFETY: AVX-512F.
        Z(unsafe { _mm512_broadcast_i32x4(k) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn xor(self, o: Self) -> Self {
        // SAFETY: AVX-512F.
        Z(unsafe { _mm512_xor_si512(self.0, o.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn xor3(self, a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F.
        Z(unsafe { _mm512_ternarylogic_epi64::<0x96>(self.0, a.0, b.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn enc(self, k: Self) -> Self {
        // SAFETY: VAES + AVX-512F.
        Z(unsafe { _mm512_aesenc_epi128(self.0, k.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn enclast(self, k: Self) -> Self {
        // SAFETY: VAES + AVX-512F.
        Z(unsafe { _mm512_aesenclast_epi128(self.0, k.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn dec(self, k: Self) -> Self {
        // SAFETY: VAES + AVX-512F.
        Z(unsafe { _mm512_aesdec_epi128(self.0, k.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn declast(self, k: Self) -> Self {
        // SAFETY: VAES + AVX-512F.
        Z(unsafe { _mm512_aesdeclast_epi128(self.0, k.0) })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn mul_x16<const CLMUL: bool>(self) -> Self {
        // Always with `vpclmulqdq` (the zmm engine requires it).
        // SAFETY: AVX-512F/BW + VPCLMULQDQ.
        unsafe {
            let c = _mm512_bsrli_epi128::<14>(self.0);
            let s = _mm512_bslli_epi128::<2>(self.0);
            let fold = _mm512_clmulepi64_epi128::<0x00>(c, _mm512_set1_epi64(0x87));
            Z(_mm512_xor_si512(s, fold))
        }
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn mul_x_blocks(self) -> Self {
        // Times x^4, as `Y::mul_x_blocks` with 4 bits; the fold of the
        // high half's top bits `c` is `c` (already in `b`) plus their
        // carry-less product with 0x86 (x^7 + x^2 + x).
        // SAFETY: AVX-512F + VPCLMULQDQ.
        unsafe {
            let a = _mm512_slli_epi64::<4>(self.0);
            let b = _mm512_shuffle_epi32::<_MM_PERM_BADC>(_mm512_srli_epi64::<60>(self.0));
            let m = _mm512_and_si512(b, _mm512_set_epi64(0, -1, 0, -1, 0, -1, 0, -1));
            let f = _mm512_clmulepi64_epi128::<0x00>(m, _mm512_set1_epi64(0x86));
            Z(_mm512_ternarylogic_epi64::<0x96>(a, b, f))
        }
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn tweaks(t: Lane) -> Self {
        let t1 = t.double();
        let t2 = t1.double();
        let t3 = t2.double();
        // SAFETY: AVX-512F.
        Z(unsafe {
            let z = _mm512_castsi128_si512(t.0);
            let z = _mm512_inserti32x4::<1>(z, t1.0);
            let z = _mm512_inserti32x4::<2>(z, t2.0);
            _mm512_inserti32x4::<3>(z, t3.0)
        })
    }
    #[inline(always)]
    #[allow(unused_unsafe)]
    fn lane0(self) -> __m128i {
        // SAFETY: AVX-512F.
        unsafe { _mm512_castsi512_si128(self.0) }
    }
}

/// Output kinds (a const parameter of the kernel).
const STREAM: u8 = 0;
const APART: u8 = 1;
const IN_PLACE: u8 = 2;

/// The loop: whole registers of blocks from `src` to `dst`, `R` registers
/// per iteration (`R * W::BLOCKS == GROUP`). Returns how many blocks it
/// did (all but the last `blocks % W::BLOCKS`) and leaves `t` at the
/// tweak of the first block not done.
///
/// # Safety
/// The CPU has the features of `W` (and VPCLMULQDQ with `CLMUL`), the
/// caller is a `#[target_feature]` function enabling them; `src` readable
/// and `dst` writable for `16 * blocks` bytes, equal or not overlapping;
/// with `OUT == STREAM`, `dst` aligned to `16 * W::BLOCKS` bytes.
#[inline(always)]
unsafe fn xts<
    W: Wide,
    const N: usize,
    const R: usize,
    const ENC: bool,
    const OUT: u8,
    const CLMUL: bool,
>(
    keys: &[__m128i; N],
    mut src: *const u8,
    mut dst: *mut u8,
    blocks: usize,
    t: &mut Lane,
) -> usize {
    const { assert!(N == 11 || N == 15) };
    debug_assert_eq!(R * W::BLOCKS, GROUP);
    let vl = 16 * W::BLOCKS;
    let k: [W; N] = std::array::from_fn(|i| W::bcast(keys[i]));
    let mut tw = [W::tweaks(*t); R];
    for i in 1..R {
        tw[i] = tw[i - 1].mul_x_blocks();
    }
    let put = |y: W, p: *mut u8| {
        // SAFETY: a register's bytes within `dst`'s run (the caller's
        // bounds), aligned when streaming.
        unsafe {
            if OUT == STREAM {
                y.stream(p)
            } else {
                y.store(p)
            }
        }
    };
    for _ in 0..blocks / GROUP {
        // The source streams from memory on the bdev path (a malloc disk)
        // and the hardware prefetcher stops at 4 KiB pages: 2 KiB ahead,
        // as the AES-NI kernel. The destination for writing when it is
        // written through the caches and apart from the source.
        for l in 0..GROUP * 16 / 64 {
            let p = src.wrapping_add(2048 + 64 * l).cast::<i8>();
            // SAFETY: a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
            if OUT == APART {
                let q = dst.wrapping_add(2048 + 64 * l).cast::<i8>();
                // SAFETY: as above.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(q) };
            }
        }
        // SAFETY: the group's `R` registers are within the run.
        let y = unsafe { cipher::<W, N, R, ENC>(src, &tw, &k) };
        for (i, y) in y.into_iter().enumerate() {
            put(y, dst.wrapping_add(i * vl));
        }
        for twi in tw.iter_mut() {
            *twi = twi.mul_x16::<CLMUL>();
        }
        src = src.wrapping_add(GROUP * 16);
        dst = dst.wrapping_add(GROUP * 16);
    }
    // Whole registers left: their tweaks are the next iteration's first.
    let mut rem = blocks % GROUP;
    let mut i = 0;
    while rem >= W::BLOCKS {
        // SAFETY: one register of blocks remains in the run.
        let [y] = unsafe { cipher::<W, N, 1, ENC>(src, &tw[i..=i], &k) };
        put(y, dst);
        src = src.wrapping_add(vl);
        dst = dst.wrapping_add(vl);
        rem -= W::BLOCKS;
        i += 1;
    }
    *t = Lane(tw[i].lane0());
    blocks - rem
}

/// Ciphers the `M` registers of blocks at `src` with their tweaks `tw`
/// (the first `M`), each round issued for all `M` together: whitened on
/// the way in with one three-way xor (block, tweak, first round key), on
/// the way out by the last round (its key xored with the tweak).
///
/// # Safety
/// As [`xts`]; `src` readable for `M` registers.
#[inline(always)]
unsafe fn cipher<W: Wide, const N: usize, const M: usize, const ENC: bool>(
    src: *const u8,
    tw: &[W],
    k: &[W; N],
) -> [W; M] {
    let vl = 16 * W::BLOCKS;
    let mut x: [W; M] = std::array::from_fn(|i| {
        // SAFETY: register i is within the run (the caller's).
        unsafe { W::load(src.add(i * vl)) }.xor3(tw[i], k[0])
    });
    for key in &k[1..N - 1] {
        for xi in x.iter_mut() {
            *xi = if ENC { xi.enc(*key) } else { xi.dec(*key) };
        }
    }
    std::array::from_fn(|i| {
        let last = k[N - 1].xor(tw[i]);
        if ENC {
            x[i].enclast(last)
        } else {
            x[i].declast(last)
        }
    })
}

/// Instantiates the kernel for one register type and feature set: the
/// `#[target_feature]` function the intrinsics are inlined into.
macro_rules! entry {
    ($name:ident, $w:ty, $r:literal, $clmul:literal, $features:literal) => {
        /// # Safety
        /// As [`xts`]; the CPU has the features enabled here.
        #[target_feature(enable = $features)]
        unsafe fn $name<const N: usize, const ENC: bool, const OUT: u8>(
            keys: &[__m128i; N],
            src: *const u8,
            dst: *mut u8,
            blocks: usize,
            t: &mut Lane,
        ) -> usize {
            // SAFETY: the caller's contract, this function's features.
            unsafe { xts::<$w, N, $r, ENC, OUT, $clmul>(keys, src, dst, blocks, t) }
        }
    };
}

entry!(y256, Y, 8, false, "aes,avx2,vaes");
entry!(y256_clmul, Y, 8, true, "aes,avx2,vaes,vpclmulqdq");
entry!(z512, Z, 4, true, "aes,avx512f,avx512bw,vaes,vpclmulqdq");

/// XTS over `blocks` whole blocks from `src` to `dst` (may be equal) on
/// `width`'s registers, starting from tweak `t` and leaving it at the next
/// block's. With `stream`, encryption to a destination aligned to the
/// register size is written with non-temporal stores (the caller ends with
/// an `sfence`).
///
/// # Safety
/// The CPU has `width`'s features ([`super::Engine::available`]); `src`
/// readable and `dst` writable for `16 * blocks` bytes, equal or not
/// overlapping.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run<const N: usize>(
    keys: &NiKeys<N>,
    width: Width,
    dir: Direction,
    src: *const u8,
    dst: *mut u8,
    blocks: usize,
    t: &mut Lane,
    stream: bool,
) {
    let vl = match width {
        Width::Y256 { .. } => 32,
        Width::Z512 => 64,
    };
    let out = if stream && dir == Direction::Encrypt && (dst as usize).is_multiple_of(vl) {
        STREAM
    } else if dst.cast_const() != src {
        APART
    } else {
        IN_PLACE
    };
    let rk = keys.round_keys(dir);
    macro_rules! pick {
        ($f:ident) => {
            // SAFETY: the caller's contract; `$f`'s features are `width`'s.
            unsafe {
                match (dir, out) {
                    (Direction::Encrypt, STREAM) => $f::<N, true, STREAM>(rk, src, dst, blocks, t),
                    (Direction::Encrypt, APART) => $f::<N, true, APART>(rk, src, dst, blocks, t),
                    (Direction::Encrypt, _) => $f::<N, true, IN_PLACE>(rk, src, dst, blocks, t),
                    (Direction::Decrypt, APART) => $f::<N, false, APART>(rk, src, dst, blocks, t),
                    (Direction::Decrypt, _) => $f::<N, false, IN_PLACE>(rk, src, dst, blocks, t),
                }
            }
        };
    }
    let done = match width {
        Width::Y256 { clmul: false } => pick!(y256),
        Width::Y256 { clmul: true } => pick!(y256_clmul),
        Width::Z512 => pick!(z512),
    };
    if done < blocks {
        // SAFETY: the rest of the caller's run; VAES implies AES-NI.
        unsafe {
            keys.run(
                dir,
                src.add(16 * done),
                dst.add(16 * done),
                blocks - done,
                t,
                false,
            )
        };
    }
}
