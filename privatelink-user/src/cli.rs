//! The console's steps as commands: each builds one API request and prints the answer as a
//! table (or JSON with --json).

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Client;

#[derive(Args, Clone)]
pub struct Conn {
    /// The daemon's API.
    #[arg(
        long,
        global = true,
        env = "PRIVATELINK_API",
        default_value = "http://127.0.0.1:7070"
    )]
    pub api: String,
    /// An account's token, or the admin token.
    #[arg(long, global = true, env = "PRIVATELINK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ApiCmd {
    /// Accounts (operator).
    #[command(subcommand)]
    Account(AccountCmd),
    /// VPCs and their vSwitches (operator).
    #[command(subcommand)]
    Vpc(VpcCmd),
    /// Endpoint services (provider).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Endpoints (consumer).
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Connections of a service's endpoints (provider).
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Security groups of an account's VPC (attach them with `endpoint create --sg`).
    #[command(subcommand)]
    Sg(SgCmd),
    /// Network ACLs of an account's vSwitches.
    #[command(subcommand)]
    Acl(AclCmd),
    /// What the caller sees, counted.
    Status,
}

#[derive(Subcommand)]
pub enum SgCmd {
    Create {
        id: String,
        #[arg(long)]
        vpc: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    List,
    Delete {
        id: String,
    },
    #[command(subcommand)]
    Rule(SgRuleCmd),
}

#[derive(Subcommand)]
pub enum SgRuleCmd {
    /// Add a rule; prints it with its id.
    Add {
        sg: String,
        #[arg(long, default_value = "ingress")]
        direction: String,
        /// 1 (highest) to 100.
        #[arg(long)]
        priority: u32,
        /// accept or drop.
        #[arg(long)]
        action: String,
        /// all, tcp, udp or icmp.
        #[arg(long, default_value = "all")]
        protocol: String,
        /// Port range LOW-HIGH (tcp, udp).
        #[arg(long)]
        ports: Option<String>,
        /// Remote address range.
        #[arg(long)]
        cidr: String,
    },
    Remove {
        sg: String,
        rule: String,
    },
}

#[derive(Subcommand)]
pub enum AclCmd {
    Create {
        id: String,
        #[arg(long)]
        vpc: String,
        /// A vSwitch the ACL guards (repeatable).
        #[arg(long = "vswitch", required = true)]
        vswitches: Vec<String>,
        /// An inbound rule "ACTION PROTOCOL CIDR [LOW-HIGH]", in order (repeatable).
        #[arg(long = "ingress")]
        ingress: Vec<String>,
        /// An outbound rule, same form (repeatable).
        #[arg(long = "egress")]
        egress: Vec<String>,
    },
    List,
    Delete {
        id: String,
    },
}

/// "80-90" → [80, 90]; the server checks the order.
fn port_range(s: &str) -> Result<Value> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    Ok(json!([
        lo.parse::<u16>().context("port")?,
        hi.parse::<u16>().context("port")?
    ]))
}

fn acl_rule(r: &str) -> Result<Value> {
    let p: Vec<&str> = r.split([' ', ',']).filter(|x| !x.is_empty()).collect();
    match p.as_slice() {
        [action, proto, cidr] => Ok(json!({"action": action, "protocol": proto, "cidr": cidr})),
        [action, proto, cidr, ports] => Ok(
            json!({"action": action, "protocol": proto, "cidr": cidr, "ports": port_range(ports)?}),
        ),
        _ => Err(anyhow!(
            "ACL rule {r:?}: expected \"ACTION PROTOCOL CIDR [LOW-HIGH]\""
        )),
    }
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Create an account; prints its token once.
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum VpcCmd {
    Create {
        id: String,
        #[arg(long)]
        account: String,
        #[arg(long)]
        cidr: String,
        /// The forwarder's interface attached to the VPC.
        #[arg(long)]
        interface: String,
        /// A vSwitch as ID:ZONE:CIDR (repeatable).
        #[arg(long = "vswitch")]
        vswitches: Vec<String>,
    },
    List,
}

#[derive(Subcommand)]
pub enum ServiceCmd {
    Create {
        id: String,
        #[arg(long)]
        vpc: String,
        /// The load balancer of a zone as ZONE:ADDRESS (repeatable).
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
        /// A SNAT address in the service's VPC (repeatable).
        #[arg(long = "snat", required = true)]
        snat: Vec<String>,
        /// SNAT port range LOW-HIGH.
        #[arg(long)]
        snat_ports: Option<String>,
        #[arg(long)]
        auto_accept: bool,
        #[arg(long)]
        no_zone_affinity: bool,
        #[arg(long)]
        domain: Option<String>,
        /// interface (a load balancer) or gateway (a prefix list reached by route).
        #[arg(long = "type", default_value = "interface")]
        kind: String,
        /// Gateway services: a prefix of the list (repeatable).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
    },
    List,
    Show {
        id: String,
    },
    /// Change settings of a service.
    Set {
        id: String,
        #[arg(long)]
        auto_accept: Option<bool>,
        #[arg(long)]
        zone_affinity: Option<bool>,
    },
    Delete {
        id: String,
    },
    /// The accounts allowed to connect.
    #[command(subcommand)]
    Whitelist(WhitelistCmd),
}

#[derive(Subcommand)]
pub enum WhitelistCmd {
    Add { service: String, account: String },
    Remove { service: String, account: String },
    List { service: String },
}

#[derive(Subcommand)]
pub enum EndpointCmd {
    Create {
        id: String,
        #[arg(long)]
        vpc: String,
        #[arg(long)]
        service: String,
        /// An ENI as VSWITCH:ADDRESS (repeatable, one per zone).
        #[arg(long = "zone")]
        zones: Vec<String>,
        /// Gateway endpoints: the route target address in the VPC.
        #[arg(long)]
        gateway: Option<String>,
        /// Gateway endpoints: an allowed destination "ACTION,PROTOCOL,CIDR[,LOW-HIGH]", in
        /// order (repeatable).
        #[arg(long = "policy")]
        policy: Vec<String>,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A security group id (repeatable, at most 5).
        #[arg(long = "sg")]
        security_groups: Vec<String>,
        /// A tag as KEY=VALUE (repeatable, at most 20).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    List,
    Show {
        id: String,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long = "zone")]
        zones: Vec<String>,
        #[arg(long = "sg")]
        security_groups: Vec<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ConnectionCmd {
    List { service: String },
    Accept { service: String, endpoint: String },
    Reject { service: String, endpoint: String },
    Disable { service: String, endpoint: String },
    Enable { service: String, endpoint: String },
}

fn split2<'a>(what: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    s.split_once(':')
        .ok_or_else(|| anyhow!("{what} {s:?}: expected A:B"))
}

fn tags(list: &[String]) -> Result<BTreeMap<String, String>> {
    list.iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("tag {t:?}: expected KEY=VALUE"))
        })
        .collect()
}

fn zones(list: &[String]) -> Result<Vec<Value>> {
    list.iter()
        .map(|z| split2("zone", z).map(|(v, e)| json!({"vswitch": v, "eni": e})))
        .collect()
}

pub fn run(conn: &Conn, cmd: ApiCmd) -> Result<()> {
    let c = Client::new(&conn.api, conn.token.clone());
    let (value, columns): (Value, &[&str]) = match cmd {
        ApiCmd::Status => (c.get("/v1/status")?, &[]),
        ApiCmd::Account(AccountCmd::Create { id, name }) => (
            c.post("/v1/accounts", &json!({"id": id, "name": name}))?,
            &["id", "name", "token"],
        ),
        ApiCmd::Account(AccountCmd::List) => (c.get("/v1/accounts")?, &["id", "name"]),
        ApiCmd::Vpc(VpcCmd::Create {
            id,
            account,
            cidr,
            interface,
            vswitches,
        }) => {
            let vs = vswitches
                .iter()
                .map(|v| {
                    let mut p = v.splitn(3, ':');
                    match (p.next(), p.next(), p.next()) {
                        (Some(i), Some(z), Some(c)) => Ok(json!({"id": i, "zone": z, "cidr": c})),
                        _ => Err(anyhow!("vswitch {v:?}: expected ID:ZONE:CIDR")),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let body = json!({"id": id, "account": account, "cidr": cidr, "interface": interface, "vswitches": vs});
            (
                c.post("/v1/vpcs", &body)?,
                &["id", "account", "cidr", "interface"],
            )
        }
        ApiCmd::Vpc(VpcCmd::List) => (c.get("/v1/vpcs")?, &["id", "account", "cidr", "interface"]),
        ApiCmd::Service(cmd) => service(&c, cmd)?,
        ApiCmd::Sg(cmd) => {
            const COLS: &[&str] = &["id", "account", "vpc", "name", "rules"];
            match cmd {
                SgCmd::Create { id, vpc, name } => (
                    c.post(
                        "/v1/security-groups",
                        &json!({"id": id, "vpc": vpc, "name": name}),
                    )?,
                    COLS,
                ),
                SgCmd::List => (c.get("/v1/security-groups")?, COLS),
                SgCmd::Delete { id } => (c.delete(&format!("/v1/security-groups/{id}"))?, &[]),
                SgCmd::Rule(SgRuleCmd::Add {
                    sg,
                    direction,
                    priority,
                    action,
                    protocol,
                    ports,
                    cidr,
                }) => {
                    let mut body = json!({"direction": direction, "priority": priority, "action": action, "protocol": protocol, "cidr": cidr});
                    if let Some(p) = ports {
                        body["ports"] = port_range(&p)?;
                    }
                    (
                        c.post(&format!("/v1/security-groups/{sg}/rules"), &body)?,
                        &[
                            "id",
                            "direction",
                            "priority",
                            "action",
                            "protocol",
                            "ports",
                            "cidr",
                        ],
                    )
                }
                SgCmd::Rule(SgRuleCmd::Remove { sg, rule }) => (
                    c.delete(&format!("/v1/security-groups/{sg}/rules/{rule}"))?,
                    &[],
                ),
            }
        }
        ApiCmd::Acl(cmd) => {
            const COLS: &[&str] = &["id", "account", "vpc", "vswitches"];
            match cmd {
                AclCmd::Create {
                    id,
                    vpc,
                    vswitches,
                    ingress,
                    egress,
                } => {
                    let ingress = ingress
                        .iter()
                        .map(|r| acl_rule(r))
                        .collect::<Result<Vec<_>>>()?;
                    let egress = egress
                        .iter()
                        .map(|r| acl_rule(r))
                        .collect::<Result<Vec<_>>>()?;
                    let body = json!({"id": id, "vpc": vpc, "vswitches": vswitches, "ingress": ingress, "egress": egress});
                    (c.post("/v1/acls", &body)?, COLS)
                }
                AclCmd::List => (c.get("/v1/acls")?, COLS),
                AclCmd::Delete { id } => (c.delete(&format!("/v1/acls/{id}"))?, &[]),
            }
        }
        ApiCmd::Endpoint(cmd) => endpoint(&c, cmd)?,
        ApiCmd::Connection(cmd) => {
            let (path, value) = match cmd {
                ConnectionCmd::List { service } => {
                    (None, c.get(&format!("/v1/services/{service}/connections"))?)
                }
                ConnectionCmd::Accept { service, endpoint } => {
                    (Some((service, endpoint, "accept")), Value::Null)
                }
                ConnectionCmd::Reject { service, endpoint } => {
                    (Some((service, endpoint, "reject")), Value::Null)
                }
                ConnectionCmd::Disable { service, endpoint } => {
                    (Some((service, endpoint, "disable")), Value::Null)
                }
                ConnectionCmd::Enable { service, endpoint } => {
                    (Some((service, endpoint, "enable")), Value::Null)
                }
            };
            let value = match path {
                Some((s, e, a)) => c.call(
                    "POST",
                    &format!("/v1/services/{s}/connections/{e}/{a}"),
                    None,
                )?,
                None => value,
            };
            (value, &["endpoint", "account", "state", "enis"])
        }
    };
    print(&value, columns, conn.json);
    Ok(())
}

fn service(c: &Client, cmd: ServiceCmd) -> Result<(Value, &'static [&'static str])> {
    const COLS: &[&str] = &[
        "id",
        "account",
        "vpc",
        "auto_accept",
        "whitelist",
        "backends",
        "snat",
    ];
    Ok(match cmd {
        ServiceCmd::Create {
            id,
            vpc,
            backends,
            snat,
            snat_ports,
            auto_accept,
            no_zone_affinity,
            domain,
            kind,
            prefixes,
        } => {
            let backends = backends
                .iter()
                .map(|b| split2("backend", b).map(|(z, a)| json!({"zone": z, "address": a})))
                .collect::<Result<Vec<_>>>()?;
            let ports = match snat_ports {
                Some(p) => {
                    let (lo, hi) = p
                        .split_once('-')
                        .context("--snat-ports: expected LOW-HIGH")?;
                    Some([
                        lo.parse::<u16>().context("--snat-ports low")?,
                        hi.parse::<u16>().context("--snat-ports high")?,
                    ])
                }
                None => None,
            };
            let body = json!({
                "id": id, "vpc": vpc, "backends": backends, "snat": snat, "snat_ports": ports,
                "auto_accept": auto_accept, "zone_affinity": !no_zone_affinity, "domain": domain,
                "type": kind, "prefixes": prefixes,
            });
            (c.post("/v1/services", &body)?, COLS)
        }
        ServiceCmd::List => (c.get("/v1/services")?, COLS),
        ServiceCmd::Show { id } => (c.get(&format!("/v1/services/{id}"))?, COLS),
        ServiceCmd::Set {
            id,
            auto_accept,
            zone_affinity,
        } => {
            let body = json!({"auto_accept": auto_accept, "zone_affinity": zone_affinity});
            let body: serde_json::Map<String, Value> = body
                .as_object()
                .expect("object")
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (
                c.call(
                    "PATCH",
                    &format!("/v1/services/{id}"),
                    Some(&Value::Object(body)),
                )?,
                COLS,
            )
        }
        ServiceCmd::Delete { id } => (c.delete(&format!("/v1/services/{id}"))?, &[]),
        ServiceCmd::Whitelist(WhitelistCmd::Add { service, account }) => (
            c.call(
                "PUT",
                &format!("/v1/services/{service}/whitelist/{account}"),
                None,
            )?,
            &[],
        ),
        ServiceCmd::Whitelist(WhitelistCmd::Remove { service, account }) => (
            c.delete(&format!("/v1/services/{service}/whitelist/{account}"))?,
            &[],
        ),
        ServiceCmd::Whitelist(WhitelistCmd::List { service }) => {
            (c.get(&format!("/v1/services/{service}/whitelist"))?, &[])
        }
    })
}

fn endpoint(c: &Client, cmd: EndpointCmd) -> Result<(Value, &'static [&'static str])> {
    const COLS: &[&str] = &[
        "id",
        "account",
        "vpc",
        "service",
        "connection",
        "zones",
        "name",
    ];
    Ok(match cmd {
        EndpointCmd::Create {
            id,
            vpc,
            service,
            zones: z,
            name,
            description,
            security_groups,
            tags: t,
            gateway,
            policy,
        } => {
            let policy = policy
                .iter()
                .map(|r| acl_rule(r))
                .collect::<Result<Vec<_>>>()?;
            let body = json!({
                "id": id, "vpc": vpc, "service": service, "zones": zones(&z)?, "name": name,
                "description": description, "security_groups": security_groups, "tags": tags(&t)?,
                "gateway": gateway, "policy": policy,
            });
            (c.post("/v1/endpoints", &body)?, COLS)
        }
        EndpointCmd::List => (c.get("/v1/endpoints")?, COLS),
        EndpointCmd::Show { id } => (c.get(&format!("/v1/endpoints/{id}"))?, COLS),
        EndpointCmd::Update {
            id,
            name,
            description,
            zones: z,
            security_groups,
            tags: t,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = name {
                body.insert("name".into(), n.into());
            }
            if let Some(d) = description {
                body.insert("description".into(), d.into());
            }
            if !z.is_empty() {
                body.insert("zones".into(), zones(&z)?.into());
            }
            if !security_groups.is_empty() {
                body.insert("security_groups".into(), json!(security_groups));
            }
            if !t.is_empty() {
                body.insert("tags".into(), json!(tags(&t)?));
            }
            (
                c.call(
                    "PATCH",
                    &format!("/v1/endpoints/{id}"),
                    Some(&Value::Object(body)),
                )?,
                COLS,
            )
        }
        EndpointCmd::Delete { id } => (c.delete(&format!("/v1/endpoints/{id}"))?, &[]),
    })
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(o) => o.values().map(cell).collect::<Vec<_>>().join(":"),
        other => other.to_string(),
    }
}

/// A table of `columns` for an object or a list of objects; anything else as JSON.
fn print(v: &Value, columns: &[&str], json: bool) {
    if json || columns.is_empty() {
        if !v.is_null() {
            println!("{}", serde_json::to_string_pretty(v).expect("json"));
        }
        return;
    }
    let rows: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![v],
        _ => {
            println!("{v}");
            return;
        }
    };
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(columns.iter().map(|c| c.to_uppercase()));
    for r in rows {
        t.add_row(columns.iter().map(|c| cell(&r[*c])));
    }
    println!("{t}");
}
