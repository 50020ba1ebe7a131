//! HTML pages billguard shows to browser users, rendered with askama
//! templates from `templates/` (escaped by default): errors, signed out,
//! the sign-in page and the admin panel. Pages get a ready view; they
//! decide nothing.

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

/// What the sign-in page shows.
#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignIn<'a> {
    /// The provider's name; `None` when no provider is configured.
    pub provider: Option<&'a str>,
    /// Where the provider button leads.
    pub start: &'a str,
    /// Whether the username and password form is shown.
    pub local: bool,
    pub action: &'a str,
    pub csrf: &'a str,
    pub return_to: &'a str,
    pub error: Option<&'a str>,
}

/// The sign-in page.
pub fn sign_in(view: &SignIn<'_>) -> String {
    render(view)
}

/// What the admin panel shows.
#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPanel<'a> {
    pub admin: &'a str,
    pub provider: Option<&'a str>,
    pub local: bool,
    pub sessions: u64,
    pub reloads_applied: u64,
    pub reloads_rejected: u64,
    pub last_rejection: Option<&'a str>,
    pub settings: Vec<Setting<'a>>,
    /// The provider test's lines, after it was run.
    pub check: Option<Vec<CheckLine<'a>>>,
    pub notice: Option<&'a str>,
    pub csrf: &'a str,
    pub action: &'a str,
}

/// One effective setting; secret values arrive masked.
pub struct Setting<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub source: &'a str,
}

/// One line of the provider test.
pub struct CheckLine<'a> {
    pub status: &'a str,
    pub name: &'a str,
    pub detail: &'a str,
    pub fix: Option<&'a str>,
}

/// The admin panel.
pub fn admin(view: &AdminPanel<'_>) -> String {
    render(view)
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
