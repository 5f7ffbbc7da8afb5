//! The one error of the domain's operations: what kind of refusal it is, a stable code, the
//! field at fault and why. The API layer (`api.rs`) maps the kind to an HTTP status; the
//! domain itself knows nothing of HTTP.

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::FieldError;

/// What kind of refusal an `OpError` is. Its serialized form is the error's `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ErrorKind {
    /// A request (or the state it would make) breaks a rule.
    #[serde(rename = "invalid_argument")]
    Invalid,
    /// A request body that is not JSON.
    #[serde(rename = "malformed_json")]
    MalformedJson,
    /// No token, or one nobody holds.
    #[serde(rename = "unauthenticated")]
    Unauthorized,
    /// The caller may not do this.
    #[serde(rename = "permission_denied")]
    Forbidden,
    #[serde(rename = "not_found")]
    NotFound,
    /// The object exists already, or is in a state that does not allow this.
    #[serde(rename = "conflict")]
    Conflict,
    /// The caller's account is not on a service's whitelist.
    #[serde(rename = "not_whitelisted")]
    NotWhitelisted,
    #[serde(rename = "internal")]
    Internal,
    /// The shared store (etcd) cannot be reached: nothing was changed; try again later.
    #[serde(rename = "unavailable")]
    Unavailable,
}

/// A refused operation: its kind (serialized as the stable `code`), the field at fault and
/// why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct OpError {
    #[serde(rename = "code")]
    #[schema(value_type = String)]
    pub kind: ErrorKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for OpError {}

impl OpError {
    fn new(kind: ErrorKind, field: Option<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            field,
            message: message.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, Some(field.into()), message)
    }
    pub fn malformed_json(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::MalformedJson, Some(field.into()), message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, None, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, None, message)
    }
    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, Some(field.into()), message)
    }
    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, Some(field.into()), message)
    }
    pub fn not_whitelisted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotWhitelisted, Some("service".into()), message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, None, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, None, message)
    }
}

impl From<FieldError> for OpError {
    fn from(e: FieldError) -> Self {
        Self::invalid(e.field, e.message)
    }
}
