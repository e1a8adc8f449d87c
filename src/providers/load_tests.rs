//! Provider-file quirks: checked at load, each named by its field.

use super::*;

const OAUTH: &str = "display_name = \"X\"\nauthorization_url = \"https://x.example/a\"\n\
    token_url = \"https://x.example/t\"\nuserinfo_url = \"https://x.example/u\"\n";

fn load(text: &str) -> Result<Vec<Provider>, ProviderFileError> {
    build_all(
        vec![(
            "x".into(),
            Source {
                file: PathBuf::from("x.toml"),
                text: text.into(),
            },
        )],
        &BTreeMap::new(),
    )
}

fn field_of(extra: &str, identity: &str) -> String {
    let text = format!("{OAUTH}{extra}\n[identity]\n{identity}\n[[auth_types]]\ntype = \"oauth2\"\n");
    load(&text).err().map(|e| e.field).unwrap_or_default()
}

#[test]
fn each_quirk_is_checked_and_named_by_its_field() {
    assert_eq!(field_of("scope_separator = \";\"", "id = [\"id\"]"), "scope_separator");
    assert_eq!(
        field_of("token_request_format = \"xml\"", "id = [\"id\"]"),
        "token_request_format"
    );
    assert_eq!(
        field_of("identity_headers = { \"Bad Header\" = \"1\" }", "id = [\"id\"]"),
        "identity_headers.Bad Header"
    );
    assert_eq!(field_of("", "source = \"jwt\"\nid = [\"id\"]"), "identity.source");
    assert_eq!(field_of("", "id = [\"/\"]"), "identity.id");
    assert_eq!(field_of("pkce = \"no\"", "id = [\"id\"]"), "pkce");
}

#[test]
fn quirks_load_with_their_defaults() {
    let text = format!("{OAUTH}\n[identity]\nid = [\"id\"]\n[[auth_types]]\ntype = \"oauth2\"\n");
    let oauth = load(&text).unwrap().remove(0).oauth.unwrap();
    assert_eq!(oauth.scope_separator, " ");
    assert_eq!(oauth.token_body, TokenBody::Form);
    assert!(oauth.pkce);
    assert_eq!(oauth.identity.source, IdentitySource::Userinfo);
    let text = format!(
        "{OAUTH}scope_separator = \",\"\ntoken_request_format = \"json\"\npkce = false\n\
         [identity]\nsource = \"token_response\"\nid = [\"/team/id\"]\n[[auth_types]]\ntype = \"oauth2\"\n"
    );
    let oauth = load(&text).unwrap().remove(0).oauth.unwrap();
    assert_eq!(
        (oauth.scope_separator.as_str(), oauth.token_body, oauth.pkce),
        (",", TokenBody::Json, false)
    );
    assert_eq!(oauth.identity.source, IdentitySource::TokenResponse);
}

/// The field a key-based provider with this `[proxy]` is refused for
/// (`loaded` when it loads).
fn proxy_field(proxy: &str) -> String {
    let text = format!(
        "display_name = \"X\"\napi_base_url = \"https://x.example\"\n\
         [[auth_types]]\ntype = \"api_key\"\nfields = [\n\
         {{ name = \"key\", label = \"Key\", secret = true }},\n\
         {{ name = \"team\", label = \"Team\" }},\n]\n[proxy]\n{proxy}\n"
    );
    match load(&text) {
        Ok(_) => "loaded".into(),
        Err(e) => e.field,
    }
}

#[test]
fn a_proxy_declaration_is_checked_and_named_by_its_field() {
    assert_eq!(proxy_field("auth = \"bearer\"\nsecret = \"key\""), "loaded");
    assert_eq!(
        proxy_field("auth = \"none\"\nbase_url = \"{api_base_url}/t/{key}/{team}\""),
        "loaded"
    );
    assert_eq!(
        proxy_field("auth = \"body\"\nsecret = \"key\"\nparam = \"k\""),
        "proxy.auth"
    );
    assert_eq!(proxy_field("auth = \"bearer\"\nsecret = \"team\""), "proxy.secret");
    assert_eq!(proxy_field("auth = \"bearer\""), "proxy.secret");
    assert_eq!(proxy_field("auth = \"header\"\nsecret = \"key\""), "proxy.header");
    assert_eq!(
        proxy_field("auth = \"none\"\nbase_url = \"ftp://{team}\""),
        "proxy.base_url"
    );
    assert_eq!(proxy_field("auth = \"none\"\nbase_url = \"{nope}\""), "proxy.base_url");
    assert_eq!(
        proxy_field("auth = \"bearer\"\nsecret = \"key\"\nheaders = { \"X-Key\" = \"{key}\" }"),
        "proxy.headers.X-Key"
    );
    assert_eq!(
        proxy_field("auth = \"bearer\"\nsecret = \"key\"\nquery = { k = \"{key}\" }"),
        "proxy.query.k"
    );
    assert_eq!(
        proxy_field("auth = \"bearer\"\nsecret = \"key\"\nquery = { k = \"{team}\" }"),
        "loaded"
    );
    assert_eq!(
        proxy_field("auth = \"bearer\"\nsecret = \"key\"\nurl = \"x\""),
        "proxy.url"
    );
    let text = "display_name = \"X\"\napi_base_url = \"https://x.example\"\n\
         [[auth_types]]\ntype = \"api_key\"\nfields = [{ name = \"key\", label = \"Key\", secret = true }]\n\
         [proxy]\nauth = \"none\"\nbase_url = \"{api_base_url}/bot{key}\"\n";
    let proxy = load(text).unwrap().remove(0).proxy.unwrap();
    assert_eq!(proxy.secrets_in_base, vec!["key".to_owned()]);
}

/// A `[proxy]` base URL with this host template, for a file whose fields
/// are a secret `key`, a text `team` and a `hostname` `shop`.
fn host_field(base_url: &str) -> String {
    let text = format!(
        "display_name = \"X\"\n[[auth_types]]\ntype = \"api_key\"\nfields = [\n\
         {{ name = \"key\", label = \"Key\", secret = true }},\n\
         {{ name = \"team\", label = \"Team\" }},\n\
         {{ name = \"shop\", label = \"Shop\", type = \"hostname\" }},\n]\n\
         [proxy]\nauth = \"bearer\"\nsecret = \"key\"\nbase_url = \"{base_url}\"\n"
    );
    match load(&text) {
        Ok(_) => "loaded".into(),
        Err(e) => e.field,
    }
}

#[test]
fn a_field_in_the_proxys_host_must_be_a_host_name_and_not_secret() {
    assert_eq!(host_field("https://{shop}/admin/api/2024-10"), "loaded");
    assert_eq!(host_field("https://{shop}:8443/v1/{team}"), "loaded");
    assert_eq!(host_field("https://api.example/{team}"), "loaded");
    assert_eq!(host_field("https://{team}/v1"), "proxy.base_url", "a text field");
    assert_eq!(host_field("https://{team}.example/v1"), "proxy.base_url");
    assert_eq!(host_field("https://{key}.example/v1"), "proxy.base_url", "a secret");
}

#[test]
fn a_templates_own_authority_is_found() {
    use crate::providers::authority_end;
    for (template, authority) in [
        ("https://{shop}/admin/api", "https://{shop}"),
        ("https://{shop}", "https://{shop}"),
        ("http://{host}:8080?x=1", "http://{host}:8080"),
        ("{api_base_url}/bot{token}", ""),
        ("{api_base_url}/x?u=https://{host}/", ""),
    ] {
        assert_eq!(&template[..authority_end(template)], authority, "{template}");
    }
}
