"""The web page (GET /ui) against a real `bentoml serve`: its files over HTTP, then the page
itself in a real headless Chromium (Debian's, driven by Playwright).

    pytest tests/test_ui_browser.py                 # the browser tests need /usr/bin/chromium
    CIFAR2_UI_STORE=~/bentoml CIFAR2_UI_SCREENSHOT=docs/ui.png pytest tests/test_ui_browser.py

The second line takes the README's screenshot with the trained models of a BentoML store
(`make models` fills ~/bentoml); by default the server runs two untrained tiny models from a
throwaway store, and the screenshots go to pytest's tmp folder. Without Chromium the browser
tests skip, saying how to install it.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from test_service_http import free_port, server_env, start_server, stop, store  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "service" / "ui" / "samples"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# What works in a container: no sandbox (root), no GPU, nothing fetched in the background.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_IMAGES = 8  # small, so that the sample set takes several requests


def manifest() -> list[dict]:
    return json.loads((SAMPLES / "samples.json").read_text())["samples"]


@pytest.fixture(scope="module")
def ui_store(request) -> Path:
    """CIFAR2_UI_STORE (a BENTOML_HOME with trained models), else the tiny untrained ones."""
    path = os.environ.get("CIFAR2_UI_STORE")
    return Path(path).expanduser() if path else request.getfixturevalue("store")


@pytest.fixture(scope="module")
def url(ui_store, tmp_path_factory):
    log = tmp_path_factory.mktemp("ui-serve") / "serve.log"
    extra = {} if os.environ.get("CIFAR2_UI_STORE") else {"CIFAR2_MAX_IMAGES": str(MAX_IMAGES)}
    proc, base = start_server(server_env(ui_store, **extra), free_port(), log)
    yield base
    stop(proc)


def raw_get(url: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    """A request whose path is sent exactly as written (httpx would normalise ../)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


# --- the files, over HTTP (no browser needed) ------------------------------------------------

def test_page_and_assets_with_types_and_cache_headers(url):
    page = httpx.get(f"{url}/ui")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="ui/app.js"' in page.text and 'href="./"' in page.text  # the link to the API page
    assert "(ui)" in httpx.get(f"{url}/docs.json").json()["info"]["description"]  # and back
    again = httpx.get(f"{url}/ui", headers={"if-none-match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = httpx.head(f"{url}/ui")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(page.content))
    for path, kind in [("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css"),
                       ("/ui/samples/samples.json", "application/json"),
                       ("/ui/samples/airplane-0000.png", "image/png")]:
        r = httpx.get(f"{url}{path}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
    assert httpx.get(f"{url}/ui/samples/bird-0000.png").headers["cache-control"].startswith(
        "public, max-age=")
    slash = httpx.get(f"{url}/ui/")
    assert slash.status_code == 308 and slash.headers["location"] == "../ui"


def test_only_get_and_head_and_no_way_out_of_the_folder(url):
    post = httpx.post(f"{url}/ui", content=b"x")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    assert "GET" in post.json()["error"]
    missing = httpx.get(f"{url}/ui/nope.js")
    assert missing.status_code == 404 and "open /ui" in missing.json()["error"]
    for path in ["/ui/../webpage.py", "/ui/%2e%2e/webpage.py", "/ui/..%2fwebpage.py",
                 "/ui/samples/../../webpage.py", "/ui/samples/..%2F..%2Fservice.py",
                 "/ui//etc/passwd", "/ui/%2fetc%2fpasswd", "/ui/..\\webpage.py",
                 "/ui/samples/..%5c..%5cwebpage.py", "/ui/index.html%00.png"]:
        status, body = raw_get(url, path)
        assert status in (400, 404), (path, status)
        assert b"import" not in body and b"root:" not in body, path
    assert raw_get(url, "/uix")[0] == 404  # a path that only starts with /ui is not the page


def test_sample_set_is_real_labelled_and_cited():
    samples = manifest()
    assert 24 <= len(samples) <= 40
    assert {s["label"] for s in samples} == {"airplane", "bird"}
    for s in samples:
        with Image.open(SAMPLES / s["file"]) as im:
            assert im.size == (32, 32) and im.format == "PNG"
        assert s["source"] == f"test/{s['label']}/{Path(s['source']).name}"
    readme = (SAMPLES / "README.md").read_text()
    assert "Krizhevsky" in readme and "https://www.cs.toronto.edu/~kriz/cifar.html" in readme
    assert "no formal licence" in readme


# --- the page, in a real browser ------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install it (Debian/Ubuntu: `sudo apt-get install "
                    "chromium`) or set CHROMIUM=/path/to/chromium to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright is missing: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


# Every visible piece of text against its background: WCAG contrast ratios below 4.5:1.
LOW_CONTRAST_JS = """() => {
  const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((c) => (c /= 255) <= 0.03928 ? c / 12.92
    : ((c + 0.055) / 1.055) ** 2.4).reduce((s, c, i) => s + c * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!text || !el.getClientRects().length) continue;
    const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(`${el.tagName}.${el.className} ${ratio.toFixed(2)}`);
  }
  return low;
}"""


class Watch:
    """A page, with what went wrong in it: script errors and any request that left the server."""

    def __init__(self, browser, url: str, **context):
        self.page = browser.new_page(**context)
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.compares = 0
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._request)
        self.url = url

    def _request(self, r):
        if not r.url.startswith((self.url, "blob:", "data:")):
            self.foreign.append(r.url)
        self.compares += r.url == f"{self.url}/compare"

    def cards(self) -> list[dict]:
        return self.page.evaluate("""() => [...document.querySelectorAll('.card')].map(c => ({
            name: c.dataset.name, state: c.dataset.state, truth: c.dataset.truth || null,
            agree: c.dataset.agree, error: c.querySelector('.error').textContent,
            models: Object.fromEntries([...c.querySelectorAll('.model')].map(m => [m.dataset.model,
                {label: m.dataset.label, probs: m.dataset.probs ? JSON.parse(m.dataset.probs) : null,
                 right: m.dataset.right}]))}))""")

    def wait_done(self, n: int, timeout_s: float = 60) -> None:
        self.page.wait_for_function(
            f"""() => document.querySelectorAll('.card').length === {n} &&
                !document.querySelector('.card[data-state="pending"]')""", timeout=timeout_s * 1e3)

    def stat(self, id_: str) -> str:
        return self.page.get_attribute(f"#{id_}", "data-value")

    def check_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], f"the page fetched from elsewhere: {self.foreign}"


def compare(url: str, datas: list[tuple[str, bytes]]) -> list[dict]:
    """POST /compare for the same files, in requests the server's limit allows."""
    out = []
    with httpx.Client(base_url=url, timeout=60) as client:
        limit = client.get("/info").json()["limits"]["max_images"]
        for i in range(0, len(datas), limit):
            files = [("images", (name, data)) for name, data in datas[i:i + limit]]
            r = client.post("/compare", files=files)
            assert r.status_code == 200, r.text
            out += r.json()["predictions"]
    return out


def assert_same(card: dict, expected: dict) -> float:
    """The page shows exactly what /compare says (6-decimal rounding may differ by one unit in
    the last place when the server batches the images differently); returns the largest gap."""
    gap = 0.0
    for model in ("convnet", "dense"):
        shown, want = card["models"][model], expected[model]
        assert shown["label"] == want["label"], (card["name"], model)
        assert shown["probs"].keys() == want["probabilities"].keys()
        for cls, p in want["probabilities"].items():
            assert math.isclose(shown["probs"][cls], p, abs_tol=1.5e-6), (card["name"], model, cls)
            gap = max(gap, abs(shown["probs"][cls] - p))
    return gap


def other_formats(tmp: Path) -> list[Path]:
    """A sample as a larger JPEG, and as WebP, BMP and GIF: every format the API takes."""
    with Image.open(SAMPLES / "bird-0001.png") as im:
        im = im.convert("RGB")
        paths = [tmp / "bird-large.jpg", tmp / "bird.webp", tmp / "bird.bmp", tmp / "bird.gif"]
        im.resize((120, 80), Image.Resampling.BICUBIC).save(paths[0], quality=90)
        for p in paths[1:]:
            im.save(p)
    return paths


def test_page_shows_both_models_as_compare_does(browser, url, tmp_path):
    w = Watch(browser, url, viewport={"width": 1280, "height": 1000})
    page = w.page
    page.goto(f"{url}/ui")
    loaded_ms = page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
    page.wait_for_selector("#info-body[data-loaded=true]", timeout=10_000)
    info_ms = page.evaluate("performance.now()")
    print(f"/ui: DOMContentLoaded {loaded_ms:.0f} ms, /info panel filled {info_ms:.0f} ms")
    assert loaded_ms < 1000  # something useful within a second

    # The info panel: each model's tag and the provider really in use.
    info = httpx.get(f"{url}/info").json()
    for key, card in info["models"].items():
        row = f"#info-body tr[data-model={key}]"
        assert page.text_content(f"{row} [data-field=tag]") == card["tag"]
        assert page.text_content(f"{row} [data-field=provider]") == card["provider"]

    # Keyboard only: Tab to the sample button, Enter.
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "samples":
            break
    else:
        pytest.fail("Tab never reached the sample-set button")
    page.keyboard.press("Enter")
    samples = manifest()
    w.wait_done(len(samples))

    # Then files picked by hand: the sample set with one corrupt file among them, other formats.
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not the rest of a PNG file" * 4)
    uploads = [SAMPLES / s["file"] for s in samples]
    uploads.insert(5, corrupt)
    uploads += other_formats(tmp_path)
    page.set_input_files("#files", [str(p) for p in uploads])
    w.wait_done(len(samples) + len(uploads))

    cards = w.cards()
    shown, picked = cards[:len(samples)], cards[len(samples):]
    good = [(p.name, p.read_bytes()) for p in uploads if p != corrupt]
    expected = compare(url, [(s["file"], (SAMPLES / s["file"]).read_bytes()) for s in samples])
    expected_picked = compare(url, good)

    # The sample run: what /compare says, each model marked right or wrong against the truth.
    gaps = []
    for card, want, sample in zip(shown, expected, samples):
        assert card["state"] == "done" and card["name"] == sample["file"]
        assert card["truth"] == sample["label"]
        gaps.append(assert_same(card, want))
        for model in ("convnet", "dense"):
            assert card["models"][model]["right"] == str(want[model]["label"] == sample["label"]).lower()
        assert card["agree"] == str(want["agree"]).lower()
    for model in ("convnet", "dense"):
        right = sum(e[model]["label"] == s["label"] for e, s in zip(expected, samples))
        assert float(w.stat(f"acc-{model}")) == pytest.approx(right / len(samples))

    # The files picked by hand: the corrupt one shows its error, the others their results.
    bad = [c for c in picked if c["name"] == corrupt.name]
    assert len(bad) == 1 and bad[0]["state"] == "error"
    assert "Error 400" in bad[0]["error"] and ("corrupt" in bad[0]["error"]
                                               or "not an image" in bad[0]["error"])
    assert bad[0]["models"]["convnet"]["probs"] is None
    ok = [c for c in picked if c["name"] != corrupt.name]
    assert [c["name"] for c in ok] == [name for name, _ in good]
    for card, want in zip(ok, expected_picked):
        assert card["state"] == "done" and card["error"] == "" and card["truth"] is None
        gaps.append(assert_same(card, want))
    print(f"page vs /compare: {len(gaps)} images, largest probability gap {max(gaps):.1e}")
    everything = expected + expected_picked
    assert float(w.stat("agreement")) == pytest.approx(
        sum(e["agree"] for e in everything) / len(everything))
    assert w.stat("n-errors") == "1"
    for model in ("convnet", "dense"):
        assert " ms · batch of " in page.text_content(f"#ms-{model}")

    # Alt text on every picture; the 32x32 views are labelled images.
    assert page.evaluate("[...document.images].every(i => i.alt.trim().length > 0)")
    assert page.evaluate("[...document.querySelectorAll('canvas')]"
                         ".every(c => c.getAttribute('aria-label'))")
    assert page.evaluate(LOW_CONTRAST_JS) == []
    page.wait_for_timeout(300)  # the 32x32 canvases are drawn asynchronously
    shot = Path(os.environ.get("CIFAR2_UI_SCREENSHOT") or tmp_path / "ui.png")
    page.screenshot(path=str(shot), full_page=True,
                    clip={"x": 0, "y": 0, "width": 1280, "height": 1500})
    assert shot.stat().st_size > 10_000
    w.check_clean()

    page.click("#clear")
    assert page.evaluate("document.querySelectorAll('.card').length") == 0
    assert w.stat("n-done") == "0"


def test_page_stays_usable_with_200_images_on_a_phone(browser, url, tmp_path):
    """200 files in batches, on a phone-sized screen. /info is answered without its limits, so
    the page starts at 32 images per request and must shrink its batches after a real 413."""
    w = Watch(browser, url, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = w.page
    info = httpx.get(f"{url}/info").json()
    info.pop("limits")
    page.route(f"{url}/info", lambda route: route.fulfill(json=info))
    page.add_init_script("""window.__longest = 0; new PerformanceObserver(list => {
        for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
      }).observe({type: 'longtask', buffered: true});""")
    page.goto(f"{url}/ui")
    page.wait_for_selector("#info-body[data-loaded=true]")
    sources = [SAMPLES / s["file"] for s in manifest()]
    paths = []
    for i in range(200):
        paths.append(tmp_path / f"{i:03d}-{sources[i % len(sources)].name}")
        paths[-1].write_bytes(sources[i % len(sources)].read_bytes())
    t0 = time.perf_counter()
    page.set_input_files("#files", [str(p) for p in paths])
    w.wait_done(200, timeout_s=120)
    seconds = time.perf_counter() - t0
    cards = w.cards()
    assert all(c["state"] == "done" for c in cards), [c["error"] for c in cards if c["error"]]
    limit = int(httpx.get(f"{url}/info").json()["limits"]["max_images"])
    assert w.compares >= math.ceil(200 / limit)  # batched; more when a batch came back 413
    longest = page.evaluate("window.__longest")
    print(f"200 images: {seconds:.1f} s, {w.compares} /compare requests, "
          f"longest main-thread task {longest:.0f} ms")
    assert longest < 1000  # never frozen for a second
    # Phone width: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(tmp_path / "ui-phone.png"))
    w.check_clean()


def test_page_says_the_server_is_not_ready(browser, store, tmp_path):
    """A server that cannot load its models: /info and every image say why, readably.
    (CUDA_VISIBLE_DEVICES="" hides every GPU, so CIFAR2_DEVICE=cuda fails on any machine.)"""
    env = server_env(store, CIFAR2_DEVICE="cuda", CUDA_VISIBLE_DEVICES="")
    proc, base = start_server(env, free_port(), tmp_path / "serve.log", ready=False)
    try:
        w = Watch(browser, base, viewport={"width": 1000, "height": 800})
        w.page.goto(f"{base}/ui")
        w.page.wait_for_selector("#info-body[data-loaded=true]")
        assert "Not ready" in w.page.text_content("#info-body")
        w.page.set_input_files("#files", [str(SAMPLES / manifest()[0]["file"])])
        w.wait_done(1)
        error = w.cards()[0]["error"]
        assert "Error 503" in error and "not ready" in error and "CIFAR2_DEVICE=cuda" in error
        w.check_clean()
    finally:
        stop(proc)
