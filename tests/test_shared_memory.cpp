// SharedMemory and SharedArray, after CPython's _TestSharedMemory, plus the
// ownership and leak guarantees of mproc/shared_memory.hpp.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <mproc/process.hpp>
#include <mproc/shared_memory.hpp>
#include <numeric>
#include <system_error>

#include "util.hpp"

using namespace std::chrono_literals;
using mproc::Process;
using mproc::ProcessOptions;
using mproc::SharedArray;
using mproc::SharedMemory;
using mproc::StartMethod;

namespace {

bool shm_exists(const std::string& name) {
  struct stat sb;
  return ::stat(("/dev/shm/" + name).c_str(), &sb) == 0;
}

void write_greeting(SharedMemory m) {
  const char msg[] = "hello from the child";
  std::memcpy(m.buf().data(), msg, sizeof msg);
  if (m.owner()) std::exit(3);  // a received handle never owns the segment
}

void fill_squares(SharedArray<std::int64_t> a) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<std::int64_t>(i * i);
}

void touch_last(SharedArray<std::uint8_t> a) { a[a.size() - 1] = 42; }

void create_named_then_die(std::string name_path) {
  auto m = SharedMemory::create(4096);
  mproc_test::publish_file(name_path, m.name());
  std::raise(SIGKILL);  // no destructor runs: only the tracker can clean up
}

ProcessOptions with(StartMethod m) {
  ProcessOptions o;
  o.start_method = m;
  return o;
}

}  // namespace

TEST(SharedMemory, CreateAttachAndUnlink) {
  auto a = SharedMemory::create(1000);
  EXPECT_EQ(a.size(), 1000u);
  EXPECT_TRUE(a.owner());
  EXPECT_EQ(a.name().rfind("mproc-", 0), 0u);
  EXPECT_EQ(a.name().size(), 6u + 32u);  // 128 random bits in hex
  struct stat sb;
  ASSERT_EQ(::stat(("/dev/shm/" + a.name()).c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);

  auto b = SharedMemory::attach(a.name());
  EXPECT_FALSE(b.owner());
  EXPECT_EQ(b.size(), 1000u);
  a.buf()[10] = std::byte{7};
  EXPECT_EQ(b.buf()[10], std::byte{7});  // the same pages

  a.unlink();
  a.unlink();  // idempotent
  EXPECT_FALSE(shm_exists(a.name()));
  b.buf()[11] = std::byte{8};  // existing mappings stay valid
  EXPECT_EQ(a.buf()[11], std::byte{8});
  EXPECT_THROW(SharedMemory::attach(a.name()), std::system_error);
  a.close();
  EXPECT_TRUE(a.buf().empty());
}

TEST(SharedMemory, OwnerUnlinksWhenItsLastHandleGoes) {
  std::string name;
  {
    auto a = SharedMemory::create(64, "mproc-test-owner-" + std::to_string(::getpid()));
    name = a.name();
    auto copy = a;  // copies share the segment
    EXPECT_TRUE(shm_exists(name));
    { auto attached = SharedMemory::attach(name); }  // a non-owner going away unlinks nothing
    EXPECT_TRUE(shm_exists(name));
  }
  EXPECT_FALSE(shm_exists(name));
}

TEST(SharedMemory, BadInput) {
  EXPECT_THROW(SharedMemory::create(0), mproc::UsageError);
  EXPECT_THROW(SharedMemory::create(10, "a/b"), mproc::UsageError);
  EXPECT_THROW(SharedMemory::create(10, ".."), mproc::UsageError);
  EXPECT_THROW(SharedMemory::create(10, std::string(300, 'x')), mproc::UsageError);
  EXPECT_THROW(SharedMemory::attach("has space"), mproc::UsageError);
  auto a = SharedMemory::create(10);
  try {
    SharedMemory::create(10, a.name());
    FAIL() << "created a segment twice";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), EEXIST);
  }
  try {
    SharedMemory::attach("mproc-no-such-segment");
    FAIL();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), ENOENT);
  }
}

// A segment that another user pre-created under the name we are about to attach
// (mode 0666, content of their choosing): attach() refuses it unless told to
// accept a foreign owner. The test runs as root, so it can give the segment away
// with fchown, as if user 65534 (nobody) had made it.
TEST(SharedMemory, AttachRefusesASegmentOfAnotherUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to chown a segment to another uid";
  const std::string name = "mproc-test-foreign-" + std::to_string(::getpid());
  int fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  ASSERT_GE(fd, 0);
  struct Unlink {
    std::string path;
    ~Unlink() { ::shm_unlink(path.c_str()); }
  } unlink_at_end{"/" + name};
  ASSERT_EQ(::ftruncate(fd, 4096), 0);
  ASSERT_EQ(::pwrite(fd, "attacker", 8, 0), 8);
  ASSERT_EQ(::fchown(fd, 65534, 65534), 0);
  ::close(fd);
  const int fds = mproc_test::fd_count();
  try {
    SharedMemory::attach(name);
    FAIL() << "attached a segment owned by uid 65534";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), EPERM);
    const std::string what = e.what();
    EXPECT_NE(what.find("65534"), std::string::npos) << what;
    EXPECT_NE(what.find("allow_other_owner"), std::string::npos) << what;  // says what to do
  }
  EXPECT_EQ(mproc_test::fd_count(), fds);  // the refused segment's fd is closed
  // Opting in attaches it, content and all.
  auto m = SharedMemory::attach(name, {.allow_other_owner = true});
  EXPECT_EQ(m.size(), 4096u);
  EXPECT_EQ(std::memcmp(m.buf().data(), "attacker", 8), 0);
  EXPECT_FALSE(m.owner());
  // A segment of our own uid needs no option.
  auto own = SharedMemory::create(100);
  EXPECT_EQ(SharedMemory::attach(own.name()).size(), 100u);
  // An empty one is refused, whoever owns it (a mapping would be past its end).
  ASSERT_EQ(::truncate(("/dev/shm/" + name).c_str(), 0), 0);
  try {
    SharedMemory::attach(name, {.allow_other_owner = true});
    FAIL() << "attached an empty segment";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), EINVAL);
  }
}

TEST(SharedMemory, CrashedOwnerLeavesNoEntry) {
  // kill -9 of the creating process: the tracker unlinks the name.
  mproc_test::TempDir dir;
  Process p(with(StartMethod::fork), create_named_then_die, dir.file("name"));
  p.start();
  p.join();
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  std::string name = mproc_test::read_file(dir.file("name"));
  ASSERT_FALSE(name.empty());
  name.pop_back();
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (shm_exists(name) && std::chrono::steady_clock::now() < deadline) ::usleep(2000);
  EXPECT_FALSE(shm_exists(name)) << name << " survived its owner";
}

TEST(SharedMemory, ManyCyclesLeakNothing) {
  { auto warm = SharedMemory::create(16); }  // starts the tracker
  int fds = mproc_test::fd_count();
  // Other tests may create segments concurrently, so check our own names rather
  // than counting /dev/shm.
  std::vector<std::string> names;
  for (int i = 0; i < 1000; ++i) {
    auto m = SharedMemory::create(4096);
    m.buf()[0] = std::byte{1};
    auto peer = SharedMemory::attach(m.name());
    ASSERT_EQ(peer.buf()[0], std::byte{1});
    names.push_back(m.name());
  }
  for (const auto& n : names) ASSERT_FALSE(shm_exists(n)) << n;
  for (int i = 0; i < 1000; ++i) {
    SharedArray<int> a(1024);
    a[1023] = i;
  }
  EXPECT_EQ(mproc_test::fd_count(), fds);
}

class SharedMemoryAcross : public ::testing::TestWithParam<StartMethod> {};

TEST_P(SharedMemoryAcross, ChildWritesParentReads) {
  auto m = SharedMemory::create(256);
  Process p(with(GetParam()), write_greeting, m);
  p.start();
  p.join();
  ASSERT_EQ(p.exitcode(), 0);
  EXPECT_STREQ(reinterpret_cast<const char*>(m.buf().data()), "hello from the child");
  EXPECT_TRUE(shm_exists(m.name()));  // the child did not unlink it
}

TEST_P(SharedMemoryAcross, SharedArrayIsSharedNotCopied) {
  SharedArray<std::int64_t> a(10'000);
  Process p(with(GetParam()), fill_squares, a);
  p.start();
  p.join();
  ASSERT_EQ(p.exitcode(), 0);
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], static_cast<std::int64_t>(i * i)) << i;
}

TEST_P(SharedMemoryAcross, GigabyteArrayTravelsAsAHandle) {
  // 1 GiB of (untouched, so unbacked) memory: the task message carries an fd, not
  // the bytes — the child maps the same pages and its write shows up here.
  SharedArray<std::uint8_t> a(std::size_t{1} << 30);
  Process p(with(GetParam()), touch_last, a);
  p.start();
  p.join();
  ASSERT_EQ(p.exitcode(), 0);
  EXPECT_EQ(a[a.size() - 1], 42);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, SharedMemoryAcross,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::spawn),
                         [](const auto& i) { return std::string(mproc::to_string(i.param)); });

TEST(SharedArray, Construction) {
  SharedArray<int> a{1, 2, 3};
  EXPECT_EQ(a.size(), 3u);
  EXPECT_EQ(std::accumulate(a.begin(), a.end(), 0), 6);
  std::vector<double> v{0.5, 1.5};
  auto b = SharedArray<double>::from_range(v);
  EXPECT_EQ(b[1], 1.5);
  auto c = b;  // a handle: same memory
  c[0] = 9;
  EXPECT_EQ(b[0], 9);
  SharedArray<int> empty(0);
  EXPECT_TRUE(empty.empty());
  SharedArray<int> zero(100);
  EXPECT_EQ(std::count(zero.begin(), zero.end(), 0), 100);
}

// ---- crafted handles: the decoder checks what the message says ---------------------------
// A Segment travels as (fd index u32, size u64) plus the fd; a SharedArray<T> adds
// its element count (u64). These feed hand-made bytes with a real memfd, as a
// corrupt or hostile peer could: every lie is a SerializationError, never a
// mapping past the end of the file (a SIGBUS at the first touch of those pages).

namespace {

std::vector<std::byte> segment_bytes(std::uint32_t idx, std::uint64_t size) {
  std::vector<std::byte> b(sizeof idx + sizeof size);
  std::memcpy(b.data(), &idx, sizeof idx);
  std::memcpy(b.data() + sizeof idx, &size, sizeof size);
  return b;
}

std::vector<std::byte> array_bytes(std::uint32_t idx, std::uint64_t size, std::uint64_t n) {
  auto b = segment_bytes(idx, size);
  b.resize(b.size() + sizeof n);
  std::memcpy(b.data() + b.size() - sizeof n, &n, sizeof n);
  return b;
}

template <class T>
T decode(const std::vector<std::byte>& bytes, int fd) {
  mproc::Reader r(bytes, std::span<const int>(&fd, 1));
  return mproc::load<T>(r);
}

struct Memfd {
  int fd;
  explicit Memfd(off_t size) : fd(::memfd_create("mproc-test", MFD_CLOEXEC)) {
    if (fd < 0 || ::ftruncate(fd, size) != 0) std::abort();
  }
  ~Memfd() { ::close(fd); }
};

}  // namespace

TEST(SharedArrayDecode, ElementCountThatOverflowsTheByteSizeIsRefused) {
  Memfd m(4096);
  // 2^61 * 8 wraps to 0 in 64 bits: it "fits" any segment unless checked by division.
  EXPECT_THROW(decode<SharedArray<std::uint64_t>>(array_bytes(0, 4096, std::uint64_t{1} << 61), m.fd),
               mproc::SerializationError);
  EXPECT_THROW(decode<SharedArray<std::uint64_t>>(array_bytes(0, 4096, (std::uint64_t{1} << 61) + 1), m.fd),
               mproc::SerializationError);
  EXPECT_THROW(decode<SharedArray<std::uint64_t>>(array_bytes(0, 4096, 513), m.fd), mproc::SerializationError);
  auto ok = decode<SharedArray<std::uint64_t>>(array_bytes(0, 4096, 512), m.fd);
  EXPECT_EQ(ok.size(), 512u);
  ok[511] = 7;  // the last element is inside the file
}

TEST(SharedArrayDecode, SegmentLargerThanItsFileIsRefused) {
  Memfd m(4096);
  EXPECT_THROW(decode<SharedArray<std::uint8_t>>(array_bytes(0, std::uint64_t{1} << 20, 16), m.fd),
               mproc::SerializationError);
  EXPECT_THROW(decode<mproc::detail::Segment>(segment_bytes(0, 4097), m.fd), mproc::SerializationError);
  EXPECT_THROW(decode<mproc::detail::Segment>(segment_bytes(0, ~std::uint64_t{0}), m.fd), mproc::SerializationError);
  Memfd empty(0);  // a mapping is at least one byte: an empty file cannot back one
  EXPECT_THROW(decode<mproc::detail::Segment>(segment_bytes(0, 0), empty.fd), mproc::SerializationError);
  auto seg = decode<mproc::detail::Segment>(segment_bytes(0, 4096), m.fd);
  EXPECT_EQ(seg.size(), 4096u);
  seg.data()[4095] = std::byte{1};
}

TEST(SharedArrayDecode, DescriptorsThatAreNotSharedMemoryAreRefused) {
  Memfd m(4096);
  EXPECT_THROW(decode<mproc::detail::Segment>(segment_bytes(1, 4096), m.fd), mproc::SerializationError);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  EXPECT_THROW(decode<mproc::detail::Segment>(segment_bytes(0, 4096), p[0]), mproc::SerializationError);
  ::close(p[0]);
  ::close(p[1]);
  // Truncated messages.
  auto b = array_bytes(0, 4096, 1);
  b.pop_back();
  EXPECT_THROW(decode<SharedArray<std::uint8_t>>(b, m.fd), mproc::SerializationError);
}

TEST(SharedArrayDecode, TheFuzzEntryPointTakesBytesAndFds) {
  Memfd m(4096);
  auto good = array_bytes(0, 4096, 1024);
  int fds[] = {m.fd};
  EXPECT_EQ(mproc::detail::decode_shared_array<std::uint32_t>(good, fds).size(), 1024u);
  EXPECT_THROW(mproc::detail::decode_shared_array<std::uint32_t>(array_bytes(0, 4096, 1025), fds),
               mproc::SerializationError);
  good.push_back(std::byte{0});  // one message, one array: trailing bytes are an error
  EXPECT_THROW(mproc::detail::decode_shared_array<std::uint32_t>(good, fds), mproc::SerializationError);
}
