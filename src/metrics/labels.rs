//! The label values of the metrics: small fixed enums, so no label set is built from what a
//! client sends (no names, references or digests) and each enum indexes a per-core table.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// Declares a label enum with its wire text, its count and a dense index.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const COUNT: usize = $name::ALL.len();

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            // Only the labels of per-core tables are indexed.
            #[allow(dead_code)]
            pub(super) fn index(self) -> usize {
                self as usize
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_enum! {
    /// What a request asked for.
    Route {
        /// `/v2/`.
        Base => "base",
        Manifest => "manifest",
        Blob => "blob",
        Tags => "tags",
        /// `/v2/<name>/referrers/<digest>`.
        Referrers => "referrers",
        /// A path that is no route of its listener (or does not parse).
        Unknown => "unknown",
        /// Admin listener: `/live`.
        Live => "live",
        /// Admin listener: `/ready`.
        Ready => "ready",
        /// Admin listener: `/metrics`.
        Metrics => "metrics",
        /// Admin listener: `/admin/specs/<id>`.
        Specs => "specs",
        /// Blobserve listener: a file of an image.
        Blobserve => "blobserve",
        /// Admin listener: `/admin/prefetch[/<id>]`.
        Prefetch => "prefetch",
    }
}

label_enum! {
    /// The request method; methods outside the list are `other`.
    Method {
        Get => "GET",
        Head => "HEAD",
        Put => "PUT",
        Delete => "DELETE",
        Other => "other",
    }
}

impl Method {
    pub fn of(method: &http::Method) -> Method {
        match *method {
            http::Method::GET => Method::Get,
            http::Method::HEAD => Method::Head,
            http::Method::PUT => Method::Put,
            http::Method::DELETE => Method::Delete,
            _ => Method::Other,
        }
    }
}

label_enum! {
    /// Where the bytes of a response body came from.
    ByteSource {
        /// A manifest (held in memory: composed, mirrored or local).
        Manifest => "manifest",
        /// A blob already in the local cache, whole or a range.
        Cache => "cache",
        /// A blob a fill brings in from an upstream registry (or a content layer's URL),
        /// read as it lands, or streamed straight through when it cannot be cached.
        Upstream => "upstream",
        /// A blob a fill brought in from an IPFS gateway (readers see it once verified).
        Ipfs => "ipfs",
        /// Bytes a composition carries: its config, direct content layers.
        Composed => "composed",
        /// Small API documents: `/v2/`, tag lists, error documents.
        Api => "api",
        /// Answers of the admin listener, `/metrics` included.
        Admin => "admin",
        /// Files of images served by blobserve.
        Blobserve => "blobserve",
    }
}

label_enum! {
    /// How preparing an image for blobserve ended.
    PrepareOutcome {
        Ready => "ready",
        Failed => "failed",
    }
}

label_enum! {
    /// Where the images of blobserve's pre-pull list stand.
    PrepullState {
        Pending => "pending",
        Ready => "ready",
        Failed => "failed",
    }
}

label_enum! {
    /// What was looked up in the local cache.
    CacheKind {
        Manifest => "manifest",
        Blob => "blob",
    }
}

label_enum! {
    /// Where a fill downloads from.
    FillSource {
        /// The upstream registry, or the URL of a remote content layer.
        Upstream => "upstream",
        /// An IPFS gateway (the digest had a CID in Redis).
        Ipfs => "ipfs",
    }
}

label_enum! {
    /// How a fill ended.
    FillOutcome {
        /// Verified and published in the cache.
        Completed => "completed",
        /// Upstream gave up, or the content did not match its digest; readers were cut off.
        Failed => "failed",
        /// No room in the cache: readers streamed from upstream, nothing was kept.
        Uncached => "uncached",
    }
}

label_enum! {
    /// What an upstream retry repeated.
    RetryKind {
        /// A request whose attempt failed (connect, timeout, 429, 5xx).
        Request => "request",
        /// A blob body that broke or stalled, continued with a `Range` request.
        Resume => "resume",
    }
}

label_enum! {
    /// Why a connection was refused at accept.
    Refusal {
        /// The server held `limits.maxConnections` connections.
        ServerFull => "server_full",
        /// The client's address held `limits.maxConnectionsPerClient` connections.
        ClientFull => "client_full",
    }
}

label_enum! {
    /// What became of a blob offered for publication to IPFS.
    Publication {
        /// Added to the node and recorded in Redis.
        Published => "published",
        /// The node or Redis refused, failed or timed out.
        Failed => "failed",
        /// This core's queue was full.
        QueueFull => "queue_full",
        /// Redis already names a CID for it.
        Known => "known",
        /// Another core is publishing it.
        InProgress => "in_progress",
        /// It left the cache before its turn.
        Gone => "gone",
    }
}

label_enum! {
    /// What a prefetch found of a blob.
    PrefetchOutcome {
        /// Brought into the cache.
        Fetched => "fetched",
        /// Already there (or nothing to fetch).
        Present => "present",
        Failed => "failed",
    }
}

label_enum! {
    /// A file the facade re-reads when it changes.
    ReloadedFile {
        Tls => "tls",
        Credentials => "credentials",
        Config => "config",
    }
}

label_enum! {
    /// What became of a changed file.
    ReloadOutcome {
        /// Read and in force.
        Applied => "applied",
        /// Unusable: the previous version stays in force.
        Refused => "refused",
    }
}

label_enum! {
    /// Which listener a connection came in on.
    Listener {
        Registry => "registry",
        Admin => "admin",
        Blobserve => "blobserve",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub route: Route,
    pub method: Method,
    pub code: u16,
    pub core: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ServedLabels {
    pub source: ByteSource,
    pub core: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct CacheLabels {
    pub kind: CacheKind,
    pub core: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ConnectionLabels {
    pub listener: Listener,
    pub core: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct RefusalLabels {
    pub reason: Refusal,
    pub core: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct FillLabels {
    pub source: FillSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct FillOutcomeLabels {
    pub source: FillSource,
    pub outcome: FillOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct HostLabels {
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct PrepareLabels {
    pub outcome: PrepareOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct PrepullLabels {
    pub state: PrepullState,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct PrefetchLabels {
    pub outcome: PrefetchOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct PublicationLabels {
    pub outcome: Publication,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ReloadLabels {
    pub file: ReloadedFile,
    pub outcome: ReloadOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct RetryLabels {
    pub host: String,
    pub kind: RetryKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense() {
        for (i, source) in ByteSource::ALL.iter().enumerate() {
            assert_eq!(source.index(), i);
        }
        assert_eq!(Route::COUNT, 12);
        assert_eq!(Method::of(&http::Method::PATCH), Method::Other);
    }
}
