//! Runs the worker for `CallLongRunningApi` against the sidecar at `DURO_ADDRESS` (default
//! `http://127.0.0.1:4001`) and, in the same process, the sample's long-running-operation
//! API on `LRO_API_LISTEN` (default `127.0.0.1:8098`, the next free port if taken; `off`:
//! not served) until Ctrl-C. Prints the command that starts an instance through Duro's HTTP
//! API (`DURO_HTTP_URL`, default `http://127.0.0.1:7071`).

use duro_sdk::Worker;

/// Binds `addr`, or the next free port on the same host when it is taken.
async fn bind_free(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return tokio::net::TcpListener::bind(addr).await;
    };
    let first: u16 = port.parse().unwrap_or(8098);
    let mut last = None;
    for port in first..first.saturating_add(50) {
        match tokio::net::TcpListener::bind((host, port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".into());
    let http = std::env::var("DURO_HTTP_URL").unwrap_or_else(|_| "http://127.0.0.1:7071".into());
    let listen = std::env::var("LRO_API_LISTEN").unwrap_or_else(|_| "127.0.0.1:8098".into());
    if listen != "off" {
        let listener =
            bind_free(&listen).await.map_err(|e| format!("cannot serve the long-running API on {listen}: {e}"))?;
        let api_addr = listener.local_addr()?;
        tokio::spawn(async_http_api::lro_api::serve(listener, async_http_api::lro_api::LroApi::default()));
        println!("long-running API: http://{api_addr}/jobs (POST: 202 + Location, done after 3 s)");
        println!(
            "start one:  curl -i -X POST {http}/runtime/webhooks/durabletask/orchestrators/{} \
             -H 'content-type: application/json' -d '{{\"url\":\"http://{api_addr}/jobs\",\"body\":{{\"seconds\":3}}}}'",
            async_http_api::ORCHESTRATION
        );
        println!("then GET the Location it answers until runtimeStatus is Completed (customStatus: \"done\")");
    }
    let mut worker = Worker::new(address);
    async_http_api::register(&mut worker);
    worker
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
