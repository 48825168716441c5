//! Pure protocol types of the OCI distribution and image specs: digests, names, references,
//! media types, manifests, referrers, error codes, routes, `Range` and `Accept`. No I/O, and
//! nothing of ours is imported here.

/// Serialises a type through its `Display` and deserialises it through its `FromStr`, so that
/// JSON documents can only ever hold validated values.
macro_rules! serde_via_str {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$type, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_via_str;

pub mod accept;
pub mod digest;
pub mod error_code;
pub mod image_ref;
pub mod manifest;
pub mod media_type;
pub mod name;
pub mod range;
pub mod reference;
pub mod referrers;
pub mod route;

pub use digest::Digest;
pub use error_code::ErrorCode;
pub use image_ref::ImageRef;
pub use name::{RepositoryName, Tag};
pub use reference::Reference;
