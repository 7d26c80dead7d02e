"""scikit-learn estimators backed by layerprop: `MLPClassifier` and `MLPRegressor` with
scikit-learn's own argument names and defaults (plus `schedule=`), usable in Pipeline,
GridSearchCV, clone and pickle.

What matches scikit-learn's MLP: the objective (mean log-loss, or half the mean squared error,
plus alpha/2 * ||W||^2 / n_batch on the weights only, biases excluded), the minibatch loop
(batch_size="auto" = min(200, n), reshuffled every epoch), the stopping rule (tol,
n_iter_no_change, early_stopping with validation_fraction: accuracy or R^2 on a held-out
split, best weights restored; like scikit-learn, a multi-output regression reports the loss
averaged over the outputs but steps along the gradient summed over them), loss_curve_, best_loss_, n_iter_, t_, validation_scores_,
coefs_/intercepts_ in scikit-learn's (in, out) layout, binary output as one logistic unit,
multilabel targets, multi-output regression.

Differences, by design: weights start from PyTorch's default initialization (layerprop's)
rather than Glorot's; the optimizers are PyTorch's update rules (Adam's epsilon is added
after the bias correction of the second moment, sklearn adds it before; SGD momentum is the
same update written differently; with solver="sgd", learning_rate="constant", "invscaling"
(power_t) and "adaptive" follow scikit-learn's rules exactly, by scaling the gradient the
core steps with); solver="lbfgs" is scipy's L-BFGS-B on the core's loss and gradient, as in
scikit-learn; the float32/float64 choice follows X
(float32 X trains a float32 model, and predictions on float32 X are float32). With a schedule other than Simultaneous (Layerwise, LocoProp) the
layers are updated inside the core, so the L2 penalty becomes the optimizer's weight_decay
(alpha / batch_size, which also decays the biases). `model_` is the fitted lp.Sequential.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import (_check_sample_weight, check_array, check_consistent_length,
                                      check_is_fitted, column_or_1d, validate_data)

from . import _core
from . import reference as R
from . import validation as V
from . import layers as L
from .io import model_from_state, model_to_state
from .model import Sequential
from .optim import SGD, Adam
from .schedules import Schedule, Simultaneous
from .sparse import prepare, take_rows

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"identity": L.Identity, "logistic": L.Sigmoid, "tanh": L.Tanh, "relu": L.ReLU}


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in z's dtype (the float64 twin's, rounded)."""
    return R.softmax(z).astype(z.dtype, copy=False)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return R.sigmoid(z).astype(z.dtype, copy=False)


def _stochastic_solver(est: Any) -> bool:
    """A classifier's partial_fit exists for the stochastic solvers only (scikit-learn's rule;
    its regressor's partial_fit with lbfgs runs a whole lbfgs fit, and so does ours)."""
    if est.solver == "lbfgs":
        raise AttributeError("partial_fit is only available for stochastic optimizers. lbfgs is not stochastic.")
    return True


@contextlib.contextmanager
def _names(arg: str) -> Iterator[None]:
    """scikit-learn's own refusal (TypeError / ValueError, its message kept) with the argument it
    is about in front: "X: Found array with 0 sample(s) ..."."""
    try:
        yield
    except (TypeError, ValueError) as e:
        raise type(e)(f"{arg}: {e}") from None


@contextlib.contextmanager
def _nonfinite_as_sklearn() -> Iterator[None]:
    """A step the core refused as non-finite (the model is as before it) raises scikit-learn's
    ValueError for a diverged solver."""
    try:
        yield
    except _core.NonFiniteError as e:
        raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                         f"values and need to be preprocessed. ({e})") from None


class _WriteThrough(list):
    """A list of views into the model's parameters: assigning an item writes into the model
    (scikit-learn users set weights with `mlp.coefs_[i] = W`), after a shape check."""

    def __init__(self, name: str, views: List[np.ndarray]) -> None:
        super().__init__(views)
        self._name = name

    def __setitem__(self, i: Any, v: Any) -> None:
        if isinstance(i, slice):
            raise TypeError(f"{self._name}: assign one array at a time, or the whole list")
        target = self[i]
        a = np.asarray(v)
        if a.shape != target.shape:
            raise ValueError(f"{self._name}[{i}]: expected shape {target.shape}, got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{self._name}[{i}]: contains NaN or Inf")
        target[...] = a

    def assign(self, values: Any) -> None:
        values = list(values)
        for i, (t, v) in enumerate(zip(self, values)):  # every check first: all or nothing
            if np.shape(v) != t.shape:
                raise ValueError(f"{self._name}[{i}]: expected shape {t.shape}, got {np.shape(v)}")
        if len(values) != len(self):
            raise ValueError(f"{self._name}: expected {len(self)} arrays, got {len(values)}")
        for i, v in enumerate(values):
            self[i] = v


class _BaseMLP(BaseEstimator):
    _is_classifier = False

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *, solver: str = "adam",
                 alpha: float = 0.0001, batch_size: Any = "auto", learning_rate_init: float = 0.001,
                 max_iter: int = 200, shuffle: bool = True, random_state: Any = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, learning_rate: str = "constant",
                 power_t: float = 0.5, max_fun: int = 15000, schedule: Optional[Schedule] = None) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.learning_rate = learning_rate
        self.power_t = power_t
        self.max_fun = max_fun
        self.schedule = schedule

    # ------------------------------------------------------------------ parameters
    def _hidden_sizes(self) -> List[int]:
        h = self.hidden_layer_sizes
        if V.is_int(h):
            h = [h]
        try:
            sizes = list(h)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes: expected an int or a sequence of ints, got {h!r}") from None
        for s in sizes:
            if not V.is_int(s) or s < 1:
                raise ValueError(f"hidden_layer_sizes: must be positive ints, got {self.hidden_layer_sizes!r}")
        return [int(s) for s in sizes]

    def _check_params(self) -> None:
        self._hidden_sizes()
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in ("adam", "sgd", "lbfgs"):
            raise ValueError(f"solver: expected 'lbfgs', 'sgd' or 'adam', got {self.solver!r}")
        if self.solver == "lbfgs" and self._scheduled():
            raise ValueError(f"schedule: solver='lbfgs' minimizes the whole objective with its gradient; "
                             f"schedule must be None or lp.Simultaneous(), got {self.schedule!r}")

        def number(name: str, lo: float, hi: float = np.inf, lo_open: bool = False, hi_open: bool = False) -> None:
            # an upper bound of inf admits inf itself (scikit-learn's intervals)
            V.real(getattr(self, name), name, lo, None if hi == np.inf else hi, lo_open=lo_open,
                   hi_open=hi_open, finite=hi != np.inf,
                   what=f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
        number("alpha", 0.0)
        number("learning_rate_init", 0.0, lo_open=True)
        number("tol", 0.0)
        number("momentum", 0.0, 1.0)
        number("beta_1", 0.0, 1.0, hi_open=True)
        number("beta_2", 0.0, 1.0, hi_open=True)
        number("epsilon", 0.0, lo_open=True)
        if self.early_stopping:
            number("validation_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        number("power_t", 0.0)
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError("learning_rate: expected 'constant', 'invscaling' or 'adaptive', got "
                             f"{self.learning_rate!r}")
        if self.learning_rate != "constant" and self.solver == "sgd" and self._scheduled():
            raise ValueError(f"learning_rate: {self.learning_rate!r} needs the Simultaneous schedule (schedule="
                             f"{self.schedule!r} updates layers inside the core, at the optimizer's fixed rate)")
        for name in ("max_iter", "n_iter_no_change", "max_fun"):
            v = getattr(self, name)
            if name == "n_iter_no_change" and V.is_real(v) and v == np.inf:
                continue  # scikit-learn allows np.inf: never stop for lack of improvement
            V.integer(v, name, 1, what="an int >= 1" + (" or np.inf" if name == "n_iter_no_change" else ""))
        b: Any = self.batch_size
        if not (b == "auto" if isinstance(b, str) else V.is_int(b) and int(b) >= 1):
            raise ValueError(f"batch_size: expected 'auto' or an int >= 1, got {b!r}")
        if self.schedule is not None and not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule: expected an lp schedule (e.g. lp.Simultaneous()) or None, got {self.schedule!r}")

    # ------------------------------------------------------------------ the network
    def _optimizer(self, weight_decay: float = 0.0, lr_scale: float = 1.0) -> Any:
        if self.solver == "sgd":
            return SGD(lr=self.learning_rate_init * lr_scale, momentum=self.momentum,
                       nesterov=bool(self.nesterovs_momentum) and self.momentum > 0,
                       weight_decay=weight_decay)
        return Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                    weight_decay=weight_decay)

    def _scheduled(self) -> bool:
        """A schedule other than Simultaneous updates layers inside the core's train_step, so
        gradients cannot be adjusted in between (see _step_scheduled)."""
        return self.schedule is not None and not isinstance(self.schedule, Simultaneous)

    def _build(self, n_in: int, n_out: int, dtype: str, loss: str) -> None:
        rs = self._rng
        sizes = [n_in, *self._hidden_sizes(), n_out]
        act = _ACTIVATIONS[self.activation]
        layers: List[L.Layer] = []
        for i in range(len(sizes) - 1):
            layers.append(L.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(act())
        self.model_ = Sequential(*layers, dtype=dtype, seed=int(rs.randint(np.iinfo(np.int32).max)))
        self.model_.compile(loss=loss, optimizer=self._optimizer(), schedule=self.schedule)
        self.n_layers_ = len(sizes)
        self.n_outputs_ = n_out
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_: List[float] = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_: Optional[List[float]] = []
            self.best_validation_score_: Optional[float] = -np.inf
            self.best_loss_: Optional[float] = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _weights(self) -> List[np.ndarray]:
        return [v for k, v in self.model_.parameters().items() if k.endswith(".weight")]

    def _biases(self) -> List[np.ndarray]:
        return [v for k, v in self.model_.parameters().items() if k.endswith(".bias")]

    @property
    def coefs_(self) -> List[np.ndarray]:
        """Weights in scikit-learn's (in, out) layout: transposed zero-copy views of the model's.
        Writes go through: `coefs_[i][...] = W`, `coefs_[i] = W` and `coefs_ = [...]` all set
        the model's weights (shapes checked)."""
        if "model_" not in self.__dict__:
            raise AttributeError("coefs_: the estimator is not fitted")
        return _WriteThrough("coefs_", [w.T for w in self._weights()])

    @coefs_.setter
    def coefs_(self, value: List[np.ndarray]) -> None:
        _WriteThrough("coefs_", [w.T for w in self._weights()]).assign(value)

    @property
    def intercepts_(self) -> List[np.ndarray]:
        """Biases: zero-copy views of the model's; writes go through as for coefs_."""
        if "model_" not in self.__dict__:
            raise AttributeError("intercepts_: the estimator is not fitted")
        return _WriteThrough("intercepts_", self._biases())

    @intercepts_.setter
    def intercepts_(self, value: List[np.ndarray]) -> None:
        _WriteThrough("intercepts_", self._biases()).assign(value)

    def to_onnx(self, path: Any) -> None:
        """Write the fitted network as an ONNX file (the `onnx` extra): input "X" (float32 for
        a float32 network), output what predict_proba (classifier) or predict (regressor, as
        an (n, n_outputs) matrix) returns."""
        check_is_fitted(self)
        from .export import to_onnx
        to_onnx(self.model_, path, probabilities=self._onnx_probabilities())

    def _onnx_probabilities(self) -> Optional[str]:
        return None

    def __sklearn_is_fitted__(self) -> bool:
        return "model_" in self.__dict__

    # ------------------------------------------------------------------ training
    def _loss_scale(self) -> Tuple[float, float]:
        """Factors from layerprop's loss to scikit-learn's: (reported loss, gradient)."""
        raise NotImplementedError

    def _fit_lbfgs(self, X: np.ndarray, y: np.ndarray, sw: Optional[np.ndarray] = None) -> None:
        """solver="lbfgs": scipy's L-BFGS-B over every parameter, on the whole data set, with
        scikit-learn's objective and options (maxiter=max_iter, maxfun=max_fun, gtol=tol); the
        core gives the loss and the exact gradient of each evaluation."""
        from scipy.optimize import minimize
        from sklearn.utils.optimize import _check_optimize_result
        params = list(self.model_.parameters().values())
        grads = list(self.model_.gradients().values())
        sizes = [p.size for p in params]
        model = self.model_
        scale = self._loss_scale()
        n = X.shape[0]
        k = self.alpha / (n if sw is None else float(sw.sum()))  # scikit-learn's sw_sum
        w = None if sw is None else self.model_._prepare_weights(sw, n)
        weights = [name.endswith(".weight") for name in self.model_.parameters()]
        offset = self._loss_offset(y, sw)

        def unpack(theta: np.ndarray) -> None:
            o = 0
            for p, m in zip(params, sizes):
                p.reshape(-1)[...] = theta[o: o + m]
                o += m

        def fun(theta: np.ndarray) -> Tuple[float, np.ndarray]:
            unpack(theta)
            loss = float(model.compute_gradients(X, y, sample_weight=w)) * scale[0] + offset
            g = np.empty_like(theta)
            o = 0
            for p, gr, m, is_w in zip(params, grads, sizes, weights):
                gv = gr.reshape(-1).astype(np.float64) * scale[1]
                if is_w and self.alpha:
                    gv += k * p.reshape(-1)
                    loss += 0.5 * k * float(np.vdot(p, p))
                g[o: o + m] = gv
                o += m
            return loss, g

        theta0 = np.concatenate([p.reshape(-1).astype(np.float64) for p in params])
        res = minimize(fun, theta0, method="L-BFGS-B", jac=True,
                       options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        if not np.isfinite(res.x).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                             "values and need to be preprocessed.")
        unpack(res.x)
        self.n_iter_ = _check_optimize_result("lbfgs", res, self.max_iter)
        self.loss_ = float(res.fun)

    def _loss_offset(self, y: np.ndarray, w: Optional[np.ndarray]) -> float:
        """The part of scikit-learn's reported loss that the core's loss leaves out."""
        return 0.0

    def _step(self, Xb: np.ndarray, yb: np.ndarray, scale: Tuple[float, float],
              wb: Optional[np.ndarray] = None) -> float:
        loss = float(self.model_.compute_gradients(Xb, yb, sample_weight=wb)) * scale[0] + self._loss_offset(yb, wb)
        nb = Xb.shape[0] if wb is None else float(wb.sum())  # scikit-learn's sw_sum
        k = self.alpha / nb if self.alpha else 0.0
        if self.alpha:
            loss += 0.5 * k * sum(float(np.vdot(w, w)) for w in self._weights())
        # scikit-learn's gradient (scale * g + k * W on the weights, k * 0 on the biases), times
        # SGD's learning-rate schedule factor f (the core steps at learning_rate_init, so the
        # gradient is scaled by lr / learning_rate_init; its momentum buffer then accumulates
        # exactly scikit-learn's velocities, nesterov included). The core applies it in the
        # optimizer's own pass: g * (f * scale) + (f * k) * W.
        f = self._lr_factor
        with _nonfinite_as_sklearn():
            self.model_._apply_penalized(l2_weights=f * k, grad_scale=f * scale[1])
        return loss

    def _step_scheduled(self, Xb: np.ndarray, yb: np.ndarray, scale: Tuple[float, float],
                        wb: Optional[np.ndarray] = None) -> float:
        """One core train_step (the schedule runs inside it). The penalty is the optimizer's
        weight_decay, set once to alpha / (batch_size * gradient scale) (see _fit_stochastic)."""
        pen = 0.0
        if self.alpha:
            pen = sum(float(np.vdot(w, w)) for w in self._weights())
        with _nonfinite_as_sklearn():
            loss = float(self.model_.train_step(Xb, yb, wb)) * scale[0] + self._loss_offset(yb, wb)
        return loss + 0.5 * self.alpha * pen / Xb.shape[0]

    def _fit(self, X: np.ndarray, y: Any, incremental: bool, sample_weight: Any = None) -> "_BaseMLP":
        self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("early_stopping: partial_fit does not support early_stopping=True "
                             "(set_params(early_stopping=False) first)")
        first = "model_" not in self.__dict__ or (not self.warm_start and not incremental)
        # A refused fit leaves the estimator as it was: everything up to the first training step
        # (validation, classes_, n_features_in_, a new model) is undone if it raises.
        saved = dict(self.__dict__)
        started: List[bool] = []
        try:
            X, y = self._validate_Xy(X, y, first)
            sw = None
            if sample_weight is not None:
                with _names("sample_weight"):
                    sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if first:
                self._rng = check_random_state(self.random_state)
            target, loss = self._encode_y(y, first, incremental)
            if first:
                dtype = "float32" if X.dtype == np.float32 else "float64"
                n_out = target.shape[1] if target.ndim == 2 else len(self.classes_)
                self._build(X.shape[1], n_out, dtype, loss)
            X = prepare(X, np.dtype(self.model_.dtype))  # sparse X stays sparse (CSR rows)
            if target.dtype != np.int64:
                target = np.ascontiguousarray(target, dtype=np.dtype(self.model_.dtype))
            if self.solver == "lbfgs":
                started.append(True)
                self._fit_lbfgs(X, target, sw)
            else:
                self._fit_stochastic(X, target, incremental, fresh=first, started=started, sample_weight=sw)
        except BaseException:
            if not started:
                self.__dict__.clear()
                self.__dict__.update(saved)
            raise
        return self

    def _validate_Xy(self, X: Any, y: Any, first: bool) -> Tuple[np.ndarray, np.ndarray]:
        """scikit-learn's checks of (X, y) (validate_data), with the argument each refusal is
        about in front of scikit-learn's own message."""
        with _names("X"):
            X = validate_data(self, X, reset=first, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32))
        if y is None:
            raise ValueError(f"y: {type(self).__name__} requires y to be passed, but the target y is None")
        with _names("y"):
            y = check_array(y, accept_sparse=False, ensure_all_finite=True, ensure_2d=False, dtype=None,
                            input_name="y")
            if not self._is_classifier and y.dtype.kind == "O":
                y = y.astype(np.float64)
            check_consistent_length(X, y)
        return X, y

    def _fit_stochastic(self, X: np.ndarray, y: np.ndarray, incremental: bool, fresh: bool,
                        started: Optional[List[bool]] = None, sample_weight: Optional[np.ndarray] = None) -> None:
        rs = self._rng
        early = self.early_stopping and not incremental
        Xv = yv = swv = None
        sw = sample_weight
        if early:
            # scikit-learn's split: stratified when the network has one output (a binary
            # classifier), not for multiclass or multilabel targets, and never for regression.
            stratify = y if (self._is_classifier and y.ndim == 2 and y.shape[1] == 1) else None
            with _names("y"):  # a class with one member cannot be stratified
                # The split of the row indices is the split scikit-learn makes of X itself.
                tr, va = train_test_split(np.arange(X.shape[0]), random_state=rs,
                                          test_size=self.validation_fraction, stratify=stratify)
            X, Xv = take_rows(X, tr), take_rows(X, va)
            y, yv = np.ascontiguousarray(y[tr]), y[va]
            if sw is not None:
                sw, swv = sw[tr], sw[va]
            if Xv.shape[0] < 2:
                raise ValueError("validation_fraction: The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            if len(X) == 0:
                raise ValueError("validation_fraction: leaves no training samples")
        n = X.shape[0]
        if self.batch_size == "auto":
            bs = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to "
                              "be clipped", UserWarning, stacklevel=3)
            bs = int(np.clip(self.batch_size, 1, n))
        scale = self._loss_scale()
        step = self._step_scheduled if self._scheduled() else self._step
        if not incremental or fresh:
            # scikit-learn makes a new optimizer at every fit() (warm starts too): the current
            # settings, fresh momentum / moments, learning rate back at learning_rate_init.
            opt = self._optimizer()
            if self._scheduled():
                # The schedule updates layers inside the core: the L2 penalty becomes the
                # optimizer's weight_decay (it also decays biases, and uses the full batch size
                # for a last partial batch) and the gradient scale goes into SGD's step size
                # (Adam does not depend on it, up to epsilon).
                s = scale[1]
                opt = self._optimizer(weight_decay=self.alpha / (bs * s),
                                      lr_scale=s if self.solver == "sgd" else 1.0)
            assert self.model_.loss is not None
            self.model_.compile(loss=self.model_.loss, optimizer=opt, schedule=self.schedule)
            self._lr_factor = 1.0
        sgd_schedule = self.solver == "sgd" and self.learning_rate
        best_params = None
        stopped = False
        if started is not None:
            started.append(True)  # from here on, a failure leaves the steps taken (see _fit)
        self.n_iter_ = 0  # scikit-learn counts the epochs of this call (t_ keeps counting samples)
        for _ in range(self.max_iter):
            idx = rs.permutation(n) if self.shuffle else np.arange(n)
            total = 0.0
            for b0 in range(0, n, bs):
                sel = idx[b0: b0 + bs]
                wb = None if sw is None else self.model_._prepare_weights(sw[sel], len(sel))
                total += step(take_rows(X, sel), y[sel], scale, wb) * len(sel)
            self.n_iter_ += 1
            self.loss_ = total / n
            self.t_ += n
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if early:
                score = self._validation_score(Xv, yv, swv)
                self.validation_scores_.append(score)  # type: ignore[union-attr]
                if self.verbose:
                    print(f"Validation score: {score:f}")
                if score < self.best_validation_score_ + self.tol:  # type: ignore[operator]
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                if score > self.best_validation_score_:  # type: ignore[operator]
                    self.best_validation_score_ = score
                    best_params = {k: v.copy() for k, v in self.model_.parameters().items()}
            else:
                if self.best_loss_ is None:  # after a fit with early stopping
                    self.best_loss_ = np.inf
                if self.loss_curve_[-1] > self.best_loss_ - self.tol:  # type: ignore[operator]
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
                if self.loss_curve_[-1] < self.best_loss_:  # type: ignore[operator]
                    self.best_loss_ = self.loss_curve_[-1]
            if sgd_schedule == "invscaling":  # scikit-learn's iteration_ends(t_)
                self._lr_factor = 1.0 / (self.t_ + 1) ** self.power_t
            if incremental:
                break
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if early else "Training loss"
                msg = f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
                lr = self.learning_rate_init * self._lr_factor
                if sgd_schedule == "adaptive" and lr > 1e-6:  # scikit-learn's trigger_stopping
                    self._lr_factor /= 5.0
                    self._no_improvement_count = 0
                    if self.verbose:
                        print(f"{msg} Setting learning rate to {self.learning_rate_init * self._lr_factor:f}")
                    continue
                if self.verbose:
                    print(msg + (" Learning rate too small. Stopping." if sgd_schedule == "adaptive" else " Stopping."))
                stopped = True
                break
        if not incremental and not stopped and self.n_iter_ >= self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        if early and best_params is not None:
            for k, v in self.model_.parameters().items():
                v[...] = best_params[k]
        if self.verbose:
            sys.stdout.flush()

    def _validation_score(self, Xv: Any, yv: Any, swv: Any = None) -> float:
        """Accuracy or R^2 on the held-out split; NaN when an output is not finite (as in
        scikit-learn, whose stopping rule then goes on)."""
        z = np.asarray(self.model_.predict(Xv), dtype=np.float64)
        if not np.isfinite(z).all():
            return float("nan")
        return self._score_outputs(z, yv, swv)

    def _score_outputs(self, z: np.ndarray, yv: np.ndarray, sw: Any = None) -> float:
        raise NotImplementedError

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "_BaseMLP":
        """Train on (X, y) for up to max_iter epochs (see the class docstring). sample_weight:
        each batch's loss is its weighted mean, as in scikit-learn (weights must be >= 0)."""
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def _forward(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        with _names("X"):
            X = validate_data(self, X, reset=False, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32))
        # The output dtype is scikit-learn's: float32 for a float32 model given float32 data,
        # float64 otherwise.
        out_dtype = np.result_type(X.dtype, np.dtype(self.model_.dtype))
        X = prepare(X, np.dtype(self.model_.dtype))
        return np.asarray(self.model_.predict(X), dtype=out_dtype)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> Dict[str, Any]:
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:
            # Arrays and JSON only: the core object itself is never pickled.
            tensors, meta = model_to_state(model, include_optimizer=True)
            state["_lp_model_state"] = (dict(tensors), dict(meta))
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        saved = state.pop("_lp_model_state", None)
        super().__setstate__(state)
        if saved is not None:
            self.model_ = model_from_state(*saved)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.sparse = True  # CSR/CSC (other formats are converted to CSR)
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by layerprop's core, with scikit-learn's
    MLPClassifier arguments. Binary targets use one logistic output (bce_with_logits),
    multiclass a softmax (cross_entropy), multilabel indicator targets one logistic output per
    label. `classes_` may hold labels of any type."""

    _is_classifier = True

    def _loss_scale(self) -> Tuple[float, float]:
        # sklearn's multilabel log-loss sums over labels (mean over samples); layerprop's
        # bce_with_logits is the mean over all elements.
        k = float(self.n_outputs_) if self._multilabel else 1.0
        return k, k

    def _encode_y(self, y: Any, first: bool, incremental: bool) -> Any:
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        from sklearn.utils.multiclass import check_classification_targets
        with _names("y"):
            check_classification_targets(y)
        if first and not (incremental and hasattr(self, "_label_binarizer")):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self._label_binarizer.y_type_.startswith("multilabel"):
                if type_of_target(y) != self._label_binarizer.y_type_ or y.shape[1] != len(self.classes_):
                    raise ValueError("y: the multilabel format or width differs from the first fit")
            elif self.warm_start and not incremental and set(classes) != set(self.classes_):
                raise ValueError("y: warm_start can only be used where `y` has the same classes as in the "
                                 f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif not set(classes) <= set(self.classes_):
                raise ValueError(f"y: has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        self._multilabel = self._label_binarizer.y_type_.startswith("multilabel")
        if not self._multilabel and len(self.classes_) < 2:
            raise ValueError(f"y: needs samples of at least 2 classes, got 1 class: {self.classes_[0]!r}")
        Y = self._label_binarizer.transform(y)
        if self._multilabel:
            self.out_activation_ = "logistic"
            return Y.astype(np.float64), "bce_with_logits"
        if len(self.classes_) == 2:
            self.out_activation_ = "logistic"
            return Y.astype(np.float64).reshape(-1, 1), "bce_with_logits"
        self.out_activation_ = "softmax"
        return np.ascontiguousarray(Y.argmax(axis=1), dtype=np.int64), "cross_entropy"

    def _onnx_probabilities(self) -> Optional[str]:
        if self._multilabel:
            return "sigmoid"
        return "binary" if len(self.classes_) == 2 else "softmax"

    def _score_outputs(self, z: np.ndarray, yv: np.ndarray, sw: Any = None) -> float:
        if self._multilabel:
            return float(accuracy_score(yv, (z > 0).astype(int), sample_weight=sw))
        if yv.ndim == 2:  # binary: (n, 1) targets
            return float(accuracy_score(yv.ravel(), (z.ravel() > 0).astype(float), sample_weight=sw))
        return float(accuracy_score(yv, z.argmax(axis=1), sample_weight=sw))

    @available_if(_stochastic_solver)
    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> "MLPClassifier":
        """One epoch over (X, y). `classes` (all labels) is required on the first call unless y
        is a multilabel indicator matrix."""
        self._check_params()
        if self.early_stopping:
            raise ValueError("early_stopping: partial_fit does not support early_stopping=True "
                             "(set_params(early_stopping=False) first)")
        ymat = np.asarray(y) if not hasattr(y, "shape") else y
        if "model_" not in self.__dict__:
            if getattr(ymat, "ndim", 1) == 2 and type_of_target(y).startswith("multilabel"):
                self._label_binarizer = LabelBinarizer().fit(y)
            else:
                if classes is None:
                    raise ValueError("classes must be passed on the first call to partial_fit.")
                _check_partial_fit_first_call(self, classes)
                self._label_binarizer = LabelBinarizer().fit(self.classes_)
            self.classes_ = self._label_binarizer.classes_
        elif classes is not None:
            if not np.array_equal(self.classes_, unique_labels(classes)):
                raise ValueError(f"classes: {classes!r} is not the same as on the first call ({self.classes_!r})")
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)  # type: ignore[return-value]

    def decision_values(self, X: Any) -> np.ndarray:
        """Raw outputs of the network (logits)."""
        return self._forward(X)

    def predict(self, X: Any) -> np.ndarray:
        """Class labels (multilabel: an indicator matrix)."""
        z = self._forward(X)
        if self._multilabel:
            return self._label_binarizer.inverse_transform((z > 0).astype(int))
        if z.shape[1] == 1:
            return self.classes_[(z[:, 0] > 0).astype(int)]
        return self.classes_[z.argmax(axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities, columns in the order of classes_ (multilabel: one per label)."""
        z = self._forward(X)
        if self._multilabel:
            return _sigmoid(z)
        if z.shape[1] == 1:
            p = _sigmoid(z[:, 0])
            return np.column_stack([1.0 - p, p])
        return _softmax(z)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return np.log(self.predict_proba(X))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by layerprop's core, with scikit-learn's
    MLPRegressor arguments: loss="squared_error" (half the mean squared error) or "poisson"
    (half the Poisson deviance, exp output), plus the L2 penalty; y may have several columns
    (multi-output)."""

    def __init__(self, loss: str = "squared_error", hidden_layer_sizes: Any = (100,), activation: str = "relu", *,
                 solver: str = "adam", alpha: float = 0.0001, batch_size: Any = "auto",
                 learning_rate_init: float = 0.001, max_iter: int = 200, shuffle: bool = True,
                 random_state: Any = None, tol: float = 1e-4, verbose: bool = False, warm_start: bool = False,
                 momentum: float = 0.9, nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, learning_rate: str = "constant",
                 power_t: float = 0.5, max_fun: int = 15000, schedule: Optional[Schedule] = None) -> None:
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate_init=learning_rate_init, max_iter=max_iter, shuffle=shuffle,
                         random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
                         momentum=momentum, nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         n_iter_no_change=n_iter_no_change, learning_rate=learning_rate, power_t=power_t,
                         max_fun=max_fun, schedule=schedule)
        self.loss = loss

    @property
    def out_activation_(self) -> str:
        return "exp" if self.loss == "poisson" else "identity"

    def _check_params(self) -> None:
        super()._check_params()
        if self.loss not in ("squared_error", "poisson"):
            raise ValueError(f"loss: expected 'squared_error' or 'poisson', got {self.loss!r}")

    def _loss_scale(self) -> Tuple[float, float]:
        if self.loss == "poisson":
            # sklearn: half the Poisson deviance summed over the outputs (mean over samples),
            # gradient (mu - y) summed over the outputs; the core's is the mean over all elements.
            return float(self.n_outputs_), float(self.n_outputs_)
        # sklearn reports half the mean squared error (mean over samples and outputs), but its
        # gradient is that of half the squared error summed over the outputs: k times larger.
        return 0.5, 0.5 * self.n_outputs_

    def _loss_offset(self, y: np.ndarray, w: Optional[np.ndarray]) -> float:
        if self.loss != "poisson":
            return 0.0
        # The deviance's terms without parameters: sum over outputs of the (weighted) mean over
        # samples of y log y - y (the core's loss leaves them out, as PyTorch's does).
        from scipy.special import xlogy
        y64 = np.asarray(y, dtype=np.float64)
        return float(np.average(xlogy(y64, y64) - y64, weights=w, axis=0).sum())

    def _onnx_probabilities(self) -> Optional[str]:
        return "exp" if self.loss == "poisson" else None

    def _encode_y(self, y: Any, first: bool, incremental: bool) -> Any:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if not first and y.shape[1] != self.n_outputs_:
            raise ValueError(f"y: expected {self.n_outputs_} target columns as in the first fit, got {y.shape[1]}")
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("y: Some value(s) of y are negative which is not allowed for Poisson regression.")
        return y, ("poisson" if self.loss == "poisson" else "mse")

    def _score_outputs(self, z: np.ndarray, yv: np.ndarray, sw: Any = None) -> float:
        return float(r2_score(yv, np.exp(z) if self.loss == "poisson" else z, sample_weight=sw))

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> "MLPRegressor":
        """One epoch over (X, y), continuing from the current weights and optimizer state."""
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)  # type: ignore[return-value]

    def predict(self, X: Any) -> np.ndarray:
        z = self._forward(X)
        if self.loss == "poisson":
            z = np.exp(z)
        return z.ravel() if z.shape[1] == 1 else z

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
