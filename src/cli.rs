//! Command-line interface: subcommands, flags and their help text. Flags
//! that set configuration values are handed to `config::source`, which
//! weighs them against the file and the environment.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "billguard",
    version,
    about = "Authentication sidecar for BillTracker: signs users in with OpenID Connect and \
             forwards their requests with identity headers"
)]
pub struct Cli {
    /// Configuration file (TOML). Without one, environment variables and
    /// defaults are used.
    #[arg(long, global = true, env = "BILLGUARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format.
    #[arg(
        long,
        global = true,
        env = "BILLGUARD_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log filter, such as `info` or `info,billguard::access=warn`.
    #[arg(long, global = true, env = "BILLGUARD_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Print the effective configuration, each value with its source
    /// (secrets masked), and exit 2 if it has problems.
    Config(ServeArgs),
    /// Try billguard in one command: a built-in demo OpenID provider and a
    /// stand-in app, with billguard between them, all on loopback. Never for
    /// production; ignores --config and the environment's settings.
    Demo(DemoArgs),
    /// Show which `[[routes]]` rule a request meets, on which normalized
    /// path, and what billguard does with it.
    Routes(RoutesArgs),
    /// Test the provider settings: one line per check, with the fix when it
    /// fails. Exit 0 when all pass, 1 when a check fails, 2 for a
    /// configuration error.
    Check(CheckArgs),
    /// Read a password on stdin and print its argon2id hash, for
    /// `password_hash` in the users file.
    HashPassword,
}

#[derive(Debug, clap::Args)]
pub struct RoutesArgs {
    /// The request method, such as GET.
    #[arg(value_name = "METHOD")]
    pub method: String,

    /// The request path, optionally with a query: `/admin/users?page=2`.
    #[arg(value_name = "PATH")]
    pub path: String,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; beats `listen` in the file.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// URL of the app; beats `upstream` in the file.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Loopback address billguard listens on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4180")]
    pub listen: std::net::SocketAddr,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
