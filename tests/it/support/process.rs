//! The real `billguard` binary as a child process, for what only a process
//! shows: signals, exit codes, and the per-process metrics registry.
//!
//! The child logs JSON to stderr; a thread reads it line by line, so a test
//! can wait for a given log message instead of sleeping. Whatever it logged
//! is printed when the handle is dropped, so a failing test shows it.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for a log line or an exit before failing.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Process {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
    /// Lines read while waiting for another message, kept so that a line
    /// logged before the one awaited first is still found.
    backlog: Vec<serde_json::Value>,
    seen: Arc<Mutex<Vec<String>>>,
    /// The public listener, `http://127.0.0.1:<port>`.
    pub base: String,
    /// The metrics listener, when the configuration has one.
    pub metrics: Option<String>,
    _config: tempfile::NamedTempFile,
}

// === impl Process ===

impl Process {
    /// Starts `billguard serve` with this configuration and waits until it
    /// listens.
    pub fn serve(toml: &str) -> Process {
        let mut config = tempfile::NamedTempFile::new().expect("temp config file");
        config.write_all(toml.as_bytes()).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_billguard"))
            .args(["--log-format", "json", "--log", "info", "serve", "--config"])
            .arg(config.path())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start billguard");

        let stderr = child.stderr.take().expect("stderr is piped");
        let (send, lines) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                record.lock().unwrap().push(line.clone());
                if let Ok(json) = serde_json::from_str(&line) {
                    let _ = send.send(json);
                }
            }
        });

        let mut process = Process {
            child,
            lines,
            backlog: Vec::new(),
            seen,
            base: String::new(),
            metrics: None,
            _config: config,
        };
        let wants_metrics = toml.contains("metrics_listen");
        let listening = process.wait_for_log("Listening");
        let scheme = if listening["https"] == true {
            "https"
        } else {
            "http"
        };
        process.base = format!("{scheme}://{}", listening["addr"].as_str().unwrap());
        if wants_metrics {
            let metrics = process.wait_for_log("Serving metrics at /metrics");
            process.metrics = Some(format!("http://{}", metrics["addr"].as_str().unwrap()));
        }
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits for a log line whose message starts with `message`. Each line
    /// is returned once; lines logged earlier than the ones awaited before
    /// are still found, whatever order billguard logged them in.
    pub fn wait_for_log(&mut self, message: &str) -> serde_json::Value {
        let matches = |line: &serde_json::Value| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        };
        if let Some(at) = self.backlog.iter().position(matches) {
            return self.backlog.remove(at);
        }
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(line) => self.backlog.push(line),
                Err(_) => panic!(
                    "billguard never logged {message:?}; it logged:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Sends SIGHUP, which makes billguard reload its configuration.
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for billguard") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "billguard did not exit; it logged:\n{}",
                self.log()
            );
            // Nothing to block on portably for a child's exit with a deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("billguard's log:\n{}", self.log());
        }
    }
}

/// A free loopback port, for a configuration that must name its own
/// address before the process starts (the redirect URI does).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral loopback port")
        .port()
}
