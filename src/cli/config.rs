//! `quicbus serve --config FILE`: `serve`'s settings in a TOML file.
//!
//! Every top-level key is a `serve` flag's long name, written with `-` or
//! `_` (`max-connections`, `max_connections`). The valid keys are read from
//! clap's own description of `serve`, so a flag added later can be set in
//! the file with no change here. Two tables are not flags: `[anonymous]`
//! (what clients without a token may do) and `[namespaces.NAME]` (one
//! namespace's settings).
//!
//! `main` reads the file before clap parses the command line and puts the
//! file's flags right after `serve`: clap then checks them like typed ones,
//! and the user's own flags win, as do environment variables such as
//! `QUICBUS_TOKEN` (a file flag the user also set, or one that conflicts
//! with a flag the user set, is left out). Everything wrong in the
//! file is found there, before the server starts, as one line naming the
//! key; `main` exits 2.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Command, CommandFactory};
use quicbus::auth::{Action, Pattern, PatternError, PermissionLists, Permissions};
use quicbus::server::{HistoryLimits, NamespaceError, NamespaceSettings, Namespaces};
use serde::de::DeserializeOwned;

/// A config file that cannot be used: one line for stderr.
#[derive(Debug, thiserror::Error)]
#[error("config {}: {problem}", path.display())]
pub struct ConfigError {
    /// The file, as given to `--config`.
    pub path: PathBuf,
    #[source]
    pub problem: Problem,
}

/// What is wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The file cannot be read.
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    /// The file is not valid TOML.
    #[error("line {line}, column {column}: invalid TOML: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// A top-level key that is neither a `serve` flag nor a section.
    #[error("key '{0}': unknown key (not a serve flag or section)")]
    UnknownKey(String),
    /// One flag set twice, once spelt with `-` and once with `_`.
    #[error("key '{key}': set twice (also as '{other}')")]
    Twice { key: String, other: String },
    /// A value of the wrong type, or one the flag or setting refuses.
    #[error("key '{key}': {message}")]
    BadValue { key: String, message: String },
    /// A room pattern that does not compile.
    #[error("key '{key}': {source}")]
    BadPattern {
        key: String,
        #[source]
        source: PatternError,
    },
    /// A namespace that cannot be configured (a bad name).
    #[error("key '{key}': {source}")]
    BadNamespace {
        key: String,
        #[source]
        source: NamespaceError,
    },
}

fn bad_value(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem::BadValue {
        key: key.into(),
        message: message.into(),
    }
}

/// The tables of a config file that are not flags.
#[derive(Debug, Clone, Default)]
pub struct Sections {
    /// `[anonymous]`: what clients without a token may do in every namespace.
    pub anonymous: Permissions,
    /// `[namespaces.NAME]`: each namespace's own settings.
    pub namespaces: HashMap<String, NamespaceSettings>,
}

impl Sections {
    /// The server's namespaces; `history` (from `serve`'s flags) is the
    /// default of every namespace that does not set its own.
    pub fn namespaces(&self, history: HistoryLimits) -> Result<Namespaces, NamespaceError> {
        Namespaces::new(history, self.anonymous.clone(), &self.namespaces)
    }

    /// Whether the file gives clients without a token any permission.
    pub fn grants_anonymous(&self) -> bool {
        self.anonymous != Permissions::nothing()
            || self.namespaces.values().any(|ns| {
                ns.anonymous
                    .as_ref()
                    .is_some_and(|lists| *lists != Default::default())
            })
    }
}

/// A config file, read and checked.
#[derive(Debug)]
pub struct ConfigFile {
    /// The flags it sets, in the order of their keys.
    flags: Vec<FileFlag>,
    /// Its tables that are not flags.
    pub sections: Sections,
}

/// One flag set by the file.
#[derive(Debug)]
struct FileFlag {
    /// The flag's clap id (`max_connections`).
    id: String,
    /// As `serve` arguments: `--max-connections=10`, or nothing for `false`.
    args: Vec<String>,
}

impl ConfigFile {
    /// Reads the file at `path` and checks all of it.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        Self::load_for(path, &serve_command())
    }

    fn load_for(path: &Path, serve: &Command) -> Result<ConfigFile, ConfigError> {
        let error = |problem| ConfigError {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(Problem::Read(e)))?;
        Self::parse(&text, serve).map_err(error)
    }

    /// Parses a file's text against the flags of `serve`.
    fn parse(text: &str, serve: &Command) -> Result<ConfigFile, Problem> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| syntax(text, &e))?;
        let anonymous = match table.remove("anonymous") {
            Some(value) => permission_lists("anonymous", value)?,
            None => PermissionLists::default(),
        };
        let namespaces = match table.remove("namespaces") {
            Some(value) => namespaces(value)?,
            None => HashMap::new(),
        };
        let anonymous = Permissions::compile(&anonymous).map_err(|source| Problem::BadPattern {
            key: "anonymous".into(),
            source,
        })?;
        Ok(ConfigFile {
            flags: flags(&table, serve)?,
            sections: Sections {
                anonymous,
                namespaces,
            },
        })
    }
}

/// `main`'s arguments, with the config file's flags put in for
/// `quicbus serve --config FILE`; any other command line is unchanged.
pub fn expand(raw: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    if raw.get(1).map(OsString::as_os_str) != Some(OsStr::new("serve")) {
        return Ok(raw);
    }
    let Some(path) = config_path(&raw[2..]) else {
        return Ok(raw);
    };
    let serve = serve_command();
    let file = ConfigFile::load_for(&path, &serve)?;
    Ok(splice(&serve, &file, raw))
}

/// The last `--config FILE` or `--config=FILE` of `serve`'s arguments
/// (clap, too, takes the last). A missing value is left for clap to report.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut found = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            match args.next() {
                Some(value) if !value.to_string_lossy().starts_with("--") => {
                    found = Some(PathBuf::from(value));
                }
                _ => return None,
            }
        } else if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            found = Some(PathBuf::from(value));
        }
    }
    found
}

/// `serve`'s clap command, built (so that every flag's action is known).
fn serve_command() -> Command {
    let mut quicbus = super::Args::command();
    quicbus.build();
    quicbus
        .find_subcommand("serve")
        .cloned()
        .expect("quicbus has a serve command")
}

/// The command line with the file's flags right after `serve`, so that the
/// user's own, after them, win. A file flag is left out when the user (or
/// the environment) set it, or set a flag that conflicts with it: typing
/// `--data DIR` overrides a file's `memory = true`.
fn splice(serve: &Command, file: &ConfigFile, raw: Vec<OsString>) -> Vec<OsString> {
    let (head, user) = raw.split_at(2);
    let given = given_flags(serve, user);
    let overridden = |id: &str| {
        given.iter().any(|&typed| {
            typed.get_id() == id
                || serve
                    .get_arguments()
                    .find(|arg| arg.get_id() == id)
                    .is_some_and(|arg| conflict(serve, arg, typed))
        })
    };
    let mut out = head.to_vec();
    for flag in &file.flags {
        if !overridden(&flag.id) {
            out.extend(flag.args.iter().map(OsString::from));
        }
    }
    out.extend(user.iter().cloned());
    out
}

/// The flags that `serve`'s own arguments or the environment set.
fn given_flags<'a>(serve: &'a Command, args: &[OsString]) -> Vec<&'a Arg> {
    let argv = std::iter::once(OsString::from("serve")).chain(args.iter().cloned());
    // Errors are clap's to report when it parses the whole command line.
    let Ok(matches) = serve.clone().ignore_errors(true).try_get_matches_from(argv) else {
        return Vec::new();
    };
    serve
        .get_arguments()
        .filter(|arg| {
            matches!(
                matches.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .collect()
}

/// Whether clap refuses `a` and `b` together (either may say so).
fn conflict(serve: &Command, a: &Arg, b: &Arg) -> bool {
    let names = |x: &Arg, y: &Arg| {
        serve
            .get_arg_conflicts_with(x)
            .iter()
            .any(|c| c.get_id() == y.get_id())
    };
    names(a, b) || names(b, a)
}

/// What a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    /// No value (`--memory`): `true` or `false` in the file.
    Nothing,
    /// One value (`--listen ADDR`).
    One,
    /// A value each time it is given (repeatable): a list in the file.
    Many,
}

/// The flag a top-level key names, with what it takes; `None` if the key
/// names no flag the file may set.
fn flag_for<'a>(serve: &'a Command, key: &str) -> Option<(&'a Arg, &'a str, Takes)> {
    let wanted = key.replace('_', "-");
    serve.get_arguments().find_map(|arg| {
        let long = arg.get_long()?;
        let settable = arg.get_id() != "config"
            && !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            );
        if !settable || long.replace('_', "-") != wanted {
            return None;
        }
        let takes = match arg.get_action() {
            action if !action.takes_values() => Takes::Nothing,
            ArgAction::Append => Takes::Many,
            _ => Takes::One,
        };
        Some((arg, long, takes))
    })
}

/// The file's flags (the top-level keys left once the sections are out),
/// each checked by clap on its own so that an error names its key.
fn flags(table: &toml::Table, serve: &Command) -> Result<Vec<FileFlag>, Problem> {
    let mut flags: Vec<(FileFlag, &str)> = Vec::new();
    for (key, value) in table {
        let Some((arg, long, takes)) = flag_for(serve, key) else {
            return Err(if key == "config" {
                bad_value(key, "a config file cannot name another")
            } else {
                Problem::UnknownKey(key.clone())
            });
        };
        let id = arg.get_id().as_str();
        if let Some((_, other)) = flags.iter().find(|(f, _)| f.id == id) {
            return Err(Problem::Twice {
                key: key.clone(),
                other: other.to_string(),
            });
        }
        let args = flag_args(key, long, takes, value)?;
        check_with_clap(serve, key, &args)?;
        flags.push((
            FileFlag {
                id: id.to_string(),
                args,
            },
            key,
        ));
    }
    Ok(flags.into_iter().map(|(flag, _)| flag).collect())
}

/// A key's value as `serve` arguments.
fn flag_args(
    key: &str,
    long: &str,
    takes: Takes,
    value: &toml::Value,
) -> Result<Vec<String>, Problem> {
    use toml::Value;
    let with_value = |value: &Value| Ok(format!("--{long}={}", scalar(key, value)?));
    match (takes, value) {
        (Takes::Nothing, Value::Boolean(true)) => Ok(vec![format!("--{long}")]),
        (Takes::Nothing, Value::Boolean(false)) => Ok(Vec::new()),
        (Takes::Nothing, other) => Err(bad_value(
            key,
            format!(
                "expected true or false (the flag takes no value), not {}",
                a_type(other)
            ),
        )),
        (Takes::Many, Value::Array(items)) => items.iter().map(with_value).collect(),
        (Takes::One, Value::Array(_)) => Err(bad_value(
            key,
            "expected one value, not a list (the flag is not repeatable)",
        )),
        (_, value) => Ok(vec![with_value(value)?]),
    }
}

/// One value as a flag's argument: strings as they are, numbers and
/// booleans as TOML writes them.
fn scalar(key: &str, value: &toml::Value) -> Result<String, Problem> {
    use toml::Value;
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        Value::Datetime(d) => Ok(d.to_string()),
        Value::Array(_) | Value::Table(_) => Err(bad_value(
            key,
            format!(
                "expected a string, number or boolean, not {}",
                a_type(value)
            ),
        )),
    }
}

/// "a string", "an integer": a value's type for a message.
fn a_type(value: &toml::Value) -> String {
    let name = value.type_str();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

/// Whether clap takes `args` (one key's), parsed with no other flag.
fn check_with_clap(serve: &Command, key: &str, args: &[String]) -> Result<(), Problem> {
    let argv = std::iter::once("serve".to_string()).chain(args.iter().cloned());
    match serve.clone().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        // How flags combine (`--cert` needs `--key`) is checked on the whole
        // command line, with the user's flags.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(bad_value(key, clap_message(&e))),
    }
}

/// Clap's complaint about a value, without its usage lines and without
/// naming the flag (the error names the key instead).
fn clap_message(err: &clap::Error) -> String {
    let Some(ContextValue::String(value)) = err.get(ContextKind::InvalidValue) else {
        let text = err.to_string();
        let first = text.lines().next().unwrap_or_default();
        return first.trim_start_matches("error: ").to_string();
    };
    let mut message = format!("invalid value '{value}'");
    if let Some(cause) = std::error::Error::source(err) {
        message.push_str(&format!(": {cause}"));
    } else if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
        message.push_str(&format!(" (possible values: {})", valid.join(", ")));
    }
    message
}

/// A TOML syntax error as one line.
fn syntax(text: &str, err: &toml::de::Error) -> Problem {
    let at = err.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..at).unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Problem::Syntax {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        message: err.message().trim().replace('\n', " "),
    }
}

/// `[namespaces.NAME]` tables.
fn namespaces(value: toml::Value) -> Result<HashMap<String, NamespaceSettings>, Problem> {
    let toml::Value::Table(table) = value else {
        return Err(bad_value(
            "namespaces",
            format!("expected tables [namespaces.NAME], not {}", a_type(&value)),
        ));
    };
    let mut settings = HashMap::new();
    for (name, value) in table {
        let key = format!("namespaces.{}", toml_key(&name));
        // Checked first, so that its errors name the list.
        if let Some(anonymous) = value.get("anonymous") {
            permission_lists(&format!("{key}.anonymous"), anonymous.clone())?;
        }
        let one: NamespaceSettings = from_value(&key, value)?;
        // The name's rules live with the namespaces.
        let alone = HashMap::from([(name.clone(), one.clone())]);
        Namespaces::new(HistoryLimits::default(), Permissions::nothing(), &alone).map_err(
            |source| Problem::BadNamespace {
                key: key.clone(),
                source,
            },
        )?;
        settings.insert(name, one);
    }
    Ok(settings)
}

/// Permission lists (`[anonymous]` or a namespace's `anonymous`), each
/// pattern compiled so that a bad one names its list.
fn permission_lists(key: &str, value: toml::Value) -> Result<PermissionLists, Problem> {
    let lists: PermissionLists = from_value(key, value)?;
    for action in Action::ALL {
        for pattern in lists.list(action) {
            Pattern::parse(pattern).map_err(|source| Problem::BadPattern {
                key: format!("{key}.{action}"),
                source,
            })?;
        }
    }
    Ok(lists)
}

/// `value` (at `key`) as a `T`; a table is tried key by key first, so that
/// an unknown key or a wrong type is named.
fn from_value<T: DeserializeOwned>(key: &str, value: toml::Value) -> Result<T, Problem> {
    if let toml::Value::Table(table) = &value {
        for (name, item) in table {
            let mut alone = toml::Table::new();
            alone.insert(name.clone(), item.clone());
            alone
                .try_into::<T>()
                .map_err(|e| bad_value(format!("{key}.{}", toml_key(name)), e.message().trim()))?;
        }
    }
    value
        .try_into::<T>()
        .map_err(|e| bad_value(key, e.message().trim()))
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, Problem> {
        ConfigFile::parse(text, &serve_command())
    }

    fn args_of(file: &ConfigFile) -> Vec<&str> {
        file.flags
            .iter()
            .flat_map(|f| f.args.iter().map(String::as_str))
            .collect()
    }

    /// The key an error names.
    fn key_of(problem: Problem) -> String {
        match problem {
            Problem::UnknownKey(key)
            | Problem::Twice { key, .. }
            | Problem::BadValue { key, .. }
            | Problem::BadPattern { key, .. }
            | Problem::BadNamespace { key, .. } => key,
            other => panic!("no key in {other:?}"),
        }
    }

    #[test]
    fn keys_are_long_flag_names_with_dashes_or_underscores() {
        let file = parse(
            "max-connections = 5\nhistory_events = 7\nlisten = \"127.0.0.1:9\"\n\
             max_joined_rooms = 3\npublish-rate = 0.5\n",
        )
        .unwrap();
        // In key order; a flattened group's flags (`max_joined_rooms`) too.
        assert_eq!(
            args_of(&file),
            [
                "--history-events=7",
                "--listen=127.0.0.1:9",
                "--max-connections=5",
                "--max-joined-rooms=3",
                "--publish-rate=0.5",
            ]
        );
    }

    #[test]
    fn a_flag_without_a_value_is_true_or_false() {
        assert_eq!(args_of(&parse("memory = true").unwrap()), ["--memory"]);
        assert!(args_of(&parse("memory = false").unwrap()).is_empty());
        for text in ["memory = 1", "memory = \"true\"", "memory = [true]"] {
            let err = parse(text).unwrap_err();
            assert!(
                err.to_string().contains("expected true or false"),
                "{text}: {err}"
            );
            assert_eq!(key_of(err), "memory");
        }
    }

    #[test]
    fn a_repeatable_flag_takes_a_list_and_others_one_value() {
        let serve = Command::new("serve")
            .arg(Arg::new("san").long("san").action(ArgAction::Append))
            .arg(Arg::new("name").long("name"))
            .arg(Arg::new("quiet").long("quiet").action(ArgAction::SetTrue));
        let parse = |text: &str| ConfigFile::parse(text, &serve);
        let file = parse("san = [\"a\", \"-b\", 3]\nname = \"-x\"\nquiet = true").unwrap();
        // `=` keeps a value that starts with `-` a value.
        assert_eq!(
            args_of(&file),
            ["--name=-x", "--quiet", "--san=a", "--san=-b", "--san=3"]
        );
        assert_eq!(args_of(&parse("san = \"a\"").unwrap()), ["--san=a"]);
        assert!(args_of(&parse("san = []").unwrap()).is_empty());
        let err = parse("name = [\"a\", \"b\"]").unwrap_err();
        assert!(err.to_string().contains("not a list"), "{err}");
        let err = parse("san = [[\"a\"]]").unwrap_err();
        assert!(err.to_string().contains("not an array"), "{err}");
        assert_eq!(key_of(err), "san");
    }

    #[test]
    fn unknown_and_twice_set_keys_are_refused() {
        let err = parse("max-conections = 5").unwrap_err();
        assert!(matches!(&err, Problem::UnknownKey(k) if k == "max-conections"));
        assert_eq!(
            err.to_string(),
            "key 'max-conections': unknown key (not a serve flag or section)"
        );
        assert_eq!(key_of(parse("help = true").unwrap_err()), "help");
        assert_eq!(key_of(parse("config = \"x.toml\"").unwrap_err()), "config");
        let err = parse("max_connections = 5\nmax-connections = 6").unwrap_err();
        assert!(matches!(err, Problem::Twice { .. }), "{err}");
    }

    #[test]
    fn clap_checks_each_value_and_the_error_names_the_key() {
        let cases = [
            ("max-connections = \"lots\"", "max-connections", "'lots'"),
            ("max-handshakes = 0", "max-handshakes", "'0'"),
            ("fsync = \"sometimes\"", "fsync", "sometimes"),
            ("listen = \"nowhere\"", "listen", "'nowhere'"),
            ("history_seconds = -1", "history_seconds", "'-1'"),
        ];
        for (text, key, detail) in cases {
            let err = parse(text).unwrap_err();
            let line = err.to_string();
            assert!(
                line.starts_with(&format!("key '{key}': invalid value")),
                "{line}"
            );
            assert!(line.contains(detail), "{line}");
            assert!(!line.contains('\n') && !line.contains("--"), "{line}");
        }
        // Combinations are the whole command line's to check.
        assert_eq!(
            args_of(&parse("cert = \"c.pem\"").unwrap()),
            ["--cert=c.pem"]
        );
    }

    #[test]
    fn the_file_goes_first_and_the_users_flags_win() {
        let serve = serve_command();
        let file = parse(
            "listen = \"127.0.0.1:1\"\nmemory = true\nmax-connections = 5\nfsync = \"never\"",
        )
        .unwrap();
        let raw: Vec<OsString> = [
            "quicbus",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "d",
            "--config",
            "f",
        ]
        .map(OsString::from)
        .to_vec();
        let out = splice(&serve, &file, raw);
        // `listen` was typed; `--data` conflicts with `memory`.
        assert_eq!(
            out,
            [
                "quicbus",
                "serve",
                "--fsync=never",
                "--max-connections=5",
                "--listen",
                "127.0.0.1:0",
                "--data",
                "d",
                "--config",
                "f",
            ]
        );
        assert!(<super::super::Args as clap::Parser>::try_parse_from(out).is_ok());
    }

    #[test]
    fn config_path_is_the_last_config_before_a_double_dash() {
        let path = |args: &[&str]| {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            config_path(&args)
        };
        assert_eq!(path(&["--config", "a.toml"]), Some("a.toml".into()));
        assert_eq!(
            path(&["--memory", "--config=b.toml"]),
            Some("b.toml".into())
        );
        assert_eq!(
            path(&["--config", "a.toml", "--config=b.toml"]),
            Some("b.toml".into())
        );
        assert_eq!(path(&["--", "--config", "a.toml"]), None);
        assert_eq!(path(&["--config", "--memory"]), None);
        assert_eq!(path(&["--memory"]), None);
    }

    #[test]
    fn expand_leaves_other_command_lines_alone() {
        for args in [
            vec!["quicbus", "sub", "--config", "x.toml"],
            vec!["quicbus", "serve", "--memory"],
            vec!["quicbus"],
        ] {
            let raw: Vec<OsString> = args.iter().map(OsString::from).collect();
            assert_eq!(expand(raw.clone()).unwrap(), raw);
        }
    }

    #[test]
    fn no_flag_is_named_like_a_section() {
        let serve = serve_command();
        for section in ["anonymous", "namespaces"] {
            assert!(flag_for(&serve, section).is_none(), "{section}");
        }
    }

    #[test]
    fn sections_are_checked_and_their_errors_name_the_key() {
        let cases = [
            (
                "[namespaces.game]\nhistroy_events = 1",
                "namespaces.game.histroy_events",
            ),
            ("[namespaces.game]\necho = \"yes\"", "namespaces.game.echo"),
            (
                "[namespaces.game]\nanonymous = { publish = [\"a.>.b\"] }",
                "namespaces.game.anonymous.publish",
            ),
            (
                "[namespaces.game]\nanonymous = { publsh = [\"a\"] }",
                "namespaces.game.anonymous.publsh",
            ),
            ("[namespaces.\"a.b\"]\necho = true", "namespaces.\"a.b\""),
            ("namespaces = { game = 3 }", "namespaces.game"),
            ("namespaces = 3", "namespaces"),
            ("[anonymous]\nsubscribe = [\"x*\"]", "anonymous.subscribe"),
            ("[anonymous]\nhistory = [\"\"]", "anonymous.history"),
            ("[anonymous]\nsubscrbe = [\"x\"]", "anonymous.subscrbe"),
            ("anonymous = [\"x\"]", "anonymous"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err();
            assert!(!err.to_string().contains('\n'), "{err}");
            assert_eq!(key_of(err), key, "{text}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line_and_column() {
        let err = parse("listen = \"127.0.0.1:0\"\n[namespaces.game\n").unwrap_err();
        assert!(matches!(err, Problem::Syntax { line: 2, .. }), "{err:?}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn the_example_file_loads_with_every_section() {
        let file = parse(include_str!("../../quicbus.example.toml")).unwrap();
        assert!(args_of(&file).contains(&"--listen=127.0.0.1:4433"));
        let sections = &file.sections;
        assert!(sections.anonymous.allows(Action::Subscribe, "public.news"));
        assert!(!sections.anonymous.allows(Action::Publish, "public.news"));
        let mut names: Vec<&str> = sections.namespaces.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["chat", "game", "telemetry"]);

        let history = HistoryLimits::default();
        let namespaces = sections.namespaces(history).unwrap();
        let game = namespaces.of("game.lobby.1");
        assert!(game.datagrams);
        assert_eq!(game.history.max_events, 1000);
        assert!(game.anonymous.allows(Action::Subscribe, "game.1.state"));
        assert!(game.anonymous.allows(Action::Subscribe, "public.news"));
        assert_eq!(namespaces.of("telemetry.cpu").history.max_events, 0);
        let chat = namespaces.of("chat.lobby");
        assert!(!chat.datagrams);
        assert_eq!(chat.max_payload, Some(4096));
        assert_eq!(chat.echo, Some(true));
        assert!(chat.anonymous.allows(Action::History, "chat.lobby"));
        assert_eq!(namespaces.of("other.room").history, history);
    }

    #[test]
    fn clap_messages_lose_the_flag_and_usage() {
        let serve = serve_command();
        let err = serve
            .clone()
            .try_get_matches_from(["serve", "--max-connections=x"])
            .unwrap_err();
        assert_eq!(
            clap_message(&err),
            "invalid value 'x': invalid digit found in string"
        );
    }
}
