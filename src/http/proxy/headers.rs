//! Which headers pass through the gateway, each way: what the engine sent
//! that could carry its own authority is never forwarded; what the
//! service answers passes but hop-by-hop headers, `Set-Cookie`, anything
//! that would pass for credgate's own, and the secrets the call placed.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::gateway::{Placed, Scrubbed};

/// Request headers never forwarded (beside those named in `Connection`).
const NOT_FORWARDED: [&str; 14] = [
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "forwarded",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "x-real-ip",
    "content-length",
];

/// Response headers never returned.
const NOT_RETURNED: [&str; 10] = [
    "set-cookie",
    "set-cookie2",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

pub(super) fn named_in_connection(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

pub(super) fn forwarded(name: &HeaderName, extra: &[String]) -> bool {
    let n = name.as_str();
    !(NOT_FORWARDED.contains(&n)
        || n.starts_with("x-forwarded-")
        || n.starts_with("credgate-")
        || extra.iter().any(|e| e == n))
}

/// The service's answer's headers as the engine gets them: less those
/// never returned, those named in its `Connection`, its own `Credgate-*`
/// (nothing of the service's may pass for credgate's `Credgate-Error`),
/// and the secrets the call `placed`.
///
/// The answer's trailers (`Trailer`: the fields announced to follow the
/// body) are announced as those that may be returned; the trailers
/// themselves pass the same rules ([`keep_returnable`]).
pub(super) fn returned(headers: &mut HeaderMap, placed: &Placed) {
    let connection = named_in_connection(headers);
    let announced: Vec<String> = headers
        .get_all("trailer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && may_return(n) && !connection.contains(n))
        .collect();
    for name in connection {
        headers.remove(name.as_str());
    }
    keep_returnable(headers, placed);
    if let Ok(announced) = HeaderValue::from_str(&announced.join(", ")) {
        if !announced.is_empty() {
            headers.insert("trailer", announced);
        }
    }
}

/// Whether a field of this (lower-case) name may reach the engine at all.
fn may_return(name: &str) -> bool {
    !NOT_RETURNED.contains(&name) && !name.starts_with("credgate-")
}

/// An answer's fields (its header's, or its trailers') as the engine gets
/// them: less what is never returned, what would pass for credgate's own,
/// and the secrets the call `placed`.
pub(super) fn keep_returnable(fields: &mut HeaderMap, placed: &Placed) {
    let never: Vec<HeaderName> = fields.keys().filter(|n| !may_return(n.as_str())).cloned().collect();
    for name in never {
        fields.remove(name);
    }
    scrub(fields, placed);
}

/// Takes the secrets `placed` in the request out of the answer's headers
/// (services write requests back: a redirect keeping the query, a next
/// page's `Link`): the placed query parameter out of a header's URLs, or
/// the header dropped.
fn scrub(headers: &mut HeaderMap, placed: &Placed) {
    let held = headers.values().any(|v| placed.scrub(v.as_bytes()) != Scrubbed::Keep);
    if !held {
        return;
    }
    let all = std::mem::take(headers);
    let mut name = None;
    for (next, value) in all {
        name = next.or(name);
        let Some(name) = &name else { continue };
        match placed.scrub(value.as_bytes()) {
            Scrubbed::Keep => {
                headers.append(name.clone(), value);
            }
            Scrubbed::Replace(cleaned) => match HeaderValue::from_str(&cleaned) {
                Ok(cleaned) => {
                    headers.append(name.clone(), cleaned);
                }
                Err(_) => {
                    tracing::warn!(header = %name, "a service wrote a credential's secret into its answer; the header is not returned")
                }
            },
            Scrubbed::Drop => {
                tracing::warn!(header = %name, "a service wrote a credential's secret into its answer; the header is not returned");
            }
        }
    }
}

/// Headers that describe an answer's bytes as the service compressed them,
/// not as the engine gets them inflated.
const OF_THE_COMPRESSED_BYTES: [&str; 6] = [
    "content-encoding",
    "content-length",
    "content-digest",
    "digest",
    "content-md5",
    "accept-ranges",
];

/// The headers of an answer the gateway inflates: what described the
/// compressed bytes goes, and a strong `ETag` becomes weak (the same
/// resource in other bytes: as a strong tag it would let the engine join a
/// range of these bytes to a range of the compressed ones).
pub(super) fn inflated(headers: &mut HeaderMap) {
    for name in OF_THE_COMPRESSED_BYTES {
        headers.remove(name);
    }
    let weak = headers
        .get(axum::http::header::ETAG)
        .and_then(|tag| tag.to_str().ok())
        .filter(|tag| !tag.starts_with("W/"))
        .and_then(|tag| axum::http::HeaderValue::from_str(&format!("W/{tag}")).ok());
    if let Some(weak) = weak {
        headers.insert(axum::http::header::ETAG, weak);
    }
}
