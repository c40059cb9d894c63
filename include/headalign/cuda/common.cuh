/// @file cuda/common.cuh
/// @brief The CUDA backend's errors (HEADALIGN_CUDA_TRY), its Context of library handles and a
/// stream-ordered device buffer.
///
/// The CUDA headers are optional and never included by headalign.hpp. They need no Eigen: what
/// they declare (this file, procrustes.cuh, gram.cuh) compiles in any C++17 unit that sees the
/// CUDA toolkit's headers; the definitions that launch kernels compile under nvcc only
/// (`__CUDACC__`). A program written in plain C++ therefore compiles one `.cu` unit with
/// @code
/// #define HEADALIGN_CUDA_INSTANTIATE   // float and double instantiations of everything
/// #include <headalign/cuda/backend.cuh>
/// @endcode
/// and calls the API from any other unit; CMake target `headalign::cuda`.
#ifndef HEADALIGN_CUDA_COMMON_CUH
#define HEADALIGN_CUDA_COMMON_CUH

#include "../errors.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

/// `__host__ __device__` under nvcc, nothing elsewhere: math shared by kernels and host tests.
#if defined(__CUDACC__)
#define HEADALIGN_HD __host__ __device__
#else
#define HEADALIGN_HD
#endif

namespace headalign {
namespace cuda {

/// @brief A CUDA runtime, cuBLAS or cuSOLVER call failed; what() names the call, the status and
/// where it was made. Device memory written by the failed operation is unspecified.
class cuda_error : public std::runtime_error {
 public:
  cuda_error(const std::string& message, int status) : std::runtime_error(message), status_(status) {}
  /// The numeric status the library returned (cudaError_t, cublasStatus_t or cusolverStatus_t).
  int status() const { return status_; }

 private:
  int status_;
};

namespace detail {

inline const char* status_name(cudaError_t s) { return cudaGetErrorName(s); }

inline const char* status_name(cublasStatus_t s) { return cublasGetStatusName(s); }

inline const char* status_name(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS:
      return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED:
      return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED:
      return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE:
      return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH:
      return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED:
      return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR:
      return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED:
      return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED:
      return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default:
      return "cusolverStatus_t (unnamed)";
  }
}

inline bool succeeded(cudaError_t s) { return s == cudaSuccess; }
inline bool succeeded(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS; }
inline bool succeeded(cusolverStatus_t s) { return s == CUSOLVER_STATUS_SUCCESS; }

/// Throws cuda_error unless @p status reports success.
template <class Status>
void check(Status status, const char* call, const char* file, int line) {
  if (succeeded(status)) return;
  if constexpr (std::is_same<Status, cudaError_t>::value)
    (void)cudaGetLastError();  // clear a sticky-free error
  std::ostringstream os;
  os << "headalign: " << call << " failed with " << status_name(status) << " (" << static_cast<int>(status)
     << ") at " << file << ":" << line;
  throw cuda_error(os.str(), static_cast<int>(status));
}

}  // namespace detail

/// Number of CUDA devices visible to this process (0 when there is none or no driver).
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace cuda
}  // namespace headalign

/// Evaluates a CUDA runtime, cuBLAS or cuSOLVER call and throws headalign::cuda::cuda_error
/// naming the call, the status and the place when it does not succeed.
#define HEADALIGN_CUDA_TRY(call) ::headalign::cuda::detail::check((call), #call, __FILE__, __LINE__)

namespace headalign {
namespace cuda {

/// @brief The library handles (cuBLAS, cuSOLVER) of one thread on the current device, created on
/// first use. Functions bind them to the stream they are given. Not thread-safe: one Context per
/// host thread (creating handles is slow; keep the Context).
class Context {
 public:
  Context() = default;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  Context(Context&& other) noexcept
      : blas_(std::exchange(other.blas_, nullptr)), solver_(std::exchange(other.solver_, nullptr)) {}
  ~Context() {
    if (blas_) cublasDestroy(blas_);
    if (solver_) cusolverDnDestroy(solver_);
  }

  /// The cuBLAS handle bound to @p stream.
  cublasHandle_t blas(cudaStream_t stream) {
    if (!blas_) HEADALIGN_CUDA_TRY(cublasCreate(&blas_));
    HEADALIGN_CUDA_TRY(cublasSetStream(blas_, stream));
    return blas_;
  }

  /// The cuSOLVER dense handle bound to @p stream.
  cusolverDnHandle_t solver(cudaStream_t stream) {
    if (!solver_) HEADALIGN_CUDA_TRY(cusolverDnCreate(&solver_));
    HEADALIGN_CUDA_TRY(cusolverDnSetStream(solver_, stream));
    return solver_;
  }

 private:
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
};

/// @brief @p count elements of device memory, allocated and freed in stream order
/// (cudaMallocAsync / cudaFreeAsync on @p stream).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::size_t count, cudaStream_t stream) : count_(count), stream_(stream) {
    if (count > 0)
      HEADALIGN_CUDA_TRY(cudaMallocAsync(reinterpret_cast<void**>(&data_), count * sizeof(T), stream));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), count_(std::exchange(o.count_, 0)), stream_(o.stream_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      count_ = std::exchange(o.count_, 0);
      stream_ = o.stream_;
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return count_; }

 private:
  void release() {
    if (data_) (void)cudaFreeAsync(data_, stream_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  std::size_t count_ = 0;
  cudaStream_t stream_ = nullptr;
};

}  // namespace cuda
}  // namespace headalign

#endif  // HEADALIGN_CUDA_COMMON_CUH
