//! A report: findings against one policy, rendered as text for people,
//! JSON (a stable schema) for machines, or SARIF 2.1.0 for code-scanning
//! interfaces.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{json, Value};

use crate::finding::{Control, Finding, Requirement, Status};

/// The version of the JSON report schema; bumped on incompatible changes.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Findings against one policy.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `intransit lint` or `intransit scan`.
    pub tool: String,
    /// intransit's version.
    pub version: String,
    /// The policy's name.
    pub policy: String,
    /// Every finding, in the order made.
    pub findings: Vec<Finding>,
    /// What was observed, per target (scans), for the JSON report.
    pub observations: Vec<Value>,
}

impl Report {
    /// Whether the policy holds: no finding failed.
    pub fn holds(&self) -> bool {
        !self.findings.iter().any(|f| f.status == Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// Pass/fail per control: a control fails when any finding of a
    /// requirement mapped to it fails.
    pub fn by_control(&self) -> BTreeMap<Control, (usize, usize)> {
        let mut out: BTreeMap<Control, (usize, usize)> = BTreeMap::new();
        for f in &self.findings {
            for control in f.requirement.controls() {
                let entry = out.entry(*control).or_default();
                match f.status {
                    Status::Pass => entry.0 += 1,
                    Status::Fail => entry.1 += 1,
                    Status::Warn | Status::Info => {}
                }
            }
        }
        out
    }

    /// The report for people: findings by location, then the verdict per
    /// control.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} against policy {}", self.tool, self.policy);
        let mut by_location: BTreeMap<&str, Vec<&Finding>> = BTreeMap::new();
        for f in &self.findings {
            by_location.entry(&f.location.uri).or_default().push(f);
        }
        for (uri, findings) in by_location {
            let _ = writeln!(out, "\n{uri}");
            for f in findings {
                let line = f.location.line.map(|l| format!(":{l}")).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {:<4} {:<24} {}{}",
                    label(f.status),
                    f.requirement.id(),
                    f.message,
                    if line.is_empty() {
                        String::new()
                    } else {
                        format!(" (line{line})")
                    }
                );
            }
        }
        let _ = writeln!(out, "\nControls:");
        let mut framework = "";
        for (control, (pass, fail)) in self.by_control() {
            if control.framework != framework {
                framework = control.framework;
                let _ = writeln!(out, "  {framework}");
            }
            let verdict = match (pass, fail) {
                (_, f) if f > 0 => "FAIL",
                (0, 0) => "n/a",
                _ => "pass",
            };
            let _ = writeln!(
                out,
                "    {verdict:<4} {:<32} {pass} passed, {fail} failed",
                control.id
            );
        }
        let _ = writeln!(
            out,
            "\n{}: {} passed, {} failed, {} warnings",
            if self.holds() {
                "POLICY HOLDS"
            } else {
                "POLICY FAILS"
            },
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Warn)
        );
        out
    }

    /// The JSON report (schema version [`JSON_SCHEMA_VERSION`]).
    pub fn to_json(&self) -> Value {
        let controls: Vec<Value> = self
            .by_control()
            .into_iter()
            .map(|(c, (pass, fail))| {
                json!({
                    "framework": c.framework,
                    "id": c.id,
                    "status": match (pass, fail) {
                        (_, f) if f > 0 => "fail",
                        (0, 0) => "not_evaluated",
                        _ => "pass",
                    },
                    "passed": pass,
                    "failed": fail,
                })
            })
            .collect();
        let findings: Vec<Value> = self
            .findings
            .iter()
            .map(|f| {
                json!({
                    "requirement": f.requirement.id(),
                    "status": f.status,
                    "uri": f.location.uri,
                    "line": f.location.line,
                    "message": f.message,
                    "controls": f.requirement.controls().iter()
                        .map(|c| format!("{} {}", c.framework, c.id)).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "schema_version": JSON_SCHEMA_VERSION,
            "tool": self.tool,
            "version": self.version,
            "policy": self.policy,
            "holds": self.holds(),
            "summary": {
                "passed": self.count(Status::Pass),
                "failed": self.count(Status::Fail),
                "warnings": self.count(Status::Warn),
                "info": self.count(Status::Info),
            },
            "controls": controls,
            "findings": findings,
            "observations": self.observations,
        })
    }

    /// SARIF 2.1.0: one rule per requirement (tagged with its controls),
    /// one result per finding that is not a pass.
    pub fn to_sarif(&self) -> Value {
        let used: BTreeSet<Requirement> = self.findings.iter().map(|f| f.requirement).collect();
        let rules: Vec<Value> = used
            .iter()
            .map(|r| {
                let tags: Vec<String> = r
                    .controls()
                    .iter()
                    .map(|c| format!("{} {}", c.framework, c.id))
                    .collect();
                json!({
                    "id": r.id(),
                    "name": r.id().replace('.', "_"),
                    "shortDescription": { "text": r.title() },
                    "fullDescription": { "text": format!("{}. Evidences: {}.", r.title(), tags.join("; ")) },
                    "properties": { "tags": tags },
                })
            })
            .collect();
        let index: BTreeMap<Requirement, usize> =
            used.iter().enumerate().map(|(i, r)| (*r, i)).collect();
        let results: Vec<Value> = self
            .findings
            .iter()
            .filter(|f| f.status != Status::Pass)
            .map(|f| {
                let mut location = json!({
                    "physicalLocation": {
                        "artifactLocation": { "uri": f.location.uri },
                    }
                });
                if let Some(line) = f.location.line {
                    location["physicalLocation"]["region"] = json!({ "startLine": line });
                }
                json!({
                    "ruleId": f.requirement.id(),
                    "ruleIndex": index.get(&f.requirement).copied().unwrap_or(0),
                    "level": match f.status {
                        Status::Fail => "error",
                        Status::Warn => "warning",
                        Status::Pass | Status::Info => "note",
                    },
                    "message": { "text": f.message },
                    "locations": [location],
                })
            })
            .collect();
        json!({
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": { "driver": {
                    "name": "intransit",
                    "version": self.version,
                    "informationUri": "https://github.com/intransit/intransit",
                    "rules": rules,
                }},
                "properties": { "policy": self.policy, "command": self.tool },
                "results": results,
            }]
        })
    }
}

fn label(status: Status) -> &'static str {
    match status {
        Status::Pass => "ok",
        Status::Fail => "FAIL",
        Status::Warn => "warn",
        Status::Info => "info",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            tool: "intransit lint".into(),
            version: "0.1.0".into(),
            policy: "pci-dss-4".into(),
            findings: vec![
                Finding::at_line(
                    Requirement::MinVersion,
                    Status::Pass,
                    "postgresql.conf",
                    Some(3),
                    "TLSv1.2",
                ),
                Finding::at_line(
                    Requirement::NoPlaintext,
                    Status::Fail,
                    "pg_hba.conf",
                    Some(7),
                    "host line",
                ),
                Finding::at_line(
                    Requirement::CertExpiry,
                    Status::Warn,
                    "server.crt",
                    None,
                    "20 days",
                ),
            ],
            observations: Vec::new(),
        }
    }

    #[test]
    fn a_failure_fails_the_policy_and_its_controls() {
        let r = report();
        assert!(!r.holds());
        let controls = r.by_control();
        let pci = controls
            .iter()
            .find(|(c, _)| c.framework == "PCI DSS 4.0" && c.id == "4.2.1")
            .unwrap();
        assert_eq!(*pci.1, (1, 1));
        let text = r.to_text();
        assert!(text.contains("POLICY FAILS"), "{text}");
        assert!(text.contains("(line:7)"), "{text}");
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = report().to_json();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["holds"], false);
        assert_eq!(v["summary"]["failed"], 1);
        assert_eq!(v["findings"][1]["requirement"], "transport.no_plaintext");
        assert_eq!(v["findings"][1]["line"], 7);
        assert!(v["controls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "164.312(e)(1)" && c["status"] == "fail"));
    }

    #[test]
    fn sarif_lists_rules_and_non_passing_results() {
        let v = report().to_sarif();
        assert_eq!(v["version"], "2.1.0");
        let run = &v["runs"][0];
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        let results = run["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["level"], "error");
        assert_eq!(
            results[0]["locations"][0]["physicalLocation"]["region"]["startLine"],
            7
        );
        let idx = results[0]["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], results[0]["ruleId"]);
        assert!(rules[idx]["properties"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "GDPR Art. 32(1)(a)"));
    }
}
