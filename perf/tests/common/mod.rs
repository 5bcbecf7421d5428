//! What the bdevperf tests that talk JSON-RPC share: SPDK's `spdk-rpc`
//! (failing with a clear message when it is missing; ci/install-host-deps
//! installs it) and a bdevperf process serving `-r`, killed if the test
//! fails before it ends (a poll-mode process left behind takes whole
//! cores).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `spdk-rpc`: `$SPDK_RPC`, else the first on PATH.
pub fn spdk_rpc_path() -> PathBuf {
    if let Ok(p) = std::env::var("SPDK_RPC") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("spdk-rpc"))
        .find(|p| p.is_file())
        .expect("spdk-rpc not found on PATH (nor $SPDK_RPC set): run ci/install-host-deps (pip install spdk)")
}

/// `spdk-rpc -s SOCK args...`: Ok(stdout), or Err(what it printed: an
/// error response goes to stdout).
pub fn rpc(sock: &Path, args: &[&str]) -> Result<String, String> {
    let o = Command::new(spdk_rpc_path())
        .arg("-s")
        .arg(sock)
        .args(args)
        .output()
        .expect("run spdk-rpc");
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// [`rpc`] that must succeed.
pub fn ok(sock: &Path, args: &[&str]) -> String {
    rpc(sock, args).unwrap_or_else(|e| panic!("spdk-rpc {args:?}: {e}"))
}

/// A bdevperf serving JSON-RPC on a socket.
pub struct Bdevperf(Option<Child>);

impl Bdevperf {
    /// Starts bdevperf with `args` and `-r sock`, and waits until it
    /// listens.
    pub fn start(args: &[&str], sock: &Path) -> Bdevperf {
        let child = Command::new(env!("CARGO_BIN_EXE_bdevperf"))
            .args(args)
            .arg("-r")
            .arg(sock)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run bdevperf");
        let b = Bdevperf(Some(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "bdevperf did not listen on -r");
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    /// Waits for its end (after `spdk_kill_instance`): status and output.
    pub fn finish(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Bdevperf {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
