//! Where a person may be sent back to, and which pages may hear the result:
//! the prefixes in `CREDGATE_ALLOWED_RETURN_URLS`, checked by origin and path.

/// Does `candidate` start with an allowed prefix *and* share its origin?
/// (A bare string prefix would let `https://app.example.com.evil.net` pass.)
pub fn return_to_allowed(allowed: &[String], candidate: &str) -> bool {
    let Ok(url) = url::Url::parse(candidate) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    allowed.iter().any(|prefix| {
        let Ok(base) = url::Url::parse(prefix) else {
            return false;
        };
        let path_ok = base.path().ends_with('/')
            || url.path() == base.path()
            || url.path().starts_with(&format!("{}/", base.path()));
        candidate.starts_with(prefix.as_str()) && url.origin() == base.origin() && path_ok
    })
}

/// The origins of the allowed return URLs (`postMessage` targets, and the
/// pages that may frame the connect page).
pub fn allowed_origins(allowed: &[String]) -> Vec<String> {
    let mut origins: Vec<String> = allowed
        .iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .collect();
    origins.sort();
    origins.dedup();
    origins
}
