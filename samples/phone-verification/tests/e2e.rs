//! End-to-end tests: the real `duro` binary (through `duro-testkit`: `$DURO_BIN`, else built),
//! the fake Twilio and the front end in-process, talking HTTP like a user would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use duro_sdk::{Client, WorkerHandle};
use duro_testkit::{sdk, Sidecar};
use phone_verification::fake_twilio::FakeTwilio;
use phone_verification::twilio::{TwilioClient, TwilioConfig, TwilioError};
use phone_verification::{orchestration, web};
use serde_json::{json, Value};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "test-token";
const FROM: &str = "+15550000000";
const PHONE: &str = "+15551234567";

struct App {
    sidecar: Sidecar,
    twilio: FakeTwilio,
    _worker: WorkerHandle,
    base: String,
    http: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start(timeout: Duration) -> App {
        let sidecar = Sidecar::builder().http_api().allow_loopback_http().start();
        let twilio = FakeTwilio::start("127.0.0.1:0".parse().unwrap(), SID, TOKEN).await.unwrap();
        let client = TwilioClient::new(config(&twilio.base_url)).with_retries(3, Duration::from_millis(20));
        let mut worker = sdk::worker(&sidecar);
        orchestration::register(&mut worker, client);
        let worker = sdk::start(worker).await;

        let duro = Client::connect(sidecar.endpoint()).await.unwrap();
        let cfg = web::FrontEndConfig {
            challenge_timeout: timeout,
            max_attempts: 4,
            duro_http_url: Some(sidecar.http_url()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, web::router(duro, cfg)).await;
        });
        App { sidecar, twilio, _worker: worker, base, http: reqwest::Client::new(), _server: server }
    }

    async fn start_verification(&self, phone: &str) -> (String, Value) {
        let r = self.http.post(format!("{}/verify", self.base)).json(&json!({ "phone": phone })).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let body: Value = r.json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_string();
        assert_eq!(location, format!("/verify/{id}"));
        (id, body)
    }

    /// Waits for the `n`th SMS (1-based) and returns its code.
    async fn sms_code(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let messages: Vec<Value> = self
                .http
                .get(format!("{}/_test/messages", self.twilio.base_url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if messages.len() >= n {
                let m = &messages[n - 1];
                assert_eq!(m["to"], PHONE);
                assert_eq!(m["from"], FROM);
                assert!(m["sid"].as_str().unwrap().starts_with("SM"));
                let body = m["body"].as_str().unwrap();
                return body.rsplit(' ').next().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no SMS sent");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn send_code(&self, id: &str, code: &str) -> u16 {
        self.http
            .post(format!("{}/verify/{id}", self.base))
            .json(&json!({ "code": code }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn status(&self, id: &str) -> Value {
        self.http.get(format!("{}/verify/{id}", self.base)).send().await.unwrap().json().await.unwrap()
    }

    async fn wait_final(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The front end may briefly answer 503 while the sidecar restarts.
            if let Ok(r) = self.http.get(format!("{}/verify/{id}", self.base)).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if let Some(s) = v["status"].as_str() {
                        if s != "pending" {
                            return s.to_string();
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "verification {id} never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn config(base: &str) -> TwilioConfig {
    TwilioConfig { account_sid: SID.into(), auth_token: TOKEN.into(), from: FROM.into(), base_url: base.into() }
}

fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:04}", (n + 1) % 10_000)
}

#[tokio::test(flavor = "multi_thread")]
async fn right_code_first_try() {
    let app = App::start(Duration::from_secs(90)).await;
    let (id, body) = app.start_verification(PHONE).await;
    assert!(body["statusUrl"].as_str().unwrap().ends_with(&format!("/verify/{id}")));
    // The signed Duro status link works without a key.
    let signed = body["statusQueryGetUri"].as_str().expect("signed link");
    let r = app.http.get(signed).send().await.unwrap();
    assert!(r.status().is_success(), "signed link answered {}", r.status());

    let code = app.sms_code(1).await;
    assert_eq!(code.len(), 4);
    let pending = app.status(&id).await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(app.send_code(&id, &code).await, 202);
    assert_eq!(app.wait_final(&id).await, "verified");
    // Finished: further codes are refused.
    assert_eq!(app.send_code(&id, &code).await, 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_codes_then_right() {
    let app = App::start(Duration::from_secs(90)).await;
    let (id, _) = app.start_verification(PHONE).await;
    let code = app.sms_code(1).await;
    for _ in 0..3 {
        assert_eq!(app.send_code(&id, &wrong(&code)).await, 202);
    }
    // Let the wrong codes be processed; attemptsLeft drops to 1.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.status(&id).await["attemptsLeft"] != 1 {
        assert!(Instant::now() < deadline, "attempts not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.send_code(&id, &code).await, 202);
    assert_eq!(app.wait_final(&id).await, "verified");
}

#[tokio::test(flavor = "multi_thread")]
async fn four_wrong_codes_fail() {
    let app = App::start(Duration::from_secs(90)).await;
    let (id, _) = app.start_verification(PHONE).await;
    let code = app.sms_code(1).await;
    for _ in 0..4 {
        assert_eq!(app.send_code(&id, &wrong(&code)).await, 202);
    }
    assert_eq!(app.wait_final(&id).await, "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn timer_expires() {
    let app = App::start(Duration::from_secs(2)).await;
    let (id, _) = app.start_verification(PHONE).await;
    let code = app.sms_code(1).await;
    assert_eq!(app.send_code(&id, &wrong(&code)).await, 202);
    assert_eq!(app.wait_final(&id).await, "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_killed_between_sms_and_reply() {
    let mut app = App::start(Duration::from_secs(90)).await;
    let (id, _) = app.start_verification(PHONE).await;
    let code = app.sms_code(1).await;
    // Wait until the orchestration waits for the reply (custom status is set), then kill -9.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.status(&id).await["attemptsLeft"] != 4 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.sidecar.restart(); // kill -9, then the same ports and store
                           // The front end's client and the worker reconnect on their own.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.send_code(&id, &code).await != 202 {
        assert!(Instant::now() < deadline, "front end never reached the restarted sidecar");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.wait_final(&id).await, "verified");
    // Only one SMS: the activity was not re-run after the restart.
    assert_eq!(app.twilio.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_phone_is_rejected() {
    let app = App::start(Duration::from_secs(90)).await;
    for phone in ["5551234567", "+1555", "+1555abc4567", "+0123456789", ""] {
        let r = app.http.post(format!("{}/verify", app.base)).json(&json!({ "phone": phone })).send().await.unwrap();
        assert_eq!(r.status(), 400, "{phone}");
    }
    let r = app.http.post(format!("{}/verify", app.base)).body("not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = app.http.get(format!("{}/verify/nope", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn twilio_client_maps_errors_and_retries() {
    let fake = FakeTwilio::start("127.0.0.1:0".parse().unwrap(), SID, TOKEN).await.unwrap();
    let client = TwilioClient::new(config(&fake.base_url)).with_retries(3, Duration::from_millis(10));

    let sent = client.send_sms(PHONE, "hi").await.unwrap();
    assert!(sent.sid.starts_with("SM"));
    assert_eq!(sent.status, "queued");
    assert_eq!(sent.to, PHONE);

    match client.send_sms("12345", "hi").await {
        Err(TwilioError::Api(e)) => {
            assert_eq!(e.code, Some(21211));
            assert_eq!(e.status, 400);
            assert!(e.more_info.unwrap().contains("21211"));
        }
        other => panic!("expected 21211, got {other:?}"),
    }

    fake.fail_next(2, 503);
    assert!(client.send_sms(PHONE, "after 2 failures").await.is_ok());
    fake.fail_next(5, 429);
    match client.send_sms(PHONE, "gives up").await {
        Err(e @ TwilioError::Api(_)) => assert!(e.is_transient()),
        other => panic!("expected a 429 error, got {other:?}"),
    }
    fake.fail_next(0, 503);

    let mut bad = config(&fake.base_url);
    bad.auth_token = "wrong".into();
    match TwilioClient::new(bad).send_sms(PHONE, "hi").await {
        Err(TwilioError::Unauthorized(_)) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(fake.messages().len(), 2);
}
