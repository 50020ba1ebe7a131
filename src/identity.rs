//! Who a signed-in user is, and whether they may come in: claims become an
//! [`Identity`] with a role. Pure rules, no I/O, so every case is a table
//! test.
//!
//! - The user name is `preferred_username`, else `email`, else `sub`.
//! - The groups claim may be a list of strings or one string; duplicates are
//!   dropped (Authentik can emit the same group twice).
//! - `admin` exactly when an admin group is configured and the groups contain
//!   it, compared exactly and case-sensitively. No admin group, no admins.
//! - With auto-provisioning off, only users listed in the users file (by
//!   email or username, case-insensitively) are admitted.
//! - With allowed groups set, only members of one of them are admitted;
//!   members of the admin group always are. Compared exactly, like the
//!   admin group.

use serde::Serialize;
use serde_json::Value;

use crate::config::KnownUser;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The provider's `sub`: stable and unique at that provider.
    pub subject: String,
    pub user: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub role: Role,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

/// The claims that matter, gathered from the ID token and userinfo.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    pub subject: String,
    pub preferred_username: Option<String>,
    pub email: Option<String>,
    /// The raw groups claim, if any.
    pub groups: Option<Value>,
}

/// The admission rules from the configuration.
#[derive(Clone, Debug)]
pub struct Policy {
    pub admin_group: Option<String>,
    pub auto_provision: bool,
    pub users: Vec<KnownUser>,
    /// Empty: everyone the provider authenticates may come in.
    pub allowed_groups: Vec<String>,
}

/// Why a user was turned away.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("user {user} is not in the users file and auto-provisioning is off")]
    NotProvisioned { user: String },
    #[error("user {user} is in none of the allowed groups")]
    NotAllowed { user: String },
}

/// The explanation `/_billguard/whoami` gives for a role.
#[derive(Clone, Debug, Serialize)]
pub struct RoleReason {
    pub admin_group: Option<String>,
    pub member: bool,
    pub explanation: String,
}

/// `sub` of a user who signed in with a password, before the username.
const LOCAL_SUBJECT_PREFIX: &str = "local:";

// === impl Identity ===

impl Identity {
    /// A user of the users file who signed in with a password: the role is
    /// the file's, and there are no groups.
    pub fn local(username: &str, email: Option<String>, role: Role) -> Identity {
        Identity {
            subject: format!("{LOCAL_SUBJECT_PREFIX}{username}"),
            user: username.to_owned(),
            email,
            groups: Vec::new(),
            role,
        }
    }

    /// Whether this identity came from local login rather than the provider.
    pub fn is_local(&self) -> bool {
        self.subject.starts_with(LOCAL_SUBJECT_PREFIX) && self.groups.is_empty()
    }
}

// === impl Policy ===

impl Policy {
    /// Decides who the claims describe and whether they are admitted.
    pub fn admit(&self, claims: Claims) -> Result<Identity, Refusal> {
        let groups = claims.groups.as_ref().map(group_list).unwrap_or_default();
        let user = claims
            .preferred_username
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| claims.email.clone().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| claims.subject.clone());

        if !self.auto_provision && !self.is_known(&user, claims.email.as_deref()) {
            return Err(Refusal::NotProvisioned { user });
        }

        let role = match &self.admin_group {
            Some(admin) if groups.iter().any(|g| g == admin) => Role::Admin,
            _ => Role::User,
        };
        let allowed = self.allowed_groups.is_empty()
            || role == Role::Admin
            || groups.iter().any(|g| self.allowed_groups.contains(g));
        if !allowed {
            return Err(Refusal::NotAllowed { user });
        }
        Ok(Identity {
            subject: claims.subject,
            user,
            email: claims.email.filter(|s| !s.is_empty()),
            groups,
            role,
        })
    }

    /// Why `identity` has its role, in words for an operator.
    pub fn explain(&self, identity: &Identity) -> RoleReason {
        if identity.is_local() {
            return RoleReason {
                admin_group: self.admin_group.clone(),
                member: false,
                explanation: format!(
                    "signed in with a password; the role `{}` comes from the users file",
                    match identity.role {
                        Role::Admin => "admin",
                        Role::User => "user",
                    }
                ),
            };
        }
        let member = self
            .admin_group
            .as_ref()
            .is_some_and(|admin| identity.groups.iter().any(|g| g == admin));
        let explanation = match (&self.admin_group, member) {
            (None, _) => "no admin group is configured (oidc.admin_group), so every user is \
                          a regular user"
                .to_owned(),
            (Some(admin), true) => format!("the groups claim contains the admin group `{admin}`"),
            (Some(admin), false) => format!(
                "the groups claim does not contain the admin group `{admin}` \
                 (compared exactly, case-sensitively)"
            ),
        };
        RoleReason {
            admin_group: self.admin_group.clone(),
            member,
            explanation,
        }
    }

    fn is_known(&self, user: &str, email: Option<&str>) -> bool {
        self.users.iter().any(|known| {
            known.username.eq_ignore_ascii_case(user)
                || matches!(
                    (&known.email, email),
                    (Some(a), Some(b)) if a.eq_ignore_ascii_case(b)
                )
                || known
                    .email
                    .as_deref()
                    .is_some_and(|a| a.eq_ignore_ascii_case(user))
        })
    }
}

/// A groups claim as a list: an array of strings, or one string as one
/// group. Anything else carries no groups.
pub fn group_list(value: &Value) -> Vec<String> {
    let mut groups: Vec<String> = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    groups.retain(|g| !g.is_empty() && seen.insert(g.clone()));
    groups
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(admin: Option<&str>) -> Policy {
        Policy {
            admin_group: admin.map(str::to_owned),
            auto_provision: true,
            users: Vec::new(),
            allowed_groups: Vec::new(),
        }
    }

    fn claims(groups: Value) -> Claims {
        Claims {
            subject: "sub-1".into(),
            preferred_username: Some("alice".into()),
            email: Some("alice@example.com".into()),
            groups: Some(groups),
        }
    }

    #[test]
    fn admin_only_with_configured_group_and_exact_membership() {
        let cases = [
            (Some("admins"), json!(["staff", "admins"]), Role::Admin),
            (Some("admins"), json!("admins"), Role::Admin),
            (
                Some("admins"),
                json!(["Admins", "admins-x", "xadmins"]),
                Role::User,
            ),
            (Some("admins"), json!(null), Role::User),
            (Some("admins"), json!({"admins": true}), Role::User),
            (None, json!(["admins"]), Role::User),
        ];
        for (admin, groups, role) in cases {
            let got = policy(admin).admit(claims(groups.clone())).unwrap();
            assert_eq!(got.role, role, "admin={admin:?} groups={groups}");
        }
    }

    #[test]
    fn user_name_falls_back_from_username_to_email_to_subject() {
        let mut c = claims(json!([]));
        assert_eq!(policy(None).admit(c.clone()).unwrap().user, "alice");
        c.preferred_username = None;
        assert_eq!(
            policy(None).admit(c.clone()).unwrap().user,
            "alice@example.com"
        );
        c.email = Some(String::new());
        assert_eq!(policy(None).admit(c.clone()).unwrap().user, "sub-1");
    }

    #[test]
    fn groups_are_deduplicated_in_order() {
        let got = policy(None)
            .admit(claims(json!(["b", "a", "b", "", 7])))
            .unwrap();
        assert_eq!(got.groups, ["b", "a"]);
    }

    #[test]
    fn without_auto_provision_only_listed_users_are_admitted() {
        let mut p = policy(Some("admins"));
        p.auto_provision = false;
        p.users = vec![KnownUser {
            username: "Bob".into(),
            email: Some("ALICE@example.com".into()),
            role: None,
            password_hash: None,
        }];
        assert!(p.admit(claims(json!([]))).is_ok(), "matched by email");
        let mut bob = claims(json!([]));
        bob.preferred_username = Some("bob".into());
        bob.email = None;
        assert!(p.admit(bob).is_ok(), "matched by username");
        let mut eve = claims(json!(["admins"]));
        eve.preferred_username = Some("eve".into());
        eve.email = Some("eve@example.com".into());
        assert_eq!(
            p.admit(eve),
            Err(Refusal::NotProvisioned { user: "eve".into() })
        );
    }

    #[test]
    fn allowed_groups_admit_members_and_admins_only() {
        let mut p = policy(Some("admins"));
        p.allowed_groups = vec!["bill-tracker-users".into(), "family".into()];
        let cases = [
            (json!(["family"]), true),
            (json!(["staff", "bill-tracker-users"]), true),
            (json!(["admins"]), true),
            (json!(["Family", "bill-tracker-users-x"]), false),
            (json!([]), false),
            (json!(null), false),
        ];
        for (groups, admitted) in cases {
            let got = p.admit(claims(groups.clone()));
            if admitted {
                assert!(got.is_ok(), "{groups}");
            } else {
                assert_eq!(
                    got,
                    Err(Refusal::NotAllowed {
                        user: "alice".into()
                    }),
                    "{groups}"
                );
            }
        }
        p.allowed_groups.clear();
        assert!(p.admit(claims(json!([]))).is_ok(), "no list, no limit");
    }

    #[test]
    fn explanation_names_the_admin_group() {
        let p = policy(Some("admins"));
        let id = p.admit(claims(json!(["staff"]))).unwrap();
        let why = p.explain(&id);
        assert!(!why.member);
        assert!(
            why.explanation
                .contains("does not contain the admin group `admins`")
        );
    }
}
