//! Bytes per session in the in-memory store, at 10,000, 100,000 and 1,000,000 sessions.
//!
//! A measurement, not a test: it opens that many sessions shaped like a real Authentik login
//! with `offline_access` (UUID `sub`, user name, email, three groups, `sid`, refresh token; the
//! ID token stays in the browser's hint cookie) in a fresh store, runs its housekeeping, and
//! divides the growth of the process's resident memory by the count. That includes everything
//! a session costs: the table's entry and its growth, the stored record and allocator overhead.
//! Each figure comes from a fresh child process, so memory freed by one run cannot hide the
//! next one's. Linux only (it reads `/proc/self/statm`).
//!
//! ```sh
//! cargo run --example session_memory            # or with --release: same figures, faster
//! ```
//!
//! The second column is for sessions opened with an ID token in them (`Store::create` with
//! one, as a caller without the hint cookie would), to show what the cookie saves.

use std::time::Duration;

use billguard::config::{self, Secret};
use billguard::identity::{Identity, Role};
use billguard::session::{NewSession, Store, Tokens};

const COUNTS: [u64; 3] = [10_000, 100_000, 1_000_000];

// The allocator of the `billguard` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, count, shape] = args.as_slice() {
        let count: u64 = count.parse().expect("a session count");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let per = runtime.block_on(measure(count, shape == "with-id-token"));
        println!("{per:.0}");
        return;
    }

    let me = std::env::current_exe().expect("the path of this program");
    let child = |count: u64, shape: &str| {
        let out = std::process::Command::new(&me)
            .arg(count.to_string())
            .arg(shape)
            .output()
            .expect("run a measurement");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    println!("sessions   bytes/session   bytes/session with a 1 KB ID token kept");
    for count in COUNTS {
        let plain = child(count, "login");
        let with = child(count, "with-id-token");
        println!("{count:>9}   {plain:>13}   {with:>41}");
    }
}

async fn measure(count: u64, with_id_token: bool) -> f64 {
    // A typical RS256 ID token from Authentik: about 1 KB.
    let id_token = format!(
        "{}.{}.{}",
        "e".repeat(100),
        "p".repeat(560),
        "s".repeat(342)
    );
    let id_token = with_id_token.then_some(id_token.as_str());
    let store = Store::new(&config::Session {
        ttl: Duration::from_secs(12 * 3600),
        idle_timeout: Duration::from_secs(3600),
        max_sessions: count,
        secret: Secret::new("a-benchmark-secret-that-is-long-enough".into()),
        secret_generated: false,
        secure_cookies: true,
        store: config::StoreKind::Memory,
        persist_file: None,
        refresh_interval: Duration::from_secs(300),
    })
    .expect("a memory store");

    let before = resident_bytes();
    for n in 0..count {
        let new = NewSession {
            identity: Identity {
                subject: format!("{n:08x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b"),
                user: format!("user{n:07}"),
                email: Some(format!("user{n:07}@example.com")),
                groups: vec![
                    "bill-tracker-users".into(),
                    "staff".into(),
                    "household-42".into(),
                ],
                role: Role::User,
            },
            id_token: id_token.map(str::to_owned),
            sid: Some(format!("{n:032x}")),
            tokens: Tokens {
                refresh: Some(format!("{n:064x}")),
                access: None,
                access_expires: None,
            },
        };
        store.open(new).await.expect("the memory store never fails");
    }
    store.housekeeping().await;
    let after = resident_bytes();
    let live = store.try_count().await.expect("count");
    assert_eq!(live, count, "every session is live");
    let per = (after.saturating_sub(before)) as f64 / count as f64;
    drop(store);
    per
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages in statm");
    pages * 4096
}
