//! billguard's integration tests: one binary, the real server on loopback

// Support modules are shared by every test file, so not every helper is used
// by each, and `pub` there means "for the tests".
#![allow(dead_code, unreachable_pub)]
//! between a fake provider and an echo app.

mod access;
mod admin;
mod backchannel;
mod check;
mod cli;
mod demo;
mod deploy;
mod failures;
mod forwarding;
mod local;
mod login;
mod ops;
mod policy_cli;
mod refresh;
mod replicas;
mod rollout;
mod store;
mod support;
