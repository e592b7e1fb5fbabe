// mproc/executor.hpp — concurrent.futures for C++.
//
//   mproc::ProcessPoolExecutor ex({.max_workers = 4});   // or ThreadPoolExecutor: one word
//   mproc::Future<int> f = ex.submit(square, 7);
//   int v = f.get();                                        // f.result() in Python
//   for (int r : ex.map(square, xs, 5s)) ...                // TimeoutError past 5 s from the call
//   std::vector<mproc::Future<int>> fs;
//   for (int x : xs) fs.push_back(ex.submit(square, x));
//   for (auto& done : mproc::as_completed(fs)) use(done.get());
//   auto [done, not_done] = mproc::wait(fs, 1s, mproc::FIRST_EXCEPTION);
//
// ProcessPoolExecutor runs on mproc::Pool (crash-proof worker processes),
// ThreadPoolExecutor on mproc::ThreadPool; both return the same Future<T>.
// Differences between the two are those of Pool and ThreadPool: a process task
// must be sendable and its exception comes back as TaskError, a thread task may be
// any callable and its exception comes back as itself (docs/executor.md).
//
// The headers: mproc/futures.hpp (Future, as_completed, wait, ExecutorOptions),
// mproc/thread_executor.hpp (ThreadPoolExecutor: all a program that uses only
// threads needs; it compiles neither mproc::Pool nor the serializer) and
// mproc/process_executor.hpp (ProcessPoolExecutor, over mproc/pool.hpp). This
// one includes both executors.
#pragma once

#include "mproc/detail/config.hpp"

#include "mproc/futures.hpp"
#include "mproc/process_executor.hpp"
#include "mproc/thread_executor.hpp"
