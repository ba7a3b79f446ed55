//! Kubernetes-style label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k` (exists) and `!k` (does not exist), comma-separated (AND).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A selector parse error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid label selector {selector:?}: {reason}; expected comma-separated terms like \
     `app=web`, `tier!=db`, `env in (a,b)`, `env notin (c)`, `key` or `!key`"
)]
pub struct SelectorError {
    /// The selector text.
    pub selector: String,
    /// What is wrong.
    pub reason: String,
}

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, BTreeSet<String>),
    /// `key notin (a,b)` (also true when the key is absent).
    NotIn(String, BTreeSet<String>),
    /// `key`: the label exists.
    Exists(String),
    /// `!key`: the label does not exist.
    DoesNotExist(String),
}

impl Requirement {
    /// Whether `labels` satisfy this term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k) == Some(v),
            Self::NotEquals(k, v) => labels.get(k) != Some(v),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Self::Exists(k) => labels.contains_key(k),
            Self::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Self::Equals(k, v) => write!(f, "{k}={v}"),
            Self::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Self::In(k, vs) => write!(f, "{k} in ({})", join(vs)),
            Self::NotIn(k, vs) => write!(f, "{k} notin ({})", join(vs)),
            Self::Exists(k) => write!(f, "{k}"),
            Self::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// A conjunction of [`Requirement`]s; the empty selector matches everything.
///
/// ```
/// use std::collections::BTreeMap;
/// use arkline::store::LabelSelector;
///
/// let sel: LabelSelector = "app=web,tier!=db,env in (prod,staging),!canary".parse()?;
/// let labels = BTreeMap::from([("app".to_string(), "web".to_string()), ("env".to_string(), "prod".to_string())]);
/// assert!(sel.matches(&labels));
/// # Ok::<(), arkline::store::SelectorError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Adds a term.
    pub fn and(mut self, requirement: Requirement) -> Self {
        self.requirements.push(requirement);
        self
    }

    /// The terms.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| SelectorError {
            selector: s.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        for term in split_terms(s).map_err(err)? {
            let term = term.trim();
            if term.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(err("empty term".into()));
            }
            requirements.push(parse_term(term).map_err(err)?);
        }
        Ok(Self { requirements })
    }
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => {
                if depth > 0 {
                    return Err("nested parentheses".into());
                }
                depth += 1;
            }
            ')' => {
                depth = depth.checked_sub(1).ok_or("unbalanced `)`")?;
            }
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed `(`".into());
    }
    terms.push(&s[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_of(key, term)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(key_of(k, term)?, value_of(v, term)?));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(key_of(k, term)?, value_of(v, term)?));
    }
    if let Some(open) = term.find('(') {
        let head = term[..open].trim();
        let list = term[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| format!("`{term}`: text after `)`"))?;
        let values = list
            .split(',')
            .map(|v| value_of(v, term))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let (key, op) = head
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| format!("`{term}`: expected `key in (...)` or `key notin (...)`"))?;
        let key = key_of(key, term)?;
        return match op {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            other => Err(format!("`{term}`: unknown operator `{other}`")),
        };
    }
    Ok(Requirement::Exists(key_of(term, term)?))
}

fn key_of(key: &str, term: &str) -> Result<String, String> {
    let key = key.trim();
    if key.is_empty() || !key.chars().all(label_char) {
        return Err(format!(
            "`{term}`: label key {key:?} must be non-empty and use only letters, digits, `-_./`"
        ));
    }
    Ok(key.to_string())
}

fn value_of(value: &str, term: &str) -> Result<String, String> {
    let value = value.trim();
    if !value.chars().all(label_char) {
        return Err(format!(
            "`{term}`: label value {value:?} may use only letters, digits, `-_./`"
        ));
    }
    Ok(value.to_string())
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_every_operator() {
        let sel: LabelSelector = "a=1, b==2,c!=3,d in (x, y),e notin (z),f,!g"
            .parse()
            .unwrap();
        assert_eq!(sel.requirements().len(), 7);
        let ok = labels(&[("a", "1"), ("b", "2"), ("d", "y"), ("f", "")]);
        assert!(sel.matches(&ok));
        let mut bad = ok.clone();
        bad.insert("g".into(), "1".into());
        assert!(!sel.matches(&bad));
        let mut bad = ok.clone();
        bad.insert("e".into(), "z".into());
        assert!(!sel.matches(&bad));
        assert_eq!(sel.to_string(), "a=1,b=2,c!=3,d in (x,y),e notin (z),f,!g");
    }

    #[test]
    fn empty_selector_matches_everything() {
        let sel: LabelSelector = "".parse().unwrap();
        assert!(sel.matches(&labels(&[("a", "1")])));
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "a=1,,b=2",
            "a in (x",
            "a in x)",
            "a like (x)",
            "=v",
            "a b c",
        ] {
            let err = bad.parse::<LabelSelector>().unwrap_err();
            assert_eq!(err.selector, bad, "{err}");
        }
    }
}
