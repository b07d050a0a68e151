//! The admin status page in a real headless browser (Debian's chromium,
//! driven through chromedriver's WebDriver API): it loads with no console
//! errors and shows the listeners, readiness reasons and warnings first,
//! each certificate once with its days left on a scale where a 90-day
//! certificate stands next to a 10-year CA, CRLs with their next update
//! coloured by the share of their own validity period left,
//! TLS versions in words, post-quantum key exchange as information, and
//! refusals with the database user when the client sent one. A screenshot
//! is left in the test output directory.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::support::*;

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    fn start() -> Driver {
        let chromedriver = intransit_testkit::require_tool("chromedriver", "chromium-driver")
            .expect("chromedriver");
        intransit_testkit::require_tool("chromium", "chromium").expect("chromium");
        let port = intransit_testkit::free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let driver = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(driver.addr).is_ok() {
                let (status, body) = http_get(driver.addr, "/status");
                if status == 200 && body.contains("\"ready\":true") {
                    return driver;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let text = body.map(|b| b.to_string());
        let (status, answer) = http_request(self.addr, method, path, text.as_deref());
        let value: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|_| panic!("{method} {path}: {status} {answer}"));
        assert_eq!(status, 200, "{method} {path}: {value}");
        value["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test serves, so the page has something of each kind to show:
/// a 10-year CA shared by two routes, a 90-day server certificate, a
/// five-day CRL just issued (fresh by its own period, though due sooner
/// than the certificate thresholds), a week's CRL with three days left
/// (less than half of its period), and one stale CRL shared by a refusing
/// listener (not ready) and an allowing one (a warning).
struct Fixture {
    _dir: tempfile::TempDir,
    _stale: RawCa,
    _ageing: RawCa,
    ca: std::path::PathBuf,
    client: intransit_pki::CertificatePaths,
    config: String,
}

fn fixture() -> Fixture {
    use intransit_pki::{CertificateAuthority, CertificateKind, KeyAlgorithm, Validity};
    let dir = tempfile::tempdir().expect("temp dir");
    let long_lived = CertificateAuthority::generate(
        "intransit ten-year CA",
        KeyAlgorithm::EcdsaP256,
        Validity::days_from_now(3650),
    )
    .expect("CA");
    long_lived.save(&dir.path().join("ca")).expect("saving CA");
    let ca = dir.path().join("ca").join("ca.pem");
    let server = issue(
        &long_lived,
        dir.path(),
        "server",
        CertificateKind::Server,
        "localhost",
        &[],
        Validity::days_from_now(90),
    );
    let client = issue(
        &long_lived,
        dir.path(),
        "pager",
        CertificateKind::Client,
        "pager",
        &[],
        Validity::days_from_now(90),
    );
    let crl = dir.path().join("ca.crl");
    std::fs::write(
        &crl,
        long_lived
            .crl_pem(&[], time::Duration::days(5), 1)
            .expect("CRL"),
    )
    .expect("writing the CRL");

    let stale = RawCa::new("stale CRL CA");
    let stale_crl = stale.dir.path().join("stale.crl");
    let now = time::OffsetDateTime::now_utc();
    stale.write_crl(
        &stale_crl,
        now - time::Duration::days(30),
        now - time::Duration::days(23),
        &[],
        1,
    );
    let ageing = RawCa::new("ageing CRL CA");
    let ageing_crl = ageing.dir.path().join("ageing.crl");
    ageing.write_crl(
        &ageing_crl,
        now - time::Duration::days(4),
        now + time::Duration::days(3),
        &[],
        1,
    );
    let p = pki();
    let crl_listener = |name: &str, ca: &RawCa, crl: &std::path::Path, policy: &str| {
        format!(
            r#"
[[listener]]
name = "{name}"
listen = "127.0.0.1:0"
upstream = "{DEAD_UPSTREAM}"
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
crl = "{crl}"
stale_crl = "{policy}"
"#,
            cert = p.server.chain.display(),
            key = p.server.key.display(),
            ca = ca.ca.display(),
            crl = crl.display(),
        )
    };
    let config = format!(
        r#"{ADMIN_ON}shutdown_grace = "5s"
[[listener]]
name = "pg"
listen = "127.0.0.1:0"
upstream = "{upstream}"
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
crl = "{crl}"
[[listener.route]]
server_name = "b.localhost"
upstream = "{upstream}"
tls = {{ cert = "{cert}", key = "{key}" }}
{refusing}{allowing}{ageing}"#,
        upstream = pg_upstream(),
        cert = server.chain.display(),
        key = server.key.display(),
        ca = ca.display(),
        crl = crl.display(),
        refusing = crl_listener("stale", &stale, &stale_crl, "refuse"),
        allowing = crl_listener("tolerant", &stale, &stale_crl, "allow"),
        ageing = crl_listener("ageing", &ageing, &ageing_crl, "refuse"),
    );
    Fixture {
        _dir: dir,
        _stale: stale,
        _ageing: ageing,
        ca,
        client,
        config,
    }
}

/// A WebDriver session in headless chromium.
struct Browser {
    driver: Driver,
    id: String,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let driver = Driver::start();
        let session = driver.call(
            "POST",
            "/session",
            Some(json!({
                "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": ["--headless", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1366,2200"]
                    },
                    "goog:loggingPrefs": { "browser": "ALL" }
                }}
            })),
        );
        let id = session["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        driver.call(
            "POST",
            &format!("/session/{id}/url"),
            Some(json!({ "url": url })),
        );
        Browser { driver, id }
    }

    /// Runs `script` (a function body) in the page and returns its value.
    fn run(&self, script: &str) -> Value {
        self.driver.call(
            "POST",
            &format!("/session/{}/execute/sync", self.id),
            Some(json!({ "script": script, "args": [] })),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http_request(
            self.driver.addr,
            "DELETE",
            &format!("/session/{}", self.id),
            None,
        );
    }
}

/// What the page drew, read from the DOM in one script.
const READ_PAGE: &str = r##"
const text = (n) => (n ? n.innerText.trim() : null);
const verdicts = [...document.querySelectorAll("#verdicts .verdict")].map((v) => ({
  class: v.className, text: v.innerText }));
const rows = (kind) => [...document.querySelectorAll(`.expiry .row[data-kind=${kind}]`)].map((r) => {
  const track = r.querySelector(".track").getBoundingClientRect().width;
  const bar = r.querySelector(".bar").getBoundingClientRect().width;
  return { key: r.dataset.key, level: r.dataset.level, text: r.innerText, share: bar / track };
});
const refusals = [...document.querySelectorAll("#refusals tbody tr")].map((tr) =>
  [...tr.querySelectorAll("td")].map((td) => td.innerText.trim()));
return {
  body: document.body.innerText,
  verdicts,
  certificates: rows("certificate"),
  crls: rows("crl"),
  refusals,
  notReady: text(document.getElementById("not-ready")),
  warnings: text(document.getElementById("warnings")),
  attentionFirst: document.querySelector("main").firstElementChild.id,
  negotiated: text(document.getElementById("negotiated")),
};
"##;

#[test]
fn the_status_page_shows_listeners_expiry_and_refusals_in_a_browser() {
    let user = db_user("page");
    let f = fixture();
    let proxy = ProxyProcess::start(&f.config);
    let (status, body) = http_get(proxy.admin_addr(), "/status");
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    let pg = state["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "pg")
        .expect("listener pg");
    let port: u16 = pg["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let tls_conninfo = |cert: &intransit_pki::CertificatePaths| {
        format!(
            "host=localhost port={port} user={u} dbname={u} sslmode=verify-full sslrootcert={ca} sslcert={cert} sslkey={key} connect_timeout=10",
            u = user.name,
            ca = f.ca.display(),
            cert = cert.cert.display(),
            key = cert.key.display(),
        )
    };
    let ok = psql(&tls_conninfo(&f.client), "SELECT 1", Some(&user.password));
    assert!(ok.status.success(), "{}", stderr(&ok));
    let stranger = psql(
        &tls_conninfo(&pki().stranger),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!stranger.status.success());
    proxy.refusal("untrusted");
    let plaintext = psql(
        &format!(
            "host=127.0.0.1 port={port} user={u} dbname={u} sslmode=disable connect_timeout=10",
            u = user.name
        ),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!plaintext.status.success());
    proxy.refusal("plaintext_refused");
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == "plaintext_refused"
    });

    // What the page must show, from the JSON it is drawn from.
    let (status, body) = http_get(proxy.admin_addr(), "/status");
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    let routes = &state["listeners"][0]["routes"];
    assert_eq!(state["listeners"][0]["name"], "pg");
    let server_days = routes[0]["certificates"][0]["days_left"].as_i64().unwrap();
    let ca_fingerprint = routes[0]["certificates"][1]["fingerprint_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        routes[1]["certificates"][1]["fingerprint_sha256"], ca_fingerprint,
        "both routes trust the same CA"
    );
    let server_fingerprint = routes[0]["certificates"][0]["fingerprint_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut fingerprints: Vec<&str> = state["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["routes"].as_array().unwrap())
        .flat_map(|r| r["certificates"].as_array().unwrap())
        .map(|c| c["fingerprint_sha256"].as_str().unwrap())
        .collect();
    let listed = fingerprints.len();
    fingerprints.sort_unstable();
    fingerprints.dedup();
    assert!(fingerprints.len() < listed, "some certificate is shared");
    let refusals = state["recent_refusals"].as_array().unwrap();
    let plaintext_refusal = refusals
        .iter()
        .find(|r| r["outcome"] == "plaintext_refused")
        .expect("plaintext refusal in /status");
    // The StartupMessage named the user, though it came without TLS.
    assert_eq!(plaintext_refusal["db_user"], user.name.as_str());
    assert_eq!(plaintext_refusal["db_name"], user.name.as_str());
    assert_eq!(state["ready"], false);
    let not_ready = state["not_ready"][0].as_str().unwrap().to_owned();
    let warning = state["warnings"][0].as_str().unwrap().to_owned();
    assert!(not_ready.contains("listener stale"), "{not_ready}");
    assert!(warning.contains("listener tolerant"), "{warning}");

    let browser = Browser::open(&format!("http://{}/", proxy.admin_addr()));
    // The script sets data-loaded once it has drawn /status.
    let deadline = Instant::now() + Duration::from_secs(20);
    while browser.run("return document.body.dataset.loaded === 'true'") != json!(true) {
        assert!(Instant::now() < deadline, "the page never finished loading");
        std::thread::sleep(Duration::from_millis(200));
    }
    let page = browser.run(READ_PAGE);
    let text = page["body"].as_str().unwrap();
    assert!(text.contains("Listeners and policy"), "{text}");
    assert!(
        text.contains("pg\npostgres")
            || text.contains("pg postgres")
            || text.contains("pg\tpostgres"),
        "{text}"
    );
    // The page fetched /status a moment later than the test: a day
    // boundary may have passed in between.
    assert!(
        text.contains(&format!("{server_days} days left"))
            || text.contains(&format!("{} days left", server_days - 1)),
        "expected {server_days} days left in:\n{text}"
    );
    assert!(text.contains("Is everything TLS 1.3?"), "{text}");
    assert!(text.contains("TLS material reloads"), "{text}");
    assert!(text.contains("in service"), "{text}");

    // Readiness reasons and warnings come first, in full.
    assert_eq!(page["attentionFirst"], "attention", "{page:#}");
    assert!(
        page["notReady"].as_str().unwrap_or("").contains(&not_ready),
        "{page:#}"
    );
    assert!(
        page["warnings"].as_str().unwrap_or("").contains(&warning),
        "{page:#}"
    );

    // Versions in words, on the page; /status keeps rustls' names.
    assert_eq!(state["handshakes"]["tls_versions"]["TLSv1_3"], 1);
    assert!(!text.contains("TLSv1_3"), "{text}");
    assert!(
        page["negotiated"].as_str().unwrap().contains("TLS 1.3"),
        "{page:#}"
    );

    // Post-quantum key exchange is information: which clients offer
    // ML-KEM is not the proxy's to fix, and nothing requires it.
    let pq = page["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| {
            v["text"]
                .as_str()
                .unwrap()
                .contains("Post-quantum key exchange")
        })
        .expect("post-quantum card");
    assert_eq!(pq["class"], "verdict info", "{pq:#}");
    assert!(
        pq["text"].as_str().unwrap().contains("OpenSSL 3.5"),
        "{pq:#}"
    );

    // Each certificate once; the shared CA names both routes.
    let certs = page["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), fingerprints.len(), "{page:#}");
    let ca_rows: Vec<&Value> = certs
        .iter()
        .filter(|c| c["key"] == ca_fingerprint)
        .collect();
    assert_eq!(ca_rows.len(), 1, "{page:#}");
    let ca_text = ca_rows[0]["text"].as_str().unwrap();
    assert!(
        ca_text.contains("pg / default") && ca_text.contains("pg / b.localhost"),
        "{ca_text}"
    );
    // On the time axis a 90-day certificate is a bar to see next to the
    // 10-year CA, not a sliver (on a linear axis it would be 2.5%).
    let share = |key: &str| {
        certs.iter().find(|c| c["key"] == key).expect("row")["share"]
            .as_f64()
            .unwrap()
    };
    let (server_share, ca_share) = (share(&server_fingerprint), share(&ca_fingerprint));
    assert!(server_share > 0.4, "90-day bar at {server_share}");
    assert!(ca_share > server_share, "{ca_share} vs {server_share}");

    // CRLs with their next update, each coloured by the share of its own
    // validity period left, not by the certificates' 30 and 7 days: the
    // five-day CRL just issued is green, the week's CRL with three days
    // left amber, and the stale one, shared by two listeners, once, red
    // and saying so.
    let crls = page["crls"].as_array().unwrap();
    assert_eq!(crls.len(), 3, "{page:#}");
    let soon = crls
        .iter()
        .find(|c| {
            c["text"]
                .as_str()
                .unwrap()
                .contains("intransit ten-year CA")
        })
        .expect("the five-day CRL");
    assert_eq!(soon["level"], "ok", "{soon:#}");
    // Five days from the CRL's signing, in whole seconds, seen a moment
    // later: 4 days and some hours, or 5 when the second it was signed in
    // has not ended for the page's clock.
    let text = soon["text"].as_str().unwrap();
    assert!(
        text.contains("next update in 4 days") || text.contains("next update in 5 days"),
        "{soon:#}"
    );
    let ageing = crls
        .iter()
        .find(|c| c["text"].as_str().unwrap().contains("ageing CRL CA"))
        .expect("the ageing CRL");
    assert_eq!(ageing["level"], "warn", "{ageing:#}");
    // Three days from its signing, seen a moment later: 2 days and some
    // hours, or 3 when the page's clock is still in the second it was
    // signed in (as for the five-day CRL above).
    let text = ageing["text"].as_str().unwrap();
    assert!(
        text.contains("next update in 2 days") || text.contains("next update in 3 days"),
        "{ageing:#}"
    );
    let stale = crls
        .iter()
        .find(|c| c["text"].as_str().unwrap().contains("stale CRL CA"))
        .expect("the stale CRL");
    assert_eq!(stale["level"], "bad", "{stale:#}");
    let stale_text = stale["text"].as_str().unwrap();
    assert!(
        stale_text.contains("stale")
            && stale_text.contains("stale / default")
            && stale_text.contains("tolerant / default"),
        "{stale_text}"
    );

    // Refusals: the user a plaintext login named; none during TLS.
    let rows = page["refusals"].as_array().unwrap();
    let row_of = |outcome: &str| {
        rows.iter()
            .find(|r| r[5] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} row in {page:#}"))
    };
    assert_eq!(row_of("plaintext_refused")[4], user.name.as_str());
    assert_eq!(row_of("untrusted")[4], "not sent");

    let screenshot =
        browser
            .driver
            .call("GET", &format!("/session/{}/screenshot", browser.id), None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot.as_str().expect("base64 screenshot"))
        .expect("decoding the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("status-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("status page screenshot: {}", shot.display());

    let logs = browser.driver.call(
        "POST",
        &format!("/session/{}/se/log", browser.id),
        Some(json!({ "type": "browser" })),
    );
    let errors: Vec<&Value> = logs
        .as_array()
        .expect("browser log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
