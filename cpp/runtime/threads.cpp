#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include "layerprop/common.hpp"

#include "layerprop/runtime.hpp"
#ifdef LAYERPROP_HAVE_OPENMP
#include <omp.h>
#endif

namespace lp {

// OMP_NUM_THREADS, else the cores this process may run on (its affinity mask).
static int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

static std::atomic<int>& thread_setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}

// ---- Work thresholds ----------------------------------------------------------------------
// Units of work per thread, from `layerprop calibrate` (margin 1.3) on the reference machine
// (AMD Zen 4, 2 cores, f32): below one thread's worth a loop runs inline, without the pool.
// The pool's speed-up over serial at the crossing is noted for each. Optim is two steps under
// its calibration: calibration times the update alone, but in a step the worker has just
// written its share of the gradient into its own cache, and the S step (SGD momentum, 100K
// parameters) ran 172 us at 2 threads serial-optimizer against 149 us with it split (1 thread:
// 168 us); digits (Adam, at most 8K elements a tensor) stays serial either way.
namespace {
std::atomic<int64_t> g_threshold[static_cast<int>(Work::Count)] = {
    {int64_t(1) << 18},  // Gemm            (1.30x at 2^19; 1.36x at 2^18 alone, slower in a step)
    {int64_t(1) << 14},  // GemmSmall       (1.27x at 2^15)
    {int64_t(1) << 15},  // EltCheap        (1.17x at 2^15, 1.24x at 2^16)
    {int64_t(1) << 11},  // EltCostly       (1.93x at 2^12)
    {int64_t(1) << 13},  // Loss            (1.54x at 2^14)
    {int64_t(1) << 15},  // Optim           (1.20x at 2^17 alone; lowered in a step, see below)
    {int64_t(1) << 15},  // Sparse          (1.89x at 2^16)
};
const char* const g_work_names[] = {"gemm", "gemm_small", "eltwise_cheap", "eltwise_costly", "loss", "optim", "sparse"};
static_assert(sizeof(g_work_names) / sizeof(g_work_names[0]) == static_cast<size_t>(Work::Count));
thread_local bool tl_in_job = false;
}  // namespace

const char* work_name(Work w) { return g_work_names[static_cast<int>(w)]; }
int64_t work_threshold(Work w) { return g_threshold[static_cast<int>(w)].load(std::memory_order_relaxed); }
void set_work_threshold(Work w, int64_t units) {
  g_threshold[static_cast<int>(w)].store(units <= 0 ? INT64_MAX : units, std::memory_order_relaxed);
}

// Set by a worker that found itself descheduled while spinning (other threads want the
// cores): until then, a loop needs kSharedFactor times its usual work to use threads, since a
// worker that may be descheduled mid-item makes small jobs lose more than they gain.
static std::atomic<int64_t> g_shared_until_ns{0};
static constexpr int64_t kSharedFactor = 16;

static int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- Other busy threads and processes -------------------------------------------------
// Another library's pool in this process (NumPy's OpenBLAS, PyTorch's OpenMP) keeps its
// workers spinning for a while after each of its calls, on the same cores; so does any other
// busy thread. A loop that hands items to our worker then waits whenever that worker is
// descheduled mid-item: measured, S's step took 0.5x its 1-thread time with a NumPy and a
// torch call between steps, and 0.85x next to another process spinning on a core. So two
// things are sampled, in cores (CPU time over wall time): the CPU time of the process that
// neither the calling thread nor our workers account for, and the machine's busy time outside
// this process. Until the next sample, loops leave that many cores (rounded) to the others: on
// 2 cores, over half a core of other work means loops run on the calling thread only. The
// kernel adds other threads' running time to the process clock only at its ticks (4 ms here),
// so one sample spans 16 ms per worker: an error of a tick per running worker stays under a
// quarter of it.
namespace {
constexpr int kMaxProbedWorkers = 256;
constexpr int64_t kProbeNs = 16000000;  // per worker (see above)
std::atomic<clockid_t> g_worker_clock[kMaxProbedWorkers];  // 0 until set (0 is CLOCK_REALTIME,
                                                           // never a thread's CPU clock)
std::atomic<pid_t> g_worker_tid[kMaxProbedWorkers];  // their thread ids (0 until set)
std::atomic<int> g_worker_slots{0};  // workers registered (slots past kMaxProbedWorkers unused)
std::atomic<int64_t> g_runnable_checks{0};  // stale samples answered by runnable_foreign()
std::atomic<int64_t> g_runnable_busy{0};    // ... that found some
std::atomic<int64_t> g_probe_next_ns{0};
std::atomic<int> g_foreign_cores{0};  // other threads' use, in cores, rounded
std::atomic<bool> g_probing{false};
std::atomic<int64_t> g_foreign_samples{0};
std::atomic<int64_t> g_foreign_busy_samples{0};
std::atomic<bool> g_probe_on{env_switch_on("LAYERPROP_FOREIGN_PROBE")};  // "0": off (measurements)
struct ProbeSample {
  int64_t wall = 0, process = 0, workers = 0, epoch = -1;
};
ProbeSample g_last;                  // guarded by g_probing
std::atomic<int64_t> g_probe_epoch{0};
thread_local int64_t tl_probe_epoch = -2;
thread_local int64_t tl_probe_cpu = 0;

int64_t cpu_ns(clockid_t c) {
  timespec ts;
  if (clock_gettime(c, &ts) != 0) return -1;
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void register_worker_clock() {
  clockid_t c;
  if (pthread_getcpuclockid(pthread_self(), &c) != 0) return;
  const int i = g_worker_slots.fetch_add(1);
  if (i >= kMaxProbedWorkers) return;  // its time then counts as other threads' (many cores)
  g_worker_tid[i].store(static_cast<pid_t>(syscall(SYS_gettid)));
  g_worker_clock[i].store(c);  // slots fill in any order: unset ones read as 0 and are skipped
}

// The threads of this process, other than the caller and our workers, that are running or
// waiting for a CPU right now (state R in /proc/self/task/<tid>/stat); -1 where that cannot
// be read. Another pool's worker that spins after its call is one of them; one that sleeps is
// not. Some 5-10 us per thread, so it answers only a stale sample (below), not every loop.
constexpr int kMaxScanned = 64;
int runnable_foreign() {
#if defined(__linux__)
  DIR* d = opendir("/proc/self/task");
  if (!d) return -1;
  const pid_t self = static_cast<pid_t>(syscall(SYS_gettid));
  const int slots = std::min(g_worker_slots.load(), kMaxProbedWorkers);
  int n = 0, seen = 0;
  while (const dirent* e = readdir(d)) {
    if (++seen > 2 + kMaxScanned) break;  // "." and ".." too; a bound on the scan's cost
    char* end = nullptr;
    const long tid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || tid <= 0 || tid == self) continue;
    bool ours = false;
    for (int i = 0; i < slots && !ours; ++i) ours = g_worker_tid[i].load() == tid;
    if (ours) continue;
    char path[64], buf[512];
    std::snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // the thread has ended
    const ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (got <= 0) continue;
    buf[got] = '\0';
    const char* paren = std::strrchr(buf, ')');  // the name may hold spaces and parentheses
    if (paren && paren[1] == ' ' && paren[2] == 'R') ++n;
  }
  closedir(d);
  return n;
#else
  return -1;
#endif
}

// `ns` of CPU time over `wall` ns, in cores, rounded; 0 for none.
int cores_of(int64_t ns, int64_t wall) {
  return wall > 0 && ns > 0 ? static_cast<int>((ns + wall / 2) / wall) : 0;
}

// Other processes: the busy CPU time of the whole machine (/proc/stat, in clock ticks of 10 ms)
// minus this process's, over windows of at least 100 ms and 25 ms per CPU, so that the ticks'
// rounding (one per CPU) stays under half a core. Returns -1 where /proc/stat is unreadable.
int64_t system_busy_ns() {
  FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return -1;
  unsigned long long v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int got = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                              &v[4], &v[5], &v[6], &v[7]);
  std::fclose(f);
  if (got < 8) return -1;
  static const long hz = sysconf(_SC_CLK_TCK);
  if (hz <= 0) return -1;
  // user nice system idle iowait irq softirq steal: all but idle and iowait are busy
  const unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  return static_cast<int64_t>(busy) * (1000000000 / hz);
}
std::atomic<int> g_other_procs{0};     // cores other processes are using, rounded
struct SystemSample {
  int64_t wall = 0, busy = -1, process = -1;
};
SystemSample g_sys_last;               // guarded by g_probing

void probe_system(int64_t now, int64_t process) {
  static const int64_t window = [] {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return std::max<int64_t>(100000000, int64_t(25000000) * (n > 0 ? n : 1));
  }();
  if (g_sys_last.busy >= 0 && now - g_sys_last.wall < window) return;
  SystemSample cur{now, system_busy_ns(), process};
  if (now - g_sys_last.wall > window * 3 / 2) {
    g_other_procs.store(0, std::memory_order_relaxed);  // stale (see foreign_cores)
  } else if (cur.busy >= 0 && g_sys_last.busy >= 0 && cur.process >= 0 && g_sys_last.process >= 0) {
    const int64_t wall = cur.wall - g_sys_last.wall;
    const int64_t others = (cur.busy - g_sys_last.busy) - (cur.process - g_sys_last.process);
    g_other_procs.store(cores_of(others, wall), std::memory_order_relaxed);
  }
  g_sys_last = cur;
}

// The cores other threads of the process and other processes are using (rounded), sampled at
// most every kProbeNs per worker.
// est_ns: the calling loop's estimated serial time. A stale sample costs a scan of the
// process's threads (runnable_foreign) only for loops long enough to repay it.
constexpr double kScanWorthNs = 1e6;
const bool g_scan_on = env_switch_on("LAYERPROP_RUNNABLE_SCAN");  // "0": off (measurements)
std::atomic<bool> g_scan_pending{false};  // a stale sample was restarted by a short loop

// The scan's answer becomes the estimate until the next sample (called with g_probing held).
void scan_runnable() {
  const int r = runnable_foreign();
  g_runnable_checks.fetch_add(1, std::memory_order_relaxed);
  if (r > 0) g_runnable_busy.fetch_add(1, std::memory_order_relaxed);
  g_foreign_cores.store(r > 0 ? r : 0, std::memory_order_relaxed);
}

int foreign_cores(int64_t now, double est_ns) {
  if (!g_probe_on.load(std::memory_order_relaxed)) return 0;
  if (now < g_probe_next_ns.load(std::memory_order_relaxed)) {
    // The first long loop after a restart by a short one does the scan that restart skipped.
    if (est_ns >= kScanWorthNs && g_scan_on && g_scan_pending.load(std::memory_order_relaxed) &&
        !g_probing.exchange(true, std::memory_order_acquire)) {
      if (g_scan_pending.exchange(false, std::memory_order_relaxed)) scan_runnable();
      g_probing.store(false, std::memory_order_release);
    }
    return g_foreign_cores.load(std::memory_order_relaxed);
  }
  if (g_probing.exchange(true, std::memory_order_acquire)) return g_foreign_cores.load(std::memory_order_relaxed);
  ProbeSample cur;
  cur.wall = now;
  cur.process = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
  const int nw = g_worker_slots.load();
  const int slots = std::min(nw, kMaxProbedWorkers);
  for (int i = 0; i < slots; ++i) {
    const clockid_t c = g_worker_clock[i].load();
    const int64_t t = c != 0 ? cpu_ns(c) : -1;
    if (t > 0) cur.workers += t;
  }
  const int64_t mine = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
  // A sample spans the time since the previous one. When that is much longer than the
  // interval, layerprop ran no parallel loop meanwhile, and the other threads' work it saw (a
  // peer timed between our calls, the user's own code) may be long over: start again. Until
  // the next sample, the other threads that are runnable at this moment count as busy cores:
  // a pool's workers that spin after its call (NumPy's OpenBLAS busy-waits about 100 ms) still
  // hold their cores; work that is over does not count. Measured, M's step with a NumPy and a
  // torch call between steps (each ~10 ms, so samples were often stale): assuming nothing
  // busy ran 16% of its 2-thread steps on both cores, contested, and the step at 0.88-0.97x its
  // 1-thread time. A short loop assumes nothing busy, as before, and leaves the scan (some
  // 5 us per thread) to the first long loop: a sporadic small call (predict at batch 1) would
  // pay more for it than for a contested core. Otherwise, deltas only when this thread also
  // took the previous sample (its own CPU time is then known).
  const int64_t interval = kProbeNs * (nw > 1 ? nw : 1);
  if (cur.wall - g_last.wall > interval * 3 / 2) {
    const bool scan = est_ns >= kScanWorthNs && g_scan_on;
    g_scan_pending.store(!scan, std::memory_order_relaxed);
    if (scan) scan_runnable();
    else g_foreign_cores.store(0, std::memory_order_relaxed);
    g_sys_last = SystemSample{now, system_busy_ns(), cur.process};
    g_other_procs.store(0, std::memory_order_relaxed);
  } else if (tl_probe_epoch == g_last.epoch && g_last.process >= 0 && cur.process >= 0 && mine >= 0) {
    const int64_t wall = cur.wall - g_last.wall;
    const int64_t foreign = (cur.process - g_last.process) - (cur.workers - g_last.workers) - (mine - tl_probe_cpu);
    probe_system(now, cur.process);
    g_scan_pending.store(false, std::memory_order_relaxed);  // measured: no scan needed
    const int all = cores_of(foreign, wall) + g_other_procs.load(std::memory_order_relaxed);
    g_foreign_cores.store(all, std::memory_order_relaxed);
    g_foreign_samples.fetch_add(1, std::memory_order_relaxed);
    if (all > 0) g_foreign_busy_samples.fetch_add(1, std::memory_order_relaxed);
  }
  cur.epoch = g_probe_epoch.fetch_add(1, std::memory_order_relaxed) + 1;
  g_last = cur;
  tl_probe_epoch = cur.epoch;
  tl_probe_cpu = mine;
  g_probe_next_ns.store(now + interval, std::memory_order_relaxed);
  g_probing.store(false, std::memory_order_release);
  return g_foreign_cores.load(std::memory_order_relaxed);
}
}  // namespace

void set_foreign_probe(bool on) {
  g_probe_on.store(on);
  if (!on) {
    g_foreign_cores.store(0);
    g_other_procs.store(0);
  }
}

// ---- Short loops leave sleeping workers asleep ---------------------------------------------
// The thresholds are measured with warm workers, spinning for the next job. A worker that has
// gone to sleep (no job for LAYERPROP_SPIN_US) takes tens of microseconds to wake: a futex
// call, and on a virtual machine the wake of an idle virtual CPU. Measured, predict on M at
// batch 1 after a 1 ms pause: 50-87 us on 1 thread, 70-108 us on 2. So while every worker
// sleeps, a loop whose serial time is estimated under kWakeWorthNs runs on the caller, and the
// workers are woken to spin for the loops that follow (prewarm): a stream of short loops (a
// Python loop of batch-1 predicts) gets its threads from the second loop on, and an isolated
// call pays only the wake's system call. The estimate is units times a rough cost per unit of
// each kind (the serial timings of `layerprop calibrate` on the reference machine, at its
// largest sizes).
namespace {
constexpr int64_t kWakeWorthNs = 50000;
constexpr double g_ns_per_unit[static_cast<int>(Work::Count)] = {
    0.022,  // Gemm
    0.037,  // GemmSmall
    0.08,   // EltCheap
    9.6,    // EltCostly
    0.52,   // Loss
    0.05,   // Optim
    0.5,    // Sparse
};
std::atomic<bool> g_keep_asleep{true};
}  // namespace
bool workers_asleep();   // the pool's (below)
void prewarm_workers();  // wakes them to spin for the next loop (below)
void set_keep_workers_asleep(bool on) { g_keep_asleep.store(on, std::memory_order_relaxed); }

namespace {
thread_local int tl_cap = 0;  // ThreadCap: at most this many threads for this thread's loops (0: none)
std::atomic<int64_t> g_step_probes{0}, g_serial_steps{0}, g_serial_switches{0};
}  // namespace

ThreadCap::ThreadCap(int cap) : saved_(tl_cap) { tl_cap = cap; }
ThreadCap::~ThreadCap() { tl_cap = saved_; }

void StepGovernor::reset(int threads) {
  *this = StepGovernor();
  threads_ = threads;
}

namespace {
std::atomic<bool> g_governor_on{env_switch_on("LAYERPROP_STEP_GOVERNOR")};  // "0": the steps keep their threads
}  // namespace
void set_step_governor(bool on) { g_governor_on.store(on, std::memory_order_relaxed); }

int StepGovernor::next_cap() {
  const int threads = g_governor_on.load(std::memory_order_relaxed) ? get_num_threads() : 1;
  if (threads != threads_) reset(threads);
  if (threads <= 1) return -1;  // nothing to govern: the step need not even be timed
  return (serial_ != (probing_ > 0)) ? 1 : 0;  // serial: 1 thread, except a probe; else the reverse
}

namespace {
double median_of(const double* v, int n) {
  double tmp[StepGovernor::kWindow > StepGovernor::kProbeRun ? StepGovernor::kWindow : StepGovernor::kProbeRun];
  std::copy(v, v + n, tmp);
  std::nth_element(tmp, tmp + n / 2, tmp + n);
  return tmp[n / 2];
}
}  // namespace

void StepGovernor::record(int64_t ticks, int64_t rows) {
  if (threads_ <= 1 || rows <= 0 || ticks <= 0) return;
  const double per_row = double(ticks) / double(rows);
  if (probing_ == 0) {  // a step at the current setting
    window_[steps_ % kWindow] = per_row;
    ++steps_;
    if (serial_) g_serial_steps.fetch_add(1, std::memory_order_relaxed);
    if (steps_ >= next_probe_ && steps_ >= kWindow) probing_ = 1;  // the next steps probe
    return;
  }
  probe_[probing_ - 1] = per_row;
  if (++probing_ <= kProbeRun) return;
  probing_ = 0;
  g_step_probes.fetch_add(1, std::memory_order_relaxed);
  const double other = median_of(probe_ + (kProbeRun - kProbeKept), kProbeKept);
  const double current = median_of(window_, static_cast<int>(std::min<int64_t>(steps_, kWindow)));
  if (other <= 0.95 * current) {
    if (++agree_ >= 2) {  // the other setting won twice in a row: take it
      serial_ = !serial_;
      if (serial_) g_serial_switches.fetch_add(1, std::memory_order_relaxed);
      agree_ = 0;
      steps_ = 0;
      interval_ = 64;
      next_probe_ = 32;
      return;
    }
    next_probe_ = steps_ + 16;  // confirm soon
    return;
  }
  agree_ = 0;
  // Probes cost a few steps at the slower setting. At the threads, the further 1 thread is
  // behind, the rarer they get (M at 2 threads runs 1.9x faster than at 1: probes 4x further
  // apart each time, up to 4096 steps). At 1 thread they stay at most 1024 steps apart, so the
  // steps find their threads again soon after the host lets them pay.
  const bool far = !serial_ && other >= 1.5 * current;
  interval_ = std::min<int64_t>(interval_ * (far ? 4 : 2), far ? 4096 : 1024);
  next_probe_ = steps_ + interval_;
}

int threads_for(Work w, int64_t units) {
  if (tl_in_job || tl_cap == 1) return 1;
  int64_t per = work_threshold(w);
  if (units < per) return 1;

  if (g_shared_until_ns.load(std::memory_order_relaxed) > now_ns()) {
    if (per > INT64_MAX / kSharedFactor || units < per * kSharedFactor) return 1;
    per *= kSharedFactor / 2;  // two threads from kSharedFactor thresholds' worth
  }
  int nt = get_num_threads();  // 1 in a child forked after the pool started
  if (nt <= 1) return 1;
  nt -= foreign_cores(now_ns(), double(units) * g_ns_per_unit[static_cast<int>(w)]);
  if (nt <= 1) return 1;
  const int64_t want = units / per;
  if (want < 2) return 1;
  if (double(units) * g_ns_per_unit[static_cast<int>(w)] < double(kWakeWorthNs) &&
      g_keep_asleep.load(std::memory_order_relaxed) && workers_asleep()) {
    prewarm_workers();  // (at most once a millisecond: see Pool::prewarm)
    return 1;
  }
  if (tl_cap > 1 && nt > tl_cap) nt = tl_cap;
  return want < nt ? static_cast<int>(want) : nt;
}

// ---- The pool -------------------------------------------------------------------------------
// One job at a time. The caller publishes the job (function, context, item count) and a new
// epoch in `ticket_` = epoch << 32 | next item; every thread, the caller included, claims items
// by compare-and-swap on that word, so a claim can only succeed for the epoch it read, and the
// job's description is read while its epoch is live. `done_` counts finished items; the caller
// returns when it reaches n. A worker spins (bounded: spin_us) for the next epoch, then sleeps
// on a condition variable; `sleepers_` tells the caller whether a notify is needed.
// Workers are started on first use, never stopped (the pool is never destroyed: a worker may
// still be spinning while the process exits). A second thread calling while a job runs (two
// models trained from two Python threads) runs its items inline instead of waiting.
// fork(): the child has none of the workers; it runs everything serially (forked_after_pool).
namespace {

int default_spin_us() {
  if (const char* env = std::getenv("LAYERPROP_SPIN_US")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && v >= 0 && v <= 1000000) return static_cast<int>(v);
  }
  return 100;
}

std::atomic<bool> g_pool_started{false};
std::atomic<bool> g_forked_after_pool{false};
void on_fork_child() {
  if (g_pool_started.load(std::memory_order_relaxed)) g_forked_after_pool.store(true);
}
const bool g_atfork_registered = [] { return pthread_atfork(nullptr, nullptr, on_fork_child) == 0; }();

constexpr uint64_t kPreparing = 0xffffffffu;  // item index while the next job is written
// A stall: the caller waited longer than 4 of its own items plus this slack.
constexpr int64_t kStallSlackNs = 200'000;
// A spinning worker that sees more than kPreemptedNs between two looks at the clock (256
// pauses, a few microseconds) was descheduled: it stops spinning for kCalmNs.
constexpr int64_t kPreemptedNs = 50'000;
constexpr int64_t kCalmNs = 50'000'000;


// Every item on the calling thread, nested loops serial; as on the pool, an exception does not
// stop the other items: the first is rethrown once all have run.
void run_all_inline(int64_t n, ItemFn fn, void* ctx) {
  const bool outer = tl_in_job;
  tl_in_job = true;
  struct Restore {
    bool v;
    ~Restore() { tl_in_job = v; }
  } restore{outer};
  std::exception_ptr first;
  for (int64_t i = 0; i < n; ++i) {
    try {
      fn(ctx, i);
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

class Pool {
 public:
  void run(int64_t n, int nt, ItemFn fn, void* ctx) {
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
      run_all_inline(n, fn, ctx);  // another thread's job holds the pool
      return;
    }
    struct Release {
      std::atomic<bool>& b;
      ~Release() { b.store(false, std::memory_order_release); }
    } release{busy_};
    const int helpers = static_cast<int>(std::min<int64_t>(nt - 1, n - 1));
    const int64_t now = now_ns();
    if (!grow(helpers)) {
      run_all_inline(n, fn, ctx);
      return;
    }
    // Close the last epoch first: from here no claim of an older job can succeed, so nobody
    // runs an item of the old job with the new job's description.
    const uint64_t epoch = ((ticket_.load(std::memory_order_relaxed) >> 32) + 1) & 0xffffffffu;
    ticket_.store((epoch << 32) | kPreparing, std::memory_order_seq_cst);
    fn_.store(fn, std::memory_order_relaxed);
    ctx_.store(ctx, std::memory_order_relaxed);
    n_.store(n, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    error_flag_.store(false, std::memory_order_relaxed);
    seats_.store((epoch << 32) | static_cast<uint64_t>(helpers), std::memory_order_relaxed);
    ticket_.store(epoch << 32, std::memory_order_seq_cst);
    wake_sleepers(helpers, false);
    jobs_.fetch_add(1, std::memory_order_relaxed);
    tl_in_job = true;
    const int64_t mine = work(epoch, false);
    // Only items another thread has claimed and is computing remain.
    if (done_.load(std::memory_order_acquire) < n) {
      const int64_t w0 = now_ns();
      for (int spins = 0; done_.load(std::memory_order_acquire) < n; ++spins) {
        if (spins < 4096) cpu_relax();
        else std::this_thread::yield();
      }
      const int64_t waited = now_ns() - w0;
      wait_ns_.fetch_add(waited, std::memory_order_relaxed);
      waits_.fetch_add(1, std::memory_order_relaxed);
      // A wait much longer than one of our own items: the worker was descheduled in the
      // middle of one (another process, or another library's spinning threads, holds the
      // cores). Counted for pool_stats. (Backing off to inline jobs for a while after such a
      // stall was measured: it lost more in quiet runs than it saved in shared ones.)
      const int64_t per_item = mine > 0 ? (w0 - now) / mine : 0;
      if (waited > 4 * per_item + kStallSlackNs) stalls_.fetch_add(1, std::memory_order_relaxed);
    }
    tl_in_job = false;
    if (error_flag_.load(std::memory_order_acquire)) {
      std::exception_ptr e;
      {
        std::lock_guard<std::mutex> lk(m_);
        std::swap(e, error_);
      }
      if (e) std::rethrow_exception(e);
    }
  }

  // Every started worker sleeps (none spins for the next job).
  bool asleep() const {
    const int n = started_.load(std::memory_order_relaxed);
    return n > 0 && sleepers_.load(std::memory_order_relaxed) >= n;
  }

  // Wake the sleeping workers without a job: they spin for the next one (spin_us), kept off
  // this thread's CPU as for a job. At most once a millisecond (workers asleep again soon after
  // one did not stay to spin: calm after a preemption, or spin time 0), and not while another
  // thread's job holds the pool.
  void prewarm() {
    // A forked child has none of the workers: their thread ids are the parent's.
    if (forked_after_pool()) return;
    const int64_t now = now_ns();
    if (now - last_prewarm_ns_.load(std::memory_order_relaxed) < kPrewarmGapNs) return;
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true, std::memory_order_acquire)) return;
    last_prewarm_ns_.store(now, std::memory_order_relaxed);
    if (wake_sleepers(started_.load(std::memory_order_relaxed), true)) prewarms_.fetch_add(1, std::memory_order_relaxed);
    busy_.store(false, std::memory_order_release);
  }

  PoolStats stats() {
    PoolStats s;
    s.workers = started_.load();
    s.jobs = jobs_.load();
    s.items_by_workers = worker_items_.load();
    s.spin_us = spin_us_.load();
    s.wait_ns = wait_ns_.load();
    s.waits = waits_.load();
    s.stalls = stalls_.load();
    s.preempted_spins = preempted_.load();
    s.moves = moves_.load();
    s.prewarms = prewarms_.load();
    s.foreign_samples = g_foreign_samples.load();
    s.foreign_busy_samples = g_foreign_busy_samples.load();
    s.runnable_checks = g_runnable_checks.load();
    s.runnable_busy = g_runnable_busy.load();
    s.step_probes = g_step_probes.load();
    s.serial_steps = g_serial_steps.load();
    s.serial_switches = g_serial_switches.load();
    return s;
  }
  void set_spin(int us) { spin_us_.store(us < 0 ? 0 : us); }

 private:

  // Start workers up to `helpers` (called with busy_ held). False if none can be started.
  bool grow(int helpers) {
    while (started_.load(std::memory_order_relaxed) < helpers) {
      g_pool_started.store(true);
      try {
        std::thread(&Pool::worker_main, this, ticket_.load(std::memory_order_relaxed) >> 32).detach();
      } catch (...) {
        break;  // no more threads: the ones started do the work
      }
      started_.fetch_add(1, std::memory_order_relaxed);
    }
    return started_.load(std::memory_order_relaxed) > 0;
  }

  // Claim and run items of `epoch` until none is left; returns how many this thread ran.
  int64_t work(uint64_t epoch, bool worker) {
    int64_t ran = 0;
    uint64_t t = ticket_.load(std::memory_order_acquire);
    if ((t >> 32) != epoch || (t & 0xffffffffu) == kPreparing) return 0;
    // The job's description, read after its epoch was seen live. If the caller has moved on
    // meanwhile, these may belong to a later job, but then every claim below fails.
    const ItemFn fn = fn_.load(std::memory_order_relaxed);
    void* const ctx = ctx_.load(std::memory_order_relaxed);
    const uint64_t n = static_cast<uint64_t>(n_.load(std::memory_order_relaxed));
    for (;;) {
      if ((t >> 32) != epoch || (t & 0xffffffffu) >= n) return ran;
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      ++ran;
      try {
        fn(ctx, static_cast<int64_t>(t & 0xffffffffu));
      } catch (...) {
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::current_exception();
        error_flag_.store(true, std::memory_order_release);
      }
      if (worker) worker_items_.fetch_add(1, std::memory_order_relaxed);
      done_.fetch_add(1, std::memory_order_acq_rel);
      t = ticket_.load(std::memory_order_acquire);
    }
  }

  // Wakes the sleeping workers (called with busy_ held), first keeping up to `helpers` of them
  // off this thread's CPU. For a job they find it in ticket_; `ahead` (no job yet) bumps
  // wake_gen_ so that they leave their wait anyway and spin. False if none slept.
  bool wake_sleepers(int helpers, bool ahead) {
    if (sleepers_.load(std::memory_order_seq_cst) == 0) return false;
    keep_off_my_cpu(helpers);
    std::lock_guard<std::mutex> lk(m_);
    if (ahead) wake_gen_.fetch_add(1, std::memory_order_relaxed);
    cv_.notify_all();
    return true;
  }

  // Before waking sleeping workers: each of them may not run on the caller's CPU until its
  // job is done (then its own affinity is given back, restore_home). Linux places a thread it
  // wakes next to its waker when that looks cache-friendly; until the load balancer separates
  // them (a tick or more: 4 ms here) caller and worker share one core while the other idles.
  // Measured on 2 cores, predict on M b256 with a 20 ms pause before each call: 4.8 ms on 2
  // threads against 4.4 ms on 1; with the threads pinned apart, 2.5 ms.
  void keep_off_my_cpu(int helpers) {
    static const bool on = env_switch_on("LAYERPROP_KEEP_OFF_CALLER");  // "0": never narrow
    if (!on) return;
    const int cpu = sched_getcpu();
    if (cpu < 0) return;
    // Two system calls per worker on the caller's path: at most kMaxNarrowed workers (on a
    // large machine the scheduler usually finds the others an idle CPU of their own).
    const int n = std::min({helpers, started_.load(std::memory_order_relaxed), kMaxNarrowed});
    for (int i = 0; i < n; ++i) {
      Home& h = homes_[i];
      const pid_t tid = h.tid.load(std::memory_order_acquire);
      if (tid == 0 || h.narrowed.load(std::memory_order_acquire)) continue;
      cpu_set_t m;
      if (sched_getaffinity(tid, sizeof(m), &m) != 0 || !CPU_ISSET(cpu, &m) || CPU_COUNT(&m) < 2) continue;
      h.mask = m;
      CPU_CLR(cpu, &m);
      if (sched_setaffinity(tid, sizeof(m), &m) == 0) {
        h.narrowed.store(true, std::memory_order_release);
        moves_.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  // The worker's own affinity back, as it was before keep_off_my_cpu narrowed it.
  void restore_home(int slot) {
    if (slot >= kMaxHomes) return;
    Home& h = homes_[slot];
    if (!h.narrowed.load(std::memory_order_acquire)) return;
    sched_setaffinity(0, sizeof(h.mask), &h.mask);
    h.narrowed.store(false, std::memory_order_release);
  }

  // A seat in `epoch`'s job: at most nt - 1 workers take part.
  bool take_seat(uint64_t epoch) {
    uint64_t s = seats_.load(std::memory_order_acquire);
    for (;;) {
      if ((s >> 32) != epoch || (s & 0xffffffffu) == 0) return false;
      if (seats_.compare_exchange_weak(s, s - 1, std::memory_order_acq_rel, std::memory_order_acquire)) return true;
    }
  }

  void worker_main(uint64_t seen) {
    tl_in_job = true;  // kernels called from an item run serially
#if defined(__linux__)
    // Named, so that top -H, a profiler or /proc/<pid>/task/*/comm tells layerprop's workers
    // from other pools' threads (the scenario benchmark counts their CPU time apart).
    pthread_setname_np(pthread_self(), "layerprop-pool");
#endif
    register_worker_clock();
    const int slot = slots_.fetch_add(1);
    if (slot < kMaxHomes) homes_[slot].tid.store(static_cast<pid_t>(syscall(SYS_gettid)), std::memory_order_release);
    auto idle = [&](uint64_t t) { return (t >> 32) == seen || (t & 0xffffffffu) == kPreparing; };
    int64_t calm_after_ns = 0;  // until then, no spinning (see below)
    for (;;) {
      uint64_t t = ticket_.load(std::memory_order_acquire);
      if (idle(t)) {
        // Spin for the next job, bounded, then sleep. A spin that finds itself descheduled
        // (a gap between two looks at the clock) means other threads want these cores: this
        // worker then sleeps at once after its jobs for a while, instead of taking CPU time
        // from them and from its own caller.
        int64_t last = now_ns();
        const int64_t limit = last < calm_after_ns ? last : last + int64_t(spin_us_.load()) * 1000;
        int k = 0;
        while (idle(t) && limit > last) {
          cpu_relax();
          if ((++k & 255) == 0) {
            const int64_t now = now_ns();
            if (now - last > kPreemptedNs) {
              calm_after_ns = now + kCalmNs;
              g_shared_until_ns.store(calm_after_ns, std::memory_order_relaxed);
              preempted_.fetch_add(1, std::memory_order_relaxed);
              break;
            }
            last = now;
            if (now >= limit) break;
          }
          t = ticket_.load(std::memory_order_acquire);
        }
        if (idle(t)) {
          std::unique_lock<std::mutex> lk(m_);
          const uint64_t gen = wake_gen_.load(std::memory_order_relaxed);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          while (idle(t = ticket_.load(std::memory_order_seq_cst)) && wake_gen_.load(std::memory_order_relaxed) == gen)
            cv_.wait(lk);
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
        if (idle(t)) {  // woken ahead of a job (prewarm): spin for it
          restore_home(slot);
          continue;
        }
      }
      seen = t >> 32;
      if (take_seat(seen)) work(seen, true);
      restore_home(slot);
    }
  }

  std::atomic<bool> busy_{false};
  std::atomic<uint64_t> ticket_{0};
  std::atomic<uint64_t> seats_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<ItemFn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<int> started_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int> spin_us_{default_spin_us()};
  std::atomic<int64_t> jobs_{0};
  std::atomic<int64_t> worker_items_{0};
  std::atomic<int64_t> wait_ns_{0};
  std::atomic<int64_t> waits_{0};
  std::atomic<int64_t> stalls_{0};
  std::atomic<int64_t> preempted_{0};
  std::atomic<int64_t> moves_{0};
  std::atomic<int64_t> prewarms_{0};
  std::atomic<int64_t> last_prewarm_ns_{INT64_MIN / 2};
  static constexpr int64_t kPrewarmGapNs = 1000000;
  std::atomic<uint64_t> wake_gen_{0};  // bumped (under m_) to wake sleepers without a job
  // Workers' thread ids and the affinity keep_off_my_cpu took from them.
  static constexpr int kMaxHomes = 64;
  static constexpr int kMaxNarrowed = 4;
  struct Home {
    std::atomic<pid_t> tid{0};
    std::atomic<bool> narrowed{false};
    cpu_set_t mask;
  };
  Home homes_[kMaxHomes];
  std::atomic<int> slots_{0};

  std::atomic<bool> error_flag_{false};
  std::exception_ptr error_;
  std::mutex m_;
  std::condition_variable cv_;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: see above
  return *p;
}

}  // namespace

void run_items(int64_t n, int nt, ItemFn fn, void* ctx) {
  if (n <= 0) return;
  if (nt <= 1 || n == 1 || tl_in_job || forked_after_pool() || n >= int64_t(0xffffffff)) {
    run_all_inline(n, fn, ctx);
    return;
  }
  pool().run(n, nt, fn, ctx);
}

PoolStats pool_stats() { return pool().stats(); }
bool workers_asleep() { return pool().asleep(); }
void prewarm_workers() { pool().prewarm(); }
void set_spin_us(int us) { pool().set_spin(us); }

bool forked_after_pool() { return g_forked_after_pool.load(std::memory_order_relaxed); }

int64_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || size <= 0) return 0;
  return static_cast<int64_t>(pages) * static_cast<int64_t>(size);
}

void check_allocation(int64_t bytes, const std::string& what) {
  const int64_t phys = physical_memory_bytes();
  if (bytes < 0 || (phys > 0 && bytes > phys))
    throw MemoryError(what + ": needs " + std::to_string(bytes) + " bytes, more than this machine's " +
                      std::to_string(phys) + " bytes of memory");
}

bool have_openmp() {
#ifdef LAYERPROP_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

void set_num_threads(int n) { thread_setting().store(n < 1 ? 1 : n); }

#ifdef LAYERPROP_HAVE_OPENMP
// OpenMP's limit as the process started (OMP_NUM_THREADS or the cores): a limit equal to it is
// no limit; it only seeds our default (default_threads).
static const int g_omp_initial = omp_get_max_threads();
#endif

// Our own setting, capped by the calling thread's OpenMP limit when something changed that
// limit at run time (threadpoolctl, torch.set_num_threads, omp_set_num_threads in another
// library): such a limit is honoured. OMP_NUM_THREADS itself is only the default.
int get_num_threads() {
  if (forked_after_pool()) return 1;
  const int own = thread_setting().load();
#ifdef LAYERPROP_HAVE_OPENMP
  const int omp = omp_get_max_threads();
  if (omp != g_omp_initial && omp < own) return omp;
#endif
  return own;
}

}  // namespace lp
