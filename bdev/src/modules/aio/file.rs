//! What the file-backed modules (aio, uring) share: opening the file
//! (`O_DIRECT` where the file system allows it), its size and block size
//! (a block device's ioctls, a regular file's size), whether `fallocate`
//! can punch holes and zero ranges in it, and the table of what each bdev
//! was made from (for `save_config` and `rescan`).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use crate::BdevError;

/// What a file-backed bdev was made from (for `save_config`, `rescan`).
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub name: String,
    pub filename: String,
    pub block_size: u32,
    pub readonly: bool,
    pub uuid: String,
    /// The block size was given rather than detected.
    pub block_size_override: bool,
}

pub(crate) struct File {
    pub fd: OwnedFd,
    pub direct: bool,
    pub block_device: bool,
    pub punch: bool,
    pub zero_range: bool,
}

pub(crate) fn registry() -> &'static Mutex<HashMap<String, Spec>> {
    static R: OnceLock<Mutex<HashMap<String, Spec>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

pub(crate) fn io_err(what: &str, e: std::io::Error) -> BdevError {
    BdevError::Os {
        what: what.to_owned(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// The size and logical block size of `fd` (a block device's, or a
/// regular file's size and no block size).
pub(crate) fn geometry(fd: &OwnedFd) -> Result<(u64, Option<u32>, bool), BdevError> {
    // SAFETY: fstat fills `st`, which lives across the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on an open descriptor.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io_err("fstat", std::io::Error::last_os_error()));
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Ok((st.st_size as u64, None, false)),
        libc::S_IFBLK => {
            let mut bytes: u64 = 0;
            let mut bs: libc::c_int = 0;
            // SAFETY: BLKGETSIZE64 writes a u64, BLKSSZGET an int, into
            // locals that live across the calls.
            let ok = unsafe {
                libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64, &mut bytes as *mut u64) == 0
                    && libc::ioctl(fd.as_raw_fd(), BLKSSZGET, &mut bs as *mut libc::c_int) == 0
            };
            if !ok {
                return Err(io_err(
                    "block device ioctl",
                    std::io::Error::last_os_error(),
                ));
            }
            Ok((bytes, Some(bs as u32), true))
        }
        _ => Err(BdevError::invalid(
            "filename",
            "neither a regular file nor a block device",
        )),
    }
}

// From linux/fs.h.
pub(crate) const BLKSSZGET: libc::c_ulong = 0x1268;
pub(crate) const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
pub(crate) const BLKDISCARD: libc::c_ulong = 0x1277;
pub(crate) const BLKZEROOUT: libc::c_ulong = 0x127f;

pub(crate) fn open_file(path: &str, readonly: bool) -> Result<(OwnedFd, bool), BdevError> {
    let c = CString::new(path).map_err(|_| BdevError::invalid("filename", "contains a NUL"))?;
    let mode = if readonly {
        libc::O_RDONLY
    } else {
        libc::O_RDWR
    };
    for direct in [true, false] {
        let flags = mode | libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 };
        // SAFETY: `c` is a NUL-terminated path that lives across the call.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and is owned by nothing else.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, direct));
        }
        let e = std::io::Error::last_os_error();
        if !(direct && e.raw_os_error() == Some(libc::EINVAL)) {
            return Err(io_err(&format!("open {path}"), e));
        }
    }
    unreachable!("the second try does not ask for O_DIRECT")
}

/// Whether `fallocate(mode)` works on the file (tried past its end, where
/// it changes nothing).
pub(crate) fn fallocate_works(fd: &OwnedFd, size: u64, mode: libc::c_int) -> bool {
    // SAFETY: fallocate on an open descriptor; KEEP_SIZE past the end
    // changes no data.
    unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode | libc::FALLOC_FL_KEEP_SIZE,
            size as libc::off_t,
            4096,
        ) == 0
    }
}

/// Opens `filename` for a file-backed bdev `name` and works out its
/// geometry: the spec, the open file and the bdev's properties
/// (`product`), not yet registered.
///
/// # Errors
/// [`BdevError::Exists`]; [`BdevError::Invalid`] for a block size that is
/// missing (a regular file), not a power of two from 512 or smaller than
/// the device's, or a file under one block; [`BdevError::Os`] when the
/// file does not open (ENOENT for a missing one).
pub(crate) fn prepare(
    name: &str,
    filename: &str,
    block_size: Option<u32>,
    readonly: bool,
    uuid: Option<&str>,
    product: &str,
) -> Result<(Spec, File, crate::BdevProps), BdevError> {
    if crate::get(name).is_some() {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let (fd, direct) = open_file(filename, readonly)?;
    let (bytes, detected, block_device) = geometry(&fd)?;
    let bs = match (block_size.filter(|&b| b != 0), detected) {
        (Some(b), Some(d)) if b < d => {
            return Err(BdevError::invalid(
                "block_size",
                format!("{b}: smaller than the device's {d}"),
            ));
        }
        (Some(b), _) => b,
        (None, Some(d)) => d,
        (None, None) => {
            return Err(BdevError::invalid(
                "block_size",
                "could not be detected for a regular file: give it",
            ));
        }
    };
    if bs < 512 || !bs.is_power_of_two() {
        return Err(BdevError::invalid(
            "block_size",
            format!("{bs}: a power of two from 512"),
        ));
    }
    let num_blocks = bytes / u64::from(bs);
    if num_blocks == 0 {
        return Err(BdevError::invalid(
            "filename",
            format!("{filename}: {bytes} bytes, less than one {bs}-byte block"),
        ));
    }
    let uuid = match uuid {
        Some(u) => super::super::check_uuid(u)?,
        None => crate::new_uuid(),
    };
    let punch =
        !readonly && !block_device && fallocate_works(&fd, bytes, libc::FALLOC_FL_PUNCH_HOLE);
    let zero_range =
        !readonly && !block_device && fallocate_works(&fd, bytes, libc::FALLOC_FL_ZERO_RANGE);
    let mut props = crate::BdevProps::new(name, product, bs, num_blocks);
    props.uuid = Some(uuid.clone());
    if direct {
        props.required_alignment = bs as usize;
    }
    props.write_cache = true;
    let spec = Spec {
        name: name.to_owned(),
        filename: filename.to_owned(),
        block_size: bs,
        readonly,
        uuid,
        block_size_override: block_size.is_some_and(|b| b != 0),
    };
    let file = File {
        fd,
        direct,
        block_device,
        punch,
        zero_range,
    };
    Ok((spec, file, props))
}

/// Re-reads the size of `module`'s bdev `name`'s file and makes it the
/// bdev's (openers get a resize event); returns the new block count.
///
/// # Errors
/// [`BdevError::NotFound`]; the file no longer opening.
pub(crate) fn rescan(name: &str, module: &str) -> Result<u64, BdevError> {
    let bdev = crate::get(name)
        .filter(|b| b.module() == module)
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    let spec = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    let (fd, _) = open_file(&spec.filename, true)?;
    let (bytes, _, _) = geometry(&fd)?;
    let blocks = bytes / u64::from(spec.block_size);
    bdev.notify_blockcnt_change(blocks);
    Ok(blocks)
}

/// The JSON `bdev_get_bdevs` shows under `driver_specific.<key>`.
pub(crate) fn info(spec: &Spec, file: &File) -> serde_json::Value {
    serde_json::json!({
        "filename": spec.filename,
        "block_size_override": spec.block_size_override,
        "readonly": spec.readonly,
        "fallocate": file.punch || file.zero_range,
        "direct_io": file.direct,
    })
}

/// Registers file-backed bdev `ops` (module `module`) and records its spec.
///
/// # Errors
/// The layer's refusal.
pub(crate) fn register<O: crate::BdevOps>(
    module: &str,
    spec: Spec,
    props: crate::BdevProps,
    ops: O,
) -> Result<crate::Bdev, BdevError> {
    let bdev = crate::register(module, props, ops)?;
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(spec.name.clone(), spec);
    Ok(bdev)
}

/// Forgets bdev `name`'s spec (its destruct).
pub(crate) fn forget(name: &str) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name);
}

/// The I/O types a file-backed bdev does: reads always; writes and FLUSH
/// unless read-only; unmap and write-zeroes where the file or device does
/// them.
pub(crate) fn supported(spec: &Spec, file: &File, ty: crate::IoType) -> bool {
    use crate::IoType;
    let rw = !spec.readonly;
    match ty {
        IoType::Read | IoType::Reset => true,
        IoType::Write | IoType::Flush => rw,
        IoType::Unmap => rw && (file.block_device || file.punch),
        IoType::WriteZeroes => rw && (file.block_device || file.zero_range),
        _ => false,
    }
}
