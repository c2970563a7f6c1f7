//! Encodings shared by the store backends: protobuf payloads as bytes, tags as JSON.

use std::collections::HashMap;

use duro_proto::HistoryEvent;
use prost::Message as _;

use super::StoreError;

pub(crate) fn encode_event(e: &HistoryEvent) -> Vec<u8> {
    e.encode_to_vec()
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<HistoryEvent, StoreError> {
    HistoryEvent::decode(bytes).map_err(|e| StoreError::Corrupt(format!("history event: {e}")))
}

pub(crate) fn decode_opt<M: prost::Message + Default>(
    bytes: Option<Vec<u8>>,
    what: &str,
) -> Result<Option<M>, StoreError> {
    bytes.map(|b| M::decode(&b[..]).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))).transpose()
}

pub(crate) fn tags_json(tags: &HashMap<String, String>) -> Option<String> {
    if tags.is_empty() {
        None
    } else {
        serde_json::to_string(tags).ok()
    }
}
