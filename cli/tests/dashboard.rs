//! The dashboard in a real browser: `keel demo` as a process serving its
//! first replica's port (`--http`), and headless Chromium loading the page.
//! Once the controller has committed a finding and an action, the page's
//! DOM (after its scripts polled the JSON) must show the finding with its
//! cause and evidence and the action with its status; and a screenshot of
//! it must come out as a PNG. A `keel controller` process serves the same
//! page and JSON on its own port.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, keel, ok, wait_for, Cluster};

/// The demo, stopped when the test ends however it ends: SIGTERM first, so
/// that it stops what it started (its haproxy), then SIGKILL.
struct Demo(Child);

impl Demo {
    /// SIGTERM, and how it ended if it did within 20 s.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.0.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        wait_for(Duration::from_secs(20), || self.0.try_wait().ok().flatten())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.stop().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One plain HTTP/1.0 GET: the status code and the body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    get_as(addr, path, "localhost")
}

/// [`get`] with this `Host` header.
fn get_as(addr: &str, path: &str, host: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|b| b.1.to_string())?;
    Some((code, body))
}

fn get_json(addr: &str, path: &str) -> Option<Value> {
    match get(addr, path)? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// The browser; the test fails saying what to install when it is missing.
fn chromium() -> &'static str {
    for name in ["chromium", "chromium-browser"] {
        if Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return name;
        }
    }
    panic!(
        "headless Chromium is needed for this test and was not found: \
         install the Debian package `chromium` (apt-get install -y chromium)"
    );
}

/// Runs headless Chromium with `args` (its own profile under `dir`), its
/// standard output into `out`; false if it failed or ran past a minute.
fn run_chromium(browser: &str, dir: &Path, args: &[String], out: &Path) -> bool {
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(dir.join("chromium.log")).unwrap())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Text as the DOM's serialization writes it in an element.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

/// The opening tag of the element whose attributes include `attr`.
fn tag_with<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find(attr)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// An attribute's value in an opening tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let from = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[from..from + tag[from..].find('"')?])
}

#[test]
fn the_demo_serves_a_dashboard_a_browser_renders() {
    let browser = chromium();
    let dir: PathBuf = std::env::temp_dir().join(format!("keel-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.join("demo.log");
    // Four trace seconds a second; it stays up after its run, so the
    // browser has a page to load however slow this machine is.
    let mut demo = Demo(
        keel()
            .args(["demo", "--speed", "4", "--stay", "--http", &addr, "--keep"])
            .arg(dir.join("run"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("demo.err")).unwrap())
            .spawn()
            .expect("starting keel demo"),
    );
    let demo_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // The controller committed a finding with a cause, and an action.
    let (finding, action) = wait_for(Duration::from_secs(120), || {
        let findings = get_json(&addr, "/api/findings")?;
        let actions = get_json(&addr, "/api/actions")?;
        let all = findings.as_array()?;
        let with_cause = |f: &&Value| {
            f["finding"]["cause"].is_string()
                && f["finding"]["evidence"]
                    .as_array()
                    .is_some_and(|e| !e.is_empty())
        };
        // An open one if there is (the page lists every open finding).
        let f = all
            .iter()
            .filter(with_cause)
            .find(|f| f["closed"].is_null())
            .or_else(|| all.iter().find(with_cause))?;
        let a = actions["ledger"].as_array()?.first()?.clone();
        Some((f.clone(), a))
    })
    .unwrap_or_else(|| {
        panic!(
            "no finding and action committed; the demo said:\n{}",
            demo_log()
        )
    });
    assert!(
        demo_log().contains(&format!(
            "dashboard, /metrics, /healthz, /readyz: http://{addr}/"
        )),
        "the demo does not say where its dashboard is:\n{}",
        demo_log()
    );
    assert_eq!(get(&addr, "/healthz").map(|r| r.0), Some(200));
    let page = get(&addr, "/").expect("GET /");
    assert_eq!(page.0, 200);
    assert!(
        page.1.contains("<script>") && !page.1.contains("src=\"http"),
        "the page is not self-contained"
    );

    // The page, rendered and its polls answered, as the browser's DOM.
    let (id, cause) = (
        finding["id"].as_u64().unwrap(),
        finding["finding"]["cause"].as_str().unwrap().to_string(),
    );
    let evidence = finding["finding"]["evidence"][0]
        .as_str()
        .unwrap()
        .to_string();
    let key = action["key"].as_str().unwrap().to_string();
    let dom_file = dir.join("dom.html");
    let url = format!("http://{addr}/");
    let dom = wait_for(Duration::from_secs(90), || {
        let args = [
            "--virtual-time-budget=5000".to_string(),
            "--dump-dom".to_string(),
            url.clone(),
        ];
        if !run_chromium(browser, &dir, &args, &dom_file) {
            return None;
        }
        let dom = std::fs::read_to_string(&dom_file).ok()?;
        (dom.contains(&format!("data-id=\"{id}\"")) && dom.contains(&format!("data-key=\"{key}\"")))
            .then_some(dom)
    })
    .unwrap_or_else(|| {
        panic!(
            "Chromium's DOM never showed finding {id} and action {key}; last DOM:\n{}\nchromium's log:\n{}",
            std::fs::read_to_string(&dom_file).unwrap_or_default(),
            std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default()
        )
    });
    let row = tag_with(&dom, &format!("data-id=\"{id}\"")).unwrap();
    assert!(row.starts_with("<article class=\"finding"), "{row}");
    assert_eq!(attr(row, "data-cause"), Some(cause.as_str()), "{row}");
    assert_eq!(
        attr(row, "data-kind"),
        finding["finding"]["kind"].as_str(),
        "{row}"
    );
    // Its evidence, as text (escaped in the serialization, as all text is).
    let after = &dom[dom.find(row).unwrap()..];
    let end = after.find("</article>").unwrap();
    assert!(
        after[..end].contains(&format!("<li>{}</li>", escaped(&evidence))),
        "finding {id}'s evidence {evidence:?} is not in its row:\n{}",
        &after[..end]
    );
    let row = tag_with(&dom, &format!("data-key=\"{key}\"")).unwrap();
    assert!(row.starts_with("<tr class=\"action\""), "{row}");
    let status = attr(row, "data-status").expect("the action row's status");
    const STATUSES: &[&str] = &[
        "planned",
        "approved",
        "recorded",
        "dispatched",
        "acknowledged",
        "verified",
        "failed",
        "rolled_back",
        "rejected",
        "cancelled",
    ];
    assert!(STATUSES.contains(&status), "{row}");
    let after = &dom[dom.find(row).unwrap()..];
    let end = after.find("</tr>").unwrap();
    assert!(
        after[..end].contains(&format!(">{status}</span>")),
        "action {key}'s status {status} is not shown in its row:\n{}",
        &after[..end]
    );
    assert!(
        after[..end].contains("<ol class=\"audit\"><li"),
        "action {key}'s history is not in its row:\n{}",
        &after[..end]
    );

    // A screenshot of it, its first polls answered.
    let png = dir.join("dashboard.png");
    let args = [
        "--virtual-time-budget=5000".to_string(),
        format!("--screenshot={}", png.display()),
        "--window-size=1400,1000".to_string(),
        url,
    ];
    assert!(
        run_chromium(browser, &dir, &args, &dir.join("screenshot.out")),
        "chromium --screenshot failed:\n{}",
        std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default()
    );
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG ({} bytes)",
        png.display(),
        bytes.len()
    );
    println!("dashboard screenshot: {}", png.display());

    // SIGTERM ends the demo through its summary (its haproxy stopped).
    let status = demo.stop().expect("the demo ignored SIGTERM");
    assert!(status.success(), "the demo ended {status}:\n{}", demo_log());
    if std::env::var_os("KEEL_KEEP_TEST_DIR").is_none() {
        println!("(removed with the test's folder; KEEL_KEEP_TEST_DIR=1 keeps it)");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_controller_serves_the_dashboard_beside_its_metrics() {
    let dir = std::env::temp_dir().join(format!("keel-dashboard-ctl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Cluster::start(&dir, 1);
    // Up (its Raft store made, so that a kill cannot leave half of one),
    // then again, now with its port.
    wait_for(Duration::from_secs(60), || c.ask(0, &["status", "--json"]))
        .unwrap_or_else(|| panic!("the replica never answered:\n{}", c.logs()));
    c.kill("ctl-1");
    let addr = format!("127.0.0.1:{}", free_port());
    c.spawn_with_env(
        "ctl-1b",
        "controller",
        &dir.join("ctl-1.toml"),
        &[("KEEL_HTTP", &addr)],
    );
    wait_for(Duration::from_secs(60), || {
        (get(&addr, "/readyz")?.0 == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("the replica never got ready:\n{}", c.logs()));
    ok(keel()
        .args(["job", "register", "--job", "j-1", "--ranks", "n01=0,1"])
        .args(c.at(0)));

    // The page, and the JSON the commands print over QUIC.
    let (code, page) = get(&addr, "/").unwrap();
    assert_eq!(code, 200);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    let jobs = wait_for(Duration::from_secs(30), || {
        let v = get_json(&addr, "/api/jobs")?;
        (v.as_array()?.len() == 1).then_some(v)
    })
    .expect("the job in /api/jobs");
    let by_command: Value =
        serde_json::from_str(&ok(keel().args(["jobs", "--json"]).args(c.at(0)))).unwrap();
    assert_eq!(jobs, by_command);
    let findings: Value =
        serde_json::from_str(&ok(keel().args(["findings", "--json"]).args(c.at(0)))).unwrap();
    assert_eq!(get_json(&addr, "/api/findings"), Some(findings));
    let status = get_json(&addr, "/api/status").unwrap();
    assert_eq!(status["id"], 1, "{status}");
    assert_eq!(status["leader"], 1, "{status}");
    let actions = get_json(&addr, "/api/actions").unwrap();
    assert_eq!(actions["ledger"], Value::Array(Vec::new()), "{actions}");
    let roles = get_json(&addr, "/api/roles").unwrap();
    assert_eq!(roles["replica"], 1, "{roles}");
    assert!(roles["correlators"].is_array(), "{roles}");
    // Named by address it answers; by a hostname (maybe a rebound one) not.
    assert_eq!(get_as(&addr, "/api/status", &addr).map(|r| r.0), Some(200));
    for path in ["/", "/api/findings"] {
        assert_eq!(
            get_as(&addr, path, "dashboard.example.com").map(|r| r.0),
            Some(403)
        );
    }
    // The metrics are still there.
    let (code, metrics) = get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("keel_raft_leader{role=\"controller\"} 1"),
        "{metrics}"
    );
}
