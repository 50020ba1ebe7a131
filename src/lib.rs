//! billguard: an authentication sidecar that signs browser users in with
//! OpenID Connect and forwards their requests to the app with identity
//! headers. The binary is a thin runbook over these modules; the library
//! exists so integration tests can start the real server.

pub mod admin;
pub mod app;
pub mod backchannel;
pub mod bearer;
pub mod bypass;
pub mod check;
pub mod cli;
pub mod config;
pub mod csrf;
pub mod demo;
pub mod errors;
pub mod forward;
pub mod headers;
pub mod health;
pub mod identity;
pub mod local_login;
pub mod login;
pub mod metrics;
pub mod oidc;
pub mod pages;
pub mod policy;
pub mod refresh;
pub mod request_id;
pub mod respond;
pub mod routes;
pub mod server;
pub mod session;
pub mod statement;
pub mod telemetry;
pub mod tls;
