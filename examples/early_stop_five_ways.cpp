// early_stop_five_ways — High Performance Python's comparison (chapter 9,
// "verifying primes using interprocess communication"): one composite n checked
// by every worker over its own slice of divisors; the worker that finds the factor
// raises a shared flag and the others stop at their next look. The flag lives in
// five places, as in the book:
//   Event          mproc::Event (a futex word in shared memory)
//   RawValue       mproc::RawValue<int> (a plain shared int, no lock)
//   Manager Value  a manager ValueProxy<int>: every look is a round trip to the server
//   mmap file      an int in a file mapped MAP_SHARED by every worker
//   Redis          a key in a real redis-server, started here on a Unix socket in
//                  a temporary directory and stopped at the end (client: hiredis)
// and once with no flag (everyone finishes its slice). The table gives the run's
// time, the divisions done, and what one look at the flag costs.
//
//   early_stop_five_ways [--workers=cpu_count] [--digits=16] [--check-every=4096]
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#if MPROC_HAVE_HIREDIS
#include <hiredis/hiredis.h>
#endif

#include <mproc/manager.hpp>
#include <mproc/mproc.hpp>

#include "common.hpp"
#include "primes.hpp"

extern char** environ;

namespace {

enum Method : int { kEvent, kRaw, kManager, kMmap, kRedis, kNone };
const char* const kNames[] = {"Event", "RawValue", "Manager Value", "mmap file", "Redis", "no flag"};

/// One worker's view of the flag, whatever holds it.
class Flag {
 public:
  Flag(int method, mproc::Event ev, mproc::RawValue<int> raw, mproc::ValueProxy<int> mv, const std::string& file,
       const std::string& redis)
      : method_(method), ev_(std::move(ev)), raw_(std::move(raw)), mv_(std::move(mv)) {
    if (method == kMmap) {
      int fd = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
      void* p = ::mmap(nullptr, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      ::close(fd);
      word_ = p == MAP_FAILED ? nullptr : static_cast<int*>(p);
    }
#if MPROC_HAVE_HIREDIS
    if (method == kRedis) redis_ = redisConnectUnix(redis.c_str());
#else
    (void)redis;
#endif
  }
  Flag(const Flag&) = delete;
  Flag& operator=(const Flag&) = delete;
  ~Flag() {
    if (word_) ::munmap(word_, sizeof(int));
#if MPROC_HAVE_HIREDIS
    if (redis_) redisFree(redis_);
#endif
  }

  bool is_set() {
    switch (method_) {
      case kEvent: return ev_.is_set();
      case kRaw: return raw_.get() != 0;
      case kManager: return mv_.get() != 0;
      case kMmap: return word_ && std::atomic_ref<int>(*word_).load(std::memory_order_relaxed) != 0;
#if MPROC_HAVE_HIREDIS
      case kRedis: {
        auto* r = static_cast<redisReply*>(redisCommand(redis_, "GET flag"));
        bool set = r && r->type == REDIS_REPLY_STRING;
        if (r) freeReplyObject(r);
        return set;
      }
#endif
      default: return false;
    }
  }
  void set() {
    switch (method_) {
      case kEvent: ev_.set(); break;
      case kRaw: raw_.set(1); break;
      case kManager: mv_.set(1); break;
      case kMmap:
        if (word_) std::atomic_ref<int>(*word_).store(1, std::memory_order_relaxed);
        break;
#if MPROC_HAVE_HIREDIS
      case kRedis:
        if (auto* r = static_cast<redisReply*>(redisCommand(redis_, "SET flag 1"))) freeReplyObject(r);
        break;
#endif
      default: break;
    }
  }

 private:
  int method_;
  mproc::Event ev_;
  mproc::RawValue<int> raw_;
  mproc::ValueProxy<int> mv_;
  int* word_ = nullptr;
#if MPROC_HAVE_HIREDIS
  redisContext* redis_ = nullptr;
#endif
};

void search(int method, int id, std::uint64_t n, std::uint64_t lo, std::uint64_t hi, std::uint64_t check_every,
            mproc::Event ev, mproc::RawValue<int> raw, mproc::ValueProxy<int> mv, std::string file,
            std::string redis, mproc::RawArray<std::int64_t> work, mproc::Barrier start) {
  Flag flag(method, ev, raw, mv, file, redis);
  // Every worker starts dividing at the same moment. Without this, a worker whose
  // process came up late (a loaded machine, a sanitizer build) could find the other
  // one already through its whole slice, and that run would show no early stop.
  start.wait_for(std::chrono::seconds(60));
  std::uint64_t tried = 0;
  for (std::uint64_t d = lo | 1; d < hi; d += 2) {
    if (method != kNone && tried % check_every == 0 && flag.is_set()) break;
    ++tried;
    if (n % d == 0) {
      flag.set();
      break;
    }
  }
  work[static_cast<std::size_t>(id)] = static_cast<std::int64_t>(tried);
}

/// A redis-server on a Unix socket in its own temporary directory.
class Redis {
 public:
  Redis() {
#if MPROC_HAVE_HIREDIS
    char tmpl[] = "/tmp/mproc-redis-XXXXXX";
    if (!::mkdtemp(tmpl)) return;
    dir_ = tmpl;
    sock_ = dir_ + "/redis.sock";
    std::vector<std::string> args = {"redis-server", "--port", "0", "--unixsocket", sock_, "--unixsocketperm", "700",
                                     "--save", "", "--appendonly", "no", "--dir", dir_, "--logfile", dir_ + "/log"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (::posix_spawnp(&pid_, "redis-server", nullptr, nullptr, argv.data(), environ) != 0) {
      pid_ = -1;
      return;
    }
    // Ready when it answers PING (at most 10 s).
    for (int i = 0; i < 2000 && !ready_; ++i) {
      if (redisContext* c = redisConnectUnix(sock_.c_str()); c && !c->err) {
        if (auto* r = static_cast<redisReply*>(redisCommand(c, "PING"))) {
          ready_ = r->type == REDIS_REPLY_STATUS;
          freeReplyObject(r);
        }
        redisFree(c);
      } else if (c) {
        redisFree(c);
      }
      if (!ready_) ::usleep(5000);
    }
#endif
  }
  ~Redis() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  bool ready() const { return ready_; }
  const std::string& socket() const { return sock_; }
  void clear_flag() const {
#if MPROC_HAVE_HIREDIS
    if (redisContext* c = redisConnectUnix(sock_.c_str())) {
      if (auto* r = static_cast<redisReply*>(redisCommand(c, "DEL flag"))) freeReplyObject(r);
      redisFree(c);
    }
#endif
  }

 private:
  std::string dir_, sock_;
  pid_t pid_ = -1;
  bool ready_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int workers = std::max(2, static_cast<int>(flags.get("workers", mproc::cpu_count(), "worker processes")));
  int digits = static_cast<int>(flags.get("digits", 16, "size of n (at most 18)"));
  auto check_every = static_cast<std::uint64_t>(flags.get("check-every", 4096, "divisions between flag looks"));
  flags.check();

  // A composite p·q whose smallest factor p sits a quarter into the last worker's slice.
  auto target = static_cast<std::uint64_t>(std::pow(10.0, digits));
  std::uint64_t s = examples::isqrt(target);
  double f = (workers - 1 + 0.25) / workers;
  std::uint64_t p = examples::next_prime(static_cast<std::uint64_t>(f * static_cast<double>(s)));
  std::uint64_t q = examples::next_prime(static_cast<std::uint64_t>(static_cast<double>(p) / (f * f)));
  std::uint64_t n = p * q;
  std::uint64_t limit = examples::isqrt(n) + 1;

  mproc::Manager manager;
  Redis redis;
  std::string file = (std::filesystem::temp_directory_path() / ("mproc-flag-" + std::to_string(::getpid()))).string();

  std::printf("n = %llu = %llu x %llu, %d workers, a look at the flag every %llu divisions\n",
              static_cast<unsigned long long>(n), static_cast<unsigned long long>(p),
              static_cast<unsigned long long>(q), workers, static_cast<unsigned long long>(check_every));
  examples::Table table({"flag", "time", "divisions", "one look"});
  std::uint64_t none_work = 0, worst = 0;
  bool all_stopped_early = true;
  for (int m : {kNone, kEvent, kRaw, kManager, kMmap, kRedis}) {
    if (m == kRedis && !redis.ready()) {
      table.row({kNames[m], "skipped", "(redis-server or hiredis missing)", ""});
      continue;
    }
    mproc::Event ev;
    mproc::RawValue<int> raw(0);
    auto mv = manager.Value<int>(0);
    {
      std::FILE* fp = std::fopen(file.c_str(), "w");
      int zero = 0;
      std::fwrite(&zero, sizeof zero, 1, fp);
      std::fclose(fp);
    }
    redis.clear_flag();
    mproc::RawArray<std::int64_t> work(static_cast<std::size_t>(workers));
    mproc::Barrier start(workers);

    // What one look costs, measured in this process on the same kind of flag.
    double look = 0;
    {
      Flag probe(m, ev, raw, mv, file, redis.socket());
      int reps = m == kManager || m == kRedis ? 2000 : 200000;
      examples::Stopwatch sw;
      for (int i = 0; i < reps; ++i) (void)probe.is_set();
      look = sw.seconds() / reps;
    }

    examples::Stopwatch sw;
    std::vector<mproc::Process> procs;
    for (int w = 0; w < workers; ++w) {
      std::uint64_t lo = 3 + (limit - 3) * static_cast<std::uint64_t>(w) / static_cast<std::uint64_t>(workers);
      std::uint64_t hi = 3 + (limit - 3) * static_cast<std::uint64_t>(w + 1) / static_cast<std::uint64_t>(workers);
      procs.emplace_back(search, m, w, n, lo, hi, check_every, ev, raw, mv, file, redis.socket(), work, start);
      procs.back().start();
    }
    for (auto& pr : procs) pr.join();
    double secs = sw.seconds();
    std::uint64_t total = 0;
    for (int w = 0; w < workers; ++w) total += static_cast<std::uint64_t>(work[static_cast<std::size_t>(w)]);
    if (m == kNone) none_work = total;
    else {
      worst = std::max(worst, total);
      all_stopped_early = all_stopped_early && total < none_work;
    }
    table.row({kNames[m], examples::human_time(secs), std::to_string(total),
               m == kNone ? "-" : look < 1e-6 ? examples::format("%.0f ns", look * 1e9)
                                              : examples::format("%.1f us", look * 1e6)});
  }
  std::remove(file.c_str());
  table.print();
  return examples::verdict(all_stopped_early && worst > 0,
                           "with every flag the workers stopped early, doing fewer divisions than without one");
}
