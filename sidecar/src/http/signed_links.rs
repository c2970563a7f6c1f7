//! Per-instance status links signed with HMAC-SHA256: what an end client gets instead of the
//! hub-wide management key (Durable Functions issue #838).
//!
//! A link carries `ops` (what it allows: `status`, optionally `raiseEvent`), `exp` (Unix
//! seconds) and `sig`, the HMAC of (instance id, execution id, ops, expiry) under the first
//! signing key. The execution id is not in the link: it is the instance's current one when
//! the link is checked, so a link dies when its instance id is reused by a new execution
//! (and also at continue-as-new or restart, which start new executions: issue a new link
//! with `POST /instances/{id}/signedLinks`).
//! Every configured key verifies, so keys can be rotated: put the new key first, keep the
//! old one until its links expire. Links never contain the management key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Query parameter names of a signed link.
pub const OPS_PARAM: &str = "ops";
pub const EXPIRY_PARAM: &str = "exp";
pub const SIGNATURE_PARAM: &str = "sig";

/// Shortest accepted configured key, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// An operation a link may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOp {
    Status,
    RaiseEvent,
}

/// The operations one link grants; `status` is always among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ops {
    pub raise_event: bool,
}

impl Ops {
    pub const STATUS: Ops = Ops { raise_event: false };

    /// The canonical text that is signed and put in the link.
    pub fn as_str(self) -> &'static str {
        if self.raise_event {
            "status,raiseEvent"
        } else {
            "status"
        }
    }

    /// Parses a comma-separated list (`status`, `raiseEvent`, case-insensitive).
    pub fn parse(list: &str) -> Result<Ops, String> {
        let mut ops = Ops::STATUS;
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.eq_ignore_ascii_case("status") {
                continue;
            } else if part.eq_ignore_ascii_case("raiseEvent") {
                ops.raise_event = true;
            } else {
                return Err(format!("unknown signed-link operation '{part}' (known: status, raiseEvent)"));
            }
        }
        Ok(ops)
    }

    pub fn allows(self, op: LinkOp) -> bool {
        match op {
            LinkOp::Status => true,
            LinkOp::RaiseEvent => self.raise_event,
        }
    }
}

/// Where the signing keys came from (logged at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    DerivedFromSystemKey,
    RandomPerProcess,
}

/// Why a link was refused (all answer 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    Malformed(String),
    Expired,
    BadSignature,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Malformed(m) => write!(f, "the signed link is malformed: {m}"),
            LinkError::Expired => write!(f, "the signed link has expired"),
            LinkError::BadSignature => write!(
                f,
                "the signed link's signature does not match (altered, meant for another instance or an earlier execution of this \
                 one, or signed with a retired key); ask for a new link"
            ),
        }
    }
}

/// The signing keys: the first signs, all verify.
#[derive(Clone)]
pub struct LinkKeys {
    keys: Vec<Vec<u8>>,
    pub source: KeySource,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkKeys").field("keys", &self.keys.len()).field("source", &self.source).finish()
    }
}

impl LinkKeys {
    /// Configured keys if any; else one derived from the system key; else a random key that
    /// lives as long as the process.
    pub fn new(configured: Vec<Vec<u8>>, system_key: Option<&str>) -> LinkKeys {
        if !configured.is_empty() {
            return LinkKeys { keys: configured, source: KeySource::Configured };
        }
        if let Some(k) = system_key {
            // A one-way derivation: a link's signature reveals nothing about the system key,
            // and rotating the system key retires its links.
            let derived = hmac(k.as_bytes(), b"duro signed status links v1");
            return LinkKeys { keys: vec![derived.to_vec()], source: KeySource::DerivedFromSystemKey };
        }
        let mut key = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        LinkKeys { keys: vec![key], source: KeySource::RandomPerProcess }
    }

    /// The signature of a link for execution `execution_id` of `instance_id` granting `ops`
    /// until `expires` (Unix seconds).
    pub fn sign(&self, instance_id: &str, execution_id: &str, ops: Ops, expires: i64) -> String {
        let key = self.keys.first().map(Vec::as_slice).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(hmac(key, &message(instance_id, execution_id, ops, expires)))
    }

    /// Checks a link's parameters for the current execution `execution_id` of `instance_id`
    /// at `now` (Unix seconds); returns what it grants.
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        instance_id: &str,
        execution_id: &str,
        ops: Option<&str>,
        expires: Option<&str>,
        signature: Option<&str>,
        now: i64,
    ) -> Result<Ops, LinkError> {
        let ops = Ops::parse(ops.ok_or_else(|| LinkError::Malformed(format!("'{OPS_PARAM}' is missing")))?)
            .map_err(LinkError::Malformed)?;
        let expires: i64 = expires
            .ok_or_else(|| LinkError::Malformed(format!("'{EXPIRY_PARAM}' is missing")))?
            .trim()
            .parse()
            .map_err(|_| LinkError::Malformed(format!("'{EXPIRY_PARAM}' is not a Unix time in seconds")))?;
        let sig = URL_SAFE_NO_PAD
            .decode(signature.ok_or_else(|| LinkError::Malformed(format!("'{SIGNATURE_PARAM}' is missing")))?.trim())
            .map_err(|_| LinkError::Malformed(format!("'{SIGNATURE_PARAM}' is not base64url")))?;
        let msg = message(instance_id, execution_id, ops, expires);
        // Mac::verify_slice compares in constant time.
        let valid = self.keys.iter().any(|k| {
            HmacSha256::new_from_slice(k)
                .map(|mut m| {
                    m.update(&msg);
                    m.verify_slice(&sig).is_ok()
                })
                .unwrap_or(false)
        });
        if !valid {
            return Err(LinkError::BadSignature);
        }
        // Checked after the signature so an altered expiry reads as tampering, not expiry.
        if expires < now {
            return Err(LinkError::Expired);
        }
        Ok(ops)
    }
}

/// The signed bytes; the ids are length-prefixed so no two (id, execution, ops, expiry)
/// share a message.
fn message(instance_id: &str, execution_id: &str, ops: Ops, expires: i64) -> Vec<u8> {
    format!(
        "duro-link-v2\n{}:{}\n{}:{}\n{}\n{}",
        instance_id.len(),
        instance_id,
        execution_id.len(),
        execution_id,
        ops.as_str(),
        expires
    )
    .into_bytes()
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    match HmacSha256::new_from_slice(key) {
        Ok(mut m) => {
            m.update(msg);
            m.finalize().into_bytes().into()
        }
        // HMAC accepts keys of any length; unreachable in practice.
        Err(_) => [0u8; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> LinkKeys {
        LinkKeys::new(list.iter().map(|k| k.as_bytes().to_vec()).collect(), None)
    }

    #[test]
    fn signs_and_verifies() {
        let k = keys(&["0123456789abcdef-first"]);
        let sig = k.sign("i1", "e1", Ops::STATUS, 2000);
        assert_eq!(k.verify("i1", "e1", Some("status"), Some("2000"), Some(&sig), 1000), Ok(Ops::STATUS));
    }

    #[test]
    fn refuses_tampering_other_instances_and_expiry() {
        let k = keys(&["0123456789abcdef-first"]);
        let sig = k.sign("i1", "e1", Ops::STATUS, 2000);
        assert_eq!(k.verify("i2", "e1", Some("status"), Some("2000"), Some(&sig), 1000), Err(LinkError::BadSignature));
        assert_eq!(
            k.verify("i1", "e1", Some("status,raiseEvent"), Some("2000"), Some(&sig), 1000),
            Err(LinkError::BadSignature)
        );
        assert_eq!(k.verify("i1", "e1", Some("status"), Some("3000"), Some(&sig), 1000), Err(LinkError::BadSignature));
        assert_eq!(k.verify("i1", "e1", Some("status"), Some("2000"), Some(&sig), 2001), Err(LinkError::Expired));
        assert!(matches!(k.verify("i1", "e1", Some("status"), Some("x"), Some(&sig), 0), Err(LinkError::Malformed(_))));
        assert!(matches!(k.verify("i1", "e1", None, Some("2000"), Some(&sig), 0), Err(LinkError::Malformed(_))));
        assert!(matches!(
            k.verify("i1", "e1", Some("status"), Some("2000"), Some("!!"), 0),
            Err(LinkError::Malformed(_))
        ));
    }

    #[test]
    fn a_link_dies_with_its_execution() {
        let k = keys(&["0123456789abcdef-first"]);
        let sig = k.sign("i1", "e1", Ops::STATUS, 2000);
        assert_eq!(k.verify("i1", "e2", Some("status"), Some("2000"), Some(&sig), 1000), Err(LinkError::BadSignature));
        assert_eq!(k.verify("i1", "", Some("status"), Some("2000"), Some(&sig), 1000), Err(LinkError::BadSignature));
    }

    #[test]
    fn every_key_verifies_the_first_signs() {
        let old = keys(&["old-key-0123456789"]);
        let rotated = keys(&["new-key-0123456789", "old-key-0123456789"]);
        let old_sig = old.sign("i", "e1", Ops::STATUS, 10);
        assert!(rotated.verify("i", "e1", Some("status"), Some("10"), Some(&old_sig), 0).is_ok());
        let new_sig = rotated.sign("i", "e1", Ops::STATUS, 10);
        assert_ne!(new_sig, old_sig);
        assert_eq!(old.verify("i", "e1", Some("status"), Some("10"), Some(&new_sig), 0), Err(LinkError::BadSignature));
    }

    #[test]
    fn derived_keys_are_stable_and_not_the_system_key() {
        let a = LinkKeys::new(Vec::new(), Some("system"));
        let b = LinkKeys::new(Vec::new(), Some("system"));
        assert_eq!(a.source, KeySource::DerivedFromSystemKey);
        assert_eq!(a.sign("i", "e1", Ops::STATUS, 1), b.sign("i", "e1", Ops::STATUS, 1));
        assert_ne!(a.keys[0], b"system".to_vec());
        let r = LinkKeys::new(Vec::new(), None);
        assert_eq!(r.source, KeySource::RandomPerProcess);
    }

    #[test]
    fn ops_parse() {
        assert_eq!(Ops::parse("status"), Ok(Ops::STATUS));
        assert_eq!(Ops::parse(""), Ok(Ops::STATUS));
        assert_eq!(Ops::parse("RaiseEvent"), Ok(Ops { raise_event: true }));
        assert!(Ops::parse("terminate").is_err());
        assert!(Ops { raise_event: true }.allows(LinkOp::RaiseEvent));
        assert!(!Ops::STATUS.allows(LinkOp::RaiseEvent));
    }
}
