//! The `billguard` binary: parse the command line, set up logging, load
//! the configuration, run the subcommand, and turn the outcome into an exit
//! code — 0 success, 1 runtime failure, 2 bad configuration or usage.

use std::process::ExitCode;

use billguard::cli::{Cli, Command, DemoArgs, RoutesArgs, ServeArgs};
use billguard::config::{self, Inputs, Loaded};
use billguard::{demo, server, telemetry};
use clap::Parser;

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // clap exits with 2 on usage errors by itself.
    let cli = Cli::parse();

    // One TLS provider for the whole process, before anything makes a client.
    let _ = rustls::crypto::ring::default_provider().install_default();

    if let Err(error) = telemetry::init(cli.log_format, &cli.log) {
        eprintln!("billguard: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }

    match cli.command {
        Command::Serve(args) => serve(cli.config, args),
        Command::Config(args) => print_config(cli.config, args),
        Command::Routes(args) => print_route(cli.config, args),
        Command::Demo(args) => run_demo(args),
    }
}

fn run_demo(args: DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "Cannot start the async runtime");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(demo::run(args.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("billguard demo: {error}");
            let code = if error.is_usage() {
                EXIT_CONFIG
            } else {
                EXIT_RUNTIME
            };
            ExitCode::from(code)
        }
    }
}

fn serve(file: Option<std::path::PathBuf>, args: ServeArgs) -> ExitCode {
    let Some(loaded) = load(file, args) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let cfg = &loaded.config;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        upstream = %cfg.upstream.url,
        issuer = %cfg.oidc.issuer_url,
        callback = %cfg.oidc.redirect_uri.path(),
        admin_group = cfg.oidc.admin_group.as_deref().unwrap_or("(none: nobody is admin)"),
        sessions = "memory",
        secure_cookies = cfg.session.secure_cookies,
        "Starting billguard"
    );

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "Cannot start the async runtime");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(server::serve(loaded.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "billguard stopped");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn print_config(file: Option<std::path::PathBuf>, args: ServeArgs) -> ExitCode {
    let Some(loaded) = load(file, args) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let width = loaded
        .entries
        .iter()
        .map(|e| e.key.len())
        .max()
        .unwrap_or(0);
    for entry in &loaded.entries {
        println!("{:width$}  {:40}  {}", entry.key, entry.value, entry.source);
    }
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    ExitCode::SUCCESS
}

fn print_route(file: Option<std::path::PathBuf>, args: RoutesArgs) -> ExitCode {
    let Ok(method) = hyper::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("billguard: `{}` is not an HTTP method", args.method);
        return ExitCode::from(EXIT_CONFIG);
    };
    let no_flags = ServeArgs {
        listen: None,
        upstream: None,
    };
    let Some(loaded) = load(file, no_flags) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let cfg = &loaded.config;
    let callback = cfg.oidc.redirect_uri.path();
    print!(
        "{}",
        billguard::policy::explain(&cfg.routes, callback, method, &args.path)
    );
    ExitCode::SUCCESS
}

/// Loads the configuration, printing every problem on failure.
fn load(file: Option<std::path::PathBuf>, args: ServeArgs) -> Option<Loaded> {
    let mut inputs = Inputs::from_process(file);
    inputs.listen_flag = args.listen;
    inputs.upstream_flag = args.upstream;
    match config::load(&inputs) {
        Ok(loaded) => Some(loaded),
        Err(problems) => {
            eprintln!(
                "billguard: the configuration has {} problem(s):",
                problems.0.len()
            );
            for problem in &problems.0 {
                eprintln!("  {problem}");
            }
            None
        }
    }
}
