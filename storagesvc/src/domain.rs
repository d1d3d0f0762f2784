//! The books domain: what a valid book, page and idempotency key are.
//!
//! Input is parsed into these types once, at the edge; past `routes`, nothing re-checks.

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};

pub use shared::books::{
    Book, BookPayload, MAX_AUTHOR_CHARS, MAX_DESC_CHARS, MAX_IDEMPOTENCY_KEY_LEN, MAX_TITLE_CHARS,
};

pub const DEFAULT_PAGE_LIMIT: i64 = 100;
pub const MAX_PAGE_LIMIT: i64 = 1000;

/// A book's fields after validation; only `NewBook::parse` makes one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewBook {
    title: String,
    author: String,
    desc: String,
}

impl NewBook {
    pub fn parse(payload: BookPayload) -> Result<Self, String> {
        Ok(Self {
            title: text_field("title", payload.title, MAX_TITLE_CHARS, false)?,
            author: text_field("author", payload.author, MAX_AUTHOR_CHARS, false)?,
            desc: text_field("desc", payload.desc, MAX_DESC_CHARS, true)?,
        })
    }

    pub fn title(&self) -> &str {
        &self.title
    }

    pub fn author(&self) -> &str {
        &self.author
    }

    pub fn desc(&self) -> &str {
        &self.desc
    }
}

fn text_field(
    name: &str,
    value: String,
    max_chars: usize,
    may_be_empty: bool,
) -> Result<String, String> {
    let value = value.trim().to_owned();
    if value.is_empty() && !may_be_empty {
        return Err(format!("`{name}` must not be empty"));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(format!(
            "`{name}` has {chars} characters; at most {max_chars} are allowed"
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(format!("`{name}` must not contain control characters"));
    }
    Ok(value)
}

/// `limit` and `offset` of `GET /books` as sent; unknown parameters are rejected.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    // The descriptions are in the schemas: with `schema_with`, utoipa drops a field's doc.
    #[param(schema_with = limit_schema)]
    pub limit: Option<i64>,
    #[param(schema_with = offset_schema)]
    pub offset: Option<i64>,
}

fn limit_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .description(Some(format!(
            "How many books at most (1 to {MAX_PAGE_LIMIT}; {DEFAULT_PAGE_LIMIT} when absent)."
        )))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .maximum(Some(MAX_PAGE_LIMIT))
        .default(Some(json!(DEFAULT_PAGE_LIMIT)))
        .build()
}

fn offset_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .description(Some("How many books to skip, in id order (0 when absent)."))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
        .default(Some(json!(0)))
        .build()
}

/// A valid page of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub fn parse(query: PageQuery) -> Result<Self, String> {
        let limit = query.limit.unwrap_or(DEFAULT_PAGE_LIMIT);
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(format!(
                "`limit` must be between 1 and {MAX_PAGE_LIMIT}, got {limit}"
            ));
        }
        let offset = query.offset.unwrap_or(0);
        if offset < 0 {
            return Err(format!("`offset` must not be negative, got {offset}"));
        }
        Ok(Self { limit, offset })
    }
}

/// The `Idempotency-Key` of a create: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const HEADER: &'static str = "idempotency-key";

    /// `Ok(None)` when the header is absent; an error when it is present but unusable.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, String> {
        let Some(value) = headers.get(Self::HEADER) else {
            return Ok(None);
        };
        let value = value
            .to_str()
            .map_err(|_| "`Idempotency-Key` must be visible ASCII".to_owned())?
            .trim();
        if value.is_empty() || value.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(format!(
                "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
            ));
        }
        Ok(Some(Self(value.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The header as `from_headers` accepts it, for the OpenAPI document.
impl utoipa::IntoParams for IdempotencyKey {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        vec![shared::openapi::header_parameter(
            "Idempotency-Key",
            "Makes the create safe to repeat: a repeat with the same key and body gets the \
             first response again (`Idempotent-Replayed: true`), with another body `422`. \
             1 to 255 visible ASCII characters.",
            shared::books::idempotency_key_schema(),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(title: &str, author: &str, desc: &str) -> BookPayload {
        BookPayload {
            title: title.into(),
            author: author.into(),
            desc: desc.into(),
        }
    }

    #[test]
    fn valid_book_is_trimmed() {
        let book = NewBook::parse(payload("  Dune ", "Frank Herbert", "")).unwrap();
        assert_eq!(book.title(), "Dune");
        assert_eq!(book.desc(), "");
    }

    #[test]
    fn invalid_books_are_rejected_with_the_field_named() {
        let long = "x".repeat(MAX_TITLE_CHARS + 1);
        for (case, expected) in [
            (payload("", "a", ""), "`title` must not be empty"),
            (payload("   ", "a", ""), "`title` must not be empty"),
            (payload("t", "", ""), "`author` must not be empty"),
            (payload(&long, "a", ""), "`title` has 201 characters"),
            (
                payload("t", "a", &"d".repeat(MAX_DESC_CHARS + 1)),
                "`desc` has 4001",
            ),
            (payload("t\u{0}", "a", ""), "control characters"),
        ] {
            let err = NewBook::parse(case).unwrap_err();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }

    #[test]
    fn page_bounds() {
        assert_eq!(
            Page::parse(PageQuery::default()),
            Ok(Page {
                limit: 100,
                offset: 0
            })
        );
        assert!(
            Page::parse(PageQuery {
                limit: Some(1000),
                offset: Some(5)
            })
            .is_ok()
        );
        for (limit, offset) in [
            (Some(0), None),
            (Some(-1), None),
            (Some(1001), None),
            (None, Some(-1)),
        ] {
            assert!(
                Page::parse(PageQuery { limit, offset }).is_err(),
                "{limit:?} {offset:?}"
            );
        }
    }

    #[test]
    fn idempotency_key_rules() {
        let mut headers = HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&headers), Ok(None));
        headers.insert(IdempotencyKey::HEADER, "abc-123".parse().unwrap());
        assert_eq!(
            IdempotencyKey::from_headers(&headers)
                .unwrap()
                .unwrap()
                .as_str(),
            "abc-123"
        );
        headers.insert(IdempotencyKey::HEADER, "k".repeat(256).parse().unwrap());
        assert!(IdempotencyKey::from_headers(&headers).is_err());
    }
}
