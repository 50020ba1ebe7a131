//! Route rules: which paths of the app are public, which need a signed-in
//! user, and which only an admin may reach.
//!
//! Rules come from `[[routes]]` tables, in order. Each has a regular
//! expression that must match the whole normalized path (see [`path`]),
//! optional methods, and an access level. For a request:
//! 1. the path is normalized; an ambiguous spelling is a 400;
//! 2. the first rule whose pattern matches the whole path, and whose
//!    methods (if any) include the method, decides;
//! 3. no rule matches: `authenticated`.
//!
//! Patterns are case-insensitive (many app routers ignore case, so
//! `/ADMIN/users` can be the app's `/admin/users`); `(?-i)` at the start of
//! a pattern makes it case-sensitive. A rule listing `GET` also covers
//! `HEAD`. Rules apply only to what goes to the app: the callback and
//! `/_billguard/` paths are billguard's own and are decided before them.

use std::fmt;

use hyper::Method;
use regex::{Regex, RegexBuilder};

pub mod explain;
pub mod path;

pub use explain::{Explanation, explain};
pub use path::{Normalized, PathError, normalize};

/// What a rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Forwarded without a session; identity headers are stripped and none
    /// are added.
    Public,
    /// Needs a session or a bearer token: the default.
    Authenticated,
    /// Needs the admin role; anyone else gets 403.
    Admin,
}

/// One `[[routes]]` table, compiled.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The pattern as the operator wrote it.
    pub pattern: String,
    regex: Regex,
    /// `None` matches every method.
    pub methods: Option<Vec<Method>>,
    pub access: Access,
}

/// The ordered rules.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    rules: Vec<Rule>,
}

/// The outcome for one request.
#[derive(Clone, Copy, Debug)]
pub struct Decision<'a> {
    /// The matching rule and its position (counted from 1), if any.
    pub rule: Option<(usize, &'a Rule)>,
    pub access: Access,
}

/// Why a rule cannot be used; the message says how to write it instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "`{pattern}` is not a valid regular expression ({reason}); write a pattern for the \
         whole path such as `/static/.*` or `/api/health` (billguard anchors it at both ends; \
         escape a literal dot as `\\.`)"
    )]
    Invalid { pattern: String, reason: String },
    #[error(
        "`{pattern}` would make {path} public; a public rule must not match `/`, the login \
         callback or anything under /_billguard/. Write a narrower pattern such as \
         `/static/.*`, `/api/health` or `/calendar/[^/]+\\.ics`"
    )]
    TooBroad { pattern: String, path: String },
    #[error("`{0}` is not an HTTP method; allowed: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]
    Method(String),
    #[error("`{0}` is not an access level; allowed: public, authenticated, admin")]
    Access(String),
}

/// Paths no public rule may match, besides the callback.
const NEVER_PUBLIC: &[&str] = &[
    "/",
    "/_billguard/",
    "/_billguard/whoami",
    "/_billguard/admin",
    "/_billguard/sign_in",
    "/_billguard/start",
    "/_billguard/x",
];

// === impl Access ===

impl Access {
    pub fn parse(text: &str) -> Result<Access, RuleError> {
        match text {
            "public" => Ok(Access::Public),
            "authenticated" => Ok(Access::Authenticated),
            "admin" => Ok(Access::Admin),
            other => Err(RuleError::Access(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Authenticated => "authenticated",
            Access::Admin => "admin",
        }
    }

    /// What billguard does with a request at this level, in words.
    pub fn action(self) -> &'static str {
        match self {
            Access::Public => "forward without a session; identity headers stripped, none added",
            Access::Authenticated => {
                "forward with identity headers once signed in (session or bearer token); \
                 without credentials: browsers are sent to sign in, scripts get 401"
            }
            Access::Admin => {
                "forward only for the admin role; others signed in get 403, \
                 without credentials as for authenticated"
            }
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Rule ===

impl Rule {
    /// Compiles a rule. `methods` are HTTP method names in any case.
    pub fn new(
        pattern: &str,
        methods: Option<&[String]>,
        access: Access,
    ) -> Result<Rule, RuleError> {
        let invalid = |e: regex::Error| RuleError::Invalid {
            pattern: pattern.to_owned(),
            reason: one_line(&e.to_string()),
        };
        // Compiled alone first, so an error quotes the pattern as written.
        build(pattern).map_err(invalid)?;
        let regex = build(&format!("^(?:{pattern})$")).map_err(invalid)?;
        let methods = match methods {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|name| parse_method(name))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Rule {
            pattern: pattern.to_owned(),
            regex,
            methods,
            access,
        })
    }

    /// Refuses a public rule that would open `/`, the callback or one of
    /// billguard's own paths.
    pub fn check_public(&self, callback_path: &str) -> Result<(), RuleError> {
        if self.access != Access::Public {
            return Ok(());
        }
        let probes = NEVER_PUBLIC.iter().copied().chain([callback_path]);
        for probe in probes {
            if self.regex.is_match(probe) {
                return Err(RuleError::TooBroad {
                    pattern: self.pattern.clone(),
                    path: format!("`{probe}`"),
                });
            }
        }
        Ok(())
    }

    pub fn matches(&self, method: &Method, path: &str) -> bool {
        let method_ok = self.methods.as_ref().is_none_or(|methods| {
            methods
                .iter()
                .any(|m| m == method || (*m == Method::GET && *method == Method::HEAD))
        });
        method_ok && self.regex.is_match(path)
    }

    /// The methods as written in the configuration, or `*`.
    pub fn methods_text(&self) -> String {
        match &self.methods {
            None => "*".to_owned(),
            Some(methods) => methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

// === impl Routes ===

impl Routes {
    pub fn new(rules: Vec<Rule>) -> Self {
        Routes { rules }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first matching rule decides; no match is `authenticated`.
    pub fn decide(&self, method: &Method, normalized: &str) -> Decision<'_> {
        let found = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(method, normalized));
        match found {
            Some((i, rule)) => Decision {
                rule: Some((i + 1, rule)),
                access: rule.access,
            },
            None => Decision {
                rule: None,
                access: Access::Authenticated,
            },
        }
    }
}

fn build(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
}

fn parse_method(name: &str) -> Result<Method, RuleError> {
    let upper = name.trim().to_ascii_uppercase();
    let valid = !upper.is_empty() && upper.bytes().all(|b| b.is_ascii_alphabetic());
    match Method::from_bytes(upper.as_bytes()) {
        Ok(method) if valid => Ok(method),
        _ => Err(RuleError::Method(name.to_owned())),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLBACK: &str = "/api/auth/oidc/callback";

    /// The example rules of the README, for BillTracker.
    fn billtracker() -> Routes {
        let get = vec!["GET".to_owned()];
        Routes::new(vec![
            Rule::new("/api/health", Some(&get), Access::Public).unwrap(),
            Rule::new(
                r"/(assets|static)/.+\.(js|css|png|svg|ico|woff2)",
                Some(&get),
                Access::Public,
            )
            .unwrap(),
            Rule::new(r"/calendar/[A-Za-z0-9_-]+\.ics", Some(&get), Access::Public).unwrap(),
            Rule::new("/admin(/.*)?", None, Access::Admin).unwrap(),
            Rule::new("/api/admin/.*", None, Access::Admin).unwrap(),
        ])
    }

    /// What a raw request path comes to: a 400, or the access that applies.
    fn outcome(routes: &Routes, method: &Method, raw: &str) -> Result<Access, PathError> {
        let (path, _query) = raw.split_once('?').unwrap_or((raw, ""));
        let normalized = normalize(path)?;
        Ok(routes.decide(method, &normalized.decoded).access)
    }

    #[test]
    fn tricky_paths_against_public_and_admin_rules() {
        use Access::*;
        let routes = billtracker();
        let get = Method::GET;
        let bad = |e| Err::<Access, _>(e);
        let cases: &[(&str, Result<Access, PathError>)] = &[
            // the rules as meant
            ("/api/health", Ok(Public)),
            ("/static/app.js", Ok(Public)),
            ("/calendar/abc-123.ics", Ok(Public)),
            ("/admin", Ok(Admin)),
            ("/admin/users", Ok(Admin)),
            ("/bills", Ok(Authenticated)),
            ("/", Ok(Authenticated)),
            // anchored at both ends: no prefix or suffix tricks
            ("/api/healthz", Ok(Authenticated)),
            ("/api/health/../../admin", Ok(Admin)),
            ("/x/api/health", Ok(Authenticated)),
            ("/static/app.js/admin", Ok(Authenticated)),
            ("/administrator", Ok(Authenticated)),
            // dot segments, raw and encoded, resolve before matching
            ("/static/../admin/users", Ok(Admin)),
            ("/static/%2e%2e/admin/users", Ok(Admin)),
            ("/static/%2E%2E/admin", Ok(Admin)),
            ("/static/.%2e/admin", Ok(Admin)),
            ("/api/health/..", Ok(Authenticated)),
            ("/calendar/../admin", Ok(Admin)),
            ("/static/./app.js", Ok(Public)),
            ("/static/x/../app.js", Ok(Public)),
            // encoded slashes and backslashes are refused
            ("/static/..%2Fadmin", bad(PathError::EncodedSlash)),
            ("/static%2F..%2Fadmin", bad(PathError::EncodedSlash)),
            ("/api%2fhealth", bad(PathError::EncodedSlash)),
            ("/static/..\\admin", bad(PathError::Backslash)),
            ("/static/..%5cadmin", bad(PathError::Backslash)),
            // double encoding and servlet path parameters are refused
            ("/static/%252e%252e/admin", bad(PathError::DoubleEncoded)),
            ("/static/..;/admin", bad(PathError::Semicolon)),
            ("/api/health;/../admin", bad(PathError::Semicolon)),
            // duplicate slashes collapse
            ("//admin", Ok(Admin)),
            ("/admin//users", Ok(Admin)),
            ("//api//health", Ok(Public)),
            ("///static///app.js", Ok(Public)),
            // trailing dots and slashes
            ("/admin.", bad(PathError::TrailingDot)),
            ("/admin./users", bad(PathError::TrailingDot)),
            ("/api/health.", bad(PathError::TrailingDot)),
            ("/admin/.", Ok(Admin)),
            ("/api/health/", Ok(Authenticated)),
            ("/api/health/.", Ok(Authenticated)),
            // case: a case-insensitive app router must not dodge an admin rule
            ("/ADMIN/users", Ok(Admin)),
            ("/Admin", Ok(Admin)),
            ("/API/HEALTH", Ok(Public)),
            // encoded letters are the letters
            ("/%61dmin/users", Ok(Admin)),
            ("/api/%68ealth", Ok(Public)),
            // the query never takes part, however path-like it looks
            ("/api/health?/../../admin", Ok(Public)),
            ("/static/app.js?x=/admin", Ok(Public)),
            ("/admin?/api/health", Ok(Admin)),
            ("/bills?next=/api/health", Ok(Authenticated)),
            ("/api/health%3F/../admin", Ok(Authenticated)),
        ];
        for (raw, expected) in cases {
            assert_eq!(&outcome(&routes, &get, raw), expected, "GET {raw}");
        }
    }

    #[test]
    fn methods_limit_a_rule_and_get_covers_head() {
        let routes = billtracker();
        let decide = |m: Method| routes.decide(&m, "/api/health").access;
        assert_eq!(decide(Method::GET), Access::Public);
        assert_eq!(decide(Method::HEAD), Access::Public);
        assert_eq!(decide(Method::POST), Access::Authenticated);
        assert_eq!(decide(Method::DELETE), Access::Authenticated);
        // Admin rules without methods hold for every method.
        assert_eq!(
            routes.decide(&Method::DELETE, "/admin/users/1").access,
            Access::Admin
        );
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let routes = Routes::new(vec![
            Rule::new("/static/private/.*", None, Access::Authenticated).unwrap(),
            Rule::new("/static/.*", None, Access::Public).unwrap(),
        ]);
        let d = routes.decide(&Method::GET, "/static/private/x.pdf");
        assert_eq!(d.access, Access::Authenticated);
        assert_eq!(d.rule.map(|(i, _)| i), Some(1));
        let d = routes.decide(&Method::GET, "/static/logo.png");
        assert_eq!(d.access, Access::Public);
        assert_eq!(d.rule.map(|(i, _)| i), Some(2));
        assert!(routes.decide(&Method::GET, "/bills").rule.is_none());
    }

    #[test]
    fn a_case_sensitive_pattern_can_be_asked_for() {
        let rule = Rule::new("(?-i)/Feed", None, Access::Public).unwrap();
        assert!(rule.matches(&Method::GET, "/Feed"));
        assert!(!rule.matches(&Method::GET, "/feed"));
    }

    #[test]
    fn public_rules_that_open_billguards_paths_or_the_root_are_refused() {
        for pattern in [
            ".*",
            "/.*",
            "/",
            "/?",
            "/_billguard/.*",
            "/_billguard/whoami",
            "/api/auth/.*",
            "/api/.*",
            "/[a-z_]*/.*",
        ] {
            let rule = Rule::new(pattern, None, Access::Public).unwrap();
            let err = rule.check_public(CALLBACK).unwrap_err();
            assert!(
                matches!(err, RuleError::TooBroad { .. }),
                "{pattern}: {err}"
            );
            assert!(err.to_string().contains("narrower pattern"), "{err}");
        }
        // The same patterns are fine for admin or authenticated rules.
        let admin = Rule::new("/.*", None, Access::Admin).unwrap();
        assert!(admin.check_public(CALLBACK).is_ok());
        let narrow = Rule::new("/api/health", None, Access::Public).unwrap();
        assert!(narrow.check_public(CALLBACK).is_ok());
    }

    #[test]
    fn patterns_that_do_not_compile_say_how_to_write_one() {
        let err = Rule::new("/static/(.*", None, Access::Public).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not a valid regular expression"), "{text}");
        assert!(text.contains("/static/.*"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn methods_and_access_are_checked() {
        assert_eq!(
            Rule::new("/x", Some(&["get".to_owned()]), Access::Public)
                .unwrap()
                .methods_text(),
            "GET"
        );
        assert!(matches!(
            Rule::new("/x", Some(&["GE T".to_owned()]), Access::Public),
            Err(RuleError::Method(_))
        ));
        assert_eq!(Access::parse("admin"), Ok(Access::Admin));
        assert!(matches!(Access::parse("Admin"), Err(RuleError::Access(_))));
    }
}
