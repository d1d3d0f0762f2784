//! The books routes: HTTP in, domain types to the database, HTTP out.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use shared::extract::{Json, Path, Query};
use shared::openapi::{Answers, HeaderSpec, json_response, string_schema};
use shared::problem::{
    BAD_REQUEST, DATABASE_UNAVAILABLE, FAULT_INJECTED, IDEMPOTENCY_KEY_REUSED, INVALID_INPUT,
    INVALID_PATH, INVALID_QUERY, MALFORMED_JSON, NOT_FOUND, OUTCOME_UNKNOWN, UNAUTHORIZED,
    UNREADABLE_BODY, UNSUPPORTED_MEDIA_TYPE,
};
use utoipa::openapi::Ref;

use crate::db::{CreateOutcome, CreatedResponse, Database, DbError};
use crate::domain::{Book, BookPayload, IdempotencyKey, NewBook, Page, PageQuery};
use crate::error::ApiError;

/// What every `/books*` route may answer besides its own: its credential refused
/// (`shared::auth`), the admission gate's and the database's `503`s (`admission`,
/// `error`), and the drill's faults (`faults`), on top of the server's own answers.
fn books_answers() -> Answers {
    Answers::new().problems(&[UNAUTHORIZED, DATABASE_UNAVAILABLE, FAULT_INJECTED])
}

/// The problems of a book in the body: the extractor's, then `NewBook::parse`'s.
const BODY_PROBLEMS: [shared::problem::ProblemType; 4] = [
    MALFORMED_JSON,
    UNREADABLE_BODY,
    UNSUPPORTED_MEDIA_TYPE,
    INVALID_INPUT,
];

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Database>,
    /// `Retry-After` sent while the database is unavailable.
    pub retry_after: Duration,
}

impl AppState {
    fn db_error(&self, error: DbError) -> ApiError {
        ApiError::Db {
            error,
            retry_after: self.retry_after,
        }
    }
}

pub fn books(state: AppState) -> Router {
    Router::new()
        .route("/books", get(list_books).post(create_book))
        .route(
            "/books/{id}",
            get(get_book).put(update_book).delete(delete_book),
        )
        .with_state(state)
}

shared::answers!(ListBooksAnswers = books_answers().problems(&[INVALID_QUERY, BAD_REQUEST]));

/// List books
///
/// One page of the books, ordered by id.
#[utoipa::path(
    get,
    path = "/books",
    tag = "books",
    operation_id = "listBooks",
    params(PageQuery),
    security(("bearerToken" = []), ("apiKey" = []), ("basic" = []), ("accessToken" = [])),
    responses(
        (status = 200, description = "The page: at most `limit` books, from `offset` on.", body = [Book]),
        ListBooksAnswers,
    )
)]
async fn list_books(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Vec<Book>>, ApiError> {
    let page = Page::parse(query).map_err(ApiError::BadRequest)?;
    let books = state
        .db
        .list_books(page)
        .await
        .map_err(|e| state.db_error(e))?;
    Ok(axum::Json(books))
}

shared::answers!(GetBookAnswers = books_answers().problems(&[INVALID_PATH, NOT_FOUND]));

/// Get a book
#[utoipa::path(
    get,
    path = "/books/{id}",
    tag = "books",
    operation_id = "getBook",
    params(("id" = i64, Path, description = "The book's id (storagesvc gives positive ones; \
        any other integer is a `404`).")),
    security(("bearerToken" = []), ("apiKey" = []), ("basic" = []), ("accessToken" = [])),
    responses(
        (status = 200, description = "The book.", body = Book),
        GetBookAnswers,
    )
)]
async fn get_book(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Book>, ApiError> {
    match state.db.get_book(id).await.map_err(|e| state.db_error(e))? {
        Some(book) => Ok(axum::Json(book)),
        None => Err(ApiError::NotFound(id)),
    }
}

shared::answers!(
    CreateBookAnswers = books_answers().problems(&BODY_PROBLEMS).problems(&[
        BAD_REQUEST,
        IDEMPOTENCY_KEY_REUSED,
        OUTCOME_UNKNOWN
    ])
);

shared::response!(
    /// `201` and what `created` sends with it.
    CreatedBook = json_response(
        "Created (or, with an `Idempotency-Key` seen before with the same body, the first \
         response again): the new book.",
        Ref::from_schema_name("Book"),
        &[location_header(), replayed_header()],
    )
);

/// `Location` of a `201`: the new book's path.
pub fn location_header() -> HeaderSpec {
    HeaderSpec::new(
        "Location",
        "The new book's path, `/books/{id}`.",
        string_schema(Some("^/books/[1-9][0-9]*$")),
    )
    .required()
}

/// `Idempotent-Replayed` of a replayed create.
pub fn replayed_header() -> HeaderSpec {
    HeaderSpec::new(
        "Idempotent-Replayed",
        "`true` when this is the stored response to an earlier request with the same \
         `Idempotency-Key` and body; nothing was created this time. Absent otherwise.",
        shared::openapi::string_enum_schema(["true".to_owned()]),
    )
}

/// Create a book
#[utoipa::path(
    post,
    path = "/books",
    tag = "books",
    operation_id = "createBook",
    params(IdempotencyKey),
    request_body(content = BookPayload, content_type = "application/json"),
    security(("bearerToken" = []), ("apiKey" = []), ("basic" = []), ("accessToken" = [])),
    responses(
        (status = 201, response = inline(CreatedBook)),
        CreateBookAnswers,
    )
)]
async fn create_book(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(payload): Json<BookPayload>,
) -> Result<Response, ApiError> {
    let key = IdempotencyKey::from_headers(&headers).map_err(ApiError::BadRequest)?;
    let book = NewBook::parse(payload).map_err(ApiError::Invalid)?;
    match state
        .db
        .create_book(&book, key.as_ref())
        .await
        .map_err(|e| state.db_error(e))?
    {
        CreateOutcome::Created(response) => Ok(created(response, false)),
        CreateOutcome::Replayed(response) => Ok(created(response, true)),
        CreateOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// `201` with `Location`; a replay is the stored response byte for byte, marked as such.
fn created(response: CreatedResponse, replayed: bool) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(location) = HeaderValue::from_str(&response.location) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    (StatusCode::CREATED, headers, response.body).into_response()
}

shared::answers!(
    UpdateBookAnswers = books_answers().problems(&BODY_PROBLEMS).problems(&[
        INVALID_PATH,
        NOT_FOUND,
        OUTCOME_UNKNOWN
    ])
);

/// Replace a book
///
/// Its title, author and description; the id stays.
#[utoipa::path(
    put,
    path = "/books/{id}",
    tag = "books",
    operation_id = "updateBook",
    params(("id" = i64, Path, description = "The book's id.")),
    request_body(content = BookPayload, content_type = "application/json"),
    security(("bearerToken" = []), ("apiKey" = []), ("basic" = []), ("accessToken" = [])),
    responses(
        (status = 200, description = "Replaced: the book as it now is.", body = Book),
        UpdateBookAnswers,
    )
)]
async fn update_book(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(payload): Json<BookPayload>,
) -> Result<axum::Json<Book>, ApiError> {
    let book = NewBook::parse(payload).map_err(ApiError::Invalid)?;
    match state
        .db
        .update_book(id, &book)
        .await
        .map_err(|e| state.db_error(e))?
    {
        Some(book) => Ok(axum::Json(book)),
        None => Err(ApiError::NotFound(id)),
    }
}

shared::answers!(
    DeleteBookAnswers = books_answers().problems(&[INVALID_PATH, NOT_FOUND, OUTCOME_UNKNOWN])
);

/// Delete a book
#[utoipa::path(
    delete,
    path = "/books/{id}",
    tag = "books",
    operation_id = "deleteBook",
    params(("id" = i64, Path, description = "The book's id.")),
    security(("bearerToken" = []), ("apiKey" = []), ("basic" = []), ("accessToken" = [])),
    responses(
        (status = 204, description = "Deleted."),
        DeleteBookAnswers,
    )
)]
async fn delete_book(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if state
        .db
        .delete_book(id)
        .await
        .map_err(|e| state.db_error(e))?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(id))
    }
}
