//! AWS Signature Version 4, by the AWS SDK's own `aws-sigv4` crate (never by
//! hand): the headers that sign one request. Used by the SES probe and by
//! the gateway for `aws_sigv4` credentials.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

/// An AWS access key. `Debug` prints the key id and region only.
pub struct AwsKey<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    pub region: &'a str,
}

impl std::fmt::Debug for AwsKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKey")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The signing failed (a malformed URL or header): nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("the request could not be signed")]
pub struct SignError;

/// The headers (`authorization`, `x-amz-date`, and `x-amz-security-token`
/// with a session token) that sign `method url` for `service` with
/// `headers` (sent as they are) and `body`.
pub fn sigv4_headers(
    key: &AwsKey<'_>,
    service: &str,
    (method, url): (&str, &str),
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, SignError> {
    let identity = Credentials::new(
        key.access_key_id.to_owned(),
        key.secret_access_key.to_owned(),
        key.session_token.map(str::to_owned),
        None,
        "credgate",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(key.region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| SignError)?
        .into();
    let signable =
        SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(body)).map_err(|_| SignError)?;
    let (instructions, _) = sign(signable, &params).map_err(|_| SignError)?.into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect())
}
