// How a task's std::invalid_argument (pool_tasks::raise_on_7) comes back from a
// front end: the exception itself on threads, a TaskError carrying its type,
// message and (from the map methods) argument index on processes.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <exception>
#include <mproc/error.hpp>
#include <optional>
#include <stdexcept>

namespace mproc_test {

inline void expect_invalid_argument(const std::exception_ptr& e, bool threads, const char* what,
                                    std::optional<std::size_t> index = std::nullopt) {
  ASSERT_TRUE(e);
  try {
    std::rethrow_exception(e);
  } catch (const mproc::TaskError& te) {
    EXPECT_FALSE(threads);
    EXPECT_EQ(te.type_name(), "std::invalid_argument");
    EXPECT_EQ(te.message(), what);
    if (index) {
      EXPECT_EQ(te.index(), *index);
    }
  } catch (const std::invalid_argument& ia) {
    EXPECT_TRUE(threads);
    EXPECT_STREQ(ia.what(), what);
  } catch (...) {
    ADD_FAILURE() << "unexpected exception type";
  }
}

}  // namespace mproc_test
