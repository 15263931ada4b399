//! Starting a child process with no network: a new network namespace in which only loopback is
//! up. `egress_allowed: false` has to hold for MCP servers too, and a process cannot be trusted
//! to use only the sockets its agent's policy allows, so it gets none but its own loopback.
//!
//! Hand-written (a few system calls in the forked child) because the crates that wrap namespaces
//! either allocate after `fork` or bring a whole container runtime.
//!
//! The child enters a new user namespace (mapping only its own uid and gid) together with the
//! new network namespace, root included: a root child that unshared only the network namespace
//! would keep its capabilities over the node's, and one `setns` on `/proc/<node>/ns/net` would
//! take it back. In its own user namespace it has no capability over anything of the node's.
//! It also gets `no_new_privs`, so no setuid program gives them back. Where the kernel refuses
//! user namespaces the spawn fails with [`NamespaceUnavailable`], so the caller can refuse the
//! command instead of running it with the node's network.

use std::io;

/// The child could not get a network namespace of its own (the OS error says why).
#[derive(Debug)]
pub struct NamespaceUnavailable(pub io::Error);

/// Arranges for `cmd` to run in a network namespace of its own with loopback up.
/// The error of a failed `spawn` is then either [`classify`]'d as [`NamespaceUnavailable`] or
/// the plain start error.
#[cfg(target_os = "linux")]
pub fn isolate(cmd: &mut tokio::process::Command) -> Marker {
    // Everything the child needs is prepared here: between fork and exec it may not allocate.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let maps = Maps {
        uid: format!("{uid} {uid} 1\n").into_bytes(),
        gid: format!("{gid} {gid} 1\n").into_bytes(),
    };
    let marker = Marker::new();
    let marker_fd = marker.write_end;
    // SAFETY: the closure only makes async-signal-safe system calls on memory prepared above.
    unsafe {
        cmd.pre_exec(move || {
            let result = enter_namespace(&maps).and_then(|()| loopback_up());
            if let Err(e) = &result {
                // Tells the parent that the namespace, not the exec, failed.
                let _ = libc::write(marker_fd, b"n".as_ptr().cast(), 1);
                return Err(io::Error::from_raw_os_error(
                    e.raw_os_error().unwrap_or(libc::EPERM),
                ));
            }
            Ok(())
        });
    }
    marker
}

#[cfg(not(target_os = "linux"))]
pub fn isolate(_cmd: &mut tokio::process::Command) -> Marker {
    Marker
}

/// Says, after a failed spawn, whether the namespace was what failed.
#[cfg(target_os = "linux")]
pub struct Marker {
    read_end: libc::c_int,
    write_end: libc::c_int,
}

#[cfg(target_os = "linux")]
impl Marker {
    fn new() -> Self {
        let mut fds = [-1; 2];
        // Close-on-exec: a child that execs keeps neither end.
        let ok = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == 0;
        if !ok {
            return Self {
                read_end: -1,
                write_end: -1,
            };
        }
        Self {
            read_end: fds[0],
            write_end: fds[1],
        }
    }

    /// Turns a spawn error into [`NamespaceUnavailable`] when the child said so.
    pub fn classify(&self, error: io::Error) -> Result<io::Error, NamespaceUnavailable> {
        let mut byte = 0u8;
        let n = unsafe { libc::read(self.read_end, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            Err(NamespaceUnavailable(error))
        } else {
            Ok(error)
        }
    }
}

#[cfg(target_os = "linux")]
impl Drop for Marker {
    fn drop(&mut self) {
        for fd in [self.read_end, self.write_end] {
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub struct Marker;

#[cfg(not(target_os = "linux"))]
impl Marker {
    pub fn classify(&self, error: io::Error) -> Result<io::Error, NamespaceUnavailable> {
        Err(NamespaceUnavailable(error))
    }
}

#[cfg(target_os = "linux")]
struct Maps {
    uid: Vec<u8>,
    gid: Vec<u8>,
}

/// In the forked child: new user and network namespaces, and no way to gain privileges.
#[cfg(target_os = "linux")]
fn enter_namespace(maps: &Maps) -> io::Result<()> {
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The child keeps its own uid and gid inside; supplementary groups cannot be mapped, and
    // setgroups must be denied before an unprivileged process may write its gid map.
    write_proc(c"/proc/self/setgroups", b"deny")?;
    write_proc(c"/proc/self/uid_map", &maps.uid)?;
    write_proc(c"/proc/self/gid_map", &maps.gid)
}

#[cfg(target_os = "linux")]
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let result = if n == data.len() as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    unsafe { libc::close(fd) };
    result
}

/// A new network namespace has `lo` down; servers that talk to themselves need it up.
#[cfg(target_os = "linux")]
fn loopback_up() -> io::Result<()> {
    // From <linux/sockios.h>; libc does not export them for every Linux target.
    const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
    const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    let mut result = Ok(());
    if unsafe { libc::ioctl(sock, SIOCGIFFLAGS as _, &mut req) } != 0 {
        result = Err(io::Error::last_os_error());
    } else {
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        if unsafe { libc::ioctl(sock, SIOCSIFFLAGS as _, &req) } != 0 {
            result = Err(io::Error::last_os_error());
        }
    }
    unsafe { libc::close(sock) };
    result
}
