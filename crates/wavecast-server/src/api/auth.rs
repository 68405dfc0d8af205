//! Who is calling: operators with API tokens, devices with their credentials.
//!
//! Both are bearer secrets looked up by their SHA-256. The kinds are told apart by prefix, so a
//! device credential on the operator API is refused as such (and the other way round).
//!
//! What an operator may do is decided here too, by type: a handler that needs a permission
//! takes the extractor named after it ([`CanRead`], [`CanPublish`], …), which authenticates
//! and checks the role from the request's head. axum runs head extractors before the body
//! extractor, so a request without the permission is refused before its body is read, let
//! alone parsed, and a handler cannot forget the check. [`Operator`] alone (authenticated, no
//! permission) is for the routes every role may call.
//!
//! Every authentication runs under its client address's failure budget
//! ([`under_failure_budget`]): an address that has failed too often is refused before its
//! credential is looked up, so a flood of wrong credentials costs no database work.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use wavecast_core::audit::Actor;
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_core::{Permission, Role};

use super::error::ApiError;
use crate::limits::ClientKey;
use crate::state::{AppState, DeviceIdentity};
use crate::store::DeviceRecord;

/// An authenticated operator.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Token id.
    pub token_id: String,
    /// Token name: the actor in audit events.
    pub name: String,
    /// Token role.
    pub role: Role,
}

impl Operator {
    /// The operator as the audit log names them: by the token's name.
    pub fn actor(&self) -> Actor {
        Actor::Operator(self.name.clone())
    }

    /// Fails with 403 unless the role grants `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token {} has role {}, which may not {}",
                self.name,
                self.role,
                permission.in_words()
            )))
        }
    }
}

/// Declares one extractor per permission: an authenticated operator whose role grants it.
macro_rules! permission_extractors {
    ($($(#[$doc:meta])* $name:ident => $permission:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Operator);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
                let operator = Operator::from_request_parts(parts, state).await?;
                operator.require(Permission::$permission)?;
                Ok(Self(operator))
            }
        }
    )*};
}

permission_extractors! {
    /// An operator who may read artifacts, groups, devices, rollouts and the audit log.
    CanRead => Read;
    /// An operator who may publish artifacts.
    CanPublish => Publish;
    /// An operator who may create groups and enrollment tokens.
    CanManageFleet => ManageFleet;
    /// An operator who may create, resume and abort rollouts.
    CanOperateRollouts => OperateRollouts;
    /// An operator who may approve a rollout's manual gate.
    CanApproveGates => ApproveGates;
    /// An operator who may create and revoke API tokens.
    CanManageTokens => ManageTokens;
    /// May install a new root version (admin).
    CanManageTrust => ManageTrust;
}

fn bearer(parts: &Parts, what: &str) -> Result<String, ApiError> {
    let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized(format!("missing bearer token: send {what} in an Authorization header"))
    })?;
    let value = header.to_str().map_err(|_| ApiError::Unauthorized("Authorization header is not ASCII".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::Unauthorized("Authorization header must be `Bearer <token>`".into()))?;
    Ok(token.trim().to_owned())
}

/// The budget key of the request's client: the connection's peer address, which the
/// connection loop in `tls` attaches, or what `X-Forwarded-For` says when that peer is a proxy
/// the operator trusts ([`ClientKey::of`]); anyone else can write that header.
pub fn client_key(parts: &Parts, state: &AppState) -> ClientKey {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    state.limits().client_key(peer, &parts.headers)
}

/// Runs `authenticate` under the client address's budget of failed authentications: refused
/// with 429 before it runs (so before any database lookup) once the address has spent it, and
/// each 401 it answers charged. Only failures are charged, so any number of devices behind one
/// NAT address authenticate freely while they get their credentials right.
pub async fn under_failure_budget<T>(
    parts: &Parts,
    state: &AppState,
    authenticate: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let client = client_key(parts, state);
    let budget = state.limits().failed_auth();
    let spent = |exceeded| {
        ApiError::too_many(
            format!(
                "too many failed authentications from {client} (allowed: {}); requests from this address are refused until that refills",
                budget.rate().in_words()
            ),
            exceeded,
        )
    };
    budget.admit(client).map_err(spent)?;
    match authenticate.await {
        Err(ApiError::Unauthorized(message)) => match budget.charge(client) {
            Ok(()) => Err(ApiError::Unauthorized(message)),
            Err(exceeded) => Err(spent(exceeded)),
        },
        other => other,
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let parts: &Parts = parts;
        under_failure_budget(parts, state, async {
            let presented = bearer(parts, "an API token (--token or WAVECAST_TOKEN)")?;
            operator_by_token(state, &presented).await
        })
        .await
    }
}

/// The operator whose API token `presented` is: 401 for a malformed, unknown or revoked one.
/// The caller runs it under the client's failure budget ([`under_failure_budget`]).
pub async fn operator_by_token(state: &AppState, presented: &str) -> Result<Operator, ApiError> {
    let secret = Secret::parse(SecretKind::ApiToken, presented).map_err(|e| ApiError::unauthorized(&e))?;
    let record = state
        .store()
        .token_by_secret(&secret.hash())
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown API token".into()))?;
    Operator::from_token(record)
}

impl Operator {
    /// The operator a token stands for, unless it is revoked (401).
    pub fn from_token(record: crate::store::TokenRecord) -> Result<Self, ApiError> {
        if record.revoked_at.is_some() {
            return Err(ApiError::Unauthorized(format!("API token {:?} was revoked", record.name)));
        }
        Ok(Operator { token_id: record.id, name: record.name, role: record.role })
    }
}

/// An authenticated device whose credential is not revoked. The device's row is cached in
/// memory, and a revocation makes every replica forget it (see `crate::checkin`): it is in force
/// from the next request on here, and within the change feed's delay on other replicas.
#[derive(Debug, Clone)]
pub struct Device(pub DeviceRecord);

impl FromRequestParts<AppState> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let parts: &Parts = parts;
        let device = under_failure_budget(parts, state, async {
            let presented = bearer(parts, "the device credential")?;
            let secret =
                Secret::parse(SecretKind::DeviceCredential, &presented).map_err(|e| ApiError::unauthorized(&e))?;
            // From memory when this replica knows the credential (see `crate::checkin`): a
            // revocation on any replica reaches this cache within the change feed's delay.
            let hash = secret.hash();
            let cache = state.store().checkin();
            let now = std::time::Instant::now();
            let device = match cache.device(&hash, now) {
                Some(device) => device,
                None => {
                    let stamp = cache.stamp();
                    let device = state
                        .store()
                        .device_by_credential(&hash)
                        .await?
                        .ok_or_else(|| ApiError::Unauthorized("unknown device credential".into()))?;
                    cache.keep_device(stamp, hash, device.clone(), now);
                    device
                }
            };
            if let Some(at) = device.revoked_at {
                let at = jiff::Timestamp::from_millisecond(at).map_or_else(|_| at.to_string(), |t| t.to_string());
                return Err(ApiError::Unauthorized(format!(
                    "the credential of device {} was revoked at {at}; it is refused for good",
                    device.name
                )));
            }
            if state.settings().devices == DeviceIdentity::CredentialAndCertificate {
                require_certificate_for(parts, device.name.as_str())?;
            }
            Ok(device)
        })
        .await?;
        let budget = state.limits().device_requests();
        budget.take(&device.id).map_err(|exceeded| {
            ApiError::too_many(
                format!("device {} is over its request budget ({}); slow down", device.name, budget.rate().in_words()),
                exceeded,
            )
        })?;
        Ok(Device(device))
    }
}

/// With device mTLS on, the connection's client certificate must name `device`.
pub fn require_certificate_for(parts: &Parts, device: &str) -> Result<(), ApiError> {
    let cn = parts.extensions.get::<crate::tls::PeerIdentity>().and_then(|p| p.common_name.clone());
    match cn {
        None => Err(ApiError::Unauthorized(
            "this server requires devices to present a client certificate from the device CA".into(),
        )),
        Some(cn) if cn != device => Err(ApiError::Unauthorized(format!(
            "the client certificate names {cn:?}, but the credential belongs to device {device:?}"
        ))),
        Some(_) => Ok(()),
    }
}
