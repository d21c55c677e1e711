"""Build a reveal.js slide deck of every notebook, for a lecturer presenting in class.

    python tools/build_slides.py              # -> _build/slides/NN_name.slides.html, one deck per notebook
    python tools/build_slides.py --out DIR    # somewhere else

The decks follow the slide metadata that ``tools/build_series.py`` writes on every cell: each ``##`` section is a
slide, each step within it (a sentence with its equation or code and output) a sub-slide below it (press the down
arrow), navigation cells are left out and solutions go to the speaker notes (press ``s``). Slides scroll when a
step is taller than the screen. Links between notebooks point to the other decks. Stored outputs are shown as
they are; nothing is re-executed.

The decks load reveal.js and MathJax from their CDNs (nbconvert's default), so the machine that shows them needs
internet access. To present offline, pass ``--reveal-prefix`` and ``--mathjax-url`` pointing at local copies.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbconvert import SlidesExporter

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the site builder beside this script
from build_site import rewrite_links  # noqa: E402  (one definition of what a link to a notebook is)

ROOT = Path(__file__).resolve().parent.parent


def deck_name(notebook: str) -> str:
    """Return the deck a notebook becomes: ``NN_name.slides.html``."""
    return Path(notebook).stem + ".slides.html"


def build_slides(root: Path, out: Path, reveal_prefix: str | None = None, mathjax_url: str | None = None) -> list[Path]:
    """Build one deck per notebook under ``root/notebooks`` into ``out``; return the decks written."""
    paths = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise SystemExit(f"no notebooks in {root / 'notebooks'}")
    out.mkdir(parents=True, exist_ok=True)
    options = {"reveal_scroll": True, "reveal_theme": "simple", "reveal_transition": "none"}
    if reveal_prefix:
        options["reveal_url_prefix"] = reveal_prefix
    if mathjax_url:
        options["mathjax_url"] = mathjax_url
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
    parser.add_argument("--reveal-prefix", default=None, help="URL or relative path of a reveal.js 4 copy")
    parser.add_argument("--mathjax-url", default=None, help="URL or relative path of MathJax.js (with ?config=)")
    args = parser.parse_args(argv)
    decks = build_slides(args.root.resolve(), args.out.resolve(), args.reveal_prefix, args.mathjax_url)
    print(f"built {len(decks)} decks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
