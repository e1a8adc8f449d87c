//! Reading a `WWW-Authenticate: Bearer` challenge's parameters (RFC 6750
//! §3): where an MCP server names its metadata and the scopes it wants.

/// The auth-params of a `WWW-Authenticate: Bearer …` challenge, as
/// `(name, value)`: quoted strings unescaped, bare tokens as they are.
pub(super) fn challenge_params(header: &str) -> Vec<(String, String)> {
    let rest = header.trim_start();
    let rest = if rest.len() >= 6 && rest[..6].eq_ignore_ascii_case("bearer") {
        &rest[6..]
    } else {
        rest
    };
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(c) = chars.peek().copied() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return params;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

pub(super) fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params_are_read_quoted_or_bare() {
        let p = challenge_params(
            r#"Bearer error="invalid_token", resource_metadata="https://x.example/.well-known/oauth-protected-resource/mcp", scope="a b", realm=mcp, q="say \"hi\", ok""#,
        );

        assert_eq!(param(&p, "error").as_deref(), Some("invalid_token"));
        assert_eq!(
            param(&p, "resource_metadata").as_deref(),
            Some("https://x.example/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(param(&p, "scope").as_deref(), Some("a b"));
        assert_eq!(param(&p, "realm").as_deref(), Some("mcp"));
        assert_eq!(param(&p, "q").as_deref(), Some("say \"hi\", ok"));
        assert!(challenge_params("Bearer").is_empty());
        assert!(challenge_params("Bearer ,,,=").iter().all(|(k, _)| k.is_empty()));
    }
}
