//! The crypto vbdev: inline AES-XTS on the submitting core (SPDK's
//! `bdev_crypto` with a software accel module, but no hop to another core).
//!
//! ```text
//!   caller ──write(plain)──> crypto ──encrypt into a DMA buffer──> base write
//!                              │      (per-channel DmaCache, <= 128 KiB
//!                              │       per base write; the caller's buffer
//!                              │       is never modified)
//!   caller <──read(plain)─── crypto <──decrypt in place─── base read
//! ```
//!
//! Over a base that lends its memory ([`IoType::Zcopy`]: malloc), there is
//! no copy besides the cipher's own pass: writes encrypt from the caller's
//! buffer straight into a zero-copy window on the base (committed), reads
//! decrypt from a populated window straight into the caller's buffer.
//! Writes with FUA take the DMA-buffer path (a window has no FUA).
//!
//! * Keys are named and kept by [`key_create`] (SPDK's
//!   `accel_crypto_key_create`); a crypto bdev names its key
//!   ([`create`]) and the key cannot be destroyed while a bdev uses it.
//! * Each logical block is one XTS data unit whose tweak is its LBA as a
//!   little-endian 128-bit number ([`TweakMode::SimpleLba`], the default):
//!   dm-crypt's `aes-xts-plain64` with the same key (`key || key2`) and
//!   sector size (`--iv-large-sectors` for 4096-byte blocks) opens the
//!   volume. The other SPDK tweak modes are there too.
//! * The cipher runs on the fastest [`Engine`] the CPU has (VAES on zmm or
//!   ymm registers, AES-NI, or the `aes` crate), each checked by a
//!   known-answer self-test before first use; `CRYPTO_ENGINE` overrides
//!   the choice and `dump_info_json` names it (`engine`).
//! * Flush and Reset pass through. Unmap passes through: unmapped blocks
//!   then read back as whatever the base returns, decrypted — undefined
//!   data, not zeroes (as in SPDK). Write zeroes writes encrypted zeroes,
//!   so zeroes read back. Compare is not supported.
//! * The base's Resize makes this bdev follow and its openers see Resize;
//!   the base's removal unregisters it (the passthrough template's
//!   [`Base`] and `follow_base`).

#[cfg(target_arch = "x86_64")]
mod aesni;
mod engine;
mod keys;
#[cfg(target_arch = "x86_64")]
mod vaes;
mod xts;

use std::cell::RefCell;
use std::sync::Arc;

use dma::DmaCache;
use serde_json::json;

pub use engine::{ENGINE_ENV, Engine};
pub use keys::{
    CIPHER_AES_XTS, Key, TweakMode, key_create, key_destroy, keys_config_json, keys_get,
};
pub use xts::{Direction, Store, TWEAK_BATCH, XtsCipher};

use super::passthru::{Base, pass_down};
use crate::{
    Bdev, BdevChannel, BdevError, BdevIo, BdevOps, BdevProps, IoHandle, IoStatus, IoType, IoVec,
    MAX_IOV,
};

/// Most bytes one base write carries (the DMA cache's largest class):
/// larger writes and write-zeroes go down in chunks of this size, one after
/// the other.
pub const CHUNK_BYTES: usize = 128 * 1024;

/// Most bytes one zero-copy window on the base carries (bounds the time one
/// write-zeroes spends in the cipher before the reactor gets the core back).
pub const ZCOPY_CHUNK_BYTES: usize = 1024 * 1024;

// Words of `BdevIo::module_ctx` used by this module.
const CTX_CHANNEL: usize = 0;
const CTX_NEXT: usize = 1;
const CTX_END: usize = 2;
const CTX_CHUNK: usize = 3;
const CTX_ZEROES: usize = 4;

struct Crypto {
    name: String,
    uuid: String,
    base: Base,
    key: Arc<Key>,
    block_size: usize,
}

/// The per-core channel: the base's channel, the key, and this core's DMA
/// buffers for ciphertext.
pub struct CryptoChannel {
    base: BdevChannel,
    key: Arc<Key>,
    cache: RefCell<DmaCache>,
    block_size: usize,
    unit_len: usize,
    chunk_blocks: u64,
    /// Whether the base lends its memory (zero-copy windows).
    zcopy: bool,
    zcopy_chunk_blocks: u64,
}

impl CryptoChannel {
    /// Runs the blocks `lba..lba + n` from `src` (from byte `src_skip`) to
    /// `dst` (from byte `dst_skip`).
    ///
    /// # Safety
    /// As [`XtsCipher::crypt_segs`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn crypt(
        &self,
        dir: Direction,
        store: Store,
        src: &[IoVec],
        src_skip: usize,
        dst: &[IoVec],
        dst_skip: usize,
        lba: u64,
        n: u64,
    ) {
        let per_block = (self.block_size / self.unit_len) as u64;
        let mode = self.key.tweak_mode();
        // SAFETY: the caller's.
        unsafe {
            self.key.xts().crypt_segs(
                dir,
                src,
                src_skip,
                dst,
                dst_skip,
                self.unit_len,
                n * per_block,
                store,
                |u| mode.tweak(lba, per_block, u),
            )
        }
    }
}

/// The channel an I/O of this module was submitted on.
///
/// # Safety
/// `io` went through [`BdevOps::submit`] of this module, which recorded its
/// channel; the channel lives while the I/O is in flight (the I/O holds its
/// layer channel, which owns this one), and the reference must not be kept
/// beyond that.
unsafe fn channel_of<'a>(io: &BdevIo) -> &'a CryptoChannel {
    // SAFETY: see above.
    unsafe { &*(io.module_ctx[CTX_CHANNEL] as *const CryptoChannel) }
}

fn fail_status(e: &BdevError) -> IoStatus {
    if matches!(e, BdevError::NoMem(_)) {
        IoStatus::NoMem
    } else {
        IoStatus::Failed
    }
}

/// Reads from the base into the caller's segments and decrypts in place
/// when the base is done; over a zero-copy base, decrypts from the base's
/// window into the caller's segments.
fn read(ch: &CryptoChannel, mut io: IoHandle) {
    io.io_mut().module_ctx[CTX_CHANNEL] = ch as *const CryptoChannel as u64;
    let r = io.io();
    let (off, n) = (r.offset_blocks(), r.num_blocks());
    if ch.zcopy {
        return open_window(ch, io, off, n, true, read_window);
    }
    let mut iovs = [IoVec::EMPTY; MAX_IOV];
    let cnt = r.iovs().len();
    iovs[..cnt].copy_from_slice(r.iovs());
    let raw = io.into_raw();
    // SAFETY: the segments belong to the parent I/O, which stays in flight
    // (and its submitter waiting) until `read_done` completes it.
    let res = unsafe {
        ch.base
            .submit_iovs(IoType::Read, off, n, &iovs[..cnt], false, read_done, raw)
    };
    if let Err(e) = res {
        // SAFETY: the child was not started: the handle is still ours.
        unsafe { IoHandle::from_raw(raw) }.complete(fail_status(&e));
    }
}

fn read_done(child: &mut BdevIo, status: IoStatus) {
    // SAFETY: `ctx` is the parent handle passed down in `read`.
    let parent = unsafe { IoHandle::from_raw(child.ctx()) };
    if status.is_success() {
        let p = parent.io();
        // SAFETY: recorded in `read`.
        let ch = unsafe { channel_of(p) };
        // SAFETY: the parent's segments are valid and ours until it
        // completes; the base is done with them. In place.
        unsafe {
            ch.crypt(
                Direction::Decrypt,
                Store::Cached,
                p.iovs(),
                0,
                p.iovs(),
                0,
                p.offset_blocks(),
                p.num_blocks(),
            )
        };
    }
    parent.complete(status);
}

/// Opens a window on the base for blocks `lba..lba + n` on behalf of `io`
/// (the window's context word); `cb` gets it open.
fn open_window(
    ch: &CryptoChannel,
    io: IoHandle,
    lba: u64,
    n: u64,
    populate: bool,
    cb: crate::IoCallback,
) {
    let raw = io.into_raw();
    if let Err(e) = ch.base.zcopy_start(lba, n, populate, cb, raw) {
        // SAFETY: the window was not started: the handle is still ours.
        unsafe { IoHandle::from_raw(raw) }.complete(fail_status(&e));
    }
}

/// The base's populated window is open: decrypt it into the caller's
/// segments, then close it.
fn read_window(child: &mut BdevIo, status: IoStatus) {
    // SAFETY: `ctx` is the parent handle passed down in `read`.
    let parent = unsafe { IoHandle::from_raw(child.ctx()) };
    if !status.is_success() {
        return parent.complete(status);
    }
    let p = parent.io();
    // SAFETY: recorded in `read`.
    let ch = unsafe { channel_of(p) };
    // SAFETY: the window's segments are the base's memory for exactly these
    // blocks, valid during this callback and only read; the parent's
    // segments are the caller's, valid until it completes, and distinct.
    unsafe {
        ch.crypt(
            Direction::Decrypt,
            Store::Cached,
            child.iovs(),
            0,
            p.iovs(),
            0,
            p.offset_blocks(),
            p.num_blocks(),
        )
    };
    child.zcopy_end(false, read_window_closed, parent.into_raw());
}

fn read_window_closed(child: &mut BdevIo, status: IoStatus) {
    // SAFETY: `ctx` is the parent handle passed on in `read_window`.
    unsafe { IoHandle::from_raw(child.ctx()) }.complete(status);
}

/// Starts a write or write-zeroes: chunks of at most [`CHUNK_BYTES`],
/// encrypted into a DMA buffer and written one after the other — or, over
/// a zero-copy base, chunks of at most [`ZCOPY_CHUNK_BYTES`] encrypted
/// straight into a window on the base and committed.
fn write(ch: &CryptoChannel, mut io: IoHandle, zeroes: bool) {
    let (off, n) = (io.io().offset_blocks(), io.io().num_blocks());
    let ctx = &mut io.io_mut().module_ctx;
    ctx[CTX_CHANNEL] = ch as *const CryptoChannel as u64;
    ctx[CTX_NEXT] = off;
    ctx[CTX_END] = off + n;
    ctx[CTX_ZEROES] = zeroes as u64;
    write_chunk(ch, io);
}

fn write_chunk(ch: &CryptoChannel, mut io: IoHandle) {
    let r = io.io();
    let (next, end, zeroes) = (
        r.module_ctx[CTX_NEXT],
        r.module_ctx[CTX_END],
        r.module_ctx[CTX_ZEROES] != 0,
    );
    debug_assert!(next < end);
    if ch.zcopy && !r.fua() {
        let n = (end - next).min(ch.zcopy_chunk_blocks);
        io.io_mut().module_ctx[CTX_CHUNK] = n;
        return open_window(ch, io, next, n, false, write_window);
    }
    let n = (end - next).min(ch.chunk_blocks);
    let len = n as usize * ch.block_size;
    let buf = match ch.cache.borrow_mut().alloc(len) {
        Ok(b) => b,
        Err(e) => {
            // The layer queues the I/O and submits it again from the start
            // (rewriting the same blocks is harmless).
            log::warn!("crypto: no {len}-byte DMA buffer for ciphertext: {e}");
            return io.complete(IoStatus::NoMem);
        }
    };
    let seg = [IoVec::of(&buf, 0, len)];
    // SAFETY: the buffer is ours, `len` bytes, and nothing else touches it
    // until it is submitted below.
    unsafe { encrypt_chunk(ch, r, &seg, next, n, zeroes) };
    let fua = r.fua();
    let m = io.io_mut();
    m.module_ctx[CTX_CHUNK] = n;
    m.module_buf = Some(buf);
    let raw = io.into_raw();
    // SAFETY: the segment is the DMA buffer held in the parent's
    // `module_buf` until `write_done` takes it back.
    let res = unsafe {
        ch.base
            .submit_iovs(IoType::Write, next, n, &seg, fua, write_done, raw)
    };
    if let Err(e) = res {
        // SAFETY: the child was not started: the handle is still ours.
        let mut io = unsafe { IoHandle::from_raw(raw) };
        if let Some(b) = io.io_mut().module_buf.take() {
            ch.cache.borrow_mut().free(b);
        }
        io.complete(fail_status(&e));
    }
}

/// Puts the ciphertext of blocks `next..next + n` of write `r` into `dst`:
/// the caller's blocks encrypted (written past the caches: the CPU does not
/// read ciphertext back), or, for write zeroes, encrypted zeroes.
///
/// # Safety
/// `dst` is memory lent to us for writing, exactly `n` blocks, that does
/// not overlap the caller's segments.
unsafe fn encrypt_chunk(
    ch: &CryptoChannel,
    r: &BdevIo,
    dst: &[IoVec],
    next: u64,
    n: u64,
    zeroes: bool,
) {
    if zeroes {
        for v in dst {
            // SAFETY: `dst` is ours to write (this function's contract).
            unsafe { std::ptr::write_bytes(v.ptr, 0, v.len) };
        }
        // SAFETY: as above, in place.
        unsafe { ch.crypt(Direction::Encrypt, Store::Cached, dst, 0, dst, 0, next, n) };
    } else {
        let skip = (next - r.offset_blocks()) as usize * ch.block_size;
        // SAFETY: the caller's segments are valid until the I/O completes
        // and only read; `dst` does not overlap them (this function's
        // contract).
        unsafe {
            ch.crypt(
                Direction::Encrypt,
                Store::Streaming,
                r.iovs(),
                skip,
                dst,
                0,
                next,
                n,
            )
        };
    }
}

/// The base's window for this chunk is open: encrypt the caller's blocks
/// (or zeroes) into it, then commit it.
fn write_window(child: &mut BdevIo, status: IoStatus) {
    // SAFETY: `ctx` is the parent handle passed down in `write_chunk`.
    let parent = unsafe { IoHandle::from_raw(child.ctx()) };
    if !status.is_success() {
        return parent.complete(status);
    }
    let r = parent.io();
    // SAFETY: recorded in `write`.
    let ch = unsafe { channel_of(r) };
    let (next, n) = (r.module_ctx[CTX_NEXT], r.module_ctx[CTX_CHUNK]);
    // SAFETY: the window is the base's memory for exactly these blocks,
    // lent to us for writing during this callback.
    unsafe { encrypt_chunk(ch, r, child.iovs(), next, n, r.module_ctx[CTX_ZEROES] != 0) };
    child.zcopy_end(true, write_done, parent.into_raw());
}

fn write_done(child: &mut BdevIo, status: IoStatus) {
    // SAFETY: `ctx` is the parent handle passed down in `write_chunk`.
    let mut parent = unsafe { IoHandle::from_raw(child.ctx()) };
    // SAFETY: recorded in `write`.
    let ch = unsafe { channel_of(parent.io()) };
    let m = parent.io_mut();
    if let Some(b) = m.module_buf.take() {
        ch.cache.borrow_mut().free(b);
    }
    if !status.is_success() {
        return parent.complete(status);
    }
    m.module_ctx[CTX_NEXT] += m.module_ctx[CTX_CHUNK];
    if m.module_ctx[CTX_NEXT] >= m.module_ctx[CTX_END] {
        parent.complete(IoStatus::Success);
    } else {
        // Called from the base's completion, never inside a submission, so
        // chunks do not recurse.
        write_chunk(ch, parent);
    }
}

impl BdevOps for Crypto {
    type Channel = CryptoChannel;

    fn create_channel(&self, _core: reactor::CoreId) -> Result<CryptoChannel, String> {
        let unit_len = self.key.tweak_mode().unit_len(self.block_size);
        Ok(CryptoChannel {
            base: self.base.channel()?,
            key: self.key.clone(),
            cache: RefCell::new(crate::memory().cache()),
            block_size: self.block_size,
            unit_len,
            chunk_blocks: (CHUNK_BYTES / self.block_size).max(1) as u64,
            zcopy: self.base.bdev.io_type_supported(IoType::Zcopy),
            zcopy_chunk_blocks: (ZCOPY_CHUNK_BYTES / self.block_size).max(1) as u64,
        })
    }

    fn submit(&self, ch: &CryptoChannel, io: IoHandle) {
        match io.io().io_type() {
            IoType::Read => read(ch, io),
            IoType::Write => write(ch, io, false),
            IoType::WriteZeroes => write(ch, io, true),
            IoType::Flush | IoType::Unmap | IoType::Reset => pass_down(&ch.base, io),
            // Not announced in `io_type_supported`: never reach here.
            IoType::Compare | IoType::Zcopy => io.complete(IoStatus::NotSupported),
        }
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        let base = &self.base.bdev;
        match ty {
            IoType::Read | IoType::Write | IoType::Flush | IoType::Unmap | IoType::Reset => {
                base.io_type_supported(ty)
            }
            IoType::WriteZeroes => base.io_type_supported(IoType::Write),
            IoType::Compare | IoType::Zcopy => false,
        }
    }

    fn dump_info_json(&self) -> serde_json::Value {
        json!({ "crypto": {
            "base_bdev_name": self.base.bdev.name(),
            "name": self.name,
            "key_name": self.key.name(),
            "engine": self.key.xts().engine().name(),
        } })
    }

    fn write_config_json(&self) -> Option<serde_json::Value> {
        Some(json!({
            "method": "bdev_crypto_create",
            "params": {
                "base_bdev_name": self.base.bdev.name(),
                "name": self.name,
                "key_name": self.key.name(),
                "uuid": self.uuid,
            }
        }))
    }

    fn destruct(&self) {
        self.base.close();
        keys::release(&self.key, &self.name);
    }
}

/// Creates crypto bdev `name` over `base_bdev_name` with key `key_name`
/// (SPDK's `bdev_crypto_create`): it claims the base and has the base's
/// geometry.
///
/// # Errors
/// [`BdevError::Exists`] for a taken name; [`BdevError::Invalid`]
/// (`key_name`) for an unknown key, (`block_size`) for a base whose blocks
/// are not whole 16-byte AES blocks (or not 512-byte multiples for the
/// INCR_512 tweak modes), (`uuid`) for a malformed `uuid`;
/// [`BdevError::NotFound`] for a missing base, [`BdevError::Claimed`] when
/// it is claimed already.
pub fn create(
    base_bdev_name: &str,
    name: &str,
    key_name: &str,
    uuid: Option<&str>,
) -> Result<Bdev, BdevError> {
    if crate::get(name).is_some() {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let uuid = match uuid {
        Some(u) => super::check_uuid(u)?,
        None => crate::new_uuid(),
    };
    let key = keys::acquire(key_name, name)?;
    let made = (|| {
        let base = Base::open(base_bdev_name, name, "crypto")?;
        let b = &base.bdev;
        let bs = b.block_size() as usize;
        let unit = key.tweak_mode().unit_len(bs);
        if !bs.is_multiple_of(16) || !bs.is_multiple_of(unit) || unit % 16 != 0 {
            return Err(BdevError::invalid(
                "block_size",
                format!(
                    "{base_bdev_name} has {bs}-byte blocks: XTS without ciphertext stealing \
                     needs whole {unit}-byte data units of whole 16-byte AES blocks"
                ),
            ));
        }
        let mut props = BdevProps::new(name, "crypto", b.block_size(), b.num_blocks());
        props.uuid = Some(uuid.clone());
        props.write_cache = b.props().write_cache;
        crate::register(
            "crypto",
            props,
            Crypto {
                name: name.to_owned(),
                uuid,
                base,
                key: key.clone(),
                block_size: bs,
            },
        )
    })();
    if made.is_err() {
        keys::release(&key, name);
    }
    made
}

/// Deletes crypto bdev `name` (releasing its base and its key).
///
/// # Errors
/// [`BdevError::NotFound`] when there is no crypto bdev of that name.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    crate::get(name)
        .filter(|b| b.module() == "crypto")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    crate::unregister(name).await
}
