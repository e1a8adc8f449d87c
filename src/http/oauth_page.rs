//! The small page a person sees after connecting when there is no
//! `return_to`: the result in words; opened as a popup, it posts the result
//! to its opener (only to the allowed origins, never `*`) and closes.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use rand::RngCore;

use crate::oauth_client::OAuthError;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// JSON that is safe inside a `<script>` element.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Renders the result page; `origins` are the allowed `return_to` origins.
pub fn result_page(provider: &str, result: &Result<String, OAuthError>, origins: &[String]) -> Response {
    let (title, words, message) = match result {
        Ok(id) => (
            "Connected",
            format!(
                "Your {} account is connected. You can close this window.",
                escape(provider)
            ),
            serde_json::json!({"source": "credgate", "result": "success", "provider": provider, "credential_id": id}),
        ),
        Err(e) => (
            "Connection failed",
            format!(
                "The {} account was not connected: {}.",
                escape(provider),
                escape(&e.message)
            ),
            serde_json::json!({"source": "credgate", "result": "error", "provider": provider, "code": e.code}),
        ),
    };
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let nonce = hex::encode(raw);
    let origins = serde_json::Value::from(origins.to_vec());
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; margin: 3rem auto; max-width: 32rem">
<h1>{title}</h1>
<p id="result">{words}</p>
<script nonce="{nonce}">
(function () {{
  var message = {message};
  var origins = {origins};
  if (window.opener && origins.length > 0) {{
    origins.forEach(function (origin) {{ window.opener.postMessage(message, origin); }});
    window.close();
  }}
}})();
</script>
</body></html>
"#,
        message = script_json(&message),
        origins = script_json(&origins),
    );
    let csp = format!("default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'");
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_escaped_in_the_page() {
        let err = OAuthError::new("provider_error", "<script>alert(1)</script>");
        let page = result_page("google", &Err(err), &["https://app.example.com".into()]);
        let body = futures::executor::block_on(axum::body::to_bytes(page.into_body(), 1 << 20)).unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("<script>alert"));
        assert!(text.contains("&lt;script&gt;"));
        assert!(!text.contains("\"*\""));
    }
}
