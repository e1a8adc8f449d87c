//! Identifiers, parsed once where they enter (a path, a body, a CLI
//! argument, a row) and carried by type from there to the store, so an
//! organization id can never be passed where a credential id belongs.
//!
//! Organization and credential ids are UUIDs in their canonical text form
//! (lowercase, hyphenated): a path that is not one names no credential.
//! User ids are the caller's own (1 to 200 printable characters); a
//! credential's name is trimmed and printable.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest credential name, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// The longest user id, in characters.
pub const MAX_USER_ID_LEN: usize = 200;

/// Why an identifier was refused; the message names no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError(pub &'static str);

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for IdError {}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        /// As its text, without a copy (`serde(into)` would clone it).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl $name {
            /// The text form, for SQL, URLs and messages.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// An id read back from the store, which only ever holds
            /// parsed ones: not checked again.
            pub fn from_store(text: String) -> Self {
                Self(text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(text: String) -> Result<Self, IdError> {
                Self::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        text_id!($(#[$doc])* $name);

        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                Self(uuid::Uuid::new_v4().to_string())
            }

            /// Parses a UUID in any form `uuid` reads, kept canonical.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                uuid::Uuid::parse_str(text)
                    .map(|u| Self(u.to_string()))
                    .map_err(|_| IdError(concat!("is not ", $what, " (a UUID)")))
            }
        }
    };
}

uuid_id!(
    /// An organization: the tenant every row belongs to.
    OrgId,
    "an organization id"
);

uuid_id!(
    /// A stored credential.
    CredentialId,
    "a credential id"
);

uuid_id!(
    /// An organization's webhook endpoint.
    WebhookId,
    "a webhook endpoint id"
);

text_id!(
    /// A person of an organization, named by the caller (1 to 200
    /// printable characters).
    UserId
);

impl UserId {
    /// Parses a user id.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.is_empty() || text.chars().count() > MAX_USER_ID_LEN || text.chars().any(char::is_control) {
            return Err(IdError("must be 1 to 200 printable characters"));
        }
        Ok(Self(text.to_owned()))
    }
}

text_id!(
    /// A credential's display name: trimmed, not empty, printable, at most
    /// [`MAX_NAME_LEN`] characters.
    CredentialName
);

impl CredentialName {
    /// Parses (and trims) a name.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let name = text.trim();
        if name.is_empty() {
            return Err(IdError("must not be empty"));
        }
        if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(IdError("must be at most 200 printable characters"));
        }
        Ok(Self(name.to_owned()))
    }

    /// A name made from outside text (a provider's and an account's
    /// names): control characters dropped, cut to [`MAX_NAME_LEN`], and
    /// `credential` when nothing is left.
    pub fn lossy(text: &str) -> Self {
        let kept: String = text.chars().filter(|c| !c.is_control()).take(MAX_NAME_LEN).collect();
        Self::parse(&kept).unwrap_or_else(|_| Self("credential".to_owned()))
    }
}

impl utoipa::PartialSchema for OrgId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        uuid_schema()
    }
}
impl utoipa::ToSchema for OrgId {}

impl utoipa::PartialSchema for CredentialId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        uuid_schema()
    }
}
impl utoipa::ToSchema for CredentialId {}

impl utoipa::PartialSchema for WebhookId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        uuid_schema()
    }
}
impl utoipa::ToSchema for WebhookId {}

impl utoipa::PartialSchema for UserId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text_schema(MAX_USER_ID_LEN)
    }
}
impl utoipa::ToSchema for UserId {}

impl utoipa::PartialSchema for CredentialName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text_schema(MAX_NAME_LEN)
    }
}
impl utoipa::ToSchema for CredentialName {}

/// A plain string, as these ids always were in the API document (a
/// `format: uuid` would turn them into UUID objects in generated clients).
fn uuid_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .into()
}

fn text_schema(max: usize) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_kept_canonical_and_other_text_is_refused() {
        let id = CredentialId::parse("6F9619FF-8B86-D011-B42D-00C04FC964FF").unwrap();
        assert_eq!(id.as_str(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert!(OrgId::parse("acme").is_err());
        assert!(CredentialId::parse("").is_err());
        let generated = OrgId::generate();
        assert_eq!(OrgId::parse(generated.as_str()).unwrap(), generated);
    }

    #[test]
    fn names_and_users_are_checked() {
        assert_eq!(CredentialName::parse("  Prod DB ").unwrap().as_str(), "Prod DB");
        assert!(CredentialName::parse("   ").is_err());
        assert!(CredentialName::parse(&"x".repeat(201)).is_err());
        assert!(CredentialName::parse("a\nb").is_err());
        assert!(UserId::parse("alice@example.com").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a\u{7}").is_err());
    }

    #[test]
    fn bodies_are_parsed_through_the_same_rules() {
        let bad: Result<CredentialName, _> = serde_json::from_str("\"  \"");
        assert!(bad.is_err());
        let id: OrgId = serde_json::from_str("\"6f9619ff-8b86-d011-b42d-00c04fc964ff\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"6f9619ff-8b86-d011-b42d-00c04fc964ff\""
        );
    }
}
