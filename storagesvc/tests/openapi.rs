//! The committed OpenAPI document (`docs/openapi/storagesvc.json`) is the one the code
//! generates: a route, a parameter, a status or a field changed in the code and not in the
//! file fails here, naming the first differing JSON path.
//!
//! Regenerate the file after a change with
//! `UPDATE_OPENAPI=1 cargo test -p storagesvc --test openapi`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::Value;

const REGENERATE: &str = "UPDATE_OPENAPI=1 cargo test -p storagesvc --test openapi";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi/storagesvc.json")
}

fn generated() -> String {
    storagesvc::openapi::json().expect("the document renders as JSON")
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
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
    assert_eq!(document["info"]["title"], "storagesvc");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(document["servers"][0]["url"].is_string());
    let operations = shared::openapi::operations(&document);
    let mut expected: Vec<(String, String)> = [
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

#[test]
fn a_changed_route_or_field_is_detected_and_named() {
    let generated = generated();
    let document: Value = serde_json::from_str(&generated).unwrap();

    // A route renamed in the file.
    let mut renamed = document.clone();
    let paths = renamed["paths"].as_object_mut().unwrap();
    let item = paths.remove("/books/{id}").unwrap();
    paths.insert("/book/{id}".to_owned(), item);
    let err = shared::openapi::compare(&pretty(&renamed), &generated).unwrap_err();
    assert!(err.contains("`/paths/~1books~1{id}`"), "{err}");

    // A field of a book gone from the file.
    let mut fewer_fields = document.clone();
    fewer_fields["components"]["schemas"]["Book"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("desc");
    let err = shared::openapi::compare(&pretty(&fewer_fields), &generated).unwrap_err();
    assert!(
        err.contains("`/components/schemas/Book/properties/desc`"),
        "{err}"
    );

    // A status documented in the file that the code does not answer.
    let mut extra_status = document.clone();
    extra_status["paths"]["/books/{id}"]["get"]["responses"]["418"] = Value::Bool(true);
    let err = shared::openapi::compare(&pretty(&extra_status), &generated).unwrap_err();
    assert!(
        err.contains("`/paths/~1books~1{id}/get/responses/418`"),
        "{err}"
    );

    assert_eq!(shared::openapi::compare(&generated, &generated), Ok(()));
}
