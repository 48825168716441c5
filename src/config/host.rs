//! The registry host of config keys, in the grammar of the host part of an image reference
//! (distribution's `reference` grammar): `domain[:port]` or `[ipv6][:port]`. Only checked
//! here; the text is kept as written, since that is what it is matched against.

/// Checks that `text` is a registry host as image references name one.
///
/// # Errors
/// Why it is not, in words an operator can act on.
pub(super) fn check_registry_host(text: &str) -> Result<(), String> {
    let hint = "a registry host as images name it: host or host:port, e.g. `ghcr.io` or `registry.internal:5000`, without scheme or path";
    if text.contains("://") || text.contains('/') {
        return Err(format!("`{text}` is not {hint} (a URL belongs in `endpoint`)"));
    }
    let (host, port) = split_port(text).ok_or_else(|| format!("`{text}` is not {hint}"))?;
    if !is_domain(host) && !is_bracketed_ipv6(host) {
        return Err(format!("`{text}` is not {hint}"));
    }
    match port {
        Some(port) if !port.bytes().all(|b| b.is_ascii_digit()) || !matches!(port.parse::<u16>(), Ok(1..)) => {
            Err(format!("`{text}`: the port must be a number from 1 to 65535"))
        }
        _ => Ok(()),
    }
}

/// `host[:port]`, where the host may be `[…]` with colons inside; `None` if a `[` is open.
fn split_port(text: &str) -> Option<(&str, Option<&str>)> {
    let host_end = if text.starts_with('[') { text.find(']')? + 1 } else { text.find(':').unwrap_or(text.len()) };
    let (host, rest) = text.split_at(host_end);
    match rest.strip_prefix(':') {
        Some(port) => Some((host, Some(port))),
        None if rest.is_empty() => Some((host, None)),
        None => None,
    }
}

/// `component(.component)*`, each `[a-zA-Z0-9]` with inner `-` allowed.
fn is_domain(host: &str) -> bool {
    let component = |c: &str| {
        let bytes = c.as_bytes();
        matches!((bytes.first(), bytes.last()), (Some(first), Some(last)) if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric())
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    host.split('.').all(component)
}

fn is_bracketed_ipv6(host: &str) -> bool {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_as_image_references_name_them() {
        for good in ["ghcr.io", "docker.io", "localhost", "registry", "127.0.0.1:5001", "registry.internal:5000", "my-registry.example.com", "[::1]", "[::1]:5000", "Quay.IO"] {
            assert_eq!(check_registry_host(good), Ok(()), "{good}");
        }
        let bad = [
            "https://ghcr.io",
            "ghcr.io/foo",
            "ghcr.io/",
            "",
            "ghcr..io",
            ".ghcr.io",
            "-ghcr.io",
            "ghcr-.io",
            "ghcr.io:",
            "ghcr.io:0",
            "ghcr.io:65536",
            "ghcr.io:+5",
            "ghcr.io:5000:1",
            "ghcr io",
            "ghcr_io",
            "user@ghcr.io",
            "[::1",
            "[zz]:5000",
            "[::1]x",
        ];
        for bad in bad {
            assert!(check_registry_host(bad).is_err(), "{bad:?}");
        }
        assert!(check_registry_host("https://ghcr.io").unwrap_err().contains("a URL belongs in `endpoint`"));
        assert!(check_registry_host("ghcr.io:99999").unwrap_err().contains("port must be a number from 1 to 65535"));
    }
}
