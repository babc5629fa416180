//! Grant review: what each step of a recipe version may do (hosts,
//! secrets, properties, memory, time), and what changed against the
//! version running now. A version that widens any grant waits for an
//! admin's approval when the workspace reviews grants.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use wrun_runtime::manifest::Manifest;

/// What one step may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepGrants {
    /// HTTPS host patterns it may reach.
    pub hosts: BTreeSet<String>,
    /// Connections it may use (by the name the recipe binds).
    pub secrets: BTreeSet<String>,
    /// Environment properties it may read.
    pub properties: BTreeSet<String>,
    /// Memory limit in bytes (`null`: the operator's default).
    pub memory: Option<u64>,
    /// Wall-clock limit in milliseconds (`null`: the operator's default).
    pub timeout_ms: Option<u64>,
    /// SHA-256 of the step's component.
    pub component: String,
}

/// How a step changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StepChange {
    /// The step is new.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub added: bool,
    /// Hosts added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts_added: Vec<String>,
    /// Secrets added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets_added: Vec<String>,
    /// Properties added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties_added: Vec<String>,
    /// A changed memory limit, old and new (`null`: the operator's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<(Option<u64>, Option<u64>)>,
    /// A changed time limit, old and new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<(Option<u64>, Option<u64>)>,
    /// Its code changed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub component_changed: bool,
    /// Whether anything above gives the step more than it had.
    pub widens: bool,
}

/// A version's grants per step and the change against the running one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Review {
    /// Step name -> what it may do.
    pub steps: BTreeMap<String, StepGrants>,
    /// Step name -> what changed (steps without a change are left out).
    pub changes: BTreeMap<String, StepChange>,
    /// Steps the running version has and this one drops.
    pub removed: Vec<String>,
    /// Whether any step may do more than before.
    pub widens: bool,
}

/// The grants of every step of `manifest`; `components` maps a step's
/// component path to its SHA-256.
pub fn grants(
    manifest: &Manifest,
    components: &BTreeMap<String, String>,
) -> BTreeMap<String, StepGrants> {
    manifest
        .steps
        .iter()
        .map(|step| {
            let g = &step.grants;
            let path = step.component.to_string_lossy().replace('\\', "/");
            (
                step.name.clone(),
                StepGrants {
                    hosts: g.net.iter().cloned().collect(),
                    secrets: g.secrets.values().cloned().collect(),
                    properties: g.env.iter().cloned().collect(),
                    memory: g.memory,
                    timeout_ms: g
                        .timeout
                        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                    component: components.get(&path).cloned().unwrap_or_default(),
                },
            )
        })
        .collect()
}

/// A limit that is larger, or unset (the operator's default) where it was
/// set: either may give more.
fn limit_widens(old: Option<u64>, new: Option<u64>) -> bool {
    match (old, new) {
        (Some(o), Some(n)) => n > o,
        (Some(_), None) => true,
        (None, Some(_)) | (None, None) => false,
    }
}

/// Compares a version's grants with the running version's (`None`: nothing
/// runs yet, so every grant is new).
pub fn review(
    new: BTreeMap<String, StepGrants>,
    old: Option<&BTreeMap<String, StepGrants>>,
) -> Review {
    let empty = BTreeMap::new();
    let old_steps = old.unwrap_or(&empty);
    let mut changes = BTreeMap::new();
    for (name, now) in &new {
        let change = match old_steps.get(name) {
            None => StepChange {
                added: true,
                hosts_added: now.hosts.iter().cloned().collect(),
                secrets_added: now.secrets.iter().cloned().collect(),
                properties_added: now.properties.iter().cloned().collect(),
                memory: now.memory.map(|m| (None, Some(m))),
                timeout_ms: now.timeout_ms.map(|t| (None, Some(t))),
                component_changed: true,
                widens: true,
            },
            Some(before) => {
                let mut c = StepChange {
                    hosts_added: now.hosts.difference(&before.hosts).cloned().collect(),
                    secrets_added: now.secrets.difference(&before.secrets).cloned().collect(),
                    properties_added: now
                        .properties
                        .difference(&before.properties)
                        .cloned()
                        .collect(),
                    memory: (now.memory != before.memory).then_some((before.memory, now.memory)),
                    timeout_ms: (now.timeout_ms != before.timeout_ms)
                        .then_some((before.timeout_ms, now.timeout_ms)),
                    component_changed: now.component != before.component,
                    ..StepChange::default()
                };
                c.widens = !c.hosts_added.is_empty()
                    || !c.secrets_added.is_empty()
                    || !c.properties_added.is_empty()
                    || limit_widens(before.memory, now.memory)
                    || limit_widens(before.timeout_ms, now.timeout_ms);
                c
            }
        };
        if change != StepChange::default() {
            changes.insert(name.clone(), change);
        }
    }
    let removed = old_steps
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    let widens = changes.values().any(|c| c.widens);
    Review {
        steps: new,
        changes,
        removed,
        widens,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn step(hosts: &[&str], secrets: &[&str], memory: Option<u64>) -> StepGrants {
        StepGrants {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            properties: BTreeSet::new(),
            memory,
            timeout_ms: None,
            component: "aa".into(),
        }
    }

    fn steps(list: &[(&str, StepGrants)]) -> BTreeMap<String, StepGrants> {
        list.iter()
            .map(|(n, g)| (n.to_string(), g.clone()))
            .collect()
    }

    #[test]
    fn added_hosts_secrets_steps_and_larger_limits_widen() {
        let old = steps(&[("a", step(&["api.x.test"], &["x"], Some(64 << 20)))]);
        let same = review(old.clone(), Some(&old));
        assert!(!same.widens && same.changes.is_empty(), "{same:?}");

        let host = review(
            steps(&[(
                "a",
                step(&["api.x.test", "evil.test"], &["x"], Some(64 << 20)),
            )]),
            Some(&old),
        );
        assert!(host.widens);
        assert_eq!(host.changes["a"].hosts_added, ["evil.test"]);

        let secret = review(
            steps(&[("a", step(&["api.x.test"], &["x", "y"], Some(64 << 20)))]),
            Some(&old),
        );
        assert_eq!(secret.changes["a"].secrets_added, ["y"]);
        assert!(secret.widens);

        let memory = review(
            steps(&[("a", step(&["api.x.test"], &["x"], None))]),
            Some(&old),
        );
        assert!(memory.widens, "back to the default may be more");

        let new_step = review(
            steps(&[("a", old["a"].clone()), ("b", step(&[], &[], None))]),
            Some(&old),
        );
        assert!(new_step.widens && new_step.changes["b"].added);
        assert!(
            review(old.clone(), None).widens,
            "a first version grants everything anew"
        );
    }

    #[test]
    fn narrowing_and_code_changes_do_not_widen() {
        let old = steps(&[
            (
                "a",
                step(&["api.x.test", "api.y.test"], &["x"], Some(64 << 20)),
            ),
            ("b", step(&[], &[], None)),
        ]);
        let mut narrower = step(&["api.x.test"], &[], Some(32 << 20));
        narrower.component = "bb".into();
        let r = review(steps(&[("a", narrower)]), Some(&old));
        assert!(!r.widens, "{r:?}");
        assert!(r.changes["a"].component_changed);
        assert_eq!(r.removed, ["b"]);
    }
}
