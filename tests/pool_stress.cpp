// The pool under ThreadSanitizer (tests/test_pool.py builds and runs this with
// -fsanitize=thread): three threads call parallel_for 3,000 times each at once, on 3 threads,
// with items that yield and, now and then, throw, while the spin time changes and short loops
// wake sleeping workers ahead of their jobs. Every item must
// run exactly once per call, an exception must reach its caller, and TSan must report nothing.
#include <atomic>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>
#include "layerprop/runtime.hpp"
int main() {
  lp::set_num_threads(3);
  std::atomic<long> bad{0};
  auto worker = [&](int seed) {
    std::mt19937 rng(seed);
    for (int it = 0; it < 3000; ++it) {
      const int64_t n = 1 + rng() % 64;
      std::vector<int> hits(n, 0);  // plain ints: each item writes its own slot once
      const int64_t throw_at = (rng() % 50 == 0) ? int64_t(rng() % n) : -1;
      try {
        lp::parallel_for(n, 3, [&](int64_t i) {
          hits[i] += 1;
          if (i == throw_at) throw std::runtime_error("x");
          if (i % 7 == 0) std::this_thread::yield();
        });
      } catch (const std::runtime_error&) {
        if (throw_at < 0) bad++;
      }
      for (int64_t i = 0; i < n; ++i) if (hits[i] != 1) bad++;
      if (it % 500 == 0) lp::set_spin_us(it % 1000 == 0 ? 0 : 50);
      // A short loop's thread count: while the workers sleep this wakes them ahead (prewarm),
      // racing the other threads' jobs.
      if (it % 3 == 0) (void)lp::threads_for(lp::Work::GemmSmall, 40000);
    }
  };
  std::vector<std::thread> ts;
  for (int k = 0; k < 3; ++k) ts.emplace_back(worker, k);
  for (auto& t : ts) t.join();
  std::printf("bad=%ld jobs=%ld worker_items=%ld\n", bad.load(), (long)lp::pool_stats().jobs, (long)lp::pool_stats().items_by_workers);
  return bad != 0;
}
