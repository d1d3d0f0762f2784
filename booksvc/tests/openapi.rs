//! The committed OpenAPI document (`docs/openapi/booksvc.json`) is the one the code
//! generates: a route, a parameter, a status or a field changed in the code and not in the
//! file fails here, naming the first differing JSON path (that a change is detected and
//! named is shown once, on storagesvc's document, in `storagesvc/tests/openapi.rs`).
//!
//! Regenerate the file after a change with
//! `UPDATE_OPENAPI=1 cargo test -p booksvc --test openapi`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::Value;

const REGENERATE: &str = "UPDATE_OPENAPI=1 cargo test -p booksvc --test openapi";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi/booksvc.json")
}

fn generated() -> String {
    booksvc::openapi::json().expect("the document renders as JSON")
}

#[test]
fn the_committed_document_is_the_generated_one() {
    if let Err(message) =
        shared::openapi::check_committed(&committed_path(), &generated(), REGENERATE)
    {
        panic!("{message}");
    }
}

#[test]
fn the_document_is_openapi_3_1_with_every_public_route() {
    let document: Value = serde_json::from_str(&generated()).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["title"], "booksvc");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(document["servers"][0]["url"].is_string());
    let operations = shared::openapi::operations(&document);
    let mut expected: Vec<(String, String)> = [
        ("/", "get"),
        ("/books", "get"),
        ("/books", "post"),
        ("/books/{id}", "get"),
        ("/books/{id}", "put"),
        ("/books/{id}", "delete"),
        ("/.well-known/alive", "get"),
        ("/.well-known/health", "get"),
    ]
    .map(|(path, method)| (path.to_owned(), method.to_owned()))
    .to_vec();
    expected.sort();
    assert_eq!(operations, expected);
}

/// Found by the contract fuzzing: the key's rules were missing, so a schema-valid key of
/// 300 characters met storagesvc's `400` and the fuzzer reported a valid request refused.
#[test]
fn the_create_documents_the_idempotency_key_rules_storagesvc_enforces() {
    let document: Value = serde_json::from_str(&generated()).unwrap();
    let parameters = document["paths"]["/books"]["post"]["parameters"]
        .as_array()
        .unwrap();
    let key = parameters
        .iter()
        .find(|parameter| parameter["name"] == "Idempotency-Key")
        .expect("POST /books documents Idempotency-Key");
    assert_eq!(key["in"], "header");
    assert_eq!(key["schema"]["minLength"], 1);
    assert_eq!(key["schema"]["maxLength"], 255);
    assert!(key["schema"]["pattern"].is_string());
}
