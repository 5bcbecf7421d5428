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
//!   `Base` and `follow_base`).

#[cfg(target_arch = "x86_64")]
mod aesni;
mod engine;
mod keys;
pub mod rpc;
#[cfg(target_arch = "x86_64")]
mod vaes;
mod xts;

use std::cell::RefCell;
use std::rc::Rc;
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
    Bdev, BdevChannel, BdevError, BdevIo, BdevOps, BdevProps, Child, ChildData, IoHandle, IoStatus,
    IoType, Segments, SegmentsMut,
};

/// Most bytes one base write carries (the DMA cache's largest class):
/// larger writes and write-zeroes go down in chunks of this size, one after
/// the other.
pub const CHUNK_BYTES: usize = 128 * 1024;

/// Most bytes one zero-copy window on the base carries (bounds the time one
/// write-zeroes spends in the cipher before the reactor gets the core back).
pub const ZCOPY_CHUNK_BYTES: usize = 1024 * 1024;

// Words of `BdevIo::module_ctx` used by this module.
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
/// buffers for ciphertext (shared with the callbacks of this core's I/O).
pub struct CryptoChannel(Rc<ChannelInner>);

struct ChannelInner {
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

impl ChannelInner {
    /// Runs the blocks `lba..lba + n` from `src` (from byte `src_skip`) to
    /// `dst` (from byte `dst_skip`).
    #[allow(clippy::too_many_arguments)]
    fn crypt(
        &self,
        dir: Direction,
        store: Store,
        src: Segments<'_>,
        src_skip: usize,
        dst: SegmentsMut<'_>,
        dst_skip: usize,
        lba: u64,
        n: u64,
    ) {
        let per_block = (self.block_size / self.unit_len) as u64;
        let mode = self.key.tweak_mode();
        self.key.xts().crypt(
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

    /// As `crypt`, in place.
    fn crypt_in_place(&self, dir: Direction, data: SegmentsMut<'_>, lba: u64, n: u64) {
        let per_block = (self.block_size / self.unit_len) as u64;
        let mode = self.key.tweak_mode();
        self.key.xts().crypt_in_place(
            dir,
            data,
            0,
            self.unit_len,
            n * per_block,
            Store::Cached,
            |u| mode.tweak(lba, per_block, u),
        )
    }
}

/// This module's channel for an I/O it was given.
fn channel_of(io: &IoHandle) -> Option<Rc<ChannelInner>> {
    io.module_channel::<CryptoChannel>().map(|c| c.0.clone())
}

/// Reads from the base into the caller's segments and decrypts in place
/// when the base is done; over a zero-copy base, decrypts from the base's
/// window into the caller's segments.
fn read(ch: &ChannelInner, io: IoHandle) {
    let r = io.io();
    let (off, n) = (r.offset_blocks(), r.num_blocks());
    let started = if ch.zcopy {
        io.open_child_window(&ch.base, off, n, true, read_window)
    } else {
        let child = Child::same_as(r);
        io.submit_child(&ch.base, child, read_done)
    };
    if let Err(refused) = started {
        refused.fail_parent();
    }
}

fn read_done(mut parent: IoHandle, _child: &mut BdevIo, status: IoStatus) {
    if status.is_success() {
        let Some(ch) = channel_of(&parent) else {
            return parent.complete(IoStatus::Failed);
        };
        let (lba, n) = (parent.io().offset_blocks(), parent.io().num_blocks());
        // The base is done with the caller's segments: decrypt in place.
        ch.crypt_in_place(Direction::Decrypt, parent.io_mut().segments_mut(), lba, n);
    }
    parent.complete(status);
}

/// The base's populated window is open: decrypt it into the caller's
/// segments, then close it.
fn read_window(mut parent: IoHandle, window: &mut BdevIo, status: IoStatus) {
    if !status.is_success() {
        return parent.complete(status);
    }
    let Some(ch) = channel_of(&parent) else {
        return parent.complete(IoStatus::Failed);
    };
    let (lba, n) = (parent.io().offset_blocks(), parent.io().num_blocks());
    ch.crypt(
        Direction::Decrypt,
        Store::Cached,
        window.segments(),
        0,
        parent.io_mut().segments_mut(),
        0,
        lba,
        n,
    );
    window.end_child_window(false, parent, crate::complete_parent);
}

/// Starts a write or write-zeroes: chunks of at most [`CHUNK_BYTES`],
/// encrypted into a DMA buffer and written one after the other — or, over
/// a zero-copy base, chunks of at most [`ZCOPY_CHUNK_BYTES`] encrypted
/// straight into a window on the base and committed.
fn write(ch: &ChannelInner, mut io: IoHandle, zeroes: bool) {
    let (off, n) = (io.io().offset_blocks(), io.io().num_blocks());
    let ctx = &mut io.io_mut().module_ctx;
    ctx[CTX_NEXT] = off;
    ctx[CTX_END] = off + n;
    ctx[CTX_ZEROES] = zeroes as u64;
    write_chunk(ch, io);
}

fn write_chunk(ch: &ChannelInner, mut io: IoHandle) {
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
        if let Err(refused) = io.open_child_window(&ch.base, next, n, false, write_window) {
            refused.fail_parent();
        }
        return;
    }
    let n = (end - next).min(ch.chunk_blocks);
    let len = n as usize * ch.block_size;
    let mut buf = match ch.cache.borrow_mut().alloc(len) {
        Ok(b) => b,
        Err(e) => {
            // The layer queues the I/O and submits it again from the start
            // (rewriting the same blocks is harmless).
            log::warn!("crypto: no {len}-byte DMA buffer for ciphertext: {e}");
            return io.complete(IoStatus::NoMem);
        }
    };
    encrypt_chunk(ch, r, SegmentsMut::of_buf(&mut buf, len), next, n, zeroes);
    let fua = r.fua();
    io.io_mut().module_ctx[CTX_CHUNK] = n;
    let child = Child {
        ty: IoType::Write,
        offset_blocks: next,
        num_blocks: n,
        fua,
        src_offset_blocks: 0,
        data: ChildData::Buf(buf),
    };
    if let Err(mut refused) = io.submit_child(&ch.base, child, write_done) {
        if let Some(b) = refused.buf.take() {
            ch.cache.borrow_mut().free(b);
        }
        refused.fail_parent();
    }
}

/// Puts the ciphertext of blocks `next..next + n` of write `r` into `dst`
/// (exactly those blocks): the caller's blocks encrypted (written past the
/// caches: the CPU does not read ciphertext back), or, for write zeroes,
/// encrypted zeroes.
fn encrypt_chunk(
    ch: &ChannelInner,
    r: &BdevIo,
    mut dst: SegmentsMut<'_>,
    next: u64,
    n: u64,
    zeroes: bool,
) {
    if zeroes {
        fill_zero(&mut dst);
        ch.crypt_in_place(Direction::Encrypt, dst, next, n);
    } else {
        let skip = (next - r.offset_blocks()) as usize * ch.block_size;
        ch.crypt(
            Direction::Encrypt,
            Store::Streaming,
            r.segments(),
            skip,
            dst,
            0,
            next,
            n,
        );
    }
}

/// Zeroes every byte of `dst`.
fn fill_zero(dst: &mut SegmentsMut<'_>) {
    for s in dst.data_mut() {
        s.fill(0);
    }
}

/// The base's window for this chunk is open: encrypt the caller's blocks
/// (or zeroes) into it, then commit it.
fn write_window(parent: IoHandle, window: &mut BdevIo, status: IoStatus) {
    if !status.is_success() {
        return parent.complete(status);
    }
    let Some(ch) = channel_of(&parent) else {
        return parent.complete(IoStatus::Failed);
    };
    let r = parent.io();
    let (next, n) = (r.module_ctx[CTX_NEXT], r.module_ctx[CTX_CHUNK]);
    let zeroes = r.module_ctx[CTX_ZEROES] != 0;
    encrypt_chunk(&ch, r, window.segments_mut(), next, n, zeroes);
    window.end_child_window(true, parent, write_done);
}

fn write_done(mut parent: IoHandle, child: &mut BdevIo, status: IoStatus) {
    let Some(ch) = channel_of(&parent) else {
        return parent.complete(IoStatus::Failed);
    };
    if let Some(b) = child.take_buf() {
        ch.cache.borrow_mut().free(b);
    }
    if !status.is_success() {
        return parent.complete(status);
    }
    let m = parent.io_mut();
    m.module_ctx[CTX_NEXT] += m.module_ctx[CTX_CHUNK];
    if m.module_ctx[CTX_NEXT] >= m.module_ctx[CTX_END] {
        parent.complete(IoStatus::Success);
    } else {
        // Called from the base's completion, never inside a submission, so
        // chunks do not recurse.
        write_chunk(&ch, parent);
    }
}

impl BdevOps for Crypto {
    type Channel = CryptoChannel;

    fn create_channel(&self, _core: reactor::CoreId) -> Result<CryptoChannel, String> {
        let unit_len = self.key.tweak_mode().unit_len(self.block_size);
        Ok(CryptoChannel(Rc::new(ChannelInner {
            base: self.base.channel()?,
            key: self.key.clone(),
            cache: RefCell::new(crate::memory().cache()),
            block_size: self.block_size,
            unit_len,
            chunk_blocks: (CHUNK_BYTES / self.block_size).max(1) as u64,
            zcopy: self.base.bdev.io_type_supported(IoType::Zcopy),
            zcopy_chunk_blocks: (ZCOPY_CHUNK_BYTES / self.block_size).max(1) as u64,
        })))
    }

    fn submit(&self, ch: &CryptoChannel, io: IoHandle) {
        let ch = &ch.0;
        match io.io().io_type() {
            IoType::Read => read(ch, io),
            IoType::Write => write(ch, io, false),
            IoType::WriteZeroes => write(ch, io, true),
            IoType::Flush | IoType::Unmap | IoType::Reset => pass_down(&ch.base, io),
            // Not announced in `io_type_supported`: never reach here
            // (COPY is done by the layer with this bdev's reads and writes).
            IoType::Compare
            | IoType::Zcopy
            | IoType::SeekData
            | IoType::SeekHole
            | IoType::Copy
            | IoType::Abort => io.complete(IoStatus::NotSupported),
        }
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        let base = &self.base.bdev;
        match ty {
            IoType::Read | IoType::Write | IoType::Flush | IoType::Unmap | IoType::Reset => {
                base.io_type_supported(ty)
            }
            IoType::WriteZeroes => base.io_type_supported(IoType::Write),
            IoType::Compare
            | IoType::Zcopy
            | IoType::SeekData
            | IoType::SeekHole
            | IoType::Copy
            | IoType::Abort => false,
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
