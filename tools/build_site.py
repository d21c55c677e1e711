"""Build the series as a static HTML site, to read without Jupyter.

    .venv/bin/python tools/build_site.py                 # -> _build/site/index.html and one page per notebook
    .venv/bin/python tools/build_site.py --out DIR       # somewhere else

Each notebook becomes one page through nbconvert's HTML exporter (JupyterLab's look, the template in
``tools/templates/lmm_site``): stored outputs as they are (nothing is re-executed), figures embedded in the page,
links between notebooks rewritten from ``NN_name.ipynb`` to ``NN_name.html`` (the index becomes ``index.html``),
solutions still collapsed (Markdown solutions are ``<details>`` blocks; code solutions are wrapped in one by the
template). MathJax 2 is copied into the site (``mathjax/``) and the pages point at it by a relative path, so
equations are typeset offline: it comes from Debian's ``libjs-mathjax`` (``/usr/share/javascript/mathjax``) or
from the folder given by ``--mathjax`` or the environment variable ``LMM_MATHJAX_DIR``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"
MATHJAX_CANDIDATES = [Path("/usr/share/javascript/mathjax"), Path("/usr/share/nodejs/mathjax")]
MATHJAX_CONFIG = "TeX-AMS_CHTML-full,Safe"
NOTEBOOK_LINK_RE = re.compile(r"\]\((\d{2}_[^)\s#]+?)\.ipynb(#[^)\s]*)?\)")
TITLE_RE = re.compile(r"^#\s+(\d{2})\s*·\s*(.+?)\s*$", re.M)


def page_name(notebook: str) -> str:
    """Return the page a notebook becomes: ``00_index`` is the site's ``index.html``; others keep their stem."""
    stem = Path(notebook).stem
    return ("index" if stem == "00_index" else stem) + ".html"


def rewrite_links(nb, name: Callable[[str], str] = page_name) -> None:
    """Point the Markdown links at other notebooks (``](NN_name.ipynb)``) to what ``name`` says they become."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = NOTEBOOK_LINK_RE.sub(lambda m: f"]({name(m.group(1))}{m.group(2) or ''})", cell.source)


def prepare(path: Path):
    """Read a notebook and rewrite its links between notebooks for the built pages; return it and its title."""
    nb = nbformat.read(path, as_version=4)
    rewrite_links(nb)
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    m = TITLE_RE.search(first)
    title = f"{m.group(1)} · {m.group(2)}" if m else path.stem
    return nb, f"{title} | LMM from Scratch"


def find_mathjax(explicit: Path | None = None) -> Path:
    """Return a local MathJax 2 folder (the one holding ``MathJax.js``)."""
    env = os.environ.get("LMM_MATHJAX_DIR")
    candidates = [explicit] if explicit else ([Path(env)] if env else []) + MATHJAX_CANDIDATES
    for folder in candidates:
        if folder and (folder / "MathJax.js").is_file():
            return folder
    raise SystemExit(
        "no local MathJax 2 found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "): install Debian's libjs-mathjax (apt-get install libjs-mathjax) or pass --mathjax DIR"
    )


def copy_mathjax(source: Path, dest: Path) -> None:
    """Copy MathJax into the site, leaving out its unpacked sources and test pages (about 30 MB remain)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("unpacked", "test"), dirs_exist_ok=True)


def build_site(root: Path, out: Path, mathjax: Path | None = None) -> list[Path]:
    """Build every notebook under ``root/notebooks`` into a page in ``out``; return the pages written."""
    paths = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise SystemExit(f"no notebooks in {root / 'notebooks'}")
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(find_mathjax(mathjax), out / "mathjax")
    exporter = HTMLExporter(
        template_name="lmm_site",
        extra_template_basedirs=[str(TEMPLATES)],
        mathjax_url=f"mathjax/MathJax.js?config={MATHJAX_CONFIG}",
    )
    pages = []
    for path in paths:
        nb, title = prepare(path)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        page = out / page_name(path.name)
        page.write_text(body, encoding="utf-8")
        pages.append(page)
    return pages


def main(argv: list[str] | None = None) -> int:
    """Command line: build the site."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "site", help="output folder")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this repository)")
    parser.add_argument("--mathjax", type=Path, default=None, help="a local MathJax 2 folder (with MathJax.js)")
    args = parser.parse_args(argv)
    pages = build_site(args.root.resolve(), args.out.resolve(), args.mathjax)
    print(f"built {len(pages)} pages in {args.out}; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
