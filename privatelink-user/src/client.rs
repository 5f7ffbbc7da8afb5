//! A small client of the HTTP API, used by the CLI (and by tests and the lab).

use anyhow::{Result, anyhow};
use serde::Serialize;
use serde_json::Value;

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// An API refusal: status and the server's error object.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub body: Value,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.body["error"];
        match (e["field"].as_str(), e["message"].as_str()) {
            (Some(field), Some(m)) => write!(
                f,
                "{} ({}): {field}: {m}",
                self.status,
                e["code"].as_str().unwrap_or("")
            ),
            (None, Some(m)) => write!(
                f,
                "{} ({}): {m}",
                self.status,
                e["code"].as_str().unwrap_or("")
            ),
            _ => write!(f, "{}: {}", self.status, self.body),
        }
    }
}

impl std::error::Error for ApiError {}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            // One connection per call: a pooled connection the daemon has closed meanwhile
            // (a restart, hyper's keep-alive header timeout) fails a POST that must not be
            // retried blindly. The CLI makes one call; tests make thousands on loopback.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    /// Sends a request; a non-2xx answer becomes an `ApiError`.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        macro_rules! with_auth {
            ($req:expr) => {{
                let r = $req;
                match &auth {
                    Some(a) => r.header("Authorization", a),
                    None => r,
                }
            }};
        }
        let resp = match (method, body) {
            ("GET", _) => with_auth!(self.agent.get(&url)).call(),
            ("DELETE", _) => with_auth!(self.agent.delete(&url)).call(),
            ("POST", Some(b)) => with_auth!(self.agent.post(&url)).send_json(b),
            ("POST", None) => with_auth!(self.agent.post(&url)).send_empty(),
            ("PUT", Some(b)) => with_auth!(self.agent.put(&url)).send_json(b),
            ("PUT", None) => with_auth!(self.agent.put(&url)).send_empty(),
            ("PATCH", Some(b)) => with_auth!(self.agent.patch(&url)).send_json(b),
            _ => return Err(anyhow!("unsupported request {method} {path}")),
        };
        let mut resp = resp.map_err(|e| anyhow!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(ApiError {
                status,
                body: value,
            }
            .into())
        }
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None)
    }
    /// POSTs `body` (a request type of `ops`, or any JSON) as JSON.
    pub fn post(&self, path: &str, body: &impl Serialize) -> Result<Value> {
        self.call("POST", path, Some(&serde_json::to_value(body)?))
    }
    /// PATCHes with `body` (a patch type of `ops`, or any JSON) as JSON.
    pub fn patch(&self, path: &str, body: &impl Serialize) -> Result<Value> {
        self.call("PATCH", path, Some(&serde_json::to_value(body)?))
    }
    /// PUTs `body` (a request type of `ops`, or any JSON) as JSON.
    pub fn put(&self, path: &str, body: &impl Serialize) -> Result<Value> {
        self.call("PUT", path, Some(&serde_json::to_value(body)?))
    }
    pub fn delete(&self, path: &str) -> Result<Value> {
        self.call("DELETE", path, None)
    }
}
