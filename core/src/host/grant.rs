//! Grants: what an engine allows a biz, in the one syntax used by engine
//! configuration and `cargo ark run --grant`.
//!
//! A grant is `process=PROG[,PROG…]`, `http=HOST[,HOST…]`, `cache` or
//! `host-call=NAME[,NAME…]`; several grants add up ([`merge_grants`]). What a biz
//! may use is the grant intersected with its manifest's request
//! ([`EffectiveCapabilities`](crate::host::EffectiveCapabilities)).
//!
//! Two grants loosen the sandbox of `process` programs and count only with a
//! `process` grant: `process-net=host` (the host's network: loopback services,
//! private ranges and cloud metadata, none of the `http` capability's checks;
//! `none`, the default, is an empty network namespace) and
//! `process-exec=workspace` (files in the workspace may be executed; `none`,
//! the default, mounts it `noexec`). A third names programs:
//! `process-builder=PROG[,PROG…]` runs those of the granted programs in the
//! sandbox's builder mode (root of their own user namespace, no Landlock
//! domain), for image builders such as buildah.

use super::Capabilities;

/// The grant forms, for error messages.
const GRANT_FORMS: &str = "the accepted forms are `process=PROG[,PROG…]`, `http=HOST[,HOST…]`, `cache` and `host-call=NAME[,NAME…]`, and with `process`, `process-net=none|host`, `process-exec=none|workspace` and `process-builder=PROG[,PROG…]`";

/// A `--grant` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}; {GRANT_FORMS}")]
pub struct GrantError {
    problem: String,
}

/// Parses several grants and merges them ([`parse_grant`] then [`merge_grants`]);
/// an error names the grant that does not parse.
pub fn parse_grants<S: AsRef<str>>(grants: &[S]) -> Result<Capabilities, GrantError> {
    let parsed = grants
        .iter()
        .map(|g| {
            let g = g.as_ref();
            parse_grant(g).map_err(|e| GrantError {
                problem: format!("grant `{g}`: {}", e.problem),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let merged = merge_grants(&parsed);
    for program in &merged.process_builder {
        if program == "*" {
            return Err(GrantError {
                problem: "`process-builder=*`: name the programs that run as builders".into(),
            });
        }
        if !merged.process.iter().any(|p| p == program || p == "*") {
            return Err(GrantError {
                problem: format!(
                    "`process-builder={program}` without `process={program}`: builder mode is \
                     for a granted program; grant it too"
                ),
            });
        }
    }
    Ok(merged)
}

impl Capabilities {
    /// The grants that give exactly these capabilities, in the syntax
    /// [`parse_grant`] reads (`process=sh,git`, `http=h`, `cache`, `host-call=n`);
    /// `parse_grants(&caps.to_grants())` gives `caps` back.
    pub fn to_grants(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.process.is_empty() {
            out.push(format!("process={}", self.process.join(",")));
        }
        if !self.http.is_empty() {
            out.push(format!("http={}", self.http.join(",")));
        }
        if self.cache {
            out.push("cache".to_owned());
        }
        if !self.host_call.is_empty() {
            out.push(format!("host-call={}", self.host_call.join(",")));
        }
        if self.process_net {
            out.push("process-net=host".to_owned());
        }
        if self.process_exec {
            out.push("process-exec=workspace".to_owned());
        }
        if !self.process_builder.is_empty() {
            out.push(format!(
                "process-builder={}",
                self.process_builder.join(",")
            ));
        }
        out
    }
}

/// Parses one grant: `process=PROG[,PROG…]`, `http=HOST[,HOST…]`, `cache` or
/// `host-call=NAME[,NAME…]` (`host_call=` too, as in manifests). `*` in a list
/// grants whatever the manifest requests of that kind.
pub fn parse_grant(spec: &str) -> Result<Capabilities, GrantError> {
    let problem = |p: String| GrantError { problem: p };
    let (kind, list) = match spec.split_once('=') {
        Some((kind, list)) => (kind.trim(), Some(list)),
        None => (spec.trim(), None),
    };
    let mut grant = Capabilities::default();
    let slot = match kind {
        "cache" => {
            return match list {
                None => {
                    grant.cache = true;
                    Ok(grant)
                }
                Some(_) => Err(problem("`cache` takes no value".to_owned())),
            };
        }
        "process-net" | "process-exec" => {
            let (flag, on) = if kind == "process-net" {
                (&mut grant.process_net, "host")
            } else {
                (&mut grant.process_exec, "workspace")
            };
            return match list.map(str::trim) {
                Some(v) if v == on => {
                    *flag = true;
                    Ok(grant)
                }
                Some("none") => Ok(grant),
                Some(other) => Err(problem(format!(
                    "`{kind}` is `none` or `{on}`, not `{other}`"
                ))),
                None => Err(problem(format!("`{kind}` needs a value: `{kind}={on}`"))),
            };
        }
        "process" => &mut grant.process,
        "process-builder" => &mut grant.process_builder,
        "http" => &mut grant.http,
        "host-call" | "host_call" => &mut grant.host_call,
        "log" => {
            return Err(problem(
                "`log` is always granted and needs no --grant".to_owned(),
            ));
        }
        "" => return Err(problem("the grant is empty".to_owned())),
        other => return Err(problem(format!("unknown capability `{other}`"))),
    };
    let Some(list) = list else {
        return Err(problem(format!(
            "`{kind}` needs a list of what to grant, e.g. `{kind}=…`"
        )));
    };
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(problem(format!("`{kind}=` has an empty entry")));
        }
        if item.chars().any(char::is_whitespace) {
            return Err(problem(format!("`{item}` contains whitespace")));
        }
        if !slot.iter().any(|s| s == item) {
            slot.push(item.to_owned());
        }
    }
    Ok(grant)
}

/// The union of several grants.
pub fn merge_grants(grants: &[Capabilities]) -> Capabilities {
    let mut all = Capabilities::default();
    let add = |into: &mut Vec<String>, from: &[String]| {
        for item in from {
            if !into.contains(item) {
                into.push(item.clone());
            }
        }
    };
    for grant in grants {
        add(&mut all.process, &grant.process);
        add(&mut all.http, &grant.http);
        add(&mut all.host_call, &grant.host_call);
        add(&mut all.process_builder, &grant.process_builder);
        all.cache |= grant.cache;
        all.process_net |= grant.process_net;
        all.process_exec |= grant.process_exec;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grants_parse_and_merge() {
        let grants = [
            parse_grant("process=sh,git").expect("process"),
            parse_grant("http=api.example.com, *.internal").expect("http"),
            parse_grant("cache").expect("cache"),
            parse_grant("host-call=kv.get").expect("host-call"),
            parse_grant("process=git,make").expect("process again"),
            parse_grant("host_call=kv.put").expect("manifest spelling"),
        ];
        let all = merge_grants(&grants);
        assert_eq!(all.process, strings(&["sh", "git", "make"]));
        assert_eq!(all.http, strings(&["api.example.com", "*.internal"]));
        assert!(all.cache);
        assert_eq!(all.host_call, strings(&["kv.get", "kv.put"]));
    }

    #[test]
    fn grants_print_and_parse_back() {
        let caps = parse_grants(&[
            "process=sh,git",
            "http=*.example.com",
            "cache",
            "host-call=kv.get",
        ])
        .expect("grants");
        assert_eq!(
            caps.to_grants(),
            strings(&[
                "process=sh,git",
                "http=*.example.com",
                "cache",
                "host-call=kv.get"
            ])
        );
        assert_eq!(parse_grants(&caps.to_grants()).expect("round trip"), caps);
        let loose = parse_grants(&[
            "process=sh,buildah",
            "process-net=host",
            "process-exec=workspace",
            "process-builder=buildah",
        ])
        .expect("sandbox grants");
        assert!(loose.process_net && loose.process_exec);
        assert_eq!(loose.process_builder, ["buildah"]);
        for (bad, says) in [
            (
                &["process=sh", "process-builder=buildah"][..],
                "without `process=buildah`",
            ),
            (
                &["process=buildah", "process-builder=*"][..],
                "name the programs",
            ),
        ] {
            let err = parse_grants(bad).expect_err("refused").to_string();
            assert!(err.contains(says), "{err}");
        }
        assert_eq!(parse_grants(&loose.to_grants()).expect("round trip"), loose);
        let tight = parse_grants(&["process=sh", "process-net=none", "process-exec=none"])
            .expect("defaults spelled out");
        assert!(!tight.process_net && !tight.process_exec);
        assert!(Capabilities::default().to_grants().is_empty());
        let err = parse_grants(&["cache", "net=x"])
            .expect_err("bad")
            .to_string();
        assert!(err.contains("grant `net=x`"), "{err}");
    }

    #[test]
    fn bad_grants_say_what_is_wrong_and_what_is_accepted() {
        for (spec, problem) in [
            ("network=x", "unknown capability `network`"),
            ("process", "`process` needs a list"),
            ("process=", "empty entry"),
            ("http=a,,b", "empty entry"),
            ("cache=true", "`cache` takes no value"),
            ("log", "always granted"),
            ("", "empty"),
            ("process=a b", "whitespace"),
            ("process-net=all", "`process-net` is `none` or `host`"),
            ("process-net", "needs a value"),
            (
                "process-exec=yes",
                "`process-exec` is `none` or `workspace`",
            ),
        ] {
            let err = parse_grant(spec).expect_err(spec).to_string();
            assert!(err.contains(problem), "{spec}: {err}");
            assert!(err.contains("`host-call=NAME[,NAME…]`"), "{spec}: {err}");
        }
    }
}
