//! The x86-64 AES-NI XTS kernel: six blocks in flight in registers (as
//! OpenSSL's: with their tweaks and a round key that fills the 16 XMM
//! registers; eight measured slower here), the next group's tweaks doubled
//! between the AES rounds' instructions.
//!
//! Built on the `aes` crate's parallel-block API, XTS has to whiten blocks
//! into a buffer, let the crate encrypt that buffer and whiten it again:
//! every block makes two extra trips through memory and the batches cannot
//! overlap, which cost a third of the throughput here. This kernel keeps
//! them in registers. It is used only when the CPU has AES-NI (detected at
//! run time, never assumed at build time); otherwise the `aes` crate path
//! runs. Round keys are zeroized when dropped.

use std::arch::x86_64::{
    __m128i, _mm_aesdec_si128, _mm_aesdeclast_si128, _mm_aesenc_si128, _mm_aesenclast_si128,
    _mm_aesimc_si128, _mm_aeskeygenassist_si128, _mm_loadu_si128, _mm_setzero_si128,
    _mm_shuffle_epi32, _mm_slli_si128, _mm_storeu_si128, _mm_xor_si128,
};

use super::xts::{Direction, Lane};

/// Blocks per iteration (`round8!` names this many registers).
const WIDE: usize = 6;

/// Expanded keys: `N` = 11 (AES-128) or 15 (AES-256) round keys for
/// encryption and for decryption (equivalent inverse cipher).
pub(crate) struct NiKeys<const N: usize> {
    enc: [__m128i; N],
    dec: [__m128i; N],
}

impl<const N: usize> Drop for NiKeys<N> {
    fn drop(&mut self) {
        for k in self.enc.iter_mut().chain(self.dec.iter_mut()) {
            // SAFETY: a valid, exclusively borrowed key slot; the volatile
            // write keeps the zeroing from being optimized away.
            unsafe { std::ptr::write_volatile(k, _mm_setzero_si128()) };
        }
    }
}

/// Whether this CPU runs the kernel.
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("aes")
}

/// One step of the key schedule (Intel's AES-NI white paper): `t1` with its
/// words prefix-xored, xored with word 3 (or 2, for AES-256's odd round
/// keys) of the `aeskeygenassist` result `t2`.
#[inline]
#[target_feature(enable = "aes")]
fn assist(mut t1: __m128i, t2: __m128i, shuffle_aa: bool) -> __m128i {
    let t2 = if shuffle_aa {
        _mm_shuffle_epi32::<0xaa>(t2)
    } else {
        _mm_shuffle_epi32::<0xff>(t2)
    };
    let mut t3 = _mm_slli_si128::<4>(t1);
    t1 = _mm_xor_si128(t1, t3);
    t3 = _mm_slli_si128::<4>(t3);
    t1 = _mm_xor_si128(t1, t3);
    t3 = _mm_slli_si128::<4>(t3);
    t1 = _mm_xor_si128(t1, t3);
    _mm_xor_si128(t1, t2)
}

macro_rules! step128 {
    ($k:ident, $i:expr, $rcon:expr) => {
        $k[$i] = assist(
            $k[$i - 1],
            _mm_aeskeygenassist_si128::<$rcon>($k[$i - 1]),
            false,
        );
    };
}

macro_rules! step256 {
    ($k:ident, $i:expr, $rcon:expr) => {
        $k[$i] = assist(
            $k[$i - 2],
            _mm_aeskeygenassist_si128::<$rcon>($k[$i - 1]),
            false,
        );
        $k[$i + 1] = assist($k[$i - 1], _mm_aeskeygenassist_si128::<0>($k[$i]), true);
    };
}

#[target_feature(enable = "aes")]
fn inverse<const N: usize>(enc: &[__m128i; N]) -> [__m128i; N] {
    let mut dec = [_mm_setzero_si128(); N];
    dec[0] = enc[N - 1];
    for i in 1..N - 1 {
        dec[i] = _mm_aesimc_si128(enc[N - 1 - i]);
    }
    dec[N - 1] = enc[0];
    dec
}

impl NiKeys<11> {
    /// Expands a 16-byte key.
    ///
    /// # Safety
    /// The CPU has AES-NI ([`available`]).
    #[target_feature(enable = "aes")]
    pub(crate) unsafe fn new(key: &[u8; 16]) -> Self {
        let mut k = [_mm_setzero_si128(); 11];
        // SAFETY: 16 readable bytes.
        k[0] = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
        step128!(k, 1, 0x01);
        step128!(k, 2, 0x02);
        step128!(k, 3, 0x04);
        step128!(k, 4, 0x08);
        step128!(k, 5, 0x10);
        step128!(k, 6, 0x20);
        step128!(k, 7, 0x40);
        step128!(k, 8, 0x80);
        step128!(k, 9, 0x1b);
        step128!(k, 10, 0x36);
        let dec = inverse(&k);
        NiKeys { enc: k, dec }
    }
}

impl NiKeys<15> {
    /// Expands a 32-byte key.
    ///
    /// # Safety
    /// The CPU has AES-NI ([`available`]).
    #[target_feature(enable = "aes")]
    pub(crate) unsafe fn new(key: &[u8; 32]) -> Self {
        let mut k = [_mm_setzero_si128(); 15];
        // SAFETY: 32 readable bytes.
        unsafe {
            k[0] = _mm_loadu_si128(key.as_ptr().cast());
            k[1] = _mm_loadu_si128(key.as_ptr().add(16).cast());
        }
        step256!(k, 2, 0x01);
        step256!(k, 4, 0x02);
        step256!(k, 6, 0x04);
        step256!(k, 8, 0x08);
        step256!(k, 10, 0x10);
        step256!(k, 12, 0x20);
        k[14] = assist(k[12], _mm_aeskeygenassist_si128::<0x40>(k[13]), false);
        let dec = inverse(&k);
        NiKeys { enc: k, dec }
    }
}

/// One AES round instruction (`$op`) over the group's blocks with one round
/// key, round-major: the group's rounds issue together so the AES units
/// always have independent blocks (compiled from intrinsics, LLVM orders
/// the work block by block, which cost a third of the throughput here).
macro_rules! round8 {
    ($op:literal, $x:ident, $k:expr) => {
        // SAFETY: AES-NI is present (`run`'s contract); the instructions
        // read and write only the registers named.
        unsafe {
            std::arch::asm!(
                concat!($op, " {0}, {6}"),
                concat!($op, " {1}, {6}"),
                concat!($op, " {2}, {6}"),
                concat!($op, " {3}, {6}"),
                concat!($op, " {4}, {6}"),
                concat!($op, " {5}, {6}"),
                inout(xmm_reg) $x[0],
                inout(xmm_reg) $x[1],
                inout(xmm_reg) $x[2],
                inout(xmm_reg) $x[3],
                inout(xmm_reg) $x[4],
                inout(xmm_reg) $x[5],
                in(xmm_reg) $k,
                options(pure, nomem, nostack, preserves_flags),
            )
        }
    };
}

#[inline(always)]
fn double(t: __m128i) -> __m128i {
    Lane(t).double().0
}

impl<const N: usize> NiKeys<N> {
    /// XTS over `blocks` whole blocks from `src` to `dst` (may be equal),
    /// starting from tweak `t` and leaving it at the next block's.
    ///
    /// # Safety
    /// The CPU has AES-NI; `src` is readable and `dst` writable for
    /// `16 * blocks` bytes; the two are equal or do not overlap.
    #[target_feature(enable = "aes")]
    pub(crate) unsafe fn run(
        &self,
        dir: Direction,
        mut src: *const u8,
        mut dst: *mut u8,
        mut blocks: usize,
        t: &mut Lane,
    ) {
        let keys = match dir {
            Direction::Encrypt => &self.enc,
            Direction::Decrypt => &self.dec,
        };
        let mut tw = t.0;
        if blocks >= WIDE {
            // This group's tweaks; the next group's are doubled between
            // this group's rounds (software pipelining: the serial chain
            // of doublings runs while the AES units work).
            let mut w = [_mm_setzero_si128(); WIDE];
            for wi in &mut w {
                *wi = tw;
                tw = double(tw);
            }
            while blocks >= WIDE {
                let mut x = [_mm_setzero_si128(); WIDE];
                for (i, (xi, wi)) in x.iter_mut().zip(&w).enumerate() {
                    // SAFETY: block i of `WIDE` remaining blocks.
                    let b = unsafe { _mm_loadu_si128(src.add(16 * i).cast()) };
                    *xi = _mm_xor_si128(_mm_xor_si128(b, *wi), keys[0]);
                }
                let mut next = [_mm_setzero_si128(); WIDE];
                for (r, k) in keys[1..N - 1].iter().enumerate() {
                    match dir {
                        Direction::Encrypt => round8!("aesenc", x, *k),
                        Direction::Decrypt => round8!("aesdec", x, *k),
                    }
                    if r < WIDE {
                        next[r] = tw;
                        tw = double(tw);
                    }
                }
                match dir {
                    Direction::Encrypt => round8!("aesenclast", x, keys[N - 1]),
                    Direction::Decrypt => round8!("aesdeclast", x, keys[N - 1]),
                }
                for (i, (xi, wi)) in x.iter().zip(&w).enumerate() {
                    // SAFETY: block i of the `WIDE` being written; every
                    // block of the group was read above, so `src == dst` is
                    // fine.
                    unsafe { _mm_storeu_si128(dst.add(16 * i).cast(), _mm_xor_si128(*xi, *wi)) };
                }
                w = next;
                // SAFETY: advancing within the run.
                unsafe {
                    src = src.add(16 * WIDE);
                    dst = dst.add(16 * WIDE);
                }
                blocks -= WIDE;
            }
            // The tweak of the first block not done yet.
            tw = w[0];
        }
        while blocks > 0 {
            // SAFETY: one block remains.
            let b = unsafe { _mm_loadu_si128(src.cast()) };
            let mut x = _mm_xor_si128(_mm_xor_si128(b, tw), keys[0]);
            match dir {
                Direction::Encrypt => {
                    for k in &keys[1..N - 1] {
                        x = _mm_aesenc_si128(x, *k);
                    }
                    x = _mm_aesenclast_si128(x, keys[N - 1]);
                }
                Direction::Decrypt => {
                    for k in &keys[1..N - 1] {
                        x = _mm_aesdec_si128(x, *k);
                    }
                    x = _mm_aesdeclast_si128(x, keys[N - 1]);
                }
            }
            // SAFETY: as above.
            unsafe {
                _mm_storeu_si128(dst.cast(), _mm_xor_si128(x, tw));
                src = src.add(16);
                dst = dst.add(16);
            }
            tw = double(tw);
            blocks -= 1;
        }
        t.0 = tw;
    }
}
