//! GET /ui — the web console: a page, its script and style, and xterm.js (vendored from the
//! npm registry into ui/vendor, see ui/vendor.sh), all compiled into the binary, so the page
//! works with no network beyond the service. The assets need no token; every call the page
//! makes does.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");
const XTERM_JS: &str = include_str!("../../ui/vendor/xterm.js");
const XTERM_CSS: &str = include_str!("../../ui/vendor/xterm.css");

/// Scripts and styles only from the service itself; xterm.js sets inline styles.
const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'";

pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/ui", axum::routing::get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", axum::routing::get(|| async { asset("index.html") }))
        .route("/ui/{file}", axum::routing::get(|axum::extract::Path(file): axum::extract::Path<String>| async move { asset(&file) }))
}

fn asset(name: &str) -> Response {
    let (body, ctype) = match name {
        "index.html" => (INDEX, "text/html; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "xterm.js" => (XTERM_JS, "text/javascript; charset=utf-8"),
        "xterm.css" => (XTERM_CSS, "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such file in the web console").into_response(),
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_assets_are_served_and_nothing_else() {
        for (name, ctype) in [("index.html", "text/html"), ("app.js", "text/javascript"), ("xterm.js", "text/javascript"), ("xterm.css", "text/css")] {
            let r = asset(name);
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with(ctype), "{name}");
        }
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for text in [INDEX, APP_JS, APP_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "an outside address in the web console");
        }
    }
}
