//! The web dashboard at `/ui`: one HTML page, a stylesheet and a script, all
//! embedded in the binary (no CDN, no build step), over the admin API and its
//! token scopes. The page renders from the JSON API and follows changes with
//! the API's watches (server-sent events), so what it shows is what
//! `arkline ctl` sees. Sign-in opens a session on the server (the token stays
//! there) named by a random id in an HttpOnly, SameSite=Strict cookie; writes
//! made with that cookie must carry `X-Arkline-Request` (see
//! [`auth`](super::auth)). Decisions: ARCHITECTURE.md.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::auth::{SESSION_COOKIE, SESSION_LIFETIME, session_cookie};
use super::state::AppState;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/ui/session", post(sign_in))
        .route("/ui/logout", post(sign_out))
}

/// Headers every dashboard answer carries: its own origin only, no framing,
/// no referrer outside it, no sniffing.
fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with no referrer a browser sends
    // `Origin: null` on form posts, which the sign-in refuses.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn redirect(to: &'static str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

/// Whether a form post comes from this server's own page (a browser sends
/// `Origin` with every form post; a post from another site is refused).
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match headers.get("origin").and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
    }
}

/// `POST /ui/session` with the form field `token`: a known token is kept in
/// the session cookie; an unknown one is refused (back to the sign-in with
/// `?error=token`).
async fn sign_in(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "sign-in from another site is refused",
        )
            .into_response();
    }
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    if token.is_empty() || !state.auth.knows(&token) {
        return redirect("/ui?error=token", None);
    }
    let id = match state.sessions.open(&token) {
        Ok(id) => id,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    redirect("/ui", Some(cookie))
}

/// `POST /ui/logout`: the session ends on the server and its cookie is dropped.
async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "sign-out from another site is refused",
        )
            .into_response();
    }
    if let Ok(Some(id)) = session_cookie(&headers) {
        state.sessions.close(&id);
    }
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    redirect("/ui", Some(cookie))
}
