// Named shared memory and its crash-proof cleanup (see mproc/shared_memory.hpp).
#include "mproc/shared_memory.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <mutex>
#include <new>
#include <system_error>

#include "../os/internal.hpp"

extern char** environ;

namespace mproc {
namespace detail {
namespace {

// The tracker: /bin/sh reading "+name" / "-name" lines on stdin. When stdin reaches
// EOF — the creating process (and every fork child that inherited the pipe) is gone,
// however it ended — it unlinks every name still registered. It ignores the
// terminal's signals and runs in its own process group, so Ctrl-C cannot stop it
// before it has cleaned up. Names are validated to [A-Za-z0-9._-], so the script
// never sees a character the shell would interpret.
constexpr const char* kTrackerScript =
    "trap '' INT TERM HUP QUIT PIPE\n"
    "set -f\n"
    "names=' '\n"
    "while IFS= read -r l; do\n"
    "  case \"$l\" in\n"
    "    +*) names=\"$names${l#+} \" ;;\n"
    "    -*) n=${l#-}; new=' '; for x in $names; do [ \"$x\" = \"$n\" ] || new=\"$new$x \"; done; names=$new ;;\n"
    "  esac\n"
    "done\n"
    "for n in $names; do rm -f \"/dev/shm/$n\"; done\n";

struct Tracker {
  std::mutex mu;
  int fd = -1;  // write end of the tracker's stdin
  pid_t pid = 0;
};

Tracker& tracker() {
  static Tracker* t = new Tracker;
  return *t;
}

void tracker_stop() noexcept {
  Tracker& t = tracker();
  std::lock_guard lock(t.mu);
  if (t.fd < 0) return;
  close_fd(t.fd);  // EOF: it unlinks what is left (nothing, normally) and exits
  t.fd = -1;
  if (t.pid > 0) ::waitpid(t.pid, nullptr, 0);
  t.pid = 0;
}

void tracker_forget_after_fork() noexcept {
  // The child keeps the inherited pipe open (so the parent's tracker waits for it
  // too), but must not send on it or wait for a process that is not its child.
  Tracker& t = tracker();
  new (&t.mu) std::mutex;
  t.fd = -1;
  t.pid = 0;
}

const bool kRegistered = [] {
  pthread_atfork(nullptr, nullptr, tracker_forget_after_fork);
  add_exit_hook(tracker_stop);
  return true;
}();

void tracker_send(char op, const std::string& name) {
  Tracker& t = tracker();
  std::lock_guard lock(t.mu);
  if (t.fd < 0) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0) throw_errno("pipe2");
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_adddup2(&fa, p[0], 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawnattr_setpgroup(&attr, 0);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);
    char sh[] = "/bin/sh", dash_c[] = "-c";
    std::string script = kTrackerScript;
    char* argv[] = {sh, dash_c, script.data(), nullptr};
    pid_t pid = 0;
    int rc = ::posix_spawn(&pid, "/bin/sh", &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close_fd(p[0]);
    if (rc != 0) {
      close_fd(p[1]);
      errno = rc;
      throw_errno("posix_spawn(/bin/sh) for the shared-memory tracker");
    }
    t.fd = p[1];
    t.pid = pid;
  }
  std::string line = std::string(1, op) + name + "\n";
  // Lines are far below PIPE_BUF, so each write is atomic.
  if (!write_all(t.fd, line.data(), line.size())) throw_errno("write(shared-memory tracker)");
}

std::string random_name() {
  unsigned char r[16];
  std::size_t got = 0;
  while (got < sizeof r) {
    ssize_t n = ::getrandom(r + got, sizeof r - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("getrandom");
    }
    got += static_cast<std::size_t>(n);
  }
  std::string s = "mproc-";
  char hex[3];
  for (unsigned char c : r) {
    std::snprintf(hex, sizeof hex, "%02x", c);
    s += hex;
  }
  return s;
}

void check_name(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 200 && name != "." && name != "..";
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                c == '_' || c == '-');
  }
  if (!ok) {
    throw UsageError("mproc: shared memory name '" + name +
                     "' is not valid: use 1-200 characters from A-Z a-z 0-9 . _ - (no '/')");
  }
}

}  // namespace
}  // namespace detail

struct SharedMemory::State {
  std::string name;
  detail::Segment seg;
  pid_t owner_pid = 0;
  bool unlinked = false;

  void do_unlink() {
    if (unlinked) return;
    unlinked = true;
    if (::shm_unlink(("/" + name).c_str()) < 0 && errno != ENOENT) detail::throw_errno("shm_unlink");
    if (owner_pid == ::getpid()) detail::tracker_send('-', name);
  }
  ~State() {
    if (owner_pid == ::getpid() && !unlinked) {
      try {
        do_unlink();
      } catch (...) {
      }
    }
  }
};

SharedMemory SharedMemory::create(std::size_t size, std::string name) {
  if (size == 0) throw UsageError("mproc: SharedMemory::create needs a size > 0");
  if (name.empty()) name = detail::random_name();
  detail::check_name(name);
  std::string path = "/" + name;
  int fd = ::shm_open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) detail::throw_errno(("shm_open(" + path + ")").c_str());
  auto st = std::make_shared<State>();
  st->name = name;
  try {
    // Registered before anything else can fail, so a crash from here on is cleaned up.
    detail::tracker_send('+', name);
    st->owner_pid = ::getpid();
    if (::ftruncate(fd, static_cast<off_t>(size)) < 0) detail::throw_errno("ftruncate");
    st->seg = detail::Segment::adopt(fd, size, false);
  } catch (...) {
    ::shm_unlink(path.c_str());
    if (st->owner_pid) {
      st->unlinked = true;
      try {
        detail::tracker_send('-', name);
      } catch (...) {
      }
    }
    if (!st->seg) ::close(fd);
    throw;
  }
  SharedMemory m;
  m.st_ = std::move(st);
  return m;
}

SharedMemory SharedMemory::attach(const std::string& name, const AttachOptions& options) {
  detail::check_name(name);
  std::string path = "/" + name;
  // O_NOFOLLOW: a symbolic link planted under the name is not followed.
  int fd = ::shm_open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) detail::throw_errno(("shm_open(" + path + ")").c_str());
  struct Closer {
    int fd;
    ~Closer() {
      if (fd >= 0) ::close(fd);
    }
  } closer{fd};
  struct stat sb;
  if (::fstat(fd, &sb) < 0) detail::throw_errno("fstat");
  // Checked on the open descriptor (no window between check and use).
  if (sb.st_uid != ::geteuid() && !options.allow_other_owner) {
    throw std::system_error(
        EPERM, std::generic_category(),
        "mproc: SharedMemory::attach(\"" + name + "\"): the segment belongs to uid " + std::to_string(sb.st_uid) +
            ", not to this process's uid " + std::to_string(::geteuid()) +
            ": another user may have created it first, with content of their choosing. Pass "
            "SharedMemory::AttachOptions{.allow_other_owner = true} if that user is trusted");
  }
  // Empty (made by other code, or not yet sized by its creator): a mapping would
  // be past the file's end, a SIGBUS at the first touch.
  if (sb.st_size == 0) {
    throw std::system_error(EINVAL, std::generic_category(),
                            "mproc: SharedMemory::attach(\"" + name + "\"): the segment is empty (size 0)");
  }
  auto st = std::make_shared<State>();
  st->name = name;
  closer.fd = -1;  // adopt() owns it from here, also when it throws
  st->seg = detail::Segment::adopt(fd, static_cast<std::size_t>(sb.st_size), false);
  SharedMemory m;
  m.st_ = std::move(st);
  return m;
}

SharedMemory SharedMemory::attach(const std::string& name) { return attach(name, AttachOptions{}); }

const std::string& SharedMemory::name() const noexcept {
  static const std::string empty;
  return st_ ? st_->name : empty;
}
std::size_t SharedMemory::size() const noexcept { return st_ ? st_->seg.size() : 0; }
std::span<std::byte> SharedMemory::buf() const noexcept {
  return st_ ? std::span<std::byte>(st_->seg.data(), st_->seg.size()) : std::span<std::byte>();
}
bool SharedMemory::owner() const noexcept { return st_ && st_->owner_pid == ::getpid(); }
void SharedMemory::close() noexcept {
  if (st_) st_->seg.reset();
}
void SharedMemory::unlink() {
  if (st_) st_->do_unlink();
}

void codec<SharedMemory>::encode(Writer& w, const SharedMemory& m) {
  if (!m.st_ || !m.st_->seg) throw UsageError("mproc: cannot send a closed or empty SharedMemory");
  codec<detail::Segment>::encode(w, m.st_->seg);
  dump(w, m.st_->name);
}

SharedMemory codec<SharedMemory>::decode(Reader& r) {
  auto st = std::make_shared<SharedMemory::State>();
  st->seg = codec<detail::Segment>::decode(r);
  st->name = load<std::string>(r);
  SharedMemory m;
  m.st_ = std::move(st);
  return m;
}

}  // namespace mproc
