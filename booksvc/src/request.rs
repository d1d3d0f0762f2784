//! What a caller asked for, parsed before anything is sent upstream (step 1 of the read path, docs/architecture.md).
//!
//! booksvc's port is the internet: a path or a query string is never forwarded as it came.
//! It is parsed into a [`BookQuery`] or a [`WriteTarget`] (an `id`, a `limit`, an `offset`,
//! each in range), and both the upstream request target and the cache key are built from
//! that value, in one canonical form. So `limit=010`, `limit=%31%30` and `limit=10` are one
//! request, `/books/01` and `/books/1` are one book, and no input can name a storagesvc
//! route other than `/books` and `/books/{id}`. Anything else is a `400` problem from
//! booksvc itself, whether storagesvc is up or not.
//!
//! The rules mirror storagesvc's (`limit` 1 to 1000, default 100; `offset` from 0, within
//! an `i64`; an id is a positive `i64`), but are stricter about form: a number is ASCII
//! digits only (no sign, no spaces), at most [`MAX_NUMBER_CHARS`] of them, and every
//! parameter appears at most once.

use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::Problem;
use shared::problem::{INVALID_PATH, INVALID_QUERY};
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};

use crate::last_good::CacheKey;

pub const DEFAULT_PAGE_LIMIT: u32 = 100;
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Longest number accepted, leading zeros included: `i64::MAX` has 19 digits, so a longer
/// text is either padding or out of range, and refusing it early bounds the work.
pub const MAX_NUMBER_CHARS: usize = 20;

/// A book's id: a positive `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BookId(i64);

impl BookId {
    /// Parses one raw (still percent-encoded) path segment.
    pub fn parse(segment: &str) -> Result<Self, InvalidRequest> {
        let decoded = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| InvalidRequest::path("the book id is not valid UTF-8"))?;
        let id = parse_digits(&decoded)
            .ok()
            .and_then(|value| i64::try_from(value).ok())
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                InvalidRequest::path(format!(
                    "a book id is a positive integer of at most {MAX_NUMBER_CHARS} digits"
                ))
            })?;
        Ok(Self(id))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A read: the list (one page of it) or one book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookQuery {
    List { limit: u32, offset: u64 },
    One { id: BookId },
}

impl BookQuery {
    /// Parses `GET /`, `GET /books` (with `limit` and `offset`) and `GET /books/{id}` (with
    /// no query parameters). The router has already matched one of these routes.
    pub fn from_uri(uri: &Uri) -> Result<Self, InvalidRequest> {
        match uri.path() {
            "/" | "/books" => parse_page(uri.query()),
            path => {
                let id = BookId::parse(book_segment(path)?)?;
                no_query(uri.query())?;
                Ok(BookQuery::One { id })
            }
        }
    }

    /// The request target sent to storagesvc, in canonical form.
    pub fn upstream_target(&self) -> String {
        match self {
            BookQuery::List { limit, offset } => format!("/books?limit={limit}&offset={offset}"),
            BookQuery::One { id } => format!("/books/{}", id.get()),
        }
    }

    /// The key the answer is stored under: the method and the canonical target.
    pub fn cache_key(&self) -> CacheKey {
        CacheKey::new("GET", &self.upstream_target())
    }
}

/// The book a write is about: `POST /books` (a new one) or `PUT`/`DELETE /books/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget {
    Collection,
    Book(BookId),
}

impl WriteTarget {
    /// Parses the target of a write; writes take no query parameters.
    pub fn from_uri(uri: &Uri) -> Result<Self, InvalidRequest> {
        no_query(uri.query())?;
        match uri.path() {
            "/books" => Ok(WriteTarget::Collection),
            path => Ok(WriteTarget::Book(BookId::parse(book_segment(path)?)?)),
        }
    }

    /// The request target sent to storagesvc, in canonical form.
    pub fn upstream_target(&self) -> String {
        match self {
            WriteTarget::Collection => "/books".to_owned(),
            WriteTarget::Book(id) => format!("/books/{}", id.get()),
        }
    }
}

/// Why a request was refused before anything was sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidRequest {
    Path(String),
    Query(String),
}

impl InvalidRequest {
    fn path(detail: impl Into<String>) -> Self {
        InvalidRequest::Path(detail.into())
    }

    fn query(detail: impl Into<String>) -> Self {
        InvalidRequest::Query(detail.into())
    }
}

impl IntoResponse for InvalidRequest {
    fn into_response(self) -> Response {
        let (kind, detail) = match self {
            InvalidRequest::Path(detail) => (INVALID_PATH, detail),
            InvalidRequest::Query(detail) => (INVALID_QUERY, detail),
        };
        Problem::of(kind, detail).into_response()
    }
}

/// What `BookId::parse` accepts, for the OpenAPI document: the `{id}` of `/books/{id}`.
impl utoipa::IntoParams for BookId {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1))
            .maximum(Some(i64::MAX))
            .build();
        vec![
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(format!(
                    "A book id: a positive integer within an int64, as at most \
                     {MAX_NUMBER_CHARS} ASCII digits (leading zeros allowed, no sign)."
                )))
                .schema(Some(schema))
                .build(),
        ]
    }
}

/// What `parse_page` accepts, for the OpenAPI document: the query of `GET /` and
/// `GET /books`. Nothing else is accepted, and each at most once.
impl utoipa::IntoParams for BookQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let integer = |minimum: u64, maximum: u64, default: u64| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(minimum))
                .maximum(Some(maximum))
                .default(Some(json!(default)))
                .build()
        };
        let parameter = |name: &str, description: String, schema| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(schema))
                .build()
        };
        vec![
            parameter(
                "limit",
                format!(
                    "How many books at most (1 to {MAX_PAGE_LIMIT}; {DEFAULT_PAGE_LIMIT} when \
                     absent)."
                ),
                integer(1, u64::from(MAX_PAGE_LIMIT), u64::from(DEFAULT_PAGE_LIMIT)),
            ),
            parameter(
                "offset",
                "How many books to skip, in id order (0 when absent).".to_owned(),
                integer(0, i64::MAX.unsigned_abs(), 0),
            ),
        ]
    }
}

/// The raw id segment of `/books/{id}`.
fn book_segment(path: &str) -> Result<&str, InvalidRequest> {
    path.strip_prefix("/books/")
        .filter(|segment| !segment.contains('/'))
        .ok_or_else(|| InvalidRequest::path("expected /books/{id}"))
}

fn no_query(query: Option<&str>) -> Result<(), InvalidRequest> {
    match query {
        None | Some("") => Ok(()),
        Some(_) => Err(InvalidRequest::query(
            "this route takes no query parameters",
        )),
    }
}

/// `limit` and `offset`, each at most once, percent-decoded; nothing else.
fn parse_page(query: Option<&str>) -> Result<BookQuery, InvalidRequest> {
    let mut limit = None;
    let mut offset = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match name.as_ref() {
            "limit" => &mut limit,
            "offset" => &mut offset,
            _ => {
                return Err(InvalidRequest::query(
                    "unknown query parameter: only `limit` and `offset` are accepted",
                ));
            }
        };
        if slot.is_some() {
            return Err(InvalidRequest::query(format!(
                "`{name}` is given more than once"
            )));
        }
        let number = parse_digits(&value)
            .map_err(|reason| InvalidRequest::query(format!("`{name}` {reason}")))?;
        *slot = Some(number);
    }
    let limit = match limit {
        None => DEFAULT_PAGE_LIMIT,
        Some(limit) => u32::try_from(limit)
            .ok()
            .filter(|limit| (1..=MAX_PAGE_LIMIT).contains(limit))
            .ok_or_else(|| {
                InvalidRequest::query(format!("`limit` must be between 1 and {MAX_PAGE_LIMIT}"))
            })?,
    };
    let offset = offset.unwrap_or(0);
    if i64::try_from(offset).is_err() {
        return Err(InvalidRequest::query(format!(
            "`offset` must be at most {}",
            i64::MAX
        )));
    }
    Ok(BookQuery::List { limit, offset })
}

/// A non-negative integer written as 1 to [`MAX_NUMBER_CHARS`] ASCII digits.
fn parse_digits(text: &str) -> Result<u64, String> {
    if text.is_empty() || text.len() > MAX_NUMBER_CHARS || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "must be an integer of 1 to {MAX_NUMBER_CHARS} digits"
        ));
    }
    text.parse::<u64>()
        .map_err(|_| "is out of range".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(target: &str) -> Result<BookQuery, InvalidRequest> {
        BookQuery::from_uri(&target.parse::<Uri>().unwrap())
    }

    fn list(limit: u32, offset: u64) -> Result<BookQuery, InvalidRequest> {
        Ok(BookQuery::List { limit, offset })
    }

    fn one(id: i64) -> Result<BookQuery, InvalidRequest> {
        Ok(BookQuery::One { id: BookId(id) })
    }

    #[test]
    fn reads_parse_to_one_canonical_value() {
        let table = [
            ("/", list(100, 0)),
            ("/books", list(100, 0)),
            ("/books?", list(100, 0)),
            ("/books?limit=100&offset=0", list(100, 0)),
            ("/books?offset=0&limit=100", list(100, 0)),
            ("/books?limit=10", list(10, 0)),
            ("/books?limit=010", list(10, 0)),
            ("/books?limit=%31%30", list(10, 0)),
            ("/books?%6cimit=10", list(10, 0)),
            ("/books?limit=10&&offset=5&", list(10, 5)),
            ("/books?limit=1000", list(1000, 0)),
            (
                "/books?offset=9223372036854775807",
                list(100, i64::MAX as u64),
            ),
            ("/books/1", one(1)),
            ("/books/01", one(1)),
            ("/books/%31", one(1)),
            ("/books/1?", one(1)),
            ("/books/9223372036854775807", one(i64::MAX)),
            ("/books/00000000000000000042", one(42)),
        ];
        for (target, expected) in table {
            assert_eq!(read(target), expected, "{target}");
        }
    }

    #[test]
    fn malformed_reads_are_refused_with_the_part_named() {
        let path = |target: &str| matches!(read(target), Err(InvalidRequest::Path(_)));
        let query = |target: &str| matches!(read(target), Err(InvalidRequest::Query(_)));
        for target in [
            "/books/%zz",
            "/books/0",
            "/books/-1",
            "/books/+1",
            "/books/%2B1",
            "/books/1.0",
            "/books/%201",
            "/books/1%20",
            "/books/%2e%2e",
            "/books/..%2fmetrics",
            "/books/1%2f2",
            "/books/%5c1",
            "/books/%252e",
            "/books/%ff",
            "/books/9223372036854775808",
            "/books/1234567890123456789012345678901234567890",
            "/books/000000000000000000001",
        ] {
            assert!(path(target), "{target}: {:?}", read(target));
        }
        for target in [
            "/books/1?x=1",
            "/books/1?limit=1",
            "/books?x=1",
            "/books?limit",
            "/books?limit=",
            "/books?limit=abc",
            "/books?limit=0",
            "/books?limit=1001",
            "/books?limit=-1",
            "/books?limit=+1",
            "/books?limit=1+",
            "/books?limit=1e3",
            "/books?limit=10&limit=10",
            "/books?limit=10&%6cimit=10",
            "/books?offset=-1",
            "/books?offset=9223372036854775808",
            "/books?offset=99999999999999999999",
            "/books?limit=%zz",
            "/books?LIMIT=10",
        ] {
            assert!(query(target), "{target}: {:?}", read(target));
        }
    }

    #[test]
    fn upstream_targets_and_keys_come_from_the_parsed_value() {
        let default = read("/").unwrap();
        assert_eq!(default.upstream_target(), "/books?limit=100&offset=0");
        assert_eq!(
            default.cache_key().as_str(),
            "GET /books?limit=100&offset=0"
        );
        for alias in ["/books", "/books?limit=100&offset=0", "/books?offset=000"] {
            assert_eq!(
                read(alias).unwrap().cache_key(),
                default.cache_key(),
                "{alias}"
            );
        }
        let book = read("/books/007").unwrap();
        assert_eq!(book.upstream_target(), "/books/7");
        assert_eq!(book.cache_key().as_str(), "GET /books/7");
    }

    #[test]
    fn writes_name_the_collection_or_one_book() {
        let write = |target: &str| WriteTarget::from_uri(&target.parse::<Uri>().unwrap());
        assert_eq!(write("/books"), Ok(WriteTarget::Collection));
        assert_eq!(write("/books/012"), Ok(WriteTarget::Book(BookId(12))));
        assert_eq!(write("/books/012").unwrap().upstream_target(), "/books/12");
        assert_eq!(write("/books").unwrap().upstream_target(), "/books");
        for target in [
            "/books?x=1",
            "/books/1?x=1",
            "/books/%2e%2e",
            "/books/0",
            "/books/abc",
        ] {
            assert!(write(target).is_err(), "{target}");
        }
    }
}
