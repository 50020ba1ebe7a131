//! Builders for the integration tests: a fake provider, an echo app, a
//! browser-like client, and the real billguard server between them.

pub mod browser;
pub mod local;
pub mod process;
pub mod provider;
pub mod redis;
pub mod stack;
pub mod upstream;
