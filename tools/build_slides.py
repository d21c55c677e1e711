"""Build a reveal.js slide deck of every notebook, for a lecturer presenting in class.

    .venv/bin/python tools/build_slides.py              # -> _build/slides/NN_name.slides.html, one deck per notebook
    .venv/bin/python tools/build_slides.py --offline    # the same, reveal.js & co. and MathJax copied in
    .venv/bin/python tools/build_slides.py --out DIR    # somewhere else

The decks follow the slide metadata that ``tools/build_series.py`` writes on every cell: each ``##`` section is a
slide, each step within it (a sentence with its equation or code and output) a sub-slide below it (press the down
arrow), navigation cells are left out and solutions go to the speaker notes (press ``s``). Slides scroll when a
step is taller than the screen. Links between notebooks point to the other decks. Stored outputs are shown as
they are; nothing is re-executed.

By default the decks load reveal.js, require.js, jQuery and MathJax from their CDNs (nbconvert's default), so the
machine that shows them needs internet access. ``--offline`` copies them into the output folder (``vendor/`` and
``mathjax/``) and points the decks at those copies by relative paths, so the folder can be carried to a lecture
hall without a network. The offline build needs

- reveal.js 4, require.js 2 and jQuery 3 from the npm registry, installed once into ``_build/npm`` (never
  committed) with ``npm install --prefix _build/npm reveal.js@4 requirejs@2 jquery@3`` (or ``--npm-dir DIR``);
- MathJax 2 from Debian's ``libjs-mathjax``, as the static site uses it (see ``tools/build_site.py``).

It stops with a message saying which of them is missing and how to get it. The offline copy of the theme leaves out
its Google Fonts import, so the slides use the theme's fallback fonts.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import nbformat
from nbconvert import SlidesExporter

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the site builder beside this script
from build_site import MATHJAX_CONFIG, copy_mathjax, find_mathjax, rewrite_links  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"
THEME = "simple"
NPM_INSTALL = "npm install --prefix _build/npm reveal.js@4 requirejs@2 jquery@3"
# What an offline deck loads from vendor/, and where each comes from in npm's node_modules. reveal.js is a folder:
# its dist/ (the script, its CSS and the theme) and the speaker-notes plugin.
VENDOR = {
    "reveal.js": "reveal.js",
    "require.js": "requirejs/require.js",
    "jquery.min.js": "jquery/dist/jquery.min.js",
}
REVEAL_PARTS = ["dist/reveal.js", "dist/reveal.css", f"dist/theme/{THEME}.css", "plugin/notes/notes.js"]
FONT_IMPORT_RE = re.compile(r"@import url\(https?://[^)]*\);?")


def deck_name(notebook: str) -> str:
    """Return the deck a notebook becomes: ``NN_name.slides.html``."""
    return Path(notebook).stem + ".slides.html"


def copy_vendor(npm_dir: Path, dest: Path) -> None:
    """Copy reveal.js, require.js and jQuery from ``npm_dir/node_modules`` into ``dest``; stop if one is missing."""
    modules = npm_dir / "node_modules"
    wanted = [modules / "reveal.js" / part for part in REVEAL_PARTS]
    wanted += [modules / source for name, source in VENDOR.items() if name != "reveal.js"]
    missing = [str(path) for path in wanted if not path.is_file()]
    if missing:
        raise SystemExit(
            "the offline slides need reveal.js 4, require.js 2 and jQuery 3 from npm, and these are missing:\n  "
            + "\n  ".join(missing)
            + f"\ninstall them from the repository root with\n  {NPM_INSTALL}\n(or pass --npm-dir DIR)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(modules / "reveal.js" / "dist", dest / "reveal.js" / "dist", dirs_exist_ok=True)
    shutil.copytree(modules / "reveal.js" / "plugin" / "notes", dest / "reveal.js" / "plugin" / "notes",
                    dirs_exist_ok=True)
    theme = dest / "reveal.js" / "dist" / "theme" / f"{THEME}.css"
    theme.write_text(FONT_IMPORT_RE.sub("", theme.read_text(encoding="utf-8")), encoding="utf-8")
    for name, source in VENDOR.items():
        if name != "reveal.js":
            shutil.copy2(modules / source, dest / name)


def build_slides(root: Path, out: Path, reveal_prefix: str | None = None, mathjax_url: str | None = None,
                 offline: bool = False, npm_dir: Path | None = None, mathjax: Path | None = None) -> list[Path]:
    """Build one deck per notebook under ``root/notebooks`` into ``out``; return the decks written.

    With ``offline``, reveal.js, require.js and jQuery (from ``npm_dir``, default ``root/_build/npm``) and MathJax
    (``mathjax`` or Debian's libjs-mathjax) are copied into ``out`` and the decks load them from there.
    """
    paths = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise SystemExit(f"no notebooks in {root / 'notebooks'}")
    options = {"reveal_scroll": True, "reveal_theme": THEME, "reveal_transition": "none",
               "template_name": "lmm_slides", "extra_template_basedirs": [str(TEMPLATES)]}
    if offline:
        mathjax_dir = find_mathjax(mathjax)  # both checks before anything is written
        copy_vendor(npm_dir or root / "_build" / "npm", out / "vendor")
        copy_mathjax(mathjax_dir, out / "mathjax")
        options |= {"reveal_url_prefix": "vendor/reveal.js", "require_js_url": "vendor/require.js",
                    "jquery_url": "vendor/jquery.min.js", "mathjax_url": f"mathjax/MathJax.js?config={MATHJAX_CONFIG}"}
    if reveal_prefix:
        options["reveal_url_prefix"] = reveal_prefix
    if mathjax_url:
        options["mathjax_url"] = mathjax_url
    out.mkdir(parents=True, exist_ok=True)
    exporter = SlidesExporter(**options)
    decks = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        rewrite_links(nb, deck_name)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        deck = out / deck_name(path.name)
        deck.write_text(body, encoding="utf-8")
        decks.append(deck)
    return decks


def main(argv: list[str] | None = None) -> int:
    """Command line: build every deck."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "slides", help="output folder")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this repository)")
    parser.add_argument("--offline", action="store_true",
                        help="copy reveal.js, require.js, jQuery and MathJax into the output: no network needed")
    parser.add_argument("--npm-dir", type=Path, default=None,
                        help=f"where npm installed reveal.js & co. (default: _build/npm, by: {NPM_INSTALL})")
    parser.add_argument("--mathjax", type=Path, default=None, help="a local MathJax 2 folder (with MathJax.js)")
    parser.add_argument("--reveal-prefix", default=None, help="URL or relative path of a reveal.js 4 copy")
    parser.add_argument("--mathjax-url", default=None, help="URL or relative path of MathJax.js (with ?config=)")
    args = parser.parse_args(argv)
    decks = build_slides(args.root.resolve(), args.out.resolve(), args.reveal_prefix, args.mathjax_url,
                         offline=args.offline, npm_dir=args.npm_dir, mathjax=args.mathjax)
    where = "offline: everything they load is in that folder" if args.offline else "they load reveal.js from CDNs"
    print(f"built {len(decks)} decks in {args.out} ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
