//! Which request a log line belongs to.
//!
//! Every line logged while a request is handled carries its id, written
//! exactly as a `request{id=…}` span would show it. Without colours (a log
//! file or a collector, the usual case) the id is kept in a task-local
//! value, which the formatter reads (see `access_line`): a tracing span
//! would cost every request a span created, entered and left at each
//! poll, and closed, which is more than the rest of the logging. With
//! colours (a person at a terminal) a real span is used, and the general
//! formatter paints it.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Instrument as _;

use crate::request_id::RequestId;

tokio::task_local! {
    static REQUEST: RequestId;
}

/// Set at start-up when lines are painted for a terminal.
static REAL_SPANS: AtomicBool = AtomicBool::new(false);

pub(super) fn use_real_spans(on: bool) {
    REAL_SPANS.store(on, Ordering::Relaxed);
}

/// Runs `fut` as the request `id`: the lines it logs carry the id.
///
/// One wrapper type either way (a disabled span costs a branch per poll),
/// so the request's future is stored once, not once per kind of wrapper.
pub fn in_request<F: Future>(id: &RequestId, fut: F) -> impl Future<Output = F::Output> {
    let span = if REAL_SPANS.load(Ordering::Relaxed) {
        tracing::info_span!("request", id = %id)
    } else {
        tracing::Span::none()
    };
    REQUEST.scope(id.clone(), fut.instrument(span))
}

/// `f` of the id of the request this task is handling, if it is handling
/// one.
pub(super) fn current<R>(f: impl FnOnce(&str) -> R) -> Option<R> {
    REQUEST.try_with(|id| f(id.as_str())).ok()
}

/// Runs `f` as the request `id` outside of any future (tests).
#[cfg(test)]
pub(super) fn sync_in_request<R>(id: &str, f: impl FnOnce() -> R) -> R {
    let id = RequestId(hyper::header::HeaderValue::from_str(id).expect("a valid id"));
    REQUEST.sync_scope(id, f)
}
