//! A small Twilio Messaging client on reqwest: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`
//! with basic auth and the form fields `To`, `From`, `Body`. Twilio's JSON errors become
//! [`TwilioError::Api`]; 429 and 5xx answers are retried with exponential backoff.

use std::time::Duration;

use serde::Deserialize;

/// Twilio settings, usually from the environment (see [`TwilioConfig::from_env`]).
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    /// `TWILIO_ACCOUNT_SID` (`AC…`).
    pub account_sid: String,
    /// `TWILIO_AUTH_TOKEN`.
    pub auth_token: String,
    /// `TWILIO_FROM`: the sender number (E.164).
    pub from: String,
    /// `TWILIO_BASE_URL`, default `https://api.twilio.com`.
    pub base_url: String,
}

impl TwilioConfig {
    /// Reads `TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`, `TWILIO_FROM` and `TWILIO_BASE_URL`.
    pub fn from_env() -> Result<Self, TwilioError> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| TwilioError::MissingConfig(name));
        Ok(Self {
            account_sid: var("TWILIO_ACCOUNT_SID")?,
            auth_token: var("TWILIO_AUTH_TOKEN")?,
            from: var("TWILIO_FROM")?,
            base_url: std::env::var("TWILIO_BASE_URL").unwrap_or_else(|_| "https://api.twilio.com".to_string()),
        })
    }
}

/// Twilio's error body: `{"code":21211,"message":"…","more_info":"…","status":400}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TwilioApiError {
    /// Twilio error code (e.g. 21211 "invalid To number").
    pub code: Option<u32>,
    /// Human-readable message.
    pub message: String,
    /// Documentation link.
    #[serde(default)]
    pub more_info: Option<String>,
    /// HTTP status.
    pub status: u16,
}

/// The parts of Twilio's message resource this sample uses.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct MessageResource {
    /// `SM…`.
    pub sid: String,
    /// `queued`, `sent`, …
    pub status: String,
    /// Recipient.
    pub to: String,
    /// Sender.
    pub from: String,
    /// Text.
    pub body: String,
}

/// What can go wrong sending an SMS.
#[derive(Debug, thiserror::Error)]
pub enum TwilioError {
    /// A required environment variable is not set.
    #[error("missing configuration: {0} is not set")]
    MissingConfig(&'static str),
    /// Twilio rejected the request (4xx other than 429, or the last retried 429/5xx).
    #[error("Twilio error {code:?} (HTTP {status}): {message}", code = .0.code, status = .0.status, message = .0.message)]
    Api(TwilioApiError),
    /// Bad credentials (HTTP 401).
    #[error("Twilio authentication failed: {0}")]
    Unauthorized(String),
    /// A non-JSON or unexpected answer.
    #[error("unexpected Twilio answer (HTTP {status}): {body}")]
    Unexpected {
        /// HTTP status.
        status: u16,
        /// The body, truncated.
        body: String,
    },
    /// Network or TLS failure.
    #[error("could not reach Twilio: {0}")]
    Transport(#[from] reqwest::Error),
}

impl TwilioError {
    /// Whether retrying later may help (used to make activity failures retriable or not).
    pub fn is_transient(&self) -> bool {
        match self {
            TwilioError::Api(e) => e.status == 429 || e.status >= 500,
            TwilioError::Unexpected { status, .. } => *status == 429 || *status >= 500,
            TwilioError::Transport(_) => true,
            TwilioError::MissingConfig(_) | TwilioError::Unauthorized(_) => false,
        }
    }
}

/// The client.
#[derive(Debug, Clone)]
pub struct TwilioClient {
    config: TwilioConfig,
    http: reqwest::Client,
    max_attempts: u32,
    initial_backoff: Duration,
}

impl TwilioClient {
    /// A client with 4 attempts and 200 ms initial backoff.
    pub fn new(config: TwilioConfig) -> Self {
        Self {
            config,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default(),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
        }
    }

    /// Overrides the retry policy for 429/5xx answers and transport errors.
    pub fn with_retries(mut self, max_attempts: u32, initial_backoff: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.initial_backoff = initial_backoff;
        self
    }

    /// Sends `body` to `to` (E.164).
    pub async fn send_sms(&self, to: &str, body: &str) -> Result<MessageResource, TwilioError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.config.base_url.trim_end_matches('/'),
            self.config.account_sid
        );
        let form = [("To", to), ("From", self.config.from.as_str()), ("Body", body)];
        let mut backoff = self.initial_backoff;
        let mut attempt = 1;
        loop {
            let result = self.send_once(&url, &form).await;
            match result {
                Err(e) if e.is_transient() && attempt < self.max_attempts => {
                    tracing::warn!(error = %e, attempt, "Twilio call failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn send_once(&self, url: &str, form: &[(&str, &str)]) -> Result<MessageResource, TwilioError> {
        let response = self
            .http
            .post(url)
            .basic_auth(&self.config.account_sid, Some(&self.config.auth_token))
            .form(form)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|_| TwilioError::Unexpected { status, body: truncate(&text) });
        }
        match serde_json::from_str::<TwilioApiError>(&text) {
            Ok(api) if status == 401 => Err(TwilioError::Unauthorized(api.message)),
            Ok(api) => Err(TwilioError::Api(api)),
            Err(_) => Err(TwilioError::Unexpected { status, body: truncate(&text) }),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}
