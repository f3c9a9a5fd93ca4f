//! Reading requests: JSON bodies within a size limit, the bearer token,
//! query parameters.

use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use mesh_core::Error;
use mesh_core::auth::Identity;
use serde::de::DeserializeOwned;

use crate::AppState;

/// Reads a JSON body of at most `max` bytes.
pub(crate) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    max: usize,
) -> Result<T, Error> {
    let too_large = || Error::PayloadTooLarge(format!("request body is larger than {max} bytes"));
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH)
        && len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .is_some_and(|n| n > max)
    {
        return Err(too_large());
    }
    let bytes = match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(Error::InvalidRequest(format!(
                "could not read the body: {e}"
            )));
        }
    };
    if bytes.is_empty() {
        return Err(Error::InvalidRequest("a JSON body is required".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidRequest(format!("bad JSON body: {e}")))
}

/// The bearer token of a request: `Authorization: Bearer …`, or for
/// WebSocket upgrades also `?token=…`.
pub(crate) fn bearer_token<B>(req: &Request<B>, allow_query: bool) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
    {
        let mut parts = value.splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(token.trim().to_owned());
        }
    }
    if allow_query {
        return query_param(req.uri().query(), "token");
    }
    None
}

/// One query parameter, percent-decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url_params(query?)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn url_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Authenticates a request.
pub(crate) async fn authenticate<B>(
    state: &AppState,
    req: &Request<B>,
    allow_query: bool,
) -> Result<Identity, Error> {
    let token = bearer_token(req, allow_query)
        .ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
    state.service.authenticate(&token).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param(Some("a=1&token=x%2By+z"), "token").as_deref(),
            Some("x+y z")
        );
        assert_eq!(
            query_param(Some("token=%zz"), "token").as_deref(),
            Some("%zz")
        );
        assert_eq!(
            query_param(Some("token=%4"), "token").as_deref(),
            Some("%4")
        );
        assert_eq!(query_param(None, "token"), None);
    }
}
