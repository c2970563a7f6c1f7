//! gRPC authentication: an optional API token (`--api-token`), presented by workers and
//! clients as the metadata `authorization: Bearer <token>` on every RPC and compared in
//! constant time (through [`crate::http::auth::SystemKey`]: only hashes are compared).
//!
//! Without a token every caller is trusted, which is only allowed on a loopback address
//! (the default, so the official SDKs keep working unchanged); `server.rs` refuses a
//! non-loopback listen address without a token unless `--insecure-allow-remote`.
//!
//! Consequence for lease fallbacks: a completion that carries no completion token (the
//! official Go SDK v0.6.0 sends none) is matched to the instance's live lease. With a
//! token configured, every RPC, that one included, has been authenticated first.

use tonic::{Request, Status};

use crate::http::auth::SystemKey;

/// The interceptor checking the API token of every call.
#[derive(Clone, Debug)]
pub struct ApiTokenCheck {
    token: Option<SystemKey>,
}

impl ApiTokenCheck {
    pub fn new(token: Option<&str>) -> ApiTokenCheck {
        ApiTokenCheck { token: token.map(SystemKey::new) }
    }

    /// Accepts the call, or answers UNAUTHENTICATED saying what to send.
    pub fn check(&self, req: &Request<()>) -> Result<(), Status> {
        let Some(token) = &self.token else { return Ok(()) };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        match presented {
            Some(p) if token.matches(p) => Ok(()),
            Some(_) => Err(Status::unauthenticated("the API token in the authorization metadata is wrong")),
            None => Err(Status::unauthenticated(
                "this sidecar requires an API token: send the metadata 'authorization: Bearer <token>' (the value of \
                 --api-token / DURO_API_TOKEN) with every call",
            )),
        }
    }
}

impl tonic::service::Interceptor for ApiTokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.check(&req)?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().expect("metadata"));
        }
        r
    }

    #[test]
    fn checks_the_bearer_token() {
        let open = ApiTokenCheck::new(None);
        assert!(open.check(&req(None)).is_ok());
        let c = ApiTokenCheck::new(Some("s3cret-token"));
        assert!(c.check(&req(Some("Bearer s3cret-token"))).is_ok());
        for bad in [None, Some("Bearer wrong"), Some("s3cret-token"), Some("Basic s3cret-token"), Some("Bearer ")] {
            let e = c.check(&req(bad)).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(e.message().contains("authorization"), "{e}");
            assert!(!e.message().contains("s3cret"), "{e}");
        }
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
