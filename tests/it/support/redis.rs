//! A real `redis-server` for the tests, on a free loopback port, stopped by PID when dropped.
//!
//! The server is found at Debian's `/usr/bin` location or on `PATH`; without it
//! the test **fails** with the way to install it (`.ci/run` installs it), so a machine without
//! Redis can never pass the Redis tests by skipping them. It runs with a password (so the
//! tests cover authentication), in a temporary directory, and saves its data on shutdown so
//! [`RedisServer::restart`] brings the same data back, as a real Redis with persistence would.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub const PASSWORD: &str = "redis-test-password";

pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

// === impl RedisServer ===

impl RedisServer {
    pub async fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let port = free_port();
        let mut server = RedisServer {
            port,
            dir,
            child: None,
        };
        server.spawn().await;
        server
    }

    /// `redis://127.0.0.1:<port>/0`, without the password (tests pass it separately).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server (it saves its data first) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM makes redis save and exit; Child::kill would be SIGKILL.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the data it saved.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Sends one command (inline protocol) and returns the raw reply.
    pub async fn command(&self, line: &str) -> String {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to the test redis");
        conn.write_all(format!("AUTH {PASSWORD}\r\n{line}\r\n").as_bytes())
            .await
            .expect("write to redis");
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        // +OK for AUTH, then the reply to the command: read until both are in.
        loop {
            let n = conn.read(&mut buf).await.expect("read from redis");
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if let Some(rest) = text.strip_prefix("+OK\r\n")
                && complete(rest)
            {
                return rest.to_owned();
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    async fn spawn(&mut self) {
        let binary = find_binary();
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--requirepass", PASSWORD])
            .args(["--save", "3600 1"])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); the Redis tests need redis-server: \
                     `apt-get install redis-server` (.ci/run does this)",
                    binary.display()
                )
            });
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Waits until the server answers PING, for at most 10 s.
    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)).await {
                let _ = conn
                    .write_all(format!("AUTH {PASSWORD}\r\nPING\r\n").as_bytes())
                    .await;
                let mut buf = [0u8; 64];
                let mut got = Vec::new();
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"+PONG\r\n") {
                        return;
                    }
                    if got.starts_with(b"-") {
                        break;
                    }
                }
            }
            // Polling the server's own readiness, not a synchronisation point between steps.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `text` holds one whole RESP reply of the kinds the tests use.
fn complete(text: &str) -> bool {
    match text.as_bytes().first() {
        Some(b'+' | b'-' | b':') => text.ends_with("\r\n"),
        Some(b'$') => {
            let Some((len, rest)) = text[1..].split_once("\r\n") else {
                return false;
            };
            match len.parse::<i64>() {
                Ok(n) if n < 0 => true,
                Ok(n) => rest.len() >= n as usize + 2,
                Err(_) => true,
            }
        }
        Some(b'*') => text.ends_with("\r\n"),
        _ => false,
    }
}

/// `redis-server` from `PATH`, else Debian's location.
fn find_binary() -> PathBuf {
    for path in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(path).is_file() {
            return PathBuf::from(path);
        }
    }
    // Let the spawn search PATH; it fails loudly below when absent.
    PathBuf::from("redis-server")
}

fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}
