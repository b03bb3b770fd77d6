//! Process-level signals and the service manager: SIGTERM and SIGINT start a graceful stop,
//! and systemd (`Type=notify`) is told when the member is ready and when it is stopping.
//!
//! The signals are blocked in every thread (the mask is set before the first thread is
//! spawned and inherited) and taken synchronously by the main thread with `sigtimedwait`, so
//! no handler runs in a shard or the raft thread and nothing async-signal-unsafe can happen.

use std::time::Duration;

/// The signals that stop the member.
const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it spawns afterwards.
/// Call first thing in `main`, before any thread exists.
pub fn block_stop_signals() {
    let set = stop_set();
    // SAFETY: changes only this thread's signal mask, with a valid set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Undoes `block_stop_signals` in the calling thread: for one-off commands (`ringd migrate`),
/// which a stop signal simply ends.
pub fn unblock_stop_signals() {
    let set = stop_set();
    // SAFETY: changes only this thread's signal mask, with a valid set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits up to `timeout` (forever with `None`) for SIGTERM or SIGINT; returns its name.
/// The signals must be blocked (`block_stop_signals`).
pub fn wait_stop_signal(timeout: Option<Duration>) -> Option<&'static str> {
    let set = stop_set();
    loop {
        let sig = match timeout {
            // SAFETY: sigwaitinfo with a valid set and no info out-parameter.
            None => unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) },
            Some(t) => {
                let ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: t.subsec_nanos() as libc::c_long,
                };
                // SAFETY: as above, with a valid timespec.
                unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) }
            }
        };
        match sig {
            libc::SIGTERM => return Some("terminated"),
            libc::SIGINT => return Some("interrupt"),
            _ => {
                // EINTR (another signal) waits again; EAGAIN is the timeout.
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return None;
            }
        }
    }
}

/// Sends `state` to the service manager when it asked for notifications (`$NOTIFY_SOCKET`,
/// systemd's `Type=notify`); a no-op otherwise. Failures are logged, never fatal: the member
/// serves the same with or without a service manager.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let sock = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            // An abstract socket (systemd's own form for some managers).
            Some(name) => {
                <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_notify_reaches_the_socket_named_by_the_environment() {
        let dir = std::env::temp_dir().join(format!("ringd-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        // The only test in this binary that reads NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        sd_notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
