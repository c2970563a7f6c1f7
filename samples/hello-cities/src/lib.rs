//! Function chaining: `HelloCities` calls the `SayHello` activity for three cities, one after
//! the other, and returns the greetings. Each step is recorded, so a crash between steps
//! resumes after the last completed one instead of starting over.

use duro_sdk::{ActivityContext, Failure, OrchestrationContext, Worker};

/// Orchestration name.
pub const ORCHESTRATION: &str = "HelloCities";
/// Activity name.
pub const SAY_HELLO: &str = "SayHello";

/// The orchestrator: Tokyo, then Seattle, then London.
pub async fn hello_cities(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
    let mut greetings = Vec::new();
    for city in ["Tokyo", "Seattle", "London"] {
        greetings.push(ctx.call_activity::<String>(SAY_HELLO, city).await?);
    }
    Ok(greetings)
}

/// The activity.
pub async fn say_hello(_: ActivityContext, city: String) -> Result<String, Failure> {
    Ok(format!("Hello, {city}!"))
}

/// Registers both on `worker`.
pub fn register(worker: &mut Worker) {
    worker.add_orchestrator(ORCHESTRATION, hello_cities).add_activity(SAY_HELLO, say_hello);
}
