//! The stored form of a session: what is written to Redis and to the
//! persistence file (sealed), and read back on every replica.
//!
//! Only what a later request needs: the identity, the ID token (the
//! `id_token_hint` of sign-out), the provider's `sid` (back-channel
//! logout), the refresh token, and the access token only when there is no
//! refresh token (it is then the one way to ask userinfo again). Times are
//! Unix seconds.
//!
//! Two encodings of the same fields: JSON with one-letter names for Redis
//! and the persistence file, read by other versions and replicas (a field
//! added later reads as its default from an older record), and postcard's
//! positional binary form for the in-memory store, which never leaves the
//! process and takes nearly a third less space. Being positional, postcard
//! needs every field written, so none is left out (JSON then has `null`
//! for an absent one, which every version reads as absent).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Session, Tokens};
use crate::identity::{Identity, Role};

#[derive(Serialize, Deserialize)]
pub(crate) struct Record {
    #[serde(rename = "s")]
    subject: String,
    #[serde(rename = "u")]
    user: String,
    #[serde(rename = "m", default)]
    email: Option<String>,
    #[serde(rename = "g", default)]
    groups: Vec<String>,
    #[serde(rename = "a", default)]
    admin: bool,
    #[serde(rename = "i", default)]
    id_token: Option<String>,
    #[serde(rename = "d", default)]
    sid: Option<String>,
    #[serde(rename = "r", default)]
    refresh: Option<String>,
    #[serde(rename = "t", default)]
    access: Option<String>,
    #[serde(rename = "x", default)]
    access_expires: Option<u64>,
    #[serde(rename = "c")]
    created: u64,
    #[serde(rename = "e")]
    expires: u64,
    #[serde(rename = "k")]
    checked: u64,
}

// === impl Record ===

impl Record {
    pub(crate) fn of(session: &Session) -> Self {
        let identity = &session.identity;
        Record {
            subject: identity.subject.clone(),
            user: identity.user.clone(),
            email: identity.email.clone(),
            groups: identity.groups.clone(),
            admin: identity.role == Role::Admin,
            id_token: session.id_token.clone(),
            sid: session.sid.clone(),
            refresh: session.tokens.refresh.clone(),
            access: session.tokens.access.clone(),
            access_expires: session.tokens.access_expires.map(unix),
            created: unix(session.created),
            expires: unix(session.expires),
            checked: unix(session.checked),
        }
    }

    pub(crate) fn into_session(self) -> Session {
        let identity = Identity {
            subject: self.subject,
            user: self.user,
            email: self.email,
            groups: self.groups,
            role: if self.admin { Role::Admin } else { Role::User },
        };
        Session {
            identity,
            id_token: self.id_token,
            sid: self.sid,
            tokens: Tokens {
                refresh: self.refresh,
                access: self.access,
                access_expires: self.access_expires.map(time),
            },
            created: time(self.created),
            expires: time(self.expires),
            checked: time(self.checked),
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a session record serializes")
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The compact form, for this process only.
    pub(crate) fn to_compact(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a session record serializes")
    }

    pub(crate) fn from_compact(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn session(full: bool) -> Session {
        let some = |text: &str| full.then(|| text.to_owned());
        Session {
            identity: Identity {
                subject: "0b7c9e2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into(),
                user: "olivia".into(),
                email: some("olivia@example.com"),
                groups: if full {
                    vec!["staff".into(), "admins".into()]
                } else {
                    vec![]
                },
                role: if full { Role::Admin } else { Role::User },
            },
            id_token: some("eyJ.header.sig"),
            sid: some("sid-1"),
            tokens: Tokens {
                refresh: some("refresh-1"),
                access: some("access-1"),
                access_expires: full.then(|| time(1_800_000_100)),
            },
            created: time(1_800_000_000),
            expires: time(1_800_043_200),
            checked: time(1_800_000_050),
        }
    }

    /// What a session looks like after a round trip, compared field by field.
    fn text(s: &Session) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            s.identity,
            s.id_token,
            s.sid,
            s.tokens.refresh,
            s.tokens.access,
            s.tokens.access_expires,
            s.created,
            s.expires,
            s.checked
        )
    }

    #[test]
    fn both_encodings_give_back_the_same_session_with_or_without_optional_fields() {
        for full in [true, false] {
            let before = session(full);
            let record = Record::of(&before);
            let compact = Record::from_compact(&record.to_compact()).expect("compact");
            let json = Record::from_bytes(&record.to_bytes()).expect("json");
            assert_eq!(
                text(&compact.into_session()),
                text(&before),
                "compact, full={full}"
            );
            assert_eq!(
                text(&json.into_session()),
                text(&before),
                "json, full={full}"
            );
        }
    }

    #[test]
    fn json_written_before_absent_fields_were_written_as_null_still_reads() {
        let old = br#"{"s":"sub","u":"olivia","g":[],"a":false,"c":1,"e":2,"k":1}"#;
        let session = Record::from_bytes(old)
            .expect("an older record")
            .into_session();
        assert_eq!(session.identity.user, "olivia");
        assert!(session.tokens.refresh.is_none() && session.identity.email.is_none());
    }
}
