//! Every provider file's `[probe]` against a wiremock stand-in that answers
//! as the real service documents: its success body, its error body for a bad
//! secret, and a 429 with Retry-After. A file with a wrong path, pointer or
//! secret placement fails here. Plus the files themselves: all load, and a
//! malformed `[probe]` stops startup naming file and field.

use std::collections::BTreeMap;

use credgate::probes::{ApiBaseUrls, DeclaredProbe};
use serde_json::{json, Value};
use wiremock::matchers::{basic_auth, body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{assert_no_secret, code, ctx_with, loopback_policy, ORG};

fn providers_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("providers")
}

/// How the good secret must arrive.
enum Auth {
    Bearer,
    Header(&'static str, &'static str),
    Basic(&'static str),
    Query(&'static str),
}

struct Case {
    provider: &'static str,
    /// Fields with the good secret.
    fields: Value,
    /// The field holding the secret.
    secret_field: &'static str,
    method: &'static str,
    path: &'static str,
    auth: Auth,
    /// Another request part the service requires (header or query).
    extra: Option<(&'static str, &'static str, &'static str)>,
    ok: Value,
    /// Facts expected in `detail`.
    facts: &'static [(&'static str, &'static str)],
    /// The documented answer to a bad secret.
    refused: (u16, Value),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            provider: "stripe",
            fields: json!({"secret_key": "sk_test_51SENTINELstripe0000000000"}),
            secret_field: "secret_key",
            method: "GET",
            path: "/v1/account",
            auth: Auth::Bearer,
            extra: None,
            ok: json!({"id": "acct_1Nv0FGQ9RKHgCVdK", "object": "account", "email": "ops@example.com",
                       "settings": {"dashboard": {"display_name": "Acme"}}}),
            facts: &[
                ("account_id", "acct_1Nv0FGQ9RKHgCVdK"),
                ("account_name", "Acme"),
                ("email", "ops@example.com"),
            ],
            refused: (
                401,
                json!({"error": {"message": "Invalid API Key provided: sk_test_****0000", "type": "invalid_request_error"}}),
            ),
        },
        Case {
            provider: "polar",
            fields: json!({"access_token": "polar_oat_SENTINELpolar000000000"}),
            secret_field: "access_token",
            method: "GET",
            path: "/v1/organizations/",
            auth: Auth::Bearer,
            extra: Some(("query", "limit", "1")),
            ok: json!({"items": [{"id": "1dbfc517-0bbf-4301-9ba8-555ca42b9737", "name": "Acme"}],
                       "pagination": {"total_count": 1, "max_page": 1}}),
            facts: &[
                ("account_id", "1dbfc517-0bbf-4301-9ba8-555ca42b9737"),
                ("account_name", "Acme"),
            ],
            refused: (
                401,
                json!({"error": "invalid_token", "error_description": "The access token provided is expired, revoked, malformed, or invalid for other reasons."}),
            ),
        },
        Case {
            provider: "slack",
            fields: json!({"bot_token": "xoxb-SENTINEL-slack-000000000"}),
            secret_field: "bot_token",
            method: "GET",
            path: "/api/auth.test",
            auth: Auth::Bearer,
            extra: None,
            ok: json!({"ok": true, "url": "https://acme.slack.com/", "team": "Acme", "user": "credgate",
                       "team_id": "T12345", "user_id": "U12345", "bot_id": "B12345"}),
            facts: &[("account_id", "U12345"), ("account_name", "Acme")],
            refused: (200, json!({"ok": false, "error": "invalid_auth"})),
        },
        Case {
            provider: "discord",
            fields: json!({"bot_token": "MTA5SENTINELdiscord.GhIjKl.mnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV"}),
            secret_field: "bot_token",
            method: "GET",
            path: "/users/@me",
            auth: Auth::Header("authorization", "Bot "),
            extra: None,
            ok: json!({"id": "80351110224678912", "username": "credgate-bot", "bot": true}),
            facts: &[("account_id", "80351110224678912"), ("account_name", "credgate-bot")],
            refused: (401, json!({"message": "401: Unauthorized", "code": 0})),
        },
        Case {
            provider: "twilio",
            fields: json!({"account_sid": "AC0123456789abcdef0123456789abcdef", "auth_token": "5e1f0a2b3c4d5e6f7a8b9c0d1e2f3a4b"}),
            secret_field: "auth_token",
            method: "GET",
            path: "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef.json",
            auth: Auth::Basic("AC0123456789abcdef0123456789abcdef"),
            extra: None,
            ok: json!({"sid": "AC0123456789abcdef0123456789abcdef", "friendly_name": "Acme", "status": "active"}),
            facts: &[
                ("account_id", "AC0123456789abcdef0123456789abcdef"),
                ("account_name", "Acme"),
            ],
            refused: (
                401,
                json!({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}),
            ),
        },
        Case {
            provider: "whatsapp",
            fields: json!({"access_token": "EAASENTINELwhatsapp0000000000", "phone_number_id": "106540352242922"}),
            secret_field: "access_token",
            method: "GET",
            path: "/106540352242922",
            auth: Auth::Bearer,
            extra: None,
            ok: json!({"verified_name": "Acme", "display_phone_number": "+1 555-0100", "id": "106540352242922"}),
            facts: &[("account_id", "106540352242922"), ("account_name", "Acme")],
            refused: (
                401,
                json!({"error": {"message": "Invalid OAuth access token - Cannot parse access token", "type": "OAuthException", "code": 190}}),
            ),
        },
        Case {
            provider: "sendgrid",
            fields: json!({"api_key": "SG.SENTINELsendgrid.abcdefghijklmnop"}),
            secret_field: "api_key",
            method: "GET",
            path: "/v3/user/email",
            auth: Auth::Bearer,
            extra: None,
            ok: json!({"email": "ops@example.com"}),
            facts: &[("email", "ops@example.com")],
            refused: (
                401,
                json!({"errors": [{"field": null, "message": "authorization required"}]}),
            ),
        },
        Case {
            provider: "resend",
            fields: json!({"api_key": "re_SENTINELresend_000000"}),
            secret_field: "api_key",
            method: "GET",
            path: "/domains",
            auth: Auth::Bearer,
            extra: None,
            ok: json!({"data": [{"id": "d91cd9bd-1176-453e-8fc1-35364d380206", "name": "example.com", "status": "verified"}]}),
            facts: &[
                ("account_id", "d91cd9bd-1176-453e-8fc1-35364d380206"),
                ("account_name", "example.com"),
            ],
            refused: (
                400,
                json!({"statusCode": 400, "message": "API key is invalid", "name": "validation_error"}),
            ),
        },
        Case {
            provider: "airtable",
            fields: json!({"access_token": "patSENTINELairtable.0123456789abcdef"}),
            secret_field: "access_token",
            method: "GET",
            path: "/v0/meta/whoami",
            auth: Auth::Bearer,
            extra: None,
            ok: json!({"id": "usrL2PNC5o3H4lBEi", "email": "ops@example.com", "scopes": ["schema.bases:read"]}),
            facts: &[("account_id", "usrL2PNC5o3H4lBEi"), ("email", "ops@example.com")],
            refused: (
                401,
                json!({"error": {"type": "AUTHENTICATION_REQUIRED", "message": "Authentication required"}}),
            ),
        },
        Case {
            provider: "notion",
            fields: json!({"api_key": "ntn_SENTINELnotion000000000000"}),
            secret_field: "api_key",
            method: "GET",
            path: "/v1/users/me",
            auth: Auth::Bearer,
            extra: Some(("header", "notion-version", "2022-06-28")),
            ok: json!({"object": "user", "id": "16d84278-ab0e-484c-9bdd-b35da3bd8905", "name": "credgate", "type": "bot",
                       "bot": {"owner": {"type": "user", "user": {"person": {"email": "ops@example.com"}}}}}),
            facts: &[
                ("account_id", "16d84278-ab0e-484c-9bdd-b35da3bd8905"),
                ("account_name", "credgate"),
                ("email", "ops@example.com"),
            ],
            refused: (
                401,
                json!({"object": "error", "status": 401, "code": "unauthorized", "message": "API token is invalid."}),
            ),
        },
        Case {
            provider: "trello",
            fields: json!({"api_key": "0123456789abcdef0123456789abcdef", "token": "ATTASENTINELtrello0000000000000000"}),
            secret_field: "token",
            method: "GET",
            path: "/1/members/me",
            auth: Auth::Query("token"),
            extra: Some(("query", "key", "0123456789abcdef0123456789abcdef")),
            ok: json!({"id": "5abbe4b7ddc1b351ef961414", "fullName": "Ops Team", "username": "ops"}),
            facts: &[("account_id", "5abbe4b7ddc1b351ef961414"), ("account_name", "Ops Team")],
            refused: (401, json!("invalid token")),
        },
        Case {
            provider: "github",
            fields: json!({"token": "ghp_SENTINELgithub00000000000000000"}),
            secret_field: "token",
            method: "GET",
            path: "/user",
            auth: Auth::Bearer,
            extra: Some(("header", "accept", "application/vnd.github+json")),
            ok: json!({"login": "octocat", "id": 1, "name": "The Octocat", "email": "octocat@github.com"}),
            facts: &[
                ("account_id", "octocat"),
                ("account_name", "The Octocat"),
                ("email", "octocat@github.com"),
            ],
            refused: (
                401,
                json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}),
            ),
        },
        Case {
            provider: "linear",
            fields: json!({"api_key": "lin_api_SENTINELlinear00000000000"}),
            secret_field: "api_key",
            method: "POST",
            path: "/graphql",
            auth: Auth::Header("authorization", ""),
            extra: Some(("body", "query", "{ viewer { id name email } }")),
            ok: json!({"data": {"viewer": {"id": "2cf8c6d2-7a06-4bd5-9c5c-8c4b1a2e3f40", "name": "Ops", "email": "ops@example.com"}}}),
            facts: &[
                ("account_id", "2cf8c6d2-7a06-4bd5-9c5c-8c4b1a2e3f40"),
                ("account_name", "Ops"),
                ("email", "ops@example.com"),
            ],
            refused: (
                400,
                json!({"errors": [{"message": "Authentication required, not authenticated",
                                              "extensions": {"type": "authentication error", "code": "AUTHENTICATION_ERROR"}}]}),
            ),
        },
        Case {
            provider: "calendly",
            fields: json!({"access_token": "eyJSENTINELcalendly.0000000000"}),
            secret_field: "access_token",
            method: "GET",
            path: "/users/me",
            auth: Auth::Bearer,
            extra: None,
            ok: json!({"resource": {"uri": "https://api.calendly.com/users/AAAAAAAAAAAAAAAA", "name": "Ops", "email": "ops@example.com"}}),
            facts: &[
                ("account_id", "https://api.calendly.com/users/AAAAAAAAAAAAAAAA"),
                ("account_name", "Ops"),
                ("email", "ops@example.com"),
            ],
            refused: (
                401,
                json!({"title": "Unauthenticated", "message": "The access token is invalid"}),
            ),
        },
        Case {
            provider: "hubspot",
            fields: json!({"access_token": "pat-na1-SENTINEL-0000-0000-000000000000"}),
            secret_field: "access_token",
            method: "GET",
            path: "/account-info/v3/details",
            auth: Auth::Bearer,
            extra: None,
            ok: json!({"portalId": 62515, "uiDomain": "app.hubspot.com", "timeZone": "US/Eastern"}),
            facts: &[("account_id", "62515"), ("account_name", "app.hubspot.com")],
            refused: (
                401,
                json!({"status": "error", "message": "Authentication credentials not found.", "category": "INVALID_AUTHENTICATION"}),
            ),
        },
        Case {
            provider: "shopify",
            fields: json!({"shop_domain": "acme.myshopify.com", "access_token": "shpat_SENTINELshopify0000000000000000"}),
            secret_field: "access_token",
            method: "GET",
            path: "/admin/api/2024-10/shop.json",
            auth: Auth::Header("x-shopify-access-token", ""),
            extra: None,
            ok: json!({"shop": {"id": 548380009, "name": "Acme", "email": "ops@example.com"}}),
            facts: &[
                ("account_id", "548380009"),
                ("account_name", "Acme"),
                ("email", "ops@example.com"),
            ],
            refused: (
                401,
                json!({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}),
            ),
        },
        Case {
            provider: "gemini",
            fields: json!({"api_key": "AIzaSENTINELgemini00000000000000000000"}),
            secret_field: "api_key",
            method: "GET",
            path: "/v1beta/models",
            auth: Auth::Header("x-goog-api-key", ""),
            extra: Some(("query", "pageSize", "1")),
            ok: json!({"models": [{"name": "models/gemini-2.0-flash"}], "nextPageToken": "Ch5tb2RlbHMv"}),
            facts: &[("account_name", "models/gemini-2.0-flash")],
            refused: (
                400,
                json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}}),
            ),
        },
    ]
}

/// The registry with every `{api_base_url}` pointed at `base`.
fn registry(base: &str) -> credgate::providers::Registry {
    let ids: Vec<String> = std::fs::read_dir(providers_dir())
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let env: BTreeMap<String, String> = ids
        .iter()
        .map(|id| {
            (
                format!("CREDGATE_PROVIDER_{}_API_BASE_URL", id.to_uppercase()),
                base.to_owned(),
            )
        })
        .collect();
    credgate::providers::Registry::new(credgate::providers::load_dir(&providers_dir(), &env).unwrap())
}

fn probe_for(registry: &credgate::providers::Registry, case: &Case, fields: &Value, base: &str) -> DeclaredProbe {
    let provider = registry.get(case.provider).unwrap();
    let Value::Object(fields) = fields.clone() else {
        panic!()
    };
    let mut probe =
        DeclaredProbe::for_provider(provider, &fields).unwrap_or_else(|| panic!("{} has a [probe]", case.provider));
    // A shop's own host cannot point at the stand-in; everything after it stays as declared.
    probe.spec.url = probe.spec.url.replace("https://{shop_domain}", base);
    probe
}

async fn mount_good(server: &MockServer, case: &Case, secret: &str) {
    let mut mock = Mock::given(method(case.method)).and(path(case.path));
    mock = match &case.auth {
        Auth::Bearer => mock.and(header("authorization", format!("Bearer {secret}").as_str())),
        Auth::Header(name, prefix) => mock.and(header(*name, format!("{prefix}{secret}").as_str())),
        Auth::Basic(user) => mock.and(basic_auth(*user, secret)),
        Auth::Query(param) => mock.and(query_param(*param, secret)),
    };
    mock = match case.extra {
        Some(("header", name, value)) => mock.and(header(name, value)),
        Some(("query", name, value)) => mock.and(query_param(name, value)),
        Some(("body", name, value)) => mock.and(body_partial_json(json!({ name: value }))),
        _ => mock,
    };
    mock.respond_with(ResponseTemplate::new(200).set_body_json(case.ok.clone()))
        .mount(server)
        .await;
    let (status, body) = &case.refused;
    Mock::given(method(case.method))
        .respond_with(ResponseTemplate::new(*status).set_body_json(body.clone()))
        .mount(server)
        .await;
}

#[tokio::test]
async fn every_declared_probe_reads_the_account_rejects_a_bad_secret_and_reports_rate_limits() {
    let mut checked = Vec::new();
    for case in cases() {
        let server = MockServer::start().await;
        let registry = registry(&server.uri());
        let ctx = ctx_with(
            loopback_policy(),
            std::time::Duration::from_secs(3),
            ApiBaseUrls::default(),
        );
        let secret = case.fields[case.secret_field].as_str().unwrap().to_owned();
        mount_good(&server, &case, &secret).await;
        let mut wrong = case.fields.clone();
        wrong[case.secret_field] = json!(format!("{secret}-WRONG"));

        let good = credgate::probes::run(&ctx, &ORG, &probe_for(&registry, &case, &case.fields, &server.uri())).await;
        let refused = credgate::probes::run(&ctx, &ORG, &probe_for(&registry, &case, &wrong, &server.uri())).await;
        server.reset().await;
        Mock::given(method(case.method))
            .respond_with(
                ResponseTemplate::new(429)
                    .insert_header("retry-after", "7")
                    .set_body_json(json!({"error": "rate_limited"})),
            )
            .mount(&server)
            .await;
        let limited =
            credgate::probes::run(&ctx, &ORG, &probe_for(&registry, &case, &case.fields, &server.uri())).await;

        let p = case.provider;
        assert_eq!(code(&good), "ok", "{p}: {good:?}");
        for (key, value) in case.facts {
            assert_eq!(good.detail[key], json!(value), "{p}: {key} in {}", good.detail);
        }
        assert_eq!(code(&refused), "auth_failed", "{p}: {refused:?}");
        assert_eq!(code(&limited), "rate_limited", "{p}: {limited:?}");
        assert_eq!(limited.detail["retry_after"], "7", "{p}");
        for result in [&good, &refused, &limited] {
            assert_no_secret(result, &[&secret]);
        }
        checked.push(p);
    }
    let declared: Vec<String> = registry("https://example.com")
        .iter()
        .filter(|p| p.probe.is_some())
        .map(|p| p.id.clone())
        .collect();
    for id in &declared {
        assert!(
            checked.contains(&id.as_str()),
            "{id} declares a [probe] that no case here runs"
        );
    }
}

#[test]
fn every_provider_file_loads_with_valid_fields_and_the_catalog_has_thirty() {
    let providers = credgate::providers::load_dir(&providers_dir(), &BTreeMap::new()).unwrap();
    let ids: Vec<&str> = providers.iter().map(|p| p.id.as_str()).collect();

    assert!(providers.len() >= 28, "{ids:?}");
    for p in &providers {
        assert!(!p.display_name.is_empty(), "{}", p.id);
        for auth in &p.auth_types {
            for field in &auth.fields {
                assert!(!field.label.is_empty(), "{}.{}", p.id, field.name);
            }
        }
    }
    for oauth in [
        "google",
        "google_sheets",
        "sharepoint",
        "github",
        "slack",
        "notion",
        "hubspot",
    ] {
        let p = providers.iter().find(|p| p.id == oauth).unwrap();
        assert!(p.oauth.is_some(), "{oauth} offers OAuth");
    }
    let sheets = providers.iter().find(|p| p.id == "google_sheets").unwrap();
    assert!(sheets
        .oauth
        .as_ref()
        .unwrap()
        .scopes
        .iter()
        .any(|s| s.ends_with("/auth/spreadsheets")));
    for shape_only in ["stripe_webhook", "polar_webhook"] {
        let p = providers.iter().find(|p| p.id == shape_only).unwrap();
        assert!(
            p.probe.is_none() && p.auth_types[0].fields[0].pattern.is_some(),
            "{shape_only}"
        );
    }
}

fn load_one(probe: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = format!(
        "display_name = \"X\"\napi_base_url = \"https://api.example.com\"\n[[auth_types]]\ntype = \"api_key\"\n\
         fields = [{{ name = \"key\", label = \"Key\", secret = true, required = true }}, {{ name = \"team\", label = \"Team\" }}]\n\
         [probe]\n{probe}\n"
    );
    std::fs::write(dir.path().join("x.toml"), file).unwrap();
    match credgate::providers::load_dir(dir.path(), &BTreeMap::new()) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_malformed_probe_stops_loading_naming_the_file_and_the_field() {
    let good = load_one("url = \"{api_base_url}/me?team={team}\"\nauth = \"bearer\"\nsecret = \"key\"");
    let cases = [
        ("url = \"/me\"\nauth = \"bearer\"\nsecret = \"key\"", "probe.url"),
        (
            "url = \"{api_base_url}/{nope}\"\nauth = \"bearer\"\nsecret = \"key\"",
            "probe.url",
        ),
        (
            "url = \"{api_base_url}/me\"\nauth = \"bearer\"\nsecret = \"team\"",
            "probe.secret",
        ),
        ("url = \"{api_base_url}/me\"\nauth = \"bearer\"", "probe.secret"),
        (
            "url = \"{api_base_url}/me\"\nauth = \"cookie\"\nsecret = \"key\"",
            "probe.auth",
        ),
        (
            "url = \"{api_base_url}/me\"\nauth = \"header\"\nsecret = \"key\"",
            "probe.header",
        ),
        (
            "url = \"{api_base_url}/me\"\nauth = \"query\"\nsecret = \"key\"",
            "probe.param",
        ),
        (
            "url = \"{api_base_url}/me\"\nauth = \"bearer\"\nsecret = \"key\"\nok = [700]",
            "probe.ok",
        ),
        (
            "url = \"{api_base_url}/me\"\nauth = \"bearer\"\nsecret = \"key\"\naccount = { id = \"id\" }",
            "probe.account.id",
        ),
        (
            "url = \"{api_base_url}/me\"\nauth = \"bearer\"\nsecret = \"key\"\nbody = \"[1]\"",
            "probe.body",
        ),
        (
            "url = \"{api_base_url}/me\"\nauth = \"bearer\"\nsecret = \"key\"\nmethod = \"DELETE\"",
            "probe.method",
        ),
        (
            "url = \"{api_base_url}/me\"\nauth = \"bearer\"\nsecret = \"key\"\ntimeout = 3",
            "probe.timeout",
        ),
    ];

    assert_eq!(good, "loaded");
    for (probe, field) in cases {
        let error = load_one(probe);
        assert!(
            error.contains("x.toml") && error.contains(&format!("field `{field}`")),
            "{probe:?} → {error}"
        );
    }
}

async fn a_saved_credential_of_a_declared_provider_is_tested_with_its_stored_secret(backend: crate::helpers::Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    let github = MockServer::start().await;
    let token = "ghp_SENTINELsavedgithub0000000000000";
    Mock::given(method("GET"))
        .and(path("/user"))
        .and(header("authorization", format!("Bearer {token}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"login": "octocat", "id": 1})))
        .mount(&github)
        .await;
    let mut config = crate::helpers::test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    config
        .provider_overrides
        .insert("CREDGATE_PROVIDER_GITHUB_API_BASE_URL".into(), github.uri());
    let app = crate::helpers::TestApp::spawn_with(config).await;
    let body = json!({"name": "CI bot", "provider": "github", "auth_type": "api_key", "fields": {"token": token}});
    let (_, created) = app
        .call(
            axum::http::Method::POST,
            "/integrations/credentials",
            &app.org.member,
            Some(body),
        )
        .await;
    let id = created["id"].as_str().unwrap();

    let (status, result) = app
        .call(
            axum::http::Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.member,
            None,
        )
        .await;
    let (_, after) = app
        .call(
            axum::http::Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.member,
            None,
        )
        .await;

    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["detail"]["account_id"], "octocat");
    assert!(after["last_tested_at"].is_string());
    assert!(!result.to_string().contains(token) && !crate::helpers::captured_logs().contains(token));
}
crate::both_backends!(a_saved_credential_of_a_declared_provider_is_tested_with_its_stored_secret);
