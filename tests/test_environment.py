"""environment.yml (Binder, conda) and pyproject.toml must carry the same packages and pins."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name_and_pin(spec: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", spec)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


# Extras that Binder needs too (a notebook uses them), so environment.yml carries them beside the dependencies;
# other extras (bench: the peers of the benchmarks) stay out of it.
_BINDER_EXTRAS = ["dask"]
# conda-forge's names of pip packages: pip's dask[dataframe] is conda-forge's dask-core (pandas and pyarrow, what
# the [dataframe] extra adds, are listed on their own in both files).
_CONDA_NAMES = {"dask-core": "dask"}


def test_environment_and_pyproject_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for e in _BINDER_EXTRAS for d in project["optional-dependencies"][e]]
    py = dict(_name_and_pin(re.sub(r"\[[^\]]*\]", "", d)) for d in deps)
    conda = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        m = re.match(r"\s*-\s+([^#\s][^#]*?)\s*(#.*)?$", line)
        if not m or m.group(1).startswith(("python", "pip", "-e")):
            continue
        assert m.group(2), f"environment.yml: the pin of {m.group(1)!r} needs a one-line reason"
        name, pin = _name_and_pin(m.group(1))
        conda[_CONDA_NAMES.get(name, name)] = pin
    assert py == conda
    required = {"jupyterlab", "numpy", "scipy", "sympy", "matplotlib", "pandas", "nbval", "statsmodels"}
    assert required <= set(py)


def test_environment_installs_the_helper_itself():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*-\s+-e\s+\.\s*$", text, flags=re.M)
