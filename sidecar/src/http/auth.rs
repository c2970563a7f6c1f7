//! Who may call a route: the system key (as `x-functions-key` header or `code` query
//! parameter, compared in constant time), a signed per-instance link, or anyone when no key
//! is configured on a loopback address.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::json::{ApiError, ErrorCode};
use super::signed_links::{LinkKeys, LinkOp, EXPIRY_PARAM, OPS_PARAM, SIGNATURE_PARAM};
use super::Query;

pub const KEY_HEADER: &str = "x-functions-key";
pub const KEY_PARAM: &str = "code";

/// The management key. Only its hash is compared, so the comparison's time does not depend
/// on the key's length or on where a guess differs.
#[derive(Clone)]
pub struct SystemKey {
    hash: [u8; 32],
}

impl std::fmt::Debug for SystemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemKey(<redacted>)")
    }
}

impl SystemKey {
    pub fn new(key: &str) -> SystemKey {
        SystemKey { hash: Sha256::digest(key.as_bytes()).into() }
    }

    pub fn matches(&self, presented: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        h.ct_eq(&self.hash).into()
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// The management key (or an open sidecar).
    Manage,
    /// The management key, or a signed link for this instance's current execution
    /// (`""` when the instance does not exist) granting `op`.
    Instance { instance_id: &'a str, execution_id: &'a str, op: LinkOp },
}

/// What the caller proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Full,
    /// A signed link: only its instance and operations; no history.
    Link,
}

/// Decides a request. Order: a presented system key must be right (401 otherwise); a signed
/// link is checked strictly and grants only what it says; with no key configured the API is
/// open; else 401.
pub fn authorize(
    key: Option<&SystemKey>,
    links: &LinkKeys,
    headers: &HeaderMap,
    query: &Query,
    need: Need<'_>,
    now_secs: i64,
) -> Result<Grant, ApiError> {
    let presented = headers
        .get(KEY_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| query.get(KEY_PARAM).map(str::to_string));
    if let (Some(key), Some(p)) = (key, presented.as_deref()) {
        if key.matches(p) {
            return Ok(Grant::Full);
        }
        return Err(ApiError::new(ErrorCode::Unauthorized, "the system key is wrong"));
    }
    if query.get(SIGNATURE_PARAM).is_some() {
        return match need {
            Need::Manage => Err(ApiError::new(
                ErrorCode::LinkNotAllowed,
                "a signed link only grants its instance's status (and raising events when issued so); this operation needs the system key",
            )),
            Need::Instance { instance_id, execution_id, op } => {
                let ops = links
                    .verify(
                        instance_id,
                        execution_id,
                        query.get(OPS_PARAM),
                        query.get(EXPIRY_PARAM),
                        query.get(SIGNATURE_PARAM),
                        now_secs,
                    )
                    .map_err(|e| ApiError::new(ErrorCode::InvalidLink, e.to_string()))?;
                if ops.allows(op) {
                    Ok(Grant::Link)
                } else {
                    Err(ApiError::new(ErrorCode::LinkNotAllowed, "this signed link does not allow raising events"))
                }
            }
        };
    }
    if key.is_none() {
        return Ok(Grant::Full);
    }
    Err(ApiError::new(
        ErrorCode::Unauthorized,
        "the system key is required: send it as the 'x-functions-key' header or the 'code' query parameter",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_value() {
        let k = SystemKey::new("secret-key");
        assert!(k.matches("secret-key"));
        assert!(!k.matches("secret-kez"));
        assert!(!k.matches(""));
        assert!(!format!("{k:?}").contains("secret"));
    }

    #[test]
    fn open_without_key_closed_with_key() {
        let links = LinkKeys::new(Vec::new(), None);
        let h = HeaderMap::new();
        let q = Query::parse(None);
        assert_eq!(authorize(None, &links, &h, &q, Need::Manage, 0), Ok(Grant::Full));
        let k = SystemKey::new("k");
        assert_eq!(authorize(Some(&k), &links, &h, &q, Need::Manage, 0).unwrap_err().code, ErrorCode::Unauthorized);
        let q = Query::parse(Some("code=k"));
        assert_eq!(authorize(Some(&k), &links, &h, &q, Need::Manage, 0), Ok(Grant::Full));
        let mut h = HeaderMap::new();
        h.insert(KEY_HEADER, axum::http::HeaderValue::from_static("nope"));
        assert_eq!(authorize(Some(&k), &links, &h, &q, Need::Manage, 0).unwrap_err().code, ErrorCode::Unauthorized);
    }
}
