//! Where a gateway call may go: the engine's path, checked as it came,
//! below the credential's base URL, never above it or off its origin.

use url::Url;

use crate::error::Error;
use crate::providers::FieldError;

/// A 422 `invalid_path`, naming the field `path`.
fn refused(message: &str) -> Error {
    Error::Unprocessable {
        code: "invalid_path",
        message: format!("the path {message}"),
        errors: vec![FieldError::new("path", message)],
    }
}

/// Checks the path the engine asked for (as it came, still percent-encoded)
/// and returns its segments. Refused: an empty segment (`//host`), `.` or
/// `..` in any spelling (`%2e%2e`), an encoded `/` or `\` (`%2f`, `%5c`),
/// a backslash, `@`, `:` in the first segment (an absolute URL), control
/// characters.
pub fn safe_segments(raw: &str) -> Result<Vec<String>, Error> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    if raw.len() > 4096 {
        return Err(refused("is longer than 4096 characters"));
    }
    let mut segments = Vec::new();
    for (i, segment) in raw.split('/').enumerate() {
        let decoded = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| refused("is not valid UTF-8 once decoded"))?;
        let bad = segment.is_empty() && i + 1 < raw.split('/').count()
            || matches!(decoded.as_ref(), "." | "..")
            || decoded.contains(['/', '\\', '@'])
            || decoded.chars().any(char::is_control)
            || (i == 0 && decoded.contains(':'));
        if bad {
            return Err(refused(
                "must stay under the credential's base URL: no empty, `.` or `..` segments, encoded slashes, backslashes, `@` or a scheme",
            ));
        }
        segments.push(segment.to_owned());
    }
    Ok(segments)
}

/// `base` with `segments` appended below its path, and `query`.
pub(super) fn join(base: &Url, segments: &[String], query: Option<&str>) -> Result<Url, Error> {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    let path = if segments.is_empty() {
        base.path().to_owned()
    } else {
        format!("{prefix}/{}", segments.join("/"))
    };
    url.set_path(&path);
    url.set_query(query.filter(|q| !q.is_empty()));
    // What the URL parser made of it must still be under the base.
    if url.origin() != base.origin() || !url.path().starts_with(prefix) {
        return Err(refused("must stay under the credential's base URL"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_climb_or_leave_the_origin() {
        for bad in [
            "..",
            "a/../../etc",
            "%2e%2e/x",
            "%2E%2E",
            "a/%2f/b",
            "a%2Fb",
            "a%5cb",
            "a\\b",
            "/evil.example/x",
            "a//b",
            "@evil.example",
            "x@evil.example",
            "http:%2f%2fevil.example",
            "https://evil.example/",
            ".",
            "a/./b",
            "a%00b",
        ] {
            assert!(safe_segments(bad).is_err(), "{bad}");
        }
        for good in ["", "v1/users/me", "files/a%20b.txt", "a/search:q", "a/"] {
            assert!(safe_segments(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_joined_url_stays_under_the_base_path() {
        let base = Url::parse("https://api.example.com/v2/").unwrap();

        let url = join(&base, &safe_segments("users/me").unwrap(), Some("a=1")).unwrap();

        assert_eq!(url.as_str(), "https://api.example.com/v2/users/me?a=1");
    }
}
