//! What of a credential must never come back to the engine in a service's
//! answer: the secrets the gateway placed in the request. Services write
//! requests back into their answers (a redirect that keeps the query, a
//! next page's `Link`, an echo, an error page quoting the request), and a
//! key placed in the query or a header would reach the engine that way.

use url::form_urlencoded;

/// Secrets shorter than this are not looked for: too short to tell from
/// the rest of a header (a one-letter key would drop every header with
/// that letter).
const SHORTEST: usize = 8;

/// The secrets a call placed. `Debug` prints none.
#[derive(Default)]
pub struct Placed {
    /// Each secret as it is, and as the query spells it.
    spellings: Vec<String>,
    /// The query parameter placed, as the query spells it (`name=value`).
    pair: Option<String>,
}

impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placed")
            .field("secrets", &self.spellings.len())
            .finish()
    }
}

/// What becomes of an answer's header.
#[derive(Debug, PartialEq, Eq)]
pub enum Scrubbed {
    Keep,
    /// The header with the placed query parameter taken out.
    Replace(String),
    /// It holds a secret that cannot be taken out.
    Drop,
}

fn form(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `formed` with each `%XY` escape in small letters.
fn small_escapes(formed: &str) -> String {
    let mut out = String::with_capacity(formed.len());
    let mut escape = 0;
    for c in formed.chars() {
        if c == '%' {
            escape = 2;
            out.push(c);
        } else if escape > 0 {
            escape -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl Placed {
    /// `secrets` placed in headers or the query, and the query parameter
    /// (name, value) placed.
    pub fn new(secrets: Vec<String>, query: Option<(&str, &str)>) -> Self {
        let mut placed = Self {
            spellings: Vec::new(),
            pair: query.map(|(name, value)| format!("{}={}", form(name), form(value))),
        };
        for secret in secrets {
            placed.add(secret);
        }
        placed
    }

    /// One more secret placed (a token renewed for the call's second try).
    pub fn add(&mut self, secret: String) {
        if secret.len() < SHORTEST {
            return;
        }
        // As the query spells it, its escapes in capitals and in small
        // letters (services write either), and as JSON may (`\/`).
        let formed = form(&secret);
        let small = small_escapes(&formed);
        let json = secret.replace('/', "\\/");
        for spelling in [small, formed, json] {
            if spelling != secret && !self.spellings.contains(&spelling) {
                self.spellings.push(spelling);
            }
        }
        self.spellings.push(secret);
    }

    /// Whether any secret is looked for.
    pub fn any(&self) -> bool {
        !self.spellings.is_empty()
    }

    /// The length of the longest spelling looked for (0 for none).
    pub fn longest(&self) -> usize {
        self.spellings.iter().map(String::len).max().unwrap_or(0)
    }

    /// How many of `bytes`' last bytes may begin a secret that the next
    /// piece would complete: the longest end of them that is the start of
    /// one (none, for most pieces).
    pub fn may_begin(&self, bytes: &[u8]) -> usize {
        let mut hold = 0;
        for secret in &self.spellings {
            let secret = secret.as_bytes();
            let reach = (secret.len() - 1).min(bytes.len());
            let from = bytes.len() - reach;
            // Each place the secret's first byte is, the earliest first.
            for at in memchr::memchr_iter(secret[0], &bytes[from..]).map(|i| from + i) {
                let tail = &bytes[at..];
                if tail.len() <= hold {
                    break;
                }
                if secret.starts_with(tail) {
                    hold = tail.len();
                    break;
                }
            }
        }
        hold
    }

    /// Whether `bytes` hold a secret.
    pub fn found_in(&self, bytes: &[u8]) -> bool {
        self.spellings
            .iter()
            .any(|s| memchr::memmem::find(bytes, s.as_bytes()).is_some())
    }

    /// Masks each secret in `bytes`, byte for byte, with `*` (the length
    /// stays).
    pub fn mask(&self, bytes: &mut [u8]) {
        for secret in &self.spellings {
            let finder = memchr::memmem::Finder::new(secret.as_bytes());
            let mut from = 0;
            while let Some(at) = finder.find(&bytes[from..]) {
                let start = from + at;
                bytes[start..start + secret.len()].fill(b'*');
                from = start + secret.len();
            }
        }
    }

    /// What becomes of an answer's header `value`: kept when it holds no
    /// secret; else with the placed query parameter taken out, when that
    /// leaves none; else dropped.
    pub fn scrub(&self, value: &[u8]) -> Scrubbed {
        if !self.found_in(value) {
            return Scrubbed::Keep;
        }
        let value = String::from_utf8_lossy(value);
        if let Some(pair) = &self.pair {
            let cleaned = value
                .replace(&format!("&{pair}"), "")
                .replace(&format!("?{pair}&"), "?")
                .replace(&format!("?{pair}"), "");
            if !self.found_in(cleaned.as_bytes()) {
                return Scrubbed::Replace(cleaned);
            }
        }
        Scrubbed::Drop
    }
}

/// `query` (as sent, still encoded) without any parameter named `name`.
pub(super) fn without_parameter(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            !pair.is_empty()
                && form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .is_none_or(|(n, _)| n != name)
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placed_parameter_is_taken_out_of_urls_and_other_secrets_drop_their_header() {
        let placed = Placed::new(
            vec!["key with/slash".into(), "token-123456".into()],
            Some(("api_key", "key with/slash")),
        );
        let scrub = |v: &str| placed.scrub(v.as_bytes());
        assert_eq!(scrub("text/plain"), Scrubbed::Keep);
        assert_eq!(
            scrub("https://x.example/a?api_key=key+with%2Fslash"),
            Scrubbed::Replace("https://x.example/a".into())
        );
        assert_eq!(
            scrub("<https://x.example/a?p=2&api_key=key+with%2Fslash>; rel=\"next\""),
            Scrubbed::Replace("<https://x.example/a?p=2>; rel=\"next\"".into())
        );
        assert_eq!(
            scrub("https://x.example/a?api_key=key+with%2Fslash&p=2"),
            Scrubbed::Replace("https://x.example/a?p=2".into())
        );
        assert_eq!(scrub("you sent key with/slash"), Scrubbed::Drop);
        assert_eq!(
            scrub("you sent key+with%2fslash"),
            Scrubbed::Drop,
            "escapes in small letters"
        );
        assert_eq!(
            scrub("you sent Key+With%2Fslash"),
            Scrubbed::Keep,
            "only the escapes' case varies"
        );
        assert_eq!(
            scrub(r#"{"sent":"key with\/slash"}"#),
            Scrubbed::Drop,
            "as JSON may escape it"
        );
        assert_eq!(scrub("Bearer token-123456"), Scrubbed::Drop);
        let mut body = b"a token-123456, key+with%2Fslash token-1234".to_vec();
        assert!(placed.found_in(&body));
        placed.mask(&mut body);
        assert_eq!(&body[..], b"a ************, **************** token-1234");
        assert!(!placed.found_in(&body));
        assert_eq!(placed.may_begin(b"data: {}\n\n"), 0, "nothing that begins one");
        assert_eq!(placed.may_begin(b"a tok"), 3);
        assert_eq!(placed.may_begin(b"a token-12345"), 11);
        assert_eq!(
            placed.may_begin(b"a token-123456"),
            0,
            "a whole one is masked, not held"
        );
        assert_eq!(placed.may_begin(b"key+with%2"), 10, "as the query spells it");
        assert_eq!(placed.may_begin(b"k"), 1);
        assert_eq!(placed.longest(), "key+with%2Fslash".len());
        assert_eq!(Placed::default().longest(), 0);
        let short = Placed::new(vec!["t".into()], None);
        assert_eq!(short.scrub(b"text/plain"), Scrubbed::Keep, "too short to look for");
    }

    #[test]
    fn an_engines_parameter_of_the_placed_name_goes_and_the_rest_stays_as_sent() {
        assert_eq!(
            without_parameter("api_key=mine&x=1+2&api%5Fkey=again&API_KEY=other&&y", "api_key"),
            "x=1+2&API_KEY=other&y"
        );
        assert_eq!(without_parameter("api_key=mine", "api_key"), "");
    }
}
