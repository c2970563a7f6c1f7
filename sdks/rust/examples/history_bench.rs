//! The history-length benchmark behind `bench/history.sh` (not a usage example).
//!
//! `curve` mode: for each size N, one orchestration first grows its history to about N events
//! (rounds of parallel activities), then runs K sequential one-activity steps; the step time
//! is measured by the orchestration itself (its turns' `orchestratorStarted` times, so the
//! sidecar's clock) and the sidecar's CPU over those K steps from `/proc/<pid>/stat`.
//! `payload` mode: 60 activities returning 1 MB each in parallel (a history above 60 MB):
//! total time and the sidecar's peak RSS (`VmHWM`, so run it on a fresh sidecar).
//!
//! `history_bench <curve|payload> <address> <sidecar pid> [sizes, e.g. 100,1000,5000]`;
//! prints markdown table rows on stdout.

use std::time::{Duration, Instant};

use duro_sdk::proto::{StreamInstanceHistoryRequest, TaskHubSidecarServiceClient};
use duro_sdk::{when_all, ActivityContext, Client, OrchestrationContext, Worker, WorkerOptions};
use prost::Message as _;

/// Sequential steps measured per size.
const STEPS: u64 = 50;
/// Activities per growth round, at most.
const ROUND: u64 = 500;
/// Payload mode: activities, and bytes each returns.
const BLOBS: usize = 60;
const BLOB_BYTES: usize = 1_000_000;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(address), Some(pid)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: history_bench <curve|payload> <address> <sidecar pid> [sizes]".into());
    };
    let pid: u32 = pid.parse()?;
    let mut worker = Worker::new(address.clone()).with_options(WorkerOptions::default().with_concurrency(4, 64));
    worker
        .add_orchestrator("Grow", |ctx: OrchestrationContext, (rounds, per_round): (u64, u64)| async move {
            for r in 0..rounds {
                let tasks: Vec<_> = (0..per_round).map(|i| ctx.call_activity::<u64>("Id", r * ROUND + i)).collect();
                when_all(tasks).await?;
            }
            ctx.set_custom_status("probing");
            let t0 = ctx.current_utc_datetime();
            for k in 0..STEPS {
                ctx.call_activity::<u64>("Id", k).await?;
            }
            let t1 = ctx.current_utc_datetime();
            Ok((t1 - t0).num_microseconds().unwrap_or(0))
        })
        .add_orchestrator("Heavy", |ctx: OrchestrationContext, n: usize| async move {
            let tasks: Vec<_> = (0..n).map(|i| ctx.call_activity::<String>("Blob", i)).collect();
            Ok(when_all(tasks).await?.iter().map(String::len).sum::<usize>())
        })
        .add_activity("Id", |_ctx: ActivityContext, n: u64| async move { Ok(n) })
        .add_activity("Blob", |_ctx: ActivityContext, i: usize| async move {
            Ok(char::from(b'a' + (i % 26) as u8).to_string().repeat(BLOB_BYTES))
        });
    let worker = worker.start()?;
    if !worker.wait_until_connected(Duration::from_secs(20)).await {
        return Err("the worker did not connect".into());
    }
    let client = Client::connect(address.clone()).await?;
    match mode.as_str() {
        "curve" => {
            let sizes: Vec<u64> = args
                .get(4)
                .map_or("100,1000,5000,10000,20000", String::as_str)
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            println!("| target events | history events at the end | history MB | ms per step (turn + activity) | sidecar CPU ms per step | growth phase s |");
            println!("|---:|---:|---:|---:|---:|---:|");
            for n in sizes {
                curve_point(&client, address, pid, n).await?;
            }
        }
        "payload" => payload(&client, address, pid).await?,
        other => return Err(format!("unknown mode {other}").into()),
    }
    worker.shutdown().await?;
    Ok(())
}

async fn curve_point(client: &Client, address: &str, pid: u32, n: u64) -> Result<(), Error> {
    let per_round = (n / 2).clamp(1, ROUND);
    let rounds = n.div_ceil(2 * per_round);
    let started = Instant::now();
    let id = client.start_orchestration("Grow", (rounds, per_round)).await?;
    // The growth phase ends when the orchestration says so (its custom status).
    loop {
        let state = client.get_orchestration(&id, true).await?.ok_or("instance vanished")?;
        if state.serialized_custom_status.as_deref() == Some("\"probing\"") || state.status.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let grown = started.elapsed();
    let cpu0 = cpu_ms(pid)?;
    let state = client.wait_for_completion(&id, Duration::from_secs(3600)).await?;
    let cpu1 = cpu_ms(pid)?;
    let micros: i64 = state.output()?;
    let (events, bytes) = history_size(address, &id).await?;
    println!(
        "| {n} | {events} | {:.1} | {:.2} | {:.1} | {:.1} |",
        bytes as f64 / 1e6,
        micros as f64 / 1000.0 / STEPS as f64,
        (cpu1 - cpu0) as f64 / STEPS as f64,
        grown.as_secs_f64()
    );
    Ok(())
}

async fn payload(client: &Client, address: &str, pid: u32) -> Result<(), Error> {
    let cpu0 = cpu_ms(pid)?;
    let started = Instant::now();
    let id = client.start_orchestration("Heavy", BLOBS).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(3600)).await?;
    let wall = started.elapsed();
    let cpu1 = cpu_ms(pid)?;
    let total: usize = state.output()?;
    if total != BLOBS * BLOB_BYTES {
        return Err(format!("wrong output {total}").into());
    }
    let (events, bytes) = history_size(address, &id).await?;
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    println!(
        "| activities × result | history events | history MB | total s | sidecar CPU s | sidecar peak RSS (VmHWM) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| {BLOBS} × {BLOB_BYTES} B | {events} | {:.1} | {:.2} | {:.2} | {hwm} |",
        bytes as f64 / 1e6,
        wall.as_secs_f64(),
        (cpu1 - cpu0) as f64 / 1000.0
    );
    Ok(())
}

/// The sidecar's user + system CPU in ms (procfs counts in clock ticks, 100 a second here).
fn cpu_ms(pid: u32) -> Result<u64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("bad /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("bad /proc stat");
    // utime and stime are fields 14 and 15 of stat; after the name, indices 11 and 12.
    Ok((ticks(11)? + ticks(12)?) * 10)
}

/// Events and encoded bytes of an instance's history.
async fn history_size(address: &str, id: &str) -> Result<(usize, usize), Error> {
    let mut raw =
        TaskHubSidecarServiceClient::connect(address.to_string()).await?.max_decoding_message_size(64 * 1024 * 1024);
    let req =
        StreamInstanceHistoryRequest { instance_id: id.into(), execution_id: None, for_work_item_processing: false };
    let mut stream = raw.stream_instance_history(req).await?.into_inner();
    let (mut events, mut bytes) = (0, 0);
    while let Some(chunk) = stream.message().await? {
        events += chunk.events.len();
        bytes += chunk.events.iter().map(|e| e.encoded_len()).sum::<usize>();
    }
    Ok((events, bytes))
}
