//! The JSON-RPC server: a Unix socket (owner-only permissions), an accept
//! thread, and a thread per connection that frames the byte stream into
//! JSON values and answers each request, batch or notification.
//!
//! Bad input never costs more than its own connection: malformed JSON is
//! answered with -32700 and the connection closed (the stream cannot be
//! resynchronized); a value over [`MAX_REQUEST_BYTES`] is answered with
//! -32600 and the connection closed; a client that leaves mid-request only
//! loses its half-sent request; a panicking handler answers -32603.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::jsonrpc::{
    Call, Frame, Framer, Incoming, MAX_REQUEST_BYTES, RpcError, parse_request, response_err,
    response_ok,
};
use crate::methods::{Ctx, dispatch};

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process answers on the socket path.
    #[error("RPC socket {0} is in use by another process")]
    InUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A running RPC server.
pub struct RpcServer {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    path: PathBuf,
}

/// Listens on `path` (mode 0600) and serves requests with `ctx`.
///
/// # Errors
/// [`ServerError::InUse`] when another live process listens there;
/// [`ServerError::Bind`] when the socket cannot be made.
pub fn start(path: &Path, ctx: Arc<Ctx>) -> Result<RpcServer, ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    // Owner-only from the start: no window in which others may connect.
    // SAFETY: umask(2) only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let accept = std::thread::Builder::new()
        .name("rpc_accept".into())
        .spawn(move || accept_loop(listener, ctx, s))
        .map_err(bind_err)?;
    log::info!("RPC server listening on {}", path.display());
    Ok(RpcServer {
        stop,
        accept: Some(accept),
        path: path.to_owned(),
    })
}

impl RpcServer {
    /// Stops accepting, lets connections end within their poll interval,
    /// and removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: UnixListener, ctx: Arc<Ctx>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    log::warn!("RPC: refusing a connection: {MAX_CONNECTIONS} open already");
                    continue;
                }
                active.fetch_add(1, Ordering::AcqRel);
                let (ctx, stop, active) = (ctx.clone(), stop.clone(), active.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("rpc_conn".into())
                        .spawn(move || {
                            if let Err(e) = serve(stream, &ctx, &stop) {
                                log::debug!("RPC connection: {e}");
                            }
                            active.fetch_sub(1, Ordering::AcqRel);
                        });
                if let Err(e) = spawned {
                    log::warn!("RPC: no thread for a connection: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                log::warn!("RPC accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn send(stream: &mut UnixStream, v: &Value) -> io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(io::Error::other)?;
    out.push(b'\n');
    stream.write_all(&out)
}

fn serve(mut stream: UnixStream, ctx: &Arc<Ctx>, stop: &AtomicBool) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut framer = Framer::new(MAX_REQUEST_BYTES);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        loop {
            match framer.next_frame() {
                Frame::Value(bytes) => {
                    let (answer, close) = handle_message(ctx, &bytes);
                    if let Some(a) = answer {
                        send(&mut stream, &a)?;
                    }
                    if close {
                        return Ok(());
                    }
                }
                Frame::Incomplete => break,
                Frame::TooLarge => {
                    let e = RpcError::invalid_request(&format!(
                        "request exceeds the {MAX_REQUEST_BYTES}-byte limit"
                    ));
                    log::warn!("RPC: {}", e.message);
                    send(&mut stream, &response_err(&Value::Null, &e))?;
                    return Ok(());
                }
            }
        }
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                if framer.buffered() > 0 {
                    log::info!(
                        "RPC: client left mid-request ({} bytes dropped)",
                        framer.buffered()
                    );
                }
                return Ok(());
            }
            Ok(n) => framer.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Answers one received JSON value: the response (none for notifications
/// only) and whether the connection must close (after a parse error).
pub fn handle_message(ctx: &Arc<Ctx>, bytes: &[u8]) -> (Option<Value>, bool) {
    match parse_request(bytes) {
        Err(e) => (Some(response_err(&Value::Null, &e)), true),
        Ok(Incoming::Single(call)) => (handle_call(ctx, call), false),
        Ok(Incoming::Batch(calls)) => {
            let answers: Vec<Value> = calls
                .into_iter()
                .filter_map(|c| handle_call(ctx, c))
                .collect();
            if answers.is_empty() {
                (None, false)
            } else {
                (Some(Value::Array(answers)), false)
            }
        }
    }
}

fn handle_call(ctx: &Arc<Ctx>, call: Call) -> Option<Value> {
    match call {
        Call::Invalid { id, error } => Some(response_err(&id, &error)),
        Call::Valid(req) => {
            log::debug!("RPC {} {:?}", req.method, req.params);
            let method = req.method.clone();
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                dispatch(ctx, &req.method, req.params)
            }))
            .unwrap_or_else(|_| Err(RpcError::internal(format!("{method} panicked"))));
            if let Err(e) = &r {
                log::info!("RPC {method}: error {} {}", e.code, e.message);
            }
            let id = req.id?;
            Some(match r {
                Ok(v) => response_ok(&id, v),
                Err(e) => response_err(&id, &e),
            })
        }
    }
}
