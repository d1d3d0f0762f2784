//! storagesvc's OpenAPI 3.1 document, generated from the handlers (`routes`), their types
//! (`domain`) and the problem kinds they answer with; served on the admin listener as
//! `GET /openapi.json` and committed as `docs/openapi/storagesvc.json`.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::domain::{Book, BookPayload};
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "storagesvc",
        description = "Serves books from PostgreSQL. When the database is down, hanging or \
            refusing, `/books*` answers `503` + `Retry-After` within a bounded time, never \
            hangs and never queues more requests than its pool can serve. Every error is an \
            RFC 9457 problem (`application/problem+json`).\n\n\
            `/books*` need a credential, in any of the forms of `securitySchemes` that are \
            configured (`AUTH_TOKENS`, `AUTH_BASIC_USERS`, `AUTH_JWT_*`); with none \
            configured, every request is `401`. The limits of the answers below (body and \
            head sizes, the request timeout, requests in progress) are the defaults of \
            `MAX_BODY_BYTES`, `MAX_HEADER_BYTES`, `REQUEST_TIMEOUT` and \
            `MAX_REQUESTS_IN_FLIGHT`.\n\n\
            This document is served on the admin listener (`ADMIN_BIND_ADDR`) as \
            `GET /openapi.json`, never on the public port."
    ),
    servers((url = "http://localhost:8082", description = "The default BIND_ADDR; compose \
        does not publish storagesvc, only booksvc reaches it.")),
    paths(
        routes::list_books,
        routes::create_book,
        routes::get_book,
        routes::update_book,
        routes::delete_book,
    ),
    components(schemas(Book, BookPayload, shared::Problem)),
    modifiers(&Credentials),
    tags(
        (name = "books", description = "The books, in PostgreSQL."),
        (name = "health", description = "Liveness and readiness, terse on this port."),
    )
)]
struct ApiDoc;

/// The credentials `/books*` accepts (`shared::auth`, configured in `config`).
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str, format: Option<&str>| {
            let mut http = HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description));
            if let Some(format) = format {
                http = http.bearer_format(format);
            }
            SecurityScheme::Http(http.build())
        };
        components.add_security_scheme(
            "bearerToken",
            bearer(
                "A static token of `AUTH_TOKENS`, as `Authorization: Bearer <token>`.",
                None,
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A static token of `AUTH_TOKENS`, as `X-API-Key: <token>`.",
            ))),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "A user of `AUTH_BASIC_USERS` and its password (Argon2-hashed there).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "accessToken",
            bearer(
                "An OAuth2 access token (RFC 9068 JWT, `typ: at+jwt`), verified by storagesvc: \
                 signed with `AUTH_JWT_PUBLIC_KEY` (`AUTH_JWT_ALGORITHM`, ES256 by default), \
                 `iss` = `AUTH_JWT_ISSUER`, `aud` = `AUTH_JWT_AUDIENCE`, `exp` and `nbf` with \
                 30 s leeway.",
                Some("JWT"),
            ),
        );
    }
}

/// The whole document: the books routes and the public health routes.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.merge(shared::openapi::health_paths());
    document
}

/// The document as it is committed and served.
pub fn json() -> Result<String, serde_json::Error> {
    shared::openapi::to_json(&document())
}
