//! Non-blocking TCP connects: the socket is made non-blocking before
//! `connect(2)`, so a reactor never waits for a SYN to be answered; the
//! owner polls [`connect_poll`] until the connection is up or refused.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::task::Poll;

/// Starts connecting to `addr`; the stream is non-blocking with Nagle off.
///
/// # Errors
/// The socket could not be made, or the connect failed at once (no route,
/// a refused loopback connect).
pub fn connect_start(addr: &SocketAddr) -> io::Result<TcpStream> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: a plain system call with constant arguments; the result is
    // checked before use.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just created and owned by nobody else; the
    // stream closes it when dropped.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let r = match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sa` is a valid sockaddr_in whose size is passed
            // with it; `fd` is open.
            unsafe {
                libc::connect(
                    fd,
                    (&raw const sa).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for a sockaddr_in6.
            unsafe {
                libc::connect(
                    fd,
                    (&raw const sa).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether the connect [`connect_start`] began has finished: connected,
/// failed (refused, unreachable), or still in progress. Never waits.
pub fn connect_poll(s: &TcpStream) -> Poll<io::Result<()>> {
    match s.take_error() {
        Ok(Some(e)) | Err(e) => return Poll::Ready(Err(e)),
        Ok(None) => {}
    }
    match s.peer_addr() {
        Ok(_) => Poll::Ready(Ok(())),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Pending,
        Err(e) => Poll::Ready(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// Waits (test thread only, never a reactor) for the connect to end:
    /// poll(2) for writability, which is how a finished or failed
    /// non-blocking connect shows itself, then asks [`connect_poll`].
    fn wait(s: &TcpStream) -> io::Result<()> {
        let start = Instant::now();
        loop {
            if let Poll::Ready(r) = connect_poll(s) {
                return r;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "connect hangs");
            let mut pfd = libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd that lives across the call.
            unsafe { libc::poll(&mut pfd, 1, 100) };
        }
    }

    #[test]
    fn connects_without_waiting_and_reports_refusals() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = connect_start(&addr).unwrap();
        wait(&s).unwrap();
        let (_peer, from) = l.accept().unwrap();
        assert_eq!(from, s.local_addr().unwrap());
        drop(l);
        // Nobody listens there any more: refused, reported as an error.
        let r = connect_start(&addr).and_then(|s| wait(&s));
        assert_eq!(
            r.unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused,
            "a closed port is refused"
        );
    }
}
