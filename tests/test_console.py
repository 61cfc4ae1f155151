"""The operator's console in a real browser: Debian's Chromium, driven by Selenium, against a
real `switchboard serve` (keys configured, every decision logged) on the demo's adapters.

Each page is checked against what the API or the CLI says, and each action by what the server
then serves. Screenshots of every page go to $CONSOLE_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import REQUIRE_BROWSER, quick_demo

from support.paths import ROOT, SWITCHBOARD
from support.processes import ServerProcess, free_port
from switchboard_lora.registry import BaseModelInfo, BaseModels
from switchboard_lora.trainer.synthetic import random_adapter

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ADMIN, CLIENT = "admin-key-for-the-console", "client-key-for-the-console"
# Requests sent with model=auto before the tests: each becomes a logged decision.
ASKED = [
    "Solve for x: 3x + 7 = 22.",
    "List the customers whose orders exceed 100 dollars.",
    "Why does ice float on water?",
    "Tell me about your weekend plans.",
    "What is the tallest mountain in Europe?",
    "Write a limerick about a cat who loves jazz.",
]

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    if REQUIRE_BROWSER:
        raise RuntimeError("Chromium and chromium-driver are required (apt-get install ...)")
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason="no Chromium/chromium-driver here")]


@dataclass
class Console:
    url: str
    home: Path
    server: ServerProcess
    browser: Any  # selenium's Chrome driver

    def cli(self, *args: str) -> Any:
        result = subprocess.run(
            [SWITCHBOARD, "--home", str(self.home), *args, "--json"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=CLIENT, max_retries=0)

    def routed(self, text: str, model: str = "auto") -> dict[str, Any]:
        answer = httpx.post(
            f"{self.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {CLIENT}"},
            json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 1},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        info: dict[str, Any] = answer.json()["switchboard"]
        info["id"] = answer.json()["id"]
        return info

    def admin_api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {ADMIN}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def open(self, path: str) -> None:
        self.browser.get(f"{self.url}{path}")

    def shot(self, name: str) -> None:
        folder = os.environ.get("CONSOLE_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.browser.save_screenshot(str(Path(folder) / f"{name}.png"))

    def navigates(self, act: Any, *, confirm: bool = False) -> None:
        """Do `act` (a click, a key) and wait for the page it submits to load; `confirm`
        accepts the confirmation the page asks for first."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        self.browser.execute_script("window.beforeNavigation = true;")  # gone with the page
        act()
        if confirm:
            WebDriverWait(self.browser, 10).until(expected_conditions.alert_is_present())
            self.browser.switch_to.alert.accept()
        loaded = "return !window.beforeNavigation && document.readyState === 'complete';"
        # While the document is replaced the driver may answer with an error: ask again.
        waiting = WebDriverWait(self.browser, 60, ignored_exceptions=(WebDriverException,))
        waiting.until(lambda browser: browser.execute_script(loaded))

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.browser.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.browser.find_elements(By.CSS_SELECTOR, css))


def _chrome(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1440,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


@pytest.fixture(scope="module")
def console(
    pulled_base: tuple[BaseModels, BaseModelInfo, bool], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Console]:
    scratch = tmp_path_factory.mktemp("console")
    home = scratch / "home"
    home.mkdir()
    (home / "bases").symlink_to(Path(pulled_base[0].root))  # the session's pulled base
    quick_demo(home)
    port = free_port()
    env = {
        **os.environ,
        "SWITCHBOARD_API_KEYS": json.dumps([CLIENT]),
        "SWITCHBOARD_ADMIN_KEYS": json.dumps([ADMIN]),
        "SWITCHBOARD_ROUTE_LOG": "all",
    }
    command = [SWITCHBOARD, "--home", str(home), "serve", "--engine", "hf", "--port", str(port)]
    server = ServerProcess(command, env, scratch / "serve.log", port)
    browser = None
    try:
        made = Console(server.url, home, server, None)
        for name, seed in (("math", 11), ("sql", 12)):  # a second version of each
            folder = random_adapter(pulled_base[1].path, scratch / name, "lora", seed, 4)
            made.cli("registry", "publish", str(folder), "--name", name)
        made.cli(
            "experiment",
            "create",
            "sql-ab",
            "--adapter",
            "sql",
            "--arm",
            "sql:1=0.5",
            "--arm",
            "sql:2=0.5",
        )
        server.wait_ready("/readyz")
        browser = _chrome(scratch / "chromium")
        made.browser = browser
        yield made
    finally:
        if browser is not None:
            browser.quit()
        server.stop()


def _log_in(console: Console, key: str = ADMIN) -> None:
    console.browser.delete_all_cookies()
    console.open("/console/login")
    console.find("#key").send_keys(key)
    console.navigates(console.find("form.login button").click)


def _csrf(console: Console, cookies: dict[str, str]) -> str:
    page = httpx.get(f"{console.url}/console/adapters", cookies=cookies, timeout=60)
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found
    return found.group(1)


def test_without_the_admin_key_no_page_or_action_works(console: Console) -> None:
    url = console.url
    # No key: every page sends the browser to the login form; every action is refused.
    for page in ("adapters", "review", "experiments", "live", "live.json", "routes/math"):
        answer = httpx.get(f"{url}/console/{page}", timeout=60)
        assert answer.status_code == 303, page
        assert answer.headers["location"].startswith("/console/login")
    posts = ["adapters/math/aliases", "review/label", "experiments/sql-ab/stop", "logout"]
    for action in posts:
        assert httpx.post(f"{url}/console/{action}", timeout=60).status_code == 401, action
    # A client key: 403, as a cookie or as a bearer key, on pages and actions alike.
    client = {"switchboard_console": CLIENT}
    assert httpx.get(f"{url}/console/adapters", cookies=client, timeout=60).status_code == 403
    bearer = {"authorization": f"Bearer {CLIENT}"}
    assert httpx.get(f"{url}/console/review", headers=bearer, timeout=60).status_code == 403
    answer = httpx.post(
        f"{url}/console/adapters/math/aliases",
        cookies=client,
        data={"alias": "prod", "version": "1"},
        timeout=60,
    )
    assert answer.status_code == 403
    # The login form says why a client key is not enough, and sets no cookie.
    _log_in(console, CLIENT)
    assert "needs an admin key" in console.find("#error").text
    assert console.browser.get_cookies() == []
    # The admin key: the browser is in, with an HttpOnly, SameSite=Strict cookie.
    _log_in(console)
    assert console.browser.current_url.endswith("/console/adapters")
    (cookie,) = console.browser.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"


def test_the_adapters_page_lists_every_version_with_its_aliases(console: Console) -> None:
    def rows() -> dict[str, str]:
        return {
            row.get_attribute("data-ref"): row.find_element("css selector", ".aliases-cell").text
            for row in console.find_all("tr.version")
        }

    _log_in(console)
    console.open("/console/adapters")
    overview = rows()
    console.shot("adapters")
    listed, pages = {}, {}
    for adapter in console.cli("registry", "list"):
        for version in console.cli("registry", "versions", adapter["name"]):
            listed[version["ref"]] = ", ".join(version["aliases"])
        console.open(f"/console/adapters/{adapter['name']}")  # each adapter's own page
        pages |= rows()
    assert overview == pages == listed
    assert {"math:1", "math:2", "sql:2", "science:1", "code:1", "dialogue:1"} <= set(listed)
    # An adapter that does not exist: the API's 404 message, on the page.
    console.open("/console/adapters/nosuch")
    assert "no adapter named 'nosuch'" in console.find("#error").text


def test_pointing_an_alias_changes_what_the_name_serves(console: Console) -> None:
    _log_in(console)
    assert console.routed("Add 2 and 3.", "math")["served"]["ref"] == "math:2"  # the latest
    console.open("/console/adapters")
    form = console.find("#adapter-math form.point")
    form.find_element("css selector", "input[name=alias]").send_keys("prod")
    version = form.find_element("css selector", "input[name=version]")
    version.clear()
    version.send_keys("1")
    console.navigates(form.find_element("css selector", "button").click)
    assert "math@prod now serves math:1" in console.find("#notice").text
    assert console.routed("Add 2 and 3.", "math")["served"]["ref"] == "math:1"
    row = console.find('tr.version[data-ref="math:1"] .aliases-cell')
    assert row.text == "prod"
    # Removing it (after the confirmation) serves the latest again.
    remove = '#adapter-math form.alias button[aria-label="Remove alias prod of math"]'
    console.navigates(console.find(remove).click, confirm=True)
    assert "removed math@prod" in console.find("#notice").text
    assert console.routed("Add 2 and 3.", "math")["served"]["ref"] == "math:2"


def test_labelling_three_decisions_changes_the_next_routing_decisions(console: Console) -> None:
    from selenium.webdriver.common.keys import Keys

    before = {text: console.routed(text) for text in ASKED}  # logged, all of them
    targets = {}
    for text, info in list(before.items())[:3]:  # each to a route it did not take
        taken = info["served"]["ref"].split(":")[0]
        targets[text] = next(r for r in ("dialogue", "code", "science") if r != taken)
    _log_in(console)
    console.open("/console/review?order=newest&limit=100")
    console.shot("review")
    rows = {
        r.find_element("css selector", "td.text").get_attribute("title"): r
        for r in console.find_all("tr.decision")
    }
    texts = list(targets)
    # One with a click on the row's button ...
    first = rows[texts[0]]
    value = f"{first.get_attribute('data-id')}:{targets[texts[0]]}"
    console.navigates(first.find_element("css selector", f'button[value="{value}"]').click)
    assert "labelled" in console.find("#notice").text
    # ... one with the keyboard (focus the row, press the route's number) ...
    routes = [
        b.text.split(" ", 1)[-1]
        for b in console.find_all("tr.decision")[0].find_elements(
            "css selector", ".label-buttons button"
        )
    ]
    row = next(
        r
        for r in console.find_all("tr.decision")
        if r.find_element("css selector", "td.text").get_attribute("title") == texts[1]
    )
    console.navigates(lambda: row.send_keys(str(routes.index(targets[texts[1]]) + 1)))
    assert "labelled" in console.find("#notice").text
    # ... and one in bulk: select it, choose the route, label the selection.
    from selenium.webdriver.support.ui import Select

    row = next(
        r
        for r in console.find_all("tr.decision")
        if r.find_element("css selector", "td.text").get_attribute("title") == texts[2]
    )
    row.find_element("css selector", "input[type=checkbox]").click()
    Select(console.find(".bulk select")).select_by_value(targets[texts[2]])
    console.navigates(lambda: console.find('.bulk button[name="bulk"]').send_keys(Keys.ENTER))
    assert "labelled" in console.find("#notice").text
    for text, route in targets.items():  # live on the next request
        assert console.routed(text)["served"]["ref"].split(":")[0] == route, text
    labelled = console.admin_api(
        "GET", "/v1/admin/route-decisions", params={"labelled": True, "limit": 1000}
    )
    labels = {d["text"]: d["label"] for d in labelled.json()["decisions"] if d["label"]}
    assert {t: labels[t] for t in targets} == targets


def test_the_experiment_page_shows_the_apis_counts_and_promotes_after_a_confirmation(
    console: Console,
) -> None:
    for i in range(6):  # exposures of the sql-ab arms, and feedback on half of them
        info = console.routed(f"List the tables of shop number {i}.", "sql")
        if i % 2 == 0:
            answer = httpx.post(
                f"{console.url}/v1/feedback",
                headers={"authorization": f"Bearer {CLIENT}"},
                json={"id": info["id"], "thumbs": "up" if i % 4 == 0 else "down"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
    from selenium.webdriver.support.ui import WebDriverWait

    _log_in(console)
    console.open("/console/experiments")
    plot_loaded = "const i = document.querySelector('#experiment-sql-ab img.plot');"
    plot_loaded += "return i.complete && i.naturalWidth > 0;"
    WebDriverWait(console.browser, 30).until(lambda b: b.execute_script(plot_loaded))
    console.shot("experiments")
    results = console.cli("experiment", "results", "sql-ab")
    for arm in results["arms"]:
        row = console.find(f'#experiment-sql-ab tr[data-arm="{arm["ref"]}"]')
        assert row.find_element("css selector", ".exposures").text == str(arm["requests"])
        assert row.find_element("css selector", ".feedback").text == str(arm["feedback"])
    assert sum(a["requests"] for a in results["arms"]) >= 6
    assert results["verdict"] in console.find("#experiment-sql-ab .verdict").text
    plot = httpx.get(
        f"{console.url}/console/experiments/sql-ab/plot.png",
        cookies={"switchboard_console": ADMIN},
        timeout=60,
    )
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    # Dismissing the confirmation changes nothing; accepting it promotes.
    promote = '#experiment-sql-ab button[aria-label="Promote sql:2 and end sql-ab"]'
    console.find(promote).click()
    console.browser.switch_to.alert.dismiss()
    assert console.cli("experiment", "list")[-1]["stopped_at"] is None
    console.navigates(console.find(promote).click, confirm=True)
    assert "sql-ab: promoted sql:2" in console.find("#notice").text
    assert console.routed("List the tables of shop 9.", "sql")["served"]["ref"] == "sql:2"
    versions = {v["ref"]: v["aliases"] for v in console.cli("registry", "versions", "sql")}
    assert versions["sql:2"] == ["prod"]


def test_bad_input_shows_the_apis_error_on_the_page_and_changes_nothing(console: Console) -> None:
    _log_in(console)
    cookies = {"switchboard_console": ADMIN}
    csrf = _csrf(console, cookies)
    before = console.cli("registry", "versions", "math")
    same_origin = {"origin": console.url}

    def page_error(path: str, data: dict[str, str]) -> tuple[int, str]:
        answer = httpx.post(
            f"{console.url}/console/{path}",
            cookies=cookies,
            headers=same_origin,
            data={"csrf": csrf, **data},
            timeout=60,
        )
        found = re.search(r'id="error">([^<]*)<', answer.text)
        assert found, answer.text[:500]
        import html

        return answer.status_code, html.unescape(found.group(1))

    # An alias name that is not legal, and a version that does not exist: as the admin API.
    for alias, version in (("Not Legal!", "1"), ("canary", "99")):
        api = console.admin_api(
            "PUT", f"/v1/admin/adapters/math/aliases/{alias}", json={"version": int(version)}
        )
        status, message = page_error("adapters/math/aliases", {"alias": alias, "version": version})
        assert (status, message) == (api.status_code, api.json()["error"]["message"])
    # A version that is not a whole number (a superscript digit is a digit to str.isdigit).
    for version in ("\N{SUPERSCRIPT TWO}", "1e23", "-1"):
        status, message = page_error(
            "adapters/math/aliases", {"alias": "canary", "version": version}
        )
        assert (status, message) == (400, "version must be a whole number ≥ 1")
    # A label naming a route that does not exist.
    decision = console.admin_api("GET", "/v1/admin/route-decisions").json()["decisions"][0]
    api = console.admin_api(
        "POST", f"/v1/admin/route-decisions/{decision['id']}/label", json={"route": "nosuch"}
    )
    status, message = page_error("review/label", {"one": f"{decision['id']}:nosuch"})
    assert status == api.status_code == 404
    assert message.endswith(api.json()["error"]["message"])
    assert console.cli("registry", "versions", "math") == before
    after = console.admin_api("GET", "/v1/admin/route-decisions", params={"limit": 1000})
    assert decision["id"] in {d["id"] for d in after.json()["decisions"]}  # still unlabelled
    # In the browser too: the message is on the page.
    console.open("/console/adapters")
    form = console.find("#adapter-math form.point")
    form.find_element("css selector", "input[name=alias]").send_keys("Not Legal!")
    console.navigates(form.find_element("css selector", "button").click)
    assert "alias" in console.find("#error").text
    console.shot("adapters-error")


class _Forger(BaseHTTPRequestHandler):
    """Another site: its page posts a console form as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        page = (
            f'<form id="f" method="post" action="{self.target}/console/adapters/math/aliases">'
            '<input name="alias" value="forged"><input name="version" value="1"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: object) -> None:
        pass


def test_a_forged_cross_site_post_is_refused(console: Console) -> None:
    _log_in(console)  # the browser holds an admin session
    _Forger.target = console.url
    forger = ThreadingHTTPServer(("localhost", 0), _Forger)  # another origin: another host name
    threading.Thread(target=forger.serve_forever, daemon=True).start()
    try:
        console.browser.get(f"http://localhost:{forger.server_address[1]}/")
        console.browser.find_element("css selector", "body")
        assert "Log in to the console first" in console.browser.page_source  # no cookie sent
    finally:
        forger.shutdown()
    cookies = {"switchboard_console": ADMIN}
    csrf = _csrf(console, cookies)
    data = {"alias": "forged", "version": "1"}
    path = f"{console.url}/console/adapters/math/aliases"
    # A stolen cookie without the page's token, or with it from another origin: 403.
    assert httpx.post(path, cookies=cookies, data=data, timeout=60).status_code == 403
    evil = {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}
    forged = httpx.post(path, cookies=cookies, headers=evil, data={"csrf": csrf, **data})
    assert forged.status_code == 403
    versions = console.cli("registry", "versions", "math")
    assert all("forged" not in v["aliases"] for v in versions)


def test_the_live_page_follows_the_servers_counters(console: Console) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    _log_in(console)
    console.open("/console/live")
    console.routed("What is 12 times 12?", "math")
    metrics = httpx.get(f"{console.url}/metrics", timeout=60).text
    pattern = r'switchboard_requests_total\{adapter="math:2",decision="[^"]+"\} (\S+)'
    served = sum(float(m.group(1)) for m in re.finditer(pattern, metrics))
    assert served >= 1
    cell = '#live-adapters tr[data-ref="math:2"] .requests'

    def caught_up(driver: Any) -> bool:  # the page reads the counters every 3 s
        found = driver.find_elements("css selector", cell)
        return bool(found) and found[0].text == str(int(served))

    WebDriverWait(console.browser, 15).until(caught_up)
    rate = console.find('#live-adapters tr[data-ref="math:2"] .rps').text
    assert rate == "\N{EN DASH}" or float(rate) >= 0
    console.shot("live")
