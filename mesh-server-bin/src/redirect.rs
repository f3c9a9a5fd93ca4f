//! The plain-HTTP listener of an HTTPS server (`--http-listen`): every
//! request is redirected (`308`) to the same path over `https://`, except
//! ACME HTTP-01 challenges, which are answered here.
//!
//! It serves nothing else, so nothing secret crosses it: no API, no
//! WebSocket. Connections are bounded in number and time like the main
//! listener's.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::tls::acme::Challenges;

/// At most this many redirect connections at once; more wait in the
/// kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A connection's whole life: one request, one answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Serves redirects to `https://HOST:https_port` until `shutdown`.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    challenges: Option<Arc<Challenges>>,
    shutdown: impl Future<Output = impl Sized>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = &mut shutdown => return,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the HTTP listener");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let challenges = challenges.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let answer = answer(&req, https_port, challenges.as_deref());
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CONNECTION_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

/// The answer to one request on the HTTP listener.
fn answer<B>(
    req: &Request<B>,
    https_port: u16,
    challenges: Option<&Challenges>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        return match challenges.and_then(|c| c.answer(token)) {
            Some(key_auth) => plain(StatusCode::OK, key_auth),
            None => plain(StatusCode::NOT_FOUND, "no such challenge".into()),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(host_only);
    let Some(host) = host else {
        return plain(
            StatusCode::BAD_REQUEST,
            "this server speaks HTTPS; send a Host header to be redirected".into(),
        );
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path_and_query}");
    let mut r = plain(
        StatusCode::PERMANENT_REDIRECT,
        format!("moved to {location}\n"),
    );
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "bad Host header".into()),
    }
}

/// The host of a `Host` header without its port; `None` when it is not a
/// plain host name or address (so it cannot inject into `Location`).
fn host_only(value: &str) -> Option<&str> {
    let host = if value.starts_with('[') {
        // [v6]:port
        &value[..=value.find(']')?]
    } else {
        value.split(':').next()?
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    ok.then_some(host)
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn redirects_keep_path_and_query_and_drop_the_http_port() {
        let r = answer(&get("/rooms?x=1", Some("chat.example:80")), 443, None);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://chat.example/rooms?x=1"
        );
        let r = answer(&get("/", Some("[::1]:8080")), 8443, None);
        assert_eq!(r.headers()[header::LOCATION], "https://[::1]:8443/");
    }

    #[test]
    fn hostile_hosts_are_refused() {
        for host in ["evil.example/x", "a b", "x\"y", ""] {
            let r = answer(&get("/", Some(host)), 443, None);
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{host:?}");
        }
        assert_eq!(
            answer(&get("/", None), 443, None).status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn challenges_are_answered_only_while_known() {
        let c = Challenges::new();
        c.insert("tok".into(), "tok.thumb".into());
        let r = answer(&get("/.well-known/acme-challenge/tok", None), 443, Some(&c));
        assert_eq!(r.status(), StatusCode::OK);
        let r = answer(
            &get("/.well-known/acme-challenge/other", None),
            443,
            Some(&c),
        );
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
