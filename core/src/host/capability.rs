//! Capabilities: what a biz may call beyond `log`, and the check every host call makes.
//!
//! A biz's manifest *requests* capabilities; the engine that installs it *grants*
//! some. What the guest may use is the intersection. Anything outside it is refused
//! with a [`HostError::Denied`](super::since_v0_1_0::arkline::step::types::HostError)
//! value naming the capability, the biz and the engine, never with a trap: a denied
//! call is the guest's problem to report, not a crash.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Capabilities requested by a biz (and, with the same shape, granted by an engine).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Programs the biz may run through `process`, by name (`sh`, `git`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process: Vec<String>,
    /// Hosts the biz may reach through `http`: exact names or `*.suffix`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
    /// Whether the biz uses the engine's blob cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache: bool,
    /// Named calls into native plugins the biz may make.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_call: Vec<String>,
    /// Programs run through `process` share the host's network (grant
    /// `process-net=host`): every loopback and private address the host reaches,
    /// outside the `http` capability's checks. By default they run in an empty
    /// network namespace. An engine-side decision: only the grant counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub process_net: bool,
    /// Programs run through `process` may execute files from the workspace
    /// (grant `process-exec=workspace`); by default it is mounted `noexec`, so a
    /// step cannot drop a binary there and run it. Only the grant counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub process_exec: bool,
    /// Programs (of those granted in `process`) that run in the sandbox's
    /// builder mode (grant `process-builder=PROG[,PROG…]`): root of their
    /// own user namespace with its capabilities and 65,536 ids, `setgroups`
    /// allowed, no Landlock domain, so that an image builder (buildah) can
    /// make its own namespaces and mounts. Only the grant counts; the host
    /// must run as root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process_builder: Vec<String>,
}

impl Capabilities {
    /// True when nothing beyond `log` is requested.
    pub fn is_empty(&self) -> bool {
        self == &Capabilities::default()
    }
}

/// A host-function family a biz may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Levelled, structured logging into the step log. Always granted.
    Log,
    /// Running a program.
    Process,
    /// Outbound HTTP requests.
    Http,
    /// The engine's blob cache.
    Cache,
    /// Named calls into native plugins.
    HostCall,
}

impl Capability {
    /// The name used in manifests, grants and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Process => "process",
            Capability::Http => "http",
            Capability::Cache => "cache",
            Capability::HostCall => "host-call",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The capabilities a biz may use in one engine: requested ∩ granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectiveCapabilities {
    requested: Capabilities,
    granted: Capabilities,
    effective: Capabilities,
}

impl EffectiveCapabilities {
    /// Intersects what the manifest requests with what the engine grants.
    ///
    /// HTTP hosts intersect by exact pattern: a grant of `*.example.com` does not
    /// widen a request for `api.example.com` beyond itself, and a request for
    /// `*.example.com` is only effective when the grant names the same pattern or
    /// `*`. A request for `*` (a general-purpose biz such as `http`, whose hosts
    /// come from its configuration) takes the engine's grant as it is: the engine
    /// decides which hosts, including a loopback or private host it names exactly.
    pub fn new(requested: &Capabilities, granted: &Capabilities) -> Self {
        let both = |req: &[String], grant: &[String]| -> Vec<String> {
            let any = grant.iter().any(|g| g == "*");
            req.iter()
                .filter(|r| any || grant.contains(r))
                .cloned()
                .collect()
        };
        let hosts = |req: &[String], grant: &[String]| -> Vec<String> {
            if req.iter().any(|r| r == "*") {
                grant.to_vec()
            } else {
                both(req, grant)
            }
        };
        // The host's own calls (`arkline.…`, such as provenance signing) are
        // granted by name only, never by a `*` meant for native plugins.
        let host_calls = |req: &[String], grant: &[String]| -> Vec<String> {
            let any = grant.iter().any(|g| g == "*");
            req.iter()
                .filter(|r| grant.contains(r) || (any && !r.starts_with("arkline.")))
                .cloned()
                .collect()
        };
        let effective = Capabilities {
            process: both(&requested.process, &granted.process),
            http: hosts(&requested.http, &granted.http),
            cache: requested.cache && granted.cache,
            host_call: host_calls(&requested.host_call, &granted.host_call),
            process_net: false,
            process_exec: false,
            process_builder: Vec::new(),
        };
        let process = !effective.process.is_empty();
        let effective = Capabilities {
            process_net: process && granted.process_net,
            process_exec: process && granted.process_exec,
            process_builder: granted
                .process_builder
                .iter()
                .filter(|p| effective.process.contains(p))
                .cloned()
                .collect(),
            ..effective
        };
        EffectiveCapabilities {
            requested: requested.clone(),
            granted: granted.clone(),
            effective,
        }
    }

    /// What the biz may use.
    pub fn effective(&self) -> &Capabilities {
        &self.effective
    }

    /// What its manifest asked for.
    pub fn requested(&self) -> &Capabilities {
        &self.requested
    }

    /// What the engine granted.
    pub fn granted(&self) -> &Capabilities {
        &self.granted
    }

    /// Whether any use of `capability` is allowed at all.
    pub fn allows(&self, capability: Capability) -> bool {
        match capability {
            Capability::Log => true,
            Capability::Process => !self.effective.process.is_empty(),
            Capability::Http => !self.effective.http.is_empty(),
            Capability::Cache => self.effective.cache,
            Capability::HostCall => !self.effective.host_call.is_empty(),
        }
    }

    /// Checks one use of `capability` on `target` (a program, a host, a call name;
    /// `None` for `cache`), explaining a refusal in terms of request and grant.
    pub fn check(&self, capability: Capability, target: Option<&str>) -> Result<(), String> {
        let (requested, granted, effective): (&[String], &[String], &[String]) = match capability {
            Capability::Log => return Ok(()),
            Capability::Cache => {
                return match (self.requested.cache, self.granted.cache) {
                    (true, true) => Ok(()),
                    (false, _) => Err("its manifest does not request `cache`".to_owned()),
                    (true, false) => Err("the engine does not grant `cache`".to_owned()),
                };
            }
            Capability::Process => (
                &self.requested.process,
                &self.granted.process,
                &self.effective.process,
            ),
            Capability::Http => (
                &self.requested.http,
                &self.granted.http,
                &self.effective.http,
            ),
            Capability::HostCall => (
                &self.requested.host_call,
                &self.granted.host_call,
                &self.effective.host_call,
            ),
        };
        // Hosts are patterns; the http capability matches each real target itself.
        let target = target.filter(|_| capability != Capability::Http);
        let Some(target) = target else {
            return if !effective.is_empty() {
                Ok(())
            } else if requested.is_empty() {
                Err(format!("its manifest does not request `{capability}`"))
            } else {
                Err(format!(
                    "the engine does not grant `{capability}` for what the manifest requests ({}; it grants {})",
                    list_or_nothing(requested),
                    list_or_nothing(granted)
                ))
            };
        };
        let listed = |list: &[String]| list.iter().any(|e| e == target || e == "*");
        match (listed(requested), listed(granted)) {
            (true, true) => Ok(()),
            (false, _) => Err(format!(
                "its manifest does not request `{capability}: {target}` (it requests {})",
                list_or_nothing(requested)
            )),
            (true, false) => Err(format!(
                "the engine does not grant `{capability}: {target}` (it grants {})",
                list_or_nothing(granted)
            )),
        }
    }
}

fn list_or_nothing(list: &[String]) -> String {
    if list.is_empty() {
        "nothing".to_owned()
    } else {
        list.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Who is calling: the identity a refusal names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The engine (namespace) the biz is installed in.
    pub engine: String,
    /// The biz name.
    pub biz: String,
    /// The biz version.
    pub version: semver::Version,
}

impl CallerIdentity {
    /// The message a guest receives when `capability` is refused.
    pub fn denial(&self, capability: Capability, why: &str) -> String {
        format!(
            "capability `{capability}` denied to biz `{}@{}` in engine `{}`: {why}",
            self.biz, self.version, self.engine
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(process: &[&str], cache: bool) -> Capabilities {
        Capabilities {
            process: process.iter().map(|s| s.to_string()).collect(),
            cache,
            ..Capabilities::default()
        }
    }

    #[test]
    fn effective_is_the_intersection() {
        let eff = EffectiveCapabilities::new(&caps(&["sh", "git"], true), &caps(&["git"], false));
        assert_eq!(eff.effective().process, vec!["git".to_owned()]);
        assert!(!eff.allows(Capability::Cache));
        assert!(eff.allows(Capability::Log));
        assert!(eff.check(Capability::Process, Some("git")).is_ok());
        let err = eff.check(Capability::Process, Some("sh")).unwrap_err();
        assert!(err.contains("does not grant `process: sh`"), "{err}");
        let err = eff.check(Capability::Process, Some("curl")).unwrap_err();
        assert!(err.contains("does not request `process: curl`"), "{err}");
        let err = eff.check(Capability::Cache, None).unwrap_err();
        assert!(err.contains("does not grant `cache`"), "{err}");
    }

    #[test]
    fn a_wildcard_grant_covers_every_request_but_widens_nothing() {
        let eff = EffectiveCapabilities::new(&caps(&["sh"], false), &caps(&["*"], true));
        assert_eq!(eff.effective().process, vec!["sh".to_owned()]);
        assert!(!eff.allows(Capability::Cache), "cache was not requested");
        assert!(eff.check(Capability::Process, Some("bash")).is_err());
    }

    #[test]
    fn an_http_request_for_any_host_takes_the_grant_as_it_is() {
        let hosts = |list: &[&str]| Capabilities {
            http: list.iter().map(|s| s.to_string()).collect(),
            ..Capabilities::default()
        };
        let eff = EffectiveCapabilities::new(&hosts(&["*"]), &hosts(&["127.0.0.1", "*.corp"]));
        assert_eq!(eff.effective().http, vec!["127.0.0.1", "*.corp"]);
        assert!(eff.check(Capability::Http, Some("127.0.0.1")).is_ok());
        let eff = EffectiveCapabilities::new(&hosts(&["*"]), &hosts(&[]));
        assert!(eff.effective().http.is_empty());
        let err = eff.check(Capability::Http, None).unwrap_err();
        assert!(err.contains("does not grant `http`"), "{err}");
        // A biz naming its hosts still gets only those.
        let eff = EffectiveCapabilities::new(&hosts(&["api.example.com"]), &hosts(&["127.0.0.1"]));
        assert!(eff.effective().http.is_empty());
    }

    #[test]
    fn sandbox_loosening_counts_from_the_grant_and_only_with_process() {
        let loose = Capabilities {
            process: vec!["sh".into()],
            process_net: true,
            process_exec: true,
            ..Capabilities::default()
        };
        let eff = EffectiveCapabilities::new(&caps(&["sh"], false), &loose);
        assert!(eff.effective().process_net && eff.effective().process_exec);
        // A manifest cannot ask for them; without an effective program they are void.
        let eff = EffectiveCapabilities::new(&loose, &caps(&["sh"], false));
        assert!(!eff.effective().process_net && !eff.effective().process_exec);
        let eff = EffectiveCapabilities::new(&caps(&["git"], false), &loose);
        assert!(!eff.effective().process_net);
        // Builder mode: the granted programs that are effective, from the
        // grant alone.
        let builders = Capabilities {
            process: vec!["sh".into(), "buildah".into()],
            process_builder: vec!["buildah".into(), "kaniko".into()],
            ..Capabilities::default()
        };
        let eff = EffectiveCapabilities::new(&caps(&["sh", "buildah"], false), &builders);
        assert_eq!(eff.effective().process_builder, ["buildah"]);
        let eff = EffectiveCapabilities::new(&caps(&["sh"], false), &builders);
        assert!(eff.effective().process_builder.is_empty());
        let eff = EffectiveCapabilities::new(&builders, &caps(&["sh", "buildah"], false));
        assert!(
            eff.effective().process_builder.is_empty(),
            "a manifest cannot ask"
        );
    }

    #[test]
    fn a_wildcard_host_call_grant_leaves_out_the_hosts_own_calls() {
        let requested = Capabilities {
            host_call: vec!["kv.get".into(), "arkline.provenance".into()],
            ..Capabilities::default()
        };
        let star = Capabilities {
            host_call: vec!["*".into()],
            ..Capabilities::default()
        };
        let eff = EffectiveCapabilities::new(&requested, &star);
        assert_eq!(eff.effective().host_call, ["kv.get"]);
        let named = Capabilities {
            host_call: vec!["*".into(), "arkline.provenance".into()],
            ..Capabilities::default()
        };
        let eff = EffectiveCapabilities::new(&requested, &named);
        assert_eq!(eff.effective().host_call, ["kv.get", "arkline.provenance"]);
    }

    #[test]
    fn denial_names_capability_biz_and_engine() {
        let who = CallerIdentity {
            engine: "team-a".into(),
            biz: "faults".into(),
            version: semver::Version::new(0, 1, 0),
        };
        let msg = who.denial(Capability::Process, "not granted");
        assert_eq!(
            msg,
            "capability `process` denied to biz `faults@0.1.0` in engine `team-a`: not granted"
        );
    }
}
