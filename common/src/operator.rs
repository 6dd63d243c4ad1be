//! The line between the public and the operator. Operator endpoints (the audit, the dead
//! letters, fault flags) accept `Authorization: Bearer <token>`, compared in constant time
//! with `ADMIN_TOKEN` (or the file `ADMIN_TOKEN_FILE` names, for a Kubernetes Secret).
//! Without a configured token they answer loopback clients only, so that the README's
//! commands keep working on a developer's machine and nothing is open on a network.
//!
//! Defends against: anyone who can reach the port reading every dead message, replaying
//! or resolving them, or running the audit in a loop.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, header::AUTHORIZATION},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::http_error::ApiError;

/// The name of the OpenAPI security scheme operator endpoints declare.
pub const SECURITY_SCHEME: &str = "operator_token";

/// The operator's token, if one is configured. Its `Debug` never shows it.
#[derive(Clone, Default)]
pub struct AdminToken(Option<Arc<str>>);

impl AdminToken {
    pub fn new(token: Option<String>) -> Self {
        Self(token.map(Into::into))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Whether a request with `headers`, from `peer` (None when unknown, e.g. a request
    /// built in-process), may use an operator endpoint; the refusal says why.
    pub fn admit(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(token) = &self.0 else {
            return match peer {
                Some(ip) if ip.is_loopback() || ip.to_canonical().is_loopback() => Ok(()),
                _ => Err(ApiError::Forbidden(
                    "operator endpoints answer only loopback clients while ADMIN_TOKEN is not set"
                        .into(),
                )),
            };
        };
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "this operator endpoint needs Authorization: Bearer <ADMIN_TOKEN>".into(),
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "Authorization must be `Bearer <ADMIN_TOKEN>` on operator endpoints".into(),
                )
            })?;
        if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("the operator token is wrong".into()))
        }
    }

    /// `router` with every route behind the token (routes only: an unknown path stays 404).
    pub fn guard<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.route_layer(axum::middleware::from_fn_with_state(self.clone(), require))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_set() {
            "AdminToken(***)"
        } else {
            "AdminToken(unset)"
        })
    }
}

/// The client's address, when the server was started with connect info.
pub fn peer(request_extensions: &axum::http::Extensions) -> Option<IpAddr> {
    request_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

async fn require(State(token): State<AdminToken>, request: Request, next: Next) -> Response {
    match token.admit(request.headers(), peer(request.extensions())) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Equal bytes, in a time that depends on the lengths only: a wrong token's prefix cannot
/// be found by timing the answers.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Adds the bearer scheme operator endpoints declare to an OpenAPI document, so that the
/// Authorize button of `/docs` works.
pub fn add_security_scheme(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        SECURITY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "ADMIN_TOKEN. Without one configured, operator endpoints answer loopback clients only.",
                ))
                .build(),
        ),
    );
}

#[cfg(test)]
mod tests;
