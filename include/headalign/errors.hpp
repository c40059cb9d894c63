/// @file errors.hpp
/// @brief The error types, the index type and the argument-checking macro of headalign, without
/// Eigen: what the CUDA headers (headalign/cuda/) share with the CPU library.
#ifndef HEADALIGN_ERRORS_HPP
#define HEADALIGN_ERRORS_HPP

#include <cstddef>
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>

namespace headalign {

/// Index type of every size and position (Eigen's default index, std::ptrdiff_t).
using Index = std::ptrdiff_t;

/// @brief Misuse of the API: shapes, divisibility, non-finite values, empty data, bad options.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// @brief A file could not be read or written, or its content is malformed.
class io_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// @brief The message of an exception without the "headalign: " prefix that the library's own
/// exceptions carry, for a caller that puts its own context (or its program's name) in front.
inline std::string message_of(const std::exception& e) {
  const std::string what = e.what(), prefix = "headalign: ";
  return what.compare(0, prefix.size(), prefix) == 0 ? what.substr(prefix.size()) : what;
}

namespace detail {

[[noreturn]] inline void throw_invalid_argument(const std::string& message) {
  throw ::headalign::invalid_argument("headalign: " + message);
}

[[noreturn]] inline void throw_io_error(const std::string& message) {
  throw ::headalign::io_error("headalign: " + message);
}

}  // namespace detail
}  // namespace headalign

/// Always-on argument check: throws headalign::invalid_argument with the streamed message.
/// Usage: HEADALIGN_CHECK(h % g == 0, "num_heads (" << h << ") is not divisible by num_groups (" << g <<
/// ")");
#define HEADALIGN_CHECK(cond, msg)                                           \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::ostringstream headalign_check_os;                                 \
      headalign_check_os << msg;                                             \
      ::headalign::detail::throw_invalid_argument(headalign_check_os.str()); \
    }                                                                        \
  } while (false)

#endif  // HEADALIGN_ERRORS_HPP
