//! The daemon's configuration file (`privatelink daemon --config FILE`; the package
//! installs it as /etc/privatelink/privatelink.toml): a TOML table whose keys are the
//! daemon's long option names (`data_dir`, or `data-dir` as on the command line) and whose
//! values are what the option takes: a string or a number, `true` for a switch, a list for
//! an option given several times. The keys and the checks of their values are clap's
//! (`DaemonArgs`), so every option can be set with no second list to keep in step. The
//! file's settings become arguments placed before the command line's, and the daemon
//! command lets a later occurrence of an option override an earlier one: the command line
//! wins.
//!
//! On SIGHUP the daemon reads the file again (`Reloader`): the settings in `LIVE` change
//! at once, every other change is reported as needing a restart and left alone, and a
//! file that does not read changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::Array;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use privatelink_common::{Config, map_names};
use tracing::{info, warn};

use crate::{cli::Conn, daemon::DaemonArgs, dataplane, process};

/// Where the package installs the file (the systemd unit passes it with `--config`).
pub const DEFAULT_PATH: &str = "/etc/privatelink/privatelink.toml";

/// The option that names the file (not a key of the file).
const CONFIG: &str = "config";

/// The settings a SIGHUP changes in the running daemon: the log filter, and the flow
/// timeouts the data path reads from `PL_CONFIG`. Any other needs a restart.
pub const LIVE: &[&str] = &[
    "log",
    "tcp_timeout",
    "udp_timeout",
    "closing_timeout",
    "embryonic_timeout",
];

/// The daemon's options as clap defines them: the file's keys and their values' parsers.
pub fn daemon_command() -> Command {
    DaemonArgs::augment_args(Command::new("daemon"))
}

/// The options a file may set: every daemon option but `--config`.
pub fn settable(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_id() != CONFIG)
}

/// The file's settings as daemon arguments (`--tcp-timeout=350`, `--xdp-skb`), each value
/// checked by its option's own parser. Errors name the file and the key.
pub fn file_args(path: &Path) -> Result<Vec<OsString>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let cmd = daemon_command();
    let mut seen = BTreeSet::new();
    let mut args = Vec::new();
    for (key, value) in &table {
        let at = |e: String| anyhow!("{}: key `{key}`: {e}", path.display());
        if key.replace('-', "_") == CONFIG {
            return Err(at("the file cannot name another configuration file".into()));
        }
        let long = key.replace('_', "-");
        let Some(arg) = settable(&cmd).find(|a| a.get_long() == Some(long.as_str())) else {
            bail!(
                "{}: unknown key `{key}` (the keys are `privatelink daemon`'s long options, \
                 e.g. data_dir)",
                path.display()
            );
        };
        if !seen.insert(arg.get_id().as_str()) {
            return Err(at("set twice (once with `_`, once with `-`)".into()));
        }
        let a = setting_args(arg, value).map_err(at)?;
        check(&cmd, &a).map_err(at)?;
        args.extend(a);
    }
    Ok(args)
}

/// One setting as arguments: a switch is present or not; each value of an option is
/// `--long=value` (a list only for an option given several times).
fn setting_args(arg: &Arg, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = format!("--{}", arg.get_long().expect("settable options have one"));
    if !arg.get_action().takes_values() {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![flag.into()]),
            toml::Value::Boolean(false) => Ok(vec![]),
            v => Err(format!("a switch: true or false, not a {}", v.type_str())),
        };
    }
    let values = match value {
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
        }
        toml::Value::Array(_) => return Err("takes one value, not a list".into()),
        v => vec![scalar(v)?],
    };
    Ok(values
        .into_iter()
        .map(|v| format!("{flag}={v}").into())
        .collect())
}

/// A TOML scalar as the text the command line would give.
fn scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        v => Err(format!("a {} is not a value of this option", v.type_str())),
    }
}

/// Parses `args` alone with the daemon's options (nothing required): the values' errors
/// as clap words them.
fn check(cmd: &Command, args: &[OsString]) -> Result<(), String> {
    let mut alone = cmd
        .clone()
        .no_binary_name(true)
        .mut_args(|a| a.required(false));
    for g in cmd.get_groups() {
        alone = alone.mut_group(g.get_id(), |g| g.required(false));
    }
    alone
        .try_get_matches_from(args)
        .map(|_| ())
        .map_err(|e| clap_message(&e))
}

/// clap's message without its `error: ` prefix and the help hint after it.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// `privatelink` arguments with `daemon --config FILE` given, and the file read.
pub struct Expanded {
    /// The arguments with the file's settings placed right after `daemon`.
    pub argv: Vec<OsString>,
    /// The command line's arguments after `daemon` (read again with the file on SIGHUP).
    pub command_line: Vec<OsString>,
}

/// `argv` with the `--config` file's settings placed right after the `daemon` subcommand,
/// where the command line's own (later) override them. `None` unless `argv` runs the
/// daemon with `--config` (a malformed command line is left to the real parse).
pub fn expand_argv(cli: &Command, argv: &[OsString]) -> Result<Option<Expanded>> {
    let lenient = cli.clone().ignore_errors(true);
    let Ok(m) = lenient.clone().try_get_matches_from(argv) else {
        return Ok(None);
    };
    let Some(("daemon", sub)) = m.subcommand() else {
        return Ok(None);
    };
    let Some(file) = sub.get_one::<PathBuf>(CONFIG) else {
        return Ok(None);
    };
    // Where the subcommand's name is: the first `daemon` that parses as it (an option's
    // value can read `daemon` too).
    let at = (1..argv.len())
        .find(|&i| {
            argv[i] == "daemon"
                && lenient
                    .clone()
                    .try_get_matches_from(&argv[..=i])
                    .is_ok_and(|m| m.subcommand_name() == Some("daemon"))
        })
        .context("the daemon subcommand's place in the arguments")?;
    let command_line = argv[at + 1..].to_vec();
    let mut out = argv[..=at].to_vec();
    out.extend(file_args(file)?);
    out.extend(command_line.iter().cloned());
    Ok(Some(Expanded {
        argv: out,
        command_line,
    }))
}

/// Every daemon option's value in force, as text (the file's, the command line's, or the
/// default): what a reload compares.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings(BTreeMap<String, Vec<String>>);

impl Settings {
    fn of(m: &ArgMatches) -> Self {
        let cmd = daemon_command();
        Self(
            settable(&cmd)
                .map(|a| {
                    let id = a.get_id().as_str();
                    let raw = m
                        .get_raw(id)
                        .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                        .unwrap_or_default();
                    (id.to_string(), raw)
                })
                .collect(),
        )
    }

    /// The settings whose values differ in `next`: (those `LIVE` applies, those that need
    /// a restart).
    fn changes(&self, next: &Settings) -> (Vec<String>, Vec<String>) {
        next.0
            .iter()
            .filter(|(k, v)| self.0.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .partition(|k| LIVE.contains(&k.as_str()))
    }

    /// One setting's value for a log line.
    fn show(&self, key: &str) -> String {
        match self.0.get(key).map(Vec::as_slice) {
            None | Some([]) => "(unset)".into(),
            Some(v) => v.join(","),
        }
    }
}

/// The daemon's options read again: the file's settings, then the command line's.
fn read_options(file: &Path, command_line: &[OsString]) -> Result<(DaemonArgs, Settings)> {
    let mut argv = vec![OsString::from("daemon")];
    argv.extend(file_args(file)?);
    argv.extend(command_line.iter().cloned());
    // The command line may carry `privatelink`'s global options too.
    let m = Conn::augment_args(daemon_command())
        .try_get_matches_from(argv)
        .map_err(|e| anyhow!("{}: {}", file.display(), clap_message(&e)))?;
    let args = DaemonArgs::from_arg_matches(&m).map_err(|e| anyhow!("{}", clap_message(&e)))?;
    Ok((args, Settings::of(&m)))
}

/// The running daemon's settings and how to read them again on SIGHUP.
pub struct Reloader {
    file: PathBuf,
    command_line: Vec<OsString>,
    pin_dir: PathBuf,
    /// The flow table's size as it runs (a changed one needs a restart).
    conntrack_entries: u32,
    running: Settings,
}

impl Reloader {
    /// For a daemon started with `--config` (`None` without).
    pub fn new(args: &DaemonArgs) -> Result<Option<Self>> {
        let Some(file) = &args.config else {
            return Ok(None);
        };
        let (_, running) = read_options(file, &args.command_line)?;
        Ok(Some(Self {
            file: file.clone(),
            command_line: args.command_line.clone(),
            pin_dir: args.pin_dir.clone(),
            conntrack_entries: args.conntrack_entries,
            running,
        }))
    }

    /// Reads the file again and applies the `LIVE` settings that changed, one log line
    /// each; other changes are reported as needing a restart and not applied. A file that
    /// does not read is refused whole: the running settings stay.
    pub fn reload(&mut self) -> Result<()> {
        let (args, next) = read_options(&self.file, &self.command_line)?;
        let (live, restart) = self.running.changes(&next);
        let file = self.file.display();
        // The log filter first: it is checked as it is set, and a refused one leaves the
        // timeouts unwritten too (nothing half-applied). The flow table keeps its running
        // size (a changed `conntrack_entries` needs a restart), and so the capacity the
        // endpoints' shares are taken of.
        if live.iter().any(|k| k == "log") {
            process::set_log_filter(args.log.as_deref())?;
        }
        if live.iter().any(|k| k.ends_with("_timeout")) {
            let cfg = Config {
                flow_capacity: self.conntrack_entries as u64 / 2,
                ..args.flow_config()
            };
            write_flow_config(&self.pin_dir, &cfg)?;
        }
        for k in &restart {
            warn!(
                setting = k,
                running = %self.running.show(k),
                file = %next.show(k),
                "{file}: {k} changed: needs a restart (the running value stays)"
            );
        }
        for k in &live {
            info!(
                setting = k,
                from = %self.running.show(k),
                to = %next.show(k),
                "{file}: {k} applied"
            );
        }
        if live.is_empty() && restart.is_empty() {
            info!("{file}: reloaded, no setting changed");
        }
        for k in live {
            let v = next.0[&k].clone();
            self.running.0.insert(k, v);
        }
        Ok(())
    }
}

/// Writes the data path's settings into the pinned `PL_CONFIG` (the data path reads them
/// at every packet).
fn write_flow_config(pin_dir: &Path, cfg: &Config) -> Result<()> {
    let mut map = dataplane::open_pinned(pin_dir, map_names::CONFIG)?;
    let mut a: Array<_, Config> = Array::try_from(&mut map)?;
    a.set(0, cfg, 0)
        .with_context(|| format!("writing {}", map_names::CONFIG))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// The file the package installs as /etc/privatelink/privatelink.toml.
    const SHIPPED: &str = include_str!("../../packaging/privatelink.toml");

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn parse(argv: &[OsString]) -> DaemonArgs {
        let m = daemon_command().try_get_matches_from(argv).unwrap();
        DaemonArgs::from_arg_matches(&m).unwrap()
    }

    fn daemon_argv(f: &tempfile::NamedTempFile, cmdline: &[&str]) -> Vec<OsString> {
        let mut argv = vec![OsString::from("daemon")];
        argv.extend(file_args(f.path()).unwrap());
        argv.extend(cmdline.iter().map(OsString::from));
        argv
    }

    /// The shipped file's line for `key`, commented out or not: `# key = value`.
    fn shipped_line(key: &str) -> Option<&'static str> {
        SHIPPED.lines().find(|l| {
            l.trim_start_matches('#')
                .trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    }

    /// Every daemon option has its line in packaging/privatelink.toml, and an option with a
    /// default shows that default. (A new daemon option fails here until its line is
    /// added.)
    #[test]
    fn the_shipped_file_documents_every_daemon_option_with_its_default() {
        let cmd = daemon_command();
        let mut missing = Vec::new();
        for arg in settable(&cmd) {
            let key = arg.get_id().as_str();
            let Some(line) = shipped_line(key) else {
                missing.push(key.to_string());
                continue;
            };
            let Some(default) = arg.get_default_values().first() else {
                continue;
            };
            let value = line.split_once('=').unwrap().1.trim();
            let value: toml::Value = toml::from_str(&format!("v = {value}"))
                .map(|t: toml::Table| t["v"].clone())
                .unwrap_or_else(|e| panic!("{key}: {value} is not a TOML value: {e}"));
            assert_eq!(
                scalar(&value).unwrap(),
                default.to_string_lossy(),
                "packaging/privatelink.toml shows another default for {key}: {line}"
            );
        }
        assert!(
            missing.is_empty(),
            "packaging/privatelink.toml has no line for {missing:?}: add `# KEY = DEFAULT` \
             with the option's help above it"
        );
    }

    /// The shipped file, uncommented whole, is a valid configuration of every option
    /// (values of the right types, no key misspelt).
    #[test]
    fn the_shipped_file_uncommented_reads_as_settings() {
        let text: String = SHIPPED
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
            .map(|l| format!("{l}\n"))
            .collect();
        let f = file(&text);
        let args = file_args(f.path()).unwrap();
        let cmd = daemon_command();
        for arg in settable(&cmd) {
            let long = format!("--{}", arg.get_long().unwrap());
            assert!(
                args.iter().any(|a| {
                    let a = a.to_string_lossy();
                    a == long || a.starts_with(&format!("{long}="))
                }) || !arg.get_action().takes_values(),
                "{long} not set by the shipped file's example line"
            );
        }
    }

    #[test]
    fn the_command_line_overrides_the_file_and_both_spellings_are_keys() {
        let f = file(
            "data_dir = \"/var/lib/pl\"\ntcp-timeout = 100\nudp_timeout = 50\nxdp_skb = true\n",
        );
        let args = parse(&daemon_argv(&f, &["--tcp-timeout", "7"]));
        assert_eq!(args.data_dir.as_deref(), Some(Path::new("/var/lib/pl")));
        assert_eq!((args.tcp_timeout, args.udp_timeout), (7, 50));
        assert!(args.xdp_skb);
    }

    #[test]
    fn unknown_keys_and_wrong_values_are_refused_naming_the_key_and_the_file() {
        for (text, words) in [
            ("data_dri = \"/x\"\n", &["unknown key `data_dri`"][..]),
            ("tcp_timeout = \"soon\"\n", &["key `tcp_timeout`", "soon"]),
            ("tcp_timeout = 0\n", &["key `tcp_timeout`", "0"]),
            ("xdp_skb = \"yes\"\n", &["key `xdp_skb`", "true or false"]),
            ("listen = [\"a\", \"b\"]\n", &["key `listen`", "not a list"]),
            ("config = \"/etc/x\"\n", &["key `config`"]),
            ("tcp_timeout = 5\ntcp-timeout = 6\n", &["set twice"]),
        ] {
            let f = file(text);
            let e = file_args(f.path()).unwrap_err().to_string();
            assert!(e.contains(&f.path().display().to_string()), "{text}: {e}");
            for w in words {
                assert!(e.contains(w), "{text}: {e:?} does not say {w:?}");
            }
        }
    }

    #[test]
    fn the_file_goes_right_after_the_daemon_subcommand() {
        let f = file("data_dir = \"/d\"\ntcp_timeout = 100\n");
        let cli = Command::new("privatelink")
            .arg(clap::Arg::new("token").long("token").global(true))
            .subcommand(daemon_command())
            .subcommand(Command::new("other"));
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let path = f.path().to_str().unwrap();
        let argv = os(&[
            "pl",
            "--token",
            "daemon",
            "daemon",
            "--config",
            path,
            "--udp-timeout=9",
        ]);
        let e = expand_argv(&cli, &argv).unwrap().unwrap();
        assert_eq!(
            e.argv,
            os(&[
                "pl",
                "--token",
                "daemon",
                "daemon",
                "--data-dir=/d",
                "--tcp-timeout=100",
                "--config",
                path,
                "--udp-timeout=9"
            ])
        );
        assert_eq!(e.command_line, os(&["--config", path, "--udp-timeout=9"]));
        assert!(expand_argv(&cli, &os(&["pl", "other"])).unwrap().is_none());
        assert!(
            expand_argv(&cli, &os(&["pl", "daemon", "--data-dir", "/d"]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_reload_sorts_changes_into_live_ones_and_those_needing_a_restart() {
        let settings = |text: &str| {
            let f = file(text);
            read_options(f.path(), &[OsString::from("--udp-timeout=9")])
                .unwrap()
                .1
        };
        let before = settings("data_dir = \"/d\"\ntcp_timeout = 100\n");
        let after =
            settings("data_dir = \"/e\"\ntcp_timeout = 200\nudp_timeout = 1\nlog = \"debug\"\n");
        let (live, restart) = before.changes(&after);
        // udp_timeout: the command line's 9 still wins.
        assert_eq!(live, ["log", "tcp_timeout"]);
        assert_eq!(restart, ["data_dir"]);
        assert_eq!(before.show("tcp_timeout"), "100");
        assert_eq!(before.show("log"), "(unset)");
    }
}
