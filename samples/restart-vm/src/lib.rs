//! Restart a VM: `RestartVm` calls the Azure Resource Manager restart API with durable HTTP and
//! a managed-identity token source. The sidecar fetches the token (IMDS, App Service, workload
//! identity… per `duro --identity-source`), so the token never enters the orchestration's
//! history; ARM answers `202 Accepted` + `Location`, which durable HTTP polls until done.

use duro_sdk::{DurableHttpRequest, Failure, OrchestrationContext, TokenSource, Worker};
use serde::{Deserialize, Serialize};

/// Orchestration name.
pub const ORCHESTRATION: &str = "RestartVm";

/// Input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmRef {
    /// Subscription id.
    pub subscription_id: String,
    /// Resource group.
    pub resource_group: String,
    /// VM name.
    pub vm_name: String,
    /// ARM endpoint (default `https://management.azure.com`; tests use a local fake).
    #[serde(default)]
    pub arm_base_url: Option<String>,
}

/// The ARM restart URL of `vm`.
pub fn restart_url(vm: &VmRef) -> String {
    format!(
        "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}/restart?api-version=2024-07-01",
        vm.arm_base_url.as_deref().unwrap_or("https://management.azure.com").trim_end_matches('/'),
        vm.subscription_id,
        vm.resource_group,
        vm.vm_name
    )
}

/// The orchestrator: returns the final status code (200 once ARM reports the restart done).
pub async fn restart_vm(ctx: OrchestrationContext, vm: VmRef) -> Result<u16, Failure> {
    let request = DurableHttpRequest::post(restart_url(&vm), "")
        .with_token_source(TokenSource::azure_managed_identity("https://management.core.windows.net"));
    let response = ctx.call_http(request).await?;
    if !response.is_success() {
        return Err(Failure::new(
            "RestartFailed",
            format!("ARM answered {}: {}", response.status_code, response.content.unwrap_or_default()),
        ));
    }
    Ok(response.status_code)
}

/// Registers the orchestrator.
pub fn register(worker: &mut Worker) {
    worker.add_orchestrator(ORCHESTRATION, restart_vm);
}
