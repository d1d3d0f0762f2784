//! README's configuration tables, checked against the code: every variable a service reads
//! must have a row in README with the same default, and every row must name a variable the
//! service reads. Each service crate runs the check in a test of its own
//! (`tests/readme_config.rs`), so `cargo test` fails when the two drift apart.
//!
//! A configuration table is a markdown table right after a marker line
//! `<!-- configuration: SCOPE -->`, where SCOPE is a service's name or `both services`
//! (the variables every service has, such as the server limits). Its first column holds
//! one variable in backticks, its second the default:
//! - `` `VALUE` ``: the default, exactly as clap has it (`--help` shows it so);
//! - `required`: no default, and start-up stops without it;
//! - anything without backticks (`unset`, `empty`, `random per process`): no default, and
//!   the variable is optional.
//!
//! A table whose first header cell is `variable` without a marker above it is an error,
//! so a new configuration table cannot escape the check.

use std::collections::BTreeMap;

/// The scope of the variables every service has.
pub const BOTH_SERVICES: &str = "both services";

const MARKER_START: &str = "<!-- configuration:";
const MARKER_END: &str = "-->";

/// What a service's code says about one variable's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Default {
    /// A default value, as text.
    Value(String),
    /// No default; start-up stops without it.
    Required,
    /// No default; optional.
    Unset,
}

/// One environment variable a service reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub default: Default,
}

impl Variable {
    pub fn new(name: impl Into<String>, default: Default) -> Self {
        Self {
            name: name.into(),
            default,
        }
    }
}

/// Every argument of `command` that has an `env` name (what `--help` lists as
/// `[env: NAME=]`), with its default as clap knows it. Arguments hidden from `--help` are
/// left out.
pub fn variables_of(mut command: clap::Command) -> Vec<Variable> {
    // Building completes each argument as parsing would (a flag's implicit `false`).
    command.build();
    command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .filter_map(|arg| {
            let name = arg.get_env()?.to_string_lossy().into_owned();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            let default = if !defaults.is_empty() {
                Default::Value(defaults.join(","))
            } else if arg.is_required_set() {
                Default::Required
            } else {
                Default::Unset
            };
            Some(Variable::new(name, default))
        })
        .collect()
}

/// One row of a configuration table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// 1-based line number in README.
    line: usize,
    scope: String,
    name: String,
    default: String,
}

/// The rows of every configuration table in `readme`, and what could not be read.
fn rows(readme: &str) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut scope: Option<(usize, String)> = None;
    let mut lines = readme.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let line_no = index + 1;
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(MARKER_START) {
            let Some(name) = rest.strip_suffix(MARKER_END) else {
                problems.push(format!(
                    "line {line_no}: a marker must end with `-->` on its line"
                ));
                continue;
            };
            if let Some((marker_line, _)) = &scope {
                problems.push(format!(
                    "line {marker_line}: the marker is followed by no table"
                ));
            }
            scope = Some((line_no, name.trim().to_owned()));
            continue;
        }
        if !trimmed.starts_with('|') {
            // Only blank lines may stand between a marker and its table.
            if !trimmed.is_empty()
                && let Some((marker_line, _)) = scope.take()
            {
                problems.push(format!(
                    "line {marker_line}: the marker is followed by no table"
                ));
            }
            continue;
        }
        // A table: its header, the separator, then its rows.
        let header = cells(trimmed);
        let Some((_, table_scope)) = scope.take() else {
            if header.first().is_some_and(|cell| cell == "variable") {
                problems.push(format!(
                    "line {line_no}: a configuration table without a `{MARKER_START} SCOPE {MARKER_END}` line above it"
                ));
            }
            while lines
                .next_if(|(_, line)| line.trim().starts_with('|'))
                .is_some()
            {}
            continue;
        };
        if header.len() < 2 || header[0] != "variable" || header[1] != "default" {
            problems.push(format!(
                "line {line_no}: a configuration table's header starts with `| variable | default |`"
            ));
        }
        lines.next_if(|(_, line)| is_separator(line));
        while let Some((index, line)) = lines.next_if(|(_, line)| line.trim().starts_with('|')) {
            let line_no = index + 1;
            let row = cells(line.trim());
            let name = row.first().map(String::as_str).unwrap_or_default();
            match one_variable(name) {
                Some(name) => rows.push(Row {
                    line: line_no,
                    scope: table_scope.clone(),
                    name: name.to_owned(),
                    default: row.get(1).cloned().unwrap_or_default(),
                }),
                None => problems.push(format!(
                    "line {line_no}: the first cell must be one variable in backticks, such as `NAME`, not {name:?}"
                )),
            }
        }
    }
    if let Some((marker_line, _)) = scope {
        problems.push(format!(
            "line {marker_line}: the marker is followed by no table"
        ));
    }
    (rows, problems)
}

/// The first two cells of a table line and the rest as one (the last column may hold
/// anything).
fn cells(line: &str) -> Vec<String> {
    let inner = line.strip_prefix('|').unwrap_or(line);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner
        .splitn(3, '|')
        .map(|cell| cell.trim().to_owned())
        .collect()
}

/// The line under a table's header: `|---|:--|`.
fn is_separator(line: &str) -> bool {
    let line = line.trim();
    line.starts_with('|') && line.contains('-') && line.chars().all(|c| "|-: ".contains(c))
}

/// `NAME` from `` `NAME` ``, when the cell is exactly one variable name in backticks.
fn one_variable(cell: &str) -> Option<&str> {
    let name = cell.strip_prefix('`')?.strip_suffix('`')?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    valid.then_some(name)
}

/// What README's default cell claims.
fn claimed(cell: &str) -> Default {
    match cell
        .strip_prefix('`')
        .and_then(|rest| rest.strip_suffix('`'))
    {
        Some(value) if !value.contains('`') => Default::Value(value.to_owned()),
        _ if cell == "required" => Default::Required,
        _ => Default::Unset,
    }
}

fn describe(default: &Default) -> String {
    match default {
        Default::Value(value) => format!("`{value}`"),
        Default::Required => "required".to_owned(),
        Default::Unset => "no default (optional)".to_owned(),
    }
}

/// The differences between README's tables for `service` (its own and those of
/// [`BOTH_SERVICES`]) and the variables `service` reads; empty when they agree.
pub fn differences(readme: &str, service: &str, code: &[Variable]) -> Vec<String> {
    let (rows, mut found) = rows(readme);
    let mut in_readme: BTreeMap<&str, &Row> = BTreeMap::new();
    for row in rows
        .iter()
        .filter(|row| row.scope == service || row.scope == BOTH_SERVICES)
    {
        if let Some(first) = in_readme.insert(&row.name, row) {
            found.push(format!(
                "`{}`: listed twice for {service}, on lines {} and {}",
                row.name, first.line, row.line
            ));
        }
    }
    let mut in_code: BTreeMap<&str, &Variable> = BTreeMap::new();
    for variable in code {
        in_code.insert(&variable.name, variable);
    }
    for (name, variable) in &in_code {
        let Some(row) = in_readme.get(name) else {
            found.push(format!(
                "`{name}`: {service} reads it ({}), README's tables for {service} do not list it",
                describe(&variable.default)
            ));
            continue;
        };
        let readme_default = claimed(&row.default);
        if readme_default != variable.default {
            found.push(format!(
                "`{name}` (line {}): README's default is {}, the code's is {}",
                row.line,
                describe(&readme_default),
                describe(&variable.default)
            ));
        }
    }
    for (name, row) in &in_readme {
        if !in_code.contains_key(name) {
            found.push(format!(
                "`{name}` (line {}, table `{}`): listed in README, but {service} reads no such variable",
                row.line, row.scope
            ));
        }
    }
    found
}

/// Panics with the list of differences, if there are any.
pub fn assert_agrees(readme: &str, service: &str, code: &[Variable]) {
    let found = differences(readme, service, code);
    assert!(
        found.is_empty(),
        "README.md's configuration tables and {service}'s code disagree:\n- {}",
        found.join("\n- ")
    );
}

/// README.md at the root of the workspace.
pub fn workspace_readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = "\
# Example

<!-- configuration: both services -->
| variable | default | meaning |
|---|---|---|
| `LOG_FORMAT` | `json` | `json` or `pretty` |

Some text | with a pipe.

<!-- configuration: svc -->
| variable | default | meaning |
|---|---|---|
| `BIND_ADDR` | `0.0.0.0:8080` | listen address |
| `DATABASE_URL` | required | where |
| `TOKENS` | empty | a, b | c |

| other | table |
|---|---|
| `NOT_CONFIGURATION` | ignored |
";

    fn code() -> Vec<Variable> {
        vec![
            Variable::new("LOG_FORMAT", Default::Value("json".into())),
            Variable::new("BIND_ADDR", Default::Value("0.0.0.0:8080".into())),
            Variable::new("DATABASE_URL", Default::Required),
            Variable::new("TOKENS", Default::Unset),
        ]
    }

    #[test]
    fn agreeing_tables_have_no_differences() {
        assert_eq!(differences(README, "svc", &code()), Vec::<String>::new());
    }

    #[test]
    fn a_wrong_default_is_reported_with_its_line() {
        let readme = README.replace("`0.0.0.0:8080` |", "`0.0.0.0:9090` |");
        assert_eq!(
            differences(&readme, "svc", &code()),
            [
                "`BIND_ADDR` (line 13): README's default is `0.0.0.0:9090`, the code's is `0.0.0.0:8080`"
            ]
        );
    }

    #[test]
    fn required_and_optional_are_told_apart() {
        let readme = README.replace("| required |", "| unset |");
        assert_eq!(
            differences(&readme, "svc", &code()),
            [
                "`DATABASE_URL` (line 14): README's default is no default (optional), the code's is required"
            ]
        );
    }

    #[test]
    fn a_variable_missing_from_either_side_is_reported() {
        let mut more = code();
        more.push(Variable::new("NEW_SETTING", Default::Value("5s".into())));
        more.retain(|variable| variable.name != "TOKENS");
        assert_eq!(
            differences(README, "svc", &more),
            [
                "`NEW_SETTING`: svc reads it (`5s`), README's tables for svc do not list it",
                "`TOKENS` (line 15, table `svc`): listed in README, but svc reads no such variable",
            ]
        );
    }

    #[test]
    fn shared_rows_count_for_every_service_and_others_rows_for_none() {
        let other = [Variable::new("LOG_FORMAT", Default::Value("json".into()))];
        assert_eq!(differences(README, "other", &other), Vec::<String>::new());
        let found = differences(README, "other", &[]);
        assert_eq!(
            found,
            [
                "`LOG_FORMAT` (line 6, table `both services`): listed in README, but other reads no such variable"
            ]
        );
    }

    #[test]
    fn rows_that_cannot_be_checked_are_reported() {
        let readme = README
            .replace("| `TOKENS` |", "| `TOKENS`, `MORE_TOKENS` |")
            .replace("<!-- configuration: svc -->\n", "")
            .replace("| `LOG_FORMAT` | `json` | `json` or `pretty` |\n", "| `LOG_FORMAT` | `json` | `json` or `pretty` |\n| `LOG_FORMAT` | `json` | again |\n");
        let found = differences(&readme, "svc", &code());
        assert!(
            found
                .iter()
                .any(|d| d.contains("line 11: a configuration table without")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|d| d.contains("`LOG_FORMAT`: listed twice")),
            "{found:#?}"
        );
        let readme = README.replace("| `TOKENS` |", "| `TOKENS`, `MORE_TOKENS` |");
        let found = differences(&readme, "svc", &code());
        assert!(
            found
                .iter()
                .any(|d| d.starts_with("line 15: the first cell must be one variable")),
            "{found:#?}"
        );
    }

    #[test]
    fn clap_arguments_become_variables_with_their_defaults() {
        #[derive(clap::Parser)]
        struct Args {
            #[arg(long, env = "WITH_DEFAULT", default_value = "500ms")]
            _with_default: String,
            #[arg(long, env = "NEEDED")]
            _needed: String,
            #[arg(long, env = "OPTIONAL")]
            _optional: Option<String>,
            #[arg(long, env = "FLAG")]
            _flag: bool,
            #[arg(long)]
            _no_env: Option<String>,
        }
        let variables = variables_of(<Args as clap::CommandFactory>::command());
        assert_eq!(
            variables,
            [
                Variable::new("WITH_DEFAULT", Default::Value("500ms".into())),
                Variable::new("NEEDED", Default::Required),
                Variable::new("OPTIONAL", Default::Unset),
                Variable::new("FLAG", Default::Value("false".into())),
            ]
        );
    }
}
