//! Raw non-blocking sockets on plain epoll, with the kernel's receive timestamps
//! (`SO_TIMESTAMPNS`), for the watch measurements (`fanout`, `streams`): a watcher's
//! delivery time is when its bytes reached its socket, whatever this process was doing then.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// A socket this process owns; closed on drop.
pub struct Fd(pub RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe {
            libc::close(self.0);
        }
    }
}

pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid pointer to an int of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// A non-blocking TCP socket connecting to `addr`, with receive timestamps on.
pub fn connect_nb(addr: &SocketAddr) -> io::Result<Fd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2).
    let fd = Fd(cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?);
    set_int_opt(fd.0, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    set_int_opt(fd.0, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    let (sa, len) = sockaddr(addr);
    // SAFETY: sa is a valid sockaddr of length len.
    let r = unsafe { libc::connect(fd.0, (&sa as *const libc::sockaddr_storage).cast(), len) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(fd)
}

pub fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// CLOCK_REALTIME in ns (the clock of SO_TIMESTAMPNS).
pub fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// What a recvmsg got: bytes (0 = the peer closed) and the kernel's receive time (ns,
/// CLOCK_REALTIME) of the data, if it gave one.
pub struct Received {
    pub n: usize,
    pub at_ns: Option<i64>,
}

/// One recvmsg into `buf`, with the SO_TIMESTAMPNS control message.
pub fn recv_ts(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one cmsg with a timespec (u64-aligned).
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg describes valid buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut at_ns = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                at_ns = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        n: n as usize,
        at_ns,
    })
}

/// Sends all of `data` on a non-blocking socket (a request of a few hundred bytes on an
/// idle connection: the socket buffer takes it at once; anything else is an error here).
pub fn send_now(fd: RawFd, data: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < data.len() {
        // SAFETY: a valid buffer.
        let n = unsafe {
            libc::send(
                fd,
                data[at..].as_ptr().cast(),
                data.len() - at,
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        at += n as usize;
    }
    Ok(())
}

/// The outcome of a non-blocking connect once its socket is writable (SO_ERROR).
pub fn connect_result(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid pointers to an int and its length.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    match err {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

pub struct Epoll(Fd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain epoll_create1.
        Ok(Epoll(Fd(cvt(unsafe {
            libc::epoll_create1(libc::EPOLL_CLOEXEC)
        })?)))
    }

    /// A non-blocking connect to `addr`, watched for writability (its end) under `token`.
    pub fn connect(&self, addr: &SocketAddr, token: usize) -> Result<Fd, String> {
        let fd = connect_nb(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        self.ctl(libc::EPOLL_CTL_ADD, fd.0, libc::EPOLLOUT as u32, token)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        Ok(fd)
    }

    pub fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: usize) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: token as u64,
        };
        // SAFETY: a valid epoll_event.
        cvt(unsafe { libc::epoll_ctl(self.0 .0, op, fd, &mut ev) }).map(|_| ())
    }

    /// Ready tokens (up to `events.len()`), waiting at most `timeout`.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: a valid buffer of events.len() entries.
        let n = unsafe {
            libc::epoll_wait(
                self.0 .0,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                ms,
            )
        };
        match n {
            n if n >= 0 => Ok(n as usize),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(0)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard one: thousands of watchers need as many
/// descriptors.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// CPU time (utime + stime, ms) of process `pid` so far, from /proc: the server's CPU over a
/// measured phase, when it runs on this machine (`--server-pid`).
pub fn process_cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (hz > 0.0).then(|| ticks * 1000.0 / hz)
}
