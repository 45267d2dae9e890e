//! The `weir` command line.

use std::path::PathBuf;
use std::process::ExitCode;

mod transform;

use std::io::IsTerminal;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use weir_core::kafka::security::redact;
use weir_core::pipeline::{self, PipelineConfig, RunOptions};

/// weir: read events from a source, run them through transforms (built-in or WebAssembly), write
/// them to sinks; driven by a config file.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, long_about = None)]
#[command(
    after_help = "Config values can be overridden from the environment: WEIR__<KEY>__<KEY>=value, \
e.g. WEIR__SINK__PATH=/tmp/out.tsv or WEIR__TRANSFORMS__0__REGEX='^play'. Log level: WEIR_LOG=debug."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline a config file describes, until its input ends or SIGTERM / SIGINT
    /// (then drain what was read and exit 0).
    Run {
        /// Pipeline config (.toml, .yaml, .yml or .json, or a Snowbridge .hcl config).
        config: PathBuf,
        /// Print a progress line every 2 s.
        #[arg(long, value_enum, default_value_t = Progress::Auto)]
        progress: Progress,
    },
    /// Check config files without running them (exit 2 on the first error).
    Validate {
        /// Pipeline configs.
        #[arg(required = true)]
        configs: Vec<PathBuf>,
    },
    /// Work with config files: convert a Snowbridge HCL config to weir's TOML.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Develop WebAssembly transforms: try one on a file, start a new one.
    #[command(subcommand)]
    Transform(transform::TransformCommand),
    /// Simulate viewers watching videos (Snowplow media events) against a collector endpoint.
    Loadgen(weir_loadgen::Args),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the weir TOML equivalent to a Snowbridge 5.x HCL config (comments say what weir
    /// does differently or ignores); `env(…)` and `env.X` are read from the environment.
    Convert {
        /// Snowbridge config (.hcl).
        config: PathBuf,
    },
}

/// Exit code for configuration errors.
pub const EXIT_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Transform(cmd) => transform::main(cmd),
        Command::Loadgen(args) => weir_loadgen::main(args),
        Command::Config(ConfigCommand::Convert { config }) => {
            if !weir_core::snowbridge::is_hcl(&config) {
                eprintln!(
                    "error: {}: expected a Snowbridge config ending in .hcl",
                    config.display()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            // Validate as `weir validate` does, then print the translation.
            if let Err(e) = PipelineConfig::load(&config) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            match PipelineConfig::translate_hcl(&config) {
                Ok(t) => {
                    print!("{}", weir_core::snowbridge::to_toml(&t));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Validate { configs } => {
            for path in &configs {
                match PipelineConfig::load(path) {
                    Ok(_) => println!("{}: ok", path.display()),
                    Err(e) => {
                        eprintln!("error: {}", redact(&e.to_string()));
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Run { config, progress } => {
            let cfg = match PipelineConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {}", redact(&e.to_string()));
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if let Some(level) = &cfg.log_level {
                set_log_level(level);
            }
            // Held to the end: dropping it flushes what was sent (the fatal error included).
            let _sentry = cfg.monitoring.sentry.as_ref().and_then(start_sentry);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("weir")
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(signals(shutdown.clone()));
                pipeline::run(
                    &cfg,
                    shutdown,
                    RunOptions {
                        progress: progress.enabled(),
                        ..Default::default()
                    },
                )
                .await
            });
            // Do not wait for a blocked stdin read: everything read has been handled.
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The first SIGTERM / SIGINT starts a graceful drain; a second one exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: draining (send it again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Replaces the log filter (set from `WEIR_LOG` or `info` at start), once the config is read.
type SetLevel = Box<dyn Fn(&str) + Send + Sync>;
static SET_LEVEL: std::sync::OnceLock<SetLevel> = std::sync::OnceLock::new();

/// Sets up `tracing` to stderr. The filter comes from `WEIR_LOG` (e.g. `info`, `weir_core=debug`).
/// Every line goes through [`redact`] (no secret weir knows of is ever logged). Errors also go
/// to Sentry (warnings and info as breadcrumbs) once [`start_sentry`] has bound a client; until
/// then that layer does nothing.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = SET_LEVEL.set(Box::new(move |l: &str| {
        let _ = handle.reload(tracing_subscriber::EnvFilter::new(l));
    }));
    let fmt = tracing_subscriber::fmt::layer().with_writer(|| RedactingStderr);
    let fmt = match format {
        LogFormat::Human => fmt.with_target(false).boxed(),
        LogFormat::Json => fmt.json().with_current_span(false).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(
            sentry::integrations::tracing::ErrorLayer::new()
                .with_filter(tracing_subscriber::filter::LevelFilter::ERROR),
        )
        .with(
            sentry::integrations::tracing::BreadcrumbLayer::new()
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .try_init();
}

/// `[monitoring.sentry]`: binds a Sentry client (errors and panics become events); sent events
/// are flushed when the returned guard drops. Secrets weir knows of are taken out of events and
/// breadcrumbs. The client's own `debug` output would print the DSN, so `debug` logs each event
/// sent through weir's (redacted) log instead.
fn start_sentry(cfg: &weir_core::monitoring::SentryConfig) -> Option<sentry::ClientInitGuard> {
    let origin = weir_core::config::Origin::new("", "monitoring.sentry");
    let dsn = match cfg
        .resolve_dsn(&origin)
        .map(|d| d.parse::<sentry::types::Dsn>())
    {
        Ok(Ok(dsn)) => dsn,
        // Checked when the config was read; a DSN Sentry's parser still refuses is reported
        // without its text.
        _ => {
            tracing::error!("sentry: the DSN is not one the Sentry client accepts; not reporting");
            return None;
        }
    };
    let debug = cfg.debug;
    let mut options = sentry::ClientOptions::new();
    options.dsn = Some(dsn);
    options.release = Some(concat!("weir@", env!("CARGO_PKG_VERSION")).into());
    options.before_send = Some(std::sync::Arc::new(move |mut event| {
        redact_event(&mut event);
        if debug {
            tracing::info!(
                event_id = %event.event_id,
                message = event.message.as_deref().unwrap_or_default(),
                "sentry: sending an event"
            );
        }
        Some(event)
    }));
    options.before_breadcrumb = Some(std::sync::Arc::new(|mut b| {
        redact_breadcrumb(&mut b);
        Some(b)
    }));
    let guard = sentry::init(options);
    sentry::configure_scope(|scope| {
        for (k, v) in &cfg.tags {
            scope.set_tag(k, v);
        }
    });
    tracing::info!(tags = cfg.tags.len(), "reporting errors to Sentry");
    Some(guard)
}

fn redact_string(s: &mut String) {
    if let std::borrow::Cow::Owned(r) = redact(s) {
        *s = r;
    }
}

fn redact_value(v: &mut sentry::protocol::Value) {
    use sentry::protocol::Value;
    match v {
        Value::String(s) => redact_string(s),
        Value::Array(a) => a.iter_mut().for_each(redact_value),
        Value::Object(o) => o.values_mut().for_each(redact_value),
        _ => {}
    }
}

fn redact_event(e: &mut sentry::protocol::Event<'static>) {
    if let Some(m) = &mut e.message {
        redact_string(m);
    }
    if let Some(l) = &mut e.logentry {
        redact_string(&mut l.message);
        l.params.iter_mut().for_each(redact_value);
    }
    for x in e.exception.values.iter_mut() {
        if let Some(v) = &mut x.value {
            redact_string(v);
        }
    }
    e.extra.values_mut().for_each(redact_value);
    // Where the tracing integration puts an event's fields ("Rust Tracing Fields").
    for c in e.contexts.values_mut() {
        if let sentry::protocol::Context::Other(m) = c {
            m.values_mut().for_each(redact_value);
        }
    }
    for b in e.breadcrumbs.values.iter_mut() {
        redact_breadcrumb(b);
    }
}

fn redact_breadcrumb(b: &mut sentry::protocol::Breadcrumb) {
    if let Some(m) = &mut b.message {
        redact_string(m);
    }
    b.data.values_mut().for_each(redact_value);
}

/// stderr, with every secret weir knows of taken out (the log formatter writes each event in
/// one call).
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A config's log level (a Snowbridge config's `log_level`); `WEIR_LOG`, when set, wins.
fn set_log_level(level: &str) {
    if std::env::var_os("WEIR_LOG").is_none() {
        if let Some(set) = SET_LEVEL.get() {
            set(level);
        }
    }
}

/// When to print the progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// When stderr is a terminal.
    #[default]
    Auto,
    Always,
    Never,
}

impl Progress {
    pub fn enabled(self) -> bool {
        match self {
            Progress::Auto => std::io::stderr().is_terminal(),
            Progress::Always => true,
            Progress::Never => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentry_events_lose_the_secrets_weir_knows_of() {
        weir_core::kafka::security::register_secret("s3cr3t-for-sentry");
        let mut e = sentry::protocol::Event {
            message: Some("login with s3cr3t-for-sentry failed".into()),
            ..Default::default()
        };
        let mut fields = sentry::protocol::Map::new();
        fields.insert("error".into(), "bad password s3cr3t-for-sentry".into());
        e.contexts.insert(
            "Rust Tracing Fields".into(),
            sentry::protocol::Context::Other(fields),
        );
        e.breadcrumbs.values.push(sentry::protocol::Breadcrumb {
            message: Some("s3cr3t-for-sentry".into()),
            ..Default::default()
        });
        redact_event(&mut e);
        let text = debug_text(&e);
        assert!(!text.contains("s3cr3t-for-sentry"), "{text}");
        assert!(text.contains("login with"), "{text}");
    }

    fn debug_text(e: &sentry::protocol::Event<'static>) -> String {
        format!("{e:?}")
    }
}
