// Run-time facts: CPU features chosen for the kernels, the thread count, and the thread pool
// that runs the kernels' parallel loops (cpp/runtime/threads.cpp, docs/threads.md).
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace lp {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
};
const CpuFeatures& cpu_features();
// True when the AVX2+FMA kernels are compiled in and the CPU runs them.
bool use_avx2();
// True when, on top of that, the AVX-512F GEMM micro-kernels are compiled in and the CPU runs
// them (LAYERPROP_SIMD=avx2 turns them off). They give the AVX2 kernels' bits.
bool use_avx512();
// "avx2+fma" or "scalar": what the kernels actually run.
std::string simd_name();

bool have_openmp();
// True in a process forked after its parent had started layerprop's worker threads: such a
// child runs serially (get_num_threads() == 1) and starts no threads of its own.
bool forked_after_pool();
void set_num_threads(int n);
// lp.set_num_threads (default: OMP_NUM_THREADS, else the cores this process may run on),
// capped by OpenMP's limit for the calling thread (threadpoolctl, omp_set_num_threads).
int get_num_threads();

// ---- Work sized to the threads it pays for -------------------------------------------------
// Each parallel loop names its kind of work and counts it in that kind's units (multiply-adds
// for the GEMMs, elements for element-wise loops, ...). A kind's `units_per_thread` is the
// work below which one more thread costs more than it saves; the defaults come from
// `layerprop calibrate` on the reference machine and a rerun replaces them (set_work_threshold).
enum class Work : int {
  Gemm = 0,       // packed GEMM: M*N*K
  GemmSmall,      // direct (unpacked) small GEMM: M*N*K
  EltCheap,       // memory-bound element-wise loops (ReLU, add, column sums): elements
  EltCostly,      // transcendental activations (tanh, sigmoid, GELU...): elements
  Loss,           // loss rows: elements x per-element cost
  Optim,          // optimizer update: elements x the rule's cost
  Sparse,         // CSR products: non-zeros x outputs
  Count
};
const char* work_name(Work w);
int64_t work_threshold(Work w);
void set_work_threshold(Work w, int64_t units_per_thread);  // <= 0: never parallel
// Threads for `units` of work of kind `w`: one per units_per_thread, at most get_num_threads();
// 1 inside a pool job (nested loops run serially on the thread that runs the item).
int threads_for(Work w, int64_t units);

// ---- The pool ------------------------------------------------------------------------------
// run_items(n, nt, fn, ctx) calls fn(ctx, i) once for each i in [0, n), on the calling thread
// and up to nt - 1 pool workers. Items are claimed one at a time from a shared counter, so the
// threads present do the work of a thread the OS has descheduled; the caller waits only for
// items already being computed by others. Which thread computes an item never changes what it
// computes: callers give every item a fixed range of outputs, never a share that depends on nt.
// An exception thrown by an item is rethrown in the caller after all items have finished.
using ItemFn = void (*)(void* ctx, int64_t item);
void run_items(int64_t n, int nt, ItemFn fn, void* ctx);

template <class F>
inline void parallel_for(int64_t n, int nt, F&& body) {
  if (n <= 0) return;
  if (n == 1) {
    body(int64_t(0));
    return;
  }
  using Fn = std::remove_reference_t<F>;
  run_items(n, nt, [](void* c, int64_t i) { (*static_cast<Fn*>(c))(i); },
            const_cast<void*>(static_cast<const void*>(&body)));
}

// body(begin, end) over [0, n) in fixed chunks (multiples of 64 elements, independent of the
// thread count) when `units` of work of kind `w` pay for threads; inline otherwise. Element-wise
// and row-wise bodies compute each element the same way whatever the split.
template <class F>
inline void parallel_range(int64_t n, Work w, int64_t units, F&& body) {
  const int nt = n < 128 ? 1 : threads_for(w, units);
  if (nt <= 1) {
    body(int64_t(0), n);
    return;
  }
  // About 8 items per thread that can take part, each at least 64 elements: enough for a thread
  // that arrives late (or never) to leave its share to the others.
  const int64_t items = std::max<int64_t>(1, std::min<int64_t>(int64_t(nt) * 8, n / 64));
  const int64_t chunk = ((n + items - 1) / items + 63) / 64 * 64;
  const int64_t count = (n + chunk - 1) / chunk;
  parallel_for(count, nt, [&](int64_t i) {
    const int64_t b = i * chunk, e = std::min(n, b + chunk);
    body(b, e);
  });
}

// Pool facts for tests and the calibration: workers started, jobs run with workers, and the
// spin time (microseconds) a worker waits for the next job before it sleeps.
struct PoolStats {
  int workers = 0;
  int64_t jobs = 0;
  int64_t items_by_workers = 0;
  int spin_us = 0;
  int64_t waits = 0;    // jobs whose caller, out of items, waited for others' items to finish
  int64_t wait_ns = 0;  // the time those waits took
  int64_t stalls = 0;   // waits far longer than the caller's own items: a worker descheduled mid-item
  int64_t preempted_spins = 0;  // idle spins cut short: the worker was descheduled while spinning
  int64_t prewarms = 0;  // sleeping workers woken ahead of loops that ran on the caller
  int64_t moves = 0;  // sleeping workers kept off their caller's CPU for a job (see threads.cpp)
  int64_t foreign_samples = 0;       // samples of the CPU time other threads of the process used
  int64_t foreign_busy_samples = 0;  // ... that found them busy (loops then ran on one thread)
  int64_t runnable_checks = 0;   // stale samples (none for over 1.5 intervals) answered by the
                                 // other threads runnable at that moment
  int64_t runnable_busy = 0;     // ... that found some
  int64_t step_probes = 0;           // training steps run at the other thread setting (StepGovernor)
  int64_t serial_steps = 0;          // training steps run at 1 thread because that was faster
  int64_t serial_switches = 0;       // times a StepGovernor found 1 thread faster than its threads
};
// The probe of other busy threads in this process (on by default; LAYERPROP_FOREIGN_PROBE=0).
void set_foreign_probe(bool on);
PoolStats pool_stats();
// A spin-wait's pause: lets the other hyperthread of the core run, and saves power.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// ---- A caller's cap on its loops' threads, and the training step's governor ----------------
// While a ThreadCap is alive, the loops the calling thread starts use at most `cap` threads
// (cap <= 0: no cap).
class ThreadCap {
 public:
  explicit ThreadCap(int cap);
  ~ThreadCap();
  ThreadCap(const ThreadCap&) = delete;
  ThreadCap& operator=(const ThreadCap&) = delete;

 private:
  int saved_;
};

// Whether a repeated step (a model's training step) runs faster on its threads or on one. The
// thresholds size each loop to its work on a machine that runs its threads as it should; on a
// host that does not (two virtual CPUs placed far apart, a core-to-core round trip of 350 ns
// instead of 50-90), every hand-over between threads is slow and a 2-thread step can take
// 1.6x the 1-thread one. So the step times itself. Now and then (after 32 steps, then at
// intervals doubling from 64 to 1024 steps while nothing changes, quadrupling up to 4096 when
// 1 thread is 1.5x slower or more) a probe runs kProbeRun steps at the other setting;
// the median of its last kProbeKept steps against the median of the last kWindow steps at the
// current setting, per row, and two probes in a row that find the other setting 5% faster or
// more switch to it. A probe runs several steps because the first step after a change of
// threads pays to move the data to the cores that now use it. Results do not depend on the
// threads, so neither does anything the governor decides.
// On by default; LAYERPROP_STEP_GOVERNOR=0 (or this, off) keeps every step at its threads.
void set_step_governor(bool on);
class StepGovernor {
 public:
  static constexpr int kWindow = 16, kProbeRun = 4, kProbeKept = 2;
  // The cap for the next step: 0 (the threads get_num_threads gives) or 1; -1 when there is
  // nothing to govern (1 thread, or the governor off): then the step need not be recorded.
  int next_cap();
  // The step just run, under next_cap's answer, took `ticks` (of ticks(), or ns: only ratios
  // are used) for `rows` rows.
  void record(int64_t ticks, int64_t rows);
  // A cheap monotonic count: the TSC on x86-64 (a few ns to read, against some 20 ns for the
  // clock; a T step at batch 1 takes 1.5 us), else steady_clock's nanoseconds.
  static int64_t ticks() {
#if defined(__x86_64__)
    return static_cast<int64_t>(__builtin_ia32_rdtsc());
#else
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
#endif
  }

 private:
  void reset(int threads);
  int threads_ = 0;          // get_num_threads() the estimates belong to
  bool serial_ = false;      // 1 thread found faster
  int64_t steps_ = 0;        // steps recorded at the current setting since the last change
  int64_t next_probe_ = 32, interval_ = 64;
  int probing_ = 0;          // steps of the running probe done (0: none running)
  int agree_ = 0;            // consecutive probes in favour of switching
  double window_[kWindow] = {};  // the last steps at the current setting, ticks per row
  double probe_[kProbeRun] = {};
};

// While every worker sleeps, loops estimated under 50 us serially run on the caller (waking a
// worker costs more); on by default, off during calibration and for tests (_core hook).
void set_keep_workers_asleep(bool on);

// ---- Calibration (cpp/runtime/calibrate.cpp) -----------------------------------------------
// Runs kind w's kernel at sizes 2^12, 2^13, ..., 2^23 units, serially and on the pool (about
// budget_s seconds per measurement), and returns the measurements and the threshold: half the
// first size from which the pool is faster than serial by the factor `margin` at two sizes in a
// row (0: it never was). Does not change the thresholds in force.
struct CalibrationResult {
  Work kind = Work::Gemm;
  int threads = 1;
  int64_t units_per_thread = 0;
  std::vector<int64_t> units;
  std::vector<double> serial_s, pooled_s;
};
CalibrationResult calibrate_work(Work w, double budget_s, double margin);

void set_spin_us(int us);

}  // namespace lp
