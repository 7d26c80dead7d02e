// The model object: validation of every array a user passes, then one call into the core
// with the GIL released. Parameters, gradients and optimizer state are zero-copy views that
// keep the model alive.
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>

#include "common.hpp"
#include "layerprop/eltwise.hpp"
#include "layerprop/model.hpp"

namespace py = pybind11;
using namespace lp;

namespace {

constexpr int64_t kDefaultChunk = 1024;

// Data-parallel: the reducer a Python communicator provides (lp.distributed). Called from the
// core's step with the GIL released: it takes the GIL, wraps the buffer in a NumPy array
// without copying, and calls the Python function, which sums it over the ranks in place.
template <class T>
struct PyReducer final : Reducer<T> {
  py::object sum_fn, scalars_fn, bcast_fn;
  PyReducer(py::object s, py::object c, py::object b) : sum_fn(std::move(s)), scalars_fn(std::move(c)), bcast_fn(std::move(b)) {}
  ~PyReducer() override {
    py::gil_scoped_acquire gil;
    sum_fn = py::object();
    scalars_fn = py::object();
    bcast_fn = py::object();
  }
  template <class U>
  static void call(const py::object& fn, U* data, int64_t n) {
    py::gil_scoped_acquire gil;
    py::array_t<U> view({n}, {static_cast<py::ssize_t>(sizeof(U))}, data, py::none());
    fn(view);
  }
  void sum(T* data, int64_t n) override { call(sum_fn, data, n); }
  void sum_scalars(double* v, int n) override { call(scalars_fn, v, static_cast<int64_t>(n)); }
  void broadcast(T* data, int64_t n) override { call(bcast_fn, data, n); }
};

// The arrays of one call, checked with the GIL held (types and shapes; values where that must
// happen before anything changes). The core checks again, under its mutex, everything a second
// Python thread could change after the GIL is released (the labels' values, the compiled loss).
template <class T>
struct Checked {
  // Held for the call: their buffers stay alive and keep their size. (py::object, not
  // py::array: a default py::array allocates an empty NumPy array, a cost on every tiny step.)
  py::object X, y, w;
  py::object Xptr, Xidx;  // sparse X: X holds the values, these the CSR index arrays
  const T* xdata = nullptr;
  const int64_t* ptrdata = nullptr;
  const int64_t* idxdata = nullptr;
  int64_t N = 0, nnz = 0;
  bool sparse = false;
  Labels<T> labels;     // exactly one of cls / target is set, for the loss compiled at check time
  // Scanned for NaN/Inf by finite_or_throw, inside the call's one GIL release.
  void finite_or_throw(const Model<T>& m) const {
    if (!kern::all_finite<T>(x(), sparse ? nnz : N * m.in_width())) throw ValueError("X: contains NaN or Inf");
    if (labels.target && !kern::all_finite<T>(labels.target, N * m.out_width()))
      throw ValueError("y: contains NaN or Inf");
  }
  const T* x() const { return xdata; }
  Input<T> input() const {
    if (!sparse) return Input<T>(x());
    CsrRows<T> c;
    c.indptr = ptrdata;
    c.indices = idxdata;
    c.values = x();
    c.rows = N;
    c.nnz = nnz;
    return Input<T>(c);
  }
};

template <class T>
void require_compiled(const Model<T>& m) {
  if (!m.compiled())
    throw std::runtime_error(
        "the model is not compiled: call model.compile(loss=..., optimizer=...) first");
}

template <class T>
py::array_t<T, py::array::c_style> check_X(Model<T>& m, const py::handle& obj) {
  auto X = bind::as_exact<T>(obj, "X", 2);
  if (X.shape(0) < 1) throw ValueError("X: empty batch (0 rows)");
  if (X.shape(1) != m.in_width())
    throw ValueError("X: expected " + std::to_string(m.in_width()) + " features per row, got shape " +
                     bind::shape_str(X));
  return X;  // the NaN/Inf scan runs later, without the GIL
}

// X as CSR rows: the tuple (indptr int64 (N+1,), indices int64 (nnz,), values (nnz,), n_cols)
// that layerprop's Python layer makes of a scipy.sparse matrix. Everything is checked here,
// with the GIL held (before anything changes); the core checks its copy of each batch again.
template <class T>
void check_sparse_X(Model<T>& m, const py::tuple& t, Checked<T>& c) {
  if (t.size() != 4) throw TypeError("X: a sparse input is (indptr, indices, data, n_columns)");
  auto ptr = bind::as_exact<int64_t>(t[0], "X.indptr", 1);
  auto idx = bind::as_exact<int64_t>(t[1], "X.indices", 1);
  auto val = bind::as_exact<T>(t[2], "X.data", 1);
  const int64_t cols = t[3].cast<int64_t>();
  if (cols != m.in_width())
    throw ValueError("X: expected " + std::to_string(m.in_width()) + " features per row, got a sparse matrix with " +
                     std::to_string(cols) + " columns");
  const int64_t N = ptr.shape(0) - 1, nnz = idx.shape(0);
  if (N < 1) throw ValueError("X: empty batch (0 rows)");
  if (val.shape(0) != nnz) throw ValueError("X: sparse data and indices differ in length");
  const int64_t* p = ptr.data();
  const int64_t* ix = idx.data();
  if (p[0] != 0 || p[N] != nnz) throw ValueError("X: indptr of a sparse matrix must run from 0 to nnz");
  for (int64_t r = 0; r < N; ++r)
    if (p[r + 1] < p[r]) throw ValueError("X: indptr of a sparse matrix must be non-decreasing (row " + std::to_string(r) + ")");
  for (int64_t q = 0; q < nnz; ++q)
    if (ix[q] < 0 || ix[q] >= cols)
      throw ValueError("X: column index " + std::to_string(ix[q]) + " out of range [0, " + std::to_string(cols) + ")");
  c.sparse = true;
  c.N = N;
  c.nnz = nnz;
  c.X = val;
  c.xdata = val.data();
  c.Xptr = ptr;
  c.ptrdata = ptr.data();
  c.Xidx = idx;
  c.idxdata = idx.data();
}

// X dense (N, in_width) or sparse (see check_sparse_X).
template <class T>
void check_input(Model<T>& m, const py::handle& obj, Checked<T>& c) {
  if (py::isinstance<py::tuple>(obj)) {
    check_sparse_X(m, py::reinterpret_borrow<py::tuple>(obj), c);
    return;
  }
  auto X = check_X(m, obj);
  c.N = X.shape(0);
  c.X = X;
  c.xdata = X.data();
}

// Class labels in range, with the GIL held: for the calls that must refuse before their first
// change (train_epoch, validate). The core checks its own copy again where it reads it.
inline void check_label_range(const int64_t* p, int64_t n, int64_t C) {
  for (int64_t i = 0; i < n; ++i) check_class_label(p[i], i, C);
}

// sample_weight (N,) of the model's dtype, or None. Values are checked by the core on its copy
// (and here too when check_values, for calls that must refuse before their first change).
template <class T>
void check_weights(Checked<T>& c, const py::handle& w_obj, bool check_values) {
  if (w_obj.is_none()) return;
  auto w = bind::as_exact<T>(w_obj, "sample_weight", 1);
  if (w.shape(0) != c.N)
    throw ValueError("sample_weight: expected shape (" + std::to_string(c.N) + ",), got " + bind::shape_str(w));
  c.w = w;
  c.labels.weight = w.data();
  if (check_values)
    for (int64_t i = 0; i < c.N; ++i) check_sample_weight(c.labels.weight[i], i);
}

template <class T>
Checked<T> check_Xy(Model<T>& m, const py::handle& X_obj, const py::handle& y_obj, bool check_range,
                    const py::handle& w_obj = py::none()) {
  require_compiled(m);
  Checked<T> c;
  check_input(m, X_obj, c);
  const int64_t D = m.out_width();
  if (m.loss_kind() == LossKind::CrossEntropy) {
    if (!py::isinstance<py::array>(y_obj))
      throw TypeError("y: expected a numpy.ndarray of int64 class labels");
    py::array ya = py::reinterpret_borrow<py::array>(y_obj);
    if (!ya.dtype().is(py::dtype::of<int64_t>()))
      throw TypeError("y: cross_entropy expects integer class labels (int64), got dtype " + bind::dtype_str(ya));
    if (ya.ndim() != 1 || ya.shape(0) != c.N)
      throw ValueError("y: expected shape (" + std::to_string(c.N) + ",) of class labels, got " + bind::shape_str(ya));
    if (!(ya.flags() & py::array::c_style)) ya = py::array_t<int64_t, py::array::c_style>(ya);  // C-order copy
    c.y = ya;
    c.labels.cls = static_cast<const int64_t*>(ya.data());
    if (check_range) check_label_range(c.labels.cls, c.N, D);
  } else {
    auto t = bind::as_exact<T>(y_obj, "y", 2);
    if (t.shape(0) != c.N || t.shape(1) != D)
      throw ValueError("y: expected targets of shape (" + std::to_string(c.N) + ", " + std::to_string(D) +
                       "), got " + bind::shape_str(t));
    c.y = t;
    c.labels.target = t.data();
    if (m.loss_kind() == LossKind::Poisson) {  // counts or rates: never negative
      const T* p = t.data();
      for (int64_t i = 0; i < c.N * D; ++i)
        if (p[i] < T(0))
          throw ValueError("y: poisson targets must be >= 0, got " + std::to_string(static_cast<double>(p[i])) +
                           " at row " + std::to_string(i / D));
    }
  }
  check_weights(c, w_obj, check_range);
  return c;
}

int64_t check_batch(int64_t batch, const char* name) {
  if (batch < 1) throw ValueError(std::string(name) + ": expected a batch size >= 1, got " + std::to_string(batch));
  return batch;
}

py::tuple tensor_shape(const ParamTensor& t) {
  if (t.cols) return py::make_tuple(t.rows, t.cols);
  return py::make_tuple(t.rows);
}

template <class T>
py::array_t<T> view(py::object self, T* ptr, int64_t rows, int64_t cols, bool vector) {
  if (vector) return py::array_t<T>({rows}, {static_cast<int64_t>(sizeof(T))}, ptr, self);
  return py::array_t<T>({rows, cols}, {static_cast<int64_t>(sizeof(T) * cols), static_cast<int64_t>(sizeof(T))},
                        ptr, self);
}

// Zero-copy view of tensor i of `table` inside `store`, keeping the model alive.
template <class T>
py::array_t<T> tensor_view(py::object self, const std::vector<ParamTensor>& table, T* store, int i,
                           const char* missing) {
  if (i < 0 || i >= static_cast<int>(table.size())) throw ValueError(missing);
  const ParamTensor& t = table[i];
  return view<T>(self, store + t.offset, t.rows, t.cols, t.cols == 0);
}

template <class T>
void bind_one(py::module_& m, const char* name) {
  using M = Model<T>;
  py::class_<M, std::shared_ptr<M>>(m, name)
      .def(py::init([](std::vector<LayerSpec> layers, std::vector<NodeSpec> nodes, int output) {
             return std::make_shared<M>(std::move(layers), std::move(nodes), output);
           }),
           py::arg("layers"), py::arg("nodes"), py::arg("output"),
           "layers: a LayerSpec per layer with parameters or statistics; nodes: a NodeSpec per node in "
           "topological order, node 0 the input; output: the output node.")
      .def_property_readonly("in_features", &M::in_width)
      .def_property_readonly("out_features", &M::out_width)
      .def_property_readonly("num_params", &M::num_params)
      .def("tensors", [](M& self) {
        py::list out;
        for (const auto& t : self.tensors())
          out.append(py::make_tuple(t.layer, t.name, t.offset, tensor_shape(t)));
        return out;
      }, "List of (layer, name, offset, shape) for every parameter tensor.")
      .def("buffer_tensors", [](M& self) {
        py::list out;
        for (const auto& t : self.buffer_tensors())
          out.append(py::make_tuple(t.layer, t.name, t.offset, tensor_shape(t)));
        return out;
      }, "List of (layer, name, offset, shape) for every buffer (BatchNorm running statistics).")
      .def("param_view", [](py::object self, int i) {
        M& s = self.cast<M&>();
        return tensor_view<T>(self, s.tensors(), s.params(), i, "i: no such parameter tensor");
      }, py::arg("i"))
      .def("grad_view", [](py::object self, int i) {
        M& s = self.cast<M&>();
        return tensor_view<T>(self, s.tensors(), s.grads(), i, "i: no such parameter tensor");
      }, py::arg("i"))
      .def("buffer_view", [](py::object self, int i) {
        M& s = self.cast<M&>();
        return tensor_view<T>(self, s.buffer_tensors(), s.buffers(), i, "i: no such buffer");
      }, py::arg("i"))
      .def("last_ops", [](M& self) {
        return py::make_tuple(self.last_ops().forward, self.last_ops().backward);
      }, "(node forward executions, node backward executions) of the last training step.")
      .def("state_view", [](py::object self, const py::object& slot) {
        M& s = self.cast<M&>();
        int k = 0;
        if (py::isinstance<py::str>(slot)) {
          const std::string name = slot.cast<std::string>();
          k = s.optim().slot_index(name);
          if (k < 0) throw ValueError("slot: the compiled optimizer keeps no state slot called '" + name + "'");
        } else {
          if (!py::isinstance<py::int_>(slot) || py::isinstance<py::bool_>(slot))
            throw TypeError("slot: expected an int or a slot name");
          k = slot.cast<int>();
          if (k < 0 || k >= kern::kMaxStateSlots)
            throw ValueError("slot: expected 0 to " + std::to_string(kern::kMaxStateSlots - 1) + ", got " +
                             std::to_string(k));
        }
        Buffer<T>& b = s.optim().slot(k);
        return view<T>(self, b.data(), static_cast<int64_t>(b.size()), 1, true);
      }, py::arg("slot"), "Flat view of optimizer state slot `slot`: its index (empty if the optimizer keeps "
         "fewer) or its name (e.g. 'exp_avg'); valid until the next compile.")
      .def("state_names", [](M& self) { return self.optim().slot_names(); },
           "Names of the compiled optimizer's state slots, in slot order (e.g. ['exp_avg', 'exp_avg_sq']).")
      .def("state_nonneg", [](M& self) {
        std::vector<bool> out;
        for (int k = 0; k < self.optim().num_slots(); ++k) out.push_back(self.optim().slot_nonneg(k));
        return out;
      }, "Per state slot: whether its values are never negative (second moments, sums of squares).")
      .def_property("training", &M::training, [](M& self, bool on) {
        std::lock_guard<std::mutex> lock(self.mutex());
        self.set_training(on);
      })
      .def("set_reducer", [](M& self, py::object sum_fn, py::object scalars_fn, py::object bcast_fn) {
        if (sum_fn.is_none()) {
          std::shared_ptr<Reducer<T>> old;
          {
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> lock(self.mutex());
            self.set_reducer(nullptr);
          }
          return;
        }
        for (auto* f : {&sum_fn, &scalars_fn, &bcast_fn})
          if (!PyCallable_Check(f->ptr())) throw TypeError("set_reducer: expected three callables (or None)");
        auto r = std::make_shared<PyReducer<T>>(sum_fn, scalars_fn, bcast_fn);
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(self.mutex());
        self.set_reducer(std::move(r));
      }, py::arg("sum"), py::arg("sum_scalars") = py::none(), py::arg("broadcast") = py::none(),
         "Data-parallel training (lp.distributed): sum(a), sum_scalars(a) and broadcast(a) replace a "
         "1-D array in place by its sum over the ranks (broadcast: rank 0's values). None: one process.")
      .def_property_readonly("distributed", &M::distributed)
      .def("set_seed", [](M& self, uint64_t s) {
        std::lock_guard<std::mutex> lock(self.mutex());
        self.set_seed(s);
      }, py::arg("seed"), "Seed of the dropout masks.")
      .def("rng_state", [](M& self) { return py::make_tuple(self.rng_seed(), self.rng_draws()); },
           "(seed, draws) of the dropout mask generator.")
      .def("set_rng_state", [](M& self, uint64_t seed, uint64_t draws) {
        std::lock_guard<std::mutex> lock(self.mutex());
        self.set_rng_state(seed, draws);
      }, py::arg("seed"), py::arg("draws"))
      .def("steps", [](M& self) {
        std::lock_guard<std::mutex> lock(self.mutex());
        return self.steps();
      })
      .def("set_steps", [](M& self, const std::vector<int64_t>& s) {
        std::lock_guard<std::mutex> lock(self.mutex());
        if (s.size() != self.steps().size()) throw ValueError("steps: wrong length");
        self.steps() = s;
      })
      .def("compile", [](M& self, int loss, int opt, double lr, double momentum, double dampening,
                         double weight_decay, bool nesterov, double beta1, double beta2, double eps, double alpha,
                         bool centered, double lr_decay, double initial_accumulator_value, int schedule,
                         int64_t inner_steps, double inner_lr, double target_lr, double clip_norm,
                         double clip_value) {
        if (loss < 0 || loss >= static_cast<int>(LossKind::Count)) throw ValueError("loss: unknown loss");
        if (opt < 0 || opt >= static_cast<int>(kern::OptKind::Count)) throw ValueError("optimizer: unknown optimizer");
        kern::OptConfig c;
        c.kind = static_cast<kern::OptKind>(opt);
        c.lr = lr; c.momentum = momentum; c.dampening = dampening; c.weight_decay = weight_decay;
        c.nesterov = nesterov; c.beta1 = beta1; c.beta2 = beta2; c.eps = eps;
        c.alpha = alpha; c.centered = centered; c.lr_decay = lr_decay;
        c.initial_accumulator_value = initial_accumulator_value;
        if (schedule < 0 || schedule >= static_cast<int>(ScheduleKind::Count)) throw ValueError("schedule: unknown schedule");
        ScheduleConfig sc;
        sc.kind = static_cast<ScheduleKind>(schedule);
        sc.inner_steps = inner_steps; sc.inner_lr = inner_lr; sc.target_lr = target_lr;
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(self.mutex());
        kern::ClipConfig clip;
        clip.max_norm = clip_norm;
        clip.max_value = clip_value;
        self.compile(static_cast<LossKind>(loss), c, sc, clip);
      }, py::kw_only(), py::arg("loss"), py::arg("optimizer"), py::arg("lr"), py::arg("momentum") = 0.0,
         py::arg("dampening") = 0.0, py::arg("weight_decay") = 0.0, py::arg("nesterov") = false,
         py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8, py::arg("alpha") = 0.99,
         py::arg("centered") = false, py::arg("lr_decay") = 0.0, py::arg("initial_accumulator_value") = 0.0,
         py::arg("schedule") = 0, py::arg("inner_steps") = 10, py::arg("inner_lr") = 0.0, py::arg("target_lr") = 10.0,
         py::arg("clip_norm") = 0.0, py::arg("clip_value") = 0.0,
         "Loss, optimizer (with its settings by name), schedule and clipping; every argument by keyword. "
         "Resets the optimizer state and step counts.")
      .def("train_step", [](M& self, const py::handle& X, const py::handle& y, const py::handle& w) {
        auto c = check_Xy(self, X, y, false, w);
        py::gil_scoped_release nogil;
        c.finite_or_throw(self);
        std::lock_guard<std::mutex> lock(self.mutex());
        return self.train_step(c.input(), c.N, c.labels);
      }, py::arg("X"), py::arg("y"), py::arg("sample_weight") = py::none(),
         "One guarded step: raises NonFiniteError, with the model unchanged, on a non-finite loss or gradient.")
      .def("compute_gradients", [](M& self, const py::handle& X, const py::handle& y, bool update_stats,
                                   const py::handle& w) {
        auto c = check_Xy(self, X, y, false, w);
        py::gil_scoped_release nogil;
        c.finite_or_throw(self);
        std::lock_guard<std::mutex> lock(self.mutex());
        return self.compute_gradients(c.input(), c.N, c.labels, update_stats);
      }, py::arg("X"), py::arg("y"), py::arg("update_stats") = true, py::arg("sample_weight") = py::none())
      .def("apply_gradients", [](M& self, double l2_weights, double grad_scale) {
        require_compiled(self);
        if (!(l2_weights >= 0) || !std::isfinite(l2_weights))
          throw ValueError("l2_weights: expected a finite number >= 0, got " + std::to_string(l2_weights));
        if (!(grad_scale > 0) || !std::isfinite(grad_scale))
          throw ValueError("grad_scale: expected a finite number > 0, got " + std::to_string(grad_scale));
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(self.mutex());
        if (self.schedule().kind != ScheduleKind::Simultaneous)
          throw std::runtime_error("apply_gradients: the compiled schedule updates layers inside train_step; "
                                   "compute_gradients/apply_gradients split the Simultaneous schedule only");
        if (self.gradients_fault())
          throw NonFiniteError(std::string("apply_gradients: the last computed ") +
                               (self.gradients_fault() == 1 ? "loss is" : "gradients are") +
                               " not finite; nothing was applied");
        if (!self.gradients_ready())
          throw std::runtime_error("apply_gradients: no gradients to apply; call compute_gradients(X, y) first");
        self.apply_gradients(l2_weights, grad_scale);
      }, py::arg("l2_weights") = 0.0, py::arg("grad_scale") = 1.0,
         "One optimizer step with the last computed gradients; l2_weights adds l2 * W to every Linear "
         "weight's gradient (in the optimizer's pass), grad_scale multiplies every gradient first.")
      .def("loss", [](M& self, const py::handle& X, const py::handle& y, const py::handle& w) {
        auto c = check_Xy(self, X, y, false, w);
        py::gil_scoped_release nogil;
        c.finite_or_throw(self);
        std::lock_guard<std::mutex> lock(self.mutex());
        return self.loss_only(c.input(), c.N, c.labels);
      }, py::arg("X"), py::arg("y"), py::arg("sample_weight") = py::none(),
         "Loss of the batch; no gradients, no update.")
      .def("validate", [](M& self, const py::handle& X, const py::handle& y, const py::handle& w) {
        auto c = check_Xy(self, X, y, true, w);
        py::gil_scoped_release nogil;
        c.finite_or_throw(self);
      }, py::arg("X"), py::arg("y"), py::arg("sample_weight") = py::none(),
         "Every check a training call makes on (X, y), labels and NaN/Inf included; changes nothing.")
      .def("train_epoch", [](M& self, const py::handle& X, const py::handle& y, const py::handle& order_obj,
                             int64_t batch, int on_nonfinite, const py::handle& w) {
        auto c = check_Xy(self, X, y, true, w);
        check_batch(batch, "batch_size");
        if (on_nonfinite < 0 || on_nonfinite > 1) throw ValueError("on_nonfinite: expected 0 (stop) or 1 (skip)");
        auto order = bind::as_exact<int64_t>(order_obj, "order", 1);
        if (order.shape(0) < 1) throw ValueError("order: empty");
        const int64_t* o = order.data();
        const int64_t n = order.shape(0);
        for (int64_t i = 0; i < n; ++i)  // checked again by the core where each is read
          if (o[i] < 0 || o[i] >= c.N) throw ValueError("order: row index out of range");
        if (c.labels.weight)  // every batch's weights must have a positive sum, before any step
          for (int64_t s0 = 0; s0 < n; s0 += batch) {
            double sum = 0;
            for (int64_t i = s0; i < std::min(n, s0 + batch); ++i) sum += static_cast<double>(c.labels.weight[o[i]]);
            if (!(sum > 0))
              throw ValueError("sample_weight: the rows of batch " + std::to_string(s0 / batch) +
                               " all have weight 0 (a batch needs a positive total weight)");
          }
        const int64_t nb = (n + std::min(batch, n) - 1) / std::min(batch, n);
        py::array_t<double> losses(nb);
        double* lp = losses.mutable_data();
        std::fill(lp, lp + nb, std::numeric_limits<double>::quiet_NaN());
        typename M::EpochResult r;
        {
          py::gil_scoped_release nogil;
          c.finite_or_throw(self);
          std::lock_guard<std::mutex> lock(self.mutex());
          r = self.train_epoch(c.input(), c.N, c.labels, o, n, batch, lp, static_cast<typename M::OnNonFinite>(on_nonfinite));
        }
        return py::make_tuple(losses, r.done, r.skipped, r.fault_batch, r.fault);
      }, py::arg("X"), py::arg("y"), py::arg("order"), py::arg("batch_size"), py::arg("on_nonfinite") = 0,
         py::arg("sample_weight") = py::none(),
         "Guarded steps over batches of X[order]: (losses, batches done, batches skipped, batch that "
         "stopped the epoch or -1, its fault: 1 loss, 2 gradient). on_nonfinite 0 stops at the first "
         "non-finite step, 1 skips it.")
      .def("predict", [](M& self, const py::handle& X_obj, int64_t batch, uint64_t cache_token) {
        Checked<T> c;
        check_input(self, X_obj, c);
        const int64_t N = c.N;
        if (batch <= 0) batch = std::min<int64_t>(N, std::max<int64_t>(self.capacity(), kDefaultChunk));
        py::array_t<T> out({N, self.out_width()});
        T* dst = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          c.finite_or_throw(self);
          std::lock_guard<std::mutex> lock(self.mutex());
          self.predict(c.input(), N, dst, batch, cache_token);
        }
        return out;
      }, py::arg("X"), py::arg("batch_size") = 0, py::arg("cache_token") = 0,
         "cache_token: param_version() when nothing outside the model holds a view of the parameters "
         "(then the call may keep the weights packed for the next calls), else 0")
      .def("param_version", &M::param_version,
           "Bumped before any write to the parameters: by the core's updates, and by params_changed()")
      .def("params_changed", &M::params_changed,
           "Note that the parameters may be written through a view (invalidates predict's packed weights)")
      .def("packed_stats", [](M& self) {
        typename M::PackedStats st;
        {  // read under the model mutex: a predict in another thread may be updating them
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(self.mutex());
          st = self.packed_stats();
        }
        py::dict d;
        d["builds"] = st.builds;
        d["uses"] = st.uses;
        d["bytes"] = st.bytes;
        d["valid"] = st.valid;
        return d;
      }, "predict's packed weights: calls that packed them (builds), calls that used them, bytes held, "
         "whether they match the current parameters")
      .def("evaluate", [](M& self, const py::handle& X, const py::handle& y, int64_t batch, const py::handle& w,
                          uint64_t cache_token) {
        auto c = check_Xy(self, X, y, true, w);
        if (batch <= 0) batch = std::min<int64_t>(c.N, std::max<int64_t>(self.capacity(), kDefaultChunk));
        typename M::Evaluation r;
        {
          py::gil_scoped_release nogil;
          c.finite_or_throw(self);
          std::lock_guard<std::mutex> lock(self.mutex());
          r = self.evaluate(c.input(), c.N, c.labels, batch, cache_token);
        }
        return py::make_tuple(r.loss, r.correct, r.total);
      }, py::arg("X"), py::arg("y"), py::arg("batch_size") = 0, py::arg("sample_weight") = py::none(),
         py::arg("cache_token") = 0,
         "(mean loss, correct predictions (their weight), total weight)")
      .def("schedule_fallbacks", &M::schedule_fallbacks,
           "Stored layers the compiled schedule treats differently from its rule (LocoProp M: Linear "
           "layers whose target falls back to S's).")
      .def("snapshot", [](M& self) {
        // A consistent copy of everything save() writes, taken under the model mutex (a fit in
        // another thread holds it for a whole chunk of batches), without holding the GIL.
        std::vector<T> p, b;
        std::vector<std::vector<T>> slots;
        std::vector<std::string> names;
        std::vector<int64_t> steps;
        uint64_t seed = 0, draws = 0;
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(self.mutex());
          p.assign(self.params_read(), self.params_read() + self.num_params());
          b.assign(self.buffers(), self.buffers() + self.buffer_size());
          for (int k = 0; k < kern::kMaxStateSlots; ++k)
            slots.emplace_back(self.optim().slot(k).begin(), self.optim().slot(k).end());
          names = self.optim().slot_names();
          steps = self.steps();
          seed = self.rng_seed();
          draws = self.rng_draws();
        }
        auto arr = [](const auto& v) {
          using E = typename std::decay_t<decltype(v)>::value_type;
          py::array_t<E> a(static_cast<py::ssize_t>(v.size()));
          if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), sizeof(E) * v.size());
          return a;
        };
        py::dict d;
        d["params"] = arr(p);
        d["buffers"] = arr(b);
        for (int k = 0; k < kern::kMaxStateSlots; ++k) d[("state" + std::to_string(k)).c_str()] = arr(slots[k]);
        d["state_names"] = names;
        d["steps"] = arr(steps);
        d["rng"] = py::make_tuple(seed, draws);
        return d;
      }, "Copies of the parameters, buffers, optimizer state slots (state0.. and their state_names), step counts and dropout generator "
         "state, all from one moment (save uses it).");
}

}  // namespace

void bind_model(py::module_& m) {
  bind_one<float>(m, "ModelF32");
  bind_one<double>(m, "ModelF64");
}
