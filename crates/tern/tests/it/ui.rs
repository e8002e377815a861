//! The mover's admin web UI as an operator uses it: `tern mover --admin ADDR --admin-token FILE` and three
//! `tern node`s as processes. Requests without the session, without its CSRF token or from another site change
//! nothing; a real browser (headless Chromium driven through chromedriver) logs in, sees the three nodes,
//! publishes, rolls back and sees the rollback commit, watches the dashboard refresh itself, and leaves
//! screenshots in `target/ui-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use tern_edge::testsuite::{Got, client, send};

use crate::mover::wait_for_nodes;
use crate::{Running, free_addr, spawn, spawn_node, tern, write};

/// The mover with its UI and three nodes, as processes, with site `www` published once.
struct Fleet {
    dir: tempfile::TempDir,
    _mover: Running,
    _nodes: Vec<Running>,
    mover_url: String,
    /// `http://ADMIN` (the origin of the UI's pages).
    origin: String,
    /// The admin token.
    token: String,
    staging: PathBuf,
}

impl Fleet {
    async fn start() -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
        let keygen = tern().args(["keygen", &path("admin.key")]).output().expect("run");
        assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
        let token = tern_wire::SecretKey::load(Path::new(&path("admin.key")))
            .expect("admin key")
            .token();
        let (mover_addr, admin_addr) = (free_addr(), free_addr());
        let mover = spawn(
            &[
                "mover",
                "--listen",
                &mover_addr.to_string(),
                "--data",
                &path("mover"),
                "--admin",
                &admin_addr.to_string(),
                "--admin-token",
                &path("admin.key"),
            ],
            mover_addr,
        );
        let mover_url = format!("http://{mover_addr}");
        let mut nodes = Vec::new();
        for n in 0..3 {
            let name = format!("node{n}");
            nodes.push(spawn_node(&mover_url, &path(&name), &name, &path("mover/mover.pub"), &[]).0);
        }
        wait_for_nodes(&mover_url, 3).await;
        let staging = dir.path().join("staging");
        write(&staging, "index.html", b"first version");
        let fleet = Fleet {
            _mover: mover,
            _nodes: nodes,
            mover_url,
            origin: format!("http://{admin_addr}"),
            token,
            staging,
            dir,
        };
        fleet.publish();
        fleet
    }

    /// `tern publish` of the staging directory.
    fn publish(&self) {
        let published = tern()
            .args(["publish", "--mover", &self.mover_url, "--site", "www", "--staging"])
            .arg(&self.staging)
            .output()
            .expect("run");
        assert!(
            published.status.success(),
            "{}{}",
            String::from_utf8_lossy(&published.stdout),
            String::from_utf8_lossy(&published.stderr)
        );
    }

    /// What every node serves as `www/index.html`.
    fn live_pages(&self) -> Vec<String> {
        (0..3)
            .map(|n| {
                let page = self.dir.path().join(format!("node{n}/www/live/index.html"));
                String::from_utf8(std::fs::read(page).expect("live page")).expect("utf-8")
            })
            .collect()
    }

    async fn api(&self, path: &str) -> serde_json::Value {
        let got = send(&client(), "GET", &format!("{}{path}", self.mover_url), &[]).await;
        serde_json::from_slice(&got.body).expect("json")
    }

    async fn job_count(&self) -> usize {
        self.api("/api/jobs").await.as_array().map(Vec::len).expect("jobs")
    }

    async fn wait_job(&self, id: &str) -> String {
        for _ in 0..600 {
            let job = self.api(&format!("/api/jobs/{id}")).await;
            let state = job["state"].as_str().unwrap_or("").to_string();
            if ["committed", "failed", "refused", "cancelled"].contains(&state.as_str()) {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not end");
    }
}

/// A `POST` of a form body with `headers`.
async fn post(url: &str, headers: &[(&str, &str)], form: &str) -> Got {
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/x-www-form-urlencoded");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::from(form.to_string()))).expect("request");
    let response = client().request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.map(|b| b.to_bytes()).unwrap_or_default(),
    }
}

/// The value of the first `name="csrf" value="..."` in a page.
fn csrf_of(page: &[u8]) -> String {
    let page = String::from_utf8_lossy(page);
    let start = page.find("name=\"csrf\" value=\"").expect("a form with the CSRF token") + 19;
    page[start..start + 64].to_string()
}

#[tokio::test]
async fn a_post_without_the_session_its_token_or_from_another_site_changes_nothing() {
    let fleet = Fleet::start().await;
    write(&fleet.staging, "index.html", b"second version");
    fleet.publish();
    let ui = format!("{}/ui", fleet.origin);
    let same_origin = ("origin", fleet.origin.as_str());

    // Logging in: a wrong token, or the right one posted from another site, opens no session.
    let wrong = post(
        &format!("{ui}/login"),
        &[same_origin],
        &format!("token={}", "0".repeat(64)),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.headers.get("set-cookie").is_none());
    let token_form = format!("token={}", fleet.token);
    let elsewhere = post(
        &format!("{ui}/login"),
        &[("origin", "http://evil.example")],
        &token_form,
    )
    .await;
    assert_eq!(elsewhere.status, 403);
    assert!(elsewhere.headers.get("set-cookie").is_none());
    let login = post(&format!("{ui}/login"), &[same_origin], &token_form).await;
    assert_eq!(login.status, 303, "{}", String::from_utf8_lossy(&login.body));
    let set_cookie = login.header("set-cookie").to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let cookie = set_cookie.split(';').next().expect("cookie").to_string();
    let page = send(&client(), "GET", &format!("{ui}/jobs"), &[("cookie", &cookie)]).await;
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page.body);
    let anonymous = send(&client(), "GET", &format!("{ui}/jobs"), &[]).await;
    assert_eq!(anonymous.status, 303, "a page without a session goes to the login");
    assert_eq!(anonymous.header("location"), "/ui/login");

    // A rollback asked every wrong way is refused, and no job appears.
    let jobs = fleet.job_count().await;
    let rollback = format!("csrf={csrf}&kind=rollback&site=www");
    let other_token = format!("csrf={}&kind=rollback&site=www", "0".repeat(64));
    let refusals = [
        ("no session", vec![same_origin], rollback.as_str(), 401u16),
        (
            "another site's Origin",
            vec![("cookie", &cookie), ("origin", "http://evil.example")],
            rollback.as_str(),
            403,
        ),
        (
            "Sec-Fetch-Site cross-site",
            vec![("cookie", &cookie), ("sec-fetch-site", "cross-site")],
            rollback.as_str(),
            403,
        ),
        (
            "no CSRF token",
            vec![("cookie", &cookie), same_origin],
            "kind=rollback&site=www",
            403,
        ),
        (
            "another CSRF token",
            vec![("cookie", &cookie), same_origin],
            other_token.as_str(),
            403,
        ),
        (
            "a made-up session",
            vec![("cookie", "tern_session=feed"), same_origin],
            rollback.as_str(),
            401,
        ),
    ];
    for (what, headers, form, status) in refusals {
        let got = post(&format!("{ui}/jobs"), &headers, form).await;
        assert_eq!(got.status, status, "{what}: {}", String::from_utf8_lossy(&got.body));
        assert_eq!(fleet.job_count().await, jobs, "{what}: no job");
    }
    let group = post(
        &format!("{ui}/groups"),
        &[("cookie", &cookie), ("origin", "http://evil.example")],
        &format!("csrf={csrf}&group=evil&node=node0"),
    )
    .await;
    assert_eq!(group.status, 403);
    assert_eq!(fleet.api("/api/groups").await, serde_json::json!({}), "no group made");
    assert_eq!(fleet.live_pages(), ["second version"; 3]);

    // The same rollback from the UI's own page, with the session and its token, does happen.
    let done = post(&format!("{ui}/jobs"), &[("cookie", &cookie), same_origin], &rollback).await;
    assert_eq!(done.status, 303, "{}", String::from_utf8_lossy(&done.body));
    let id = done
        .header("location")
        .strip_prefix("/ui/jobs/")
        .expect("to the job's page")
        .to_string();
    assert!(id.starts_with("rollback-"), "{id}");
    assert_eq!(fleet.wait_job(&id).await, "committed");
    assert_eq!(fleet.live_pages(), ["first version"; 3]);
    let group = post(
        &format!("{ui}/groups"),
        &[("cookie", &cookie), ("sec-fetch-site", "same-origin")],
        &format!("csrf={csrf}&group=eu&node=node0&node=node2"),
    )
    .await;
    assert_eq!(group.status, 303);
    assert_eq!(
        fleet.api("/api/groups").await,
        serde_json::json!({ "eu": ["node0", "node2"] })
    );

    // After logging out the cookie opens nothing.
    let logout = post(
        &format!("{ui}/logout"),
        &[("cookie", &cookie), same_origin],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(logout.status, 303);
    assert!(logout.header("set-cookie").contains("Max-Age=0"));
    let after = post(&format!("{ui}/jobs"), &[("cookie", &cookie), same_origin], &rollback).await;
    assert_eq!(after.status, 401);
    assert_eq!(fleet.job_count().await, jobs + 1);

    // The mover's API, a port a web page can also reach: a publish posted by a page (a "simple" text/plain
    // request, which skips CORS preflight) is refused, whichever of the two fields the browser sends.
    let staging = fleet.staging.to_str().expect("utf-8");
    let job = format!(r#"{{"kind":"publish","site":"www","staging":"{staging}"}}"#);
    for field in [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")] {
        let mut builder =
            http::Request::post(format!("{}/api/jobs", fleet.mover_url)).header("content-type", "text/plain");
        builder = builder.header(field.0, field.1);
        let request = builder.body(Full::new(Bytes::from(job.clone()))).expect("request");
        let response = client().request(request).await.expect("response");
        assert_eq!(response.status(), 403, "{field:?}");
    }
    assert_eq!(fleet.job_count().await, jobs + 1);
}

/// `name` in `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The program named by the environment variable `env` (when set, only that one), or the first of `names`
/// in `PATH`.
fn tool(env: &str, names: &[&str]) -> Option<PathBuf> {
    match std::env::var_os(env) {
        Some(path) => Some(PathBuf::from(path)).filter(|path| path.is_file()),
        None => names.iter().find_map(|name| which(name)),
    }
}

/// chromedriver and the browser it drives: `TERN_CHROMEDRIVER` and `TERN_CHROMIUM`, or Debian's
/// `chromedriver` and `chromium` (packages `chromium-driver` and `chromium`) in `PATH`.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let driver = tool("TERN_CHROMEDRIVER", &["chromedriver"])?;
    let browser = tool("TERN_CHROMIUM", &["chromium", "chromium-browser", "google-chrome"])?;
    Some((driver, browser))
}

/// Starts chromedriver on a free port; its URL.
fn start_chromedriver(driver: &Path) -> (Running, String) {
    let addr = free_addr();
    let child = Command::new(driver)
        .arg(format!("--port={}", addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = running.0.try_wait() {
            panic!("chromedriver exited early with {status}");
        }
        assert!(Instant::now() < deadline, "chromedriver did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (running, format!("http://{addr}"))
}

/// Where screenshots go: `ui-screenshots/` in the target directory.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    // target/debug/deps/it-HASH → target
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    target.join("ui-screenshots")
}

async fn screenshot(browser: &Browser, name: &str) -> PathBuf {
    let png = browser.screenshot().await.expect("screenshot");
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write screenshot");
    println!("screenshot: {}", path.display());
    path
}

/// Waits until the element `css` reads `want` (the page refreshes itself; nothing reloads it here).
async fn wait_text(browser: &Browser, css: &str, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        // The live block is replaced while we look: a vanished element is looked up again.
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.trim() == want {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = browser.current_url().await.map(|u| u.to_string()).unwrap_or_default();
    panic!("{css} on {url} reads {last:?}, not {want:?}, after {timeout:?}");
}

/// Clicks the button `css` and waits until the browser shows a page whose path starts with `path`. The
/// page's refresh may replace the button while it is clicked: it is then looked up again.
async fn click_to(browser: &Browser, css: &str, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut clicked = false;
    while Instant::now() < deadline {
        let url = browser
            .current_url()
            .await
            .map(|u| u.path().to_string())
            .unwrap_or_default();
        if url.starts_with(path) {
            return;
        }
        if !clicked && let Ok(button) = browser.find(Locator::Css(css)).await {
            clicked = button.click().await.is_ok();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = browser.current_url().await.map(|u| u.to_string()).unwrap_or_default();
    panic!("clicking {css} did not lead to {path} within {timeout:?}; at {url}");
}

#[tokio::test]
async fn a_browser_logs_in_sees_the_nodes_and_rolls_back() {
    let Some((driver, chromium)) = browser_tools() else {
        eprintln!(
            "skipped: chromium and chromedriver not found (Debian: apt-get install chromium chromium-driver; or set TERN_CHROMIUM and TERN_CHROMEDRIVER)"
        );
        return;
    };
    let fleet = Fleet::start().await;
    let (_chromedriver, driver_url) = start_chromedriver(&driver);
    let profile = fleet.dir.path().join("chromium-profile");
    let capabilities = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!("an object")
    };
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver_url)
        .await
        .expect("a chromium session through chromedriver");
    let ui = format!("{}/ui", fleet.origin);
    let wait = Duration::from_secs(60);

    // Log in: the UI sends a browser without a session to the login form.
    browser.goto(&format!("{ui}/")).await.expect("open the UI");
    let token = browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css("#token"))
        .await
        .expect("the login form");
    token.send_keys(&fleet.token).await.expect("type the token");
    browser
        .find(Locator::Css("#login button"))
        .await
        .expect("login button")
        .click()
        .await
        .expect("log in");
    wait_text(&browser, "#node-count", "3", wait).await;
    wait_text(&browser, "#version-www", "v1", wait).await;

    // The three nodes, as icons, each marked new (in no content group yet).
    browser.goto(&format!("{ui}/nodes")).await.expect("nodes page");
    let icons = browser
        .find_all(Locator::Css(".node-icon.new"))
        .await
        .expect("node icons");
    let mut names = Vec::new();
    for icon in &icons {
        names.push(icon.attr("data-node").await.expect("attr").unwrap_or_default());
    }
    names.sort();
    assert_eq!(names, ["node0", "node1", "node2"]);
    screenshot(&browser, "nodes.png").await;

    // Publish a second version from the jobs page.
    write(&fleet.staging, "index.html", b"second version");
    browser.goto(&format!("{ui}/jobs")).await.expect("jobs page");
    browser
        .find(Locator::Css("#kind"))
        .await
        .expect("kind")
        .select_by_value("publish")
        .await
        .expect("publish");
    let site = browser.find(Locator::Css("#site")).await.expect("site field");
    site.send_keys("www").await.expect("type the site");
    let staging = browser.find(Locator::Css("#staging")).await.expect("staging field");
    staging
        .send_keys(fleet.staging.to_str().expect("utf-8"))
        .await
        .expect("type the staging directory");
    click_to(&browser, "#submit button[type=submit]", "/ui/jobs/publish-", wait).await;
    wait_text(&browser, "#job-state", "committed", wait).await;
    assert_eq!(fleet.live_pages(), ["second version"; 3]);

    // Roll back from the dashboard, and watch the job commit on its page.
    browser.goto(&format!("{ui}/")).await.expect("dashboard");
    wait_text(&browser, "#version-www", "v2", wait).await;
    screenshot(&browser, "dashboard.png").await;
    click_to(
        &browser,
        "form.rollback[data-site=\"www\"] button",
        "/ui/jobs/rollback-",
        wait,
    )
    .await;
    wait_text(&browser, "#job-state", "committed", wait).await;
    let committed = browser
        .find_all(Locator::Css("tr.job-node .state.committed"))
        .await
        .expect("per-node rows");
    assert_eq!(committed.len(), 3, "every node committed");
    let shot = screenshot(&browser, "rollback-committed.png").await;
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 1000);
    assert_eq!(fleet.live_pages(), ["first version"; 3]);

    // The dashboard (refreshing itself) shows the site back at v1 on every node.
    browser.goto(&format!("{ui}/")).await.expect("dashboard");
    wait_text(&browser, "#version-www", "v1", wait).await;
    wait_text(&browser, "#stale-count", "0", wait).await;
    // The page reads the mover again by itself: a publish from the command line shows without a reload.
    write(&fleet.staging, "index.html", b"third version");
    fleet.publish();
    wait_text(&browser, "#version-www", "v3", wait).await;
    browser.goto(&format!("{ui}/chart")).await.expect("report");
    let bars = browser
        .find_all(Locator::Css("svg.chart rect.bar"))
        .await
        .expect("bars");
    assert_eq!(
        bars.len(),
        2 * 4,
        "two charts of four jobs (three publishes, one rollback)"
    );
    screenshot(&browser, "report.png").await;
    browser.close().await.expect("close the browser");
}
