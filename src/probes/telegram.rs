//! The Telegram probe: `getMe` with the bot token, reporting the bot's id
//! and username.
//!
//! The token is part of the URL (`/bot<token>/getMe`), so the URL is built
//! here, handed to the HTTP client and never logged, put in a message or
//! returned; reqwest errors are stripped of it in [`super::http`].

use std::sync::OnceLock;

use regex::Regex;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ids::OrgId;

use super::http::{join, send, status_failure};
use super::{into_result, run, FailureCode, FieldError, Pool, Probe, ProbeContext, ProbeFailure, ProbeResult, Slot};

/// Body of `POST /integrations/telegram/test-connection`.
#[derive(Debug, Deserialize)]
pub struct TelegramRequest {
    /// The bot token from @BotFather, `<digits>:<30+ characters>`.
    #[serde(default)]
    pub bot_token: Option<SecretString>,
}

fn token_shape() -> &'static Regex {
    static SHAPE: OnceLock<Regex> = OnceLock::new();
    SHAPE.get_or_init(|| Regex::new(r"^\d+:[A-Za-z0-9_-]{30,}$").expect("valid pattern"))
}

impl TelegramRequest {
    fn token(&self) -> &str {
        self.bot_token.as_ref().map_or("", |t| t.expose_secret())
    }
}

impl Probe for TelegramRequest {
    const NAME: &'static str = "telegram";
    const POOL: Pool = Pool::Http;

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let token = self.token();
        let error = if token.is_empty() {
            Some("is required")
        } else if !token_shape().is_match(token) {
            Some("must look like 123456789:AA… (digits, a colon, 30 or more letters, digits, _ or -)")
        } else {
            None
        };
        into_result(error.map(|m| FieldError::new("bot_token", m)).into_iter().collect())
    }

    async fn execute(&self, ctx: &ProbeContext, _slot: Slot) -> Result<Value, (Value, ProbeFailure)> {
        let fail = |f: ProbeFailure| (json!({}), f);
        if !token_shape().is_match(self.token()) {
            return Err(fail(ProbeFailure::new(
                FailureCode::AuthFailed,
                "the bot token is malformed",
            )));
        }
        let url = join(&ctx.base_urls.telegram, &format!("bot{}/getMe", self.token())).map_err(fail)?;
        let reply = send(ctx, &url, ctx.http().get(url.clone())).await.map_err(fail)?;
        let body = &reply.json;
        let said_ok = body.get("ok").and_then(Value::as_bool);
        if !reply.status.is_success() || said_ok == Some(false) {
            let description = body
                .get("description")
                .and_then(Value::as_str)
                .map(|d| d.chars().take(200).collect::<String>());
            let status = body
                .get("error_code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .and_then(|c| reqwest::StatusCode::from_u16(c).ok())
                .filter(|c| !c.is_success())
                .unwrap_or(reply.status);
            let mut detail = json!({});
            if let Some(secs) = body.pointer("/parameters/retry_after").and_then(Value::as_u64) {
                detail["retry_after"] = json!(secs);
            }
            // Telegram answers 404 for a token that has the right shape but
            // no bot: that is a credential problem, not a wrong base URL.
            let failure = if status.as_u16() == 404 && said_ok == Some(false) {
                ProbeFailure::new(
                    FailureCode::AuthFailed,
                    "Telegram does not know this bot token (HTTP 404); check the token",
                )
            } else {
                status_failure(status, description, "Telegram")
            };
            return Err((detail, failure));
        }
        let Some(bot) = body.get("result").filter(|_| said_ok == Some(true)) else {
            return Err(fail(ProbeFailure::new(
                FailureCode::Protocol,
                "the answer is not a Telegram getMe result; check the API base URL",
            )));
        };
        Ok(json!({
            "bot_id": bot.get("id"),
            "username": bot.get("username"),
            "first_name": bot.get("first_name"),
            "is_bot": bot.get("is_bot"),
        }))
    }

    fn secrets(&self) -> Vec<&str> {
        let token = self.token();
        // The part after the colon is the secret; the bot id is public.
        vec![token, token.split_once(':').map_or("", |(_, s)| s)]
    }
}

/// Probes a Telegram bot token with `getMe`, for organization `org_id`.
pub async fn probe(ctx: &ProbeContext, org_id: &OrgId, req: &TelegramRequest) -> ProbeResult {
    run(ctx, org_id, req).await
}
