//! The typed identifiers bind and read as text in both dialects.

use sqlx::any::{Any, AnyTypeInfo, AnyValueRef};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

use crate::ids::{CredentialId, CredentialName, OrgId, UserId, WebhookId};

macro_rules! text_column {
    ($name:ty) => {
        impl Type<Any> for $name {
            fn type_info() -> AnyTypeInfo {
                <String as Type<Any>>::type_info()
            }
        }

        impl<'q> Encode<'q, Any> for $name {
            fn encode_by_ref(&self, buf: &mut <Any as Database>::ArgumentBuffer<'q>) -> Result<IsNull, BoxDynError> {
                <String as Encode<'q, Any>>::encode(self.as_str().to_owned(), buf)
            }
        }

        impl<'r> Decode<'r, Any> for $name {
            fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
                <String as Decode<'r, Any>>::decode(value).map(<$name>::from_store)
            }
        }
    };
}

text_column!(OrgId);
text_column!(CredentialId);
text_column!(WebhookId);
text_column!(UserId);
text_column!(CredentialName);
