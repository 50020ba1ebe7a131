//! Whether the app can be reached around billguard.
//!
//! In a pod, billguard and the app share one network namespace. The app is
//! meant to listen on loopback only, so that the one way in is through
//! billguard's port. If the app listens on every address instead, anyone
//! who can reach the pod's IP can talk to it directly and set the identity
//! headers themselves. So at start and then every minute, billguard tries
//! the upstream's port on each of the pod's own non-loopback addresses. An
//! answer is logged as a warning that says how to fix it, and shown as the
//! `billguard_upstream_bypass` gauge.
//!
//! The check only applies when the upstream is on loopback; an app
//! elsewhere is the network's business.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use url::Url;

use crate::metrics;

/// How often the check repeats after the first one.
pub const EVERY: Duration = Duration::from_secs(60);
/// A closed port answers at once; a filtered one should not hold the check.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The upstream is not on loopback, so there is nothing to bypass here.
    NotApplicable,
    /// The app did not answer on any of these addresses.
    Closed(Vec<IpAddr>),
    /// The app answered here: it can be reached around billguard.
    Exposed(Vec<SocketAddr>),
}

// === impl Finding ===

impl Finding {
    pub fn is_exposed(&self) -> bool {
        matches!(self, Finding::Exposed(_))
    }
}

/// Probes the upstream's port on this host's non-loopback addresses.
pub async fn check(upstream: &Url) -> Finding {
    let Some(port) = upstream.port_or_known_default() else {
        return Finding::NotApplicable;
    };
    if !crate::config::is_loopback_host(upstream) {
        return Finding::NotApplicable;
    }

    let addrs = own_addresses();
    let mut probes = tokio::task::JoinSet::new();
    for ip in &addrs {
        let addr = SocketAddr::new(*ip, port);
        probes.spawn(async move {
            let connect = tokio::net::TcpStream::connect(addr);
            let answered = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .is_ok_and(|r| r.is_ok());
            answered.then_some(addr)
        });
    }
    let mut open = Vec::new();
    while let Some(probe) = probes.join_next().await {
        if let Ok(Some(addr)) = probe {
            open.push(addr);
        }
    }
    open.sort();
    if open.is_empty() {
        Finding::Closed(addrs)
    } else {
        Finding::Exposed(open)
    }
}

/// Checks at start and every [`EVERY`], logging changes and keeping the
/// gauge current. Runs until dropped.
pub async fn watch(upstream: Url) {
    let mut last: Option<bool> = None;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        let finding = check(&upstream).await;
        let exposed = finding.is_exposed();
        metrics::upstream_bypass(exposed);
        if last == Some(exposed) {
            continue;
        }
        last = Some(exposed);
        match &finding {
            Finding::Exposed(addrs) => {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    reachable_at = %addrs.join(","),
                    upstream = %upstream,
                    "The app also answers on this pod's own addresses, so anyone who can reach \
                     the pod can bypass billguard and forge identity headers: bind the app to \
                     127.0.0.1 only (its listen or host setting, e.g. HOST=127.0.0.1)"
                );
            }
            Finding::Closed(addrs) => {
                tracing::debug!(checked = addrs.len(), "The app answers on loopback only");
            }
            Finding::NotApplicable => {
                tracing::debug!(upstream = %upstream, "Upstream not on loopback; bypass check skipped");
            }
        }
    }
}

/// This host's addresses other than loopback. IPv6 link-local addresses
/// need a scope to connect to and are skipped.
fn own_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    let mut addrs: Vec<IpAddr> = interfaces
        .iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            IpAddr::V4(_) => true,
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_app_on_loopback_only_is_not_exposed() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", app.local_addr().unwrap())).unwrap();
        assert!(matches!(check(&url).await, Finding::Closed(_)));
    }

    #[tokio::test]
    async fn an_app_on_every_address_is_exposed_when_the_host_has_one() {
        let app = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = app.local_addr().unwrap().port();
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let finding = check(&url).await;
        let has_v4 = own_addresses().iter().any(IpAddr::is_ipv4);
        assert_eq!(finding.is_exposed(), has_v4, "{finding:?}");
    }

    #[tokio::test]
    async fn a_remote_upstream_is_not_checked() {
        let url = Url::parse("https://bills.internal:8443").unwrap();
        assert_eq!(check(&url).await, Finding::NotApplicable);
    }
}
