//! Shared by loadgen's black-box tests: `loadgen serve-static` on a free loopback port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

/// A serve-static process, killed on drop.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `loadgen serve-static` on 127.0.0.1 with `extra` arguments (https, --basic-auth,
/// ...); returns it and the address it listens on, once that accepts connections (a bounded
/// wait).
pub fn serve_static(extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(BIN)
        .args(["serve-static", "--listen", "127.0.0.1:0"])
        .args(["--exit-after", "300"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start serve-static");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no listening line: {line:?}"))
        .to_string();
    let mut ok = false;
    for _ in 0..200 {
        let a = addr.parse().expect("addr");
        if TcpStream::connect_timeout(&a, Duration::from_millis(100)).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ok, "serve-static never accepted connections on {addr}");
    (server, addr)
}
