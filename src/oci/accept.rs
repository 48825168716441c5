//! The `Accept` header of manifest requests: which media types a client takes.
//! q-values are ignored (clients list what they can parse; order does not change the answer).

/// The media types a client listed; empty means it sent no `Accept` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptList {
    types: Vec<String>,
}

impl AcceptList {
    /// Parses every `Accept` header value (a client may send several headers).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> AcceptList {
        let types = values
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(|item| item.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        AcceptList { types }
    }

    /// Whether a document of `media_type` may be sent. No header, `*/*` and `application/*`
    /// accept anything.
    pub fn accepts(&self, media_type: &str) -> bool {
        if self.types.is_empty() {
            return true;
        }
        let top = media_type.split('/').next().unwrap_or("");
        self.types.iter().any(|t| {
            t == "*/*" || t.eq_ignore_ascii_case(media_type) || t.strip_suffix("/*") == Some(top)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media_type::*;

    #[test]
    fn negotiation() {
        let none = AcceptList::parse([]);
        assert!(none.accepts(OCI_INDEX));
        let containerd = AcceptList::parse([
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json;q=0.5",
        ]);
        assert!(containerd.accepts(DOCKER_MANIFEST));
        assert!(containerd.accepts(OCI_MANIFEST));
        assert!(!containerd.accepts(OCI_INDEX));
        assert!(AcceptList::parse(["text/html", "*/*;q=0.1"]).accepts(OCI_INDEX));
        assert!(AcceptList::parse(["application/*"]).accepts(OCI_INDEX));
        assert!(!AcceptList::parse(["text/*"]).accepts(OCI_INDEX));
        assert!(AcceptList::parse(["APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON"]).accepts(OCI_INDEX));
    }
}
