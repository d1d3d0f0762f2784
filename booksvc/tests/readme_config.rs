#![allow(clippy::unwrap_used, clippy::expect_used)]
//! README's configuration tables agree with booksvc's code: every variable booksvc reads
//! (its clap arguments, and those its service client reads to find and authenticate to
//! storagesvc) has a row with the same default, and every row names one of them. See
//! `system_tests::readme` for the rules.

use std::cell::RefCell;

use clap::CommandFactory;
use shared::client::ServiceClientConfig;
use shared::client::discovery::env_prefix;
use system_tests::readme::{self, Default, Variable};

const SERVICE: &str = "booksvc";

/// Every variable booksvc reads.
fn booksvc_variables() -> Vec<Variable> {
    let mut variables = readme::variables_of(booksvc::Config::command());
    variables.extend(client_variables("storagesvc"));
    variables
}

/// The variables the service client for `service` reads: every name it looks up while
/// being configured with only its URL set. The URL is required (shown below: without it
/// the configuration fails, naming it); the credentials are optional.
fn client_variables(service: &str) -> Vec<Variable> {
    let url = format!("{}_URL", env_prefix(service).unwrap());
    let Err(error) = ServiceClientConfig::from_lookup(service, |_| None) else {
        panic!("the client cannot be configured without its URL");
    };
    let error = error.to_string();
    assert!(error.contains(&url), "{error}");

    let looked_up = RefCell::new(Vec::<String>::new());
    ServiceClientConfig::from_lookup(service, |name| {
        looked_up.borrow_mut().push(name.to_owned());
        (name == url).then(|| "http://storagesvc:8082".to_owned())
    })
    .expect("the URL alone configures the client");
    let mut names = looked_up.into_inner();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let default = if name == url {
                Default::Required
            } else {
                Default::Unset
            };
            Variable::new(name, default)
        })
        .collect()
}

#[test]
fn readme_lists_every_variable_of_booksvc_with_its_default() {
    readme::assert_agrees(&readme::workspace_readme(), SERVICE, &booksvc_variables());
}

#[test]
fn the_client_variables_include_every_credential_mode() {
    let names: Vec<String> = client_variables("storagesvc")
        .into_iter()
        .map(|variable| variable.name)
        .collect();
    for name in [
        "STORAGESVC_URL",
        "STORAGESVC_API_KEY",
        "STORAGESVC_BEARER_TOKEN",
        "STORAGESVC_BASIC_USER",
        "STORAGESVC_OAUTH_CLIENT_SECRET",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
}

/// The check is not vacuous: README with one default changed, or one row gone, fails it,
/// and says which.
#[test]
fn the_check_fails_on_a_wrong_default_or_a_missing_row() {
    let readme = readme::workspace_readme();
    let row = "| `CACHE_TTL` | `24h` |";
    assert!(readme.contains(row), "README has no row {row}");
    let wrong = readme.replace(row, "| `CACHE_TTL` | `12h` |");
    let found = readme::differences(&wrong, SERVICE, &booksvc_variables());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("`CACHE_TTL`")
            && found[0].contains("README's default is `12h`, the code's is `24h`"),
        "{found:#?}"
    );

    let without: String = readme
        .lines()
        .filter(|line| !line.starts_with("| `STORAGESVC_BEARER_TOKEN` |"))
        .map(|line| format!("{line}\n"))
        .collect();
    let found = readme::differences(&without, SERVICE, &booksvc_variables());
    assert_eq!(
        found,
        [
            "`STORAGESVC_BEARER_TOKEN`: booksvc reads it (no default (optional)), README's tables for booksvc do not list it"
        ]
    );
}
