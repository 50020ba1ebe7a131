//! Access-log lines written in batches.
//!
//! One `write(2)` per request line is a system call per request, a
//! measurable share of what a proxied request costs. So a runtime worker
//! keeps its access-log lines in a buffer of its own and writes them
//! together when it runs out of work (the runtime's park hook), when the
//! buffer passes [`FLUSH_AT`], or when the thread ends. An idle proxy thus
//! writes each line at once, and a busy one writes dozens per system call.
//!
//! Only access-log lines wait. Any other line first writes what its
//! thread holds, then itself: one thread's lines keep their order, and a
//! warning or an error is never held back. Threads that are not runtime
//! workers (the main thread, blocking tasks) write every line at once.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use super::ACCESS_TARGET;

/// A buffer this full is written at once.
const FLUSH_AT: usize = 32 * 1024;

thread_local! {
    /// `None` until the thread first parks as a runtime worker.
    static PENDING: RefCell<Option<Lines>> = const { RefCell::new(None) };
}

/// Lines waiting to be written, in the order they were logged.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

// === impl Lines ===

impl Lines {
    /// Takes one formatted line. A line that may wait is kept (and the
    /// buffer written once it is full); any other is written after what
    /// is kept. `out` is asked for only when something is written, so
    /// keeping a line takes no lock.
    fn push<O: Write>(
        &mut self,
        line: &[u8],
        may_wait: bool,
        out: impl FnOnce() -> O,
    ) -> io::Result<()> {
        if may_wait {
            self.buf.extend_from_slice(line);
            if self.buf.len() >= FLUSH_AT {
                self.flush(out)?;
            }
            return Ok(());
        }
        if self.buf.is_empty() {
            return out().write_all(line);
        }
        self.buf.extend_from_slice(line);
        self.flush(out)
    }

    /// Writes everything kept, in one call when the output takes it.
    fn flush<O: Write>(&mut self, out: impl FnOnce() -> O) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = out().write_all(&self.buf);
        // Written or not, the lines are not offered twice: a log that
        // cannot be written must not grow without bound.
        self.buf.clear();
        if self.buf.capacity() > 4 * FLUSH_AT {
            self.buf.shrink_to(FLUSH_AT);
        }
        written
    }
}

/// For the runtime's park hook: writes what this thread holds, and from
/// now on lets its access-log lines wait.
pub fn worker_idle() {
    PENDING.with_borrow_mut(|pending| {
        let lines = pending.get_or_insert_with(Lines::default);
        let _ = lines.flush(|| io::stderr().lock());
    });
}

/// For the runtime's thread-stop hook, and before the process ends:
/// writes what this thread holds.
pub fn flush_thread() {
    PENDING.with_borrow_mut(|pending| {
        if let Some(lines) = pending {
            let _ = lines.flush(|| io::stderr().lock());
        }
    });
}

/// Adds the access-log line `write` writes to this thread's batch (at once
/// on a thread that is not a runtime worker). A line that fails halfway
/// is left out whole.
pub(super) fn write_access(write: impl FnOnce(&mut Vec<u8>) -> fmt::Result) {
    PENDING.with_borrow_mut(|pending| match pending {
        Some(lines) => {
            let start = lines.buf.len();
            if write(&mut lines.buf).is_err() {
                lines.buf.truncate(start);
            } else if lines.buf.len() >= FLUSH_AT {
                let _ = lines.flush(|| io::stderr().lock());
            }
        }
        None => {
            let mut line = Vec::new();
            if write(&mut line).is_ok() {
                let _ = io::stderr().write_all(&line);
            }
        }
    });
}

/// Standard error as the log's destination, access-log lines batched.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Stderr;

/// One event's output; the formatter writes the whole line in one call.
pub(super) struct Line {
    may_wait: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { may_wait: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            may_wait: may_wait(*meta.level(), meta.target()),
        }
    }
}

fn may_wait(level: Level, target: &str) -> bool {
    level == Level::INFO && target == ACCESS_TARGET
}

impl Write for Line {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        PENDING.with_borrow_mut(|pending| match pending {
            Some(lines) => lines.push(line, self.may_wait, || io::stderr().lock()),
            None => io::stderr().write_all(line),
        })?;
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records each write call separately.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn access_lines_wait_and_go_out_together() {
        let (mut lines, mut out) = (Lines::default(), Calls::default());
        lines.push(b"a1\n", true, || &mut out).unwrap();
        lines.push(b"a2\n", true, || &mut out).unwrap();
        assert!(out.0.is_empty());
        lines.flush(|| &mut out).unwrap();
        assert_eq!(out.0, vec![b"a1\na2\n".to_vec()]);
        assert!(lines.buf.is_empty());
        lines.flush(|| &mut out).unwrap();
        assert_eq!(out.0.len(), 1, "nothing kept, nothing written");
    }

    #[test]
    fn another_line_goes_out_at_once_after_the_waiting_ones() {
        let (mut lines, mut out) = (Lines::default(), Calls::default());
        lines.push(b"warn\n", false, || &mut out).unwrap();
        assert_eq!(out.0, vec![b"warn\n".to_vec()]);
        lines.push(b"a1\n", true, || &mut out).unwrap();
        lines.push(b"error\n", false, || &mut out).unwrap();
        assert_eq!(out.0[1], b"a1\nerror\n".to_vec());
        assert!(lines.buf.is_empty());
    }

    #[test]
    fn a_full_buffer_is_written_without_waiting_for_idle() {
        let (mut lines, mut out) = (Lines::default(), Calls::default());
        let line = vec![b'x'; 1000];
        let mut pushed = 0;
        while out.0.is_empty() {
            lines.push(&line, true, || &mut out).unwrap();
            pushed += line.len();
        }
        assert!(pushed >= FLUSH_AT && pushed < FLUSH_AT + line.len());
        assert_eq!(out.0[0].len(), pushed);
        assert_eq!(lines.buf.len(), 0);
    }

    #[test]
    fn a_failed_write_drops_the_lines_instead_of_keeping_them() {
        let mut lines = Lines::default();
        lines.push(b"a1\n", true, || Broken).unwrap();
        assert!(lines.flush(|| Broken).is_err());
        assert!(lines.buf.is_empty());
    }

    #[test]
    fn only_info_lines_of_the_access_log_may_wait() {
        assert!(may_wait(Level::INFO, ACCESS_TARGET));
        assert!(!may_wait(Level::WARN, ACCESS_TARGET));
        assert!(!may_wait(Level::INFO, "billguard::auth"));
        assert!(!may_wait(Level::ERROR, "billguard"));
    }
}
