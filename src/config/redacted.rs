//! What `Debug` shows of the settings and the configuration: every
//! secret (keys, the database password, provider override values) hidden.

use super::{Config, Settings};

/// The URL without its password, for messages and `Debug`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

const REDACTED: &str = "[REDACTED]";

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("master_keys", &self.master_keys.as_ref().map(|_| REDACTED))
            .field("providers_dir", &self.providers_dir)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| REDACTED))
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("master_keys", &self.master_keys.as_ref().map(|_| REDACTED))
            .field("providers_dir", &self.providers_dir)
            .field(
                "provider_overrides",
                &self.provider_overrides.keys().collect::<Vec<_>>(),
            )
            .field("allowed_return_urls", &self.allowed_return_urls)
            .field("max_per_provider", &self.max_per_provider)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| REDACTED))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn debug_output_of_settings_and_cli_hides_every_secret() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "credgate",
            "--database-url",
            "postgres://u:db-SENTINEL@h/x",
            "--master-keys",
            "master-SENTINEL",
            "--webhook-secret",
            "webhook-SENTINEL",
            "migrate",
        ])
        .unwrap();
        let printed = format!("{cli:?} {:?}", cli.settings);
        assert!(printed.contains("postgres://u:***@h/x"), "{printed}");
        assert!(!printed.contains("SENTINEL"), "{printed}");
    }

    #[test]
    fn debug_output_of_the_configuration_hides_keys_and_secrets() {
        let mut config = Config::for_database("sqlite::memory:");
        config.master_keys = Some(SecretString::from("master-SENTINEL"));
        config.webhook_secret = Some(SecretString::from("webhook-SENTINEL"));
        config.database_url = "postgres://u:db-SENTINEL@h/x".into();
        config.provider_overrides.insert(
            "CREDGATE_PROVIDER_GOOGLE_CLIENT_SECRET".into(),
            "client-SENTINEL".into(),
        );
        let printed = format!("{config:?}");
        assert!(printed.contains("CREDGATE_PROVIDER_GOOGLE_CLIENT_SECRET"), "{printed}");
        assert!(!printed.contains("SENTINEL"), "{printed}");
    }
}
