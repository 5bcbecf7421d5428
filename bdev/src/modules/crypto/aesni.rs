//! The x86-64 AES-NI XTS kernel: eight blocks in flight in registers, each
//! AES round issued for the eight together, the tweaks of the group after
//! next doubled in general-purpose registers between the rounds (see
//! `xts8!` for the plan and why).
//!
//! Built on the `aes` crate's parallel-block API, XTS has to whiten blocks
//! into a buffer, let the crate encrypt that buffer and whiten it again:
//! every block makes two extra trips through memory and the batches cannot
//! overlap, which cost a third of the throughput here. This kernel keeps
//! them in registers. It is used only when the CPU has AES-NI (detected at
//! run time, never assumed at build time: [`super::Engine`]); otherwise the
//! `aes` crate path runs. Round keys are zeroized when dropped.

use std::arch::x86_64::{
    __m128i, _mm_aesdec_si128, _mm_aesdeclast_si128, _mm_aesenc_si128, _mm_aesenclast_si128,
    _mm_aesimc_si128, _mm_aeskeygenassist_si128, _mm_loadu_si128, _mm_set_epi64x,
    _mm_setzero_si128, _mm_shuffle_epi32, _mm_slli_si128, _mm_store_si128, _mm_storeu_si128,
    _mm_xor_si128,
};

use super::xts::{Direction, Lane};

/// Blocks per iteration (`xts8!` names this many registers).
const WIDE: usize = 8;

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

/// One middle round of the eight blocks, with round key `{keys} + $koff`
/// (one template string: `asm!` takes each argument as lines).
macro_rules! round {
    ($op:literal, $koff:literal) => {
        concat!(
            "movdqa xmm8, [{keys} + ",
            $koff,
            "]\n",
            $op,
            " xmm0, xmm8\n",
            $op,
            " xmm1, xmm8\n",
            $op,
            " xmm2, xmm8\n",
            $op,
            " xmm3, xmm8\n",
            $op,
            " xmm4, xmm8\n",
            $op,
            " xmm5, xmm8\n",
            $op,
            " xmm6, xmm8\n",
            $op,
            " xmm7, xmm8\n",
        )
    };
}

/// Stores the running tweak (`{lo}`, `{hi}`), xored with the last round
/// key, to slot `$slot` of `{wr}`, and doubles it: the bit leaving `hi`
/// folds back into `lo` as 0x87, the bit leaving `lo` enters `hi`
/// (`add`/`adc`). Issued after one middle round's AES instructions.
macro_rules! tweak {
    ($slot:literal, $slot_hi:literal) => {
        concat!(
            "mov {tmp}, {lo}\n",
            "xor {tmp}, [{kl}]\n",
            "mov [{wr} + ",
            $slot,
            "], {tmp}\n",
            "mov {tmp}, {hi}\n",
            "xor {tmp}, [{kl} + 8]\n",
            "mov [{wr} + ",
            $slot_hi,
            "], {tmp}\n",
            "mov {tmp}, {hi}\n",
            "sar {tmp}, 63\n",
            "and {tmp}, 0x87\n",
            "add {lo}, {lo}\n",
            "adc {hi}, {hi}\n",
            "xor {lo}, {tmp}\n",
        )
    };
}

/// The eight-block XTS loop, all in one `asm!` so the register and
/// instruction plan is ours (compiled from intrinsics, eight blocks plus
/// their tweaks spilled, and LLVM ordered the rounds block by block).
///
/// Measured on this project's AMD host (AES latency 4 cycles, two AES
/// units that the vector ALU ops share): eight blocks keep both AES units
/// busy where six cannot, and every vector instruction besides AES costs
/// AES time. So the tweaks are doubled in general-purpose registers (the
/// integer units are idle) and stored as `T ^ last round key` into slots:
/// a block is whitened on the way in with one `pxor` of its slot and one of
/// `k0 ^ k_last` (`xmm13`), and on the way out for free, as the memory
/// operand of the last AES round (OpenSSL's trick). The tweaks are written
/// two groups ahead, into a ring of three slot sets (`cur`, `nxt`, `wr`):
/// a group's 16-byte slot loads must not read 8-byte stores still in the
/// store queue (a store-forwarding stall that measured 20 % slower).
///
/// Registers: `xmm0`-`xmm7` the blocks, `xmm8` the round's key, `xmm13`
/// `k0 ^ k_last`.
macro_rules! xts8 {
    ($op:literal, $last:literal, $st:literal, $pfw:literal, [$($koff:literal),*], $src:ident,
     $dst:ident, $groups:ident,
     $cur:ident, $nxt:ident, $wr:ident, $keys:expr, $kl:expr, $lo:ident, $hi:ident,
     $k0kl:expr) => {
        std::arch::asm!(
            "2:",
            // 16 groups ahead: on the bdev path the source streams from L3
            // or memory (a malloc disk), and the hardware prefetcher stops
            // at every 4 KiB page. Measured here: decrypting from memory
            // went from 0.80 to 0.93 of the in-cache speed. Prefetches never
            // fault, past the end of the data too.
            "prefetcht0 [{src} + 2048]",
            "prefetcht0 [{src} + 2112]",
            // The destination too, for writing, when it is written through
            // the caches and is not the source: a read's plaintext into the
            // caller's buffers (4 MiB of them at QD32 x 128 KiB) otherwise
            // waits for each line to be read before it is written (+3-6 %
            // decrypting from a malloc disk here).
            $pfw,
            "movdqu xmm0, [{src}]",
            "movdqu xmm1, [{src} + 16]",
            "movdqu xmm2, [{src} + 32]",
            "movdqu xmm3, [{src} + 48]",
            "movdqu xmm4, [{src} + 64]",
            "movdqu xmm5, [{src} + 80]",
            "movdqu xmm6, [{src} + 96]",
            "movdqu xmm7, [{src} + 112]",
            "pxor xmm0, [{cur}]",
            "pxor xmm1, [{cur} + 16]",
            "pxor xmm2, [{cur} + 32]",
            "pxor xmm3, [{cur} + 48]",
            "pxor xmm4, [{cur} + 64]",
            "pxor xmm5, [{cur} + 80]",
            "pxor xmm6, [{cur} + 96]",
            "pxor xmm7, [{cur} + 112]",
            "pxor xmm0, xmm13",
            "pxor xmm1, xmm13",
            "pxor xmm2, xmm13",
            "pxor xmm3, xmm13",
            "pxor xmm4, xmm13",
            "pxor xmm5, xmm13",
            "pxor xmm6, xmm13",
            "pxor xmm7, xmm13",
            // Rounds 1..=8, each with one tweak of the group after next;
            // then the other middle rounds (1 for AES-128, 5 for AES-256).
            round!($op, "16"),
            tweak!("0", "8"),
            round!($op, "32"),
            tweak!("16", "24"),
            round!($op, "48"),
            tweak!("32", "40"),
            round!($op, "64"),
            tweak!("48", "56"),
            round!($op, "80"),
            tweak!("64", "72"),
            round!($op, "96"),
            tweak!("80", "88"),
            round!($op, "112"),
            tweak!("96", "104"),
            round!($op, "128"),
            tweak!("112", "120"),
            $(round!($op, $koff),)*
            concat!($last, " xmm0, [{cur}]"),
            concat!($last, " xmm1, [{cur} + 16]"),
            concat!($last, " xmm2, [{cur} + 32]"),
            concat!($last, " xmm3, [{cur} + 48]"),
            concat!($last, " xmm4, [{cur} + 64]"),
            concat!($last, " xmm5, [{cur} + 80]"),
            concat!($last, " xmm6, [{cur} + 96]"),
            concat!($last, " xmm7, [{cur} + 112]"),
            concat!($st, " [{dst}], xmm0"),
            concat!($st, " [{dst} + 16], xmm1"),
            concat!($st, " [{dst} + 32], xmm2"),
            concat!($st, " [{dst} + 48], xmm3"),
            concat!($st, " [{dst} + 64], xmm4"),
            concat!($st, " [{dst} + 80], xmm5"),
            concat!($st, " [{dst} + 96], xmm6"),
            concat!($st, " [{dst} + 112], xmm7"),
            // cur <- nxt <- wr <- cur.
            "mov {tmp}, {cur}",
            "mov {cur}, {nxt}",
            "mov {nxt}, {wr}",
            "mov {wr}, {tmp}",
            "add {src}, 128",
            "add {dst}, 128",
            "dec {groups}",
            "jnz 2b",
            src = inout(reg) $src,
            dst = inout(reg) $dst,
            groups = inout(reg) $groups => _,
            cur = inout(reg) $cur,
            nxt = inout(reg) $nxt => _,
            wr = inout(reg) $wr => _,
            keys = in(reg) $keys,
            kl = in(reg) $kl,
            lo = inout(reg) $lo => _,
            hi = inout(reg) $hi => _,
            tmp = out(reg) _,
            in("xmm13") $k0kl,
            out("xmm0") _,
            out("xmm1") _,
            out("xmm2") _,
            out("xmm3") _,
            out("xmm4") _,
            out("xmm5") _,
            out("xmm6") _,
            out("xmm7") _,
            out("xmm8") _,
            options(nostack),
        )
    };
}

/// Orders the non-temporal stores of [`NiKeys::run`] before what follows.
pub(crate) fn sfence() {
    // SAFETY: SSE is part of the x86-64 baseline; `sfence` only orders
    // stores.
    unsafe { std::arch::x86_64::_mm_sfence() }
}

#[inline(always)]
fn double(t: __m128i) -> __m128i {
    Lane(t).double().0
}

/// Where the kernel's output goes.
#[derive(Clone, Copy)]
enum Out {
    /// Past the caches (non-temporal stores).
    Stream,
    /// Through the caches, to other memory than the source.
    Apart,
    /// Over the source.
    InPlace,
}

/// Three sets of eight 16-byte tweak slots, aligned for the 16-byte loads.
#[repr(C, align(16))]
struct Slots([[u8; 16]; 3 * WIDE]);

/// The tweak as two little-endian 64-bit halves (the loop's form).
#[inline(always)]
fn halves(t: __m128i) -> (u64, u64) {
    let mut b = [0u8; 16];
    // SAFETY: a 16-byte local.
    unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), t) };
    let (lo, hi) = b.split_at(8);
    (
        u64::from_le_bytes(lo.try_into().expect("8 bytes")),
        u64::from_le_bytes(hi.try_into().expect("8 bytes")),
    )
}

/// Multiplication by x in GF(2^128) on the two halves.
#[inline(always)]
fn double_halves(lo: u64, hi: u64) -> (u64, u64) {
    let fold = ((hi as i64 >> 63) as u64) & 0x87;
    ((lo << 1) ^ fold, (hi << 1) | (lo >> 63))
}

impl<const N: usize> NiKeys<N> {
    /// The round keys for `dir` (the VAES kernels broadcast them).
    pub(crate) fn round_keys(&self, dir: Direction) -> &[__m128i; N] {
        match dir {
            Direction::Encrypt => &self.enc,
            Direction::Decrypt => &self.dec,
        }
    }

    /// XTS over `blocks` whole blocks from `src` to `dst` (may be equal),
    /// starting from tweak `t` and leaving it at the next block's.
    ///
    /// # Safety
    /// The CPU has AES-NI; `src` is readable and `dst` writable for
    /// `16 * blocks` bytes; the two are equal or do not overlap.
    #[target_feature(enable = "aes")]
    ///
    /// With `stream`, and `dst` 16-byte aligned, the whole groups are
    /// written with non-temporal stores (`movntdq`): for data the CPU will
    /// not read again soon; the caller ends with [`sfence`] before anyone
    /// else may read it.
    pub(crate) unsafe fn run(
        &self,
        dir: Direction,
        mut src: *const u8,
        mut dst: *mut u8,
        mut blocks: usize,
        t: &mut Lane,
        stream: bool,
    ) {
        let keys = match dir {
            Direction::Encrypt => &self.enc,
            Direction::Decrypt => &self.dec,
        };
        let mut tw = t.0;
        if blocks >= WIDE {
            let kl = keys[N - 1];
            let (kl_lo, kl_hi) = halves(kl);
            // The first two groups' slots; the loop writes the rest.
            // Not zeroed: every slot is written before it is read (the
            // first two sets here, the third by the loop's first group).
            let mut slots = std::mem::MaybeUninit::<Slots>::uninit();
            let base = slots.as_mut_ptr().cast::<u8>();
            let (mut lo, mut hi) = halves(tw);
            for i in 0..2 * WIDE {
                // One 16-byte store per slot: the loop's 16-byte loads of
                // these slots must not wait on two 8-byte stores.
                let slot = _mm_set_epi64x((hi ^ kl_hi) as i64, (lo ^ kl_lo) as i64);
                // SAFETY: slot i of the first two sets, 16 bytes in `slots`,
                // 16-aligned.
                unsafe { _mm_store_si128(base.add(16 * i).cast(), slot) };
                (lo, hi) = double_halves(lo, hi);
            }
            let mut cur = base;
            // SAFETY: the second and third sets of `3 * WIDE` slots.
            let (nxt, wr) = unsafe { (base.add(16 * WIDE), base.add(32 * WIDE)) };
            let groups = blocks / WIDE;
            let k0kl = _mm_xor_si128(keys[0], kl);
            let kp = keys.as_ptr();
            let klp = &keys[N - 1] as *const __m128i;
            // SAFETY: AES-NI is present (the caller's contract); `src` and
            // `dst` cover `groups * 128` bytes (all eight blocks of a group
            // are read before any is written, so `src == dst` is fine);
            // `cur`, `nxt` and `wr` are distinct 128-byte thirds of
            // `slots`, 16-aligned; `kp` points at the N round keys of which
            // the loop reads keys 1..N-2, `klp` at the last.
            unsafe {
                // N is 11 or 15 (the only `new`s), checked at build time.
                const { assert!(N == 11 || N == 15) };
                // Non-temporal stores when asked and aligned (encryption
                // only); else the destination is prefetched for writing
                // unless it is the source (in place, the source's prefetch
                // already brings the line: measured 3-8 % slower with both).
                let out = if stream && (dst as usize).is_multiple_of(16) {
                    Out::Stream
                } else if dst.cast_const() != src {
                    Out::Apart
                } else {
                    Out::InPlace
                };
                // The kernel for one choice of instructions; the operands
                // are always these.
                macro_rules! go {
                    ($op:literal, $last:literal, $st:literal, $pfw:literal, $r:tt) => {
                        xts8!(
                            $op, $last, $st, $pfw, $r, src, dst, groups, cur, nxt, wr, kp, klp, lo,
                            hi, k0kl
                        )
                    };
                }
                // Encryption with each kind of output, decryption with
                // cached output (it never streams).
                macro_rules! both {
                    ($r:tt) => {
                        match (dir, out) {
                            (Direction::Encrypt, Out::Stream) => {
                                go!("aesenc", "aesenclast", "movntdq", "", $r)
                            }
                            (Direction::Encrypt, Out::Apart) => {
                                go!(
                                    "aesenc",
                                    "aesenclast",
                                    "movdqu",
                                    "prefetchw [{dst} + 2048]\nprefetchw [{dst} + 2112]",
                                    $r
                                )
                            }
                            (Direction::Encrypt, Out::InPlace) => {
                                go!("aesenc", "aesenclast", "movdqu", "", $r)
                            }
                            (Direction::Decrypt, Out::Apart) => {
                                go!(
                                    "aesdec",
                                    "aesdeclast",
                                    "movdqu",
                                    "prefetchw [{dst} + 2048]\nprefetchw [{dst} + 2112]",
                                    $r
                                )
                            }
                            (Direction::Decrypt, Out::InPlace | Out::Stream) => {
                                go!("aesdec", "aesdeclast", "movdqu", "", $r)
                            }
                        }
                    };
                }
                if N == 11 {
                    both!(["144"])
                } else {
                    both!(["144", "160", "176", "192", "208"])
                }
            }
            blocks %= WIDE;
            // The tweak of the first block not done yet: the first slot of
            // the group the loop would have ciphered next, less the key.
            // SAFETY: `cur` points at a written 16-byte slot.
            tw = _mm_xor_si128(unsafe { _mm_loadu_si128(cur.cast()) }, kl);
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
