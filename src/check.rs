//! The provider test, as data: `billguard check` prints it, the admin panel
//! shows it. Each check is one [`Outcome`] with a status, what was found,
//! and, when it did not pass, the fix in words an operator can act on.
//!
//! The checks, in order: the provider settings are complete; the redirect
//! URI is one billguard can serve; discovery answers; its issuer equals
//! `oidc.issuer_url` exactly (OIDC Discovery §4.3, with a plain word when
//! they differ only by a trailing slash); the JWKS has a key that can
//! verify ID tokens under `oidc.id_token_algs`; the provider supports the
//! token endpoint auth method and the scopes; the admin group can be
//! mapped; and the provider accepts the client credentials, found without
//! any user by sending a made-up code to the token endpoint (see
//! [`Provider::probe_credentials`]). Checks that need the discovery
//! document are left out when it could not be fetched.

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use url::Url;

use crate::config::{self, TokenAuthMethod};
use crate::errors::chain;
use crate::oidc::{self, Probe, Provider};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One line of the provider test.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to change, when the check did not pass.
    pub fix: Option<String>,
}

/// The whole provider test.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

/// The callback must not shadow billguard's own paths or the app's home.
const OWN_PREFIX: &str = "/_billguard/";

// === impl Report ===

impl Report {
    pub fn failed(&self) -> usize {
        self.count(Status::Fail)
    }

    pub fn warned(&self) -> usize {
        self.count(Status::Warn)
    }

    /// Whether the configuration itself is what failed (no provider set up).
    pub fn is_config_error(&self) -> bool {
        self.outcomes
            .first()
            .is_some_and(|o| o.name == "configuration" && o.status == Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.outcomes.iter().filter(|o| o.status == status).count()
    }
}

/// Runs every check against the provider `oidc` describes.
pub async fn run(oidc: Option<&config::Oidc>) -> Report {
    let mut outcomes = Vec::new();
    let Some(cfg) = oidc else {
        outcomes.push(fail(
            "configuration",
            "no provider is configured: oidc.issuer_url, oidc.client_id, oidc.client_secret \
             and oidc.redirect_uri are unset (local login only)",
            "set all four under [oidc] in the config file, or as OIDC_ISSUER_URL, \
             OIDC_CLIENT_ID, OIDC_CLIENT_SECRET and OIDC_REDIRECT_URI",
        ));
        return Report { outcomes };
    };
    outcomes.push(pass(
        "configuration",
        format!(
            "issuer {}, client `{}`, client secret set, auth method {}",
            cfg.issuer_url,
            cfg.client_id,
            method_name(cfg.token_auth_method)
        ),
    ));
    outcomes.push(redirect_uri(cfg));

    let provider = match Provider::new(cfg.clone()) {
        Ok(p) => p,
        Err(error) => {
            outcomes.push(fail("discovery", error.to_string(), "report this as a bug"));
            return Report { outcomes };
        }
    };
    let meta = match discovery(&provider).await {
        Ok((meta, found)) => {
            outcomes.push(found);
            meta
        }
        Err(failed) => {
            outcomes.push(failed);
            return Report { outcomes };
        }
    };

    outcomes.push(issuer(cfg, &meta));
    outcomes.push(jwks(&provider, cfg, &meta).await);
    outcomes.push(auth_method(cfg, &meta));
    outcomes.push(scopes(cfg, &meta));
    outcomes.push(groups(cfg, &meta));
    outcomes.push(credentials(&provider, cfg, &meta).await);
    Report { outcomes }
}

/// Whether the app can be reached around billguard: its port tried on this
/// host's own non-loopback addresses (see `bypass`).
pub async fn bypass(upstream: &Url) -> Outcome {
    match crate::bypass::check(upstream).await {
        crate::bypass::Finding::NotApplicable => pass(
            "bypass",
            format!("the app ({upstream}) is not on loopback; nothing to check from here"),
        ),
        crate::bypass::Finding::Closed(addrs) => pass(
            "bypass",
            format!(
                "the app answers on loopback only ({} other address(es) of this host tried)",
                addrs.len()
            ),
        ),
        crate::bypass::Finding::Exposed(addrs) => {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            fail(
                "bypass",
                format!(
                    "the app also answers on {}, so it can be reached around billguard",
                    addrs.join(", ")
                ),
                "bind the app to 127.0.0.1 only (its listen or host setting, e.g. HOST=127.0.0.1)",
            )
        }
    }
}

fn redirect_uri(cfg: &config::Oidc) -> Outcome {
    let uri = &cfg.redirect_uri;
    let path = uri.path();
    if path == "/" || path.starts_with(OWN_PREFIX) {
        return fail(
            "redirect_uri",
            format!("{uri} has the path {path}, which billguard cannot use for the callback"),
            "use a path of its own, such as https://bills.example.com/api/auth/oidc/callback, \
             and register exactly that URI at the provider",
        );
    }
    let https = uri.scheme() == "https";
    let mut detail = format!(
        "{uri}: absolute, {}, and its path {path} is served by billguard's callback",
        if https {
            "https"
        } else {
            "plain http on loopback"
        }
    );
    detail.push_str("; it must be registered at the provider exactly like this");
    pass("redirect_uri", detail)
}

async fn discovery(provider: &Provider) -> Result<(Value, Outcome), Outcome> {
    let url = oidc::discovery_url(&provider.config().issuer_url);
    let issuer_fix = "set oidc.issuer_url to the issuer exactly as the provider states it \
                      (Authentik: the provider's \"OpenID Configuration Issuer\", \
                      https://auth.example.com/application/o/<slug>/)";
    let response = match provider.http().get(&url).send().await {
        Ok(r) => r,
        Err(error) => {
            return Err(fail(
                "discovery",
                format!("cannot reach {url}: {}", chain(&error)),
                "check the host and port in oidc.issuer_url, and that billguard can reach the \
                 provider from where it runs (DNS, firewall, proxy)",
            ));
        }
    };
    let status = response.status();
    if status.is_redirection() {
        let to = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        return Err(fail(
            "discovery",
            format!("{url} redirects ({status}) to {to}; billguard does not follow redirects"),
            issuer_fix,
        ));
    }
    if !status.is_success() {
        return Err(fail(
            "discovery",
            format!("{url} answered {status}"),
            issuer_fix,
        ));
    }
    let body = response.bytes().await.unwrap_or_default();
    let meta: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(fail(
                "discovery",
                format!("{url} did not answer with a JSON object"),
                issuer_fix,
            ));
        }
    };
    Ok((meta, pass("discovery", format!("{url} answered"))))
}

fn issuer(cfg: &config::Oidc, meta: &Value) -> Outcome {
    let configured = cfg.issuer_url.as_str();
    let Some(stated) = meta["issuer"].as_str() else {
        return fail(
            "issuer",
            "the discovery document has no issuer",
            "the URL does not serve OpenID provider metadata; check oidc.issuer_url",
        );
    };
    if stated == configured {
        return pass(
            "issuer",
            format!("the provider states {stated}, as configured"),
        );
    }
    let slash_only = stated.trim_end_matches('/') == configured.trim_end_matches('/');
    let detail = if slash_only {
        format!(
            "the provider states {stated} but oidc.issuer_url is {configured}: they differ \
             only by a trailing slash, and issuers must match exactly, so every login would fail"
        )
    } else {
        format!("the provider states {stated} but oidc.issuer_url is {configured}")
    };
    fail(
        "issuer",
        detail,
        format!("set oidc.issuer_url = \"{stated}\""),
    )
}

async fn jwks(provider: &Provider, cfg: &config::Oidc, meta: &Value) -> Outcome {
    let allowed = &cfg.id_token_algs;
    let offered: Vec<&str> = meta["id_token_signing_alg_values_supported"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let usable: Vec<&str> = offered
        .iter()
        .copied()
        .filter(|a| allowed.iter().any(|x| x == a))
        .collect();
    if !offered.is_empty() && usable.is_empty() {
        let hs_only = offered.iter().all(|a| a.starts_with("HS"));
        let fix = if hs_only {
            "the provider has no signing key and signs with the client secret: select a signing \
             key at the provider (Authentik: the provider's \"Signing Key\"), or add \"HS256\" \
             to oidc.id_token_algs"
                .to_owned()
        } else {
            format!(
                "add one of {} to oidc.id_token_algs, or change the provider's signing key",
                offered.join(", ")
            )
        };
        return fail(
            "jwks",
            format!(
                "the provider signs ID tokens with {}, none of which oidc.id_token_algs allows",
                offered.join(", ")
            ),
            fix,
        );
    }
    if !usable.is_empty() && usable.iter().all(|a| a.starts_with("HS")) {
        return pass(
            "jwks",
            "ID tokens are signed with the client secret (HS*), which needs no keys",
        );
    }

    let Some(uri) = meta["jwks_uri"].as_str().and_then(|u| Url::parse(u).ok()) else {
        return fail(
            "jwks",
            "the discovery document has no valid jwks_uri",
            "the provider must publish its signing keys; check its configuration",
        );
    };
    let keys = match provider.http().get(uri.clone()).send().await {
        Ok(r) if r.status().is_success() => r
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok()),
        Ok(r) => {
            return fail(
                "jwks",
                format!("{uri} answered {}", r.status()),
                "the provider's key set must be reachable; check the provider",
            );
        }
        Err(error) => {
            return fail(
                "jwks",
                format!("cannot fetch {uri}: {}", chain(&error)),
                "billguard must reach the provider's jwks_uri; check DNS, firewall or proxy",
            );
        }
    };
    let keys: Vec<Value> = keys
        .and_then(|k| k["keys"].as_array().cloned())
        .unwrap_or_default();
    let fits = |key: &Value| {
        let for_signing = key["use"].as_str().is_none_or(|u| u == "sig");
        let alg_ok = key["alg"]
            .as_str()
            .is_none_or(|a| allowed.iter().any(|x| x == a));
        let family = match key["kty"].as_str() {
            Some("RSA") => ["RS", "PS"].as_slice(),
            Some("EC") => ["ES"].as_slice(),
            Some("OKP") => ["EdDSA"].as_slice(),
            _ => [].as_slice(),
        };
        let kind_ok = allowed
            .iter()
            .any(|a| family.iter().any(|f| a.starts_with(f)));
        for_signing && alg_ok && kind_ok
    };
    let good = keys.iter().filter(|k| fits(k)).count();
    if good == 0 {
        return fail(
            "jwks",
            format!(
                "{uri} has {} key(s), none usable to verify ID tokens with {}",
                keys.len(),
                allowed.join(", ")
            ),
            "select a signing key at the provider (Authentik: the provider's \"Signing Key\"), \
             or allow its algorithm in oidc.id_token_algs",
        );
    }
    pass(
        "jwks",
        format!("{uri} has {good} key(s) usable to verify ID tokens"),
    )
}

fn auth_method(cfg: &config::Oidc, meta: &Value) -> Outcome {
    let wanted = method_name(cfg.token_auth_method);
    // OIDC Discovery §3: when absent, the default is client_secret_basic.
    let supported: Vec<&str> = match meta["token_endpoint_auth_methods_supported"].as_array() {
        Some(list) => list.iter().filter_map(Value::as_str).collect(),
        None => vec!["client_secret_basic"],
    };
    if supported.contains(&wanted) {
        return pass("auth_method", format!("the provider supports {wanted}"));
    }
    let usable: Vec<&str> = supported
        .iter()
        .copied()
        .filter(|m| matches!(*m, "client_secret_basic" | "client_secret_post"))
        .collect();
    let fix = match usable.first() {
        Some(m) => format!("set oidc.token_auth_method = \"{m}\""),
        None => "the provider offers no client-secret method billguard supports \
                 (client_secret_basic, client_secret_post); change the client at the provider"
            .to_owned(),
    };
    fail(
        "auth_method",
        format!(
            "oidc.token_auth_method is {wanted}, but the provider supports only {}",
            supported.join(", ")
        ),
        fix,
    )
}

fn scopes(cfg: &config::Oidc, meta: &Value) -> Outcome {
    let Some(list) = meta["scopes_supported"].as_array() else {
        return warn(
            "scopes",
            "the provider does not list its scopes, so they cannot be checked",
            "nothing to change if logins work; otherwise check oidc.scopes against the provider",
        );
    };
    let offered: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    let missing: Vec<&str> = cfg
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| !offered.contains(s))
        .collect();
    if missing.is_empty() {
        return pass(
            "scopes",
            format!("the provider offers {}", cfg.scopes.join(" ")),
        );
    }
    fail(
        "scopes",
        format!(
            "the provider does not offer {} (it offers {})",
            missing.join(", "),
            offered.join(" ")
        ),
        format!(
            "remove {} from oidc.scopes, or add the scope mapping at the provider",
            missing.join(", ")
        ),
    )
}

fn groups(cfg: &config::Oidc, meta: &Value) -> Outcome {
    let Some(admin) = &cfg.admin_group else {
        return warn(
            "admin_group",
            "oidc.admin_group is not set, so nobody who signs in through the provider is admin",
            "set oidc.admin_group to the provider group whose members are admins",
        );
    };
    let claim = &cfg.groups_claim;
    let scope = cfg.scopes.iter().any(|s| s == "groups");
    let listed = meta["claims_supported"]
        .as_array()
        .is_some_and(|c| c.iter().any(|v| v.as_str() == Some(claim)));
    if scope || listed {
        return pass(
            "admin_group",
            format!(
                "members of `{admin}` become admin; the `{claim}` claim is {}",
                if listed {
                    "listed by the provider"
                } else {
                    "requested with the groups scope"
                }
            ),
        );
    }
    warn(
        "admin_group",
        format!(
            "oidc.admin_group is `{admin}`, but no `groups` scope is requested and the \
             provider does not list a `{claim}` claim, so admins may not be recognised"
        ),
        "add \"groups\" to oidc.scopes if the provider has that scope (Authentik sends groups \
         with \"profile\"), then check with /_billguard/whoami after signing in",
    )
}

async fn credentials(provider: &Provider, cfg: &config::Oidc, meta: &Value) -> Outcome {
    let Some(token_url) = meta["token_endpoint"]
        .as_str()
        .and_then(|u| Url::parse(u).ok())
    else {
        return fail(
            "credentials",
            "the discovery document has no valid token_endpoint",
            "the provider must offer the authorization code flow; check its configuration",
        );
    };
    let method = method_name(cfg.token_auth_method);
    match provider.probe_credentials(&token_url).await {
        Probe::Accepted => pass(
            "credentials",
            format!(
                "the token endpoint accepted client `{}` ({method}) and refused a made-up code \
                 with invalid_grant, as it should",
                cfg.client_id
            ),
        ),
        Probe::Rejected(detail) => fail(
            "credentials",
            format!(
                "the token endpoint refused client `{}` with {method}: {detail}",
                cfg.client_id
            ),
            "copy the client ID and secret again from the provider (Authentik: the \
             application's provider, \"Client ID\" and \"Client Secret\"), and check that \
             oidc.token_auth_method is a method the client allows",
        ),
        Probe::Unclear(detail) => warn(
            "credentials",
            format!(
                "the token endpoint's answer does not tell whether it accepts the client: {detail}"
            ),
            "sign in once through the provider to confirm; the log on billguard::auth names \
             any failure",
        ),
    }
}

fn method_name(method: TokenAuthMethod) -> &'static str {
    match method {
        TokenAuthMethod::ClientSecretBasic => "client_secret_basic",
        TokenAuthMethod::ClientSecretPost => "client_secret_post",
    }
}

fn pass(name: &'static str, detail: impl Into<String>) -> Outcome {
    Outcome {
        name,
        status: Status::Pass,
        detail: detail.into(),
        fix: None,
    }
}

fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome {
        name,
        status: Status::Warn,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome {
        name,
        status: Status::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

// === impl Outcome ===

impl fmt::Display for Outcome {
    /// `FAIL issuer: what was found; fix: what to change`, on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Pass => "pass",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        write!(f, "{mark}  {:<13} {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}
