//! The LLM API probe: lists the models with the given key (OpenAI,
//! Anthropic, or any OpenAI-compatible server) and reports how many there
//! are and a few of their ids.
//!
//! Provider error bodies are read for their machine `type`/`code` only:
//! OpenAI's human message quotes part of the key.

use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ids::OrgId;

use super::http::{join, send, status_failure};
use super::{into_result, run, FailureCode, FieldError, Pool, Probe, ProbeContext, ProbeFailure, ProbeResult, Slot};

/// Anthropic API version sent with every call.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// How many model ids the result lists.
const LISTED_MODELS: usize = 5;

/// Which API the key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmProviderType {
    /// api.openai.com or its configured base.
    Openai,
    /// api.anthropic.com or its configured base.
    Anthropic,
    /// Any server speaking OpenAI's API at `base_url`.
    OpenaiCompatible,
}

impl LlmProviderType {
    /// Parses the contract's `provider_type` value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "openai" => Self::Openai,
            "anthropic" => Self::Anthropic,
            "openai_compatible" => Self::OpenaiCompatible,
            _ => return None,
        })
    }

    fn service(self) -> &'static str {
        match self {
            Self::Openai => "OpenAI",
            Self::Anthropic => "Anthropic",
            Self::OpenaiCompatible => "the server",
        }
    }
}

/// Body of `POST /integrations/llm/test-connection`.
#[derive(Debug, Deserialize)]
pub struct LlmRequest {
    /// `openai`, `anthropic` or `openai_compatible`.
    #[serde(default)]
    pub provider_type: String,
    /// The API key.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// Base URL; required for `openai_compatible`, otherwise it overrides
    /// the configured base (`https://api.openai.com`, …).
    #[serde(default)]
    pub base_url: Option<String>,
    /// OpenAI organization id, sent as `OpenAI-Organization`.
    #[serde(default)]
    pub organization_id: Option<String>,
}

impl LlmRequest {
    /// The parsed `provider_type`.
    pub fn provider(&self) -> Option<LlmProviderType> {
        LlmProviderType::parse(&self.provider_type)
    }

    fn key(&self) -> &str {
        self.api_key.as_ref().map_or("", |k| k.expose_secret())
    }

    /// The models URL for `kind`, from the request's or the context's base.
    fn models_url(&self, ctx: &ProbeContext, kind: LlmProviderType) -> Result<url::Url, ProbeFailure> {
        let base = match (kind, self.base_url.as_deref()) {
            (_, Some(base)) if !base.trim().is_empty() => base,
            (LlmProviderType::Openai, _) => &ctx.base_urls.openai,
            (LlmProviderType::Anthropic, _) => &ctx.base_urls.anthropic,
            (LlmProviderType::OpenaiCompatible, _) => "",
        };
        match kind {
            LlmProviderType::OpenaiCompatible => join(base, "models"),
            _ => {
                let base = base.trim().trim_end_matches('/');
                join(base.strip_suffix("/v1").unwrap_or(base), "v1/models")
            }
        }
    }
}

impl Probe for LlmRequest {
    const NAME: &'static str = "llm";
    const POOL: Pool = Pool::Http;

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let kind = self.provider();
        if kind.is_none() {
            errors.push(FieldError::new(
                "provider_type",
                "must be openai, anthropic or openai_compatible",
            ));
        }
        let key = self.key();
        if key.is_empty() {
            errors.push(FieldError::new("api_key", "is required"));
        } else if !key.chars().all(|c| c.is_ascii_graphic()) {
            errors.push(FieldError::new(
                "api_key",
                "must not contain spaces or control characters",
            ));
        }
        match self.base_url.as_deref().map(str::trim) {
            None | Some("") if kind == Some(LlmProviderType::OpenaiCompatible) => {
                errors.push(FieldError::new("base_url", "is required for openai_compatible"));
            }
            None | Some("") => {}
            Some(base) => match url::Url::parse(base) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                    if !url.username().is_empty() || url.password().is_some() {
                        errors.push(FieldError::new("base_url", "must not contain credentials"));
                    }
                }
                _ => errors.push(FieldError::new("base_url", "must be an http or https URL")),
            },
        }
        if let Some(org) = &self.organization_id {
            if HeaderValue::from_str(org).is_err() {
                errors.push(FieldError::new("organization_id", "contains invalid characters"));
            }
        }
        into_result(errors)
    }

    async fn execute(&self, ctx: &ProbeContext, _slot: Slot) -> Result<Value, (Value, ProbeFailure)> {
        let kind = self.provider().ok_or_else(|| {
            (
                json!({}),
                ProbeFailure::new(FailureCode::Protocol, "unknown provider_type"),
            )
        })?;
        let mut detail = json!({ "provider_type": self.provider_type });
        let url = self.models_url(ctx, kind).map_err(|f| (detail.clone(), f))?;
        detail["host"] = json!(url.host_str());
        let mut request = ctx.http().get(url.clone());
        request = match kind {
            LlmProviderType::Anthropic => {
                let mut key = HeaderValue::from_str(self.key()).map_err(|_| {
                    (
                        detail.clone(),
                        ProbeFailure::new(FailureCode::Protocol, "invalid api_key"),
                    )
                })?;
                key.set_sensitive(true);
                request
                    .header("x-api-key", key)
                    .header("anthropic-version", ANTHROPIC_VERSION)
            }
            _ => request.bearer_auth(self.key()),
        };
        if let (LlmProviderType::Openai, Some(org)) = (kind, &self.organization_id) {
            request = request.header("OpenAI-Organization", org);
        }
        let reply = send(ctx, &url, request).await.map_err(|f| (detail.clone(), f))?;
        if !reply.status.is_success() {
            if let Some(secs) = reply.headers.get("retry-after").and_then(|v| v.to_str().ok()) {
                detail["retry_after"] = json!(secs);
            }
            let failure = status_failure(reply.status, error_kind(&reply.json), kind.service());
            return Err((detail, failure));
        }
        let Some(models) = reply.json.get("data").and_then(Value::as_array) else {
            let failure = ProbeFailure::new(
                FailureCode::Protocol,
                format!(
                    "{} answered, but not with a model list; check the base URL",
                    kind.service()
                ),
            );
            return Err((detail, failure));
        };
        detail["model_count"] = json!(models.len());
        detail["models"] = models
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str))
            .take(LISTED_MODELS)
            .collect();
        if let Some(more) = reply.json.get("has_more").and_then(Value::as_bool) {
            detail["has_more"] = json!(more);
        }
        Ok(detail)
    }

    fn secrets(&self) -> Vec<&str> {
        vec![self.key()]
    }
}

/// The provider's machine error kind: OpenAI `error.code`/`error.type`,
/// Anthropic `error.type`.
fn error_kind(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    ["code", "type"]
        .iter()
        .filter_map(|field| error.get(field).and_then(Value::as_str))
        .find(|s| !s.is_empty() && s.len() <= 64)
        .map(str::to_owned)
}

/// Probes an LLM API key by listing the models, for organization `org_id`.
pub async fn probe(ctx: &ProbeContext, org_id: &OrgId, req: &LlmRequest) -> ProbeResult {
    run(ctx, org_id, req).await
}
