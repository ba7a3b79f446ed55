//! The web dashboard (`/ui`) in a real browser: a headless Chromium driven
//! through WebDriver (Debian's `chromium` and `chromium-driver`) against
//! `arkline serve` on 127.0.0.1.

use serde_json::json;

use crate::support::server::{
    ADMIN, READER, Server, arkc, faults, faults_as, faults_version, write_tokens,
};
use crate::support::webdriver::Browser;

/// Prints a coloured line and the secret, waits for the test's `go` file,
/// then more lines.
const COUNT: &str = "name: count\nsecrets: [deploy_key]\nstages:\n  - name: build\n    steps:\n      - name: lines\n        uses: shell/run\n        with:\n          script: |\n            printf '\\033[32mgreen-line\\033[0m\\n'\n            echo \"key=${{ secrets.deploy_key }}\"\n            while [ ! -f go ]; do sleep 0.05; done\n            echo after-go\n";
const QUICK: &str = "name: quick\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: hi }\n  - name: t\n    steps:\n      - name: down\n        uses: faults/upper\n        with: { text: ho }\n";
const HOLD: &str = "name: hold\nstages:\n  - name: s\n    steps:\n      - name: wait\n        uses: faults/sleep\n        with: { ms: 600000 }\n";
const GATED: &str = "name: gated\nstages:\n  - name: gate\n    steps:\n      - name: sign-off\n        approval: { message: ship it?, approvers: [admin] }\n  - name: ship\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: \"${{ steps.sign-off.outputs.approved_by }}\" }\n";
const SECRET: &str = "s3cr3t-value-42";

/// With `ARKLINE_UI_SCREENSHOTS=DIR`, a PNG of the window as `DIR/ui-NAME.png`
/// (the README's screenshots: `ARKLINE_UI_SCREENSHOTS=$PWD/docs cargo test -p
/// arkline-cli --test all dashboard::`).
async fn shot(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("ARKLINE_UI_SCREENSHOTS") {
        let png = browser.screenshot().await;
        let path = std::path::Path::new(&dir).join(format!("ui-{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Signs in with `token` and waits for the page the form's answer loads: the
/// signed-in page (the header names the token) or the sign-in page again
/// with its error. A click returns before the navigation it starts, and a
/// `goto` issued in between races it.
async fn sign_in(browser: &Browser, url: &str, token: &str) {
    browser.goto(&format!("{url}/ui")).await;
    browser.type_into("#token", token).await;
    browser.click("#signin-button").await;
    browser
        .until(
            "the answer to signing in",
            "return document.readyState === 'complete' && (document.getElementById('who').textContent !== '' || !document.getElementById('signin-error').hidden)",
            json!([]),
        )
        .await;
}

/// Signs out and waits for the sign-in page the server sends back to (see
/// [`sign_in`] for why).
async fn sign_out(browser: &Browser) {
    browser.click("#logout button").await;
    browser
        .until(
            "the sign-in page after signing out",
            "return document.readyState === 'complete' && document.getElementById('who').textContent === '' && !document.getElementById('signin').hidden",
            json!([]),
        )
        .await;
}

/// `arkline serve` with the tokens file, and the engines of `archives`
/// deployed through the API.
struct Served {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    server: Server,
    url: String,
    http: reqwest::Client,
}

async fn serve(archives: Vec<Vec<u8>>) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--tokens", tokens.to_str().expect("utf-8")]);
    let url = server.url.clone();
    let http = reqwest::Client::new();
    for archive in archives {
        let r = http
            .post(format!("{url}/api/v1/engines"))
            .bearer_auth(ADMIN)
            .body(archive)
            .send()
            .await
            .expect("deploys");
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    }
    Served {
        _dir: dir,
        data,
        server,
        url,
        http,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_runs_follows_logs_and_aborts_in_a_browser() {
    let shell = std::fs::read(arkline_testkit::plugin("shell")).expect("the shell archive reads");
    let Served {
        data,
        server,
        url,
        http,
        ..
    } = serve(vec![
        arkc("team-a", &shell, &["process=sh"], &[("count.yaml", COUNT)]),
        arkc(
            "team-b",
            faults(),
            &[],
            &[
                ("quick.yaml", QUICK),
                ("hold.yaml", HOLD),
                ("gated.yaml", GATED),
            ],
        ),
    ])
    .await;
    let listed: serde_json::Value = http
        .get(format!("{url}/api/v1/engines/team-b/pipelines"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("lists")
        .json()
        .await
        .expect("json");
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(3),
        "{listed:#}\n{:#?}",
        server.stderr()
    );
    let r = http
        .put(format!("{url}/api/v1/engines/team-a/secrets/deploy_key"))
        .bearer_auth(ADMIN)
        .json(&json!({ "value": SECRET }))
        .send()
        .await
        .expect("sets");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );

    let browser = Browser::start(1280, 800).await;
    // A wrong token is refused.
    sign_in(&browser, &url, "not-a-token").await;
    let error = browser.text("#signin-error:not([hidden])").await;
    assert!(error.contains("Unknown token"), "{error}");
    // The right one: both engines.
    sign_in(&browser, &url, ADMIN).await;
    let engines = browser
        .until(
            "the engines",
            "return [...document.querySelectorAll('#engines tbody tr')].map(r => r.dataset.engine)",
            json!([]),
        )
        .await;
    assert_eq!(engines, json!(["team-a", "team-b"]));
    assert!(browser.text("#who").await.contains("admin (write)"));

    // Run a pipeline from its page: its steps turn green without a reload.
    browser.click("a[href='#/engines/team-b']").await;
    shot(&browser, "engine").await;
    browser
        .eval("window.__same_page = 1; return 1", json!([]))
        .await;
    browser.click("tr[data-pipeline='quick'] button.run").await;
    browser
        .until(
            "both steps succeeded",
            "const s = [...document.querySelectorAll('#graph .step')]; \
             return s.length === 2 && s.every(b => b.dataset.phase === 'Succeeded')",
            json!([]),
        )
        .await;
    let marker = browser
        .eval("return [window.__same_page, location.hash]", json!([]))
        .await;
    assert_eq!(
        marker,
        json!([1, "#/engines/team-b/executions/quick-1"]),
        "the page was not reloaded"
    );
    shot(&browser, "execution").await;
    // Its outputs, from the status.
    let outputs = browser.text("#outputs").await;
    assert!(outputs.contains("HI"), "{outputs}");

    // An approval gate: approved from the page, the next stage runs.
    browser.goto(&format!("{url}/ui#/engines/team-b")).await;
    browser.click("tr[data-pipeline='gated'] button.run").await;
    browser.click("button.approve").await;
    browser
        .until(
            "the approved execution to succeed",
            "const h = document.querySelector('h1 .phase'); return h && h.textContent === 'Succeeded'",
            json!([]),
        )
        .await;
    let approved = browser.text("#outputs").await;
    assert!(approved.contains("ADMIN"), "{approved}");

    // A step's live log: lines arrive while it runs, coloured, secret masked;
    // the test says when the step ends.
    browser.goto(&format!("{url}/ui#/engines/team-a")).await;
    browser.click("tr[data-pipeline='count'] button.run").await;
    browser.click("#graph .step[data-step='lines']").await;
    let first = browser
        .until(
            "the first lines",
            "const l = document.querySelector('#log'); return l && l.textContent.includes('key=') && l.textContent",
            json!([]),
        )
        .await;
    let first = first.as_str().expect("text");
    assert!(first.contains("green-line"), "{first}");
    assert!(!first.contains(SECRET), "the secret is masked: {first}");
    assert!(!first.contains("after-go"), "{first}");
    shot(&browser, "log").await;
    let green = browser
        .eval(
            "return [...document.querySelectorAll('#log .ansi-32')].map(e => e.textContent)",
            json!([]),
        )
        .await;
    assert_eq!(green, json!(["green-line"]));
    let running = browser
        .eval(
            "return document.querySelector(\"#graph .step[data-step='lines']\").dataset.phase",
            json!([]),
        )
        .await;
    assert_eq!(running, "Running");
    std::fs::write(data.join("workspaces/team-a/count-1/go"), b"").expect("releases the step");
    browser
        .until(
            "the rest of the log and its end",
            "const s = document.querySelector('#log-status'); \
             return document.querySelector('#log').textContent.includes('after-go') \
                    && s.textContent.includes('Succeeded')",
            json!([]),
        )
        .await;

    // Abort a running execution from its page.
    let hold: serde_json::Value = http
        .post(format!(
            "{url}/api/v1/engines/team-b/pipelines/hold/executions"
        ))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await
        .expect("triggers")
        .json()
        .await
        .expect("json");
    let name = hold["metadata"]["name"].as_str().expect("name");
    browser
        .goto(&format!("{url}/ui#/engines/team-b/executions/{name}"))
        .await;
    browser
        .until(
            "the step running",
            "const b = document.querySelector(\"#graph .step[data-step='wait']\"); return b && b.dataset.phase === 'Running'",
            json!([]),
        )
        .await;
    browser.click("#abort").await;
    browser
        .until(
            "Aborted",
            "return document.querySelector('h1 .phase').textContent === 'Aborted'",
            json!([]),
        )
        .await;

    // A read-only token: no write buttons, and its writes are refused.
    sign_out(&browser).await;
    sign_in(&browser, &url, READER).await;
    assert!(browser.text("#who").await.contains("reader (read)"));
    browser.goto(&format!("{url}/ui#/engines/team-b")).await;
    browser
        .until(
            "the pipelines",
            "return document.querySelectorAll('#pipelines tbody tr').length === 3",
            json!([]),
        )
        .await;
    let buttons = browser
        .eval(
            "return document.querySelectorAll('button.run, #abort, #rerun, button.switch, button.uninstall, #install').length",
            json!([]),
        )
        .await;
    assert_eq!(buttons, 0);
    let refused = browser
        .eval(
            "const r = new XMLHttpRequest(); \
             r.open('POST', '/api/v1/engines/team-b/pipelines/quick/executions', false); \
             r.setRequestHeader('X-Arkline-Request', 'ui'); \
             r.setRequestHeader('Content-Type', 'application/json'); r.send('{}'); \
             return [r.status, JSON.parse(r.responseText).code]",
            json!([]),
        )
        .await;
    assert_eq!(refused, json!([403, "forbidden"]));
    // Without the dashboard's header, a write with the session cookie is refused too.
    let forged = browser
        .eval(
            "const r = new XMLHttpRequest(); \
             r.open('DELETE', '/api/v1/engines/team-b/pipelines/quick', false); r.send(); \
             return r.status",
            json!([]),
        )
        .await;
    assert_eq!(forged, 403);
    browser.quit().await;
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// The dashboard's session: a random id in the cookie (never the token),
/// ended on the server by signing out, refused when a second session cookie
/// is planted beside it, and unable to write without the dashboard's header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_session_is_an_id_the_server_can_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &["--tokens", tokens.to_str().expect("utf-8")],
    );
    let url = server.url.clone();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signed = http
        .post(format!("{url}/ui/session"))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("signs in");
    assert_eq!(signed.status(), 303);
    let cookie = signed.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    assert!(
        !pair.contains(ADMIN) && !pair.contains(&hex::encode(ADMIN)),
        "{pair}"
    );
    let whoami = |cookies: String| {
        http.get(format!("{url}/api/v1/whoami"))
            .header("cookie", cookies)
            .send()
    };
    let me = whoami(pair.clone()).await.expect("answers");
    assert_eq!(me.status(), 200);
    assert_eq!(
        me.json::<serde_json::Value>().await.expect("json")["name"],
        "admin"
    );
    // A second session cookie beside it (planted from another port or site).
    let planted = whoami(format!("{pair}; arkline_session=00ff"))
        .await
        .expect("answers");
    assert_eq!(planted.status(), 401);
    // A write with the cookie alone, without the dashboard's header.
    let forged = http
        .delete(format!("{url}/api/v1/engines/nothing/pipelines/x"))
        .header("cookie", pair.clone())
        .send()
        .await
        .expect("answers");
    assert_eq!(forged.status(), 403);
    // A wrong token is sent back to the sign-in.
    let wrong = http
        .post(format!("{url}/ui/session"))
        .form(&[("token", "nope")])
        .send()
        .await
        .expect("answers");
    assert_eq!(wrong.headers()["location"], "/ui?error=token");
    assert!(!wrong.headers().contains_key("set-cookie"));
    // Signing out ends the session on the server: the same cookie, kept
    // elsewhere, no longer works.
    let out = http
        .post(format!("{url}/ui/logout"))
        .header("cookie", pair.clone())
        .send()
        .await
        .expect("signs out");
    assert_eq!(out.status(), 303);
    assert_eq!(whoami(pair).await.expect("answers").status(), 401);
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// A step with params (one with a default, one without).
const PARAMS: &str = "name: params\nparams:\n  - { name: text, default: abc }\n  - { name: n, type: number }\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: \"${{ params.text }}-${{ params.n }}\" }\n";
/// `a` → `b`, `c` → `d`, with the edges spelled out.
const DIAMOND: &str = "name: diamond\nstages:\n  - name: s\n    steps:\n      - { name: a, uses: faults/print, with: { stdout: \"first line\\nsecond\\n\", stderr: \"\" } }\n  - name: t\n    steps:\n      - { name: b, uses: faults/upper, with: { text: b }, needs: a }\n      - { name: c, uses: faults/upper, with: { text: c }, needs: a }\n  - name: u\n    steps:\n      - { name: d, uses: faults/upper, with: { text: d }, needs: [b, c] }\n";

/// Waits until the page is execution `name`'s and its heading shows `phase`
/// (a new hash does not reload the page: the previous one may still show).
async fn until_phase(browser: &Browser, name: &str, phase: &str) {
    browser
        .until(
            &format!("{name} {phase}"),
            "const h = document.querySelector('#view h1'); \
             return h && h.textContent === arguments[0] + ' ' + arguments[1]",
            json!([name, phase]),
        )
        .await;
}

/// The rest of the pages: a run with params from a form, a rerun, the
/// `needs` edges, the metrics page, keyboard shortcuts, the theme, a line's
/// link, the whole log downloaded, installing, switching and uninstalling a
/// biz, and a phone's width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_runs_with_params_reruns_draws_needs_and_manages_bizes() {
    let Served {
        server, url, http, ..
    } = serve(vec![arkc(
        "team-b",
        faults(),
        &[],
        &[("params.yaml", PARAMS), ("diamond.yaml", DIAMOND)],
    )])
    .await;
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &url, ADMIN).await;
    browser.text("#engines").await;

    // Keyboard: `j` moves to the first engine, Enter opens it; `/` goes to
    // the executions' filter; `?` shows the shortcuts.
    browser.type_into("#main", "j").await;
    let focused = browser
        .eval("return document.activeElement.textContent", json!([]))
        .await;
    assert_eq!(focused, "team-b");
    browser
        .type_into("tr[data-engine='team-b'] a", "\u{E007}")
        .await;
    browser.text("#pipelines").await;
    browser.type_into("#main", "/").await;
    let focused = browser
        .eval("return document.activeElement.id", json!([]))
        .await;
    assert_eq!(focused, "exec-filter");
    browser.type_into("#main", "?").await;
    let help = browser.text("#help[open]").await;
    assert!(help.contains("g m"), "{help}");
    browser.click("#help button").await;

    // A pipeline with params: asked for in a form, the default filled in.
    browser.click("tr[data-pipeline='params'] button.run").await;
    let default = browser
        .eval(
            "return document.querySelector('#param-text').value",
            json!([]),
        )
        .await;
    assert_eq!(default, "abc");
    browser.type_into("#param-n", "7").await;
    browser.click("#run-submit").await;
    until_phase(&browser, "params-1", "Succeeded").await;
    assert!(browser.text("#outputs").await.contains("ABC-7"));
    // Rerun: a new execution with the same params, naming the first.
    browser.click("#rerun").await;
    until_phase(&browser, "params-2", "Succeeded").await;
    assert_eq!(
        browser.eval("return location.hash", json!([])).await,
        "#/engines/team-b/executions/params-2"
    );
    assert!(browser.text("#outputs").await.contains("ABC-7"));
    assert!(browser.text(".kv a").await.contains("params-1"));

    // The `needs` edges of a diamond, drawn between its steps.
    let r = http
        .post(format!(
            "{url}/api/v1/engines/team-b/pipelines/diamond/executions"
        ))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await
        .expect("triggers");
    assert_eq!(r.status(), 201);
    browser
        .goto(&format!("{url}/ui#/engines/team-b/executions/diamond-1"))
        .await;
    until_phase(&browser, "diamond-1", "Succeeded").await;
    let edges = browser
        .eval(
            "return [...document.querySelectorAll('#graph svg.edges path')] \
             .map(p => p.dataset.from + '>' + p.dataset.to).sort()",
            json!([]),
        )
        .await;
    assert_eq!(edges, json!(["a>b", "a>c", "b>d", "c>d"]));
    shot(&browser, "graph").await;

    // A line's number links to it; the whole log downloads as text.
    browser.click("#graph .step[data-step='a']").await;
    // Every line is in once the log has ended (lines come in batches).
    let ended = browser
        .until(
            "the log's end",
            "const s = document.querySelector('#log-status'); \
             return s && s.textContent.startsWith('ended') && s.textContent",
            json!([]),
        )
        .await;
    assert_eq!(ended, "ended: Succeeded");
    browser.click("#L1 a").await;
    let hash = browser
        .eval(
            "return [location.hash, document.querySelector('#L1').classList.contains('selected')]",
            json!([]),
        )
        .await;
    assert_eq!(
        hash,
        json!(["#/engines/team-b/executions/diamond-1/logs/a/L1", true])
    );
    let text = browser
        .eval(
            "const r = new XMLHttpRequest(); \
             r.open('GET', document.querySelector('#log-download').href, false); r.send(); \
             return [r.status, r.getResponseHeader('content-type'), r.responseText]",
            json!([]),
        )
        .await;
    assert_eq!(text[0], 200, "{text}");
    assert!(
        text[1]
            .as_str()
            .is_some_and(|t| t.starts_with("text/plain")),
        "{text}"
    );
    let shown = browser
        .eval(
            "return [...document.querySelectorAll('#log .line > span')].map(s => s.textContent + '\\n').join('')",
            json!([]),
        )
        .await;
    assert_eq!(text[2], shown, "the download is the log the page shows");
    assert!(
        text[2]
            .as_str()
            .is_some_and(|t| t.contains("\nfirst line\nsecond\n")),
        "{text}"
    );
    let both = browser
        .eval(
            "const r = new XMLHttpRequest(); \
             r.open('GET', document.querySelector('#log-download').href + '&follow=true', false); r.send(); \
             return [r.status, JSON.parse(r.responseText).message]",
            json!([]),
        )
        .await;
    assert_eq!(both[0], 400, "{both}");

    // Metrics (`g m`): executions by phase and step durations of this engine.
    browser.type_into("#main", "gm").await;
    let succeeded = browser
        .until(
            "the metrics",
            "const c = document.querySelector(\"#by-phase tr[data-engine='team-b'] td[data-phase='Succeeded']\"); \
             return c && Number(c.textContent) >= 3 && c.textContent",
            json!([]),
        )
        .await;
    assert_eq!(succeeded, "3");
    let steps = browser
        .text("#durations tr[data-biz='team-b/faults'] .steps")
        .await;
    assert_eq!(steps, "6", "two params runs and the diamond's four steps");
    shot(&browser, "metrics").await;

    // The theme: light, then dark, kept across a reload.
    let background = "return getComputedStyle(document.body).backgroundColor";
    browser.click("#theme").await;
    let light = browser.eval(background, json!([])).await;
    browser.click("#theme").await;
    let dark = browser.eval(background, json!([])).await;
    assert_ne!(light, dark);
    browser
        .eval(
            "window.__before_reload = 1; location.reload(); return 1",
            json!([]),
        )
        .await;
    browser
        .until(
            "the reloaded metrics page",
            "return !window.__before_reload && document.querySelector('#by-phase')",
            json!([]),
        )
        .await;
    assert_eq!(browser.eval(background, json!([])).await, dark);
    assert_eq!(browser.text("#theme").await, "Theme: dark");
    browser.click("#theme").await;

    // Bizes: install a new version from the page (it compiles in the
    // background, then is activated), switch back, uninstall it.
    let version = faults_version().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let v9 = dir.path().join("faults-9.0.0.ark");
    std::fs::write(&v9, faults_as("9.0.0")).expect("writes the archive");
    browser.goto(&format!("{url}/ui#/engines/team-b")).await;
    browser.type_into("#ark", v9.to_str().expect("utf-8")).await;
    browser.click("#install button[type=submit]").await;
    let state = "return [...document.querySelectorAll('#bizes tbody tr')].map(r => r.dataset.biz + ' ' + r.dataset.state).sort()";
    let old = format!("faults@{version}");
    browser
        .until(
            "9.0.0 activated",
            &format!("{state}.join() === '{old} deactivated,faults@9.0.0 activated'"),
            json!([]),
        )
        .await;
    browser
        .click(&format!("tr[data-biz='{old}'] button.switch"))
        .await;
    browser
        .until(
            "the old version active again",
            &format!("{state}.join() === '{old} activated,faults@9.0.0 deactivated'"),
            json!([]),
        )
        .await;
    browser
        .eval("window.confirm = () => true; return 1", json!([]))
        .await;
    browser
        .click("tr[data-biz='faults@9.0.0'] button.uninstall")
        .await;
    browser
        .until(
            "9.0.0 gone",
            &format!("{state}.join() === '{old} activated'"),
            json!([]),
        )
        .await;
    browser.quit().await;

    // A phone's width (390 CSS pixels, emulated): nothing wider than the
    // screen but what scrolls inside the page.
    let phone = Browser::start_phone(390, 844).await;
    sign_in(&phone, &url, ADMIN).await;
    for (page, shown) in [
        ("#/engines/team-b", "#pipelines"),
        ("#/engines/team-b/executions/diamond-1/logs/a", "#log #L1"),
        ("#/metrics", "#by-phase"),
    ] {
        phone.goto(&format!("{url}/ui{page}")).await;
        phone.text(shown).await;
        let wide = phone
            .eval(
                "return [document.documentElement.scrollWidth, window.innerWidth]",
                json!([]),
            )
            .await;
        assert_eq!(wide[1], 390, "the emulated phone's width");
        assert!(wide[0].as_u64() <= wide[1].as_u64(), "{page}: {wide}");
        if page.ends_with("/a") {
            shot(&phone, "phone").await;
        }
    }
    phone.quit().await;
    let (status, _) = server.terminate();
    assert!(status.success());
}
