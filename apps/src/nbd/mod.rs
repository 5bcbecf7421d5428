//! NBD exports: one listening socket (Unix or TCP) per exported bdev, or
//! the kernel's NBD client on a `/dev/nbdX` device, started and stopped by
//! RPC.
//!
//! ```text
//!  nbd_start_disk ──> reactor N: open bdev (desc) ─┬─ timed poller: accept() ─> task per client
//!                                                  │     serve(): handshake, then requests
//!                                                  │     through this core's BdevChannel
//!  nbd_stop_disk / bdev removed ──> stop flag ─────┘  (poller and tasks see it, close, drop desc)
//! ```
//!
//! Each export lives on one reactor (exports are spread round-robin over
//! the cores); all its connections are tasks there.

pub mod kernel;
pub mod proto;
pub mod server;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bdev::{Bdev, BdevEvent, Desc};
use reactor::{CoreId, PollStatus};

use self::server::Stream;

/// Connections one export serves at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 32;

/// An export as its reactor sees it.
pub struct Export {
    /// The `nbd_device` string it was started with.
    pub device: String,
    /// The bdev.
    pub bdev: Bdev,
    /// The open descriptor (closed when the last task and the poller let
    /// go of the export).
    pub desc: Desc,
    /// Set to stop: by `nbd_stop_disk`, shutdown, or the bdev's removal.
    pub stop: Arc<AtomicBool>,
}

/// An export as the registry sees it (from any thread).
struct Entry {
    id: u64,
    bdev_name: String,
    stop: Arc<AtomicBool>,
    /// The accept poller (1 while registered) plus live connections.
    live: Arc<AtomicUsize>,
    kernel: Option<Arc<kernel::Attachment>>,
}

static EXPORTS: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn exports() -> MutexGuard<'static, BTreeMap<String, Entry>> {
    EXPORTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where an export listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Unix-domain socket at this path.
    Unix(PathBuf),
    /// A TCP address (`nbd://HOST:PORT`; port 0 picks a free one).
    Tcp(SocketAddr),
    /// The kernel's NBD device (`/dev/nbdN`).
    Kernel(PathBuf),
}

/// Reads an `nbd_device` string: `/dev/nbdN`, `nbd://HOST:PORT`, or a
/// socket path.
///
/// # Errors
/// -EINVAL for an address that does not parse.
pub fn parse_target(dev: &str) -> Result<Target, i32> {
    if let Some(rest) = dev.strip_prefix("/dev/nbd")
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
    {
        return Ok(Target::Kernel(PathBuf::from(dev)));
    }
    if let Some(addr) = dev.strip_prefix("nbd://") {
        let addr = addr.trim_end_matches('/');
        return addr.parse().map(Target::Tcp).map_err(|_| -libc::EINVAL);
    }
    if dev.is_empty() || dev.contains('\0') {
        return Err(-libc::EINVAL);
    }
    Ok(Target::Unix(PathBuf::from(dev)))
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn io_errno(e: &std::io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(libc::EIO)
}

fn bind(target: &Target) -> Result<(Listener, String), i32> {
    match target {
        Target::Unix(path) => {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() || UnixStream::connect(path).is_ok() {
                    return Err(-libc::EEXIST);
                }
                // A stale socket from an earlier run.
                let _ = std::fs::remove_file(path);
            }
            let l = UnixListener::bind(path).map_err(|e| io_errno(&e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io_errno(&e))?;
            l.set_nonblocking(true).map_err(|e| io_errno(&e))?;
            let dev = path.to_string_lossy().into_owned();
            Ok((Listener::Unix(l, path.clone()), dev))
        }
        Target::Tcp(addr) => {
            let l = TcpListener::bind(addr).map_err(|e| io_errno(&e))?;
            l.set_nonblocking(true).map_err(|e| io_errno(&e))?;
            let real = l.local_addr().map_err(|e| io_errno(&e))?;
            Ok((Listener::Tcp(l), format!("nbd://{real}")))
        }
        Target::Kernel(_) => Err(-libc::EINVAL),
    }
}

/// Starts exporting `bdev_name` at `device`; must run on a reactor (the
/// export lives on it). Returns the device string (with the real port
/// for `nbd://HOST:0`).
///
/// # Errors
/// A negative errno: -EBUSY for a device in use, -EEXIST for a path that
/// exists, -ENODEV for a missing bdev, the bind's error otherwise.
pub fn start(bdev_name: &str, device: &str) -> Result<String, i32> {
    let target = parse_target(device)?;
    if exports().contains_key(device) {
        return Err(-libc::EBUSY);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let desc = bdev::open(bdev_name, true, move |_, ev| {
        if ev == BdevEvent::Remove {
            s.store(true, Ordering::Release);
        }
    })
    .map_err(|e| e.errno())?;
    let bdev = desc.bdev().clone();
    let live = Arc::new(AtomicUsize::new(1));
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    if let Target::Kernel(path) = &target {
        let (ours, att) = kernel::attach(path, &bdev).map_err(|e| io_errno(&e))?;
        let att = Arc::new(att);
        let export = Rc::new(Export {
            device: device.to_owned(),
            bdev,
            desc,
            stop: stop.clone(),
        });
        insert(device, id, bdev_name, &stop, &live, Some(att.clone()));
        let l = live.clone();
        let dev = device.to_owned();
        drop(reactor::spawn(async move {
            server::serve(Stream::Kernel(ours), export, false).await;
            att.disconnect();
            l.fetch_sub(1, Ordering::AcqRel);
            remove_entry(&dev, id);
        }));
        return Ok(device.to_owned());
    }
    let (listener, dev) = bind(&target)?;
    if dev != device && exports().contains_key(&dev) {
        return Err(-libc::EBUSY);
    }
    let export = Rc::new(Export {
        device: dev.clone(),
        bdev,
        desc,
        stop: stop.clone(),
    });
    insert(&dev, id, bdev_name, &stop, &live, None);
    let mut state = Some((listener, export));
    let (l, d) = (live.clone(), dev.clone());
    reactor::register_timed_poller(
        format!("nbd_accept_{dev}"),
        Duration::from_millis(5),
        move || {
            let Some((listener, export)) = state.as_ref() else {
                return PollStatus::Idle;
            };
            if export.stop.load(Ordering::Acquire) {
                state = None;
                l.fetch_sub(1, Ordering::AcqRel);
                remove_entry(&d, id);
                if let Some(p) = reactor::current_poller() {
                    p.unregister();
                }
                return PollStatus::Busy;
            }
            let mut busy = false;
            loop {
                match listener.accept() {
                    Ok(stream) => {
                        busy = true;
                        if l.load(Ordering::Acquire) > MAX_CONNECTIONS {
                            log::warn!("nbd {d}: connection refused: {MAX_CONNECTIONS} already");
                            continue;
                        }
                        l.fetch_add(1, Ordering::AcqRel);
                        let (l2, e2) = (l.clone(), export.clone());
                        drop(reactor::spawn(async move {
                            server::serve(stream, e2, true).await;
                            l2.fetch_sub(1, Ordering::AcqRel);
                        }));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("nbd {d}: accept: {e}");
                        break;
                    }
                }
            }
            PollStatus::from(busy)
        },
    );
    log::info!("nbd: exporting {bdev_name} at {dev}");
    Ok(dev)
}

fn insert(
    device: &str,
    id: u64,
    bdev_name: &str,
    stop: &Arc<AtomicBool>,
    live: &Arc<AtomicUsize>,
    kernel: Option<Arc<kernel::Attachment>>,
) {
    exports().insert(
        device.to_owned(),
        Entry {
            id,
            bdev_name: bdev_name.to_owned(),
            stop: stop.clone(),
            live: live.clone(),
            kernel,
        },
    );
}

fn remove_entry(device: &str, id: u64) {
    let mut e = exports();
    if e.get(device).is_some_and(|x| x.id == id) {
        e.remove(device);
    }
}

/// Stops export `device` and waits (up to 30 s) until its connections are
/// closed and its bdev descriptor released. Not on a reactor: it blocks.
///
/// # Errors
/// -ENODEV for an unknown device; -ETIMEDOUT when it would not stop.
pub fn stop(device: &str) -> Result<(), i32> {
    let (stop, live, id, kernel) = {
        let e = exports();
        let x = e.get(device).ok_or(-libc::ENODEV)?;
        (x.stop.clone(), x.live.clone(), x.id, x.kernel.clone())
    };
    stop.store(true, Ordering::Release);
    if let Some(k) = kernel {
        k.disconnect();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while live.load(Ordering::Acquire) > 0 {
        if Instant::now() > deadline {
            return Err(-libc::ETIMEDOUT);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    remove_entry(device, id);
    log::info!("nbd: stopped {device}");
    Ok(())
}

/// Stops every export (shutdown).
pub fn stop_all() {
    let devices: Vec<String> = exports().keys().cloned().collect();
    for d in devices {
        if let Err(e) = stop(&d) {
            log::warn!("nbd {d}: stop: errno {e}");
        }
    }
}

/// `(nbd_device, bdev_name)` of every export, or of `device` alone.
pub fn list(device: Option<&str>) -> Vec<(String, String)> {
    exports()
        .iter()
        .filter(|(d, _)| device.is_none_or(|x| x == d.as_str()))
        .map(|(d, e)| (d.clone(), e.bdev_name.clone()))
        .collect()
}

/// The core a new export goes to: round-robin over `cores`.
pub fn next_core(cores: &[CoreId]) -> CoreId {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    cores[NEXT.fetch_add(1, Ordering::Relaxed) % cores.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("/dev/nbd3"),
            Ok(Target::Kernel("/dev/nbd3".into()))
        );
        assert_eq!(
            parse_target("nbd://127.0.0.1:10809"),
            Ok(Target::Tcp("127.0.0.1:10809".parse().unwrap()))
        );
        assert_eq!(parse_target("nbd://nonsense"), Err(-libc::EINVAL));
        assert_eq!(
            parse_target("/tmp/x.sock"),
            Ok(Target::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            parse_target("/dev/nbdx"),
            Ok(Target::Unix("/dev/nbdx".into()))
        );
        assert_eq!(parse_target(""), Err(-libc::EINVAL));
    }
}
