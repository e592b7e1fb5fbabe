// mproc/mproc.hpp — everything in one include.
#pragma once

#include "mproc/detail/config.hpp"

#include "mproc/background_error.hpp"
#include "mproc/error.hpp"
#include "mproc/executor.hpp"
#include "mproc/pipe.hpp"
#include "mproc/pool.hpp"
#include "mproc/process.hpp"
#include "mproc/progress.hpp"
#include "mproc/queue.hpp"
#include "mproc/serial.hpp"
#include "mproc/shared_memory.hpp"
#include "mproc/sync.hpp"
#include "mproc/task.hpp"
#include "mproc/thread_pool.hpp"
#include "mproc/timeline.hpp"
#include "mproc/value.hpp"
#include "mproc/wait.hpp"
