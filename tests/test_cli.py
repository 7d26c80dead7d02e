"""`layerprop train`: CSV, .npz and built-in data, architecture and optimizer options, a
.safetensors model written; every bad argument or unreadable file gives one line on stderr
and a non-zero exit, never a traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest

import layerprop as lp
from layerprop.cli import main

pytest.importorskip("safetensors")


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors and --help
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys, *argv, match):
    code, out, err = run(capsys, *argv)
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and match in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def csv_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 3))
    labels = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    p = tmp_path / "data.csv"
    lines = ["a,b,label,c"] + [f"{x[0]:.6f},{x[1]:.6f},{lab},{x[2]:.6f}" for x, lab in zip(X, labels)]
    p.write_text("\n".join(lines) + "\n")
    return p


def metadata(path):
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        return f.metadata()


def test_train_builtin_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out_path = tmp_path / "digits.safetensors"
    code, out, err = run(capsys, "train", "digits", "--epochs", "8", "--hidden", "32", "--seed", "1",
                         "--output", str(out_path), "--no-progress")
    assert code == 0, err
    assert "1797 rows, 64 features, classification (10 classes)" in out
    assert "epoch   8/8" in out and "validation loss" in out
    acc = float(out.split("validation loss")[1].split("accuracy")[1].split()[0])
    model = lp.load(out_path)
    assert model.in_features == 64 and model.out_features == 10 and model.loss == "cross_entropy"
    from sklearn.datasets import load_digits
    d = load_digits()
    assert (model.predict((d.data / 16).astype(np.float32)).argmax(1) == d.target).mean() > 0.85
    assert acc > 0.85
    assert json.loads(metadata(out_path)["layerprop.cli"]) == {"task": "classification", "classes": list(range(10))}


def test_train_csv_with_header_text_labels_and_named_target(csv_file, tmp_path, capsys):
    out_path = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", str(csv_file), "--target", "label", "--hidden", "16,8",
                         "--activation", "tanh", "--dropout", "0.1", "--optimizer", "sgd", "--lr", "0.1",
                         "--momentum", "0.9", "--epochs", "15", "--batch-size", "8", "-o", str(out_path))
    assert code == 0, err
    model = lp.load(out_path)
    assert [type(l).__name__ for l in model._seq_layers] == ["Linear", "Tanh", "Dropout", "Linear", "Tanh",
                                                            "Dropout", "Linear"]
    assert model.in_features == 3 and model.out_features == 2
    assert type(model.optimizer) is lp.SGD and model.optimizer.momentum == 0.9
    assert json.loads(metadata(out_path)["layerprop.cli"])["classes"] == ["no", "yes"]
    assert "72 for training, 18 for validation" in out


def test_train_headerless_csv_regression_and_npz_multi_output(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 4))
    y = X @ np.array([0.5, -1.0, 2.0, 0.1]) + 0.25
    p = tmp_path / "reg.csv"
    np.savetxt(p, np.column_stack([X, y]), delimiter=",")
    code, out, err = run(capsys, "train", str(p), "--epochs", "40", "--lr", "0.01", "--val-split", "0",
                         "--dtype", "float64", "-o", str(tmp_path / "reg.safetensors"))
    assert code == 0, err
    assert "regression (1 target(s))" in out and "validation" not in out.split("Trained")[1]
    losses = [float(ln.split("loss")[1].split()[0]) for ln in out.splitlines() if ln.startswith("epoch")]
    assert len(losses) == 40 and losses[-1] < losses[0] / 4
    model = lp.load(tmp_path / "reg.safetensors")
    assert model.dtype == "float64" and model.loss == "mse"

    Y = np.column_stack([y, -y, y * 2])
    np.savez(tmp_path / "multi.npz", features=X, targets=Y)
    code, out, err = run(capsys, "train", str(tmp_path / "multi.npz"), "--x-key", "features", "--y-key", "targets",
                         "--epochs", "2", "--optimizer", "adamw", "--weight-decay", "0.1",
                         "-o", str(tmp_path / "multi.safetensors"))
    assert code == 0, err
    model = lp.load(tmp_path / "multi.safetensors")
    assert model.out_features == 3 and type(model.optimizer) is lp.AdamW and model.optimizer.weight_decay == 0.1


def test_help_explains_every_option(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    for opt in ("--target", "--x-key", "--y-key", "--task", "--hidden", "--activation", "--dropout",
                "--optimizer", "--lr", "--momentum", "--weight-decay", "--epochs", "--batch-size",
                "--val-split", "--dtype", "--seed", "--threads", "--output", "--progress", "DATA"):
        assert opt in out, opt
    assert out.count("default") >= 12


def test_python_dash_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "layerprop", "train", str(tmp_path / "missing.csv")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.csv: no such file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "layerprop", "train", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "usage: layerprop train" in r.stdout


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("argv, match", [
    (["--lr", "0"], "--lr"), (["--lr", "abc"], "--lr"), (["--hidden", "a,b"], "--hidden"),
    (["--hidden", "8,-1"], "--hidden"), (["--val-split", "1.5"], "--val-split"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"), (["--dropout", "1"], "--dropout"), (["--optimizer", "rmsprop"], "--optimizer"),
    (["--activation", "swish"], "--activation"), (["--threads", "-2"], "--threads"), (["--bogus"], "--bogus"),
    (["--momentum", "0.9"], "--momentum"), (["--task", "nonsense"], "--task"),
])
def test_bad_arguments(capsys, csv_file, tmp_path, argv, match):
    refused(capsys, "train", str(csv_file), "-o", str(tmp_path / "m.safetensors"), *argv, match=match)
    assert not (tmp_path / "m.safetensors").exists()


def test_missing_data_argument(capsys):
    refused(capsys, "train", match="DATA")


def write(tmp_path, name, content):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return str(p)


@pytest.mark.parametrize("name, content, extra, match", [
    ("missing.csv", None, [], "no such file"),
    ("data.parquet", "x", [], "unknown file type"),
    ("empty.csv", "", [], "no rows"),
    ("header.csv", "a,b\n", [], "no data rows"),
    ("ragged.csv", "1,2,3\n4,5\n", [], "line 2 has 2 columns"),
    ("text.csv", "a,b\n1,0\nx,1\n", [], "line 3, column 'a': not a number"),
    ("onecol.csv", "1\n2\n", [], "at least one feature column"),
    ("binary.csv", b"\xff\xfe\x00\x81garbage\x00", [], "data"),
    ("target.csv", "a,b\n1,0\n2,1\n", ["--target", "zzz"], "--target: no column 'zzz'"),
    ("target2.csv", "1,0\n2,1\n", ["--target", "7"], "--target: column index 7"),
    ("oneclass.csv", "1,0\n2,0\n3,0\n", ["--task", "classification"], "at least 2 classes"),
    ("labels.csv", "1,a\n2,b\n3,a\n", ["--task", "regression"], "regression needs numeric targets"),
    ("onerow.csv", "1,0\n", [], "at least 2 rows"),
    ("nan.csv", "1,0\nnan,1\n3,0\n4,1\n5,0\n", [], "NaN"),
    ("corrupt.npz", b"PK\x03\x04 not really a zip", [], "not a readable .npz"),
    ("random.npz", bytes(range(256)) * 4, [], "not a readable .npz"),
])
def test_unreadable_or_bad_data(capsys, tmp_path, name, content, extra, match):
    path = str(tmp_path / name) if content is None else write(tmp_path, name, content)
    refused(capsys, "train", path, "-o", str(tmp_path / "m.safetensors"), *extra, match=match)
    assert not (tmp_path / "m.safetensors").exists()


def test_bad_npz_contents(capsys, tmp_path):
    X = np.zeros((4, 2))
    np.savez(tmp_path / "a.npz", X=X, y=np.array([0, 1, 0, 1]))
    refused(capsys, "train", str(tmp_path / "a.npz"), "--y-key", "labels", match="--y-key: no array 'labels'")
    np.savez(tmp_path / "b.npz", X=np.zeros(4), y=np.zeros(4))
    refused(capsys, "train", str(tmp_path / "b.npz"), match="must be 2-D")
    np.savez(tmp_path / "c.npz", X=X, y=np.zeros(3))
    refused(capsys, "train", str(tmp_path / "c.npz"), match="must have 4 rows")
    np.savez(tmp_path / "d.npz", X=X, y=np.array([{}, {}, {}, {}], dtype=object))
    refused(capsys, "train", str(tmp_path / "d.npz"), match="unreadable .npz")  # needs pickle: refused
    np.savez(tmp_path / "e.npz", X=np.array([["a", "b"]] * 4), y=np.zeros(4))
    refused(capsys, "train", str(tmp_path / "e.npz"), match="must be numeric")


def test_directory_and_output_folder(capsys, tmp_path, csv_file):
    refused(capsys, "train", str(tmp_path), match="is a directory")
    refused(capsys, "train", str(csv_file), "-o", str(tmp_path / "no" / "such" / "m.safetensors"),
            match="--output: folder")
