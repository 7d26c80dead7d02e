// The model object: validation of every array a user passes, then one call into the core
// with the GIL released. Parameters, gradients and optimizer state are zero-copy views that
// keep the model alive.
#include <pybind11/stl.h>

#include <memory>
#include <mutex>

#include "common.hpp"
#include "layerprop/model.hpp"

namespace py = pybind11;
using namespace lp;

namespace {

constexpr int64_t kDefaultChunk = 1024;

template <class T>
struct Checked {
  py::array_t<T, py::array::c_style> X;
  py::array_t<int64_t, py::array::c_style> cls;
  py::array_t<T, py::array::c_style> target;
  int64_t N = 0;
  // Scanned for NaN/Inf by finite_or_throw, inside the call's one GIL release.
  const T* xdata = nullptr;
  int64_t xsize = 0;
  const T* tdata = nullptr;
  int64_t tsize = 0;
  void finite_or_throw() const {
    if (!bind::all_finite(xdata, xsize)) throw ValueError("X: contains NaN or Inf");
    if (tdata && !bind::all_finite(tdata, tsize)) throw ValueError("y: contains NaN or Inf");
  }
  Labels<T> labels() const {
    Labels<T> l;
    if (cls) l.cls = cls.data();
    if (target) l.target = target.data();
    return l;
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

template <class T>
Checked<T> check_Xy(Model<T>& m, const py::handle& X_obj, const py::handle& y_obj) {
  require_compiled(m);
  Checked<T> c;
  c.X = check_X(m, X_obj);
  c.N = c.X.shape(0);
  const int64_t D = m.out_width();
  if (m.loss_kind() == LossKind::CrossEntropy) {
    if (!py::isinstance<py::array>(y_obj))
      throw TypeError("y: expected a numpy.ndarray of int64 class labels");
    py::array ya = py::reinterpret_borrow<py::array>(y_obj);
    if (!ya.dtype().is(py::dtype::of<int64_t>()))
      throw TypeError("y: cross_entropy expects integer class labels (int64), got dtype " + bind::dtype_str(ya));
    if (ya.ndim() != 1 || ya.shape(0) != c.N)
      throw ValueError("y: expected shape (" + std::to_string(c.N) + ",) of class labels, got " + bind::shape_str(ya));
    if (!(ya.flags() & py::array::c_style)) throw ValueError("y: expected a C-contiguous array");
    c.cls = py::reinterpret_borrow<py::array_t<int64_t, py::array::c_style>>(ya);
    const int64_t* p = c.cls.data();
    for (int64_t i = 0; i < c.N; ++i)
      if (p[i] < 0 || p[i] >= D)
        throw ValueError("y: class label " + std::to_string(p[i]) + " at row " + std::to_string(i) +
                         " is out of range [0, " + std::to_string(D) + ")");
  } else {
    c.target = bind::as_exact<T>(y_obj, "y", 2);
    if (c.target.shape(0) != c.N || c.target.shape(1) != D)
      throw ValueError("y: expected targets of shape (" + std::to_string(c.N) + ", " + std::to_string(D) +
                       "), got " + bind::shape_str(c.target));
    c.tdata = c.target.data();
    c.tsize = c.target.size();
  }
  c.xdata = c.X.data();
  c.xsize = c.X.size();
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
      .def(py::init([](const std::vector<std::tuple<int, int64_t, int64_t, bool, double, double>>& layers,
                       const std::vector<std::tuple<int, std::vector<int>, int64_t, int, int, double>>& nodes,
                       int output) {
             std::vector<LayerSpec> ls;
             for (auto& [kind, in, out, bias, eps, momentum] : layers) {
               if (kind < 0 || kind > static_cast<int>(LayerKind::LayerNorm)) throw ValueError("graph: unknown layer kind");
               ls.push_back({static_cast<LayerKind>(kind), in, out, bias, eps, momentum});
             }
             std::vector<NodeSpec> ns;
             for (auto& [kind, inputs, width, layer, act, slope] : nodes) {
               if (kind < 0 || kind > static_cast<int>(NodeKind::LayerNorm)) throw ValueError("graph: unknown node kind");
               if (act < 0 || act > static_cast<int>(Act::GELU)) throw ValueError("graph: unknown activation");
               NodeSpec s;
               s.kind = static_cast<NodeKind>(kind);
               s.inputs = inputs;
               s.width = width;
               s.layer = layer;
               s.act = static_cast<Act>(act);
               s.slope = slope;
               ns.push_back(std::move(s));
             }
             return std::make_shared<M>(std::move(ls), std::move(ns), output);
           }),
           py::arg("layers"), py::arg("nodes"), py::arg("output"),
           "layers: (kind, in, out, bias, eps, momentum) per parameterized layer (kind 0 Linear, 1 "
           "BatchNorm, 2 LayerNorm); nodes: (kind, inputs, width, layer, act, slope) in topological "
           "order, node 0 the input.")
      .def_property_readonly("in_features", &M::in_width)
      .def_property_readonly("out_features", &M::out_width)
      .def_property_readonly("num_params", &M::num_params)
      .def_property_readonly("capacity", &M::capacity)
      .def_property_readonly("compiled", &M::compiled)
      .def_property_readonly("gradients_ready", &M::gradients_ready)
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
      .def("unit_order", &M::unit_order, "Layers with parameters in the order the compiled schedule updates them.")
      .def("last_ops", [](M& self) {
        return py::make_tuple(self.last_ops().forward, self.last_ops().backward);
      }, "(node forward executions, node backward executions) of the last training step.")
      .def("state_view", [](py::object self, int slot) {
        M& s = self.cast<M&>();
        if (slot < 0 || slot > 1) throw ValueError("slot: expected 0 or 1");
        Buffer<T>& b = s.state(slot);
        return view<T>(self, b.data(), static_cast<int64_t>(b.size()), 1, true);
      }, py::arg("slot"), "Flat view of optimizer state slot (valid until the next compile).")
      .def_property("training", &M::training, [](M& self, bool on) {
        std::lock_guard<std::mutex> lock(self.mutex());
        self.set_training(on);
      })
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
      .def("steps", [](M& self) { return self.steps(); })
      .def("set_steps", [](M& self, const std::vector<int64_t>& s) {
        if (s.size() != self.steps().size()) throw ValueError("steps: wrong length");
        self.steps() = s;
      })
      .def("compile", [](M& self, int loss, int opt, double lr, double momentum, double dampening,
                         double weight_decay, bool nesterov, double beta1, double beta2, double eps,
                         int schedule, int64_t inner_steps, double inner_lr, double target_lr) {
        if (loss < 0 || loss > static_cast<int>(LossKind::BCEWithLogits)) throw ValueError("loss: unknown loss");
        if (opt < 0 || opt > static_cast<int>(kern::OptKind::AdamW)) throw ValueError("optimizer: unknown optimizer");
        kern::OptConfig c;
        c.kind = static_cast<kern::OptKind>(opt);
        c.lr = lr; c.momentum = momentum; c.dampening = dampening; c.weight_decay = weight_decay;
        c.nesterov = nesterov; c.beta1 = beta1; c.beta2 = beta2; c.eps = eps;
        if (schedule < 0 || schedule > static_cast<int>(ScheduleKind::LocoPropM)) throw ValueError("schedule: unknown schedule");
        ScheduleConfig sc;
        sc.kind = static_cast<ScheduleKind>(schedule);
        sc.inner_steps = inner_steps; sc.inner_lr = inner_lr; sc.target_lr = target_lr;
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(self.mutex());
        self.compile(static_cast<LossKind>(loss), c, sc);
      }, py::arg("loss"), py::arg("optimizer"), py::arg("lr"), py::arg("momentum"), py::arg("dampening"),
         py::arg("weight_decay"), py::arg("nesterov"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
         py::arg("schedule") = 0, py::arg("inner_steps") = 10, py::arg("inner_lr") = 0.0, py::arg("target_lr") = 10.0)
      .def("train_step", [](M& self, const py::handle& X, const py::handle& y) {
        auto c = check_Xy(self, X, y);
        py::gil_scoped_release nogil;
        c.finite_or_throw();
        std::lock_guard<std::mutex> lock(self.mutex());
        return self.train_step(c.X.data(), c.N, c.labels());
      }, py::arg("X"), py::arg("y"))
      .def("compute_gradients", [](M& self, const py::handle& X, const py::handle& y, bool update_stats) {
        auto c = check_Xy(self, X, y);
        py::gil_scoped_release nogil;
        c.finite_or_throw();
        std::lock_guard<std::mutex> lock(self.mutex());
        return self.compute_gradients(c.X.data(), c.N, c.labels(), update_stats);
      }, py::arg("X"), py::arg("y"), py::arg("update_stats") = true)
      .def("apply_gradients", [](M& self) {
        require_compiled(self);
        if (!self.gradients_ready())
          throw std::runtime_error("apply_gradients: no gradients to apply; call compute_gradients(X, y) first");
        if (self.schedule().kind != ScheduleKind::Simultaneous)
          throw std::runtime_error("apply_gradients: the compiled schedule updates layers inside train_step; "
                                   "compute_gradients/apply_gradients split the Simultaneous schedule only");
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(self.mutex());
        self.apply_gradients();
      })
      .def("loss", [](M& self, const py::handle& X, const py::handle& y) {
        auto c = check_Xy(self, X, y);
        py::gil_scoped_release nogil;
        c.finite_or_throw();
        std::lock_guard<std::mutex> lock(self.mutex());
        return self.loss_only(c.X.data(), c.N, c.labels());
      }, py::arg("X"), py::arg("y"), "Loss of the batch; no gradients, no update.")
      .def("train_epoch", [](M& self, const py::handle& X, const py::handle& y, const py::handle& order_obj,
                             int64_t batch) {
        auto c = check_Xy(self, X, y);
        check_batch(batch, "batch_size");
        auto order = bind::as_exact<int64_t>(order_obj, "order", 1);
        if (order.shape(0) < 1) throw ValueError("order: empty");
        const int64_t* o = order.data();
        const int64_t n = order.shape(0);
        for (int64_t i = 0; i < n; ++i)
          if (o[i] < 0 || o[i] >= c.N) throw ValueError("order: row index out of range");
        const int64_t nb = (n + batch - 1) / batch;
        py::array_t<double> losses(nb);
        double* lp = losses.mutable_data();
        {
          py::gil_scoped_release nogil;
          c.finite_or_throw();
          std::lock_guard<std::mutex> lock(self.mutex());
          self.train_epoch(c.X.data(), c.labels(), o, n, batch, lp);
        }
        return losses;
      }, py::arg("X"), py::arg("y"), py::arg("order"), py::arg("batch_size"))
      .def("predict", [](M& self, const py::handle& X_obj, int64_t batch) {
        auto X = check_X(self, X_obj);
        const int64_t N = X.shape(0);
        if (batch <= 0) batch = std::min<int64_t>(N, std::max<int64_t>(self.capacity(), kDefaultChunk));
        py::array_t<T> out({N, self.out_width()});
        T* dst = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          if (!bind::all_finite(X.data(), N * self.in_width())) throw ValueError("X: contains NaN or Inf");
          std::lock_guard<std::mutex> lock(self.mutex());
          self.predict(X.data(), N, dst, batch);
        }
        return out;
      }, py::arg("X"), py::arg("batch_size") = 0)
      .def("evaluate", [](M& self, const py::handle& X, const py::handle& y, int64_t batch) {
        auto c = check_Xy(self, X, y);
        if (batch <= 0) batch = std::min<int64_t>(c.N, std::max<int64_t>(self.capacity(), kDefaultChunk));
        std::pair<double, int64_t> r;
        {
          py::gil_scoped_release nogil;
          c.finite_or_throw();
          std::lock_guard<std::mutex> lock(self.mutex());
          r = self.evaluate(c.X.data(), c.N, c.labels(), batch);
        }
        return py::make_tuple(r.first, r.second);
      }, py::arg("X"), py::arg("y"), py::arg("batch_size") = 0);
}

}  // namespace

void bind_model(py::module_& m) {
  bind_one<float>(m, "ModelF32");
  bind_one<double>(m, "ModelF64");
}
