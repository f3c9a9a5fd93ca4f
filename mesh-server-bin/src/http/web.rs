//! The web client: plain HTML, CSS and JavaScript modules from `web/`,
//! compiled into the binary so `mesh-server` is all a user runs.
//!
//! Every page answer carries a strict Content-Security-Policy: scripts and
//! styles only from this origin (no inline code), WebSockets to this
//! server, media from the camera (`blob:`), nothing framed.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

use super::response::Body;

/// The policy sent with every asset.
pub(crate) const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     media-src 'self' blob:; img-src 'self' data: blob:; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $ty:expr) => {
        Asset {
            path: $path,
            content_type: $ty,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/index.html", "index.html", "text/html; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/favicon.svg", "favicon.svg", "image/svg+xml"),
    asset!("/app.js", "app.js", JS),
    asset!("/api.js", "api.js", JS),
    asset!("/socket.js", "socket.js", JS),
    asset!("/call.js", "call.js", JS),
    asset!("/dom.js", "dom.js", JS),
    asset!("/state.js", "state.js", JS),
    asset!("/net.js", "net.js", JS),
    asset!("/backoff.js", "backoff.js", JS),
    asset!("/test-hook.js", "test-hook.js", JS),
    asset!("/auth-view.js", "auth-view.js", JS),
    asset!("/room-list.js", "room-list.js", JS),
    asset!("/rooms.js", "rooms.js", JS),
    asset!("/timeline.js", "timeline.js", JS),
    asset!("/members.js", "members.js", JS),
    asset!("/peers.js", "peers.js", JS),
    asset!("/call-view.js", "call-view.js", JS),
];

/// The web client's answer for `path`, if it is one of its files.
/// `None` lets the API router answer (and 404 what nobody knows).
pub(crate) fn serve(method: &Method, path: &str) -> Option<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let asset = ASSETS.iter().find(|a| a.path == path)?;
    let body = if method == Method::HEAD {
        Body::default()
    } else {
        Body::from(Bytes::from_static(asset.body))
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // The files change with the binary; revalidate instead of caching stale code.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(self), microphone=(self)"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_modules_have_their_types_and_the_policy() {
        let r = serve(&Method::GET, "/").expect("index");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let r = serve(&Method::GET, "/app.js").expect("app.js");
        assert_eq!(r.headers()[header::CONTENT_TYPE], JS);
        assert!(serve(&Method::POST, "/").is_none());
        assert!(serve(&Method::GET, "/nope.js").is_none());
        assert!(serve(&Method::GET, "/api/rooms").is_none());
    }

    #[test]
    fn every_imported_module_is_served_as_javascript() {
        let mut checked = 0;
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(asset.body).expect("utf-8");
            // `import ... from './x.js';`, on one line or closing several.
            for (start, _) in text.match_indices(" from './") {
                let rest = &text[start..];
                let rest = &rest[rest.find("'./").expect("path") + 3..];
                let name = &rest[..rest.find('\'').expect("closing quote")];
                let r = serve(&Method::GET, &format!("/{name}")).unwrap_or_else(|| {
                    panic!("{} imports {name}, which is not served", asset.path)
                });
                assert_eq!(r.headers()[header::CONTENT_TYPE], JS, "{name}");
                checked += 1;
            }
        }
        assert!(checked > 0, "no imports found");
    }

    #[test]
    fn no_inline_script_in_the_page() {
        let html = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        for tag in html.split("<script").skip(1) {
            let open = tag.split('>').next().unwrap_or_default();
            assert!(open.contains("src="), "inline script: <script{open}>");
        }
        // No inline event handlers (` onclick=` and the like).
        for (i, _) in html.match_indices(" on") {
            let rest = &html[i + 3..];
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            assert!(
                !rest[name.len()..].starts_with('='),
                "inline handler on{name}"
            );
        }
    }
}
