//! The persistence file of the in-memory store (`session.persist_file`).
//!
//! On shutdown every live session is written as one sealed blob (see
//! `seal`), through a temporary file and a rename so a crash mid-write
//! leaves either the old file or the new one, never half of one; the file
//! is created readable by its owner only. At start the file is read and
//! deleted at once: it may be old, and sessions signed out since must not
//! come back on a later start. A file sealed under another
//! `session.secret`, damaged, or of another format is discarded with a
//! warning; nobody is signed in from it.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::record::Record;
use super::{Sealer, Session, SessionId};

/// The associated data of the file's seal: what it is and its format.
const PLACE: &[u8] = b"billguard sessions file v1";

#[derive(Serialize, Deserialize)]
struct Entry {
    id: String,
    #[serde(flatten)]
    record: Record,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

pub(super) fn write(
    path: &Path,
    sealer: &Sealer,
    sessions: &[(SessionId, Session)],
) -> Result<(), Error> {
    let entries: Vec<Entry> = sessions
        .iter()
        .map(|(id, s)| Entry {
            id: id.to_string(),
            record: Record::of(s),
        })
        .collect();
    let plain = serde_json::to_vec(&entries).expect("session records serialize");
    let sealed = sealer.seal(PLACE, &plain);

    let fail = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(fail)?;
    file.write_all(&sealed).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The sessions in the file; empty when there is none or it is unusable.
/// The file is removed either way.
pub(super) fn read(path: &Path, sealer: &Sealer) -> Vec<(SessionId, Session)> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "Session file unreadable; starting without it");
            return Vec::new();
        }
    };
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(%error, path = %path.display(), "Session file could not be deleted after reading");
    }

    let Some(plain) = sealer.open(PLACE, &bytes) else {
        tracing::warn!(
            path = %path.display(),
            "Session file discarded: sealed with another session.secret, or damaged"
        );
        return Vec::new();
    };
    let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(&plain) else {
        tracing::warn!(path = %path.display(), "Session file discarded: unknown format");
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let bytes = URL_SAFE_NO_PAD.decode(&e.id).ok()?;
            Some((SessionId(bytes.try_into().ok()?), e.record.into_session()))
        })
        .collect()
}
