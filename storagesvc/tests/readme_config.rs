#![allow(clippy::unwrap_used, clippy::expect_used)]
//! README's configuration tables agree with storagesvc's code: every variable of its clap
//! configuration has a row with the same default, and every row names one of them. See
//! `system_tests::readme` for the rules.

use clap::CommandFactory;
use system_tests::readme;

const SERVICE: &str = "storagesvc";

#[test]
fn readme_lists_every_variable_of_storagesvc_with_its_default() {
    let variables = readme::variables_of(storagesvc::Config::command());
    readme::assert_agrees(&readme::workspace_readme(), SERVICE, &variables);
}

/// The check is not vacuous: README with one default changed, or a row of the table both
/// services share gone, fails it, and says which.
#[test]
fn the_check_fails_on_a_wrong_default_or_a_missing_shared_row() {
    let variables = readme::variables_of(storagesvc::Config::command());
    let readme = readme::workspace_readme();
    let row = "| `DB_ACQUIRE_TIMEOUT` | `500ms` |";
    assert!(readme.contains(row), "README has no row {row}");
    let wrong = readme.replace(row, "| `DB_ACQUIRE_TIMEOUT` | `250ms` |");
    let found = readme::differences(&wrong, SERVICE, &variables);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("`DB_ACQUIRE_TIMEOUT`")
            && found[0].contains("README's default is `250ms`, the code's is `500ms`"),
        "{found:#?}"
    );

    let without: String = readme
        .lines()
        .filter(|line| !line.starts_with("| `HEADER_READ_TIMEOUT` |"))
        .map(|line| format!("{line}\n"))
        .collect();
    let found = readme::differences(&without, SERVICE, &variables);
    assert_eq!(
        found,
        [
            "`HEADER_READ_TIMEOUT`: storagesvc reads it (`10s`), README's tables for storagesvc do not list it"
        ]
    );
}
