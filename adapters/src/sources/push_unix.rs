//! The system calls the Unix push socket needs beyond `std`: asking the
//! kernel for each datagram's sender (`SO_PASSCRED`, then `recvmsg` with
//! its `SCM_CREDENTIALS`) and finding a group's id by name (`getgrnam_r`,
//! which asks NSS, so that an LDAP or SSSD group is found as `id` finds it).
//!
//! It also makes a freshly bound socket ready ([`prepare`]).
//!
//! Through `libc`, already in the build through tokio: `nix` is not a
//! dependency of keel, and these three calls do not justify one. Each
//! `unsafe` block is one call, with what it relies on next to it.

use super::push::SOCKET_MODE;
use std::ffi::CString;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// What the kernel says of a datagram's sender. The pid is as this
/// process's pid namespace sees it; 0 when the sender's is not visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Asks the kernel to attach the sender's credentials to every datagram
/// received on `sock` from now on. An unprivileged sender cannot make them
/// up: the kernel fills them in, and checks any it is handed (another pid
/// needs CAP_SYS_ADMIN, another uid CAP_SETUID).
pub fn pass_credentials(sock: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a pointer to an int that lives for
    // the call with its exact size: what SO_PASSCRED reads.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Room for one `SCM_CREDENTIALS` message and nothing more, aligned for a
/// `cmsghdr`: file descriptors a sender passes along do not fit, and the
/// kernel closes them instead of installing them here.
#[repr(C, align(8))]
struct ControlBuf([u8; 64]);

/// Receives one datagram into `buf` without waiting: its length (longer
/// than `buf` only if cut) and its sender's credentials. `None`, or a pid
/// of 0, when the kernel did not know the sender: a datagram queued before
/// `SO_PASSCRED` was set, a sender in a pid namespace this one cannot see.
pub fn recv_with_credentials(
    sock: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, Option<Credentials>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = ControlBuf([0; 64]);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<libc::ucred>() as u32) } as usize;
    debug_assert!(space <= control.0.len());
    // SAFETY: msghdr is plain data; all-zero is a valid value (null
    // pointers, zero lengths) that the fields set below complete.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `iov` (which points at `buf`) and at
    // `control`, all alive and exclusively borrowed for the call, with
    // their true lengths.
    let n = unsafe {
        libc::recvmsg(
            sock,
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut creds = None;
    // SAFETY: `msg` is what recvmsg filled in; CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay within `msg_controllen` bytes of `control`.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: a non-null header pointer from CMSG_FIRSTHDR/NXTHDR lies
        // within `control`, aligned by the kernel's CMSG_ALIGN.
        let h = unsafe { &*c };
        // SAFETY: CMSG_LEN only computes a size.
        let want = unsafe { libc::CMSG_LEN(size_of::<libc::ucred>() as u32) } as usize;
        if h.cmsg_level == libc::SOL_SOCKET
            && h.cmsg_type == libc::SCM_CREDENTIALS
            && h.cmsg_len as usize >= want
        {
            // SAFETY: the header says its data holds a whole ucred; read
            // unaligned, as the data need not be aligned for it.
            let u: libc::ucred =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>()) };
            creds = Some(Credentials {
                pid: u32::try_from(u.pid).unwrap_or(0),
                uid: u.uid,
                gid: u.gid,
            });
        }
        // SAFETY: as for CMSG_FIRSTHDR; `c` came from it or from here.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok((n as usize, creds))
}

/// The id of group `name`; `NotFound` when the system knows no such group.
pub fn group_id(name: &str) -> io::Result<u32> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the group name"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `group` is written by getgrnam_r before it is read, and
        // only when it reports a match.
        let mut group: libc::group = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: a NUL-terminated name, a group struct and a buffer with
        // its true length, all alive for the call; the struct's strings
        // point into `buf`, which is not read after.
        let r = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut group,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        match r {
            0 if found.is_null() => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("group {name:?} does not exist"),
                ))
            }
            0 => return Ok(group.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            e => {
                let e = io::Error::from_raw_os_error(e);
                return Err(io::Error::new(
                    e.kind(),
                    format!("looking up group {name:?}: {e}"),
                ));
            }
        }
    }
}

/// Makes a freshly bound Unix socket ready: non-blocking, passing its
/// senders' credentials, its file in group `gid` and of [`SOCKET_MODE`](super::push::SOCKET_MODE).
pub fn prepare(
    s: &UnixDatagram,
    path: &Path,
    gid: Option<u32>,
    group: Option<&str>,
) -> io::Result<()> {
    let with = |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    s.set_nonblocking(true)?;
    pass_credentials(s).map_err(with("SO_PASSCRED".into()))?;
    if let Some(gid) = gid {
        let g = group.unwrap_or_default();
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(with(format!("chown to group {g:?} ({gid})")))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(with(format!("chmod {SOCKET_MODE:o}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_names_the_sender_of_each_datagram() {
        let (rx, tx) = UnixDatagram::pair().unwrap();
        tx.send(b"before").unwrap();
        pass_credentials(&rx).unwrap();
        tx.send(b"after").unwrap();
        let mut buf = [0u8; 16];
        let (n, before) = recv_with_credentials(rx.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"before");
        assert!(before.is_none_or(|c| c.pid == 0), "{before:?}");
        let (n, creds) = recv_with_credentials(rx.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"after");
        let c = creds.expect("credentials attached");
        assert_eq!(c.pid, std::process::id());
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((c.uid, c.gid), (uid, gid));
        let e = recv_with_credentials(rx.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_long_datagram_shows_its_whole_length() {
        let (rx, tx) = UnixDatagram::pair().unwrap();
        tx.send(&[7u8; 100]).unwrap();
        let mut buf = [0u8; 10];
        let (n, _) = recv_with_credentials(rx.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(n, 100);
    }

    #[test]
    fn groups_are_found_by_name_and_a_missing_one_is_named() {
        assert_eq!(group_id("root").unwrap(), 0);
        let e = group_id("no-such-group-keel-test").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no-such-group-keel-test"), "{e}");
    }
}
