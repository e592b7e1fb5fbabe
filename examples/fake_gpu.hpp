// examples/fake_gpu.hpp — a stand-in for a GPU runtime (CUDA, or TensorFlow and
// Theano on top of it), for per_worker_init.cpp.
//
// What it imitates: such a library keeps a process-global context (driver
// handles, device memory, helper threads). That context cannot survive fork():
// a child that inherits it gets CUDA_ERROR_NOT_INITIALIZED from every call, and
// cannot make a fresh one either, because the library believes it is already set
// up. The cure is to never initialise it in the parent and to initialise it in
// each child instead — in the Process target, or in the Pool initializer.
//
// Here: init() records the pid that created the context; every call checks it
// runs in that same process. A context inherited across fork is refused, as is
// any use before init() in this process.
#pragma once

#include <unistd.h>

#include <stdexcept>
#include <string>

namespace fake_gpu {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Context {
  pid_t owner = 0;  // the process that called init(); 0: none
  int device = -1;
  long calls = 0;
};

/// The process-global context (one per process, like the driver's).
inline Context& context() {
  static Context c;
  return c;
}

/// Sets the library up in this process (like `import tensorflow` + a Session).
/// Idempotent in the process that did it. Throws Error in a process that
/// inherited a context through fork.
inline void init(int device) {
  Context& c = context();
  pid_t me = ::getpid();
  if (c.owner == me) return;
  if (c.owner != 0) {
    throw Error("CUDA_ERROR_NOT_INITIALIZED: process " + std::to_string(me) + " inherited the context of process " +
                std::to_string(c.owner) + " through fork; initialise the library in the child, not in the parent");
  }
  c.owner = me;
  c.device = device;
}

/// Runs an "operation" on the device (like sess.run(tf.constant(...))). Throws
/// Error unless init() ran in this very process.
inline std::string run(const std::string& what) {
  Context& c = context();
  pid_t me = ::getpid();
  if (c.owner == 0) {
    throw Error("CUDA_ERROR_NOT_INITIALIZED: fake_gpu::init() was never called in process " + std::to_string(me));
  }
  if (c.owner != me) {
    throw Error("CUDA_ERROR_NOT_INITIALIZED: the context belongs to process " + std::to_string(c.owner) +
                ", not to process " + std::to_string(me));
  }
  ++c.calls;
  return what + " (device " + std::to_string(c.device) + ", pid " + std::to_string(me) + ")";
}

}  // namespace fake_gpu
