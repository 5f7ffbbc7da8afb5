//! How a GWLB service's appliances are health-checked: the settings and their limits. The
//! prober itself (`crate::health`) reads them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Probe {
    /// Healthy when a TCP connection opens.
    Tcp,
    /// Healthy when `GET path` answers 2xx or 3xx.
    Http { path: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    #[serde(default = "tcp")]
    pub probe: Probe,
    /// The target's port that is probed.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "three")]
    pub healthy_threshold: u32,
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

fn tcp() -> Probe {
    Probe::Tcp
}
fn default_port() -> u16 {
    80
}
fn default_interval_ms() -> u64 {
    5000
}
fn default_timeout_ms() -> u64 {
    2000
}
fn three() -> u32 {
    3
}

/// The shortest probe interval and timeout, and the largest threshold, settings may ask for.
pub const MIN_INTERVAL_MS: u64 = 50;
pub const MIN_TIMEOUT_MS: u64 = 10;
pub const MAX_THRESHOLD: u32 = 10;

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            probe: Probe::Tcp,
            port: default_port(),
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            healthy_threshold: 3,
            unhealthy_threshold: 3,
        }
    }
}

impl HealthSettings {
    /// The first setting out of range, as (field below the settings, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.port == 0 {
            return Err(("port", "0 is not a port".into()));
        }
        if self.interval_ms < MIN_INTERVAL_MS {
            return Err((
                "interval_ms",
                format!(
                    "{} ms is shorter than the minimum of {MIN_INTERVAL_MS} ms",
                    self.interval_ms
                ),
            ));
        }
        if self.timeout_ms < MIN_TIMEOUT_MS {
            return Err((
                "timeout_ms",
                format!(
                    "{} ms is shorter than the minimum of {MIN_TIMEOUT_MS} ms",
                    self.timeout_ms
                ),
            ));
        }
        for (field, n) in [
            ("healthy_threshold", self.healthy_threshold),
            ("unhealthy_threshold", self.unhealthy_threshold),
        ] {
            if !(1..=MAX_THRESHOLD).contains(&n) {
                return Err((field, format!("{n} is outside 1-{MAX_THRESHOLD}")));
            }
        }
        if let Probe::Http { path } = &self.probe
            && (!path.starts_with('/')
                || path.len() > 1024
                || path.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err((
                "probe.path",
                format!("{path:?} is not a request path (/..., no spaces or control characters)"),
            ));
        }
        Ok(())
    }
}
