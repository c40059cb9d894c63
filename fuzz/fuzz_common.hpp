// Shared parts of the fuzz targets: a scratch file per process, and the contract every target
// checks — headalign either succeeds or throws its own exception types; anything else (another
// exception, a crash, a sanitizer report, NaN/Inf in a result) is a finding.
#ifndef HEADALIGN_FUZZ_COMMON_HPP
#define HEADALIGN_FUZZ_COMMON_HPP

#include <headalign/config.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>

#include <unistd.h>

namespace headalign::fuzz {

/// A path in $TMPDIR (else /tmp) private to this process.
inline std::string scratch_path(const std::string& name) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir && *dir ? dir : "/tmp") + "/headalign_fuzz_" + std::to_string(::getpid()) + "_" + name;
}

/// A file at scratch_path(@p name) holding @p size bytes of @p data.
inline std::string scratch_file(const std::string& name, const std::uint8_t* data, std::size_t size) {
  const std::string path = scratch_path(name);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write the scratch file %s\n", path.c_str());
    std::abort();
  }
  return path;
}

/// A broken promise: prints @p what and aborts (libFuzzer saves the input as a crash).
[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz finding: %s\n", what.c_str());
  std::abort();
}

/// A finding unless every entry of @p m is finite.
template <class Derived>
void check_finite(const Eigen::MatrixBase<Derived>& m, const char* what) {
  if (!m.allFinite()) finding(std::string(what) + " holds NaN or Inf");
}

/// Runs @p body; headalign::invalid_argument and headalign::io_error are the documented
/// failures, every other exception is a finding.
template <class Body>
void expect_contract(Body&& body) {
  try {
    body();
  } catch (const ::headalign::invalid_argument&) {
  } catch (const ::headalign::io_error&) {
  } catch (const std::exception& e) {
    finding(std::string("undocumented exception: ") + e.what());
  }
}

}  // namespace headalign::fuzz

#endif
