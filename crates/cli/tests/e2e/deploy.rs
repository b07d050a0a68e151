//! The deployment artefacts in `deploy/`, checked the way a cluster and a
//! monitoring stack would read them:
//!
//! - the Kubernetes manifests: built-in kinds against the Kubernetes 1.30
//!   and newest schemas with `kubernetes-validate --strict` (PyPI), cert-manager
//!   objects against models generated from cert-manager's published CRDs
//!   (`cloudcoil.models.cert_manager`, PyPI), with keys the model does not
//!   know refused; each kustomization's resources;
//! - the intransit configuration inside each ConfigMap: `check-config`
//!   with the certificate paths pointed at files laid out as a Secret
//!   volume, then the two configurations run as a tunnel in front of the
//!   test PostgreSQL, with the probes' HTTPS requests answered;
//! - that the pods agree with their configuration: native sidecar, probe
//!   ports and paths, grace periods, security contexts, the Service and
//!   NetworkPolicies admitting the proxy's port only;
//! - the Prometheus rules with `promtool check rules` and `promtool test
//!   rules`, the scrape configuration with `promtool check config`;
//! - that every metric the alert rules and the Grafana dashboard query is
//!   exported by a running proxy (and every exported family is on the
//!   dashboard).
//!
//! YAML is read by PyYAML (installed with kubernetes-validate) and handed
//! over as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// The Kubernetes version the manifests are validated against: the first
/// with native sidecars (init containers with `restartPolicy: Always`) and
/// the `sleep` action of preStop hooks on by default.
const KUBERNETES_VERSION: &str = "1.30.0";

/// What a missing Python tool is fixed with.
const PIP_HINT: &str = "install it with: python3 -m pip install kubernetes-validate \
     'cloudcoil.models.cert_manager' (or run .ci/install-deps.sh)";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

fn python3() -> PathBuf {
    intransit_testkit::require_tool("python3", "python3").expect("python3")
}

fn promtool() -> PathBuf {
    intransit_testkit::require_tool("promtool", "prometheus").expect("promtool")
}

/// Runs `python3 -c script args...` with `stdin`, and fails the test with
/// the install hint when a module is missing.
fn run_python(script: &str, args: &[&Path], stdin: &str) -> Output {
    let mut child = Command::new(python3())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing to python3");
    let out = child.wait_with_output().expect("python3");
    let err = stderr(&out);
    assert!(
        !err.contains("ModuleNotFoundError") && !err.contains("No module named"),
        "{err}\n{PIP_HINT}"
    );
    out
}

/// Every YAML document of each file, as JSON (empty documents left out).
fn yaml_documents(files: &[PathBuf]) -> BTreeMap<PathBuf, Vec<Value>> {
    const SCRIPT: &str = r#"
import json, sys, yaml
out = {}
for path in sys.argv[1:]:
    with open(path) as f:
        out[path] = [d for d in yaml.safe_load_all(f) if d is not None]
print(json.dumps(out))
"#;
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = run_python(SCRIPT, &paths, "");
    assert!(out.status.success(), "reading YAML: {}", stderr(&out));
    let parsed: BTreeMap<String, Vec<Value>> =
        serde_json::from_slice(&out.stdout).expect("JSON from python3");
    parsed
        .into_iter()
        .map(|(k, v)| (PathBuf::from(k), v))
        .collect()
}

fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("reading a directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// One Kubernetes object and the file it is in.
#[derive(Debug, Clone)]
struct Manifest {
    file: PathBuf,
    doc: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn at(&self) -> String {
        format!("{} ({} {})", self.file.display(), self.kind(), self.name())
    }
}

/// The objects under deploy/kubernetes, and the kustomizations apart.
fn manifests() -> (Vec<Manifest>, Vec<Manifest>) {
    let files = files_under(&deploy().join("kubernetes"), "yaml");
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    let mut objects = Vec::new();
    let mut kustomizations = Vec::new();
    for (file, docs) in yaml_documents(&files) {
        assert!(!docs.is_empty(), "{}: no document", file.display());
        for doc in docs {
            let m = Manifest {
                file: file.clone(),
                doc,
            };
            if m.kind() == "Kustomization" {
                kustomizations.push(m);
            } else {
                objects.push(m);
            }
        }
    }
    (objects, kustomizations)
}

fn is_cert_manager(m: &Manifest) -> bool {
    m.doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("cert-manager.io/"))
}

/// The API groups kubernetes-validate has schemas for (the built-in ones).
fn is_built_in(m: &Manifest) -> bool {
    let api = m.doc["apiVersion"].as_str().unwrap_or_default();
    match api.split_once('/') {
        None => api == "v1",
        Some((group, _)) => !group.contains('.') || group.ends_with(".k8s.io"),
    }
}

/// Runs kubernetes-validate over `docs` (each written to a file named
/// after where it came from) for Kubernetes `version`, or for the newest
/// it knows when `None`.
fn kubernetes_validate(docs: &[&Manifest], dir: &Path, version: Option<&str>) -> Output {
    let mut files = Vec::new();
    for (i, m) in docs.iter().enumerate() {
        let name = m
            .file
            .strip_prefix(deploy())
            .unwrap_or(&m.file)
            .display()
            .to_string()
            .replace('/', "_");
        let path = dir.join(format!("{i:02}-{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&m.doc).expect("JSON")).expect("write");
        files.push(path);
    }
    let mut command = Command::new(python3());
    command.args(["-m", "kubernetes_validate", "--strict", "--no-warn"]);
    if let Some(version) = version {
        command.args(["--kubernetes-version", version]);
    }
    let out = command
        .args(&files)
        .output()
        .expect("python3 -m kubernetes_validate");
    let err = stderr(&out);
    assert!(!err.contains("No module named"), "{err}\n{PIP_HINT}");
    out
}

/// Validates cert-manager objects against cloudcoil's models of
/// cert-manager's CRDs: types, enums and required fields by the model, and
/// unknown keys by a round trip (a key the model does not know is dropped
/// by it, which is reported). Prints one line per problem.
const CERT_MANAGER_CHECK: &str = r#"
import json, sys
from cloudcoil.models.cert_manager import v1
problems = []
def dropped(given, kept, path):
    if isinstance(given, dict):
        for k, v in given.items():
            if not isinstance(kept, dict) or k not in kept:
                problems.append(f"{path}.{k}: not a field of the cert-manager schema")
            else:
                dropped(v, kept[k], f"{path}.{k}")
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (g, k) in enumerate(zip(given, kept)):
            dropped(g, k, f"{path}[{i}]")
docs = json.load(sys.stdin)
for at, doc in docs:
    if doc.get("apiVersion") != "cert-manager.io/v1":
        problems.append(f"{at}: apiVersion {doc.get('apiVersion')} is not cert-manager.io/v1")
        continue
    model = getattr(v1, doc.get("kind", ""), None)
    if model is None:
        problems.append(f"{at}: cert-manager.io/v1 has no kind {doc.get('kind')}")
        continue
    try:
        parsed = model.model_validate(doc)
    except Exception as e:
        problems.append(f"{at}: {e}")
        continue
    dropped(doc, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"), at)
for p in problems:
    print(p)
print(f"checked {len(docs)}")
sys.exit(1 if problems else 0)
"#;

fn cert_manager_validate(docs: &[&Manifest]) -> Output {
    let input: Vec<Value> = docs.iter().map(|m| json!([m.at(), m.doc])).collect();
    run_python(CERT_MANAGER_CHECK, &[], &Value::Array(input).to_string())
}

#[test]
fn every_manifest_validates_against_the_kubernetes_or_cert_manager_schema() {
    let (objects, _) = manifests();
    let (built_in, rest): (Vec<&Manifest>, Vec<&Manifest>) =
        objects.iter().partition(|m| is_built_in(m));
    let (cert_manager, unknown): (Vec<&Manifest>, Vec<&Manifest>) =
        rest.into_iter().partition(|m| is_cert_manager(m));
    assert!(
        unknown.is_empty(),
        "no schema to check these against: {:?}",
        unknown.iter().map(|m| m.at()).collect::<Vec<_>>()
    );
    let kinds: BTreeSet<&str> = built_in.iter().map(|m| m.kind()).collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "StatefulSet",
        "Deployment",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(kind), "no {kind} among {kinds:?}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // The oldest version the manifests are for, and the newest the
    // validator knows (nothing they use was removed since).
    for version in [Some(KUBERNETES_VERSION), None] {
        let out = kubernetes_validate(&built_in, dir.path(), version);
        assert!(
            out.status.success(),
            "kubernetes-validate {}:\n{}{}",
            version.unwrap_or("(newest)"),
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(
            stdout(&out).matches(" passed for resource ").count(),
            built_in.len(),
            "{}",
            stdout(&out)
        );
    }

    // The validator is strict: a key Kubernetes does not know fails it.
    let mut broken = built_in
        .iter()
        .find(|m| m.kind() == "StatefulSet")
        .map(|m| (*m).clone())
        .expect("a StatefulSet");
    broken.doc["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = json!("Always");
    let out = kubernetes_validate(&[&broken], dir.path(), Some(KUBERNETES_VERSION));
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("restartPolicyy"), "{}", stdout(&out));

    let certificates = cert_manager
        .iter()
        .filter(|m| m.kind() == "Certificate")
        .count();
    let issuers = cert_manager.iter().filter(|m| m.kind() == "Issuer").count();
    assert!(
        certificates >= 3 && issuers >= 2,
        "{certificates} {issuers}"
    );
    let out = cert_manager_validate(&cert_manager);
    assert!(
        out.status.success(),
        "cert-manager objects:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains(&format!("checked {}", cert_manager.len())),
        "{}",
        stdout(&out)
    );

    // And so is the cert-manager check: a misspelt key, a wrong enum value.
    let mut misspelt = cert_manager
        .iter()
        .find(|m| m.kind() == "Certificate")
        .map(|m| (*m).clone())
        .expect("a Certificate");
    misspelt.doc["spec"]["secretname"] = json!("typo");
    misspelt.doc["spec"]["privateKey"]["algorithm"] = json!("DSA");
    let out = cert_manager_validate(&[&misspelt]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let said = stdout(&out);
    assert!(said.contains("algorithm"), "{said}");
    misspelt.doc["spec"]["privateKey"]["algorithm"] = json!("ECDSA");
    let out = cert_manager_validate(&[&misspelt]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(".spec.secretname: not a field"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn kustomizations_name_every_manifest_once() {
    let (objects, kustomizations) = manifests();
    let mut listed: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for k in &kustomizations {
        let dir = k.file.parent().expect("a directory");
        for resource in k.doc["resources"].as_array().expect("resources") {
            let path = dir.join(resource.as_str().expect("a path"));
            assert!(path.exists(), "{}: {} is missing", k.at(), path.display());
            if path.is_dir() {
                assert!(
                    path.join("kustomization.yaml").exists(),
                    "{}: {} has no kustomization.yaml",
                    k.at(),
                    path.display()
                );
            } else {
                *listed.entry(path).or_default() += 1;
            }
        }
    }
    let files: BTreeSet<&PathBuf> = objects.iter().map(|m| &m.file).collect();
    for file in files {
        assert_eq!(
            listed.get(file),
            Some(&1),
            "{} must be listed in exactly one kustomization.yaml",
            file.display()
        );
    }
}

/// A duration as the configuration writes it: `20s`, `2m`, `500ms`.
fn seconds(duration: &str) -> f64 {
    let split = duration
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(duration.len());
    let (n, unit) = duration.split_at(split);
    let n: f64 = n.parse().expect("a number");
    match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => panic!("unit of {duration}"),
    }
}

/// The path prefix under which the manifests mount the certificate Secret.
const TLS_MOUNT: &str = "/etc/intransit/tls";
/// Where the ConfigMap is mounted, and the file the proxy is given.
const CONFIG_MOUNT: &str = "/etc/intransit/config";
const CONFIG_KEY: &str = "intransit.toml";

/// One intransit deployment: the ConfigMap's configuration and the pod
/// template that runs it.
struct ProxyPod {
    config_map: Manifest,
    config: String,
    parsed: toml::Table,
    workload: Manifest,
}

impl ProxyPod {
    fn pod(&self) -> &Value {
        &self.workload.doc["spec"]["template"]["spec"]
    }

    fn sidecar(&self) -> &Value {
        self.pod()["initContainers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "intransit"))
            .unwrap_or_else(|| panic!("{}: no init container intransit", self.workload.at()))
    }

    /// The sidecar's port `name`, resolved to its number.
    fn port(&self, name: &Value) -> u64 {
        if let Some(n) = name.as_u64() {
            return n;
        }
        self.sidecar()["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["name"] == *name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no port {name}", self.workload.at()))
    }

    fn admin_port(&self) -> u64 {
        let admin = self.parsed["admin"].as_str().expect("admin");
        let addr: SocketAddr = admin.parse().expect("admin address");
        u64::from(addr.port())
    }

    fn listener_ports(&self) -> Vec<(String, u64)> {
        self.parsed["listener"]
            .as_array()
            .expect("listeners")
            .iter()
            .map(|l| {
                let listen: SocketAddr = l["listen"]
                    .as_str()
                    .expect("listen")
                    .parse()
                    .expect("an address");
                (
                    l.get("mode")
                        .and_then(|m| m.as_str())
                        .unwrap_or("server")
                        .to_owned(),
                    u64::from(listen.port()),
                )
            })
            .collect()
    }
}

fn proxy_pods(objects: &[Manifest]) -> Vec<ProxyPod> {
    let mut pods = Vec::new();
    for cm in objects.iter().filter(|m| m.kind() == "ConfigMap") {
        let Some(config) = cm.doc["data"][CONFIG_KEY].as_str() else {
            continue;
        };
        let workload = objects
            .iter()
            .filter(|m| matches!(m.kind(), "StatefulSet" | "Deployment"))
            .find(|w| {
                w.doc["spec"]["template"]["spec"]["volumes"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|v| v["configMap"]["name"] == cm.name()))
            })
            .unwrap_or_else(|| panic!("{}: no workload mounts it", cm.at()));
        pods.push(ProxyPod {
            config_map: cm.clone(),
            config: config.to_owned(),
            parsed: config
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", cm.at())),
            workload: workload.clone(),
        });
    }
    pods
}

/// Certificate files laid out as Kubernetes mounts a Secret volume: the
/// files in a timestamped directory, `..data` pointing at it, and each
/// name a symlink through `..data`.
fn secret_volume(dir: &Path, chain: &Path, key: &Path, ca: &Path) {
    use std::os::unix::fs::symlink;
    let data = dir.join("..2026_12_01_00_00_00.000000001");
    std::fs::create_dir_all(&data).expect("mkdir");
    for (name, from) in [("tls.crt", chain), ("tls.key", key), ("ca.crt", ca)] {
        std::fs::copy(from, data.join(name)).expect("copy");
        symlink(format!("..data/{name}"), dir.join(name)).expect("symlink");
    }
    symlink(data.file_name().expect("name"), dir.join("..data")).expect("symlink");
}

/// The certificate cert-manager would issue into the Secret that `pod`
/// mounts at TLS_MOUNT, made by `ca` with that Certificate's names and
/// usages (as extended and key usages), laid out as the Secret volume:
/// `tls.crt` (leaf and CA), `tls.key`, `ca.crt`.
fn certificate_for(pod: &ProxyPod, objects: &[Manifest], ca: &RawCa, dir: &Path) -> PathBuf {
    let mount = pod.sidecar()["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == TLS_MOUNT))
        .unwrap_or_else(|| panic!("{}: nothing mounted at {TLS_MOUNT}", pod.workload.at()));
    let volume = pod.pod()["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .expect("the volume");
    let secret = volume["secret"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: {TLS_MOUNT} is not a Secret", pod.workload.at()));
    let certificate = objects
        .iter()
        .find(|m| m.kind() == "Certificate" && m.doc["spec"]["secretName"] == secret)
        .unwrap_or_else(|| panic!("no cert-manager Certificate writes the Secret {secret}"));
    let spec = &certificate.doc["spec"];
    let strings = |key: &str| -> Vec<String> {
        spec[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ia5 = |s: &str| rcgen::string::Ia5String::try_from(s).expect("an IA5 string");
    let cn = spec["commonName"].as_str().unwrap_or(secret);
    let (files, _) = ca.client(cn, |params| {
        params.subject_alt_names = strings("dnsNames")
            .iter()
            .map(|d| rcgen::SanType::DnsName(ia5(d)))
            .chain(strings("uris").iter().map(|u| rcgen::SanType::URI(ia5(u))))
            .collect();
        params.extended_key_usages.clear();
        params.key_usages.clear();
        for usage in strings("usages") {
            match usage.as_str() {
                "server auth" => params
                    .extended_key_usages
                    .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth),
                "client auth" => params
                    .extended_key_usages
                    .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth),
                "digital signature" => params
                    .key_usages
                    .push(rcgen::KeyUsagePurpose::DigitalSignature),
                other => panic!("{}: usage {other:?} has no fixture", certificate.at()),
            }
        }
    });
    let chain = dir.join("tls.crt.pem");
    let mut pem = std::fs::read_to_string(&files.cert).expect("leaf");
    pem.push_str(&std::fs::read_to_string(&ca.ca).expect("CA"));
    std::fs::write(&chain, pem).expect("write");
    let volume = dir.join("tls");
    secret_volume(&volume, &chain, &files.key, &ca.ca);
    volume
}

/// `text` with each `(from, to)` replaced, every `from` required to be there
/// (so a changed manifest fails here instead of testing something else).
fn replaced(text: &str, pairs: &[(&str, String)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        assert!(out.contains(from), "{from:?} is not in\n{out}");
        out = out.replace(from, to);
    }
    out
}

#[test]
fn configmap_configurations_pass_check_config_and_the_pods_agree_with_them() {
    let (objects, _) = manifests();
    let pods = proxy_pods(&objects);
    let modes: BTreeSet<String> = pods
        .iter()
        .flat_map(|p| p.listener_ports().into_iter().map(|(mode, _)| mode))
        .collect();
    assert_eq!(
        modes,
        BTreeSet::from(["client".to_owned(), "server".to_owned()]),
        "a server-mode and a client-mode example"
    );
    let ca = RawCa::new("orders CA");
    for pod in &pods {
        let at = pod.workload.at();
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = certificate_for(pod, &objects, &ca, dir.path());
        let config = replaced(&pod.config, &[(TLS_MOUNT, tls.display().to_string())]);
        let path = dir.path().join(CONFIG_KEY);
        std::fs::write(&path, &config).expect("write");
        // The sidecar's own arguments, the configuration path mapped.
        let args: Vec<String> = pod.sidecar()["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("a string").to_owned())
            .collect();
        let (last, flags) = args.split_last().expect("arguments");
        assert_eq!(last, &format!("{CONFIG_MOUNT}/{CONFIG_KEY}"), "{at}");
        assert_eq!(flags.last().map(String::as_str), Some("proxy"), "{at}");
        let out = Command::new(BIN)
            .args(&flags[..flags.len() - 1])
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("check-config");
        assert!(
            out.status.success(),
            "{}: check-config:\n{}{}",
            pod.config_map.at(),
            stdout(&out),
            stderr(&out)
        );
        let config_volume = pod.sidecar()["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["mountPath"] == CONFIG_MOUNT))
            .map(|m| m["name"].clone())
            .unwrap_or_else(|| panic!("{at}: nothing mounted at {CONFIG_MOUNT}"));
        assert!(
            pod.pod()["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .any(|v| v["name"] == config_volume
                    && v["configMap"]["name"] == pod.config_map.name()),
            "{at}: {CONFIG_MOUNT} is not the ConfigMap {}",
            pod.config_map.name()
        );

        // A native sidecar.
        assert_eq!(pod.sidecar()["restartPolicy"], "Always", "{at}");

        // Probes on the admin server: liveness /healthz, readiness /readyz,
        // over HTTPS exactly when the admin server has TLS.
        let scheme = if pod.parsed.contains_key("admin_tls") {
            "HTTPS"
        } else {
            "HTTP"
        };
        for (probe, path) in [
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ] {
            let get = &pod.sidecar()[probe]["httpGet"];
            assert_eq!(get["path"], path, "{at}: {probe}");
            assert_eq!(get["scheme"], scheme, "{at}: {probe}");
            assert_eq!(
                pod.port(&get["port"]),
                pod.admin_port(),
                "{at}: {probe} port"
            );
        }
        // Every listener's port is declared on the sidecar (client mode's
        // stays on loopback, and needs none).
        for (mode, port) in pod.listener_ports() {
            if mode == "server" {
                assert!(
                    pod.sidecar()["ports"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["containerPort"] == port)),
                    "{at}: listener port {port} is not a container port"
                );
            }
        }

        // The grace period covers every preStop sleep and the drain.
        let grace = pod.pod()["terminationGracePeriodSeconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("{at}: no terminationGracePeriodSeconds"));
        let drain = seconds(
            pod.parsed
                .get("shutdown_grace")
                .and_then(|v| v.as_str())
                .unwrap_or("30s"),
        );
        let containers: Vec<&Value> = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod.pod()[*k].as_array().into_iter().flatten())
            .collect();
        let sleeps: f64 = containers
            .iter()
            .filter_map(|c| c["lifecycle"]["preStop"]["sleep"]["seconds"].as_f64())
            .sum();
        assert!(sleeps > 0.0, "{at}: no preStop sleep");
        assert!(
            grace > drain + sleeps,
            "{at}: terminationGracePeriodSeconds {grace} must exceed shutdown_grace {drain} + preStop sleeps {sleeps}"
        );

        // Every container: non-root, read-only root, no privilege
        // escalation, no capabilities, resource requests.
        let pod_non_root = pod.pod()["securityContext"]["runAsNonRoot"] == true;
        for c in containers {
            let name = &c["name"];
            let sc = &c["securityContext"];
            assert!(
                pod_non_root || sc["runAsNonRoot"] == true,
                "{at}: {name} may run as root"
            );
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}: {name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}: {name}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{at}: {name}");
            assert!(sc["capabilities"]["add"].is_null(), "{at}: {name}");
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"]["requests"][resource].is_string(),
                    "{at}: {name} requests no {resource}"
                );
            }
        }
    }
}

#[test]
fn the_service_and_network_policies_admit_the_proxy_port_only() {
    let (objects, _) = manifests();
    let pods = proxy_pods(&objects);
    let server = pods
        .iter()
        .find(|p| p.listener_ports().iter().any(|(mode, _)| mode == "server"))
        .expect("a server-mode pod");
    let labels = &server.workload.doc["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| -> bool {
        selector
            .as_object()
            .is_some_and(|s| s.iter().all(|(k, v)| labels[k.as_str()] == *v))
    };
    let proxy_ports: BTreeSet<u64> = server
        .listener_ports()
        .into_iter()
        .filter(|(mode, _)| mode == "server")
        .map(|(_, port)| port)
        .collect();
    let admin = server.admin_port();

    let services: Vec<&Manifest> = objects
        .iter()
        .filter(|m| m.kind() == "Service" && selects(&m.doc["spec"]["selector"]))
        .collect();
    assert_eq!(services.len(), 1, "one Service for the database");
    for port in services[0].doc["spec"]["ports"].as_array().expect("ports") {
        let target = server.port(&port["targetPort"]);
        assert!(
            proxy_ports.contains(&target),
            "{}: port {port} is not the proxy's ({proxy_ports:?})",
            services[0].at()
        );
    }
    assert_eq!(
        server.workload.doc["spec"]["serviceName"],
        services[0].name(),
        "the StatefulSet's serviceName"
    );

    // PostgreSQL has no TCP port: no listen_addresses, no containerPort.
    let postgres = server.pod()["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "postgres"))
        .expect("the postgres container");
    assert!(postgres["ports"].is_null(), "PostgreSQL exposes a port");
    let args = postgres["args"].to_string();
    assert!(args.contains("\"listen_addresses=\""), "{args}");
    assert!(
        server.parsed["listener"][0]["upstream"]
            .as_str()
            .is_some_and(|u| u.starts_with("unix:")),
        "the proxy reaches PostgreSQL over its unix socket"
    );

    let policies: Vec<&Manifest> = objects
        .iter()
        .filter(|m| {
            m.kind() == "NetworkPolicy" && selects(&m.doc["spec"]["podSelector"]["matchLabels"])
        })
        .collect();
    assert!(!policies.is_empty(), "no NetworkPolicy for the database");
    let mut admitted_from_anywhere = BTreeSet::new();
    for policy in &policies {
        assert_eq!(
            policy.doc["spec"]["policyTypes"],
            json!(["Ingress"]),
            "{}",
            policy.at()
        );
        for rule in policy.doc["spec"]["ingress"].as_array().expect("ingress") {
            let ports = rule["ports"].as_array().unwrap_or_else(|| {
                panic!("{}: a rule without ports admits every port", policy.at())
            });
            for port in ports {
                let n = server.port(&port["port"]);
                if proxy_ports.contains(&n) {
                    if rule["from"].is_null() {
                        admitted_from_anywhere.insert(n);
                    }
                } else {
                    assert_eq!(n, admin, "{}: admits port {n}", policy.at());
                    assert!(
                        rule["from"].as_array().is_some_and(|f| !f.is_empty()),
                        "{}: the admin port from anywhere",
                        policy.at()
                    );
                }
            }
        }
    }
    assert_eq!(admitted_from_anywhere, proxy_ports);
}

/// A client configuration that accepts any server certificate, as the
/// kubelet's HTTPS probes and `insecure_skip_verify` do.
#[derive(Debug)]
struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// GET over HTTPS as a probe does it: status code and body.
fn https_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = Vec::new();
    if let Err(e) = tls.read_to_end(&mut response) {
        // A server that closes without close_notify ends the body too.
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

#[test]
fn the_configmap_configurations_run_as_a_tunnel_and_answer_the_probes() {
    let (objects, _) = manifests();
    let pods = proxy_pods(&objects);
    let in_mode = |mode: &str| {
        pods.iter()
            .find(|p| p.listener_ports().iter().any(|(m, _)| m == mode))
            .unwrap_or_else(|| panic!("no {mode}-mode pod"))
    };
    let server = in_mode("server");
    let client = in_mode("client");
    let user = db_user("deploy_tunnel");
    let dir = tempfile::tempdir().expect("temp dir");

    // The database's pod, in front of the test PostgreSQL's socket.
    let ca = RawCa::new("orders CA");
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).expect("mkdir");
    let tls = certificate_for(server, &objects, &ca, &server_dir);
    let config = replaced(
        &server.config,
        &[
            (TLS_MOUNT, tls.display().to_string()),
            (
                "listen = \"0.0.0.0:5432\"",
                "listen = \"127.0.0.1:0\"".to_owned(),
            ),
            (
                "admin = \"0.0.0.0:8432\"",
                "admin = \"127.0.0.1:0\"".to_owned(),
            ),
            (
                "upstream = \"unix:/var/run/postgresql/.s.PGSQL.5432\"",
                format!("upstream = \"unix:{}\"", pg().socket_path().display()),
            ),
            (
                "users = [\"orders\"]",
                format!("users = [\"{}\"]", user.name),
            ),
        ],
    );
    let database = ProxyProcess::start(&config);

    // The application's pod, its upstream the proxy above, under the name
    // the Service gives it.
    let upstream = client.parsed["listener"][0]["upstream"]
        .as_str()
        .expect("upstream");
    let (host, _) = upstream.rsplit_once(':').expect("host:port");
    let client_dir = dir.path().join("client");
    std::fs::create_dir_all(&client_dir).expect("mkdir");
    let tls = certificate_for(client, &objects, &ca, &client_dir);
    let config = replaced(
        &client.config,
        &[
            (TLS_MOUNT, tls.display().to_string()),
            (
                "listen = \"127.0.0.1:5432\"",
                "listen = \"127.0.0.1:0\"".to_owned(),
            ),
            (
                "admin = \"0.0.0.0:8432\"",
                "admin = \"127.0.0.1:0\"".to_owned(),
            ),
            (
                &format!("upstream = \"{upstream}\""),
                format!("upstream = \"127.0.0.1:{}\"", database.port()),
            ),
            (
                "[listener.upstream_tls]",
                format!("[listener.upstream_tls]\nserver_name = \"{host}\""),
            ),
        ],
    );
    let app = ProxyProcess::start(&config);

    // The application speaks plaintext to its sidecar.
    let out = psql(
        &format!(
            "host=127.0.0.1 port={} user={u} dbname={u} sslmode=disable",
            app.port(),
            u = user.name
        ),
        "SELECT current_user",
        None,
    );
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(stdout(&out), user.name);

    // The probes, as the kubelet sends them.
    for proxy in [&database, &app] {
        let admin = proxy.admin_addr();
        let (status, body) = https_get(admin, "/healthz");
        assert_eq!((status, body.trim()), (200, "ok"));
        let (status, body) = https_get(admin, "/readyz");
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("ready"), "{body}");
    }
    // The server-mode proxy admitted the tunnel by the identity its
    // allow-list names.
    let (status, body) = https_get(database.admin_addr(), "/metrics");
    assert_eq!(status, 200);
    let identity = server.parsed["listener"][0]["tls"]["allow"][0]
        .as_str()
        .expect("an allow entry");
    let ok = Metrics::parse(&body).sum(
        "intransit_handshakes_total",
        &[("outcome", "ok"), ("identity", identity)],
    );
    assert_eq!(ok, 1.0, "{body}");
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let promtool = promtool();
    let run = |args: &[&str]| -> Output {
        Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool")
    };
    let out = run(&["check", "rules", "intransit-rules.yml"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let out = run(&["test", "rules", "intransit-rules.test.yml"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("SUCCESS"), "{}", stdout(&out));

    // Every alert has a unit test in which it fires.
    let docs = yaml_documents(&[
        dir.join("intransit-rules.yml"),
        dir.join("intransit-rules.test.yml"),
    ]);
    let alerts: BTreeSet<String> = docs[&dir.join("intransit-rules.yml")]
        .iter()
        .flat_map(|d| d["groups"].as_array().cloned().unwrap_or_default())
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    let firing: BTreeSet<String> = docs[&dir.join("intransit-rules.test.yml")]
        .iter()
        .flat_map(|d| d["tests"].as_array().cloned().unwrap_or_default())
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()))
        .filter_map(|a| a["alertname"].as_str().map(str::to_owned))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let untested: Vec<&String> = alerts.difference(&firing).collect();
    assert!(
        untested.is_empty(),
        "no test expects these to fire: {untested:?}"
    );

    // The scrape configuration. Debian's Prometheus is built without
    // Kubernetes service discovery, so its promtool cannot parse
    // kubernetes_sd_configs: that block becomes a static target, and
    // everything else (TLS settings, relabelling, rule files) is checked
    // as written.
    let text = std::fs::read_to_string(dir.join("prometheus.yml")).expect("prometheus.yml");
    let checked = replaced(
        &text,
        &[(
            "    kubernetes_sd_configs:\n      - role: pod\n",
            "    static_configs:\n      - targets: [\"127.0.0.1:8432\"]\n".to_owned(),
        )],
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("prometheus.yml"), checked).expect("write");
    std::fs::copy(
        dir.join("intransit-rules.yml"),
        tmp.path().join("intransit-rules.yml"),
    )
    .expect("copy");
    let out = Command::new(&promtool)
        .args(["check", "config", "prometheus.yml"])
        .current_dir(tmp.path())
        .output()
        .expect("promtool");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("Checking intransit-rules.yml"),
        "{}",
        stdout(&out)
    );
}

/// A selector in a PromQL expression: the metric name and the label
/// matchers written with it (`label`, operator, value).
#[derive(Debug, PartialEq)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// The selectors of a PromQL expression. A small scanner, not a parser:
/// strings and `[...]` ranges are skipped, `{...}` holds matchers, the
/// parenthesised label lists after `by`, `without`, `on`, `ignoring`,
/// `group_left` and `group_right` are skipped, an identifier followed by
/// `(` is a function or aggregation, keywords and numbers (durations too)
/// are not names, and every other identifier is a metric name. Grafana's
/// `$variables` stand in for values and ranges only.
fn selectors(expr: &str) -> Vec<Selector> {
    const KEYWORDS: [&str; 10] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
    ];
    const MORE_KEYWORDS: [&str; 4] = ["unless", "inf", "nan", "atan2"];
    let chars: Vec<char> = expr.chars().collect();
    let mut out: Vec<Selector> = Vec::new();
    let mut i = 0;
    let mut skip_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            let start = i + 1;
            let mut in_string = false;
            while i < chars.len() && (in_string || chars[i] != '}') {
                if chars[i] == '"' {
                    in_string = !in_string;
                }
                i += 1;
            }
            let body: String = chars[start..i.min(chars.len())].iter().collect();
            let matchers = matchers(&body);
            match out.last_mut() {
                Some(last) if last.matchers.is_empty() && last_was_name(&chars, start - 1) => {
                    last.matchers = matchers
                }
                _ => panic!("a selector without a metric name in {expr:?}"),
            }
            i += 1;
        } else if c == '(' && skip_label_list {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            i += 1;
            skip_label_list = false;
        } else if c.is_ascii_digit()
            || c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            if KEYWORDS.contains(&lower.as_str()) || MORE_KEYWORDS.contains(&lower.as_str()) {
                skip_label_list = matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
            } else if chars.get(next) == Some(&'(') || followed_by_grouping(&chars, next) {
                // A function, or an aggregation (`sum (...)`, `sum by (...)`).
            } else {
                out.push(Selector {
                    metric: word,
                    matchers: Vec::new(),
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Whether the word at `at` is `by` or `without`, so the identifier
/// before it is an aggregation.
fn followed_by_grouping(chars: &[char], at: usize) -> bool {
    let word: String = chars[at.min(chars.len())..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
        .collect();
    matches!(word.to_ascii_lowercase().as_str(), "by" | "without")
}

/// Whether the `{` at `brace` follows a metric name (spaces allowed).
fn last_was_name(chars: &[char], brace: usize) -> bool {
    let mut j = brace;
    while j > 0 && chars[j - 1].is_whitespace() {
        j -= 1;
    }
    j > 0 && (chars[j - 1].is_ascii_alphanumeric() || chars[j - 1] == '_')
}

/// `label op "value"` pairs of a matcher list.
fn matchers(body: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or_else(|| panic!("matcher in {body:?}"));
        let (name, after) = rest.split_at(name_end);
        let after = after.trim_start();
        let op_len = ["=~", "!~", "!=", "="]
            .iter()
            .find(|op| after.starts_with(**op))
            .map(|op| op.len())
            .unwrap_or_else(|| panic!("operator in {body:?}"));
        let (op, after) = after.split_at(op_len);
        let after = after.trim_start();
        assert!(after.starts_with('"'), "value in {body:?}");
        let close = after[1..].find('"').expect("closing quote") + 1;
        out.push((name.to_owned(), op.to_owned(), after[1..close].to_owned()));
        rest = after[close + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    out
}

#[test]
fn the_promql_scanner_tells_metrics_from_functions_labels_and_keywords() {
    let names = |e: &str| -> Vec<String> { selectors(e).into_iter().map(|s| s.metric).collect() };
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (listener, le) (rate(intransit_pool_wait_seconds_bucket{job="$job"}[$__rate_interval]))) > 1"#
        ),
        ["intransit_pool_wait_seconds_bucket"]
    );
    assert_eq!(
        names("sum by (listener, outcome) (rate(a_total{outcome!=\"ok\"}[5m])) / on (listener) group_left sum by (listener) (rate(b_total[5m])) > 0.1 and c > 0.05"),
        ["a_total", "b_total", "c"]
    );
    assert_eq!(
        names("0 < intransit_certificate_not_after_seconds - time() < 7 * 86400"),
        ["intransit_certificate_not_after_seconds"]
    );
    assert_eq!(
        names("x unless x offset 15m or increase(y[15m]) > 0 and 1e3 < z"),
        ["x", "x", "y", "z"]
    );
    assert_eq!(
        names("count without (instance) (up) + topk(3, m)"),
        ["up", "m"]
    );
    assert_eq!(
        selectors(r#"up{job="intransit", instance=~"10[.].*"} == 0"#),
        [Selector {
            metric: "up".to_owned(),
            matchers: vec![
                ("job".to_owned(), "=".to_owned(), "intransit".to_owned()),
                ("instance".to_owned(), "=~".to_owned(), "10[.].*".to_owned()),
            ],
        }]
    );
}

/// Every PromQL expression of the alert rules and the dashboard (panel
/// targets and variable queries), with where it is.
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules = deploy().join("prometheus/intransit-rules.yml");
    for doc in yaml_documents(std::slice::from_ref(&rules))
        .into_values()
        .flatten()
    {
        for group in doc["groups"].as_array().expect("groups") {
            for rule in group["rules"].as_array().expect("rules") {
                let name = rule["alert"]
                    .as_str()
                    .or(rule["record"].as_str())
                    .expect("a name");
                out.push((
                    format!("alert {name}"),
                    rule["expr"].as_str().expect("expr").to_owned(),
                ));
            }
        }
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/intransit-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {}", panel["title"]),
                target["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if var["type"] == "query" {
            // label_values(selector, label): the selector is PromQL.
            let query = var["query"]["query"].as_str().expect("query");
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.rsplit_once(','))
                .map(|(selector, _)| selector)
                .unwrap_or_else(|| panic!("variable query {query}"));
            out.push((format!("variable {}", var["name"]), inner.to_owned()));
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/intransit-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "{title}: id taken"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (
            grid["x"].as_u64().expect("x"),
            grid["w"].as_u64().expect("w"),
        );
        assert!(
            x + w <= 24 && grid["h"].as_u64().is_some() && grid["y"].as_u64().is_some(),
            "{title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            let expr = t["expr"].as_str().expect("expr");
            for var in expr.split('$').skip(1) {
                let name: String = var
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    name.starts_with("__") || variables.contains(name.as_str()),
                    "{title}: ${name} is not a variable"
                );
            }
        }
    }
}

#[test]
fn dashboard_and_alert_rules_query_only_metrics_a_running_proxy_exports() {
    // A pooled listener with a CRL, in front of the test PostgreSQL: every
    // family gets samples once it has served a client, refused one, and
    // refused a reload.
    let user = db_user("deploy_metrics");
    let dir = tempfile::tempdir().expect("temp dir");
    let p = pki();
    let cert = dir.path().join("chain.pem");
    let key = dir.path().join("key.pem");
    std::fs::copy(&p.server.chain, &cert).expect("copy");
    std::fs::copy(&p.server.key, &key).expect("copy");
    let proxy = ProxyProcess::start(&format!(
        r#"{ADMIN_ON}
[[listener]]
name = "pg"
listen = "127.0.0.1:0"
upstream = "unix:{socket}"

[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
crl = "{crl}"

[listener.pool]
server_auth = "trust"
mode = "transaction"
size = 2
"#,
        socket = pg().socket_path().display(),
        cert = cert.display(),
        key = key.display(),
        ca = p.ca.display(),
        crl = p.crl.display(),
    ));
    let ok = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &p.trainer, ""),
        "SELECT 1",
        None,
    );
    assert!(ok.status.success(), "psql: {}", stderr(&ok));
    let refused = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &p.revoked, ""),
        "SELECT 1",
        None,
    );
    assert!(!refused.status.success());
    proxy.refusal("revoked");
    // A cancel request with a key no client holds (counted as unknown).
    let mut cancel = tcp(proxy.port());
    let mut request = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    request.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 9]);
    write(&mut cancel, &request);
    read_to_close(&mut cancel);
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntruncated\n").expect("write");
    proxy.wait_for_log(Duration::from_secs(20), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("TLS reload failed"))
    });

    let scrape = proxy.metrics();
    // Family names and types from the TYPE lines, samples by name.
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    for line in scrape.text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            families.insert(name.to_owned(), kind.to_owned());
        }
    }
    // The series name PromQL sees for a sample, and the family it is of.
    let family_of = |series: &str| -> Option<(String, String)> {
        let candidates = [
            ("_bucket", "histogram"),
            ("_sum", "histogram"),
            ("_count", "histogram"),
            ("_total", "counter"),
            ("", "gauge"),
        ];
        candidates.iter().find_map(|(suffix, kind)| {
            let base = series.strip_suffix(suffix)?;
            (families.get(base).map(String::as_str) == Some(kind))
                .then(|| (base.to_owned(), (*kind).to_owned()))
        })
    };
    let reasons = std::fs::read_to_string(repo_root().join("crates/proxy/src/refusal.rs"))
        .expect("refusal.rs");

    let mut used_families = BTreeSet::new();
    let mut problems = Vec::new();
    let queries = queries();
    assert!(queries.len() >= 25, "{} queries", queries.len());
    for (at, expr) in &queries {
        let found = selectors(expr);
        if found.is_empty() {
            problems.push(format!("{at}: no metric in {expr:?}"));
        }
        for s in found {
            if s.metric == "up" {
                // Prometheus's own series for each scrape.
                if !s.matchers.iter().any(|(l, _, _)| l == "job") {
                    problems.push(format!("{at}: up without a job"));
                }
                continue;
            }
            let Some((family, _)) = family_of(&s.metric) else {
                problems.push(format!(
                    "{at}: {} is not exported (families: {:?})",
                    s.metric,
                    families.keys().collect::<Vec<_>>()
                ));
                continue;
            };
            used_families.insert(family);
            let samples: Vec<&Sample> = scrape
                .samples
                .iter()
                .filter(|x| x.name == s.metric)
                .collect();
            if samples.is_empty() {
                problems.push(format!("{at}: {} has no samples", s.metric));
            }
            for (label, op, value) in &s.matchers {
                if matches!(label.as_str(), "job" | "instance") {
                    continue;
                }
                if !samples.iter().any(|x| x.label(label).is_some()) {
                    problems.push(format!("{at}: {} has no label {label}", s.metric));
                }
                if value.contains('$') {
                    continue;
                }
                let values: Vec<&str> = if op.ends_with('~') {
                    value.split('|').collect()
                } else {
                    vec![value.as_str()]
                };
                for v in values {
                    let known = if label == "outcome" {
                        matches!(v, "ok" | "failed") || reasons.contains(&format!("=> \"{v}\""))
                    } else {
                        samples.iter().any(|x| x.label(label) == Some(v))
                    };
                    if !known {
                        problems.push(format!(
                            "{at}: {}{{{label}=\"{v}\"}} is never exported",
                            s.metric
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // And the dashboard shows every family the proxy exports.
    let on_dashboard: BTreeSet<String> = queries
        .iter()
        .filter(|(at, _)| at.starts_with("panel"))
        .flat_map(|(_, e)| selectors(e))
        .filter_map(|s| family_of(&s.metric).map(|(f, _)| f))
        .collect();
    let missing: Vec<&String> = families
        .keys()
        .filter(|f| !on_dashboard.contains(*f))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
    assert!(used_families.len() >= 12, "{used_families:?}");
}
