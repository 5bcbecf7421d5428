//! The one interface to the system: every sysfs/procfs read and write, the
//! hugetlbfs mount, `modprobe`, the effective uid and the memlock limit go
//! through [`Sys`].
//!
//! [`HostSys`] is the real thing. Its files are resolved under a root
//! directory (`/` in production), so tests point it at a fixture tree in a
//! temporary directory and wrap it to play the kernel's part.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};

/// Everything the tool asks of the system. Paths are absolute paths of the
/// machine (`/sys/bus/pci/...`); an implementation may resolve them
/// elsewhere.
pub trait Sys {
    /// Reads a whole file.
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// Writes `contents` to an existing file in one `write`, like the
    /// shell's `>`; never creates the file.
    fn write(&self, path: &Path, contents: &str) -> io::Result<()>;
    /// The target of a symbolic link, as stored.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// The path with every symbolic link resolved (a path of the machine).
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;
    /// The names in a directory, sorted; names that are not UTF-8 are
    /// left out (the kernel names nothing this tool reads that way).
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Whether the path exists (following links).
    fn exists(&self, path: &Path) -> bool;
    /// Creates `target` if needed and mounts hugetlbfs on it.
    fn mount_hugetlbfs(&self, target: &Path) -> io::Result<()>;
    /// Runs `modprobe module`; the error says why it did not load.
    fn modprobe(&self, module: &str) -> Result<(), String>;
    /// Whether the process runs with effective uid 0.
    fn is_root(&self) -> bool;
    /// The soft `RLIMIT_MEMLOCK` in bytes; `None` when unlimited.
    fn memlock_limit(&self) -> io::Result<Option<u64>>;
    /// Waits before polling again (for the kernel to finish a bind).
    fn sleep(&self, duration: Duration);
}

/// The machine, with its files resolved under a root directory.
///
/// With a root other than `/` (tests), `mount_hugetlbfs` and `modprobe`
/// refuse: they act on the whole machine, not on a tree of files.
#[derive(Clone, Debug)]
pub struct HostSys {
    root: PathBuf,
}

impl Default for HostSys {
    fn default() -> Self {
        Self::new()
    }
}

impl HostSys {
    /// The machine itself.
    pub fn new() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }

    /// Files resolved under `root` (a fixture tree laid out like `/`).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = fs::canonicalize(&root).unwrap_or(root);
        Self { root }
    }

    /// The root directory files are resolved under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The host path of a machine path.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if self.is_real_root() {
            return path.to_owned();
        }
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn not_here(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{what} is refused under the fixture root {}",
                self.root.display()
            ),
        )
    }
}

impl Sys for HostSys {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(self.resolve(path))
    }

    fn write(&self, path: &Path, contents: &str) -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.resolve(path))?;
        // sysfs takes one write per store: never split it.
        let written = file.write(contents.as_bytes())?;
        if written != contents.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {} bytes", contents.len()),
            ));
        }
        Ok(())
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        fs::read_link(self.resolve(path))
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        let real = fs::canonicalize(self.resolve(path))?;
        if self.is_real_root() {
            return Ok(real);
        }
        match real.strip_prefix(&self.root) {
            Ok(rest) => Ok(Path::new("/").join(rest)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} leaves the fixture root {}",
                    real.display(),
                    self.root.display()
                ),
            )),
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.resolve(path))? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        self.resolve(path).exists()
    }

    fn mount_hugetlbfs(&self, target: &Path) -> io::Result<()> {
        if !self.is_real_root() {
            return Err(self.not_here("mount"));
        }
        fs::create_dir_all(target)?;
        let target = CString::new(target.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let source = c"nodev";
        let fstype = c"hugetlbfs";
        // SAFETY: the three strings are NUL-terminated and outlive the
        // call; a null data pointer is allowed (no mount options).
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn modprobe(&self, module: &str) -> Result<(), String> {
        if !self.is_real_root() {
            return Err(self.not_here("modprobe").to_string());
        }
        match Command::new("modprobe").arg(module).output() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err("modprobe is not installed".to_owned())
            }
            Err(e) => Err(format!("cannot run modprobe: {e}")),
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let stderr = stderr.trim();
                Err(if stderr.is_empty() {
                    format!("modprobe {module} failed ({})", out.status)
                } else {
                    format!("modprobe {module} failed: {stderr}")
                })
            }
        }
    }

    fn is_root(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn memlock_limit(&self) -> io::Result<Option<u64>> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit for the call.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur))
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

// Helpers that turn the interface's io::Errors into errors naming the file.

/// Reads a file, trimmed of surrounding whitespace.
pub(crate) fn read(sys: &dyn Sys, path: &Path) -> Result<String> {
    sys.read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
}

/// Reads a file that may be absent (trimmed); `None` when it is.
pub(crate) fn read_opt(sys: &dyn Sys, path: &Path) -> Result<Option<String>> {
    match sys.read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads a file as a whole file, untrimmed, treating an absent file as empty.
pub(crate) fn read_raw_opt(sys: &dyn Sys, path: &Path) -> Result<Option<String>> {
    match sys.read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a value to a file.
pub(crate) fn write(sys: &dyn Sys, path: &Path, value: &str) -> Result<()> {
    sys.write(path, value).map_err(|source| Error::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// The entries of a directory (sorted).
pub(crate) fn list(sys: &dyn Sys, path: &Path) -> Result<Vec<String>> {
    sys.read_dir(path).map_err(|source| Error::ListDir {
        path: path.to_owned(),
        source,
    })
}

/// The entries of a directory that may be absent (then none).
pub(crate) fn list_opt(sys: &dyn Sys, path: &Path) -> Result<Vec<String>> {
    match sys.read_dir(path) {
        Ok(names) => Ok(names),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::ListDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The last component of a symbolic link's target (`driver` ->
/// `../../../bus/pci/drivers/nvme` gives `nvme`); `None` when the link is
/// absent.
pub(crate) fn link_name(sys: &dyn Sys, path: &Path) -> Result<Option<String>> {
    match sys.read_link(path) {
        Ok(target) => match target.file_name().and_then(|n| n.to_str()) {
            Some(name) => Ok(Some(name.to_owned())),
            None => Err(Error::Malformed {
                path: path.to_owned(),
                text: target.display().to_string(),
                expected: "a link whose target ends in a name",
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::ReadLink {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses a number read from `path`, or says the file is malformed.
pub(crate) fn parse_num<T: std::str::FromStr>(
    path: &Path,
    text: &str,
    expected: &'static str,
) -> Result<T> {
    text.parse().map_err(|_| Error::Malformed {
        path: path.to_owned(),
        text: text.to_owned(),
        expected,
    })
}

/// Reads a `0x`-prefixed hex attribute (`class`, `vendor`, `device`).
pub(crate) fn read_hex(sys: &dyn Sys, path: &Path, expected: &'static str) -> Result<u32> {
    let text = read(sys, path)?;
    text.strip_prefix("0x")
        .filter(|hex| {
            !hex.is_empty() && hex.len() <= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or(Error::Malformed {
            path: path.to_owned(),
            text,
            expected,
        })
}

/// Parses a `major:minor` device number.
pub(crate) fn parse_devno(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
