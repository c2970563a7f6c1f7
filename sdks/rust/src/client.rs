//! The orchestration client: start, inspect, wait for and manage instances over gRPC.
//!
//! Owns the client half of `TaskHubSidecarService` (StartInstance, GetInstance, WaitFor*,
//! RaiseEvent, Terminate, Suspend/Resume, Purge, Query, Restart, Rewind; for entities
//! SignalEntity, GetEntity, QueryEntities, CleanEntityStorage) and the mapping of gRPC status
//! codes to [`ClientError`]. Payloads are JSON through serde.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use duro_proto::{
    purge_instances_request, CleanEntityStorageRequest, CreateInstanceRequest, EntityQuery as ProtoEntityQuery,
    GetEntityRequest, GetInstanceRequest, InstanceQuery as ProtoQuery, OrchestrationIdReusePolicy, PurgeInstanceFilter,
    PurgeInstancesRequest, QueryEntitiesRequest, QueryInstancesRequest, RaiseEventRequest, RestartInstanceRequest,
    ResumeRequest, RewindInstanceRequest, SignalEntityRequest, SuspendRequest, TaskHubSidecarServiceClient,
    TerminateRequest,
};
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::entity::EntityId;
use crate::error::ClientError;
use crate::metadata::{EntityMetadata, OrchestrationMetadata, OrchestrationStatus};
use crate::payload;
use crate::time;

/// Largest message the SDK accepts or sends (the sidecar's own limit is lower by default).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How to reach a sidecar that requires authentication or TLS (Duro's `--api-token`,
/// `--tls-cert`): the API token sent as `authorization: Bearer …` on every call, and the CA
/// certificate (PEM) that signed the sidecar's certificate. The default is neither, which is
/// what a sidecar on loopback expects.
///
/// ```
/// use duro_sdk::ConnectOptions;
/// let opts = ConnectOptions::new().with_api_token("s3cret").with_tls_ca_pem(b"-----BEGIN CERTIFICATE-----".to_vec());
/// assert!(!format!("{opts:?}").contains("s3cret"));
/// ```
#[derive(Clone, Default)]
pub struct ConnectOptions {
    api_token: Option<String>,
    tls_ca_pem: Option<Vec<u8>>,
    tls_domain: Option<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(Vec::len))
            .field("tls_domain", &self.tls_domain)
            .finish()
    }
}

impl ConnectOptions {
    /// No token, no TLS.
    pub fn new() -> Self {
        Self::default()
    }

    /// From the environment: `DURO_API_TOKEN`, and `DURO_TLS_CA_FILE` (a PEM file; unreadable
    /// files are an error) with `DURO_TLS_DOMAIN` (the name in the sidecar's certificate).
    pub fn from_env() -> Result<Self, ClientError> {
        let mut o = ConnectOptions::new();
        if let Ok(t) = std::env::var("DURO_API_TOKEN") {
            if !t.is_empty() {
                o.api_token = Some(t);
            }
        }
        if let Ok(path) = std::env::var("DURO_TLS_CA_FILE") {
            if !path.is_empty() {
                let pem = std::fs::read(&path)
                    .map_err(|e| ClientError::InvalidArgument(format!("cannot read DURO_TLS_CA_FILE {path}: {e}")))?;
                o.tls_ca_pem = Some(pem);
            }
        }
        o.tls_domain = std::env::var("DURO_TLS_DOMAIN").ok().filter(|d| !d.is_empty());
        Ok(o)
    }

    /// The sidecar's API token (`--api-token`).
    pub fn with_api_token(mut self, token: impl Into<String>) -> Self {
        self.api_token = Some(token.into());
        self
    }

    /// Trust this CA certificate (PEM) for the sidecar's TLS certificate; the address must
    /// be `https://…`.
    pub fn with_tls_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.tls_ca_pem = Some(pem);
        self
    }

    /// The name the sidecar's certificate is checked against (default: the address's host).
    pub fn with_tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }
}

/// Adds the API token to every call.
#[derive(Clone, Debug, Default)]
pub struct AuthInterceptor {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// The generated gRPC client with the SDK's authentication.
pub(crate) type Grpc = TaskHubSidecarServiceClient<InterceptedService<Channel, AuthInterceptor>>;

/// The endpoint of a sidecar address like `http://127.0.0.1:4001`, with HTTP/2 keep-alive so
/// that a dead connection is noticed even while idle, and TLS when `opts` trusts a CA.
pub(crate) fn endpoint(address: &str, opts: &ConnectOptions) -> Result<Endpoint, String> {
    let mut endpoint = Endpoint::from_shared(address.to_string()).map_err(|e| e.to_string())?;
    if let Some(pem) = &opts.tls_ca_pem {
        let mut tls =
            tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        if let Some(d) = &opts.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS configuration: {e}"))?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// A lazily connecting channel (connects on first use, reconnects after failures).
pub(crate) fn channel(address: &str, opts: &ConnectOptions) -> Result<Channel, String> {
    Ok(endpoint(address, opts)?.connect_lazy())
}

pub(crate) fn grpc_client(channel: Channel, opts: &ConnectOptions) -> Result<Grpc, String> {
    let header = match &opts.api_token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| "the API token contains characters not allowed in a header".to_string())?,
        ),
        None => None,
    };
    Ok(TaskHubSidecarServiceClient::with_interceptor(channel, AuthInterceptor { header })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Which existing instance statuses a start may replace.
///
/// ```
/// use duro_sdk::{OrchestrationStatus, ReusePolicy};
/// assert!(ReusePolicy::replace_terminal().replaceable_statuses.contains(&OrchestrationStatus::Failed));
/// assert!(ReusePolicy::never().replaceable_statuses.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReusePolicy {
    /// An existing instance in one of these statuses is replaced (terminated first if still
    /// running); any other status makes the start fail with
    /// [`ClientError::AlreadyExists`].
    pub replaceable_statuses: Vec<OrchestrationStatus>,
}

impl ReusePolicy {
    /// Never replace: any existing instance with the id is a conflict.
    pub fn never() -> Self {
        ReusePolicy { replaceable_statuses: Vec::new() }
    }

    /// Replace finished instances (Completed, Failed, Terminated, Canceled).
    pub fn replace_terminal() -> Self {
        ReusePolicy {
            replaceable_statuses: vec![
                OrchestrationStatus::Completed,
                OrchestrationStatus::Failed,
                OrchestrationStatus::Terminated,
                OrchestrationStatus::Canceled,
            ],
        }
    }

    /// Replace in any status, terminating a live instance first.
    pub fn replace_any() -> Self {
        let mut p = Self::replace_terminal();
        p.replaceable_statuses.extend([
            OrchestrationStatus::Running,
            OrchestrationStatus::Pending,
            OrchestrationStatus::Suspended,
        ]);
        p
    }
}

/// Options of [`Client::start_orchestration_with`].
///
/// ```
/// use duro_sdk::{ReusePolicy, StartOptions};
/// let opts = StartOptions::new()
///     .with_instance_id("order-42")
///     .with_start_time(chrono::Utc::now() + chrono::Duration::minutes(5))
///     .with_reuse_policy(ReusePolicy::replace_terminal());
/// assert_eq!(opts.instance_id.as_deref(), Some("order-42"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StartOptions {
    /// Instance id; a random UUID if `None`.
    pub instance_id: Option<String>,
    /// Start no earlier than this time.
    pub start_at: Option<DateTime<Utc>>,
    /// What to do if the id exists; `None` = the sidecar's default (Duro: replace finished
    /// instances, reject live ones).
    pub reuse_policy: Option<ReusePolicy>,
    /// Orchestration version.
    pub version: Option<String>,
    /// Tags stored with the instance.
    pub tags: BTreeMap<String, String>,
}

impl StartOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the instance id.
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Delays the start until `at`.
    pub fn with_start_time(mut self, at: DateTime<Utc>) -> Self {
        self.start_at = Some(at);
        self
    }

    /// Sets the id reuse policy.
    pub fn with_reuse_policy(mut self, policy: ReusePolicy) -> Self {
        self.reuse_policy = Some(policy);
        self
    }

    /// Sets the version.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }
}

/// A filter (and page) for [`Client::query`].
///
/// ```
/// use duro_sdk::{InstanceQuery, OrchestrationStatus};
/// let q = InstanceQuery::new()
///     .with_statuses([OrchestrationStatus::Running, OrchestrationStatus::Pending])
///     .with_instance_id_prefix("order-")
///     .with_page_size(50);
/// assert_eq!(q.page_size, 50);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceQuery {
    /// Only these statuses (empty = all).
    pub statuses: Vec<OrchestrationStatus>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
    /// Instance ids starting with this prefix.
    pub instance_id_prefix: Option<String>,
    /// Page size (0 = the sidecar's default).
    pub page_size: u32,
    /// Continuation token of the previous page.
    pub continuation_token: Option<String>,
    /// Include inputs, outputs and custom status.
    pub fetch_payloads: bool,
}

impl InstanceQuery {
    /// Matches every instance.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restricts to statuses.
    pub fn with_statuses(mut self, statuses: impl IntoIterator<Item = OrchestrationStatus>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Restricts the creation time to `[from, to)`.
    pub fn with_created_between(mut self, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Self {
        self.created_from = from;
        self.created_to = to;
        self
    }

    /// Restricts to an instance id prefix.
    pub fn with_instance_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.instance_id_prefix = Some(prefix.into());
        self
    }

    /// Sets the page size.
    pub fn with_page_size(mut self, size: u32) -> Self {
        self.page_size = size;
        self
    }

    /// Continues after a previous page.
    pub fn with_continuation_token(mut self, token: impl Into<String>) -> Self {
        self.continuation_token = Some(token.into());
        self
    }

    /// Includes payloads in the results.
    pub fn with_payloads(mut self, fetch: bool) -> Self {
        self.fetch_payloads = fetch;
        self
    }
}

/// One page of [`Client::query`] results.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    /// The instances of this page.
    pub instances: Vec<OrchestrationMetadata>,
    /// Token for the next page; `None` at the end.
    pub continuation_token: Option<String>,
}

/// A filter (and page) for [`Client::query_entities`].
///
/// ```
/// use duro_sdk::EntityQuery;
/// let q = EntityQuery::new().with_id_prefix("@account@").with_state(true).with_page_size(50);
/// assert!(q.include_state);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityQuery {
    /// Entity ids starting with this prefix, e.g. `@account@` for every account (the name
    /// part is case-insensitive).
    pub id_prefix: Option<String>,
    /// Last modified at or after.
    pub last_modified_from: Option<DateTime<Utc>>,
    /// Last modified before.
    pub last_modified_to: Option<DateTime<Utc>>,
    /// Include each entity's state.
    pub include_state: bool,
    /// Include entities without state that are locked or have queued requests.
    pub include_transient: bool,
    /// Page size (0 = the sidecar's default).
    pub page_size: u32,
    /// Continuation token of the previous page.
    pub continuation_token: Option<String>,
}

impl EntityQuery {
    /// Matches every entity that has state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restricts to an id prefix.
    pub fn with_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = Some(prefix.into());
        self
    }

    /// Restricts the last-modified time to `[from, to)`.
    pub fn with_last_modified_between(mut self, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Self {
        self.last_modified_from = from;
        self.last_modified_to = to;
        self
    }

    /// Includes the state.
    pub fn with_state(mut self, include: bool) -> Self {
        self.include_state = include;
        self
    }

    /// Includes transient entities (no state, but locked or with queued requests).
    pub fn with_transient(mut self, include: bool) -> Self {
        self.include_transient = include;
        self
    }

    /// Sets the page size.
    pub fn with_page_size(mut self, size: u32) -> Self {
        self.page_size = size;
        self
    }
}

/// One page of [`Client::query_entities`] results.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityQueryPage {
    /// The entities of this page, by id.
    pub entities: Vec<EntityMetadata>,
    /// Token for the next page; `None` at the end.
    pub continuation_token: Option<String>,
}

/// What [`Client::clean_entity_storage`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanEntityStorageResult {
    /// Entities without state, lock or queued requests that were removed.
    pub empty_entities_removed: u32,
    /// Locks held by orchestrations that no longer run that were released.
    pub orphaned_locks_released: u32,
}

/// Which finished instances [`Client::purge_by_filter`] deletes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PurgeFilter {
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
    /// Only these (terminal) statuses; empty = all terminal statuses.
    pub statuses: Vec<OrchestrationStatus>,
}

/// A client of a Duro (or any Durable Task) sidecar. Cheap to clone.
///
/// ```no_run
/// use duro_sdk::Client;
/// use std::time::Duration;
///
/// # async fn demo() -> Result<(), duro_sdk::ClientError> {
/// let client = Client::connect("http://127.0.0.1:4001").await?;
/// let id = client.start_orchestration("HelloSequence", ()).await?;
/// let state = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
/// let greetings: Vec<String> = state.output()?;
/// println!("{greetings:?}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    grpc: Grpc,
}

impl Client {
    /// Connects to the sidecar at `address` (e.g. `http://127.0.0.1:4001`), failing if it is
    /// unreachable.
    pub async fn connect(address: impl Into<String>) -> Result<Self, ClientError> {
        Self::connect_with(address, &ConnectOptions::default()).await
    }

    /// Connects with an API token and/or TLS ([`ConnectOptions`]).
    pub async fn connect_with(address: impl Into<String>, opts: &ConnectOptions) -> Result<Self, ClientError> {
        let channel = endpoint(&address.into(), opts).map_err(ClientError::InvalidArgument)?.connect().await?;
        Self::from_channel_with(channel, opts)
    }

    /// A client that connects on first use (and reconnects after the sidecar restarts).
    pub fn connect_lazy(address: impl Into<String>) -> Result<Self, ClientError> {
        Self::connect_lazy_with(address, &ConnectOptions::default())
    }

    /// [`Client::connect_lazy`] with an API token and/or TLS.
    pub fn connect_lazy_with(address: impl Into<String>, opts: &ConnectOptions) -> Result<Self, ClientError> {
        let channel = channel(&address.into(), opts).map_err(ClientError::InvalidArgument)?;
        Self::from_channel_with(channel, opts)
    }

    /// A client on an existing tonic channel.
    pub fn from_channel(channel: Channel) -> Self {
        // No token: nothing can fail.
        let grpc = grpc_client(channel.clone(), &ConnectOptions::default())
            .unwrap_or_else(|_| TaskHubSidecarServiceClient::with_interceptor(channel, AuthInterceptor::default()));
        Client { grpc }
    }

    /// A client on an existing tonic channel, sending `opts`' API token.
    pub fn from_channel_with(channel: Channel, opts: &ConnectOptions) -> Result<Self, ClientError> {
        Ok(Client { grpc: grpc_client(channel, opts).map_err(ClientError::InvalidArgument)? })
    }

    /// Starts orchestrator `name` with `input` under a new random instance id; returns the id.
    pub async fn start_orchestration(&self, name: &str, input: impl Serialize) -> Result<String, ClientError> {
        self.start_orchestration_with(name, input, StartOptions::default()).await
    }

    /// Starts orchestrator `name` with options (instance id, start time, reuse policy, …).
    ///
    /// ```no_run
    /// # use duro_sdk::{Client, ClientError, StartOptions, ReusePolicy};
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let opts = StartOptions::new().with_instance_id("order-42").with_reuse_policy(ReusePolicy::never());
    /// match client.start_orchestration_with("ProcessOrder", 42, opts).await {
    ///     Ok(id) => println!("started {id}"),
    ///     Err(ClientError::AlreadyExists(_)) => println!("already running"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn start_orchestration_with(
        &self,
        name: &str,
        input: impl Serialize,
        options: StartOptions,
    ) -> Result<String, ClientError> {
        let instance_id = options.instance_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let request = CreateInstanceRequest {
            instance_id: instance_id.clone(),
            name: name.to_string(),
            version: options.version,
            input: Some(payload::encode(&input)?),
            scheduled_start_timestamp: options.start_at.map(time::to_timestamp),
            orchestration_id_reuse_policy: options.reuse_policy.map(|p| OrchestrationIdReusePolicy {
                replaceable_status: p.replaceable_statuses.iter().map(|s| s.to_proto() as i32).collect(),
                legacy_action: 0,
            }),
            tags: options.tags.into_iter().collect(),
            request_time: Some(time::to_timestamp(Utc::now())),
            ..Default::default()
        };
        let response = self.grpc.clone().start_instance(request).await?.into_inner();
        Ok(if response.instance_id.is_empty() { instance_id } else { response.instance_id })
    }

    /// The instance's state, or `None` if it does not exist. With `fetch_payloads`, input,
    /// output and custom status are included.
    pub async fn get_orchestration(
        &self,
        instance_id: &str,
        fetch_payloads: bool,
    ) -> Result<Option<OrchestrationMetadata>, ClientError> {
        let r = self
            .grpc
            .clone()
            .get_instance(GetInstanceRequest {
                instance_id: instance_id.to_string(),
                get_inputs_and_outputs: fetch_payloads,
            })
            .await?
            .into_inner();
        Ok(if r.exists { r.orchestration_state.map(OrchestrationMetadata::from_proto) } else { None })
    }

    /// Waits until the instance has started (left PENDING), up to `timeout`.
    pub async fn wait_for_start(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<OrchestrationMetadata, ClientError> {
        self.wait(instance_id, timeout, false).await
    }

    /// Waits until the instance has finished (COMPLETED, FAILED, TERMINATED), up to
    /// `timeout`; payloads are included.
    ///
    /// ```no_run
    /// # use duro_sdk::{Client, ClientError};
    /// # use std::time::Duration;
    /// # async fn demo(client: Client, id: String) -> Result<(), ClientError> {
    /// match client.wait_for_completion(&id, Duration::from_secs(60)).await {
    ///     Ok(state) => println!("{:?}: {:?}", state.status, state.serialized_output),
    ///     Err(ClientError::Timeout { .. }) => println!("still running"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_completion(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<OrchestrationMetadata, ClientError> {
        self.wait(instance_id, timeout, true).await
    }

    async fn wait(
        &self,
        instance_id: &str,
        timeout: Duration,
        completion: bool,
    ) -> Result<OrchestrationMetadata, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || ClientError::Timeout { instance_id: instance_id.to_string(), timeout };
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(timed_out());
            }
            let mut request = tonic::Request::new(GetInstanceRequest {
                instance_id: instance_id.to_string(),
                get_inputs_and_outputs: true,
            });
            request.set_timeout(remaining);
            let mut grpc = self.grpc.clone();
            let call = async move {
                if completion {
                    grpc.wait_for_instance_completion(request).await
                } else {
                    grpc.wait_for_instance_start(request).await
                }
            };
            match tokio::time::timeout_at(deadline, call).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    return match (r.exists, r.orchestration_state) {
                        (true, Some(state)) => Ok(OrchestrationMetadata::from_proto(state)),
                        _ => Err(ClientError::NotFound(format!("no orchestration instance '{instance_id}'"))),
                    };
                }
                // The sidecar caps each wait; keep waiting until our own deadline.
                Ok(Err(status)) if matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {}
                Ok(Err(status)) => return Err(status.into()),
            }
        }
    }

    /// Raises external event `name` with `data` on an instance.
    pub async fn raise_event(&self, instance_id: &str, name: &str, data: impl Serialize) -> Result<(), ClientError> {
        self.grpc
            .clone()
            .raise_event(RaiseEventRequest {
                instance_id: instance_id.to_string(),
                name: name.to_string(),
                input: Some(payload::encode(&data)?),
            })
            .await?;
        Ok(())
    }

    /// Terminates an instance with `output`; with `recursive`, its sub-orchestrations too.
    /// Terminating a finished or unknown instance does nothing.
    pub async fn terminate(
        &self,
        instance_id: &str,
        output: impl Serialize,
        recursive: bool,
    ) -> Result<(), ClientError> {
        self.grpc
            .clone()
            .terminate_instance(TerminateRequest {
                instance_id: instance_id.to_string(),
                output: Some(payload::encode(&output)?),
                recursive,
            })
            .await?;
        Ok(())
    }

    /// Suspends an instance: it records no progress until resumed (events are kept).
    pub async fn suspend(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        self.grpc
            .clone()
            .suspend_instance(SuspendRequest {
                instance_id: instance_id.to_string(),
                reason: reason.map(str::to_string),
            })
            .await?;
        Ok(())
    }

    /// Resumes a suspended instance.
    pub async fn resume(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        self.grpc
            .clone()
            .resume_instance(ResumeRequest { instance_id: instance_id.to_string(), reason: reason.map(str::to_string) })
            .await?;
        Ok(())
    }

    /// Deletes a finished instance (and with `recursive` its sub-orchestrations); returns the
    /// number of instances deleted (0 if it is unknown or still running).
    pub async fn purge(&self, instance_id: &str, recursive: bool) -> Result<u32, ClientError> {
        self.purge_request(purge_instances_request::Request::InstanceId(instance_id.to_string()), recursive).await
    }

    /// Deletes the finished instances matching `filter`; returns how many were deleted.
    pub async fn purge_by_filter(&self, filter: PurgeFilter, recursive: bool) -> Result<u32, ClientError> {
        let f = PurgeInstanceFilter {
            created_time_from: filter.created_from.map(time::to_timestamp),
            created_time_to: filter.created_to.map(time::to_timestamp),
            runtime_status: filter.statuses.iter().map(|s| s.to_proto() as i32).collect(),
            timeout: None,
        };
        self.purge_request(purge_instances_request::Request::PurgeInstanceFilter(f), recursive).await
    }

    async fn purge_request(
        &self,
        request: purge_instances_request::Request,
        recursive: bool,
    ) -> Result<u32, ClientError> {
        let r = self
            .grpc
            .clone()
            .purge_instances(PurgeInstancesRequest { request: Some(request), recursive, is_orchestration: true })
            .await?
            .into_inner();
        Ok(u32::try_from(r.deleted_instance_count).unwrap_or(0))
    }

    /// One page of instances matching `query`.
    ///
    /// ```no_run
    /// # use duro_sdk::{Client, ClientError, InstanceQuery, OrchestrationStatus};
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let mut query = InstanceQuery::new().with_statuses([OrchestrationStatus::Failed]).with_page_size(100);
    /// loop {
    ///     let page = client.query(&query).await?;
    ///     for instance in &page.instances {
    ///         println!("{} failed: {:?}", instance.instance_id, instance.failure_details);
    ///     }
    ///     match page.continuation_token {
    ///         Some(token) => query.continuation_token = Some(token),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query(&self, query: &InstanceQuery) -> Result<QueryPage, ClientError> {
        let q = ProtoQuery {
            runtime_status: query.statuses.iter().map(|s| s.to_proto() as i32).collect(),
            created_time_from: query.created_from.map(time::to_timestamp),
            created_time_to: query.created_to.map(time::to_timestamp),
            task_hub_names: Vec::new(),
            max_instance_count: i32::try_from(query.page_size).unwrap_or(i32::MAX),
            continuation_token: query.continuation_token.clone(),
            instance_id_prefix: query.instance_id_prefix.clone(),
            fetch_inputs_and_outputs: query.fetch_payloads,
        };
        let r = self.grpc.clone().query_instances(QueryInstancesRequest { query: Some(q) }).await?.into_inner();
        let continuation_token = r.continuation_token.filter(|t| !t.is_empty() && t != "0");
        Ok(QueryPage {
            instances: r.orchestration_state.into_iter().map(OrchestrationMetadata::from_proto).collect(),
            continuation_token,
        })
    }

    /// All instances matching `query`, following continuation tokens.
    pub async fn query_all(&self, mut query: InstanceQuery) -> Result<Vec<OrchestrationMetadata>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page = self.query(&query).await?;
            all.extend(page.instances);
            match page.continuation_token {
                Some(t) if query.continuation_token.as_ref() != Some(&t) => query.continuation_token = Some(t),
                _ => return Ok(all),
            }
        }
    }

    /// Starts a finished instance again with its original name and input, under the same id
    /// or (with `new_instance_id`) a new one; returns the id.
    pub async fn restart(&self, instance_id: &str, new_instance_id: bool) -> Result<String, ClientError> {
        let r = self
            .grpc
            .clone()
            .restart_instance(RestartInstanceRequest {
                instance_id: instance_id.to_string(),
                restart_with_new_instance_id: new_instance_id,
            })
            .await?
            .into_inner();
        Ok(r.instance_id)
    }

    /// Rewinds a FAILED instance: its failed tasks are forgotten and run again.
    pub async fn rewind(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        self.grpc
            .clone()
            .rewind_instance(RewindInstanceRequest {
                instance_id: instance_id.to_string(),
                reason: reason.map(str::to_string),
            })
            .await?;
        Ok(())
    }

    /// Signals operation `operation` with `input` on an entity (fire and forget). The signal
    /// is stored when this returns; the entity runs it once, in arrival order, when a worker
    /// that hosts the entity is connected.
    ///
    /// ```no_run
    /// # use duro_sdk::{Client, ClientError, EntityId};
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// client.signal_entity(&EntityId::new("Counter", "visits"), "add", 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn signal_entity(
        &self,
        entity: &EntityId,
        operation: &str,
        input: impl Serialize,
    ) -> Result<(), ClientError> {
        self.send_signal(entity, operation, input, None).await
    }

    /// Like [`signal_entity`](Self::signal_entity), run no earlier than `at`.
    pub async fn signal_entity_at(
        &self,
        entity: &EntityId,
        operation: &str,
        input: impl Serialize,
        at: DateTime<Utc>,
    ) -> Result<(), ClientError> {
        self.send_signal(entity, operation, input, Some(at)).await
    }

    async fn send_signal(
        &self,
        entity: &EntityId,
        operation: &str,
        input: impl Serialize,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), ClientError> {
        entity.validate().map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        self.grpc
            .clone()
            .signal_entity(SignalEntityRequest {
                instance_id: entity.to_string(),
                name: operation.to_string(),
                input: Some(payload::encode(&input)?),
                request_id: uuid::Uuid::new_v4().to_string(),
                scheduled_time: at.map(time::to_timestamp),
                parent_trace_context: None,
                request_time: Some(time::to_timestamp(Utc::now())),
            })
            .await?;
        Ok(())
    }

    /// The entity, or `None` if it has no state (an entity exists while it has state). With
    /// `include_state`, its state is included.
    ///
    /// ```no_run
    /// # use duro_sdk::{Client, ClientError, EntityId};
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// if let Some(counter) = client.get_entity(&EntityId::new("Counter", "visits"), true).await? {
    ///     println!("visits: {:?}", counter.state::<i64>()?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_entity(
        &self,
        entity: &EntityId,
        include_state: bool,
    ) -> Result<Option<EntityMetadata>, ClientError> {
        let r = self
            .grpc
            .clone()
            .get_entity(GetEntityRequest { instance_id: entity.to_string(), include_state })
            .await?
            .into_inner();
        match (r.exists, r.entity) {
            (true, Some(m)) => Ok(Some(EntityMetadata::from_proto(m)?)),
            _ => Ok(None),
        }
    }

    /// One page of entities matching `query`.
    pub async fn query_entities(&self, query: &EntityQuery) -> Result<EntityQueryPage, ClientError> {
        let q = ProtoEntityQuery {
            instance_id_starts_with: query.id_prefix.clone(),
            last_modified_from: query.last_modified_from.map(time::to_timestamp),
            last_modified_to: query.last_modified_to.map(time::to_timestamp),
            include_state: query.include_state,
            include_transient: query.include_transient,
            page_size: (query.page_size > 0).then(|| i32::try_from(query.page_size).unwrap_or(i32::MAX)),
            continuation_token: query.continuation_token.clone(),
        };
        let r = self.grpc.clone().query_entities(QueryEntitiesRequest { query: Some(q) }).await?.into_inner();
        Ok(EntityQueryPage {
            entities: r.entities.into_iter().map(EntityMetadata::from_proto).collect::<Result<_, _>>()?,
            continuation_token: r.continuation_token.filter(|t| !t.is_empty() && t != "0"),
        })
    }

    /// All entities matching `query`, following continuation tokens.
    ///
    /// ```no_run
    /// # use duro_sdk::{Client, ClientError, EntityQuery};
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// for account in client.query_all_entities(EntityQuery::new().with_id_prefix("@account@").with_state(true)).await? {
    ///     println!("{}: {:?}", account.id.key(), account.state::<i64>()?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query_all_entities(&self, mut query: EntityQuery) -> Result<Vec<EntityMetadata>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page = self.query_entities(&query).await?;
            all.extend(page.entities);
            match page.continuation_token {
                Some(t) if query.continuation_token.as_ref() != Some(&t) => query.continuation_token = Some(t),
                _ => return Ok(all),
            }
        }
    }

    /// Removes entities that hold nothing (no state, lock or queued request) and/or releases
    /// locks whose owners no longer run, over the whole task hub.
    pub async fn clean_entity_storage(
        &self,
        remove_empty_entities: bool,
        release_orphaned_locks: bool,
    ) -> Result<CleanEntityStorageResult, ClientError> {
        let mut total = CleanEntityStorageResult::default();
        let mut token: Option<String> = None;
        loop {
            let r = self
                .grpc
                .clone()
                .clean_entity_storage(CleanEntityStorageRequest {
                    continuation_token: token.clone(),
                    remove_empty_entities,
                    release_orphaned_locks,
                })
                .await?
                .into_inner();
            total.empty_entities_removed += u32::try_from(r.empty_entities_removed).unwrap_or(0);
            total.orphaned_locks_released += u32::try_from(r.orphaned_locks_released).unwrap_or(0);
            match r.continuation_token.filter(|t| !t.is_empty()) {
                Some(t) if token.as_ref() != Some(&t) => token = Some(t),
                _ => return Ok(total),
            }
        }
    }
}
