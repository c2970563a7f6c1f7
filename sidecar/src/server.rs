//! Wires store, engine and gRPC service together and runs them until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use duro_proto::task_hub_sidecar_service_server::TaskHubSidecarServiceServer;
use thiserror::Error;

use crate::engine::{Engine, EngineError, EngineOptions};
use crate::grpc::{ServiceOptions, SidecarService};
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Leases, Store, StoreError};

/// gRPC streams (calls) one connection may have open at once.
const GRPC_MAX_STREAMS: u32 = 1024;
/// Largest header block (metadata) of one gRPC call.
const GRPC_MAX_HEADER_BYTES: u32 = 64 * 1024;

/// Everything the `duro` binary can be told.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    /// PostgreSQL instead of the SQLite file `db` (a task hub shared with other sidecars).
    pub postgres: Option<PgOptions>,
    pub sqlite: SqliteOptions,
    pub engine: EngineOptions,
    pub service: ServiceOptions,
    /// Largest gRPC message accepted and sent.
    pub max_message_bytes: usize,
    /// gRPC API token (`authorization: Bearer …` on every call); `None`: open, loopback only.
    pub api_token: Option<ApiToken>,
    /// Serve gRPC without a token on a non-loopback address (`--insecure-allow-remote`).
    pub insecure_allow_remote: bool,
    /// TLS for gRPC: certificate chain and private key, PEM files. `None`: plain HTTP/2.
    pub tls: Option<TlsFiles>,
    /// The HTTP management API; `None`: not served.
    pub http: Option<crate::http::HttpOptions>,
    /// Durable HTTP (`BuiltIn::HttpActivity`), run by the sidecar itself.
    pub durable_http: crate::durable_http::DurableHttpOptions,
}

/// PEM files of the gRPC server's TLS identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The gRPC API token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(pub String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl std::str::FromStr for ApiToken {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ApiToken(s.to_string()))
    }
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(
        "refusing to serve gRPC on {0}, which is not a loopback address, without authentication: set --api-token \
         (DURO_API_TOKEN; workers and clients send 'authorization: Bearer <token>'), or pass --insecure-allow-remote \
         if a network boundary you trust protects this port"
    )]
    InsecureRemote(SocketAddr),
    #[error("cannot open the store at {path}: {source}", path = path.display())]
    Store { path: PathBuf, source: StoreError },
    #[error("cannot open the PostgreSQL task hub '{hub}' at {at}: {source}")]
    Postgres { hub: String, at: String, source: StoreError },
    /// The store refused to open (in use, missing directory, read-only, damaged): its own
    /// sentence names the file, the cause and what to do.
    #[error(transparent)]
    InUse(StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot read the TLS {what} file {path}: {source}", path = path.display())]
    TlsFile { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("invalid TLS configuration (--tls-cert, --tls-key: PEM certificate chain and private key): {0}")]
    Tls(tonic::transport::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    DurableHttp(#[from] crate::durable_http::DurableHttpError),
}

/// A running sidecar, bound and serving.
pub struct Running {
    pub local_addr: SocketAddr,
    pub engine: Engine,
    /// The HTTP management API, when served.
    pub http: Option<crate::http::HttpServer>,
    /// Liveness and readiness (`/readyz`, `grpc.health.v1`).
    pub health: Arc<crate::health::Health>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
    stop: tokio::sync::oneshot::Sender<()>,
    store_died: Option<futures::future::BoxFuture<'static, String>>,
}

impl Running {
    /// Resolves, with the reason, if the store can no longer write (its writer thread
    /// died): the process should exit non-zero so a supervisor restarts it.
    pub async fn store_died(&mut self) -> String {
        match self.store_died.take() {
            Some(died) => died.await,
            None => std::future::pending().await,
        }
    }

    /// Stops accepting work, ends streams with UNAVAILABLE and waits for the server.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.health.set_stopping().await;
        self.engine.shutdown();
        let _ = self.stop.send(());
        if let Some(http) = self.http {
            http.shutdown().await;
        }
        let served = tokio::time::timeout(crate::grpc::SHUTDOWN_GRACE, self.task).await;
        self.engine.release_leases().await;
        match served {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => {
                tracing::error!(error = %join, "server task ended abnormally");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("in-flight calls did not finish within the shutdown grace period");
                Ok(())
            }
        }
    }
}

type StoreDied = Option<futures::future::BoxFuture<'static, String>>;

/// Opens the configured store: SQLite (with the signal that its writer died), or PostgreSQL
/// with the leases of a shared task hub.
async fn open_store(config: &Config) -> Result<(Arc<dyn Store>, Option<Arc<dyn Leases>>, StoreDied), ServerError> {
    if let Some(pg) = &config.postgres {
        let store = PgStore::open(pg.clone()).await.map_err(|source| ServerError::Postgres {
            hub: pg.hub.clone(),
            at: pg.redacted_url(),
            source,
        })?;
        let store = Arc::new(store);
        return Ok((store.clone(), Some(store), None));
    }
    let store = SqliteStore::open(&config.db, config.sqlite.clone()).await.map_err(|source| match source {
        e @ (StoreError::InUse { .. }
        | StoreError::NoDirectory { .. }
        | StoreError::ReadOnly { .. }
        | StoreError::Damaged { .. }) => ServerError::InUse(e),
        source => ServerError::Store { path: config.db.clone(), source },
    })?;
    let died = Some(Box::pin(store.writer_died()) as futures::future::BoxFuture<'static, String>);
    Ok((Arc::new(store), None, died))
}

/// Opens the store, recovers pending work and starts serving.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let token = config.api_token.as_ref().map(|t| t.0.as_str()).filter(|t| !t.is_empty());
    if token.is_none() && !config.listen.ip().is_loopback() && !config.insecure_allow_remote {
        return Err(ServerError::InsecureRemote(config.listen));
    }
    let auth = crate::grpc::auth::ApiTokenCheck::new(token);
    let tls = match &config.tls {
        Some(files) => {
            let read = |what: &'static str, path: &PathBuf| {
                std::fs::read(path).map_err(|source| ServerError::TlsFile { what, path: path.clone(), source })
            };
            let identity =
                tonic::transport::Identity::from_pem(read("certificate", &files.cert)?, read("key", &files.key)?);
            Some(tonic::transport::ServerTlsConfig::new().identity(identity))
        }
        None => None,
    };
    // Checked before the store opens: a bad certificate is a start-up error.
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(ServerError::Tls)?;
    }
    let (store, leases, store_died) = open_store(&config).await?;
    let durable_http = crate::durable_http::HttpActivity::new(config.durable_http.clone())?;
    let engine = Engine::start_shared(store, leases, config.engine.clone(), vec![Arc::new(durable_http)]).await?;
    let (health, health_service) = crate::health::Health::new(engine.store().clone());
    // Served before the gRPC port opens, so a client that sees gRPC up finds HTTP up too.
    let http = match config.http.clone() {
        Some(opts) => crate::http::start(engine.clone(), opts, health.clone()).await?,
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.listen, source })?;
    let service = TaskHubSidecarServiceServer::new(SidecarService::new(engine.clone(), config.service.clone()))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let service = tonic::service::interceptor::InterceptedService::new(service, auth);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Nagle off on every accepted connection: small work items and completions must not
    // wait for delayed ACKs (the builder's `tcp_nodelay` does not apply to a custom incoming).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        builder
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // A peer that stops answering pings is dropped (its streams' leases come back).
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            // Limits per connection: open streams, requests in progress, header size.
            .max_concurrent_streams(Some(GRPC_MAX_STREAMS))
            .concurrency_limit_per_connection(GRPC_MAX_STREAMS as usize)
            .http2_max_header_list_size(Some(GRPC_MAX_HEADER_BYTES))
            .add_service(service)
            // Not behind the API token: it tells serving or not, nothing else.
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await?;
        Ok(())
    });
    // The listener is bound: calls queue until the task accepts them.
    health.set_grpc_serving(true);
    tokio::spawn(health.clone().run(engine.shutdown_signal()));
    tracing::info!(
        address = %local_addr,
        db = %match &config.postgres {
            Some(pg) => format!("{} (task hub '{}', sidecar '{}')", pg.redacted_url(), pg.hub, pg.owner),
            None => config.db.display().to_string(),
        },
        tls = config.tls.is_some(),
        auth = if token.is_some() { "api token" } else { "none (loopback or --insecure-allow-remote)" },
        "duro is serving the Durable Task sidecar protocol"
    );
    Ok(Running { local_addr, engine, http, health, task, stop, store_died })
}
