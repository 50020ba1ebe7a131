//! Log output: human-readable text or one JSON object per line, filtered by
//! `--log` / `BILLGUARD_LOG` (an env-filter directive such as `info` or
//! `info,billguard::access=warn`).
//!
//! Targets callers use: `billguard::access` (one line per request) and
//! `billguard::auth` (one line per login outcome). What to log is the
//! callers' business; this module only sets up where it goes (standard
//! error, access-log lines batched per runtime worker: see `batch`), marks
//! the lines of each request with its id (see `context`), and hands
//! `billguard::auth` events to the login counters in `metrics`.

mod access_line;
mod batch;
mod context;

pub use access_line::Served;
pub use batch::{flush_thread, worker_idle};
pub use context::in_request;

/// The request log's target.
const ACCESS_TARGET: &str = "billguard::access";

use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::time::SystemTime;

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

/// What becomes of access-log lines without going through an event: set
/// by [`init`] when lines are not painted and the filter decides by
/// target and level alone, as it then decides once for all of them.
static DIRECT: OnceLock<Direct> = OnceLock::new();

#[derive(Clone, Copy, Debug)]
enum Direct {
    /// The filter lets them through: written in this style.
    Write(access_line::Style),
    /// The filter holds them back.
    Off,
}

/// Logs the access-log line of a served request.
///
/// Once [`init`] has set up plain text or JSON with a filter by target and
/// level, a line is written straight into the thread's batch, as the
/// formatter would write the event, without the event's dispatch through
/// the layers and its fields' visits (some 2,000 instructions per
/// request). Otherwise (colours, a filter with span or field conditions,
/// or no subscriber of billguard's) it is an event.
pub fn access(served: &Served<'_>) {
    match DIRECT.get() {
        Some(Direct::Write(style)) => {
            batch::write_access(|out| served.write(out, *style, SystemTime::now()));
        }
        Some(Direct::Off) => {}
        None => served.log_event(),
    }
}

/// Installs the global subscriber. Call once, first thing.
pub fn init(format: LogFormat, directive: &str) -> Result<(), FilterError> {
    let filter = parse_filter(directive)?;
    let colours = matches!(format, LogFormat::Text) && std::io::stderr().is_terminal();
    context::use_real_spans(colours);
    let output = match format {
        // Colours only for a person at a terminal: a log file or collector
        // gets plain text, and skipping the escape codes is much of the
        // cost of an access-log line.
        LogFormat::Text => fmt::layer()
            .event_format(access_line::Text::new())
            .with_ansi(colours)
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
    let direct = match &filter {
        Filter::Static(targets) if !colours => Some(
            if targets.would_enable(ACCESS_TARGET, &tracing::Level::INFO) {
                Direct::Write(match format {
                    LogFormat::Text => access_line::Style::Text,
                    LogFormat::Json => access_line::Style::Json,
                })
            } else {
                Direct::Off
            },
        ),
        _ => None,
    };
    let output = match filter {
        Filter::Static(targets) => output.with_filter(*targets).boxed(),
        Filter::Dynamic(env) => output.with_filter(*env).boxed(),
    };
    // A second init (tests) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(output)
        .with(logins)
        .try_init()
        .is_ok();
    if installed && let Some(direct) = direct {
        let _ = DIRECT.set(direct);
    }
    Ok(())
}

/// A parsed `--log` directive.
enum Filter {
    /// Levels by target only, the usual case: decided from each line's
    /// target and level alone, with nothing to track per span.
    Static(Box<filter::Targets>),
    /// With span or field conditions (`[request{id=...}]=debug`): the
    /// env-filter follows every span in and out, under a lock shared by
    /// all threads, so it is used only when the directive needs it.
    Dynamic(Box<EnvFilter>),
}

fn parse_filter(directive: &str) -> Result<Filter, FilterError> {
    // The env-filter's grammar is the contract and its errors the ones
    // reported; the cheaper filter takes over what it can express alike.
    let env = EnvFilter::builder()
        .parse(directive)
        .map_err(|e| FilterError {
            directive: directive.to_owned(),
            reason: e.to_string(),
        })?;
    let plain = !directive.trim().is_empty() && !directive.contains(['[', '{', ' ']);
    match directive.parse::<filter::Targets>() {
        Ok(targets) if plain => Ok(Filter::Static(Box::new(targets))),
        _ => Ok(Filter::Dynamic(Box::new(env))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

    use super::*;

    /// The (target, level) pairs a filter lets through, of a fixed set.
    fn passed<F>(filter: F) -> Vec<String>
    where
        F: tracing_subscriber::layer::Filter<tracing_subscriber::Registry> + Send + Sync + 'static,
    {
        struct Record(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> Layer<S> for Record {
            fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
                let m = event.metadata();
                let line = format!("{} {}", m.target(), m.level());
                self.0.lock().unwrap().push(line);
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber =
            tracing_subscriber::registry().with(Record(seen.clone()).with_filter(filter));
        tracing::subscriber::with_default(subscriber, || {
            macro_rules! each_level {
                ($target:literal) => {
                    tracing::trace!(target: $target, "x");
                    tracing::debug!(target: $target, "x");
                    tracing::info!(target: $target, "x");
                    tracing::warn!(target: $target, "x");
                    tracing::error!(target: $target, "x");
                };
            }
            each_level!("billguard::access");
            each_level!("billguard::auth");
            each_level!("billguard::server");
            each_level!("hyper::proto::h1");
            each_level!("other");
        });
        seen.lock().unwrap().clone()
    }

    #[test]
    fn a_target_level_directive_filters_alike_through_either_filter() {
        for directive in [
            "info",
            "WARN",
            "info,billguard::access=warn",
            "debug,hyper=off",
            "billguard=trace",
            "billguard::auth",
            "error,billguard=info,billguard::server=debug",
            "off",
        ] {
            let Ok(Filter::Static(targets)) = parse_filter(directive) else {
                panic!("{directive}: not taken as a static directive");
            };
            let env = EnvFilter::builder().parse(directive).unwrap();
            assert_eq!(passed(*targets), passed(env), "{directive}");
        }
        let Ok(Filter::Static(info)) = parse_filter("info,billguard::access=warn") else {
            unreachable!("checked above");
        };
        let passed = passed(*info);
        assert!(
            passed.contains(&"billguard::server INFO".to_owned()),
            "{passed:?}"
        );
        assert!(
            !passed.contains(&"billguard::server DEBUG".to_owned()),
            "{passed:?}"
        );
        assert!(
            !passed.contains(&"billguard::access INFO".to_owned()),
            "{passed:?}"
        );
    }

    #[test]
    fn span_and_field_conditions_keep_the_env_filter() {
        for directive in ["info,[request]=debug", "billguard[request{id=1}]=trace"] {
            assert!(
                matches!(parse_filter(directive), Ok(Filter::Dynamic(_))),
                "{directive}"
            );
        }
        assert!(parse_filter("info,billguard=loud").is_err());
    }
}
