//! A book on the wire, as both services speak it: storagesvc reads and writes it, booksvc
//! passes it on byte for byte (its OpenAPI document describes it with these types too).
//! What makes a book valid is checked in storagesvc (`domain::NewBook`); the limits and
//! the rule's regular expression for the documents live here, next to the types.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_AUTHOR_CHARS: usize = 200;
pub const MAX_DESC_CHARS: usize = 4000;
/// The longest `Idempotency-Key` storagesvc accepts on a create.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A stored book, in the wire format of the original service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({ "id": 1, "title": "One book", "author": "John Doe", "desc": "" }))]
pub struct Book {
    /// Given by storagesvc when the book is created.
    pub id: i64,
    pub title: String,
    pub author: String,
    /// May be empty.
    pub desc: String,
}

/// The body of `POST /books` and `PUT /books/{id}` as sent. An `id` in the body is ignored:
/// the path names the book.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({ "title": "Dune", "author": "Frank Herbert", "desc": "" }))]
pub struct BookPayload {
    /// Trimmed, then 1 to 200 characters, none a control character but newline and tab.
    #[schema(schema_with = title_schema)]
    pub title: String,
    /// Trimmed, then 1 to 200 characters, none a control character but newline and tab.
    #[schema(schema_with = author_schema)]
    pub author: String,
    /// Trimmed, then at most 4000 characters, none a control character but newline and
    /// tab; empty when absent.
    #[serde(default)]
    #[schema(schema_with = desc_schema)]
    pub desc: String,
}

fn title_schema() -> Object {
    text_schema(MAX_TITLE_CHARS, false)
}

fn author_schema() -> Object {
    text_schema(MAX_AUTHOR_CHARS, false)
}

fn desc_schema() -> Object {
    text_schema(MAX_DESC_CHARS, true)
}

/// A string that storagesvc's `text_field` accepts, for the OpenAPI document.
fn text_schema(max_chars: usize, may_be_empty: bool) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(text_pattern(max_chars, may_be_empty)))
        .build()
}

/// What storagesvc's `text_field` accepts, as a regular expression: any white space
/// (which it trims) around 1 (or, if `may_be_empty`, 0) to `max_chars` characters that
/// begin and end with something else than white space, none of them a control character
/// but newline and tab. A length limit (`maxLength`) would not do: it would count the
/// white space that is trimmed.
///
/// The classes are Unicode's White_Space (what `str::trim` removes) and category Cc
/// (`char::is_control`). Characters are code points, as `chars()` counts them and as a
/// Unicode-aware engine matches them; an ECMA-262 engine without the `u` flag counts a
/// character beyond U+FFFF as two.
pub fn text_pattern(max_chars: usize, may_be_empty: bool) -> String {
    const SPACE: &str =
        r"\t\n\u000B\u000C\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";
    const CONTROL_BUT_NEWLINE_AND_TAB: &str = r"\u0000-\u0008\u000B-\u001F\u007F-\u009F";
    let inner = format!("[^{CONTROL_BUT_NEWLINE_AND_TAB}]");
    let edge = format!("[^{CONTROL_BUT_NEWLINE_AND_TAB}{SPACE}]");
    let middle = max_chars.saturating_sub(2);
    let text = format!("{edge}(?:{inner}{{0,{middle}}}{edge})?");
    let text = if may_be_empty {
        format!("(?:{text})?")
    } else {
        text
    };
    format!("^[{SPACE}]*{text}[{SPACE}]*$")
}

/// The `Idempotency-Key` of a create as storagesvc accepts it (`domain::IdempotencyKey`):
/// 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII characters (spaces and tabs inside).
pub fn idempotency_key_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_IDEMPOTENCY_KEY_LEN))
        .pattern(Some(r"^[!-~](?:[\t -~]*[!-~])?$"))
        .build()
}
