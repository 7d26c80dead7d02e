"""The user guide's examples run: every ```python block of a page is executed in order in one
namespace, and every `$ layerprop ...` line of a ```console block is run through the CLI
(its exit status must be 0 unless the block shows an error, whose text must match)."""

import os
import re
import shlex

import numpy as np
import pytest

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")
PAGES = {  # page -> modules its examples need
    "saving.md": ["safetensors"],
    "interop.md": ["torch", "onnxruntime", "onnx"],
    "sklearn.md": ["sklearn"],
    "callbacks.md": ["safetensors", "matplotlib"],
    "cli.md": ["safetensors", "sklearn"],
    "reliability.md": [],
    "distributed.md": ["mpi4py", "sklearn", "safetensors"],
}
BLOCK = re.compile(r"^```(python|console)\n(.*?)^```", re.S | re.M)


def write_flowers(path):
    """A small iris-like CSV with a header and text labels, for cli.md."""
    rng = np.random.default_rng(0)
    species = ["setosa", "versicolor", "virginica"]
    centers = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    for i in range(150):
        k = i % 3
        x = centers[k] + rng.normal(0, 0.25, 4)
        lines.append(",".join(f"{v:.2f}" for v in x) + f",{species[k]}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run_console(block, capsys):
    from layerprop.cli import main
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ "):
            continue
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            if lines[i].strip():
                expected.append(lines[i])
            i += 1
        argv = shlex.split(line[2:])
        assert argv[0] == "layerprop", line
        try:
            code = main(argv[1:])
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        shown_error = any(ln.startswith("layerprop") and ": " in ln for ln in expected)
        if shown_error:
            assert code != 0, line
            for ln in expected:
                assert ln in out.err, f"{line}: expected {ln!r}, got {out.err!r}"
        else:
            assert code == 0, f"{line}: exit {code}: {out.err}"
            for ln in expected:
                assert ln in out.out, f"{line}: expected {ln!r} in the output"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_examples_run(page, tmp_path, monkeypatch, capsys):
    for mod in PAGES[page]:
        pytest.importorskip(mod)
    with open(os.path.join(DOCS, page)) as f:
        text = f.read()
    blocks = BLOCK.findall(text)
    assert any(lang == "python" for lang, _ in blocks), f"{page} has no python example"
    monkeypatch.chdir(tmp_path)
    write_flowers(tmp_path / "flowers.csv")
    namespace = {"__name__": f"docs_{page[:-3]}"}
    for n, (lang, code) in enumerate(blocks):
        if lang == "python":
            exec(compile(code, f"{page}[block {n}]", "exec"), namespace)
        else:
            run_console(code, capsys)
    try:
        import matplotlib.pyplot as plt
        plt.close("all")
    except ImportError:
        pass


def test_every_user_guide_page_is_tested():
    mine = {"saving.md", "interop.md", "sklearn.md", "callbacks.md", "cli.md", "reliability.md", "distributed.md"}
    assert mine <= set(os.listdir(DOCS))
    assert mine == set(PAGES)
