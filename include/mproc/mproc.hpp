// mproc/mproc.hpp — everything in one include.
#pragma once

#include "mproc/error.hpp"
#include "mproc/process.hpp"
#include "mproc/serial.hpp"
#include "mproc/task.hpp"
