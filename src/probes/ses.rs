//! The AWS SES probe: `GetSendQuota` (the SES v1 Query API), signed with
//! AWS Signature Version 4 by the AWS SDK's own `aws-sigv4` crate — never
//! by hand. It reports the daily quota, the send rate and what was sent in
//! the last 24 hours; a refused signature or key is `auth_failed`.
//!
//! `endpoint_url` (an SES-compatible endpoint) is reached through the
//! egress guard like every probe; the default is
//! `https://email.{region}.amazonaws.com/`.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use crate::aws_sign::{sigv4_headers, AwsKey};
use crate::ids::OrgId;

use super::http::send;
use super::{into_result, run, FailureCode, FieldError, Pool, Probe, ProbeContext, ProbeFailure, ProbeResult, Slot};

/// The fields of an `aws_sigv4` credential of provider `aws_ses`.
#[derive(Deserialize)]
pub struct SesRequest {
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: Option<SecretString>,
    #[serde(default)]
    pub session_token: Option<SecretString>,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

impl std::fmt::Debug for SesRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SesRequest")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .finish_non_exhaustive()
    }
}

const BODY: &str = "Action=GetSendQuota&Version=2010-12-01";

fn region_ok(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl SesRequest {
    fn endpoint(&self) -> Result<Url, &'static str> {
        match self.endpoint_url.as_deref().filter(|u| !u.trim().is_empty()) {
            Some(u) => Url::parse(u)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or("must be an absolute http or https URL"),
            None => Url::parse(&format!("https://email.{}.amazonaws.com/", self.region)).map_err(|_| "is not valid"),
        }
    }

    fn secret(&self) -> &str {
        self.secret_access_key.as_ref().map_or("", |s| s.expose_secret())
    }
}

/// The text of the first `<name>…</name>` in `xml`.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim())
}

fn number(xml: &str, name: &str) -> Value {
    element(xml, name)
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(Value::Null, |v| json!(v))
}

impl Probe for SesRequest {
    const NAME: &'static str = "aws_ses";
    const POOL: Pool = Pool::Http;

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let id_ok = (16..=128).contains(&self.access_key_id.len())
            && self.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok {
            errors.push(FieldError::new("access_key_id", "must be 16 to 128 letters and digits"));
        }
        if self.secret().is_empty() {
            errors.push(FieldError::new("secret_access_key", "is required"));
        }
        if !region_ok(&self.region) {
            errors.push(FieldError::new("region", "must be an AWS region such as us-east-1"));
        }
        if let (Err(message), true) = (self.endpoint(), self.endpoint_url.is_some()) {
            errors.push(FieldError::new("endpoint_url", message));
        }
        into_result(errors)
    }

    async fn execute(&self, ctx: &ProbeContext, _slot: Slot) -> Result<Value, (Value, ProbeFailure)> {
        let fail = |f: ProbeFailure| (json!({}), f);
        let url = self.endpoint().map_err(|m| {
            fail(ProbeFailure::new(
                FailureCode::Protocol,
                format!("the endpoint URL {m}"),
            ))
        })?;
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let key = AwsKey {
            access_key_id: &self.access_key_id,
            secret_access_key: self.secret(),
            session_token: self.session_token.as_ref().map(|t| t.expose_secret()),
            region: &self.region,
        };
        let signed = sigv4_headers(
            &key,
            "ses",
            ("POST", url.as_str()),
            &[("content-type", content_type)],
            BODY.as_bytes(),
        )
        .map_err(|_| {
            fail(ProbeFailure::new(
                FailureCode::Protocol,
                "the request could not be signed",
            ))
        })?;
        let mut request = ctx
            .http()
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(BODY);
        for (name, value) in &signed {
            request = request.header(name.as_str(), value.as_str());
        }
        let reply = send(ctx, &url, request).await.map_err(fail)?;
        let xml = String::from_utf8_lossy(&reply.raw);
        if !reply.status.is_success() {
            let code: String = element(&xml, "Code")
                .unwrap_or("no error code")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                .take(64)
                .collect();
            let failure = match reply.status.as_u16() {
                401 | 403 => ProbeFailure::new(
                    FailureCode::AuthFailed,
                    format!("AWS refused the key or its signature ({code}); check the access key id and secret"),
                ),
                status => ProbeFailure::new(FailureCode::Protocol, format!("SES answered HTTP {status} ({code})")),
            };
            return Err((json!({"aws_error": code}), failure));
        }
        if element(&xml, "GetSendQuotaResult").is_none() {
            return Err(fail(ProbeFailure::new(
                FailureCode::Protocol,
                "the answer is not an SES GetSendQuota result; check the endpoint URL",
            )));
        }
        Ok(json!({
            "max_24_hour_send": number(&xml, "Max24HourSend"),
            "max_send_rate": number(&xml, "MaxSendRate"),
            "sent_last_24_hours": number(&xml, "SentLast24Hours"),
            "region": self.region,
        }))
    }

    fn secrets(&self) -> Vec<&str> {
        vec![
            self.secret(),
            self.session_token.as_ref().map_or("", |t| t.expose_secret()),
        ]
    }
}

/// Probes an SES key with `GetSendQuota`, for organization `org_id`.
pub async fn probe(ctx: &ProbeContext, org_id: &OrgId, req: &SesRequest) -> ProbeResult {
    run(ctx, org_id, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_prints_no_secret() {
        let req: SesRequest = serde_json::from_value(json!({
            "access_key_id": "AKIAEXAMPLEEXAMPLE", "secret_access_key": "SENTINEL-aws",
            "session_token": "SENTINEL-session", "region": "us-east-1"
        }))
        .unwrap();

        let printed = format!("{req:?}");

        assert!(!printed.contains("SENTINEL"), "{printed}");
        assert!(req.validate().is_ok());
    }

    #[test]
    fn quota_figures_are_read_from_the_answer() {
        let xml = "<GetSendQuotaResponse><GetSendQuotaResult><Max24HourSend>200.0</Max24HourSend>\
                   <MaxSendRate>1.0</MaxSendRate><SentLast24Hours>3.0</SentLast24Hours></GetSendQuotaResult></GetSendQuotaResponse>";

        assert_eq!(number(xml, "Max24HourSend"), json!(200.0));
        assert_eq!(number(xml, "SentLast24Hours"), json!(3.0));
        assert_eq!(number(xml, "Missing"), Value::Null);
    }
}
