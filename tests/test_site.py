"""The static site (tools/build_site.py) and the offline slide decks (tools/build_slides.py --offline), opened in
headless Chromium with no network: every page loads only files it carries, its equations are typeset by the bundled
MathJax with no raw TeX left on screen, its figures render, and every link between pages resolves. Keeps a
screenshot of one page in _build/screenshots/. Skipped, with the reason, where Chromium or a local MathJax is
missing (CI installs both: apt-get install chromium libjs-mathjax), and, for the decks, where reveal.js & co. have
not been installed from npm (CI does: npm install --prefix _build/npm reveal.js@4 requirejs@2 jquery@3)."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SCREENSHOT = ROOT / "_build" / "screenshots" / "site.png"
FIGURE_TYPES = ("image/png", "image/jpeg", "image/gif")
# What MathJax leaves behind when it did not typeset something: a dollar sign (every $ in the prose delimits math;
# a price would need a \$), a TeX command (\hat, \top, \frac, ...), escaped braces, or a TeX sub/superscript.
# Code, outputs and MathJax's own hidden sources are not visible text (Page leaves them out).
RAW_TEX = re.compile(r"\$|\\[A-Za-z]+|\\[{}]|[_^]\{")


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


site = _load_tool("build_site")
slides = _load_tool("build_slides")


def _chromium() -> str | None:
    for name in (os.environ.get("LMM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _browser_args(chromium: str, profile: Path) -> list[str]:
    """Headless, no sandbox (CI runs as root), no GPU, and no network: every host name fails to resolve."""
    return [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--hide-scrollbars",
        "--window-size=1100,1400", "--virtual-time-budget=20000",
    ]


class Page(HTMLParser):
    """What the rendered DOM holds: body attributes, images, links, MathJax output, and the visible text."""

    HIDDEN = {"script", "style", "pre", "code", "head", "title"}

    def __init__(self, dom: str):
        super().__init__()
        self.body: dict = {}
        self.images: list[dict] = []
        self.links: list[str] = []
        self.assets: list[str] = []  # what the page loads: scripts, style sheets, module imports
        self.math_sources = 0
        self.math_rendered = 0
        self.math_errors = 0
        self.text: list[str] = []
        self._hidden = 0
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "body":
            self.body = a
        elif tag == "img":
            self.images.append(a)
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "script" and a.get("src"):
            self.assets.append(a["src"])
        elif tag == "link" and a.get("href") and "stylesheet" in (a.get("rel") or ""):
            self.assets.append(a["href"])
        elif tag == "script" and (a.get("type") or "").startswith("math/tex"):
            self.math_sources += 1
        if "mjx-chtml" in cls.split():
            self.math_rendered += 1
        if "mjx-merror" in cls or "MathJax_Error" in cls:
            self.math_errors += 1
        if tag in self.HIDDEN:
            self._hidden += 1

    def handle_endtag(self, tag):
        if tag in self.HIDDEN and self._hidden:
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.text.append(data)
        self.assets += re.findall(r"\bimport\b[^;]*?from\s+['\"]([^'\"]+)['\"]", data)  # <script type=module>


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build the site into a fresh folder and dump every page's DOM after Chromium has run its scripts."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the site's browser test needs it")
    try:
        mathjax = site.find_mathjax()
    except SystemExit as err:
        pytest.skip(str(err))
    out = tmp_path_factory.mktemp("site")
    pages = site.build_site(ROOT, out, mathjax)

    def dump(page: Path) -> tuple[Path, subprocess.CompletedProcess]:
        profile = tmp_path_factory.mktemp("chromium-profile")
        args = _browser_args(chromium, profile) + ["--dump-dom", page.as_uri()]
        return page, subprocess.run(args, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:
        doms = dict(pool.map(dump, pages))
    return out, doms, chromium


def _case(path: Path) -> str:
    return site.page_name(path.name)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[_case(p) for p in NOTEBOOKS])
def test_page_renders(built, notebook):
    out, doms, _ = built
    page = out / site.page_name(notebook.name)
    run = doms[page]
    assert run.returncode == 0, f"{page.name}: Chromium failed: {run.stderr[-2000:]}"
    dom = Page(run.stdout)
    assert dom.body, f"{page.name}: no <body> in the rendered page"
    assert dom.body.get("data-mathjax") == "done", f"{page.name}: MathJax did not load or did not finish"

    nb = nbformat.read(notebook, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    markdown = re.sub(r"```.*?```|`[^`\n]*`", "", markdown, flags=re.S)  # code spans are not math
    if "$" in markdown:
        assert dom.math_sources > 0 and dom.math_rendered >= dom.math_sources, (
            f"{page.name}: {dom.math_sources} equations found, {dom.math_rendered} typeset"
        )
    assert dom.math_errors == 0, f"{page.name}: MathJax reported {dom.math_errors} errors"
    visible = "".join(dom.text)
    raw = [f"{m.group(0)!r} in ...{visible[max(0, m.start() - 40):m.end() + 40]!r}"
           for m in RAW_TEX.finditer(visible)]
    assert not raw, f"{page.name}: raw TeX left on screen after MathJax:\n" + "\n".join(raw[:10])

    figures = sum(any(t in o.get("data", {}) for t in FIGURE_TYPES) for c in nb.cells if c.cell_type == "code"
                  for o in c.outputs)
    assert len(dom.images) >= figures, f"{page.name}: {figures} figures in the notebook, {len(dom.images)} shown"
    for img in dom.images:
        size = img.get("data-rendered-size", "0x0")
        assert size != "0x0" and not size.startswith("0x"), f"{page.name}: an image did not render ({size})"


def test_pages_load_nothing_from_the_network(built):
    """The site reads offline: every script and style sheet a built page loads is a file inside the site."""
    out, doms, _ = built
    for page in doms:
        for src in Page(page.read_text(encoding="utf-8")).assets:
            url = urlparse(src)
            assert not url.scheme and not src.startswith("//"), f"{page.name}: loads {src} from the network"
            assert (page.parent / url.path).resolve().is_file(), f"{page.name}: loads {src}, which is not there"


def test_every_link_between_pages_resolves(built):
    out, doms, _ = built
    reached = {"index.html"}
    for page, run in doms.items():
        for href in Page(run.stdout).links:
            url = urlparse(href)
            if url.scheme or href.startswith("#"):
                continue
            target = (page.parent / url.path).resolve()
            assert target.is_file(), f"{page.name}: link {href!r} leads nowhere"
            reached.add(target.name)
    assert reached >= {p.name for p in doms}, f"pages no link leads to: {sorted({p.name for p in doms} - reached)}"


def test_solutions_stay_collapsed(built):
    out, doms, _ = built
    for page, run in doms.items():
        for m in re.finditer(r"<details[^>]*>\s*<summary>\s*Solution", run.stdout):
            assert " open" not in m.group(0), f"{page.name}: a solution is open"


def test_screenshot_of_one_page(built):
    out, _, chromium = built
    page = out / site.page_name(NOTEBOOKS[1].name if len(NOTEBOOKS) > 1 else NOTEBOOKS[0].name)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    args = _browser_args(chromium, out.parent / "screenshot-profile") + [f"--screenshot={SCREENSHOT}", page.as_uri()]
    subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 10_000


# ------------------------------------------------------------------------------------ the offline slide decks
DECKS_IN_BROWSER = ["06_numeric-ml.ipynb", "10_scaling.ipynb"]  # the most equations; rendering all 11 takes long


@pytest.fixture(scope="module")
def offline_decks(tmp_path_factory):
    """Build the decks with --offline into a fresh folder (skip, saying why, if an offline asset is missing)."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the slides' browser test needs it")
    out = tmp_path_factory.mktemp("slides")
    try:
        decks = slides.build_slides(ROOT, out, offline=True)
    except SystemExit as err:
        pytest.skip(f"the offline slides cannot be built here: {err}")
    return out, decks, chromium


def test_offline_build_stops_with_a_clear_message_when_an_asset_is_missing(tmp_path):
    with pytest.raises(SystemExit, match=r"npm install --prefix _build/npm reveal\.js@4"):
        slides.copy_vendor(tmp_path / "no-npm-here", tmp_path / "vendor")


def test_offline_decks_load_nothing_from_the_network(offline_decks):
    out, decks, _ = offline_decks
    assert [d.name for d in decks] == [slides.deck_name(p.name) for p in NOTEBOOKS]
    for deck in decks:
        html = deck.read_text(encoding="utf-8")
        loaded = Page(html).assets
        # reveal.js and its notes plugin are loaded by require.js, from a list in an inline script
        for block in re.findall(r"require\(\s*\{[^}]*\},\s*\[([^\]]*)\]", html):
            loaded += re.findall(r'"([^"]+)"', block)
        assert any("reveal.js" in src for src in loaded), f"{deck.name}: reveal.js is not loaded"
        for src in loaded:
            url = urlparse(src)
            assert not url.scheme and not src.startswith("//"), f"{deck.name}: loads {src} from the network"
            target = (deck.parent / url.path).resolve()
            assert target.is_file(), f"{deck.name}: loads {src}, which is not there"
            if target.suffix == ".css":
                assert not re.search(r"@import\s+url\(\s*['\"]?(https?:)?//", target.read_text(encoding="utf-8")), (
                    f"{deck.name}: {src} imports from the network"
                )


@pytest.mark.parametrize("name", DECKS_IN_BROWSER)
def test_offline_deck_renders_without_a_network(offline_decks, tmp_path, name):
    out, _, chromium = offline_decks
    deck = out / slides.deck_name(name)
    args = _browser_args(chromium, tmp_path / "profile") + ["--dump-dom", deck.as_uri()]
    run = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"{deck.name}: Chromium failed: {run.stderr[-2000:]}"
    assert re.search(r'<div class="reveal [^"]*\bready\b', run.stdout), f"{deck.name}: reveal.js did not start"
    dom = Page(run.stdout)
    assert dom.math_sources > 0 and dom.math_rendered >= dom.math_sources, (
        f"{deck.name}: {dom.math_sources} equations found, {dom.math_rendered} typeset"
    )
    assert dom.math_errors == 0, f"{deck.name}: MathJax reported {dom.math_errors} errors"
    visible = "".join(dom.text)
    raw = [f"{m.group(0)!r} in ...{visible[max(0, m.start() - 40):m.end() + 40]!r}"
           for m in RAW_TEX.finditer(visible)]
    assert not raw, f"{deck.name}: raw TeX left on a slide:\n" + "\n".join(raw[:10])
