//! HTML pages billguard shows to browser users, rendered with askama
//! templates from `templates/` (escaped by default). Pages get a ready view;
//! they decide nothing.

use askama::Template;

use crate::respond::Failure;

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    detail: &'a str,
    retry: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "signed_out.html")]
struct SignedOutPage<'a> {
    sign_in: &'a str,
}

/// The page for a failed request.
pub fn error(failure: &Failure) -> String {
    let page = ErrorPage {
        status: failure.status.as_u16(),
        title: failure.title,
        detail: &failure.detail,
        retry: failure.retry.as_deref(),
    };
    render(&page)
}

/// The page after sign-out when the provider has no end-session endpoint.
pub fn signed_out(sign_in: &str) -> String {
    render(&SignedOutPage { sign_in })
}

fn render(page: &impl Template) -> String {
    // Rendering can only fail on a formatter error for these plain views.
    page.render().unwrap_or_else(|_| {
        "<!doctype html><title>billguard</title><p>Something went wrong.</p>".into()
    })
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::*;

    #[test]
    fn error_page_escapes_what_it_shows() {
        let f = Failure::bad_request("<script>alert(1)</script>")
            .with_retry("/_billguard/start?rd=%2F\"x");
        let html = error(&f);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("alert(1)"));
        assert!(html.contains("400"));
        assert!(!html.contains("\"x"));
        assert_eq!(f.status, StatusCode::BAD_REQUEST);
    }
}
