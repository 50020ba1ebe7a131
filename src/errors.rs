//! Error text for logs and operator-facing messages.
//!
//! Library errors often say only the outer step ("error sending request"),
//! while the cause that tells an operator what to fix (refused connection,
//! certificate, issuer mismatch) sits further down the `source` chain.

/// The error and each of its causes, joined with `: `.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
