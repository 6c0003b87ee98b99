//! Typed ids. Every id the control plane handles (users, rooms, messages, stored files,
//! logins) has one grammar, `^[A-Za-z0-9_-]{1,64}$`: generated ids are 24 lowercase hex
//! characters ([`new_id`]), chat rooms may also be named by a client-chosen slug. An id
//! is checked once where it enters (a path segment, a JSON field, a token claim, a
//! database row), so a value of one of these types is always well formed and the rest of
//! the code never checks again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest id accepted (chat slugs; generated ids are 24 characters).
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` is a well-formed id: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh random id: 24 lowercase hex characters (96 bits from the OS RNG).
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A string that is not a well-formed id of `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id")]
pub struct InvalidId {
    /// What the id was meant to name (`room`, `user`, ...), as the 404 message says it.
    pub kind: &'static str,
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this id names, in error messages (`"room not found"`).
            pub const KIND: &'static str = $kind;

            /// The id if `s` is well formed (see [`is_valid_id`]).
            pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                if is_valid_id(&s) {
                    Ok(Self(s))
                } else {
                    Err(InvalidId { kind: $kind })
                }
            }

            /// A fresh random id ([`new_id`]).
            pub fn generate() -> Self {
                Self(new_id())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

typed_id!(
    /// A user, created on first successful phone login.
    UserId,
    "user"
);
typed_id!(
    /// A room. Either generated for rooms made with `POST /api/rooms`, or a client-chosen
    /// slug for chat rooms made on first use by `GET /api/room/:roomId`.
    RoomId,
    "room"
);
typed_id!(
    /// A chat message.
    MessageId,
    "message"
);
typed_id!(
    /// Stored bytes: a voice note, an image, or an avatar.
    FileId,
    "file"
);
typed_id!(
    /// One login: all refresh tokens rotated from one verify-otp share a family, so
    /// reuse of an old token can revoke the whole login.
    FamilyId,
    "login"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_and_slugs_parse() {
        let id = RoomId::generate();
        assert_eq!(id.as_str().len(), 24);
        assert_eq!(RoomId::parse(id.as_str()), Ok(id));
        for ok in ["lobby", "a", "A-b_9", &"x".repeat(64)] {
            assert_eq!(
                RoomId::parse(ok).map(|r| r.into_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn malformed_ids_are_refused_naming_their_kind() {
        for bad in ["", "a b", "a/b", "é", "a.b", "%41", &"x".repeat(65), "a\0"] {
            assert_eq!(
                RoomId::parse(bad),
                Err(InvalidId { kind: "room" }),
                "{bad:?}"
            );
            assert_eq!(
                MessageId::parse(bad),
                Err(InvalidId { kind: "message" }),
                "{bad:?}"
            );
        }
        assert_eq!(
            "no way".parse::<UserId>().map_err(|e| e.to_string()),
            Err("invalid user id".to_owned())
        );
    }

    #[test]
    fn serde_validates_and_is_a_plain_string() {
        let id: FileId = serde_json::from_str("\"abc-123\"").expect("serde");
        assert_eq!(serde_json::to_string(&id).expect("serde"), "\"abc-123\"");
        let err = serde_json::from_str::<FileId>("\"../etc\"").expect_err("malformed");
        assert!(err.to_string().contains("invalid file id"), "{err}");
        assert!(serde_json::from_str::<UserId>("\"\"").is_err());
        assert!(serde_json::from_str::<UserId>("42").is_err());
    }
}
