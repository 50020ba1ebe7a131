//! `billguard routes METHOD PATH`: what billguard would do with a request,
//! decided by the same code the server runs, in words for an operator.

use std::fmt;

use hyper::Method;

use super::{Decision, Normalized, PathError, Routes, normalize};

/// Paths under this prefix are billguard's own.
pub const OWN_PREFIX: &str = "/_billguard/";

/// The verdict for one request target.
pub struct Explanation<'a> {
    pub method: Method,
    pub target: String,
    pub verdict: Verdict<'a>,
}

pub enum Verdict<'a> {
    /// The path is refused with 400 before anything else.
    Refused(PathError),
    /// billguard serves it; rules do not apply.
    Own {
        normalized: Normalized<'static>,
        what: &'static str,
    },
    /// It goes to the app as the rules decide.
    App {
        normalized: Normalized<'static>,
        decision: Decision<'a>,
    },
}

/// Decides `method target` the way the request path does.
pub fn explain<'a>(
    routes: &'a Routes,
    callback_path: &str,
    method: Method,
    target: &str,
) -> Explanation<'a> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let verdict = match normalize(path).map(Normalized::into_owned) {
        Err(error) => Verdict::Refused(error),
        Ok(normalized) if normalized.decoded == callback_path => Verdict::Own {
            normalized,
            what: "the login callback (the path of oidc.redirect_uri)",
        },
        Ok(normalized) if normalized.decoded.starts_with(OWN_PREFIX) => Verdict::Own {
            normalized,
            what: "one of billguard's own endpoints",
        },
        Ok(normalized) => {
            let decision = routes.decide(&method, &normalized.decoded);
            Verdict::App {
                normalized,
                decision,
            }
        }
    };
    Explanation {
        method,
        target: target.to_owned(),
        verdict,
    }
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request:          {} {}", self.method, self.target)?;
        if let Some((_, query)) = self.target.split_once('?') {
            writeln!(
                f,
                "query:            {query} (never matched; forwarded as sent)"
            )?;
        }
        match &self.verdict {
            Verdict::Refused(error) => {
                writeln!(f, "normalized path:  (none)")?;
                writeln!(f, "action:           refuse with 400: the path has {error}")
            }
            Verdict::Own { normalized, what } => {
                writeln!(f, "normalized path:  {}", normalized.decoded)?;
                writeln!(f, "rule:             (not consulted)")?;
                writeln!(f, "action:           served by billguard: {what}")
            }
            Verdict::App {
                normalized,
                decision,
            } => {
                writeln!(f, "normalized path:  {}", normalized.decoded)?;
                writeln!(f, "forwarded path:   {}", normalized.encoded)?;
                match decision.rule {
                    Some((n, rule)) => writeln!(
                        f,
                        "rule:             #{n}: path = \"{}\", methods = {}, access = {}",
                        rule.pattern,
                        rule.methods_text(),
                        rule.access
                    )?,
                    None => writeln!(f, "rule:             none matched; the default applies")?,
                }
                writeln!(f, "access:           {}", decision.access)?;
                writeln!(f, "action:           {}", decision.access.action())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Access, Rule};

    #[test]
    fn the_explanation_names_the_rule_the_path_and_the_action() {
        let routes = Routes::new(vec![
            Rule::new("/api/health", Some(&["GET".to_owned()]), Access::Public).unwrap(),
            Rule::new("/admin(/.*)?", None, Access::Admin).unwrap(),
        ]);
        let cb = "/api/auth/oidc/callback";
        let text = explain(&routes, cb, Method::GET, "/static/%2e%2e/admin/x?a=1").to_string();
        assert!(text.contains("normalized path:  /admin/x"), "{text}");
        assert!(text.contains("#2: path = \"/admin(/.*)?\""), "{text}");
        assert!(text.contains("access:           admin"), "{text}");
        assert!(text.contains("query:            a=1"), "{text}");

        let text = explain(&routes, cb, Method::POST, "/api/health").to_string();
        assert!(text.contains("none matched"), "{text}");
        assert!(text.contains("access:           authenticated"), "{text}");

        let text = explain(&routes, cb, Method::GET, "/a%2Fb").to_string();
        assert!(text.contains("refuse with 400"), "{text}");

        let text = explain(&routes, cb, Method::GET, "//_billguard/whoami").to_string();
        assert!(text.contains("served by billguard"), "{text}");
    }
}
