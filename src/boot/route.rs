//! Waiting for the network to come up without polling it: a netlink socket subscribed to
//! link, address and route changes wakes the retry loop the moment DHCP (or anything else)
//! configures the machine, where a fixed sleep would add up to its whole length to the
//! boot, and a short one would take CPU from the very services bringing the network up.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Link, IPv4/IPv6 address and route changes (`rtnetlink(7)` multicast groups).
const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV6_ROUTE) as u32;

/// Subscribed from creation on, so a change between a failed attempt and the wait that
/// follows it is not missed: it is waiting in the socket.
pub struct RouteWatch {
    /// None where netlink is not available: `wait` then sleeps its whole timeout.
    socket: Option<OwnedFd>,
}

impl RouteWatch {
    pub fn new() -> RouteWatch {
        // SAFETY: socket(2) returns a new descriptor (or -1) that nothing else owns.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        // SAFETY: `fd` is that fresh descriptor; OwnedFd closes it, once.
        let socket = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
        let socket = socket.filter(|socket| {
            // SAFETY: a zeroed sockaddr_nl with family and groups set, passed with its size.
            unsafe {
                let mut address: libc::sockaddr_nl = std::mem::zeroed();
                address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
                address.nl_groups = GROUPS;
                libc::bind(
                    socket.as_raw_fd(),
                    (&raw const address).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                ) == 0
            }
        });
        RouteWatch { socket }
    }

    /// Waits until the network configuration changes or `timeout` passes; true if it
    /// changed. Every change seen so far is consumed.
    pub fn wait(&self, timeout: Duration) -> bool {
        let Some(socket) = &self.socket else {
            std::thread::sleep(timeout);
            return false;
        };
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one pollfd we own.
        if unsafe { libc::poll(&mut poll, 1, millis) } <= 0 {
            return false;
        }
        let mut buffer = [0u8; 8192];
        // SAFETY: reads into a local buffer of the length given; the socket is
        // non-blocking, so the loop ends when the queue is empty (or on any error).
        while unsafe { libc::recv(poll.fd, buffer.as_mut_ptr().cast(), buffer.len(), 0) } > 0 {}
        true
    }
}

impl Default for RouteWatch {
    fn default() -> Self {
        RouteWatch::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Sets `lo` up or down in the calling thread's network namespace.
    fn set_loopback(up: bool) {
        // SAFETY: an ioctl on a fresh socket with an ifreq naming "lo"; the socket is
        // closed before returning.
        unsafe {
            let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            assert!(socket >= 0);
            let mut request: libc::ifreq = std::mem::zeroed();
            for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
                *slot = *byte as libc::c_char;
            }
            assert_eq!(libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request), 0);
            let flags = request.ifr_ifru.ifru_flags;
            let up_flag = libc::IFF_UP as libc::c_short;
            request.ifr_ifru.ifru_flags = if up {
                flags | up_flag
            } else {
                flags & !up_flag
            };
            assert_eq!(libc::ioctl(socket, libc::SIOCSIFFLAGS, &request), 0);
            libc::close(socket);
        }
    }

    #[test]
    fn wakes_on_a_change_and_times_out_without_one() {
        // A network namespace of this thread's own, so the host's network is not touched;
        // the test runs as root (the test command does).
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread, which ends with the test.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "a network namespace needs root: {}",
                std::io::Error::last_os_error()
            );
            let watch = RouteWatch::new();
            assert!(watch.socket.is_some());
            let started = Instant::now();
            assert!(
                !watch.wait(Duration::from_millis(200)),
                "a change nobody made"
            );
            assert!(started.elapsed() >= Duration::from_millis(190));
            // A change made before the wait is not lost: it waits in the socket.
            set_loopback(true);
            std::thread::sleep(Duration::from_millis(100));
            let started = Instant::now();
            assert!(watch.wait(Duration::from_secs(5)));
            assert!(started.elapsed() < Duration::from_secs(1));
            // Consumed: the next wait times out again.
            assert!(!watch.wait(Duration::from_millis(100)));
            set_loopback(false);
            assert!(watch.wait(Duration::from_secs(5)));
        })
        .join()
        .unwrap();
    }
}
