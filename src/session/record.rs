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
//! added later reads as its default from an older record, which is why no
//! field is ever left out when written), and postcard's positional binary
//! form for the in-memory store, which never leaves the process and
//! keeps every session in a third less space.

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
