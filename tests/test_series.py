"""The series as a whole: titles, kernels, exercises with solutions, slide metadata, navigation and Binder links,
and the generator (tools/build_series.py) being idempotent and up to date."""
import importlib.util
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
LESSONS = [p for p in NOTEBOOKS if p.name[:2] != "00"]
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
# An exercise opens a line of a Markdown cell, one exercise per cell. CONTRIBUTING asks that it open the cell; an
# exercise that shares its cell with what precedes it (the Summary, the Exercises heading) is accepted, since its
# solution still follows it directly.
EXERCISE_LINE = re.compile(r"(?m)^\s*\*\*Exercise\s+(\d+)\.\*\*")


def _load_generator():
    spec = importlib.util.spec_from_file_location("build_series", ROOT / "tools" / "build_series.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _read(path: Path):
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def _tags(cell) -> list:
    return list(cell.metadata.get("tags", []))


def _ids(paths):
    return [p.name for p in paths]


def test_the_series_has_an_index_first():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_index.ipynb"
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), f"two notebooks share a number: {numbers}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_title_and_kernel(path):
    nb = _read(path)
    first = next(c for c in nb.cells if c.cell_type == "markdown")
    m = gen.TITLE_RE.search(first.source)
    assert m and first.source.lstrip().startswith("# "), f"{path.name}: the first cell must open with '# NN · Title'"
    assert m.group(1) == path.name[:2], f"{path.name}: its title says {m.group(1)}"
    ks = nb.metadata.get("kernelspec", {})
    assert ks.get("name") == "python3" and ks.get("language") == "python", f"{path.name}: kernelspec {ks}"
    assert ks.get("display_name") == "Python 3 (ipykernel)"


def _exercises(nb) -> list[tuple[int, list]]:
    """Return (number, solution cells) for each exercise; solution cells are the tagged cells right after it."""
    out = []
    for i, cell in enumerate(nb.cells):
        m = EXERCISE_LINE.search(cell.source) if cell.cell_type == "markdown" else None
        if not m:
            continue
        sols = []
        for nxt in nb.cells[i + 1:]:
            if "solution" not in _tags(nxt):
                break
            sols.append(nxt)
        out.append((int(m.group(1)), sols))
    return out


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_exercises_have_hidden_solutions(path):
    nb = _read(path)
    for i, cell in enumerate(nb.cells):
        marks = EXERCISE_LINE.findall(cell.source) if cell.cell_type == "markdown" else []
        assert len(marks) <= 1, f"{path.name}: cell {i} holds exercises {marks}; give each its own cell"
    found = _exercises(nb)
    numbers = [n for n, _ in found]
    assert 2 <= len(found) <= 4, f"{path.name}: {len(found)} exercises (want 2-4)"
    assert numbers == list(range(1, len(found) + 1)), f"{path.name}: exercises numbered {numbers}"
    for n, sols in found:
        assert sols, f"{path.name}: Exercise {n} has no solution cell tagged 'solution' right after it"
        for cell in sols:
            if cell.cell_type == "markdown":
                src = cell.source.strip()
                assert src.startswith(f"<details><summary>Solution {n}</summary>"), (
                    f"{path.name}: the solution of Exercise {n} must open with "
                    f"<details><summary>Solution {n}</summary>"
                )
                assert src.endswith("</details>"), f"{path.name}: Solution {n} must end with </details>"
            else:
                hidden = cell.metadata.get("jupyter", {})
                assert hidden.get("source_hidden") is True, f"{path.name}: Solution {n}: code not source_hidden"
                assert hidden.get("outputs_hidden") is True, f"{path.name}: Solution {n}: outputs not hidden"
    tagged = sum("solution" in _tags(c) for c in nb.cells)
    assert tagged == sum(len(s) for _, s in found), f"{path.name}: a 'solution' cell follows no exercise"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_slide_metadata_on_every_cell(path):
    nb = _read(path)
    for i, cell in enumerate(nb.cells):
        kind = cell.metadata.get("slideshow", {}).get("slide_type")
        assert kind in SLIDE_TYPES, f"{path.name}: cell {i} has slide_type {kind!r}"
        if "nav" in _tags(cell):
            assert kind == "skip"
        if "solution" in _tags(cell):
            assert kind in ("skip", "notes"), f"{path.name}: a solution would show on a slide"
    assert nb.cells[0].metadata["slideshow"]["slide_type"] == "slide"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_navigation_at_top_and_bottom(path):
    nb = _read(path)
    nav = [i for i, c in enumerate(nb.cells) if "nav" in _tags(c)]
    assert nav == [1, len(nb.cells) - 1], f"{path.name}: nav cells at {nav}, want after the title and last"
    src = nb.cells[1].source
    k = NOTEBOOKS.index(path)
    if k > 0:
        assert f"({NOTEBOOKS[k - 1].name})" in src
        assert "(00_index.ipynb)" in src
    if k + 1 < len(NOTEBOOKS):
        assert f"({NOTEBOOKS[k + 1].name})" in src
    assert f"urlpath=lab/tree/notebooks/{path.name})" in src


def _link_targets() -> list[tuple[str, str, Path]]:
    """Every link in the README and in the notebooks' Markdown: (where, link, the base folder it is relative to)."""
    out = [("README.md", link, ROOT) for link in LINK_RE.findall((ROOT / "README.md").read_text())]
    for path in NOTEBOOKS:
        for cell in _read(path).cells:
            if cell.cell_type == "markdown":
                out += [(path.name, link, NB_DIR) for link in LINK_RE.findall(cell.source)]
    return out


def test_every_link_names_a_file_that_exists():
    config = gen.load_config()
    prefix = f"https://mybinder.org/v2/gh/{config['owner']}/{config['name']}/{config['branch']}"
    binder = local = 0
    for where, link, base in _link_targets():
        url = urlparse(link)
        if url.netloc == "mybinder.org" and url.path.startswith("/v2/"):
            assert link.startswith(prefix + "?"), f"{where}: Binder link not to {prefix}: {link}"
            urlpath = parse_qs(url.query)["urlpath"][0]
            assert urlpath.startswith("lab/tree/notebooks/"), f"{where}: {link} does not open JupyterLab"
            target = ROOT / urlpath.removeprefix("lab/tree/")
            assert target.suffix == ".ipynb" and target.is_file(), f"{where}: Binder link to a missing {target.name}"
            binder += 1
        elif not url.scheme and not link.startswith("#"):
            target = (base / url.path).resolve()
            assert target.exists(), f"{where}: link to a missing file {link}"
            local += 1
    readme = (ROOT / "README.md").read_text()
    assert f"{prefix}?urlpath=lab/tree/notebooks/00_index.ipynb" in readme, "the README's badge must open the index"
    assert binder >= 2 * len(NOTEBOOKS) + 1 and local >= 1


def _copy_series(dest: Path) -> Path:
    shutil.copytree(NB_DIR, dest / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(ROOT / "README.md", dest / "README.md")
    return dest


def test_generated_files_are_up_to_date():
    stale = [p.relative_to(ROOT).as_posix() for p, text in gen.generate(ROOT, gen.load_config()).items()
             if p.read_text(encoding="utf-8") != text]
    assert not stale, f"run `.venv/bin/python tools/build_series.py`; out of date: {stale}"


def test_generator_is_idempotent_and_keeps_outputs(tmp_path):
    root = _copy_series(tmp_path)
    assert gen.main(["--root", str(root)]) == 0
    first = {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert gen.main(["--root", str(root)]) == 0
    assert gen.main(["--root", str(root), "--check"]) == 0
    assert {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} == first
    for path in NOTEBOOKS:
        before = [c.get("outputs") for c in _read(path).cells if c.cell_type == "code"]
        after = [c.get("outputs") for c in _read(root / "notebooks" / path.name).cells if c.cell_type == "code"]
        assert before == after, f"the generator changed outputs of {path.name}"


def test_check_detects_drift_and_a_rerun_repairs_it(tmp_path, capsys):
    root = _copy_series(tmp_path)
    gen.main(["--root", str(root)])
    index = root / "notebooks" / "00_index.ipynb"
    nb = _read(index)
    nb.cells.insert(2, nbformat.v4.new_markdown_cell("stale nav", metadata={"tags": ["nav"]}))
    nb.cells[0].metadata["slideshow"] = {"slide_type": "fragment"}
    nbformat.write(nb, index)
    (root / "README.md").write_text((root / "README.md").read_text().replace("| 00", "| 99"))
    capsys.readouterr()
    assert gen.main(["--root", str(root), "--check"]) == 1
    assert "notebooks/00_index.ipynb" in capsys.readouterr().out
    assert gen.main(["--root", str(root)]) == 0
    assert sum("nav" in _tags(c) for c in _read(index).cells) == 2
    assert gen.main(["--root", str(root), "--check"]) == 0


def test_one_line_descriptions():
    text = "\n\nThis lesson fits [the toy data](x.ipynb) by hand. Then more.\n\n**What you will learn**\n- a"
    assert gen.first_sentence(text) == "This lesson fits the toy data by hand."
    assert gen.first_sentence("\n**What you will learn**\n- a\n\nSecond paragraph! And on.") == "Second paragraph!"
    assert gen.first_sentence("Before we did A. This notebook does B. Then C.") == "This notebook does B."


def test_slide_rules():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    assert gen.slide_type(md("# 01 · T"), None) == "slide"
    assert gen.slide_type(md("## Theory"), code("x")) == "slide"
    assert gen.slide_type(md("### Part"), md("a")) == "subslide"
    assert gen.slide_type(md("**Exercise 2.** Do it."), md("a")) == "subslide"
    assert gen.slide_type(md("Next we fit."), code("x")) == "subslide"
    assert gen.slide_type(md("$$a$$"), md("a")) == "-"
    assert gen.slide_type(code("x"), md("a")) == "-"
    assert gen.slide_type(code("x", metadata={"tags": ["solution"]}), md("a")) == "notes"
    assert gen.slide_type(md("x", metadata={"tags": ["nav"]}), md("a")) == "skip"


def test_student_copies_drop_every_solution(tmp_path):
    student = importlib.util.spec_from_file_location("make_student_copies", ROOT / "tools" / "make_student_copies.py")
    module = importlib.util.module_from_spec(student)
    student.loader.exec_module(module)
    written = module.make_student_copies(ROOT, tmp_path)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        original, copy = _read(path), _read(tmp_path / path.name)
        assert not any("solution" in _tags(c) for c in copy.cells)
        assert not any("<summary>Solution" in c.source for c in copy.cells), f"{path.name}: a solution is left"
        assert sum("answer" in _tags(c) for c in copy.cells) == len(_exercises(original))
        kept = [c for c in original.cells if "solution" not in _tags(c)]
        assert [c.source for c in copy.cells if "answer" not in _tags(c)] == [c.source for c in kept]


def test_slides_leave_out_navigation_and_hide_solutions(tmp_path):
    spec = importlib.util.spec_from_file_location("build_slides", ROOT / "tools" / "build_slides.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    decks = module.build_slides(ROOT, tmp_path)
    assert [d.name for d in decks] == [p.stem + ".slides.html" for p in NOTEBOOKS]
    for path, deck in zip(NOTEBOOKS, decks):
        html = deck.read_text()
        assert f"urlpath=lab/tree/notebooks/{path.name}" not in html, f"{deck.name}: a navigation cell is on a slide"
        slides = sum(c.metadata["slideshow"]["slide_type"] in ("slide", "subslide") for c in _read(path).cells)
        assert html.count("<section") >= slides, f"{deck.name}: fewer sections than slides"
        for m in re.finditer(r"<summary>Solution \d+</summary>", html):
            opened, closed = html.rfind('<aside class="notes">', 0, m.start()), html.rfind("</aside>", 0, m.start())
            assert opened > closed, f"{deck.name}: a solution is on a slide, not in the speaker notes"


def test_curated_descriptions_name_notebooks_that_exist():
    names = {p.name for p in NOTEBOOKS}
    stale = sorted(set(gen.load_config()["descriptions"]) - names)
    assert not stale, f"tools/series.toml [descriptions] names notebooks that do not exist: {stale}"


# ------------------------------------------------------------------------------------ numbers in the prose
# A number in a notebook's prose must be one the notebook computes: it has to appear, to the digits quoted, in a
# code cell's output (or source, for a constant the code sets). Only these textbook constants are exempt.
PROSE_CONSTANTS = {
    "3.11": "the Python version the series needs",
    "97.5": "the percentile that bounds a two-sided 95% interval",
    "1.96": "the standard normal's 97.5% quantile",
}
_DECIMAL = re.compile(r"(?<![\w.^_{\\])[-\u2212]?\d+\.\d+(?![\d.]*\w)")
_FRACTION = re.compile(r"(?<![\w.])(-?\d+)/(\d+)(?![\w.])")


def _computed_numbers(nb) -> list[float]:
    """Every decimal and fraction a notebook's code cells set or print."""
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        texts.append(cell.source)
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            texts += [v for k, v in out.get("data", {}).items() if k.startswith("text/") and isinstance(v, str)]
    text = "\n".join(texts)
    found = [float(m.group(0).replace("\u2212", "-")) for m in _DECIMAL.finditer(text)]
    found += [int(a) / int(b) for a, b in _FRACTION.findall(text) if int(b)]
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_numbers_in_the_prose_are_computed(path):
    nb = _read(path)
    computed = _computed_numbers(nb)
    typed = []
    for cell in nb.cells:
        if cell.cell_type != "markdown" or "nav" in _tags(cell):
            continue
        for m in _DECIMAL.finditer(cell.source):
            quoted = m.group(0).replace("\u2212", "-")
            half_ulp = 0.5 * 10.0 ** -len(quoted.split(".")[1]) * (1 + 1e-9)
            if quoted.lstrip("-") in PROSE_CONSTANTS or any(abs(abs(c) - abs(float(quoted))) <= half_ulp for c in computed):
                continue
            typed.append(f"{quoted!r} in ...{cell.source[max(0, m.start() - 50):m.end()]!r}")
    assert not typed, f"{path.name}: numbers in the prose that no cell computes:\n" + "\n".join(typed)


def test_the_index_gives_the_readmes_commands():
    """The two commands a new user runs are spelled the same in the README and in the index."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)\n```", readme.split("## Quick start", 1)[1], re.S)
    open_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "jupyter lab" in open_cmd and "notebooks/00_index.ipynb" in open_cmd
    assert test_cmd == ".venv/bin/python -m pytest"
    index = "\n".join(c.source for c in _read(NB_DIR / "00_index.ipynb").cells)
    assert open_cmd in index and test_cmd in index


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_figure_has_a_title_and_no_object_repr(path):
    """use_style() gives each figure a text form naming its title; a bare repr or an untitled figure is a slip."""
    for cell in _read(path).cells:
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}):
                text = out["data"].get("text/plain", "")
                assert text.startswith("[figure: "), f"{path.name}: a figure stored as {text!r}"
            blob = str(out)
            assert not re.search(r"at 0x[0-9a-f]{6,}|<Figure size", blob), f"{path.name}: an object repr is stored"


MAX_CODE_LINE = 100


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_code_lines_fit_on_a_slide(path):
    """No code line over 100 characters: a longer one overflows its slide (and JupyterLab's default width)."""
    long = [
        f"cell {i}, {len(line)} characters: {line[:60]}..."
        for i, cell in enumerate(_read(path).cells) if cell.cell_type == "code"
        for line in cell.source.splitlines() if len(line) > MAX_CODE_LINE
    ]
    assert not long, f"{path.name}: code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long)
