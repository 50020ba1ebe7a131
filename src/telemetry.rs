//! Log output: human-readable text or one JSON object per line, filtered by
//! `--log` / `BILLGUARD_LOG` (an env-filter directive such as `info` or
//! `info,billguard::access=warn`).
//!
//! Targets callers use: `billguard::access` (one line per request) and
//! `billguard::auth` (one line per login outcome). What to log is the
//! callers' business; this module only sets up where it goes.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
