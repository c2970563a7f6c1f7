//! Command-line flags (with environment fallbacks) of durable HTTP and the choice of the
//! identity that serves `tokenSource`s. The standard Azure variables (`IDENTITY_ENDPOINT`,
//! `MSI_ENDPOINT`, `AZURE_CLIENT_ID`, …) are the fallbacks of the matching flags, so a
//! sidecar on Azure needs no flag at all; flags win, which is how tests point Duro at fakes.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use url::Url;

use super::polling::PollLimits;
use super::request::parse_http_url;
use super::tokens::{
    parse_authority, Credential, Secret, TokenOptions, DEFAULT_ALLOWED_AUTHORITIES, DEFAULT_AUTHORITY, IMDS_ENDPOINT,
};
use super::DurableHttpOptions;

/// Which identity serves `tokenSource`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IdentitySource {
    /// The first configured of: client secret, workload identity, App Service, legacy MSI; else IMDS.
    #[default]
    Auto,
    Imds,
    AppService,
    /// Legacy App Service / Azure ML (`MSI_ENDPOINT` + `MSI_SECRET`).
    Msi,
    WorkloadIdentity,
    ClientSecret,
    /// No identity: requests with a `tokenSource` fail.
    None,
}

/// Durable HTTP flags, flattened into the `duro` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct DurableHttpArgs {
    /// Largest durable HTTP response body, in bytes; a larger one fails the call
    /// (DuroHttpResponseTooLarge). The result travels in the orchestration's history, so
    /// keep it well below --max-work-item-bytes.
    #[arg(long, env = "DURO_DURABLE_HTTP_MAX_RESPONSE_BYTES", default_value_t = 1024 * 1024)]
    pub durable_http_max_response_bytes: usize,
    /// Timeout of one durable HTTP attempt (request or poll) when the request sets none.
    #[arg(long, env = "DURO_DURABLE_HTTP_TIMEOUT_SECONDS", default_value_t = 240)]
    pub durable_http_timeout_seconds: u64,
    /// Wait between polls of a 202 response without Retry-After, in milliseconds.
    #[arg(long, env = "DURO_DURABLE_HTTP_DEFAULT_POLL_INTERVAL_MS", default_value_t = 30_000)]
    pub durable_http_default_poll_interval_ms: u64,
    /// Polling of one durable HTTP call gives up after this many seconds (DuroHttpTimeout).
    #[arg(long, env = "DURO_DURABLE_HTTP_MAX_POLL_SECONDS", default_value_t = 24 * 3600)]
    pub durable_http_max_poll_seconds: u64,
    /// Polling of one durable HTTP call gives up after this many polls (DuroHttpTooManyPolls).
    #[arg(long, env = "DURO_DURABLE_HTTP_MAX_POLLS", default_value_t = 10_000)]
    pub durable_http_max_polls: u32,
    /// Redirects followed per durable HTTP attempt (each hop passes the address guard).
    #[arg(long, env = "DURO_DURABLE_HTTP_MAX_REDIRECTS", default_value_t = 10)]
    pub durable_http_max_redirects: usize,

    /// Identity that serves durable HTTP `tokenSource`s.
    #[arg(long, env = "DURO_IDENTITY_SOURCE", value_enum, default_value_t = IdentitySource::Auto)]
    pub identity_source: IdentitySource,
    /// IMDS token endpoint (override for tests or proxies).
    #[arg(long, env = "DURO_IMDS_ENDPOINT", default_value = IMDS_ENDPOINT)]
    pub identity_endpoint: String,
    /// Client id of a user-assigned managed identity (default: AZURE_CLIENT_ID, else system-assigned).
    #[arg(long, env = "DURO_IDENTITY_CLIENT_ID")]
    pub identity_client_id: Option<String>,
    /// App Service / Functions identity endpoint.
    #[arg(long, env = "IDENTITY_ENDPOINT")]
    pub app_service_identity_endpoint: Option<String>,
    /// App Service / Functions identity header value (secret).
    #[arg(long, env = "IDENTITY_HEADER", hide_env_values = true)]
    pub app_service_identity_header: Option<Secret>,
    /// Legacy App Service / Azure ML identity endpoint.
    #[arg(long, env = "MSI_ENDPOINT")]
    pub msi_endpoint: Option<String>,
    /// Legacy App Service / Azure ML identity secret.
    #[arg(long, env = "MSI_SECRET", hide_env_values = true)]
    pub msi_secret: Option<Secret>,
    /// Entra ID tenant (workload identity, client secret).
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub azure_tenant_id: Option<String>,
    /// Entra ID application (client) id; also the user-assigned managed identity by default.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub azure_client_id: Option<String>,
    /// Entra ID client secret.
    #[arg(long, env = "AZURE_CLIENT_SECRET", hide_env_values = true)]
    pub azure_client_secret: Option<Secret>,
    /// File holding the federated (workload identity) token.
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    pub azure_federated_token_file: Option<PathBuf>,
    /// Entra ID authority host.
    #[arg(long, env = "AZURE_AUTHORITY_HOST", default_value = DEFAULT_AUTHORITY)]
    pub azure_authority_host: String,
    /// Comma-separated Entra ID authorities a durable HTTP request may name in
    /// `tokenSource.options.authorityhost` (the configured --azure-authority-host always may).
    #[arg(long, env = "DURO_AZURE_ALLOWED_AUTHORITY_HOSTS", value_delimiter = ',', default_value = DEFAULT_ALLOWED_AUTHORITIES)]
    pub azure_allowed_authority_hosts: Vec<String>,
    /// Destinations durable HTTP and the Entra ID token client may reach although the
    /// address guard refuses them by default (loopback, private, link-local, CGNAT,
    /// metadata): comma-separated CIDRs, IPs or host names, e.g. `127.0.0.1,10.0.0.0/8`.
    #[arg(long = "http-allow", env = "DURO_HTTP_ALLOW", value_delimiter = ',')]
    pub http_allow: Vec<String>,
}

/// A configuration that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--identity-source {source_name} needs {missing}")]
    Missing { source_name: &'static str, missing: &'static str },
    #[error("{flag}: {problem}")]
    Invalid { flag: &'static str, problem: String },
}

fn url_flag(flag: &'static str, s: &str) -> Result<Url, ConfigError> {
    parse_http_url(s).map_err(|problem| ConfigError::Invalid { flag, problem })
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

impl DurableHttpArgs {
    /// The options these flags describe.
    pub fn options(&self) -> Result<DurableHttpOptions, ConfigError> {
        Ok(DurableHttpOptions {
            max_response_bytes: self.durable_http_max_response_bytes,
            default_timeout: Duration::from_secs(self.durable_http_timeout_seconds.max(1)),
            default_poll_interval: Duration::from_millis(self.durable_http_default_poll_interval_ms),
            poll_limits: PollLimits {
                max_polls: self.durable_http_max_polls.max(1),
                max_duration: Duration::from_secs(self.durable_http_max_poll_seconds),
            },
            max_redirects: self.durable_http_max_redirects,
            identity: self.credential()?,
            tokens: TokenOptions {
                allowed_authorities: self
                    .azure_allowed_authority_hosts
                    .iter()
                    .map(|a| a.trim())
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        parse_authority(a).map_err(|problem| ConfigError::Invalid {
                            flag: "--azure-allowed-authority-hosts",
                            problem,
                        })
                    })
                    .collect::<Result<_, _>>()?,
                ..TokenOptions::default()
            },
            allow: std::sync::Arc::new(
                super::ssrf::Allow::parse(&self.http_allow)
                    .map_err(|problem| ConfigError::Invalid { flag: "--http-allow", problem })?,
            ),
        })
    }

    /// The identity for `tokenSource`s, `None` with `--identity-source none`.
    pub fn credential(&self) -> Result<Option<Credential>, ConfigError> {
        let tenant = nonempty(&self.azure_tenant_id);
        if let Some(t) = &tenant {
            if !super::request::valid_tenant(t) {
                return Err(ConfigError::Invalid {
                    flag: "--azure-tenant-id",
                    problem: format!("'{t}' is not a GUID or a domain name"),
                });
            }
        }
        let client = nonempty(&self.azure_client_id);
        let secret = self.azure_client_secret.clone().filter(|s| !s.expose().is_empty());
        let fed_file = self.azure_federated_token_file.clone().filter(|p| !p.as_os_str().is_empty());
        let app_endpoint = nonempty(&self.app_service_identity_endpoint);
        let app_header = self.app_service_identity_header.clone().filter(|s| !s.expose().is_empty());
        let msi_endpoint = nonempty(&self.msi_endpoint);
        let msi_secret = self.msi_secret.clone().filter(|s| !s.expose().is_empty());
        let mi_client = nonempty(&self.identity_client_id).or_else(|| client.clone());
        let authority = || {
            parse_authority(&self.azure_authority_host)
                .map_err(|problem| ConfigError::Invalid { flag: "--azure-authority-host", problem })
        };

        let source = match self.identity_source {
            IdentitySource::Auto => {
                if tenant.is_some() && client.is_some() && secret.is_some() {
                    IdentitySource::ClientSecret
                } else if tenant.is_some() && client.is_some() && fed_file.is_some() {
                    IdentitySource::WorkloadIdentity
                } else if app_endpoint.is_some() && app_header.is_some() {
                    IdentitySource::AppService
                } else if msi_endpoint.is_some() && msi_secret.is_some() {
                    IdentitySource::Msi
                } else {
                    IdentitySource::Imds
                }
            }
            s => s,
        };
        let missing = |source_name, missing| ConfigError::Missing { source_name, missing };
        Ok(Some(match source {
            IdentitySource::None => return Ok(None),
            IdentitySource::Auto | IdentitySource::Imds => Credential::Imds {
                endpoint: url_flag("--identity-endpoint", &self.identity_endpoint)?,
                client_id: mi_client,
            },
            IdentitySource::AppService => Credential::AppService {
                endpoint: url_flag(
                    "--app-service-identity-endpoint",
                    &app_endpoint
                        .ok_or(missing("app-service", "--app-service-identity-endpoint (IDENTITY_ENDPOINT)"))?,
                )?,
                header: app_header.ok_or(missing("app-service", "--app-service-identity-header (IDENTITY_HEADER)"))?,
                client_id: mi_client,
            },
            IdentitySource::Msi => Credential::LegacyMsi {
                endpoint: url_flag(
                    "--msi-endpoint",
                    &msi_endpoint.ok_or(missing("msi", "--msi-endpoint (MSI_ENDPOINT)"))?,
                )?,
                secret: msi_secret.ok_or(missing("msi", "--msi-secret (MSI_SECRET)"))?,
                client_id: mi_client,
            },
            IdentitySource::WorkloadIdentity => Credential::WorkloadIdentity {
                tenant_id: tenant.ok_or(missing("workload-identity", "--azure-tenant-id (AZURE_TENANT_ID)"))?,
                client_id: client.ok_or(missing("workload-identity", "--azure-client-id (AZURE_CLIENT_ID)"))?,
                token_file: fed_file
                    .ok_or(missing("workload-identity", "--azure-federated-token-file (AZURE_FEDERATED_TOKEN_FILE)"))?,
                authority: authority()?,
            },
            IdentitySource::ClientSecret => Credential::ClientSecret {
                tenant_id: tenant.ok_or(missing("client-secret", "--azure-tenant-id (AZURE_TENANT_ID)"))?,
                client_id: client.ok_or(missing("client-secret", "--azure-client-id (AZURE_CLIENT_ID)"))?,
                secret: secret.ok_or(missing("client-secret", "--azure-client-secret (AZURE_CLIENT_SECRET)"))?,
                authority: authority()?,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        http: DurableHttpArgs,
    }

    /// Parses flags only (no environment fallbacks leak in: every env-backed field is set or
    /// cleared explicitly by the cases that matter).
    fn args(flags: &[&str]) -> DurableHttpArgs {
        let mut a = Cli::try_parse_from(std::iter::once("duro").chain(flags.iter().copied())).expect("flags").http;
        // Neutralize whatever the test machine's environment holds.
        let set = |f: &str| flags.contains(&f);
        if !set("--azure-tenant-id") {
            a.azure_tenant_id = None;
        }
        if !set("--azure-client-id") {
            a.azure_client_id = None;
        }
        if !set("--azure-client-secret") {
            a.azure_client_secret = None;
        }
        if !set("--azure-federated-token-file") {
            a.azure_federated_token_file = None;
        }
        if !set("--app-service-identity-endpoint") {
            a.app_service_identity_endpoint = None;
        }
        if !set("--app-service-identity-header") {
            a.app_service_identity_header = None;
        }
        if !set("--msi-endpoint") {
            a.msi_endpoint = None;
        }
        if !set("--msi-secret") {
            a.msi_secret = None;
        }
        if !set("--identity-client-id") {
            a.identity_client_id = None;
        }
        if !set("--identity-endpoint") {
            a.identity_endpoint = IMDS_ENDPOINT.into();
        }
        if !set("--identity-source") {
            a.identity_source = IdentitySource::Auto;
        }
        if !set("--azure-authority-host") {
            a.azure_authority_host = DEFAULT_AUTHORITY.into();
        }
        if !set("--http-allow") {
            a.http_allow = Vec::new();
        }
        a
    }

    #[test]
    fn auto_selects_in_azure_identity_order() {
        let imds = args(&[]).credential().expect("ok");
        assert!(
            matches!(imds, Some(Credential::Imds { ref endpoint, client_id: None }) if endpoint.as_str() == IMDS_ENDPOINT)
        );
        let imds = args(&["--identity-endpoint", "http://127.0.0.1:5/token", "--azure-client-id", "uami"])
            .credential()
            .expect("ok");
        assert!(
            matches!(imds, Some(Credential::Imds { ref endpoint, client_id: Some(ref c) }) if endpoint.as_str() == "http://127.0.0.1:5/token" && c == "uami"),
            "AZURE_CLIENT_ID doubles as the user-assigned identity: {imds:?}"
        );
        let app = args(&[
            "--app-service-identity-endpoint",
            "http://localhost:1/msi/token",
            "--app-service-identity-header",
            "h",
        ])
        .credential()
        .expect("ok");
        assert!(matches!(app, Some(Credential::AppService { .. })));
        let msi = args(&["--msi-endpoint", "http://localhost:1/msi", "--msi-secret", "s"]).credential().expect("ok");
        assert!(matches!(msi, Some(Credential::LegacyMsi { .. })));
        let wi = args(&["--azure-tenant-id", "t", "--azure-client-id", "c", "--azure-federated-token-file", "/f"])
            .credential()
            .expect("ok");
        assert!(matches!(wi, Some(Credential::WorkloadIdentity { .. })));
        let cs = args(&[
            "--azure-tenant-id",
            "t",
            "--azure-client-id",
            "c",
            "--azure-client-secret",
            "s",
            "--azure-federated-token-file",
            "/f",
        ])
        .credential()
        .expect("ok");
        assert!(matches!(cs, Some(Credential::ClientSecret { .. })), "client secret comes first");
    }

    #[test]
    fn explicit_sources_need_their_settings() {
        assert_eq!(args(&["--identity-source", "none"]).credential(), Ok(None));
        let e = args(&["--identity-source", "app-service"]).credential().expect_err("missing");
        assert!(e.to_string().contains("--app-service-identity-endpoint"), "{e}");
        let e =
            args(&["--identity-source", "client-secret", "--azure-tenant-id", "t"]).credential().expect_err("missing");
        assert!(e.to_string().contains("--azure-client-id"), "{e}");
        let e = args(&["--identity-endpoint", "not a url"]).credential().expect_err("bad url");
        assert!(e.to_string().contains("--identity-endpoint"), "{e}");
        let e = args(&[
            "--identity-source",
            "client-secret",
            "--azure-tenant-id",
            "t",
            "--azure-client-id",
            "c",
            "--azure-client-secret",
            "s",
            "--azure-authority-host",
            "http://login.example/",
        ])
        .credential()
        .expect_err("http authority");
        assert!(e.to_string().contains("https"), "{e}");
        let o = args(&["--durable-http-max-response-bytes", "10", "--durable-http-default-poll-interval-ms", "250"])
            .options()
            .expect("ok");
        assert_eq!(o.max_response_bytes, 10);
        assert_eq!(o.default_poll_interval, Duration::from_millis(250));
    }
}
