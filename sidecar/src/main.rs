//! The `duro` binary: command line, logging, signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use duro::engine::scheduler::SchedulerOptions;
use duro::engine::EngineOptions;
use duro::grpc::ServiceOptions;
use duro::server::{self, ApiToken, Config};
use duro::store::postgres::{valid_hub_name, PgOptions};
use duro::store::sqlite::{SqliteOptions, StartupCheck};

/// Duro: a durable-execution sidecar for the Durable Task SDKs.
#[derive(Debug, Parser)]
#[command(name = "duro", version, about)]
struct Cli {
    /// Address the gRPC server listens on.
    #[arg(long, env = "DURO_LISTEN", default_value = "127.0.0.1:4001")]
    listen: SocketAddr,
    /// API token required on every gRPC call as metadata `authorization: Bearer <token>`.
    /// Required when --listen is not a loopback address (unless --insecure-allow-remote).
    #[arg(long, env = "DURO_API_TOKEN", hide_env_values = true)]
    api_token: Option<ApiToken>,
    /// Serve gRPC without --api-token on a non-loopback address (anyone who can reach the
    /// port can run, read and delete every orchestration).
    #[arg(long, env = "DURO_INSECURE_ALLOW_REMOTE")]
    insecure_allow_remote: bool,
    /// TLS certificate chain (PEM) for gRPC; with --tls-key, gRPC is served over TLS only.
    #[arg(long, env = "DURO_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for gRPC.
    #[arg(long, env = "DURO_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The store: a SQLite database file (created if missing), or a PostgreSQL URL
    /// (`postgres://user:password@host:5432/database`) shared by every sidecar of one task hub.
    #[arg(long, env = "DURO_DB", default_value = "duro.db", hide_env_values = true)]
    db: PathBuf,
    /// The task hub on PostgreSQL: the schema its tables live in (created if missing), so
    /// several hubs can share one database. Lower-case letters, digits and '_'.
    #[arg(long, env = "DURO_TASK_HUB", default_value = "duro")]
    task_hub: String,
    /// How long a sidecar's lease on an instance lasts without renewal (PostgreSQL). A dead
    /// sidecar's instances move to the others within about this long; renewals run every third
    /// of it, four statements each (entity lease, heartbeat, instances, activities).
    #[arg(long, env = "DURO_LEASE_SECONDS", default_value_t = 6.0)]
    lease_seconds: f64,
    /// Connections to PostgreSQL this sidecar opens at most.
    #[arg(long, env = "DURO_PG_MAX_CONNECTIONS", default_value_t = 16)]
    pg_max_connections: u32,
    /// Log filter, e.g. `info`, `duro=debug`.
    #[arg(long, env = "DURO_LOG", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "DURO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "DURO_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Largest orchestrator work item sent to a worker; a larger one fails its instance
    /// (most SDKs receive at most 4 MiB by default).
    #[arg(long, env = "DURO_MAX_WORK_ITEM_BYTES", default_value_t = 4 * 1024 * 1024 - 64 * 1024)]
    max_work_item_bytes: usize,
    /// Histories above this many bytes are not sent in the work item to workers that declare
    /// WORKER_CAPABILITY_HISTORY_STREAMING; they fetch them with StreamInstanceHistory.
    #[arg(long, env = "DURO_STREAM_HISTORY_ABOVE_BYTES", default_value_t = duro::engine::STREAM_HISTORY_ABOVE)]
    stream_history_above_bytes: usize,
    /// Deliveries of one work item without a result before it is failed as poison.
    #[arg(long, env = "DURO_MAX_DELIVERY_ATTEMPTS", default_value_t = 10)]
    max_delivery_attempts: u32,
    /// Seconds between health pings on an idle work-item stream.
    #[arg(long, env = "DURO_PING_SECONDS", default_value_t = 30)]
    ping_seconds: u64,
    /// Instances whose history is cached in memory.
    #[arg(long, env = "DURO_CACHE_INSTANCES", default_value_t = 10_000)]
    cache_instances: usize,
    /// Memory for cached histories, in MiB (an estimate of the events' in-memory size).
    #[arg(long, env = "DURO_CACHE_MIB", default_value_t = 128)]
    cache_mib: usize,
    /// Events raised by clients that may wait in one instance's inbox; more get
    /// RESOURCE_EXHAUSTED (HTTP 429) until the instance consumes some.
    #[arg(long, env = "DURO_MAX_INBOX_EVENTS", default_value_t = 10_000)]
    max_inbox_events: usize,
    /// Accept inputs, outputs and event payloads that are not JSON.
    #[arg(long, env = "DURO_ALLOW_NON_JSON_PAYLOADS")]
    allow_non_json_payloads: bool,
    /// SQLite `synchronous=NORMAL` instead of `FULL` (survives a crash of Duro, not of the machine).
    #[arg(long, env = "DURO_SQLITE_RELAXED_SYNC")]
    sqlite_relaxed_sync: bool,
    /// SQLite `secure_delete=OFF`: deleted rows (which may have held a durable HTTP
    /// request's secret headers) stay readable in free pages until reused.
    #[arg(long, env = "DURO_SQLITE_NO_SECURE_DELETE")]
    sqlite_no_secure_delete: bool,
    /// Integrity check of the database at start-up (`full`: also every index; slower on
    /// large files). A damaged database is refused.
    #[arg(long, env = "DURO_SQLITE_CHECK", value_enum, default_value = "quick")]
    sqlite_check: StartupCheck,
    /// Fault injection for crash tests: the process aborts right before about one in N group
    /// commits that handed results on early (pipelined), as a power cut would end it.
    #[arg(long, env = "DURO_FAULT_ABORT_BEFORE_COMMIT", hide = true)]
    fault_abort_before_commit: Option<u32>,
    #[command(flatten)]
    http: duro::http::HttpArgs,
    #[command(flatten)]
    durable_http: duro::durable_http::DurableHttpArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("invalid --log-level '{}'", cli.log_level))?;
    if !cli.log_level.contains("sqlx") {
        // PostgreSQL's NOTICE messages ("schema … already exists, skipping" on every start)
        // are sqlx INFO lines; they say nothing an operator needs.
        filter = filter.add_directive("sqlx::postgres::notice=warn".parse().context("log directive")?);
    }
    // Colours only for a terminal: logs redirected to a file or collected stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Installs the SIGTERM/SIGINT handlers now and returns a future that ends at the first of
/// them. Installing them before the listeners open matters: a supervisor (or a test) that sends
/// SIGTERM as soon as the port answers must get a graceful shutdown, not the default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Errors end the process with one line on stderr and exit code 1 (no backtrace, whatever
/// `RUST_BACKTRACE` says): `error: …` or, with `--log-format json`, one JSON object.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            report(format, &one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes as one sentence: a cause whose text the line already holds
/// (thiserror messages often quote their source) is not repeated. A port in use gets a hint.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    let in_use = e
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse));
    if in_use {
        line.push_str(
            "; another program (perhaps another duro) uses that address: stop it or pass a free one (--listen, --http-listen)",
        );
    }
    line
}

fn report(format: LogFormat, line: &str) {
    match format {
        LogFormat::Text => eprintln!("error: {line}"),
        LogFormat::Json => {
            let ts = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let obj = serde_json::json!({
                "timestamp": ts,
                "level": "ERROR",
                "fields": { "message": line },
                "target": "duro",
            });
            eprintln!("{obj}");
        }
    }
}

/// PostgreSQL settings when `--db` is a PostgreSQL URL.
fn postgres_options(cli: &Cli) -> anyhow::Result<Option<PgOptions>> {
    let db = cli.db.to_string_lossy();
    if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
        return Ok(None);
    }
    anyhow::ensure!(
        valid_hub_name(&cli.task_hub),
        "--task-hub '{}' is not a valid name: use 1-48 lower-case letters, digits or '_', starting with a letter",
        cli.task_hub
    );
    anyhow::ensure!(
        cli.lease_seconds.is_finite() && (1.0..=600.0).contains(&cli.lease_seconds),
        "--lease-seconds must be between 1 and 600 (got {})",
        cli.lease_seconds
    );
    // Unique per process: a restarted sidecar never mistakes its predecessor's leases for its own.
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "duro".into());
    let owner = format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    Ok(Some(PgOptions {
        url: db.into_owned(),
        hub: cli.task_hub.clone(),
        owner,
        lease: Duration::from_secs_f64(cli.lease_seconds),
        max_connections: cli.pg_max_connections.max(2),
        require_lease: true,
    }))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(&cli)?;
    let cli_format = cli.log_format;
    let postgres = postgres_options(&cli)?;
    let config = Config {
        listen: cli.listen,
        db: cli.db.clone(),
        postgres,
        sqlite: SqliteOptions {
            synchronous_full: !cli.sqlite_relaxed_sync,
            secure_delete: !cli.sqlite_no_secure_delete,
            check: cli.sqlite_check,
            abort_before_commit: cli.fault_abort_before_commit.filter(|n| *n > 0),
            ..Default::default()
        },
        engine: EngineOptions {
            scheduler: SchedulerOptions { max_attempts: cli.max_delivery_attempts.max(1), ..Default::default() },
            cache_instances: cli.cache_instances,
            cache_bytes: cli.cache_mib.saturating_mul(1024 * 1024),
            max_work_item_bytes: cli.max_work_item_bytes,
            stream_history_above: cli.stream_history_above_bytes,
            ping_interval: Duration::from_secs(cli.ping_seconds.max(1)),
            max_inbox_events: cli.max_inbox_events.max(1),
            ..Default::default()
        },
        service: ServiceOptions { validate_json: !cli.allow_non_json_payloads },
        max_message_bytes: cli.max_message_bytes,
        api_token: cli.api_token.clone(),
        insecure_allow_remote: cli.insecure_allow_remote,
        tls: match (&cli.tls_cert, &cli.tls_key) {
            (Some(cert), Some(key)) => Some(server::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        },
        http: cli.http.clone().into_options().context("invalid HTTP API configuration")?,
        durable_http: cli.durable_http.options().context("invalid durable HTTP configuration")?,
    };
    let otel = duro::otel::init().map_err(anyhow::Error::msg)?;
    let stop = shutdown_signal()?;
    // Start-up errors say what failed in their own words (one line).
    let mut running = server::start(config).await?;
    let otel_metrics = duro::otel_metrics::start(running.engine.clone()).map_err(anyhow::Error::msg)?;
    tokio::select! {
        _ = stop => {}
        why = running.store_died() => {
            // Every later write would fail: exit so a supervisor restarts us. No graceful
            // shutdown; nothing more can be committed anyway.
            tracing::error!(error = %why, "the store cannot write any more; exiting");
            if matches!(cli_format, LogFormat::Text) {
                eprintln!("error: {why}; exiting so that duro can be restarted");
            }
            std::process::exit(1);
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await.context("duro failed to shut down cleanly")?;
    if let Some(m) = otel_metrics {
        let _ = tokio::task::spawn_blocking(move || m.shutdown()).await;
    }
    if let Some(otel) = otel {
        // The batch exporter blocks while it flushes: off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || otel.shutdown()).await;
    }
    tracing::info!("stopped");
    Ok(())
}
