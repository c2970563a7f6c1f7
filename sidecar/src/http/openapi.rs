//! The OpenAPI 3 description of the HTTP API, kept in the repository as
//! `sidecar/openapi.json` and served at `/runtime/webhooks/durabletask/openapi.json`.

/// The document, embedded at build time.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_openapi_3_for_our_base_path() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let paths = doc["paths"].as_object().expect("paths");
        assert!(!paths.is_empty());
        for p in paths.keys() {
            assert!(p.starts_with(crate::http::BASE_PATH), "{p}");
        }
    }
}
