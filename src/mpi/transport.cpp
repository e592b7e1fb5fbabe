// src/mpi/transport.cpp — the MPI calls every loop shares: non-blocking sends
// whose buffers outlive them, one non-blocking receive, error checks.
#include <stdexcept>
#include <string>

#include "internal.hpp"

namespace mproc::mpi::detail {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw std::runtime_error(std::string("mproc::mpi: ") + what + " failed: " + std::string(text, len));
}

Sender::~Sender() {
  // Sends still in flight at destruction: wait for them, so MPI never reads freed memory.
  for (auto& s : inflight_) MPI_Wait(&s.req, MPI_STATUS_IGNORE);
}

void Sender::post(int dest, int tag, std::vector<std::byte> bytes) {
  if (bytes.size() > static_cast<std::size_t>(INT32_MAX)) {
    throw std::length_error("mproc::mpi: a message of " + std::to_string(bytes.size()) +
                            " bytes is over MPI's 2 GiB count limit; split the task's data");
  }
  auto& s = inflight_.emplace_back();
  s.bytes = std::move(bytes);
  check(MPI_Isend(s.bytes.data(), static_cast<int>(s.bytes.size()), MPI_BYTE, dest, tag, comm_, &s.req), "MPI_Isend");
}

bool Sender::progress() {
  bool any = false;
  for (auto it = inflight_.begin(); it != inflight_.end();) {
    int done = 0;
    check(MPI_Test(&it->req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) {
      it = inflight_.erase(it);
      any = true;
    } else {
      ++it;
    }
  }
  return any;
}

void Sender::drain() {
  for (auto& s : inflight_) check(MPI_Wait(&s.req, MPI_STATUS_IGNORE), "MPI_Wait");
  inflight_.clear();
}

bool try_recv(MPI_Comm comm, int source, MPI_Status& st, std::vector<std::byte>& buf) {
  int flag = 0;
  check(MPI_Iprobe(source, MPI_ANY_TAG, comm, &flag, &st), "MPI_Iprobe");
  if (!flag) return false;
  int n = 0;
  MPI_Get_count(&st, MPI_BYTE, &n);
  buf.resize(static_cast<std::size_t>(n));
  check(MPI_Recv(buf.data(), n, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, comm, MPI_STATUS_IGNORE), "MPI_Recv");
  return true;
}

}  // namespace mproc::mpi::detail
