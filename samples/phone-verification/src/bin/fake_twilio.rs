//! Runs the fake Twilio API: `fake_twilio [ADDR]` (default `127.0.0.1:8099`). Accepts the
//! credentials in `TWILIO_ACCOUNT_SID` / `TWILIO_AUTH_TOKEN` (defaults `ACtest` / `secret`).

use phone_verification::fake_twilio::FakeTwilio;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8099".into());
    let sid = std::env::var("TWILIO_ACCOUNT_SID").unwrap_or_else(|_| "ACtest".into());
    let token = std::env::var("TWILIO_AUTH_TOKEN").unwrap_or_else(|_| "secret".into());
    let fake = FakeTwilio::start(addr.parse()?, &sid, &token).await?;
    println!("fake Twilio on {} (messages: {}/_test/messages)", fake.base_url, fake.base_url);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
