//! `billguard demo`: the real proxy between the built-in demo provider and
//! the stand-in app, walked through with the test browser.

use billguard::demo::{self, Demo};
use reqwest::Method;

use crate::support::browser::{Browser, Navigation};
use crate::support::stack::{CALLBACK_PATH, trace_init};

#[tokio::test]
async fn demo_admin_signs_in_and_the_app_greets_them_with_their_role() {
    let demo = start().await;
    let browser = Browser::new();

    let nav = browser.navigate(&format!("{}/bills", demo.url())).await;
    let sign_in = &nav.last;
    assert_eq!(sign_in.status, 200);
    assert!(sign_in.url.as_str().starts_with(origin(demo.issuer())));
    assert!(
        sign_in.text().contains("for demos only"),
        "{}",
        sign_in.text()
    );

    let nav = choose(&browser, &nav, "ada").await;
    // provider (302) -> callback (302) -> the first page asked for
    assert_eq!(nav.hops[1].url.path(), CALLBACK_PATH);
    assert_eq!(nav.last.url.as_str(), format!("{}/bills", demo.url()));
    let page = nav.last.text();
    assert!(page.contains("Hello, ada!"), "{page}");
    assert!(
        page.contains(r#"<span class="role" id="role">admin</span>"#),
        "{page}"
    );
    assert!(page.contains("bill-tracker-admins,staff"), "{page}");

    let who = browser
        .fetch(&format!("{}/_billguard/whoami", demo.url()))
        .await;
    assert_eq!(who.status, 200);
    assert_eq!(who.json()["role"], "admin");
    demo.shutdown().await;
}

#[tokio::test]
async fn demo_plain_user_is_greeted_as_user_and_can_sign_out() {
    let demo = start().await;
    let browser = Browser::new();

    let nav = browser.navigate(&format!("{}/", demo.url())).await;
    let nav = choose(&browser, &nav, "bob").await;
    let page = nav.last.text();
    assert!(page.contains("Hello, bob!"), "{page}");
    assert!(page.contains(r#"id="role">user</span>"#), "{page}");

    let out = browser
        .navigate(&format!("{}/_billguard/sign_out", demo.url()))
        .await;
    assert!(out.last.url.as_str().starts_with(origin(demo.issuer())));
    assert!(out.last.text().contains("You are signed out"));
    let who = browser
        .fetch(&format!("{}/_billguard/whoami", demo.url()))
        .await;
    assert_eq!(who.status, 401);
    demo.shutdown().await;
}

#[tokio::test]
async fn demo_provider_authenticates_the_client_and_checks_the_request() {
    let demo = start().await;
    let browser = Browser::new();
    let token = format!("{}token/", demo.issuer().replace("bill-tracker/", ""));

    // No credentials, then a wrong secret: both refused before any code is looked at.
    let form = "grant_type=authorization_code&code=x&code_verifier=y";
    let header = ("content-type", "application/x-www-form-urlencoded");
    let none = browser.request(Method::POST, &token, &[header], form).await;
    assert_eq!(none.status, 401);
    let wrong = browser
        .request(
            Method::POST,
            &token,
            &[
                header,
                ("authorization", "Basic YmlsbGd1YXJkLWRlbW86d3Jvbmc="),
            ],
            form,
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_client");

    // An authorization request for another redirect URI or without PKCE gets no sign-in page.
    let authorize = format!("{}authorize/", demo.issuer().replace("bill-tracker/", ""));
    let evil = format!(
        "{authorize}?client_id={}&response_type=code&scope=openid&state=s\
         &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256\
         &redirect_uri=http%3A%2F%2Fevil.example%2Fcb",
        demo::CLIENT_ID
    );
    assert_eq!(browser.get(&evil).await.status, 400);
    let redirect = format!("{}{CALLBACK_PATH}", demo.url());
    let no_pkce = url::Url::parse_with_params(
        &authorize,
        [
            ("client_id", demo::CLIENT_ID),
            ("response_type", "code"),
            ("scope", "openid"),
            ("state", "s"),
            ("redirect_uri", redirect.as_str()),
        ],
    )
    .unwrap();
    assert_eq!(browser.get(no_pkce.as_str()).await.status, 400);
    demo.shutdown().await;
}

#[tokio::test]
async fn demo_refuses_to_listen_beyond_loopback() {
    trace_init();
    let error = demo::start("0.0.0.0:0".parse().unwrap())
        .await
        .err()
        .expect("a wildcard address is refused");
    assert!(error.is_usage());
    assert!(error.to_string().contains("loopback only"), "{error}");
}

async fn start() -> Demo {
    trace_init();
    let demo = demo::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("the demo starts");
    demo.proxy.wait_ready().await;
    demo
}

/// Submits the sign-in page's form for `user`, as clicking its button would.
async fn choose(browser: &Browser, sign_in: &Navigation, user: &str) -> Navigation {
    let page = sign_in.last.text();
    let marker = format!(r#"name="user" value="{user}""#);
    let form = page
        .split("<form ")
        .find(|form| form.contains(&marker))
        .unwrap_or_else(|| panic!("no sign-in form for {user}:\n{page}"));
    let action = attribute(form, "action").expect("the form has an action");
    let fields: Vec<(String, String)> = form
        .split("<input ")
        .skip(1)
        .filter_map(|input| Some((attribute(input, "name")?, attribute(input, "value")?)))
        .collect();
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let action = sign_in.last.url.join(&action).expect("a relative action");
    browser.submit(action.as_str(), &fields).await
}

/// The value of `name="..."` in a tag's text, HTML-unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(r#"{name}=""#))? + name.len() + 2;
    let end = start + tag[start..].find('"')?;
    Some(
        tag[start..end]
            .replace("&#x2f;", "/")
            .replace("&#47;", "/")
            .replace("&quot;", "\"")
            .replace("&#34;", "\"")
            .replace("&#39;", "'")
            .replace("&#x27;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// `http://127.0.0.1:<port>` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}
