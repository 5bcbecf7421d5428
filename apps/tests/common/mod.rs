//! What the appliance's integration tests share: starting the built binary
//! in a temporary directory, a raw JSON-RPC client, and finding the outside
//! tools (`spdk-rpc`, `qemu-io`, `qemu-img`), failing with a clear message
//! when one is missing (ci/install-host-deps installs them).

#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A tool on PATH (or named by the environment variable `env`), or a
/// panic that says how to get it.
pub fn tool(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found on PATH (nor ${env} set): run ci/install-host-deps \
         (qemu-io/qemu-img come from Debian's qemu-utils, spdk-rpc from `pip install spdk`)"
    );
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Makes one under /tmp (short paths: Unix socket names are limited).
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = PathBuf::from(format!(
            "/tmp/appl-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// A path inside.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running appliance process, killed on drop.
pub struct Appliance {
    pub child: Option<Child>,
    pub sock: PathBuf,
    pub log: PathBuf,
}

impl Appliance {
    /// Starts the appliance with its RPC socket in `dir` and `extra`
    /// arguments, and waits for the socket.
    pub fn start(dir: &TempDir, name: &str, extra: &[&str]) -> Appliance {
        Appliance::start_with_env(dir, name, extra, &[])
    }

    /// As [`Appliance::start`], with `env` (name, value) pairs added to its
    /// environment.
    pub fn start_with_env(
        dir: &TempDir,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Appliance {
        let sock = dir.join(&format!("{name}.sock"));
        let log = dir.join(&format!("{name}.log"));
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_appliance"));
        cmd.args(["--no-huge", "-s", "256", "--idle", "sleep", "--no-pin"])
            .arg("-r")
            .arg(&sock)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let child = cmd.spawn().expect("start the appliance");
        let mut a = Appliance {
            child: Some(child),
            sock,
            log,
        };
        a.wait_ready();
        a
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "appliance exited ({st}) before listening:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "appliance did not listen within 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One call over a fresh connection: `Ok(result)` or `Err((code,
    /// message))`.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let mut c = RpcConn::connect(&self.sock);
        c.call(method, params)
    }

    /// Runs `spdk-rpc -s SOCK args...`.
    pub fn spdk_rpc(&self, args: &[&str]) -> Output {
        self.spdk_rpc_stdin(args, None)
    }

    /// Runs `spdk-rpc -s SOCK args...` with `input` on standard input.
    pub fn spdk_rpc_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(tool("spdk-rpc", "SPDK_RPC"));
        cmd.arg("-s")
            .arg(&self.sock)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run spdk-rpc");
        if let Some(i) = input {
            child.stdin.take().unwrap().write_all(i).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `spdk-rpc` that must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.spdk_rpc(args);
        assert!(
            o.status.success(),
            "spdk-rpc {args:?} failed:\n{}{}\nappliance log:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_text()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `spdk-rpc` whose answer must be JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Sends a signal and waits (up to 30 s) for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        self.wait_exit()
    }

    /// Waits (up to 30 s) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "appliance did not exit within 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Names of the bdevs, sorted.
    pub fn bdev_names(&self) -> Vec<String> {
        let v = self.call("bdev_get_bdevs", json!({})).unwrap();
        let mut n: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw JSON-RPC connection.
pub struct RpcConn {
    pub s: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl RpcConn {
    /// Connects to `sock`.
    pub fn connect(sock: &Path) -> RpcConn {
        let s = UnixStream::connect(sock).expect("connect to the RPC socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        RpcConn {
            s,
            buf: Vec::new(),
            next_id: 1,
        }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b)
    }

    /// Reads one JSON value; `None` when the server closed the connection
    /// first.
    pub fn recv(&mut self) -> Option<Value> {
        loop {
            let mut de = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match de.next() {
                Some(Ok(v)) => {
                    let used = de.byte_offset();
                    self.buf.drain(..used);
                    return Some(v);
                }
                Some(Err(e)) if !e.is_eof() => panic!("server sent bad JSON: {e}"),
                _ => {}
            }
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading the RPC socket: {e}"),
            }
        }
    }

    /// Whether the server closed the connection (reads EOF).
    pub fn closed(&mut self) -> bool {
        self.recv().is_none()
    }

    /// A call: `Ok(result)` or `Err((code, message))`.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "jsonrpc": "2.0", "method": method, "id": id });
        if !params.is_null() {
            req["params"] = params;
        }
        self.send_raw(&serde_json::to_vec(&req).unwrap()).unwrap();
        let r = self.recv().expect("an answer");
        assert_eq!(r["id"], json!(id), "{r}");
        assert_eq!(r["jsonrpc"], "2.0");
        if let Some(e) = r.get("error") {
            Err((
                e["code"].as_i64().unwrap(),
                e["message"].as_str().unwrap().to_owned(),
            ))
        } else {
            Ok(r["result"].clone())
        }
    }
}

/// Guest tier: runs SPDK's `spdk-rpc` against `sock` with `args` and
/// returns its stdout (a panic with its output when it exits non-zero).
/// The guest has no Python of its own: ci/guest-tier copies the host's
/// interpreter as `python3` and a tar of its library with the `spdk`
/// package (ci/guest-python), unpacked here on first use.
pub fn guest_spdk_rpc(sock: &Path, args: &[&str]) -> String {
    let home = Path::new("/tmp/guest-python");
    if !home.join("lib").exists() {
        std::fs::create_dir_all(home).unwrap();
        let st = Command::new("tar")
            .args(["-xf", "/guest/bin/guest-python.tar", "-C"])
            .arg(home)
            .status()
            .expect("tar");
        assert!(st.success(), "unpacking guest-python.tar");
    }
    let o = Command::new("python3")
        .env("PYTHONHOME", home)
        .env("LD_LIBRARY_PATH", home.join("lib"))
        .env("PYTHONNOUSERSITE", "1")
        .args([
            "-c",
            "import sys; from spdk.spdk_rpc import main; sys.argv[0] = 'spdk-rpc'; sys.exit(main())",
            "-s",
        ])
        .arg(sock)
        .args(args)
        .output()
        .expect("python3 from ci/guest-python on PATH");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "spdk-rpc {args:?}: {}\n{out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A process killed on drop if it still runs: a test that fails must not
/// leave it holding a device or spinning on cores.
pub struct Running(Option<Child>);

impl Running {
    /// Guards `child`.
    pub fn new(child: Child) -> Running {
        Running(Some(child))
    }

    /// Waits for its end.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.as_mut().unwrap().wait().unwrap()
    }

    /// Waits up to `limit` for its end; `None` if it still runs.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.0.as_mut().unwrap().try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Kills it with SIGKILL (no clean-up of its own) and reaps it.
    pub fn kill(&mut self) {
        let c = self.0.as_mut().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Waits for its end: status and output.
    pub fn finish(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Guest tier: the PCI addresses of the NVMe controllers bound to vfio-pci.
pub fn vfio_controllers() -> Vec<String> {
    bdev::modules::nvme::hotplug::vfio_nvme_controllers(Path::new("/sys/bus/pci/devices"))
        .iter()
        .map(|b| b.to_string())
        .collect()
}

/// Guest tier: the first of [`vfio_controllers`].
pub fn first_vfio_controller() -> String {
    vfio_controllers()
        .into_iter()
        .next()
        .expect("an NVMe controller bound to vfio-pci")
}

/// Guest tier: starts the appliance (hugepages, two cores) on
/// `dir`/spdk.sock with `extra` arguments, its output appended to
/// `dir`/appliance.log, and connects to it.
pub fn guest_appliance(dir: &std::path::Path, extra: &[&str]) -> (Running, RpcConn) {
    let sock = dir.join("spdk.sock");
    let bin = std::env::var("APPLIANCE_BIN").unwrap_or_else(|_| "appliance".into());
    // Appended to: a restart keeps the first run's lines.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("appliance.log"))
        .unwrap();
    let child = Command::new(&bin)
        .args(["-m", "0x3", "-s", "256", "-r"])
        .arg(&sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let running = Running::new(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "the appliance did not listen: {}",
            std::fs::read_to_string(dir.join("appliance.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (running, RpcConn::connect(&sock))
}

/// Waits (up to 20 s) until `f` holds.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `len` pseudo-random bytes (xorshift64 from `seed`).
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A byte pattern that differs with `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data` at `offset` of block device `dev` with O_DIRECT-free
/// buffered I/O plus fsync, then reads it back from a fresh open.
pub fn kernel_round_trip(dev: &str, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {dev}: {e}"));
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Drop the page cache so the read goes through the export to the appliance.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let mut f = std::fs::OpenOptions::new().read(true).open(dev).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut got = vec![0u8; data.len()];
    f.read_exact(&mut got).unwrap();
    assert!(got == data, "{dev}: read back differs at offset {offset}");
}

/// Runs `qemu-io -f raw URI -c CMD...`, failing on any error it reports;
/// its output.
pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new(tool("qemu-io", "QEMU_IO"));
    c.args(["-f", "raw", uri]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let o = c.output().expect("run qemu-io");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "qemu-io {cmds:?} failed: {out}");
    // qemu-io exits 0 even when a command fails: look at what it says.
    for bad in ["Pattern verification failed", "failed:", "error", "Error"] {
        assert!(!out.contains(bad), "qemu-io {cmds:?}: {out}");
    }
    out
}

/// `spdk-rpc ARGS` that must fail with `code` and `message`.
pub fn expect_error(a: &Appliance, args: &[&str], code: i64, message: &str) {
    let o = a.spdk_rpc(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!o.status.success(), "{args:?} should fail: {out}");
    assert!(
        out.contains(&format!("\"code\": {code}"))
            && out.contains(&format!("\"message\": \"{message}\"")),
        "{args:?}: expected {code} {message:?}, got:\n{out}"
    );
}

/// The request Go's `encoding/json` Encoder writes with `SetIndent("",
/// "\t")` for a message of (id, jsonrpc, method, params), the way
/// Longhorn's client (go-spdk-helper) calls: tab-indented over several
/// lines, `"params": null` for a call without parameters, a newline after.
pub fn go_encoded(id: u64, method: &str, params: &Value) -> String {
    let params = match params {
        Value::Null => "null".to_owned(),
        p => serde_json::to_string_pretty(p)
            .unwrap()
            .replace("  ", "\t")
            .replace('\n', "\n\t"),
    };
    format!(
        "{{\n\t\"id\": {id},\n\t\"jsonrpc\": \"2.0\",\n\t\"method\": \"{method}\",\n\t\"params\": {params}\n}}\n"
    )
}

/// Runs a command that must succeed; its standard output.
pub fn run(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e} (ci/guest-tier copies it into the guest)"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}\n{out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// fio on `dev` with direct I/O through libaio, `extra` options added;
/// fails on any I/O or verification error.
pub fn fio(dev: &str, name: &str, extra: &[&str]) {
    let mut args = vec![
        format!("--name={name}"),
        format!("--filename={dev}"),
        "--direct=1".into(),
        "--ioengine=libaio".into(),
        "--verify_fatal=1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("fio", &args);
    assert!(out.contains("err= 0"), "fio {name}: {out}");
    println!("fio {name}: ok");
}

/// The fio jobs the issue asks for: 4 KiB random reads and writes at
/// depth 32 and 128 KiB sequential writes, every block verified.
pub fn fio_verify(dev: &str) {
    fio(
        dev,
        "rand4k",
        &[
            "--rw=randrw",
            "--bs=4k",
            "--iodepth=32",
            "--size=24M",
            "--verify=crc32c",
            "--do_verify=1",
        ],
    );
    fio(
        dev,
        "seq128k",
        &[
            "--rw=write",
            "--bs=128k",
            "--iodepth=32",
            "--size=48M",
            "--offset=8M",
            "--verify=crc32c",
            "--do_verify=1",
        ],
    );
}

/// A TCP port free on 127.0.0.1 just now (for a listener to take).
pub fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

/// `spdk-rpc nvmf_subsystem_add_listener NQN -t tcp -a 127.0.0.1 -s PORT`
/// plus `extra`, which must succeed.
pub fn add_tcp_listener(a: &Appliance, nqn: &str, port: &str, extra: &[&str]) {
    let mut args = vec![
        "nvmf_subsystem_add_listener",
        nqn,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        port,
    ];
    args.extend_from_slice(extra);
    a.ok(&args);
}
