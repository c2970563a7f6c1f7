//! Duro sample: phone verification by SMS.
//!
//! * [`orchestration`]: the `PhoneVerification` orchestration and its `SendSmsChallenge` activity.
//! * [`twilio`]: a small Twilio Messaging client (reqwest) with typed errors and retries.
//! * [`web`]: the axum front end (`POST /verify`, `POST /verify/{id}`, `GET /verify/{id}`).
//! * [`fake_twilio`]: a fake Twilio API for tests and local runs.

pub mod fake_twilio;
pub mod orchestration;
pub mod twilio;
pub mod web;
