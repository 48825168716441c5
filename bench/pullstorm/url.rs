//! Plain `http://` URLs: parsed once into authority and path, joined with a redirect's
//! `Location`. Nothing else (no TLS, no userinfo, no IPv6 literals).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    host: String,
    port: u16,
    /// Path and query, always starting with `/`.
    path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad URL `{url}`: {reason}")]
pub struct ParseUrlError {
    url: String,
    reason: &'static str,
}

impl Url {
    /// `host:port`, what goes in the `Host` header and what a connection is keyed by.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The same server with another absolute path.
    pub fn with_path(&self, path: &str) -> Url {
        let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
        Url { host: self.host.clone(), port: self.port, path }
    }

    /// Where a `Location` header leads from this URL: absolute, or a path on this server.
    ///
    /// # Errors
    /// The location is neither an `http://` URL nor an absolute path.
    pub fn join(&self, location: &str) -> Result<Url, ParseUrlError> {
        if location.starts_with('/') && !location.starts_with("//") {
            return Ok(self.with_path(location));
        }
        location.parse()
    }
}

impl std::str::FromStr for Url {
    type Err = ParseUrlError;

    fn from_str(text: &str) -> Result<Url, ParseUrlError> {
        let fail = |reason| ParseUrlError { url: text.to_owned(), reason };
        let rest = match text.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => return Err(fail("https is not supported: pull plain HTTP, or use --client containerd with --hosts-dir")),
            _ => return Err(fail("only http:// URLs are supported")),
        };
        let (authority, path) = rest.find('/').map_or((rest, "/"), |slash| rest.split_at(slash));
        if authority.is_empty() || authority.contains('@') || authority.starts_with('[') {
            return Err(fail("expected http://host[:port][/path]"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| fail("bad port"))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(fail("no host"));
        }
        Ok(Url { host: host.to_owned(), port, path: path.to_owned() })
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins() {
        let url: Url = "http://127.0.0.1:5000".parse().unwrap();
        assert_eq!((url.authority().as_str(), url.path()), ("127.0.0.1:5000", "/"));
        let blob = url.with_path("/v2/a/blobs/sha256:00");
        assert_eq!(blob.to_string(), "http://127.0.0.1:5000/v2/a/blobs/sha256:00");
        assert_eq!(blob.join("/objects/x?sig=1").unwrap().to_string(), "http://127.0.0.1:5000/objects/x?sig=1");
        assert_eq!(blob.join("http://store:81/x").unwrap().authority(), "store:81");
        assert_eq!("http://host/p".parse::<Url>().unwrap().authority(), "host:80");
        assert!("https://host".parse::<Url>().is_err());
        assert!("ftp://host".parse::<Url>().is_err());
        assert!("http://:80/".parse::<Url>().is_err());
        assert!("http://host:x/".parse::<Url>().is_err());
    }
}
