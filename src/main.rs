//! The `billguard` binary: parse the command line, set up logging, load
//! the configuration, run the subcommand, and turn the outcome into an exit
//! code — 0 success, 1 runtime failure, 2 bad configuration or usage.

use std::process::ExitCode;

use std::io::{IsTerminal as _, Read as _};

use billguard::cli::{CheckArgs, Cli, Command, DemoArgs, RoutesArgs, ServeArgs};
use billguard::config::{self, Inputs, Loaded};
use billguard::{check, demo, local_login, server, telemetry};
use clap::Parser;

// glibc's allocator, with a heap per thread, keeps the buffers of a burst
// of connections long after they close, and its allocation path is a
// visible part of a proxied request; mimalloc returns freed pages to the
// system and allocates in fewer instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // A worker's access-log lines wait for it to go idle; a panic (which
    // aborts) writes them first.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        telemetry::flush_thread();
        report(info);
    }));

    match cli.command {
        Command::Serve(args) => serve(cli.config, args),
        Command::Config(args) => print_config(cli.config, args),
        Command::Routes(args) => print_route(cli.config, args),
        Command::Check(args) => run_check(cli.config, args),
        Command::HashPassword => hash_password(),
        Command::Demo(args) => run_demo(args),
    }
}

fn run_demo(args: DemoArgs) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(EXIT_RUNTIME);
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
    let inputs = inputs(file, args);
    let Some(loaded) = load(&inputs) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let cfg = &loaded.config;
    let oidc = cfg.oidc.as_ref();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        upstream = %cfg.upstream.url,
        issuer = oidc.map_or("(none: local login only)", |o| o.issuer_url.as_str()),
        callback = oidc.map_or("-", |o| o.redirect_uri.path()),
        admin_group = oidc.and_then(|o| o.admin_group.as_deref()).unwrap_or("(none: nobody is admin)"),
        local_login = cfg.local_login.enabled,
        sessions = match cfg.session.store {
            config::StoreKind::Memory => "memory",
            config::StoreKind::Redis(_) => "redis",
        },
        persist_file = cfg.session.persist_file.as_ref().map(|p| p.display().to_string()),
        secure_cookies = cfg.session.secure_cookies,
        "Starting billguard"
    );

    let Some(runtime) = runtime() else {
        return ExitCode::from(EXIT_RUNTIME);
    };
    match runtime.block_on(server::serve(loaded, inputs)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "billguard stopped");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn print_config(file: Option<std::path::PathBuf>, args: ServeArgs) -> ExitCode {
    let Some(loaded) = load(&inputs(file, args)) else {
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
    let Some(loaded) = load(&inputs(file, no_flags)) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let cfg = &loaded.config;
    let callback = cfg
        .oidc
        .as_ref()
        .map_or("/api/auth/oidc/callback", |o| o.redirect_uri.path());
    print!(
        "{}",
        billguard::policy::explain(&cfg.routes, callback, method, &args.path)
    );
    ExitCode::SUCCESS
}

/// The provider test: one line per check, then a summary.
fn run_check(file: Option<std::path::PathBuf>, args: CheckArgs) -> ExitCode {
    let inputs = inputs(file, args.serve);
    let loaded = match config::load(&inputs) {
        Ok(loaded) => loaded,
        Err(problems) if args.json => {
            let problems: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
            let out = serde_json::json!({"result": "config_error", "problems": problems});
            println!("{out}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(_) => {
            // Printed by `load`.
            let _ = load(&inputs);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(EXIT_RUNTIME);
    };
    let mut report = runtime.block_on(check::run(loaded.config.oidc.as_ref()));
    report
        .outcomes
        .push(runtime.block_on(check::bypass(&loaded.config.upstream.url)));

    let (result, code) = if report.is_config_error() {
        ("config_error", EXIT_CONFIG)
    } else if report.failed() > 0 {
        ("fail", EXIT_RUNTIME)
    } else {
        ("pass", 0)
    };
    if args.json {
        let out = serde_json::json!({"result": result, "checks": report.outcomes});
        println!("{out}");
    } else {
        for outcome in &report.outcomes {
            println!("{outcome}");
        }
        let passed = report.outcomes.len() - report.failed() - report.warned();
        println!(
            "billguard check: {} failed, {} warning(s), {passed} passed",
            report.failed(),
            report.warned()
        );
    }
    ExitCode::from(code)
}

/// Reads a password from stdin and prints its hash.
fn hash_password() -> ExitCode {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Type the password, then Enter (it is shown as you type):");
    }
    let mut text = String::new();
    if let Err(error) = stdin.read_to_string(&mut text) {
        eprintln!("billguard: cannot read the password from stdin: {error}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    // One trailing line break is the end of input, not the password.
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    match local_login::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "billguard: {error}; give the password on stdin, such as `printf '%s' \"$PW\" | billguard hash-password`"
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(telemetry::worker_idle)
        .on_thread_stop(telemetry::flush_thread)
        .build()
    {
        Ok(rt) => Some(rt),
        Err(error) => {
            tracing::error!(%error, "Cannot start the async runtime");
            None
        }
    }
}

fn inputs(file: Option<std::path::PathBuf>, args: ServeArgs) -> Inputs {
    let mut inputs = Inputs::from_process(file);
    inputs.listen_flag = args.listen;
    inputs.upstream_flag = args.upstream;
    inputs
}

/// Loads the configuration, printing every problem on failure.
fn load(inputs: &Inputs) -> Option<Loaded> {
    match config::load(inputs) {
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
