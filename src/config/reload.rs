//! Configuration reload on a running proxy: on SIGHUP, and when the
//! configuration file or the users file changes.
//!
//! The files are polled (every [`POLL_EVERY`]) by content rather than
//! watched by inode, which also sees a Kubernetes ConfigMap update (a
//! symlink swap) and an editor's rename-into-place. A change is loaded with
//! the same rules as at start: the file, the environment the process
//! started with, and its flags. A configuration that does not validate is
//! rejected with every problem logged, and the running configuration stays;
//! the next change (or SIGHUP) tries again. Applying a valid one is the
//! caller's business (the server swaps in a new App that keeps the
//! sessions). Nothing here handles requests.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Inputs, Loaded, load};

/// How often the files are compared with what was last loaded.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// What made a reload happen.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    Hangup,
    FileChanged,
}

/// Reloads until the task is aborted. `users_file` is the users file of the
/// configuration in force; `apply` puts a validated configuration in force
/// or says why it could not; `reject` hears of a configuration that did not
/// validate.
///
/// SIGHUP is caught from the call on, not from the first poll: a signal
/// sent as soon as the proxy says it listens must reload it, not end it.
pub fn run(
    inputs: Inputs,
    users_file: Option<PathBuf>,
    apply: impl FnMut(Loaded) -> Result<(), String> + Send,
    reject: impl FnMut(String) + Send,
) -> impl Future<Output = ()> + Send {
    let hangup = Hangup::new();
    watch(inputs, users_file, hangup, apply, reject)
}

async fn watch(
    inputs: Inputs,
    users_file: Option<PathBuf>,
    mut hangup: Hangup,
    mut apply: impl FnMut(Loaded) -> Result<(), String> + Send,
    mut reject: impl FnMut(String) + Send,
) {
    let mut users_file = users_file;
    let mut seen = fingerprint(inputs.file.as_deref(), users_file.as_deref());

    loop {
        let trigger = tokio::select! {
            _ = hangup.recv() => Trigger::Hangup,
            _ = tokio::time::sleep(POLL_EVERY) => {
                let now = fingerprint(inputs.file.as_deref(), users_file.as_deref());
                if now == seen {
                    continue;
                }
                Trigger::FileChanged
            }
        };
        seen = fingerprint(inputs.file.as_deref(), users_file.as_deref());

        let loaded = match load(&inputs) {
            Ok(loaded) => loaded,
            Err(problems) => {
                let reasons: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
                let reasons = reasons.join("; ");
                tracing::error!(
                    ?trigger,
                    problems = %reasons,
                    "Configuration reload rejected; the running configuration stays"
                );
                reject(reasons);
                continue;
            }
        };
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let next_users_file = loaded.config.local_login.users_file.clone();
        match apply(loaded) {
            Ok(()) => {
                tracing::info!(?trigger, "Configuration reloaded");
                users_file = next_users_file;
                seen = fingerprint(inputs.file.as_deref(), users_file.as_deref());
            }
            Err(reason) => {
                tracing::error!(?trigger, %reason, "Configuration reload failed; the running configuration stays");
            }
        }
    }
}

/// A digest of both files' contents (or of their absence).
fn fingerprint(file: Option<&Path>, users_file: Option<&Path>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for path in [file, users_file].into_iter().flatten() {
        path.hash(&mut hasher);
        std::fs::read(path).ok().hash(&mut hasher);
    }
    hasher.finish()
}

/// SIGHUP where there is such a thing.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(error) => {
                    tracing::warn!(%error, "Cannot listen for SIGHUP; reloads happen on file changes only");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}
