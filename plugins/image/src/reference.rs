//! Image references as users write them (`registry/repo:tag`, `repo@sha256:…`,
//! `alpine`), normalised the way Docker does: a first component with a `.` or
//! a `:`, or `localhost`, names the registry; otherwise it is Docker Hub
//! (`registry-1.docker.io`, with `library/` in front of one-component names).

use std::fmt;

/// The registry host of Docker Hub's API.
const DOCKER_HUB: &str = "registry-1.docker.io";

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` of the registry's API.
    pub registry: String,
    /// The repository path, e.g. `library/alpine`.
    pub repository: String,
    /// A tag, when given.
    pub tag: Option<String>,
    /// A digest (`sha256:…`), when given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Reference, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the reference is empty".to_owned());
        }
        if text.contains("://") {
            return Err(format!(
                "`{text}` is a URL; give a reference such as `registry.example.com/team/app`"
            ));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest)?;
                (rest, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        // A tag is after the last `:` that follows the last `/` (a `:` before it
        // is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(rest[at + 1..].to_owned()))
            }
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            check_tag(tag).map_err(|e| format!("`{text}`: {e}"))?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => {
                let path = if name.contains('/') {
                    name.to_owned()
                } else {
                    format!("library/{name}")
                };
                (DOCKER_HUB.to_owned(), path)
            }
        };
        let registry = match registry.as_str() {
            "docker.io" | "index.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        check_repository(&repository).map_err(|e| format!("`{text}`: {e}"))?;
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The tag or digest to fetch the manifest by (`latest` when neither).
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `registry/repository`.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Checks a `sha256:<64 hex>` digest.
pub fn check_digest(digest: &str) -> Result<(), String> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "`{digest}` is not a digest; digests are `sha256:` and 64 lowercase hex digits"
        )),
    }
}

/// Checks a tag against the distribution spec: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok
        || tag.len() > 128
        || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "`{tag}` is not a valid tag (letters, digits, `_`, `.`, `-`, at most 128, not starting with `.` or `-`)"
        ));
    }
    Ok(())
}

/// Checks a repository path: lowercase components of `[a-z0-9]` separated by
/// `.`, `_`, `__` or `-`, joined by `/`.
fn check_repository(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.split('/').all(|component| {
            !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && component
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                && component
                    .bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{path}` is not a valid repository name (lowercase letters, digits and `._-` separators, components joined by `/`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag, r.digest),
            (DOCKER_HUB, "library/alpine", None, None)
        );
        let r = Reference::parse("127.0.0.1:5000/team/app:v1.2").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost:5000/app@{digest}")).unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(r.manifest_reference(), digest);
        let r = Reference::parse("docker.io/user/tool:1").unwrap();
        assert_eq!(r.registry, DOCKER_HUB);
        assert_eq!(r.repository, "user/tool");
    }

    #[test]
    fn refuses_bad_references() {
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("https://r.example/app").is_err());
        assert!(Reference::parse("r.example/App").is_err());
        assert!(Reference::parse("r.example/app:-x").is_err());
        assert!(Reference::parse("r.example/app@sha256:abc").is_err());
    }
}
