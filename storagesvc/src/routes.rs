//! The books routes: HTTP in, domain types to the database, HTTP out.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use shared::extract::{Json, Path, Query};

use crate::db::{CreateOutcome, CreatedResponse, Database, DbError};
use crate::domain::{Book, BookPayload, IdempotencyKey, NewBook, Page, PageQuery};
use crate::error::ApiError;

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

async fn get_book(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Book>, ApiError> {
    match state.db.get_book(id).await.map_err(|e| state.db_error(e))? {
        Some(book) => Ok(axum::Json(book)),
        None => Err(ApiError::NotFound(id)),
    }
}

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
