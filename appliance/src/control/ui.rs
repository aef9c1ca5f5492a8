//! The web UI: three static files compiled into the binary and served as
//! they are. No build step, no CDN, nothing fetched at run time; the page
//! talks to the JSON API under `/api/v1` with the session cookie.
//!
//! Every answer carries a strict Content-Security-Policy: scripts and
//! styles only from this origin, no inline script, no framing.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The policy sent with every UI file: the page may load scripts, styles
/// and data only from the appliance itself (`data:` images for the empty
/// favicon), and may not be framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Each file: its path, content type and text.
const FILES: [(&str, &str, &str); 4] = [
    ("/", "text/html; charset=utf-8", INDEX_HTML),
    ("/index.html", "text/html; charset=utf-8", INDEX_HTML),
    ("/app.js", "text/javascript; charset=utf-8", APP_JS),
    ("/app.css", "text/css; charset=utf-8", APP_CSS),
];

/// The UI's routes: `/` (and `/index.html`), `/app.js`, `/app.css`. They
/// need no authentication: the page itself asks the API whether it is
/// logged in.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    FILES
        .into_iter()
        .fold(Router::new(), |router, (path, content_type, body)| {
            router.route(path, get(move || async move { file(content_type, body) }))
        })
}

/// One embedded file with its content type and the security headers.
fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        assert!(INDEX_HTML.contains(r#"<script src="/app.js""#));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<style"));
        for handler in ["onclick", "onload", "onsubmit", "onerror", "javascript:"] {
            assert!(!INDEX_HTML.contains(handler), "no inline event handlers");
        }
        assert!(
            !APP_JS.contains("innerHTML"),
            "the UI builds DOM nodes, never HTML text"
        );
        assert!(!APP_JS.contains("eval("));
    }

    #[test]
    fn nothing_is_fetched_from_elsewhere() {
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            for remote in [
                "src=\"http",
                "href=\"http",
                "url(",
                "@import",
                "//cdn",
                "fetch(\"http",
            ] {
                assert!(!text.contains(remote), "{remote}");
            }
        }
    }
}
