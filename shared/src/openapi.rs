//! What both services' OpenAPI documents share: the problem schema and the problem
//! responses built from [`ProblemType`]s, the answers the server layers give on every
//! route ([`Answers::new`]), the public health routes, the admin route that serves a
//! document, and the check that a committed document is the one the code generates.
//!
//! Each service describes its own routes with `#[utoipa::path]` on its handlers; the
//! answers other than its successes are an [`Answers`] per operation (declared with
//! [`crate::answers!`]), so every problem a route can answer is listed with its kind,
//! from the same constants the code answers with.

use std::collections::BTreeMap;
use std::path::Path;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use serde_json::Value;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Required};

use crate::problem::{self, BODY_TOO_LARGE, INTERNAL, OVERLOADED, ProblemType, REQUEST_TIMEOUT};

/// The name of the problem schema among the components.
pub const PROBLEM_SCHEMA: &str = "Problem";

/// The environment variable that makes the drift tests rewrite the committed documents.
pub const UPDATE_VARIABLE: &str = "UPDATE_OPENAPI";

/// A response header as a document lists it.
#[derive(Clone)]
pub struct HeaderSpec {
    pub name: &'static str,
    pub description: String,
    pub schema: Schema,
    /// Whether every response of its status carries it.
    pub required: bool,
}

impl HeaderSpec {
    pub fn new(name: &'static str, description: impl Into<String>, schema: Schema) -> Self {
        Self {
            name,
            description: description.into(),
            schema,
            required: false,
        }
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    fn to_header(&self) -> Header {
        let mut header = HeaderBuilder::new()
            .schema(Some(self.schema.clone()))
            .description(Some(self.description.clone()))
            .build();
        if self.required {
            // utoipa 6's `Header` has no `required` field (OpenAPI's Header Object does);
            // its extension map is serialized flattened into the header, so the member is
            // set there, under its own name.
            let mut extensions = Extensions::default();
            extensions.insert("required".to_owned(), Value::Bool(true));
            header.extensions = Some(extensions);
        }
        header
    }
}

/// `Retry-After` in delta-seconds, as [`problem::retry_after_seconds`] writes it (never 0).
pub fn retry_after_header() -> HeaderSpec {
    HeaderSpec::new(
        "Retry-After",
        "Seconds to wait before trying again (delta-seconds, at least 1).",
        string_schema(Some("^[1-9][0-9]*$")),
    )
}

/// The challenges of a `401`, one per accepted scheme.
pub fn www_authenticate_header() -> HeaderSpec {
    HeaderSpec::new(
        "WWW-Authenticate",
        "One challenge per accepted scheme, realm `bookstore` (`Bearer`, and `Basic` where \
         Basic users are configured).",
        string_schema(None),
    )
}

/// A string, matching `pattern` if given.
pub fn string_schema(pattern: Option<&str>) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(pattern)
        .into()
}

/// A string that is one of `values`.
pub fn string_enum_schema<I: IntoIterator<Item = String>>(values: I) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .into()
}

/// A success with a JSON body of `schema` and these headers.
pub fn json_response(
    description: &str,
    schema: impl Into<RefOr<Schema>>,
    headers: &[HeaderSpec],
) -> Response {
    with_headers(
        ResponseBuilder::new().description(description).content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        ),
        headers,
    )
}

/// A success without a body, with these headers.
pub fn empty_response(description: &str, headers: &[HeaderSpec]) -> Response {
    with_headers(ResponseBuilder::new().description(description), headers)
}

fn with_headers(mut response: ResponseBuilder, headers: &[HeaderSpec]) -> Response {
    for header in headers {
        response = response.header(header.name, header.to_header());
    }
    response.build()
}

/// A request header parameter.
pub fn header_parameter(
    name: &str,
    description: &str,
    schema: impl Into<RefOr<Schema>>,
) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// Declares a type whose `utoipa::ToResponse` is the given [`Response`] (named `$name`),
/// for a `(status = ..., response = inline($name))` of a `#[utoipa::path]`: a response
/// whose headers the attribute cannot describe (a required one, a schema from the code).
#[macro_export]
macro_rules! response {
    ($(#[$meta:meta])* $vis:vis $name:ident = $response:expr) => {
        $(#[$meta])*
        $vis struct $name;

        impl<'r> ::utoipa::ToResponse<'r> for $name {
            fn response() -> (
                &'r str,
                ::utoipa::openapi::RefOr<::utoipa::openapi::response::Response>,
            ) {
                (stringify!($name), $response.into())
            }
        }
    };
}

/// The answers of one operation other than its successes, by status: problem kinds,
/// a plain JSON body where one is sent instead of a problem (readiness's `down`), the
/// `431` of the HTTP layer, and their headers.
#[derive(Default)]
pub struct Answers {
    statuses: BTreeMap<u16, StatusAnswers>,
}

#[derive(Default)]
struct StatusAnswers {
    kinds: Vec<ProblemType>,
    json: Option<(String, RefOr<Schema>)>,
    without_body: Option<String>,
    headers: Vec<HeaderSpec>,
}

impl Answers {
    /// What every route of both services may answer, whatever it does: the server layers
    /// (`crate::server`) give `413` (a body announced over the limit), `503` (too many
    /// requests in progress), `504` (the request timeout) and `500` (a panic), and the
    /// HTTP layer a `431` for a head over the limit.
    pub fn new() -> Self {
        Self::default()
            .problems(&[BODY_TOO_LARGE, OVERLOADED, REQUEST_TIMEOUT, INTERNAL])
            .without_body(
                431,
                "The request head is over MAX_HEADER_BYTES (16 KiB by default) or has more \
                 than 100 headers: answered by the HTTP layer before any route sees the \
                 request, with an empty body, and the connection is closed.",
            )
    }

    /// Adds problem kinds, each at its own status.
    pub fn problems(mut self, kinds: &[ProblemType]) -> Self {
        for kind in kinds {
            let answers = self.statuses.entry(kind.status.as_u16()).or_default();
            if !answers.kinds.contains(kind) {
                answers.kinds.push(*kind);
            }
        }
        self
    }

    /// A plain JSON body (not a problem) that `status` may carry, described.
    pub fn json(mut self, status: u16, description: &str, schema: RefOr<Schema>) -> Self {
        self.statuses.entry(status).or_default().json = Some((description.to_owned(), schema));
        self
    }

    /// An answer at `status` with no body at all.
    pub fn without_body(mut self, status: u16, description: &str) -> Self {
        self.statuses.entry(status).or_default().without_body = Some(description.to_owned());
        self
    }

    /// A header that the answers at `status` carry (every one, if `header.required`), if
    /// there are answers at `status` yet. It replaces the one [`Answers`] would add by
    /// itself (`Retry-After` on a `503` problem, `WWW-Authenticate` on a `401`).
    pub fn header(mut self, status: u16, header: HeaderSpec) -> Self {
        if let Some(answers) = self.statuses.get_mut(&status) {
            answers
                .headers
                .retain(|known| !known.name.eq_ignore_ascii_case(header.name));
            answers.headers.push(header);
        }
        self
    }

    /// The responses, by status, as an operation lists them.
    pub fn into_responses(self) -> BTreeMap<String, RefOr<Response>> {
        self.statuses
            .into_iter()
            .map(|(status, answers)| (status.to_string(), answers.into_response(status).into()))
            .collect()
    }
}

impl StatusAnswers {
    fn into_response(self, status: u16) -> Response {
        let mut description = Vec::new();
        if !self.kinds.is_empty() {
            let mut problems =
                vec!["A problem (`application/problem+json`), by `type`:".to_owned()];
            for kind in &self.kinds {
                problems.push(format!("- `{}`: {}", kind.uri(), kind.meaning));
            }
            description.push(problems.join("\n"));
        }
        if let Some((text, _)) = &self.json {
            description.push(text.clone());
        }
        if let Some(text) = &self.without_body {
            description.push(text.clone());
        }
        let mut response = ResponseBuilder::new().description(description.join("\n\n"));
        if !self.kinds.is_empty() {
            response = response.content(
                problem::CONTENT_TYPE,
                ContentBuilder::new()
                    .schema(Some(problem_schema_of(&self.kinds)))
                    .build(),
            );
        }
        let only_problems = self.json.is_none() && self.without_body.is_none();
        if let Some((_, schema)) = self.json {
            response = response.content(
                "application/json",
                ContentBuilder::new().schema(Some(schema)).build(),
            );
        }
        let mut headers = self.headers;
        let mut add_default = |default: HeaderSpec| {
            if !headers
                .iter()
                .any(|known| known.name.eq_ignore_ascii_case(default.name))
            {
                headers.push(default);
            }
        };
        // Every problem sent with a 503 carries `Retry-After` (`Problem::unavailable`, and
        // the 503s of storagesvc that booksvc passes on with theirs); every 401 its
        // challenges (`crate::auth`).
        if status == 503 && !self.kinds.is_empty() {
            let header = retry_after_header();
            add_default(if only_problems {
                header.required()
            } else {
                header
            });
        }
        if status == 401 {
            add_default(www_authenticate_header().required());
        }
        headers.sort_by_key(|header| header.name);
        with_headers(response, &headers)
    }
}

/// The problem schema, narrowed to `kinds` (all of one status): their `type`s, `title`
/// and `status`.
fn problem_schema_of(kinds: &[ProblemType]) -> RefOr<Schema> {
    let mut titles: Vec<String> = kinds.iter().map(|kind| kind.title().to_owned()).collect();
    titles.dedup();
    let mut statuses: Vec<u16> = kinds.iter().map(|kind| kind.status.as_u16()).collect();
    statuses.dedup();
    let narrowed = ObjectBuilder::new()
        .property(
            "type",
            string_enum_schema(kinds.iter().map(ProblemType::uri)),
        )
        .property("title", string_enum_schema(titles))
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some(statuses)),
        );
    AllOfBuilder::new()
        .item(Ref::from_schema_name(PROBLEM_SCHEMA))
        .item(narrowed)
        .into()
}

/// Declares a type whose `utoipa::IntoResponses` are the given [`Answers`], for the
/// `responses(...)` of a `#[utoipa::path]`:
///
/// ```text
/// shared::answers!(ListBooksAnswers = Answers::new().problems(&[INVALID_QUERY]));
/// ```
#[macro_export]
macro_rules! answers {
    ($(#[$meta:meta])* $vis:vis $name:ident = $answers:expr) => {
        $(#[$meta])*
        $vis struct $name;

        impl ::utoipa::IntoResponses for $name {
            fn responses() -> ::std::collections::BTreeMap<
                ::std::string::String,
                ::utoipa::openapi::RefOr<::utoipa::openapi::response::Response>,
            > {
                $crate::openapi::Answers::into_responses($answers)
            }
        }
    };
}

answers!(
    /// Liveness: nothing but the server's own answers.
    pub AliveAnswers = Answers::new()
);

answers!(
    /// Readiness: `503` with `{"status":"down"}`, besides the server's own answers.
    pub ReadinessAnswers = Answers::new().json(
        503,
        "Not ready (`application/json`, `{\"status\":\"down\"}`, no `Retry-After`): a \
         critical dependency failed its check. The admin port says which and why.",
        Ref::from_schema_name("TerseHealth").into(),
    )
);

/// The public health routes (`crate::health`), for a service's document to merge.
pub fn health_paths() -> OpenApi {
    use utoipa::OpenApi as _;

    #[derive(utoipa::OpenApi)]
    #[openapi(
        paths(crate::health::alive, crate::health::terse_readiness),
        components(schemas(crate::health::TerseHealth, crate::health::HealthStatus))
    )]
    struct HealthPaths;

    HealthPaths::openapi()
}

/// Adds the operation of `P` (a `#[utoipa::path(impl_for = P, ...)]`), tagged `tag`. For
/// a handler that serves several routes: the `paths(...)` of `#[derive(OpenApi)]` takes
/// one operation per function.
pub fn add_operation<P: utoipa::Path>(document: &mut OpenApi, tag: &str) {
    let mut operation = P::operation();
    operation.tags = Some(vec![tag.to_owned()]);
    document
        .paths
        .add_path_operation(P::path(), P::methods(), operation);
}

/// The document as it is committed and served: pretty JSON and a final newline.
pub fn to_json(document: &OpenApi) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(document)?;
    text.push('\n');
    Ok(text)
}

/// `GET /openapi.json`, for the admin listener: the document as [`to_json`] renders it.
pub fn routes<S>(document: &OpenApi) -> Result<Router<S>, serde_json::Error>
where
    S: Clone + Send + Sync + 'static,
{
    let body = Bytes::from(to_json(document)?);
    Ok(Router::new().route(
        "/openapi.json",
        get(move || {
            let body = body.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body,
                )
            }
        }),
    ))
}

/// Where two JSON documents first differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// A JSON Pointer (RFC 6901): `""` is the whole document.
    pub pointer: String,
    /// What is there in the one and the other (`None`: nothing).
    pub committed: Option<Value>,
    pub generated: Option<Value>,
}

/// The first place where `committed` and `generated` differ: object members in the
/// generated document's order (members only the committed one has come after), array
/// items by index.
pub fn first_difference(committed: &Value, generated: &Value) -> Option<Difference> {
    difference_at(String::new(), Some(committed), Some(generated))
}

fn difference_at(
    pointer: String,
    committed: Option<&Value>,
    generated: Option<&Value>,
) -> Option<Difference> {
    match (committed, generated) {
        (Some(Value::Object(old)), Some(Value::Object(new))) => {
            let keys = new
                .keys()
                .chain(old.keys().filter(|key| !new.contains_key(*key)));
            keys.into_iter().find_map(|key| {
                difference_at(
                    format!("{pointer}/{}", escape_pointer(key)),
                    old.get(key),
                    new.get(key),
                )
            })
        }
        (Some(Value::Array(old)), Some(Value::Array(new))) => (0..old.len().max(new.len()))
            .find_map(|index| {
                difference_at(format!("{pointer}/{index}"), old.get(index), new.get(index))
            }),
        (old, new) if old == new => None,
        (old, new) => Some(Difference {
            pointer,
            committed: old.cloned(),
            generated: new.cloned(),
        }),
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Compares the committed document at `path` with `generated` (as [`to_json`] renders
/// it). With `UPDATE_OPENAPI=1` it writes `generated` there instead. The error names the
/// first differing JSON path and says how to regenerate (`regenerate`, a command).
pub fn check_committed(path: &Path, generated: &str, regenerate: &str) -> Result<(), String> {
    if std::env::var(UPDATE_VARIABLE).is_ok_and(|value| value == "1") {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .map_err(|err| format!("cannot create {}: {err}", folder.display()))?;
        }
        return std::fs::write(path, generated)
            .map_err(|err| format!("cannot write {}: {err}", path.display()));
    }
    let hint = format!("Regenerate it with: {regenerate}");
    let committed = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}. {hint}", path.display()))?;
    compare(&committed, generated).map_err(|what| {
        format!(
            "{} is not the document the code generates: {what}.\n{hint}",
            path.display()
        )
    })
}

/// Every `(path, method)` the document describes, sorted: what a drift test compares with
/// the routes a service serves.
pub fn operations(document: &Value) -> Vec<(String, String)> {
    let mut operations: Vec<(String, String)> = document["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .map(move |(method, _)| (path.clone(), method.clone()))
        })
        .collect();
    operations.sort();
    operations
}

/// `Ok` when `committed` is exactly `generated`; else what differs, first.
pub fn compare(committed: &str, generated: &str) -> Result<(), String> {
    if committed == generated {
        return Ok(());
    }
    let generated_value: Value = serde_json::from_str(generated)
        .map_err(|err| format!("the generated document is not JSON: {err}"))?;
    let committed_value: Value = serde_json::from_str(committed)
        .map_err(|err| format!("the committed file is not valid JSON: {err}"))?;
    match first_difference(&committed_value, &generated_value) {
        Some(difference) => Err(format!(
            "first difference at JSON path `{}`: committed {}, generated {}",
            if difference.pointer.is_empty() {
                "/"
            } else {
                &difference.pointer
            },
            shown(difference.committed.as_ref()),
            shown(difference.generated.as_ref()),
        )),
        None => Err(
            "same JSON, but not formatted as the code writes it (pretty, with a final \
             newline)"
                .to_owned(),
        ),
    }
}

/// A value for a message: its JSON, cut short.
fn shown(value: Option<&Value>) -> String {
    const LONGEST: usize = 200;
    match value {
        None => "nothing".to_owned(),
        Some(value) => {
            let text = value.to_string();
            if text.chars().count() > LONGEST {
                let cut: String = text.chars().take(LONGEST).collect();
                format!("{cut}…")
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use utoipa::IntoResponses as _;

    use super::*;

    #[test]
    fn the_first_difference_is_named_by_its_json_pointer() {
        let committed = json!({
            "paths": { "/books/{id}": { "get": { "responses": { "200": {}, "404": {} } } } },
            "tags": ["books", "health"]
        });
        assert_eq!(first_difference(&committed, &committed), None);

        let mut generated = committed.clone();
        generated["paths"]["/books/{id}"]["get"]["responses"]["404"] = json!({"x": 1});
        let difference = first_difference(&committed, &generated).unwrap();
        assert_eq!(
            difference.pointer,
            "/paths/~1books~1{id}/get/responses/404/x"
        );
        assert_eq!(difference.committed, None);
        assert_eq!(difference.generated, Some(json!(1)));

        let mut generated = committed.clone();
        generated["tags"] = json!(["books"]);
        let difference = first_difference(&committed, &generated).unwrap();
        assert_eq!(difference.pointer, "/tags/1");
        assert_eq!(difference.committed, Some(json!("health")));

        let generated = json!({ "tags": ["books", "health"] });
        assert_eq!(
            first_difference(&committed, &generated).unwrap().pointer,
            "/paths"
        );
    }

    #[test]
    fn compare_names_the_path_and_formatting_alone_is_a_difference() {
        let committed = "{\n  \"a\": 1\n}\n";
        assert_eq!(compare(committed, committed), Ok(()));
        let err = compare(committed, "{\n  \"a\": 2\n}\n").unwrap_err();
        assert!(err.contains("`/a`"), "{err}");
        assert!(err.contains("committed 1, generated 2"), "{err}");
        let err = compare("{\"a\":1}", committed).unwrap_err();
        assert!(err.contains("formatted"), "{err}");
    }

    #[test]
    fn answers_list_every_kind_with_its_headers() {
        let responses = Answers::new()
            .problems(&[problem::UNAUTHORIZED, problem::DATABASE_UNAVAILABLE])
            .into_responses();
        let statuses: Vec<&str> = responses.keys().map(String::as_str).collect();
        assert_eq!(statuses, ["401", "413", "431", "500", "503", "504"]);
        let json = serde_json::to_value(&responses).unwrap();
        let unavailable = &json["503"];
        let narrowed = &unavailable["content"]["application/problem+json"]["schema"]["allOf"][1];
        let types = &narrowed["properties"]["type"]["enum"];
        assert_eq!(
            types,
            &json!([
                "urn:bookstore:problem:overloaded",
                "urn:bookstore:problem:database-unavailable"
            ])
        );
        assert_eq!(unavailable["headers"]["Retry-After"]["required"], true);
        assert_eq!(json["401"]["headers"]["WWW-Authenticate"]["required"], true);
        assert!(json["431"].get("content").is_none(), "{}", json["431"]);
    }

    #[test]
    fn a_503_that_is_not_always_a_problem_does_not_promise_retry_after() {
        let json = serde_json::to_value(ReadinessAnswers::responses()).unwrap();
        let unavailable = &json["503"];
        assert!(unavailable["content"]["application/json"].is_object());
        assert!(unavailable["content"]["application/problem+json"].is_object());
        assert!(
            unavailable["headers"]["Retry-After"]
                .get("required")
                .is_none()
        );
    }
}
