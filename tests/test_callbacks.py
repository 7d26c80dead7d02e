"""fit's callbacks (EarlyStopping, ModelCheckpoint, LambdaCallback, History.plot),
initial_epoch, and the progress bar."""

import os
import sys

import numpy as np
import pytest

import layerprop as lp


def data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    return X, y


def model(seed=0, lr=0.05):
    m = lp.Sequential(lp.Linear(6, 16), lp.ReLU(), lp.Linear(16, 3), seed=seed)
    return m.compile(loss="cross_entropy", optimizer=lp.SGD(lr=lr, momentum=0.9))


def snapshots():
    """A LambdaCallback that keeps a copy of the parameters after every epoch."""
    snaps = {}
    cb = lp.LambdaCallback(on_epoch_end=lambda e, logs: snaps.__setitem__(
        e, {k: v.copy() for k, v in cb.model.parameters().items()}))
    return cb, snaps


def same(p, q):
    return list(p) == list(q) and all(np.array_equal(p[k], q[k]) for k in p)


def params(m):
    return {k: v.copy() for k, v in m.parameters().items()}


# ----------------------------------------------------------------------------- initial_epoch
def test_initial_epoch_continues_a_run():
    X, y = data()
    straight = model()
    h = straight.fit(X, y, epochs=4, batch_size=8, progress=False)
    parted = model()
    h1 = parted.fit(X, y, epochs=2, batch_size=8, progress=False)
    h2 = parted.fit(X, y, epochs=4, batch_size=8, initial_epoch=2, progress=False)
    assert h.epoch == [0, 1, 2, 3] and h1.epoch == [0, 1] and h2.epoch == [2, 3]
    assert h1.history["loss"] + h2.history["loss"] == h.history["loss"]
    assert same(params(straight), params(parted))


def test_initial_epoch_at_or_past_epochs_trains_nothing():
    X, y = data()
    m = model()
    before = params(m)
    h = m.fit(X, y, epochs=2, initial_epoch=2, progress=False)
    assert h.history == {} and h.epoch == []
    assert same(before, params(m))


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_bad_initial_epoch_is_refused_and_model_unchanged(bad):
    X, y = data()
    m = model()
    before = params(m)
    with pytest.raises(ValueError, match="initial_epoch"):
        m.fit(X, y, epochs=2, initial_epoch=bad, progress=False)
    assert same(before, params(m))


# ----------------------------------------------------------------------------- EarlyStopping
def test_early_stopping_stops_after_patience_epochs_without_improvement():
    X, y = data()
    # The training loss falls every epoch, so in mode "max" no epoch after the first improves.
    es = lp.EarlyStopping(monitor="loss", mode="max", patience=2)
    h = model().fit(X, y, epochs=20, batch_size=8, callbacks=[es], progress=False)
    assert len(h.history["loss"]) == 3
    assert es.stopped_epoch == 2 and es.best_epoch == 0 and es.best == h.history["loss"][0]
    assert all(b < a for a, b in zip(h.history["loss"], h.history["loss"][1:]))


def test_early_stopping_runs_to_the_end_while_improving():
    X, y = data()
    es = lp.EarlyStopping(monitor="loss", patience=0)
    h = model(lr=0.01).fit(X, y, epochs=5, batch_size=8, callbacks=[es], progress=False)
    assert len(h.history["loss"]) == 5 and es.stopped_epoch is None and es.best_epoch == 4


def test_early_stopping_min_delta():
    X, y = data()
    es = lp.EarlyStopping(monitor="loss", min_delta=1e9, patience=1)
    h = model().fit(X, y, epochs=10, batch_size=8, callbacks=[es], progress=False)
    assert len(h.history["loss"]) == 2 and es.best_epoch == 0


def test_restore_best_weights_puts_back_the_best_epoch():
    X, y = data()
    snap, snaps = snapshots()
    es = lp.EarlyStopping(monitor="loss", mode="max", patience=3, restore_best_weights=True)
    m = model()
    m.fit(X, y, epochs=20, batch_size=8, callbacks=[snap, es], progress=False)
    assert sorted(snaps) == [0, 1, 2, 3]
    assert same(params(m), snaps[0])
    assert not same(params(m), snaps[3])


def test_restore_best_weights_off_keeps_the_last_epoch():
    X, y = data()
    snap, snaps = snapshots()
    es = lp.EarlyStopping(monitor="loss", mode="max", patience=1)
    m = model()
    m.fit(X, y, epochs=20, batch_size=8, callbacks=[snap, es], progress=False)
    assert same(params(m), snaps[max(snaps)])


def test_early_stopping_on_validation_accuracy_maximizes():
    X, y = data()
    es = lp.EarlyStopping(monitor="val_accuracy", patience=100)
    assert es.mode == "max"
    h = model().fit(X, y, epochs=3, validation_data=(X, y), callbacks=[es], progress=False)
    assert es.best == max(h.history["val_accuracy"])


def test_early_stopping_on_a_missing_metric_names_what_there_is():
    X, y = data()
    with pytest.raises(ValueError, match=r"monitor: .*'val_loss'.*\['loss'\]"):
        model().fit(X, y, epochs=2, callbacks=[lp.EarlyStopping()], progress=False)


@pytest.mark.parametrize("kwargs, arg", [
    (dict(patience=-1), "patience"), (dict(patience=1.5), "patience"), (dict(mode="up"), "mode"),
    (dict(min_delta=-0.1), "min_delta"), (dict(min_delta="x"), "min_delta"), (dict(monitor=""), "monitor"),
])
def test_early_stopping_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        lp.EarlyStopping(**kwargs)


# ----------------------------------------------------------------------------- ModelCheckpoint
def test_checkpoint_every_n_epochs_and_resume(tmp_path):
    pytest.importorskip("safetensors")
    X, y = data()
    snap, snaps = snapshots()
    pattern = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.3f}.safetensors")
    ck = lp.ModelCheckpoint(pattern, every=2)
    straight = model()
    straight.fit(X, y, epochs=5, batch_size=8, validation_data=(X, y), callbacks=[snap, ck], progress=False)
    assert [os.path.basename(p)[:7] for p in ck.saved] == ["ckpt-02", "ckpt-04"]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in ck.saved)
    for p, epoch in zip(ck.saved, (1, 3)):
        assert same(params(lp.load(p)), snaps[epoch])
    # Resume from the epoch-2 checkpoint: the same run as the straight one.
    resumed = lp.load(ck.saved[0])
    resumed.fit(X, y, epochs=5, batch_size=8, initial_epoch=2, validation_data=(X, y), progress=False)
    assert same(params(resumed), params(straight))


def test_checkpoint_writes_atomically(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    import layerprop.io as lpio
    X, y = data()
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        # The complete file exists under a temporary name in the same folder before the rename.
        assert os.path.dirname(os.path.abspath(src)) == os.path.dirname(os.path.abspath(dst))
        assert os.path.basename(src) != os.path.basename(dst)
        assert lp.load(src).num_parameters() == 6 * 16 + 16 + 16 * 3 + 3
        calls.append(dst)
        return real_replace(src, dst)
    monkeypatch.setattr(lpio.os, "replace", spy)
    ck = lp.ModelCheckpoint(str(tmp_path / "last.safetensors"))
    model().fit(X, y, epochs=3, callbacks=[ck], progress=False)
    assert len(calls) == 3 and os.listdir(tmp_path) == ["last.safetensors"]


def test_checkpoint_save_best_only(tmp_path):
    pytest.importorskip("safetensors")
    X, y = data()
    ck = lp.ModelCheckpoint(str(tmp_path / "e{epoch}.safetensors"), monitor="loss", mode="max",
                            save_best_only=True)
    model().fit(X, y, epochs=4, callbacks=[ck], progress=False)
    assert [os.path.basename(p) for p in ck.saved] == ["e1.safetensors"]


def test_checkpoint_bad_pattern_and_arguments(tmp_path):
    X, y = data()
    with pytest.raises(ValueError, match="path"):
        model().fit(X, y, epochs=1, callbacks=[lp.ModelCheckpoint(str(tmp_path / "{nope}.st"))], progress=False)
    with pytest.raises(ValueError, match="every"):
        lp.ModelCheckpoint("x.safetensors", every=0)
    with pytest.raises(ValueError, match="path"):
        lp.ModelCheckpoint("")


# ----------------------------------------------------------------------------- LambdaCallback
def test_lambda_callback_hooks_in_order_and_stop_training():
    X, y = data()
    events = []
    m = model()

    def end(epoch, logs):
        events.append(("end", epoch, sorted(logs)))
        if epoch == 1:
            m.stop_training = True
    cb = lp.LambdaCallback(on_train_begin=lambda logs: events.append(("train_begin",)),
                           on_epoch_begin=lambda e, logs: events.append(("begin", e)),
                           on_epoch_end=end,
                           on_train_end=lambda logs: events.append(("train_end",)))
    h = m.fit(X, y, epochs=5, validation_data=(X, y), callbacks=[cb], progress=False)
    assert events == [("train_begin",), ("begin", 0), ("end", 0, ["loss", "val_accuracy", "val_loss"]),
                      ("begin", 1), ("end", 1, ["loss", "val_accuracy", "val_loss"]), ("train_end",)]
    assert len(h.history["loss"]) == 2


def test_lambda_callback_refuses_non_callables():
    with pytest.raises(TypeError, match="on_epoch_end"):
        lp.LambdaCallback(on_epoch_end=3)


# ----------------------------------------------------------------------------- progress
def test_progress_bar_on_request(capsys):
    pytest.importorskip("tqdm")
    X, y = data()
    model().fit(X, y, epochs=2, batch_size=8, validation_data=(X, y), progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err
    assert "8/8" in err and "samples/s" in err and "val_loss=" in err and "val_accuracy=" in err


@pytest.mark.parametrize("progress", [False, None])
def test_silent_when_not_asked_or_not_a_terminal(capsys, progress):
    X, y = data()
    model().fit(X, y, epochs=2, progress=progress)
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""


def test_progress_without_tqdm_is_silent(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    X, y = data()
    h = model().fit(X, y, epochs=1, progress=True)
    assert len(h.history["loss"]) == 1 and capsys.readouterr().err == ""


def test_bad_progress_argument():
    X, y = data()
    with pytest.raises(TypeError, match="progress"):
        model().fit(X, y, epochs=1, progress="yes")


# ----------------------------------------------------------------------------- History.plot
def test_history_plot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    X, y = data()
    h = model().fit(X, y, epochs=3, validation_data=(X, y), progress=False)
    ax = h.plot()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["loss", "val_loss", "val_accuracy"]
    assert list(ax.get_lines()[0].get_ydata()) == h.history["loss"]
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3]
    ax2 = h.plot(keys=["loss"])
    assert [ln.get_label() for ln in ax2.get_lines()] == ["loss"]
    with pytest.raises(ValueError, match="keys"):
        h.plot(keys=["nope"])
    plt.close("all")


def test_history_plot_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"layerprop\[plot\]"):
        lp.training.History().plot()
