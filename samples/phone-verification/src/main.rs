//! The phone-verification app: a Duro worker plus the HTTP front end, in one process.
//!
//! Environment: `DURO_ADDRESS` (default `http://127.0.0.1:4001`), `DURO_HTTP_URL` (Duro's HTTP
//! API for signed status links, optional), `LISTEN` (default `127.0.0.1:8080`),
//! `VERIFY_TIMEOUT_SECONDS` (default 90), and the `TWILIO_*` variables (see README).

use std::time::Duration;

use duro_sdk::{Client, Worker};
use phone_verification::{orchestration, twilio, web};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let duro = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".into());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let timeout: u64 = std::env::var("VERIFY_TIMEOUT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(90);
    let twilio = twilio::TwilioClient::new(twilio::TwilioConfig::from_env()?);

    let mut worker = Worker::new(duro.clone());
    orchestration::register(&mut worker, twilio);
    let worker = worker.start()?;

    let client = Client::connect_lazy(duro)?;
    let config = web::FrontEndConfig {
        challenge_timeout: Duration::from_secs(timeout),
        duro_http_url: std::env::var("DURO_HTTP_URL").ok(),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tracing::info!("phone verification front end on http://{listen}");
    axum::serve(listener, web::router(client, config))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    worker.shutdown().await?;
    Ok(())
}
