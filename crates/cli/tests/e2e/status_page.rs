//! The admin status page in a real headless browser (Debian's chromium,
//! driven through chromedriver's WebDriver API): it loads with no console
//! errors and shows the listener, a certificate's days left and a refusal
//! the test provoked. A screenshot is left in the test output directory.

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

#[test]
fn the_status_page_shows_listeners_expiry_and_refusals_in_a_browser() {
    let user = db_user("page");
    let config = format!("{ADMIN_ON}{}", listener_toml(&pg_upstream(), "", ""));
    let proxy = ProxyProcess::start(&config);
    let p = pki();
    let ok = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &p.trainer, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let stranger = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &p.stranger, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!stranger.status.success());
    proxy.refusal("untrusted");
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == "untrusted"
    });

    // What the page must show, from the JSON it is drawn from.
    let (status, body) = http_get(proxy.admin_addr(), "/status");
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    let server_days = state["listeners"][0]["routes"][0]["certificates"][0]["days_left"]
        .as_i64()
        .unwrap();
    assert_eq!(state["recent_refusals"][0]["outcome"], "untrusted");
    assert_eq!(state["handshakes"]["outcomes"]["ok"], 1);

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
                             "--disable-dev-shm-usage", "--window-size=1366,900"]
                },
                "goog:loggingPrefs": { "browser": "ALL" }
            }}
        })),
    );
    let id = session["sessionId"]
        .as_str()
        .expect("session id")
        .to_owned();
    let page = format!("http://{}/", proxy.admin_addr());
    driver.call(
        "POST",
        &format!("/session/{id}/url"),
        Some(json!({ "url": page })),
    );

    // The script sets data-loaded once it has drawn /status.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = driver.call(
            "POST",
            &format!("/session/{id}/execute/sync"),
            Some(json!({
                "script": "return document.body.dataset.loaded === 'true' ? document.body.innerText : null",
                "args": []
            })),
        );
        if let Some(t) = text.as_str() {
            break t.to_owned();
        }
        assert!(Instant::now() < deadline, "the page never finished loading");
        std::thread::sleep(Duration::from_millis(200));
    };
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
    assert!(text.contains("untrusted"), "{text}");
    assert!(text.contains("Is everything TLS 1.3?"), "{text}");
    assert!(text.contains("TLS material reloads"), "{text}");
    assert!(text.contains("in service"), "{text}");

    let screenshot = driver.call("GET", &format!("/session/{id}/screenshot"), None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot.as_str().expect("base64 screenshot"))
        .expect("decoding the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("status-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("status page screenshot: {}", shot.display());

    let logs = driver.call(
        "POST",
        &format!("/session/{id}/se/log"),
        Some(json!({ "type": "browser" })),
    );
    let errors: Vec<&Value> = logs
        .as_array()
        .expect("browser log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    driver.call("DELETE", &format!("/session/{id}"), None);
}
