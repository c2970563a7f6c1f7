//! The `PhoneVerification` orchestration and its `SendSmsChallenge` activity.
//!
//! 1. `SendSmsChallenge` texts a random 4-digit code and returns it (recorded in the history,
//!    so replays see the same code).
//! 2. A durable timer is set for the whole challenge window (90 s by default).
//! 3. Up to 4 times: wait for `SmsChallengeResponse` or the timer, whichever comes first
//!    (`when_any`). The right code → `true`; the timer or the 4th wrong code → `false`.
//!    A timer that loses the race is simply ignored.

use std::sync::Arc;
use std::time::Duration;

use duro_sdk::{when_any, ActivityContext, DurableTask, Failure, OrchestrationContext, RetryPolicy, Worker};
use serde::{Deserialize, Serialize};

use crate::twilio::{TwilioClient, TwilioError};

/// Orchestration name.
pub const ORCHESTRATION: &str = "PhoneVerification";
/// Activity name.
pub const SEND_SMS: &str = "SendSmsChallenge";
/// External event carrying the code the user typed (a JSON string).
pub const RESPONSE_EVENT: &str = "SmsChallengeResponse";

/// Orchestration input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerificationInput {
    /// E.164 number.
    pub phone: String,
    /// Challenge window in seconds (default 90).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Codes accepted before giving up (default 4).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_timeout() -> u64 {
    90
}
fn default_attempts() -> u32 {
    4
}

impl VerificationInput {
    /// Defaults: 90 s, 4 attempts.
    pub fn new(phone: impl Into<String>) -> Self {
        Self { phone: phone.into(), timeout_seconds: default_timeout(), max_attempts: default_attempts() }
    }
}

/// Custom status, shown by `GET /verify/{id}` while pending.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Wrong codes so far.
    pub wrong_attempts: u32,
    /// Codes still accepted.
    pub attempts_left: u32,
    /// When the challenge expires (RFC 3339).
    pub expires_at: String,
}

enum Outcome {
    Code(String),
    TimedOut,
}

/// The orchestrator function.
pub async fn phone_verification(ctx: OrchestrationContext, input: VerificationInput) -> Result<bool, Failure> {
    let code: String =
        ctx.call_activity_with_retry(SEND_SMS, &input.phone, &RetryPolicy::new(3, Duration::from_secs(1))).await?;

    let expires_at = ctx.current_utc_datetime() + chrono_secs(input.timeout_seconds);
    for attempt in 0..input.max_attempts {
        ctx.set_custom_status(Progress {
            wrong_attempts: attempt,
            attempts_left: input.max_attempts - attempt,
            expires_at: expires_at.to_rfc3339(),
        });
        // Same deadline every round: a fresh durable timer for the same instant.
        let timer: DurableTask<Outcome> = ctx.create_timer_at(expires_at).map(|()| Outcome::TimedOut);
        let reply: DurableTask<Outcome> = ctx.wait_for_external_event::<String>(RESPONSE_EVENT).map(Outcome::Code);
        let (_, outcome) = when_any(vec![reply, timer]).await;
        match outcome? {
            Outcome::Code(c) if c.trim() == code => return Ok(true),
            Outcome::Code(_) => {}
            Outcome::TimedOut => return Ok(false),
        }
    }
    Ok(false)
}

fn chrono_secs(s: u64) -> duro_sdk::chrono::TimeDelta {
    duro_sdk::chrono::TimeDelta::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// The activity: texts a fresh 4-digit code to `phone` and returns it.
pub async fn send_sms_challenge(
    twilio: &TwilioClient,
    _ctx: ActivityContext,
    phone: String,
) -> Result<String, Failure> {
    let code = {
        use rand::Rng;
        format!("{:04}", rand::thread_rng().gen_range(0..10_000))
    };
    let body = format!("Your verification code is {code}");
    match twilio.send_sms(&phone, &body).await {
        Ok(message) => {
            tracing::info!(sid = %message.sid, to = %phone, "challenge sent");
            Ok(code)
        }
        Err(e) => {
            let transient = e.is_transient();
            let failure = Failure::new(error_type(&e), e.to_string());
            Err(if transient { failure } else { failure.non_retriable() })
        }
    }
}

fn error_type(e: &TwilioError) -> &'static str {
    match e {
        TwilioError::MissingConfig(_) => "TwilioMissingConfig",
        TwilioError::Api(_) => "TwilioApiError",
        TwilioError::Unauthorized(_) => "TwilioUnauthorized",
        TwilioError::Unexpected { .. } => "TwilioUnexpectedResponse",
        TwilioError::Transport(_) => "TwilioTransportError",
    }
}

/// Registers the orchestration and its activity on `worker`.
pub fn register(worker: &mut Worker, twilio: TwilioClient) {
    let twilio = Arc::new(twilio);
    worker.add_orchestrator(ORCHESTRATION, phone_verification).add_activity(
        SEND_SMS,
        move |ctx: ActivityContext, phone: String| {
            let twilio = Arc::clone(&twilio);
            async move { send_sms_challenge(&twilio, ctx, phone).await }
        },
    );
}
