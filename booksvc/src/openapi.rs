//! booksvc's OpenAPI 3.1 document, generated from the handlers (`read_path`,
//! `write_path`), the parsed request types (`request`) and the problem kinds they answer
//! with; served on the admin listener as `GET /openapi.json` and committed as
//! `docs/openapi/booksvc.json`.

use shared::books::{Book, BookPayload};
use shared::openapi::add_operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::read_path::{ReadList, ReadOne, ReadRoot};
use crate::write_path::{CreateBook, DeleteBook, UpdateBook};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "booksvc",
        description = "The public books API. Reads are public and answered from storagesvc \
            through a resilient client (deadline, retries with a budget, circuit breaker, \
            adaptive concurrency limit), or, when storagesvc fails, is refused or is late, \
            from the last good answer to the same request, marked with `Cache-Status` and \
            `Age`. Writes need a writer credential and are passed to storagesvc, whose \
            answer is passed on as it came; booksvc writes a problem itself only when there \
            is none. Every error is an RFC 9457 problem (`application/problem+json`).\n\n\
            Input is parsed before anything is sent: an unknown or repeated parameter, a \
            value out of range or any query on `/books/{id}` and on writes is a `400` from \
            booksvc, even while storagesvc is down. The limits of the answers below (body \
            and head sizes, the request timeout, requests in progress) are the defaults of \
            `MAX_BODY_BYTES`, `MAX_HEADER_BYTES`, `REQUEST_TIMEOUT` and \
            `MAX_REQUESTS_IN_FLIGHT`.\n\n\
            This document is served on the admin listener (`ADMIN_BIND_ADDR`) as \
            `GET /openapi.json`, never on the public port."
    ),
    servers((url = "http://localhost:8081", description = "The default BIND_ADDR, the port \
        compose publishes.")),
    components(schemas(Book, BookPayload, shared::Problem)),
    modifiers(&WriterCredentials),
    tags(
        (name = "books", description = "The books, from storagesvc or its last good answers."),
        (name = "health", description = "Liveness and readiness, terse on this port."),
    )
)]
struct ApiDoc;

/// The writer credentials the writes accept (`AUTH_TOKENS`, `shared::auth`).
struct WriterCredentials;

impl Modify for WriterCredentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "writerToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A writer token of `AUTH_TOKENS`, as `Authorization: Bearer <token>`; \
                         with none configured every write is `401`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "writerApiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A writer token of `AUTH_TOKENS`, as `X-API-Key: <token>`.",
            ))),
        );
    }
}

/// The whole document: the books routes and the public health routes.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    add_operation::<ReadRoot>(&mut document, "books");
    add_operation::<ReadList>(&mut document, "books");
    add_operation::<CreateBook>(&mut document, "books");
    add_operation::<ReadOne>(&mut document, "books");
    add_operation::<UpdateBook>(&mut document, "books");
    add_operation::<DeleteBook>(&mut document, "books");
    document.merge(shared::openapi::health_paths());
    document
}

/// The document as it is committed and served.
pub fn json() -> Result<String, serde_json::Error> {
    shared::openapi::to_json(&document())
}
