//! Dashboard sessions and CSRF tokens: pure functions of a per-process secret, the clock
//! value passed in, and the presented strings. No storage: a session is an HMAC-signed token
//! kept in an HttpOnly cookie, never the system key itself; its CSRF token is derived from
//! the session id, so a page from another site can neither read nor forge it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Name of the session cookie.
pub const COOKIE: &str = "duro_dashboard";
/// How long a session lasts, in seconds (then the system key is asked for again).
pub const LIFETIME_SECS: i64 = 12 * 3600;

/// How a session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The system key was entered on the login form.
    Key,
    /// No system key is configured (loopback): the session only carries the CSRF token.
    Open,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Key => "k",
            Kind::Open => "o",
        }
    }
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub kind: Kind,
    /// Random, 32 hex digits.
    pub id: String,
    pub expires_secs: i64,
}

/// Why a presented session token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    BadSignature,
    Expired,
}

/// The per-process secret that signs sessions (random at start: sessions end when Duro
/// restarts).
#[derive(Clone)]
pub struct Sessions {
    secret: [u8; 32],
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(<redacted>)")
    }
}

impl Sessions {
    pub fn new(secret: [u8; 32]) -> Sessions {
        Sessions { secret }
    }

    pub fn random() -> Sessions {
        use rand::RngCore as _;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Sessions { secret }
    }

    fn mac(&self, domain: &str, msg: &str) -> [u8; 32] {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut m = match HmacSha256::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => return [0; 32],
        };
        m.update(domain.as_bytes());
        m.update(b"|");
        m.update(msg.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// A new session token (the cookie's value) with a fresh random id.
    pub fn issue(&self, kind: Kind, now_secs: i64) -> (Session, String) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let session = Session { kind, id, expires_secs: now_secs.saturating_add(LIFETIME_SECS) };
        let token = self.token(&session);
        (session, token)
    }

    fn token(&self, s: &Session) -> String {
        let payload = format!("{}.{}.{}", s.kind.tag(), s.id, s.expires_secs);
        let sig = URL_SAFE_NO_PAD.encode(self.mac("duro dashboard session v1", &payload));
        format!("{payload}.{sig}")
    }

    /// Checks a presented token: signature (constant time), then expiry.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Session, Refused> {
        let mut parts = token.split('.');
        let (Some(tag), Some(id), Some(exp), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refused::Malformed);
        };
        let kind = match tag {
            "k" => Kind::Key,
            "o" => Kind::Open,
            _ => return Err(Refused::Malformed),
        };
        let expires_secs: i64 = exp.parse().map_err(|_| Refused::Malformed)?;
        let presented = URL_SAFE_NO_PAD.decode(sig).map_err(|_| Refused::Malformed)?;
        let expected = self.mac("duro dashboard session v1", &format!("{tag}.{id}.{exp}"));
        if !bool::from(presented.ct_eq(&expected)) {
            return Err(Refused::BadSignature);
        }
        if now_secs >= expires_secs {
            return Err(Refused::Expired);
        }
        Ok(Session { kind, id: id.to_string(), expires_secs })
    }

    /// The CSRF token of a session (put into every form of its pages).
    pub fn csrf(&self, s: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("duro dashboard csrf v1", &s.id))
    }

    /// Whether a form's CSRF token belongs to the session (constant time).
    pub fn csrf_matches(&self, s: &Session, presented: &str) -> bool {
        let expected = self.csrf(s);
        presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value of a session: HttpOnly, SameSite=Strict, scoped to the dashboard,
/// `Secure` when the browser reaches Duro over TLS.
pub fn set_cookie(token: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECS}{secure}")
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_expire() {
        let s = Sessions::new([7; 32]);
        let (session, token) = s.issue(Kind::Key, 1000);
        assert_eq!(s.verify(&token, 1001), Ok(session.clone()));
        assert_eq!(s.verify(&token, 1000 + LIFETIME_SECS), Err(Refused::Expired));
        // Another process's secret does not accept it.
        assert_eq!(Sessions::new([8; 32]).verify(&token, 1001), Err(Refused::BadSignature));
        // Changing the kind or the expiry breaks the signature.
        let forged = token.replacen("k.", "o.", 1);
        assert_eq!(s.verify(&forged, 1001), Err(Refused::BadSignature));
        let parts: Vec<&str> = token.split('.').collect();
        let longer = format!("{}.{}.{}.{}", parts[0], parts[1], 99_999_999, parts[3]);
        assert_eq!(s.verify(&longer, 1001), Err(Refused::BadSignature));
        for bad in ["", "k.x", "z.a.1.b", "k.a.notanumber.sig", "k.a.1.%%%", "k.a.1.b.c"] {
            assert!(s.verify(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_never_contains_the_key_material_and_ids_are_fresh() {
        let s = Sessions::new([1; 32]);
        let (a, ta) = s.issue(Kind::Open, 0);
        let (b, tb) = s.issue(Kind::Open, 0);
        assert_ne!(a.id, b.id);
        assert_ne!(ta, tb);
        assert_eq!(a.id.len(), 32);
    }

    #[test]
    fn csrf_is_bound_to_the_session() {
        let s = Sessions::new([3; 32]);
        let (a, _) = s.issue(Kind::Key, 0);
        let (b, _) = s.issue(Kind::Key, 0);
        let ta = s.csrf(&a);
        assert!(s.csrf_matches(&a, &ta));
        assert!(!s.csrf_matches(&b, &ta));
        assert!(!s.csrf_matches(&a, ""));
        assert!(!s.csrf_matches(&a, &ta[1..]));
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie_value("a=1; duro_dashboard=tok.en; b=2", COOKIE), Some("tok.en"));
        assert_eq!(cookie_value("xduro_dashboard=1", COOKIE), None);
        let c = set_cookie("t", false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        assert!(set_cookie("t", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
