//! Loopback servers for the tests: stock tangd (one process per connection, as socat or a
//! socket unit runs it) and fixed-answer servers, on a free port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::TANGD;

/// A listener that hands each connection to `serve`: on 127.0.0.1 (free port) from
/// `start`, on any local address from `start_at`.
pub struct Listener {
    pub port: u16,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    pub fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Listener {
        Listener::start_at("127.0.0.1:0", serve)
    }

    /// Listens on `addr` ("127.0.0.2:0", "[::1]:0", …).
    pub fn start_at(addr: &str, serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Listener {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let serve = Arc::new(serve);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let serve = serve.clone();
                std::thread::spawn(move || serve(stream));
            }
        });
        Listener {
            port: addr.port(),
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the port: later connections are refused.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The accept loop sees the flag only on its next connection: this one.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stock tangd serving `dir`, one process per connection, as Debian's socket unit runs it.
pub fn start_tangd(dir: &Path) -> Listener {
    start_tangd_at(dir, "127.0.0.1:0")
}

/// `start_tangd` listening on `addr`.
pub fn start_tangd_at(dir: &Path, addr: &str) -> Listener {
    let dir: PathBuf = dir.to_owned();
    Listener::start_at(addr, move |stream| {
        let input: OwnedFd = stream.try_clone().unwrap().into();
        let output: OwnedFd = stream.into();
        if let Ok(mut child) = Command::new(TANGD)
            .arg(&dir)
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(output))
            .stderr(Stdio::null())
            .spawn()
        {
            let _ = child.wait();
        }
    })
}

/// A server that answers every request with `status` and `body` (after reading the
/// request head), or never answers if `status` is 0.
pub fn start_fixed_server(status: u16, content_type: &'static str, body: Vec<u8>) -> Listener {
    Listener::start(move |mut stream| {
        let mut buf = [0u8; 65536];
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.read(&mut buf);
        if status == 0 {
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body);
    })
}
