"""Write student copies of the notebooks: the same lessons with the worked solutions taken out.

    .venv/bin/python tools/make_student_copies.py              # -> _build/student/notebooks/NN_name.ipynb
    .venv/bin/python tools/make_student_copies.py --out DIR    # somewhere else

Every cell tagged ``solution`` is removed; in place of each exercise's solution the copy has one empty code cell
(tagged ``answer``) for the student's work. Everything else, stored outputs included, is kept, so the copies read
like the originals and a lecturer can hand the solutions out later. The copies need ``lmm_helpers`` installed
(``pip install -e .`` in a clone) to run. Their "Open in Binder" links still open the full series, solutions
included: hand out the files, not the links, when the solutions must stay hidden.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_TAG = "solution"


def strip_solutions(nb):
    """Return the notebook with each run of solution cells replaced by one empty answer cell."""
    cells = []
    for cell in nb.cells:
        is_solution = SOLUTION_TAG in cell.metadata.get("tags", [])
        if not is_solution:
            cells.append(cell)
        elif not cells or "answer" not in cells[-1].metadata.get("tags", []):
            answer = nbformat.v4.new_code_cell("# Your answer here\n", metadata={"tags": ["answer"]})
            if "id" in cell:
                answer["id"] = f"answer-{cell['id']}"[:64]
            else:
                del answer["id"]
            cells.append(answer)
    nb.cells = cells
    return nb


def make_student_copies(root: Path, out: Path) -> list[Path]:
    """Write a solution-free copy of every notebook under ``root/notebooks`` into ``out``; return the paths."""
    paths = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise SystemExit(f"no notebooks in {root / 'notebooks'}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = strip_solutions(nbformat.read(path, as_version=nbformat.NO_CONVERT))
        nbformat.write(nb, out / path.name)
        written.append(out / path.name)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: write the student copies."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "student" / "notebooks", help="output folder")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this repository)")
    args = parser.parse_args(argv)
    written = make_student_copies(args.root.resolve(), args.out.resolve())
    print(f"wrote {len(written)} student copies to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
