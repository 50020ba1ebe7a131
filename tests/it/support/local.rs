//! Local login for the tests: a users file with cheap argon2id hashes, the
//! `[local_login]` table, and filling in the sign-in form like a user.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use argon2::password_hash::PasswordHasher as _;
use argon2::{Algorithm, Argon2, Params, Version};

use super::browser::{Browser, Navigation};
use super::stack::Stack;

pub const SIGN_IN: &str = "/_billguard/sign_in";

/// One entry of the users file; `password: None` leaves out `password_hash`.
pub struct LocalUser<'a> {
    pub username: &'a str,
    pub password: Option<&'a str>,
    pub role: &'a str,
    pub email: Option<&'a str>,
}

/// Writes a users file. Hashes use the smallest argon2id costs, so tests stay fast;
/// the format is what `billguard hash-password` prints.
pub fn users_file(users: &[LocalUser<'_>]) -> tempfile::NamedTempFile {
    let mut text = String::new();
    for user in users {
        text.push_str(&format!(
            "[[users]]\nusername = \"{}\"\nrole = \"{}\"\n",
            user.username, user.role
        ));
        if let Some(email) = user.email {
            text.push_str(&format!("email = \"{email}\"\n"));
        }
        if let Some(password) = user.password {
            text.push_str(&format!("password_hash = \"{}\"\n", cheap_hash(password)));
        }
        text.push('\n');
    }
    let mut file = tempfile::NamedTempFile::new().expect("temp users file");
    file.write_all(text.as_bytes()).expect("write users file");
    file
}

pub fn cheap_hash(password: &str) -> String {
    let params = Params::new(8, 1, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("hashing works")
        .to_string()
}

/// The `[local_login]` table.
pub fn local_table(users: &Path, enabled: bool) -> String {
    format!(
        "\n[local_login]\nenabled = {enabled}\nusers_file = \"{}\"\n",
        users.display()
    )
}

/// The value of the hidden `name` field in a form.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

/// Opens the sign-in page (for `rd`) and submits the form.
pub async fn sign_in(
    stack: &Stack,
    browser: &Browser,
    username: &str,
    password: &str,
    rd: &str,
) -> Navigation {
    let page = browser
        .get(&stack.url(&format!("{SIGN_IN}?rd={}", urlencode(rd))))
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let csrf = hidden_field(&page.text(), "csrf").expect("the page has a CSRF token");
    browser
        .submit(
            &stack.url(SIGN_IN),
            &[
                ("username", username),
                ("password", password),
                ("csrf", &csrf),
                ("rd", rd),
            ],
        )
        .await
}

pub fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Polls `probe` until it holds, for at most ten seconds: configuration
/// reloads are noticed by polling the file, so the test waits for their
/// visible effect rather than for a fixed time.
pub async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if probe().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
