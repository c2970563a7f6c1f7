//! `duro-proto`: the wire contract between Duro and the Durable Task SDKs.
//!
//! This crate owns exactly one thing: Duro's copy of Microsoft's Durable Task sidecar protocol,
//! `orchestrator_service.proto` (service `TaskHubSidecarService`), and the Rust code generated
//! from it at build time:
//!
//! * every message and enum as a [`prost`] type ([`HistoryEvent`], [`WorkItem`],
//!   [`OrchestratorRequest`], [`OrchestrationStatus`], …), with oneofs in the usual prost
//!   sub-modules ([`history_event::EventType`], [`orchestrator_action::OrchestratorActionType`],
//!   [`work_item::Request`], …);
//! * the tonic server trait and service wrapper,
//!   [`task_hub_sidecar_service_server::TaskHubSidecarService`] and
//!   [`task_hub_sidecar_service_server::TaskHubSidecarServiceServer`];
//! * the tonic client, [`task_hub_sidecar_service_client::TaskHubSidecarServiceClient`];
//! * the encoded `FileDescriptorSet` ([`FILE_DESCRIPTOR_SET`]), e.g. for gRPC reflection.
//!
//! The proto file has **no `package`**, on purpose: the SDKs call `/TaskHubSidecarService/<Rpc>`
//! and name messages bare. Never add one. Field names are camelCase in the proto and snake_case in
//! Rust (`instanceId` → `instance_id`); only numbers and types matter on the wire.
//!
//! Well-known types come from [`prost_types`] (re-exported here): `google.protobuf.Timestamp` →
//! [`prost_types::Timestamp`], `Duration` → [`prost_types::Duration`], `Value` →
//! [`prost_types::Value`]. Wrapper types map to `Option<T>` (`StringValue` → `Option<String>`,
//! `Int32Value` → `Option<i32>`, `BoolValue` → `Option<bool>`), so presence is preserved
//! (absent ≠ empty). `google.protobuf.Empty` maps to `()`.
//!
//! Deliberate deviations from upstream `durabletask-protobuf` (none change the wire format):
//!
//! * `OrchestrationIdReusePolicy` field 2 (reserved upstream) is declared as `int32 legacyAction`
//!   because the Go SDK still sends the removed `CreateOrchestrationAction` enum there
//!   (ERROR = 0, IGNORE = 1, TERMINATE = 2).
//! * `GetWorkItemsRequest` field 12 `workerInstanceId` (present in the PyPI `durabletask` 1.12.0
//!   descriptor, not on upstream `main`).
//! * Fields deprecated upstream (`TraceContext.spanID`, `OrchestratorResponse.isPartial`,
//!   `OrchestratorResponse.chunkIndex`) are not marked deprecated, so reading them (Java chunked
//!   responses) does not trigger `#[deprecated]` warnings.

pub use prost_types;

#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs, rustdoc::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/orchestrator_service.rs"));
}

#[cfg(feature = "grpc")]
pub use generated::task_hub_sidecar_service_client::TaskHubSidecarServiceClient;
#[cfg(feature = "grpc")]
pub use generated::task_hub_sidecar_service_server::{TaskHubSidecarService, TaskHubSidecarServiceServer};
pub use generated::*;

/// Encoded `google.protobuf.FileDescriptorSet` of `orchestrator_service.proto` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orchestrator_service.bin"));

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/orchestrator_service.rs"));

    #[test]
    fn work_item_health_ping_tags() {
        let ping =
            WorkItem { request: Some(work_item::Request::HealthPing(HealthPing {})), completion_token: String::new() };
        // field 4, wire type 2 (LEN) = 0x22, empty message.
        assert_eq!(ping.encode_to_vec(), vec![0x22, 0x00]);

        let with_token =
            WorkItem { request: Some(work_item::Request::HealthPing(HealthPing {})), completion_token: "t".to_owned() };
        let bytes = with_token.encode_to_vec();
        // prost emits fields in tag order: healthPing (4) then completionToken (10, LEN → 0x52).
        assert_eq!(bytes, vec![0x22, 0x00, 0x52, 0x01, b't']);

        let token_only = WorkItem { request: None, completion_token: "t".to_owned() };
        assert_eq!(token_only.encode_to_vec()[0], 0x52);
        assert_eq!(WorkItem::decode(bytes.as_slice()).expect("decode"), with_token);
    }

    #[test]
    fn work_item_orchestrator_request_tags() {
        let item = WorkItem {
            request: Some(work_item::Request::OrchestratorRequest(OrchestratorRequest {
                instance_id: "i".to_owned(),
                execution_id: Some("e".to_owned()),
                new_events: vec![HistoryEvent {
                    event_id: -1,
                    timestamp: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
                    event_type: Some(history_event::EventType::OrchestratorStarted(OrchestratorStartedEvent {})),
                }],
                ..Default::default()
            })),
            completion_token: String::new(),
        };
        let bytes = item.encode_to_vec();
        // WorkItem.orchestratorRequest: field 1, LEN.
        assert_eq!(bytes[0], 0x0A);
        let inner = &bytes[2..];
        assert_eq!(bytes[1] as usize, inner.len());
        // OrchestratorRequest.instanceId (1) = "i"; executionId (2) = StringValue{value (1) = "e"}.
        assert_eq!(&inner[..8], &[0x0A, 0x01, b'i', 0x12, 0x03, 0x0A, 0x01, b'e']);
        // newEvents: field 4, LEN.
        assert_eq!(inner[8], 0x22);
        let event = &inner[10..];
        assert_eq!(inner[9] as usize, event.len());
        // eventId (1) = -1 as int32 → 10-byte varint.
        assert_eq!(&event[..11], &[0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        // timestamp (2) = {seconds (1) = 1}; orchestratorStarted (14, LEN) = 0x72, empty.
        assert_eq!(&event[11..], &[0x12, 0x02, 0x08, 0x01, 0x72, 0x00]);
        assert_eq!(WorkItem::decode(bytes.as_slice()).expect("decode"), item);
    }

    #[test]
    fn reuse_policy_keeps_legacy_go_action() {
        // Go SDK shape: field 1 statuses (unpacked here), field 2 CreateOrchestrationAction IGNORE.
        let policy = OrchestrationIdReusePolicy::decode(&[0x08, 0x03, 0x08, 0x05, 0x10, 0x01][..]).expect("decode");
        assert_eq!(
            policy.replaceable_status().collect::<Vec<_>>(),
            vec![OrchestrationStatus::Failed, OrchestrationStatus::Terminated]
        );
        assert_eq!(policy.legacy_action, 1);
    }

    #[test]
    fn service_paths_have_no_package() {
        assert!(GENERATED.contains("\"/TaskHubSidecarService/StartInstance\""));
        assert!(GENERATED.contains("\"/TaskHubSidecarService/GetWorkItems\""));
        assert!(GENERATED.contains("\"/TaskHubSidecarService/StreamInstanceHistory\""));
        assert!(GENERATED.contains("\"/TaskHubSidecarService/SkipGracefulOrchestrationTerminations\""));

        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("fds");
        let file = fds.file.iter().find(|f| f.name() == "orchestrator_service.proto").expect("file in set");
        assert_eq!(file.package(), "");
        let service = file.service.first().expect("service");
        assert_eq!(service.name(), "TaskHubSidecarService");
        assert_eq!(service.method.len(), 29);
    }

    /// Compile-time check that the server trait and wrapper are reachable at both paths.
    #[allow(dead_code)]
    fn server_paths<T: TaskHubSidecarService>(
        svc: T,
    ) -> task_hub_sidecar_service_server::TaskHubSidecarServiceServer<T> {
        fn module_path<U: task_hub_sidecar_service_server::TaskHubSidecarService>() {}
        module_path::<T>();
        TaskHubSidecarServiceServer::new(svc)
    }

    #[test]
    fn client_paths() {
        let _ = task_hub_sidecar_service_client::TaskHubSidecarServiceClient::<tonic::transport::Channel>::new;
        let _ = TaskHubSidecarServiceClient::<tonic::transport::Channel>::new;
    }
}
