// Thread calibration (runtime.hpp: calibrate_work): for each kind of parallel loop, run its
// real kernel at growing sizes, serially and on the pool, and find the smallest size from
// which the pool is faster by a margin. That size, split over two threads, is the kind's
// units-per-thread threshold. The measurements are returned so a caller can show them.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <vector>

#include "layerprop/common.hpp"
#include "layerprop/eltwise.hpp"
#include "layerprop/gemm.hpp"
#include "layerprop/loss.hpp"
#include "layerprop/optim.hpp"
#include "layerprop/runtime.hpp"
#include "layerprop/sparse.hpp"

namespace lp {
namespace {

using Clock = std::chrono::steady_clock;

// A kernel call of about `units` units of work of one kind, on buffers it owns.
struct Probe {
  virtual ~Probe() = default;
  virtual void setup(int64_t units) = 0;
  virtual void run() = 0;
};

std::vector<float> filled(int64_t n, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : v) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x = static_cast<float>(static_cast<double>(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
  return v;
}

struct GemmProbe : Probe {  // the hidden layers' forward shape: batch x out x in
  bool small;
  explicit GemmProbe(bool s) : small(s) {}
  int64_t M = 0, N = 0, K = 0;
  std::vector<float> a, b, c;
  void setup(int64_t units) override {
    if (small) {  // the direct path: 4 rows (batch-1 to batch-4 inference)
      M = 4;
      N = K = std::max<int64_t>(8, static_cast<int64_t>(std::sqrt(double(units) / 4)));
    } else {
      M = std::max<int64_t>(24, static_cast<int64_t>(std::cbrt(double(units))));
      N = K = std::max<int64_t>(24, static_cast<int64_t>(std::sqrt(double(units) / double(M))));
    }
    a = filled(M * K, 1);
    b = filled(N * K, 2);
    c.assign(static_cast<size_t>(M * N), 0.f);
  }
  void run() override { kern::gemm<float>(false, true, M, N, K, a.data(), K, b.data(), K, c.data(), N, false); }
};

struct ActProbe : Probe {
  Act act;
  explicit ActProbe(Act a) : act(a) {}
  std::vector<float> x, y;
  void setup(int64_t units) override {
    x = filled(units, 3);
    y.assign(x.size(), 0.f);
  }
  void run() override {
    kern::act_forward<float>(y.data(), x.data(), static_cast<int64_t>(x.size()), act, kern::ActParams<float>());
  }
};

struct LossProbe : Probe {  // cross-entropy over 10 classes: N*C*8 units
  int64_t N = 0;
  static constexpr int64_t C = 10;
  std::vector<float> z, g, rows;
  std::vector<int64_t> labels;
  void setup(int64_t units) override {
    N = std::max<int64_t>(1, units / (C * 8));
    z = filled(N * C, 4);
    g.assign(z.size(), 0.f);
    rows.assign(static_cast<size_t>(N), 0.f);
    labels.resize(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) labels[i] = i % C;
  }
  void run() override { kern::cross_entropy<float>(g.data(), rows.data(), z.data(), labels.data(), nullptr, N, C); }
};

struct OptimProbe : Probe {  // Adam over n parameters
  kern::OptConfig cfg;
  std::vector<float> p, g, m, v;
  int64_t step = 0;
  OptimProbe() {
    cfg.kind = kern::OptKind::Adam;
    cfg.lr = 1e-6;
  }
  void setup(int64_t units) override {
    const int64_t n = std::max<int64_t>(64, units / 8);
    p = filled(n, 5);
    g = filled(n, 6);
    m.assign(p.size(), 0.f);
    v.assign(p.size(), 0.f);
  }
  void run() override {
    float* slots[kern::kMaxStateSlots] = {m.data(), v.data()};
    kern::optimizer_step<float>(cfg, p.data(), g.data(), slots, static_cast<int64_t>(p.size()), ++step);
  }
};

struct SparseProbe : Probe {  // CSR rows (1% dense, 2,000 features) through 64 outputs
  static constexpr int64_t IN = 2000, OUT = 64, PER_ROW = 20;
  int64_t N = 0;
  std::vector<int64_t> ptr, idx;
  std::vector<float> val, W, y;
  void setup(int64_t units) override {
    N = std::max<int64_t>(1, (units - IN * OUT / 4) / (PER_ROW * OUT));
    ptr.resize(static_cast<size_t>(N + 1));
    idx.resize(static_cast<size_t>(N * PER_ROW));
    for (int64_t r = 0; r <= N; ++r) ptr[r] = r * PER_ROW;
    for (int64_t p = 0; p < N * PER_ROW; ++p) idx[p] = (p * 97 + (p / PER_ROW) * 13) % IN;
    for (int64_t r = 0; r < N; ++r) std::sort(idx.begin() + r * PER_ROW, idx.begin() + (r + 1) * PER_ROW);
    val = filled(N * PER_ROW, 7);
    W = filled(OUT * IN, 8);
    y.assign(static_cast<size_t>(N * OUT), 0.f);
  }
  void run() override {
    kern::csr_linear_forward<float>(y.data(), OUT, ptr.data(), idx.data(), val.data(), N, W.data(), OUT, IN, nullptr);
  }
};

// Median seconds per call, over repetitions filling about `budget` seconds.
double time_call(Probe& p, double budget) {
  p.run();  // warm: pages, scratch, workers
  std::vector<double> t;
  const auto end = Clock::now() + std::chrono::duration<double>(budget);
  while (t.size() < 5 || (Clock::now() < end && t.size() < 2000)) {
    const auto t0 = Clock::now();
    p.run();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

std::unique_ptr<Probe> probe_for(Work w) {
  switch (w) {
    case Work::Gemm: return std::make_unique<GemmProbe>(false);
    case Work::GemmSmall: return std::make_unique<GemmProbe>(true);
    case Work::EltCheap: return std::make_unique<ActProbe>(Act::ReLU);
    case Work::EltCostly: return std::make_unique<ActProbe>(Act::Tanh);
    case Work::Loss: return std::make_unique<LossProbe>();
    case Work::Optim: return std::make_unique<OptimProbe>();
    case Work::Sparse: return std::make_unique<SparseProbe>();
    default: break;
  }
  throw ValueError("kind: no calibration probe for this kind of work");
}

}  // namespace

CalibrationResult calibrate_work(Work w, double budget_s, double margin) {
  CalibrationResult r;
  r.kind = w;
  r.threads = get_num_threads();
  const int64_t saved = work_threshold(w);
  if (r.threads < 2) {
    r.units_per_thread = saved == INT64_MAX ? 0 : saved;
    return r;
  }
  auto probe = probe_for(w);
  // Pooled measurements follow a serial one, after which the workers sleep: the rule that
  // keeps them asleep for short loops would turn the small pooled sizes serial.
  set_keep_workers_asleep(false);
  struct Restore {
    Work w;
    int64_t v;
    ~Restore() {
      set_work_threshold(w, v == INT64_MAX ? 0 : v);
      set_keep_workers_asleep(true);
    }
  } restore{w, saved};
  int64_t crossing = 0;
  int wins = 0;
  for (int64_t units = int64_t(1) << 12; units <= (int64_t(1) << 23); units *= 2) {
    probe->setup(units);
    set_work_threshold(w, 0);  // never parallel
    const double serial = time_call(*probe, budget_s);
    set_work_threshold(w, 1);  // always on every thread
    const double pooled = time_call(*probe, budget_s);
    r.units.push_back(units);
    r.serial_s.push_back(serial);
    r.pooled_s.push_back(pooled);
    if (pooled * margin < serial) {
      if (wins++ == 0) crossing = units;
      if (wins == 2) break;  // two sizes in a row: not noise
    } else {
      wins = 0;
      crossing = 0;
    }
  }
  // Two threads from `crossing` on: threads_for gives one per units_per_thread. A win at the
  // largest size alone is not confirmed by a second one: never parallel.
  r.units_per_thread = wins >= 2 && crossing > 0 ? std::max<int64_t>(1, crossing / 2) : 0;
  return r;
}

}  // namespace lp
