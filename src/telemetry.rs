//! Log output: human-readable text or one JSON object per line, filtered by
//! `--log` / `BILLGUARD_LOG` (an env-filter directive such as `info` or
//! `info,billguard::access=warn`).
//!
//! Targets callers use: `billguard::access` (one line per request) and
//! `billguard::auth` (one line per login outcome). What to log is the
//! callers' business; this module only sets up where it goes (standard
//! error, access-log lines batched per runtime worker: see `batch`), and
//! hands `billguard::auth` events to the login counters in `metrics`.

mod access_line;
mod batch;

pub use batch::{flush_thread, worker_idle};

/// The request log's target.
const ACCESS_TARGET: &str = "billguard::access";

use std::io::IsTerminal as _;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, filter, fmt};

use crate::cli::LogFormat;
use crate::metrics;

#[derive(Debug, thiserror::Error)]
#[error(
    "--log `{directive}` is not a valid filter: {reason}; for example `info` or `info,billguard::access=warn`"
)]
pub struct FilterError {
    directive: String,
    reason: String,
}

/// Installs the global subscriber. Call once, first thing.
pub fn init(format: LogFormat, directive: &str) -> Result<(), FilterError> {
    let filter = EnvFilter::builder()
        .parse(directive)
        .map_err(|e| FilterError {
            directive: directive.to_owned(),
            reason: e.to_string(),
        })?;
    let output = match format {
        // Colours only for a person at a terminal: a log file or collector
        // gets plain text, and skipping the escape codes is much of the
        // cost of an access-log line.
        LogFormat::Text => fmt::layer()
            .event_format(access_line::Text::new())
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(batch::Stderr)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .event_format(access_line::Json::new())
            .with_writer(batch::Stderr)
            .boxed(),
    };
    // Login events are counted whatever the log filter says, and only they
    // reach the metrics layer.
    let logins = metrics::AuthEvents.with_filter(
        filter::Targets::new().with_target(metrics::AUTH_TARGET, tracing::Level::TRACE),
    );
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(logins)
        .try_init();
    Ok(())
}
