//! Proves the read-only web console in a real browser (headless Chromium over chromedriver) during
//! a real sync on the simulators: sign-in refuses a wrong token and keeps the session in an
//! HttpOnly cookie that is not the token, progress advances without a reload, the first-error link
//! opens the log at that event, the level filter and live following work, and a tenant's token
//! sees only its connections; and, over plain HTTP, the refusals, cookie attributes and headers.
//! Set LEARNSYNC_SCREENSHOTS=docs to refresh the README's screenshots.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use learnsync_client::pb;
use learnsync_e2e::{TestSystem, eventually, manual, sample_connection, tokens};
use learnsync_sim::{Faults, GenerateParams};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> (Driver, Browser) {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver \
                 (`apt-get install -y chromium chromium-driver`; scripts/test.sh and .ci/run do)"
            );
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_string(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                    format!("--user-data-dir={}", driver._profile.path().display()),
                ],
            }),
        );
        let browser = eventually(Duration::from_secs(20), "chromedriver to answer", || {
            let capabilities = capabilities.clone();
            let url = driver.url.clone();
            async move {
                let connected = ClientBuilder::rustls()?
                    .capabilities(capabilities)
                    .connect(&url)
                    .await;
                Ok(connected.ok())
            }
        })
        .await
        .unwrap();
        (driver, browser)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Where screenshots go: LEARNSYNC_SCREENSHOTS (relative to the workspace root), or a temporary
/// directory so a plain test run leaves the tree clean.
fn screenshot_dir() -> PathBuf {
    match std::env::var("LEARNSYNC_SCREENSHOTS") {
        Ok(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Ok(dir) => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir),
        Err(_) => std::env::temp_dir().join("learnsync-console-screenshots"),
    }
}

async fn screenshot(browser: &Browser, name: &str) {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join(format!("console-{name}.png")), png).unwrap();
}

async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/sign-in")).await.unwrap();
    let field = browser.find(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click submits the form and returns before the answer is loaded: wait for it (a
    // refusal stays on the sign-in page with its error, a sign-in leaves the page).
    let started = std::time::Instant::now();
    loop {
        let left = browser.current_url().await.unwrap().path() != "/sign-in";
        if left || browser.find(Locator::Id("sign-in-error")).await.is_ok() {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the sign-in got no answer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The rendered texts of the elements `css` selects, read in one script so a live refresh cannot
/// replace them halfway.
async fn texts(browser: &Browser, css: &str) -> Vec<String> {
    let value = browser
        .execute(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText.trim());",
            vec![serde_json::json!(css)],
        )
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

/// An attribute of the first element `css` selects, read in one script.
async fn attr(browser: &Browser, css: &str, name: &str) -> Option<String> {
    let value = browser
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            vec![serde_json::json!(css), serde_json::json!(name)],
        )
        .await
        .unwrap();
    value.as_str().map(str::to_string)
}

/// Waits until `check` holds on the page, polling every 100 ms.
async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Marks the page so a reload would be seen: the mark lives in the page's JavaScript state.
async fn mark(browser: &Browser) {
    browser
        .execute("window.__not_reloaded = true;", vec![])
        .await
        .unwrap();
}

async fn not_reloaded(browser: &Browser) -> bool {
    browser
        .execute("return window.__not_reloaded === true;", vec![])
        .await
        .unwrap()
        .as_bool()
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_a_live_sync_and_its_first_error_to_the_right_tokens() {
    let params = GenerateParams {
        users: Some(1500),
        courses: Some(40),
        learning_plans: Some(5),
        sessions_per_course: Some(1),
        course_enrollments: Some(200),
        learning_plan_enrollments: Some(20),
        session_enrollments: Some(20),
        bad_records: Some(true),
        ..GenerateParams::default()
    };
    let system = TestSystem::start(&params, 1, |_| {}).await.unwrap();
    // Under the bulk threshold, users are written 200 at a time; slowed simulators make the run
    // last a few seconds, so progress is seen moving.
    let slow = Faults {
        latency_ms: 300,
        ..Faults::default()
    };
    system.docebo.set_faults(slow.clone());
    system.salesforce.set_faults(slow);
    let base = system.server.console_base.clone();
    let id = system.connection_id.clone();
    // Another tenant's connection, and a hostile name that must be shown as text.
    let mut operator = system.client().await.unwrap();
    let mut acme_connection = sample_connection(
        "Acme <script>alert(1)</script>",
        "https://acme.docebosaas.com",
        "https://login.salesforce.com",
    );
    acme_connection.tenant = "acme".to_string();
    let acme = operator
        .create_connection(pb::CreateConnectionRequest {
            connection: Some(acme_connection),
            request_id: String::new(),
        })
        .await
        .unwrap();

    let (_driver, browser) = Driver::start().await;

    // Without a session every page leads to sign-in; a wrong token is refused and opens nothing.
    browser
        .goto(&format!("{base}/connections/{id}"))
        .await
        .unwrap();
    assert!(browser.current_url().await.unwrap().path() == "/sign-in");
    sign_in(&browser, &base, "wrong-token-0123456789abcdef").await;
    assert_eq!(
        browser
            .find(Locator::Id("sign-in-error"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "The token is not valid."
    );
    assert!(browser.get_all_cookies().await.unwrap().is_empty());
    browser.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/sign-in");

    // The operator sees both connections; the session cookie is HttpOnly and is not the token.
    sign_in(&browser, &base, tokens::OPERATOR).await;
    until("the connections page", Duration::from_secs(5), || async {
        browser.find(Locator::Id("connections")).await.is_ok()
    })
    .await;
    let names = texts(&browser, "tr.connection td:first-child").await;
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"Acme <script>alert(1)</script>".to_string()));
    let cookies = browser.get_all_cookies().await.unwrap();
    assert_eq!(cookies.len(), 1);
    let cookie = &cookies[0];
    assert_eq!(cookie.name(), "learnsync_session");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.secure(), Some(true));
    assert!(!cookie.value().contains(tokens::OPERATOR));
    let script_cookies = browser
        .execute("return document.cookie;", vec![])
        .await
        .unwrap();
    assert_eq!(script_cookies.as_str(), Some(""), "HttpOnly hides it");
    assert!(!browser.source().await.unwrap().contains(tokens::OPERATOR));
    screenshot(&browser, "connections").await;

    // A run starts; the status page shows its progress advancing without a reload.
    operator
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();
    browser
        .goto(&format!("{base}/connections/{id}"))
        .await
        .unwrap();
    mark(&browser).await;
    let run = operator.start(&id, pb::Area::Users, None).await.unwrap();
    let mut seen: Vec<i64> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while seen.iter().filter(|done| **done > 0).count() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "progress did not advance twice: {seen:?}"
        );
        if let Some(done) = attr(&browser, "#area-users tr.job", "data-done").await {
            let done: i64 = done.parse().unwrap();
            if seen.last() != Some(&done) {
                seen.push(done);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
    assert!(not_reloaded(&browser).await, "the page was reloaded");
    screenshot(&browser, "status").await;
    system.docebo.set_faults(Faults::default());
    system.salesforce.set_faults(Faults::default());
    let run = system
        .wait_for_run(&run.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(run.state, pb::RunState::SucceededWithErrors as i32);
    assert!(run.first_error_sequence > 0);
    until(
        "the card to show the run's end",
        Duration::from_secs(10),
        || async {
            texts(&browser, "#area-users dd.state .badge").await
                == vec!["succeeded with errors".to_string()]
        },
    )
    .await;
    assert!(not_reloaded(&browser).await, "the page was reloaded");
    let imported = texts(&browser, "#area-users dd.imported").await;
    assert_ne!(imported, vec!["0".to_string()]);

    // View logs opens the log on the run's first error.
    browser
        .find(Locator::Css("#area-users a.view-logs.first-error"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the log page", Duration::from_secs(5), || async {
        browser.find(Locator::Id("log-rows")).await.is_ok()
    })
    .await;
    let url = browser.current_url().await.unwrap();
    assert_eq!(
        url.fragment(),
        Some(format!("event-{}", run.first_error_sequence).as_str())
    );
    let first = browser
        .find(Locator::Css("tr.event"))
        .await
        .unwrap()
        .attr("data-sequence")
        .await
        .unwrap();
    assert_eq!(first, Some(run.first_error_sequence.to_string()));
    let marked = browser
        .find(Locator::Css("tr.event.first-error"))
        .await
        .unwrap();
    assert_eq!(
        marked.attr("id").await.unwrap(),
        Some(format!("event-{}", run.first_error_sequence))
    );
    assert!(
        marked
            .attr("class")
            .await
            .unwrap()
            .unwrap()
            .contains("error")
    );
    screenshot(&browser, "log").await;

    // The level filter keeps errors only.
    let level = browser.find(Locator::Id("level")).await.unwrap();
    level.select_by_value("error").await.unwrap();
    until("the error filter", Duration::from_secs(5), || async {
        browser
            .current_url()
            .await
            .unwrap()
            .query()
            .is_some_and(|q| q.contains("level=error"))
    })
    .await;
    let levels = texts(&browser, "tr.event td:nth-child(3)").await;
    assert!(!levels.is_empty());
    assert!(levels.iter().all(|level| level == "error"), "{levels:?}");

    // The runs page lists the run; the run page shows its jobs.
    browser
        .goto(&format!("{base}/connections/{id}/runs"))
        .await
        .unwrap();
    let runs: Vec<String> = {
        let mut ids = Vec::new();
        for row in browser.find_all(Locator::Css("tr.run")).await.unwrap() {
            ids.push(row.attr("data-id").await.unwrap().unwrap());
        }
        ids
    };
    assert_eq!(runs, vec![run.id.clone()]);
    screenshot(&browser, "runs").await;
    browser
        .goto(&format!("{base}/connections/{id}/runs/{}", run.id))
        .await
        .unwrap();
    assert_eq!(
        texts(&browser, "tr.job td:first-child").await,
        vec!["users"]
    );
    screenshot(&browser, "run").await;

    // The connection's log follows live: a new run's events appear without a reload.
    browser
        .goto(&format!("{base}/connections/{id}/logs"))
        .await
        .unwrap();
    mark(&browser).await;
    let before = browser
        .find_all(Locator::Css("tr.event"))
        .await
        .unwrap()
        .len();
    operator
        .configure(&id, manual(pb::Area::Courses))
        .await
        .unwrap();
    let courses = operator.start(&id, pb::Area::Courses, None).await.unwrap();
    until("new log rows", Duration::from_secs(20), || async {
        browser
            .find_all(Locator::Css("tr.event"))
            .await
            .unwrap()
            .len()
            > before
    })
    .await;
    assert!(not_reloaded(&browser).await, "the page was reloaded");
    system
        .wait_for_run(&courses.id, Duration::from_secs(60))
        .await
        .unwrap();

    // A tenant sees its own connection only; another's reads as not found.
    browser
        .find(Locator::Css("form.signout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("sign-out", Duration::from_secs(5), || async {
        browser.current_url().await.unwrap().path() == "/sign-in"
    })
    .await;
    sign_in(&browser, &base, tokens::ACME).await;
    until("acme's connections", Duration::from_secs(5), || async {
        browser.find(Locator::Id("connections")).await.is_ok()
    })
    .await;
    let mut ids = Vec::new();
    for row in browser
        .find_all(Locator::Css("tr.connection"))
        .await
        .unwrap()
    {
        ids.push(row.attr("data-id").await.unwrap().unwrap());
    }
    assert_eq!(ids, vec![acme.id.clone()]);
    for page in [
        format!("{base}/connections/{id}"),
        format!("{base}/connections/{id}/runs/{}", run.id),
        format!("{base}/connections/{id}/logs?run={}", run.id),
    ] {
        browser.goto(&page).await.unwrap();
        assert_eq!(
            browser
                .find(Locator::Id("problem"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "There is no such connection or run, or this token may not see it.",
            "{page}"
        );
    }
    browser
        .goto(&format!("{base}/connections/{}", acme.id))
        .await
        .unwrap();
    assert_eq!(
        texts(&browser, "section.area h2").await,
        vec!["Users", "Courses", "Enrollments"]
    );

    browser.close().await.unwrap();
    system.stop().await.unwrap();
}

/// The same rules over plain HTTP, without a browser: what is refused, and the headers.
#[tokio::test]
async fn the_console_refuses_what_it_must_over_http() {
    let server = learnsync_e2e::TestServer::start().await.unwrap();
    let mut operator = server.operator().await.unwrap();
    let mut acme_connection = sample_connection(
        "acme",
        "https://acme.docebosaas.com",
        "https://login.salesforce.com",
    );
    acme_connection.tenant = "acme".to_string();
    let acme = operator
        .create_connection(pb::CreateConnectionRequest {
            connection: Some(acme_connection),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let other = learnsync_e2e::create_sample(&mut operator, "default tenant")
        .await
        .unwrap();
    let base = &server.console_base;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let anonymous = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(anonymous.status(), 303);
    assert_eq!(anonymous.headers()["location"], "/sign-in");
    let live = http
        .get(format!("{base}/connections/{other}/live/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 401);

    let wrong = http
        .post(format!("{base}/sign-in"))
        .form(&[("token", "wrong-token-0123456789abcdef")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    let signed_in = http
        .post(format!("{base}/sign-in"))
        .form(&[("token", tokens::ACME)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let set_cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains(tokens::ACME));
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    let page = http
        .get(format!("{base}/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let body = page.text().await.unwrap();
    assert!(body.contains(&acme.id));
    assert!(!body.contains(&other));
    assert!(!body.contains(tokens::ACME));

    for path in [
        format!("/connections/{other}"),
        format!("/connections/{other}/live/status"),
        format!("/connections/{other}/logs"),
    ] {
        let refused = http
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 404, "{path}");
    }
    for path in [
        format!("/connections/{}/logs?level=loud", acme.id),
        "/connections/not-a-uuid".to_string(),
    ] {
        let bad = http
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400, "{path}");
    }

    // A session claiming another principal, or tampered with, leads back to sign-in.
    let tampered = format!("{}x", cookie);
    let refused = http
        .get(format!("{base}/"))
        .header("cookie", tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 303);
    server.stop().await.unwrap();
}
