//! The pages' frame (head, header, notices), shared pieces (status badges,
//! field inputs) and errors in words a person can act on.

use maud::{html, Markup, DOCTYPE};

use crate::error::Error;
use crate::model::CredentialStatus;
use crate::probes::ProbeResult;
use crate::providers::{FieldDef, FieldError, FieldKind};
use crate::sessions::PageSession;

/// A whole page: `title`, the session it runs in, its main content.
pub fn page(title: &str, session: &PageSession, body: Markup) -> Markup {
    frame(title, Some(session), body)
}

/// A page outside any session (an expired link, for instance).
pub fn bare(title: &str, body: Markup) -> Markup {
    frame(title, None, body)
}

fn frame(title: &str, session: Option<&PageSession>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = session {
                    meta name="csrf-token" content=(s.csrf_token);
                }
                title { (title) " · credgate" }
                link rel="stylesheet" href="/pages/assets/app.css";
                script src="/pages/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "credgate" }
                    @if let Some(s) = session {
                        span.who { "Signed in as " strong { (s.user_id) } }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The two tabs of `/manage`, the one at `current` marked as the page.
pub fn manage_tabs(current: &str) -> Markup {
    html! {
        nav.tabs aria-label="What to manage" {
            @for (href, label) in [("/manage", "Credentials"), ("/manage/secrets", "Secrets")] {
                a href=(href) aria-current=[(href == current).then_some("page")] { (label) }
            }
        }
    }
}

/// A notice above the content: `ok` (green) or not (red), with `role`
/// so screen readers announce it.
pub fn notice(ok: bool, text: &str) -> Markup {
    html! {
        @if ok {
            p.notice.ok role="status" { (text) }
        } @else {
            p.notice.bad role="alert" { (text) }
        }
    }
}

/// The status badge, the last error's message on hover.
pub fn status_badge(status: CredentialStatus, last_error: Option<&str>) -> Markup {
    let (class, words) = match status {
        CredentialStatus::Active => ("badge active", "Active"),
        CredentialStatus::Expired => ("badge expired", "Expired"),
        CredentialStatus::NeedsReauth => ("badge reauth", "Needs re-authorization"),
        CredentialStatus::Error => ("badge error", "Error"),
    };
    html! { span class=(class) title=[last_error] { (words) } }
}

/// A date for people: `2026-11-29 10:31 UTC`, or "never".
pub fn when(secs: Option<i64>) -> String {
    secs.and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(|| "never".to_owned(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// One labelled input for a provider field. Secret fields are password
/// inputs and never carry a value; `value` fills the others.
pub fn field_input(def: &FieldDef, value: Option<&str>, errors: &[FieldError]) -> Markup {
    let id = format!("f-{}", def.name);
    let name = format!("f.{}", def.name);
    let error = errors
        .iter()
        .find(|e| e.field == format!("fields.{}", def.name) || e.field == def.name)
        .map(|e| e.message.as_str());
    let error_id = format!("{id}-error");
    let value = if def.secret { None } else { value };
    html! {
        div.field.invalid[error.is_some()] {
            label for=(id) {
                (def.label)
                @if def.required { span.req aria-hidden="true" { " *" } span.sr { " (required)" } }
            }
            @match &def.kind {
                FieldKind::Boolean => {
                    input #(id) type="checkbox" name=(name) value="true" checked[value == Some("true")]
                        aria-describedby=[error.map(|_| &error_id)];
                }
                FieldKind::Enum(options) => {
                    select #(id) name=(name) required[def.required] aria-describedby=[error.map(|_| &error_id)] {
                        @if !def.required { option value="" { "—" } }
                        @for o in options { option value=(o) selected[value == Some(o.as_str())] { (o) } }
                    }
                }
                FieldKind::PrivateKey | FieldKind::Json => {
                    textarea #(id) name=(name) rows="6" required[def.required] autocomplete="off" spellcheck="false"
                        aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| &error_id)] {}
                }
                kind => {
                    input #(id) name=(name)
                        type=(input_type(kind, def.secret))
                        value=[value]
                        required[def.required]
                        autocomplete=(if def.secret { "new-password" } else { "off" })
                        spellcheck="false"
                        aria-invalid=[error.map(|_| "true")]
                        aria-describedby=[error.map(|_| &error_id)];
                }
            }
            @if let Some(message) = error {
                p.field-error #(error_id) { (def.label) " " (message) }
            }
        }
    }
}

fn input_type(kind: &FieldKind, secret: bool) -> &'static str {
    if secret {
        return "password";
    }
    match kind {
        FieldKind::Integer | FieldKind::Port => "number",
        FieldKind::Url => "url",
        _ => "text",
    }
}

/// The name input of a credential form.
pub fn name_input(value: &str, errors: &[FieldError]) -> Markup {
    let error = errors.iter().find(|e| e.field == "name").map(|e| e.message.as_str());
    html! {
        div.field.invalid[error.is_some()] {
            label for="f-name" { "Name" span.req aria-hidden="true" { " *" } span.sr { " (required)" } }
            input #f-name name="name" type="text" value=(value) required maxlength="200"
                aria-describedby=[error.map(|_| "f-name-error")];
            @if let Some(message) = error { p.field-error #f-name-error { "Name " (message) } }
        }
    }
}

/// The optional end date of the secret (`expires_on`, a day, UTC), which
/// the API takes as `expires_at`.
pub fn expiry_input(value: Option<&str>, errors: &[FieldError]) -> Markup {
    let error = errors
        .iter()
        .find(|e| e.field == "expires_at")
        .map(|e| e.message.as_str());
    html! {
        div.field.invalid[error.is_some()] {
            label for="expires_on" { "Expires on (optional)" }
            input #expires_on name="expires_on" type="date" value=[value]
                aria-describedby=[error.map(|_| "expires_on-error").or(Some("expires_on-hint"))];
            p.hint #expires_on-hint { "The day this key or password stops working, if you know it: you are warned before." }
            @if let Some(message) = error { p.field-error #expires_on-error { "The end date " (message) } }
        }
    }
}

/// `expires_on` as the form sent it: `None` when empty, else the day's
/// start (UTC) in RFC 3339, or the field's error.
pub fn expiry_from_form(raw: Option<&str>) -> Result<Option<String>, FieldError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(day) => chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
            .map(|d| Some(format!("{d}T00:00:00Z")))
            .map_err(|_| FieldError::new("expires_at", "must be a date (YYYY-MM-DD)")),
    }
}

/// Errors of fields the form does not show, as one list.
pub fn other_errors(errors: &[FieldError], shown: &[String]) -> Markup {
    let rest: Vec<&FieldError> = errors
        .iter()
        .filter(|e| {
            let bare = e.field.strip_prefix("fields.").unwrap_or(&e.field);
            e.field != "name" && e.field != "expires_at" && !shown.iter().any(|s| s == bare)
        })
        .collect();
    html! {
        @if !rest.is_empty() {
            ul.notice.bad role="alert" {
                @for e in rest { li { (e.field) ": " (e.message) } }
            }
        }
    }
}

/// What went wrong, in a sentence a person can act on.
pub fn words(e: &Error) -> String {
    match e {
        Error::NotFound => "This credential does not exist, or you do not have access to it.".into(),
        Error::Forbidden => "You are not allowed to do this. Ask the credential's owner or an administrator.".into(),
        Error::Validation(errors) => format!(
            "Some values need attention: {}.",
            errors
                .iter()
                .map(|e| format!("{} {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Error::QuotaExceeded { provider, limit, count } => format!(
            "Your organization has {count} {} credentials, and its limit is {limit}. \
             Delete one you no longer need, or ask an administrator to raise the limit.",
            if provider.is_empty() { "such" } else { provider }
        ),
        Error::Conflict("provider_not_configured", _) => {
            "This provider is not set up on this credgate yet: an administrator must add its OAuth client id \
             and secret before accounts can be connected."
                .into()
        }
        Error::Conflict("conflict", _) => {
            "The credential changed while you were editing it. Reload the page and try again.".into()
        }
        Error::Conflict(_, message) | Error::Unprocessable { message, .. } => format!("{message}."),
        Error::NeedsReauth(_) => "The account's permission is gone: connect it again with Re-authorize.".into(),
        Error::ProviderUnavailable { retry_after_secs, .. } => {
            format!("The provider is not answering right now. Try again in {retry_after_secs} seconds.")
        }
        Error::TooManyPending(message) => format!("{message}."),
        Error::Provider(message) => format!("The provider refused: {message}."),
        Error::StoreUnavailable(_) => {
            "credgate cannot reach its database right now. Nothing was changed; try again in a moment.".into()
        }
        Error::MasterKeyMissing { .. } => {
            "This server cannot open your organization's keys yet (a key rotation is under way). Nothing was \
             changed; try again in a minute, or tell your administrator."
                .into()
        }
        Error::Internal(_) => {
            "Something went wrong on our side and nothing was changed. Try again; if it keeps happening, \
             tell your administrator."
                .into()
        }
    }
}

/// A probe's outcome in words: the facts when it passed, the reason and
/// what to do when it did not.
pub fn probe_words(result: &ProbeResult) -> String {
    if result.ok {
        let facts = facts(&result.detail);
        return if facts.is_empty() {
            "Connection works.".into()
        } else {
            format!("Connection works: {facts}.")
        };
    }
    let Some(error) = &result.error else {
        return "The test failed.".into();
    };
    let hint = match error.code.as_str() {
        "auth_failed" => "The server refused these credentials; check them and try again.",
        "dns" => "The host name could not be found; check its spelling.",
        "connect_refused" => "Nothing answers at that address and port; check both.",
        "timeout" => "The server did not answer in time; check the address or try again later.",
        "tls" => "A secure connection could not be set up; check the TLS settings.",
        "egress_denied" => {
            "credgate is not allowed to reach that address (its egress rules); use a public address or ask \
             an administrator."
        }
        "host_key_mismatch" => "The server's host key differs from the fingerprint you gave; do not trust it.",
        "rate_limited" => "The service asks to slow down; try again in a minute.",
        "not_found" => "What you named was not found on the server.",
        "permission_denied" => "The account may not read what you named.",
        _ => "The test failed.",
    };
    if error.message.is_empty() {
        hint.to_owned()
    } else {
        format!("{hint} ({})", error.message)
    }
}

fn facts(detail: &serde_json::Value) -> String {
    let Some(map) = detail.as_object() else {
        return String::new();
    };
    let labels = [
        ("username", "bot @"),
        ("bot_username", "bot @"),
        ("server_version", "server "),
        ("model_count", "models: "),
        ("host_key_sha256", "host key "),
        ("entries", "entries: "),
        ("email", ""),
        ("display_name", ""),
    ];
    labels
        .iter()
        .filter_map(|(key, label)| {
            let v = map.get(*key)?;
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            (!text.is_empty() && text != "null").then(|| format!("{label}{text}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::expiry_from_form;

    #[test]
    fn an_end_date_is_a_day_or_nothing() {
        assert_eq!(expiry_from_form(None).unwrap(), None);
        assert_eq!(expiry_from_form(Some(" ")).unwrap(), None);
        assert_eq!(
            expiry_from_form(Some("2027-02-28")).unwrap().as_deref(),
            Some("2027-02-28T00:00:00Z")
        );
        for bad in ["2027-02-30", "28.02.2027", "tomorrow"] {
            assert_eq!(expiry_from_form(Some(bad)).unwrap_err().field, "expires_at", "{bad}");
        }
    }
}
