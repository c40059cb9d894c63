/// @file cuda/detail/procrustes_impl.cuh
/// @brief Definitions of procrustes_batched() (nvcc only; included by procrustes.cuh).
#ifndef HEADALIGN_CUDA_DETAIL_PROCRUSTES_IMPL_CUH
#define HEADALIGN_CUDA_DETAIL_PROCRUSTES_IMPL_CUH

#include "../procrustes.cuh"
#include "kernels.cuh"

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <vector>

namespace headalign {
namespace cuda {
namespace detail {

// ---------------------------------------------------------------- kernels (one block per matrix)

/// X_b = M_b/‖M_b‖_F (I when M_b = 0; 0 when M_b holds NaN/Inf, which verify refuses first). The norm is
/// taken as max|m|·‖M/max|m|‖_F in double, so no finite input overflows.
template <class S>
__global__ void scaled_start(BatchRef<const S> m, Index first, S* x, Index d) {
  const Index b = blockIdx.x, n = d * d;
  const S* a = m(first + b);
  S* xb = x + b * n;
  double largest = 0, nonfinite = 0;
  for (Index i = threadIdx.x; i < n; i += blockDim.x) {
    const double v = static_cast<double>(a[i]);
    if (!isfinite(v))
      nonfinite = 1;
    else
      largest = fmax(largest, fabs(v));
  }
  nonfinite = block_reduce(nonfinite, MaxOp{}, 0.0);
  largest = block_reduce(largest, MaxOp{}, 0.0);
  if (nonfinite > 0 || largest == 0) {
    for (Index i = threadIdx.x; i < n; i += blockDim.x)
      xb[i] = (nonfinite == 0 && i % (d + 1) == 0) ? S(1) : S(0);
    return;
  }
  double squares = 0;
  for (Index i = threadIdx.x; i < n; i += blockDim.x) {
    const double v = static_cast<double>(a[i]) / largest;
    squares += v * v;
  }
  const double norm = sqrt(block_reduce(squares, SumOp{}, 0.0));
  for (Index i = threadIdx.x; i < n; i += blockDim.x)
    xb[i] = static_cast<S>(static_cast<double>(a[i]) / largest / norm);
}

/// err[b] = ‖P_b − I‖_F and, when q is set, Q_b = a·I − c·P_b (in place when q == p).
template <class S>
__global__ void newton_schulz_update(const S* p, S* q, Index d, S a, S c, double* err) {
  const Index b = blockIdx.x, n = d * d;
  const S* pb = p + b * n;
  S* qb = q ? q + b * n : nullptr;
  double sum = 0;
  for (Index i = threadIdx.x; i < n; i += blockDim.x) {
    const bool diagonal = i % (d + 1) == 0;
    const S v = pb[i];
    const double e = static_cast<double>(v) - (diagonal ? 1.0 : 0.0);
    sum += e * e;
    if (qb) qb[i] = (diagonal ? a : S(0)) - c * v;
  }
  sum = block_reduce(sum, SumOp{}, 0.0);
  if (threadIdx.x == 0) err[b] = sqrt(sum);
}

/// Copies M_{first+b} to dst_b (scratch at stride d²) when dst is set, and sets bad[first+b] for
/// NaN/Inf when bad is set.
template <class S>
__global__ void gather(BatchRef<const S> m, Index first, S* dst, Index d, int* bad) {
  const Index b = blockIdx.x, n = d * d;
  const S* a = m(first + b);
  double nonfinite = 0;
  for (Index i = threadIdx.x; i < n; i += blockDim.x) {
    const S v = a[i];
    if (!isfinite(static_cast<double>(v))) nonfinite = 1;
    if (dst) dst[b * n + i] = v;
  }
  if (bad) {
    nonfinite = block_reduce(nonfinite, MaxOp{}, 0.0);
    if (threadIdx.x == 0) bad[first + b] = nonfinite > 0;
  }
}

/// R_{first+b} = X_b (when r is set) and scores[first+b] = tr(X_bᵀ M_{first+b}) = Σ x·m (in double).
template <class S>
__global__ void finish(const S* x, BatchRef<S> r, BatchRef<const S> m, S* scores, Index d, Index first) {
  const Index b = blockIdx.x, n = d * d;
  const S* xb = x + b * n;
  const S* a = m(first + b);
  S* rb = r.valid() ? r(first + b) : nullptr;
  double sum = 0;
  for (Index i = threadIdx.x; i < n; i += blockDim.x) {
    const S v = xb[i];
    sum += static_cast<double>(v) * static_cast<double>(a[i]);
    if (rb) rb[i] = v;
  }
  if (scores) {
    sum = block_reduce(sum, SumOp{}, 0.0);
    if (threadIdx.x == 0) scores[first + b] = static_cast<S>(sum);
  }
}

/// RoPE rotations in closed form: X_b block-diagonal per plane (identity elsewhere), and the
/// non-rotary block M[r:, r:] copied to rest_b (when r < d).
template <class S>
__global__ void rope_rotations(BatchRef<const S> m, Index first, S* x, Index d, Index rd, bool interleaved,
                               S* rest) {
  const Index b = blockIdx.x, n = d * d, half = rd / 2, k = d - rd;
  const S* a = m(first + b);
  S* xb = x + b * n;
  for (Index i = threadIdx.x; i < n; i += blockDim.x) xb[i] = S(0);
  __syncthreads();  // the zero fill before the planes
  for (Index p = threadIdx.x; p < half; p += blockDim.x) {
    const Index i = interleaved ? 2 * p : p, j = interleaved ? 2 * p + 1 : p + half;
    const PlaneRotation<S> t = rope_plane(a[i + i * d], a[i + j * d], a[j + i * d], a[j + j * d]);
    xb[i + i * d] = t.c;
    xb[i + j * d] = -t.s;
    xb[j + i * d] = t.s;
    xb[j + j * d] = t.c;
  }
  if (rest)
    for (Index e = threadIdx.x; e < k * k; e += blockDim.x) {
      const Index row = e % k, col = e / k;
      rest[b * k * k + e] = a[(rd + row) + (rd + col) * d];
    }
}

/// X_b[r:, r:] = Y_b (the non-rotary block's rotation, k × k at stride k²).
template <class S>
__global__ void place_rest(const S* y, S* x, Index d, Index rd) {
  const Index b = blockIdx.x, k = d - rd;
  for (Index e = threadIdx.x; e < k * k; e += blockDim.x) {
    const Index row = e % k, col = e / k;
    x[b * d * d + (rd + row) + (rd + col) * d] = y[b * k * k + e];
  }
}

// ---------------------------------------------------------------- host side

template <class T>
std::vector<T> to_host(const T* device, Index count, cudaStream_t stream) {
  std::vector<T> host(static_cast<std::size_t>(count));
  if (count > 0) {
    HEADALIGN_CUDA_TRY(cudaMemcpyAsync(host.data(), device, sizeof(T) * static_cast<std::size_t>(count),
                                       cudaMemcpyDeviceToHost, stream));
    HEADALIGN_CUDA_TRY(cudaStreamSynchronize(stream));
  }
  return host;
}

/// Throws invalid_argument naming the first matrix flagged in @p bad.
inline void check_inputs(const std::vector<int>& bad) {
  for (std::size_t i = 0; i < bad.size(); ++i)
    HEADALIGN_CHECK(bad[i] == 0, "matrix " << i << " of the batch contains NaN or Inf");
}

struct GesvdjParams {
  gesvdjInfo_t info = nullptr;
  GesvdjParams(double tolerance, int sweeps) {
    HEADALIGN_CUDA_TRY(cusolverDnCreateGesvdjInfo(&info));
    if (tolerance > 0) HEADALIGN_CUDA_TRY(cusolverDnXgesvdjSetTolerance(info, tolerance));
    HEADALIGN_CUDA_TRY(cusolverDnXgesvdjSetMaxSweeps(info, sweeps > 0 ? sweeps : 100));
  }
  GesvdjParams(const GesvdjParams&) = delete;
  GesvdjParams& operator=(const GesvdjParams&) = delete;
  ~GesvdjParams() { cusolverDnDestroyGesvdjInfo(info); }
};

inline cusolverStatus_t cusolver_gesvdj_size(cusolverDnHandle_t h, int d, const float* a, const float* s,
                                             const float* u, const float* v, int* lwork, gesvdjInfo_t p) {
  return cusolverDnSgesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 0, d, d, a, d, s, u, d, v, d, lwork, p);
}
inline cusolverStatus_t cusolver_gesvdj_size(cusolverDnHandle_t h, int d, const double* a, const double* s,
                                             const double* u, const double* v, int* lwork, gesvdjInfo_t p) {
  return cusolverDnDgesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 0, d, d, a, d, s, u, d, v, d, lwork, p);
}
inline cusolverStatus_t cusolver_gesvdj(cusolverDnHandle_t h, int d, float* a, float* s, float* u, float* v,
                                        float* w, int lwork, int* info, gesvdjInfo_t p) {
  return cusolverDnSgesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 0, d, d, a, d, s, u, d, v, d, w, lwork, info, p);
}
inline cusolverStatus_t cusolver_gesvdj(cusolverDnHandle_t h, int d, double* a, double* s, double* u,
                                        double* v, double* w, int lwork, int* info, gesvdjInfo_t p) {
  return cusolverDnDgesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 0, d, d, a, d, s, u, d, v, d, w, lwork, info, p);
}
inline cusolverStatus_t cusolver_gesvdj_batched_size(cusolverDnHandle_t h, int d, const float* a,
                                                     const float* s, const float* u, const float* v,
                                                     int* lwork, gesvdjInfo_t p, int count) {
  return cusolverDnSgesvdjBatched_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, d, d, a, d, s, u, d, v, d, lwork, p,
                                             count);
}
inline cusolverStatus_t cusolver_gesvdj_batched_size(cusolverDnHandle_t h, int d, const double* a,
                                                     const double* s, const double* u, const double* v,
                                                     int* lwork, gesvdjInfo_t p, int count) {
  return cusolverDnDgesvdjBatched_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, d, d, a, d, s, u, d, v, d, lwork, p,
                                             count);
}
inline cusolverStatus_t cusolver_gesvdj_batched(cusolverDnHandle_t h, int d, float* a, float* s, float* u,
                                                float* v, float* w, int lwork, int* info, gesvdjInfo_t p,
                                                int count) {
  return cusolverDnSgesvdjBatched(h, CUSOLVER_EIG_MODE_VECTOR, d, d, a, d, s, u, d, v, d, w, lwork, info, p,
                                  count);
}
inline cusolverStatus_t cusolver_gesvdj_batched(cusolverDnHandle_t h, int d, double* a, double* s, double* u,
                                                double* v, double* w, int lwork, int* info, gesvdjInfo_t p,
                                                int count) {
  return cusolverDnDgesvdjBatched(h, CUSOLVER_EIG_MODE_VECTOR, d, d, a, d, s, u, d, v, d, w, lwork, info, p,
                                  count);
}

/// One pass over matrices [first, first + count): fills X (count d × d at stride d²) with the
/// rotations. info[first..] (device, gesvdj only) cuSOLVER's
/// status; err (device, count) the last measured ‖XᵀX − I‖_F before the last step (NewtonSchulz).
template <class S>
class Pass {
 public:
  Pass(Context& context, BatchRef<const S> m, Index d, Index first, Index count, cudaStream_t stream,
       const PolarOptions& o, int* info, PolarReport& report)
      : ctx_(context),
        m_(m),
        d_(d),
        first_(first),
        count_(count),
        stream_(stream),
        o_(o),
        info_(info),
        report_(report),
        n_(static_cast<std::size_t>(d) * static_cast<std::size_t>(d)),
        x_(n_ * static_cast<std::size_t>(count), stream) {}

  S* x() { return x_.data(); }

  /// Scaled Newton–Schulz on the pass's matrices. Returns per-matrix ‖XᵀX − I‖_F measured before the last
  /// step (empty without verify).
  std::vector<double> newton_schulz() {
    DeviceBuffer<S> y(n_ * static_cast<std::size_t>(count_), stream_),
        p(n_ * static_cast<std::size_t>(count_), stream_);
    DeviceBuffer<double> err(static_cast<std::size_t>(count_), stream_);
    const unsigned blocks = static_cast<unsigned>(count_);
    scaled_start<S><<<blocks, kThreads, 0, stream_>>>(m_, first_, x_.data(), d_);
    HEADALIGN_CUDA_CHECK_LAUNCH("scaled_start");
    cublasHandle_t h = ctx_.blas(stream_);
    const int d = static_cast<int>(d_), c = static_cast<int>(count_);
    S* xs = x_.data();
    S* ys = y.data();
    int steps = 0;
    auto step = [&](double alpha, bool tf32) {
      gemm_batched<S>(h, CUBLAS_OP_T, CUBLAS_OP_N, d, xs, xs, p.data(), c, tf32);  // P = XᵀX
      newton_schulz_update<S>
          <<<blocks, kThreads, 0, stream_>>>(p.data(), p.data(), d_, static_cast<S>(1.5 * alpha),
                                             static_cast<S>(0.5 * alpha * alpha * alpha), err.data());
      HEADALIGN_CUDA_CHECK_LAUNCH("newton_schulz_update");
      gemm_batched<S>(h, CUBLAS_OP_N, CUBLAS_OP_N, d, xs, p.data(), ys, c, tf32);  // Y = X (aI − bP)
      std::swap(xs, ys);
      ++steps;
    };
    const std::vector<double> alphas = schedule<S>(o_);
    const int limit = o_.max_iterations > 0 ? o_.max_iterations : static_cast<int>(alphas.size()) + 40;
    const int closing = 2;  // FP32 steps at the end of a TF32 run
    // Scheduled steps, leaving room for at least one measured step under verify.
    for (std::size_t k = 0; k < alphas.size() && steps < (o_.verify ? limit - 1 : limit); ++k)
      step(alphas[k], o_.tf32 && static_cast<int>(alphas.size() - k) > closing);
    std::vector<double> errors;
    if (!o_.verify) {
      for (int k = 0; k < closing && steps < limit; ++k) step(1.0, false);
    } else {
      do {
        step(1.0, false);
        errors = to_host(err.data(), count_, stream_);
      } while (steps<limit&& * std::max_element(errors.begin(), errors.end())> o_.tolerance);
    }
    if (xs != x_.data())
      HEADALIGN_CUDA_TRY(cudaMemcpyAsync(x_.data(), xs, sizeof(S) * n_ * static_cast<std::size_t>(count_),
                                         cudaMemcpyDeviceToDevice, stream_));
    report_.iterations = std::max(report_.iterations, steps);
    return errors;
  }

  /// gesvdj on each matrix of @p which (indices relative to first), writing X_b = U_b V_bᵀ, with
  /// cuSOLVER's @p tolerance and @p sweeps (0: machine precision, 100).
  void gesvdj_loop(const std::vector<Index>& which, double tolerance, int sweeps) {
    if (which.empty()) return;
    DeviceBuffer<S> a(n_, stream_), u(n_, stream_), v(n_, stream_), s(static_cast<std::size_t>(d_), stream_);
    GesvdjParams params(tolerance, sweeps);
    cusolverDnHandle_t solver = ctx_.solver(stream_);
    cublasHandle_t h = ctx_.blas(stream_);
    const int d = static_cast<int>(d_);
    int lwork = 0;
    HEADALIGN_CUDA_TRY(
        cusolver_gesvdj_size(solver, d, a.data(), s.data(), u.data(), v.data(), &lwork, params.info));
    DeviceBuffer<S> work(static_cast<std::size_t>(std::max(lwork, 1)), stream_);
    for (Index b : which) {
      gather<S><<<1, kThreads, 0, stream_>>>(m_, first_ + b, a.data(), d_, nullptr);
      HEADALIGN_CUDA_CHECK_LAUNCH("gather");
      HEADALIGN_CUDA_TRY(cusolver_gesvdj(solver, d, a.data(), s.data(), u.data(), v.data(), work.data(),
                                         lwork, info_ + first_ + b, params.info));
      gemm_batched<S>(h, CUBLAS_OP_N, CUBLAS_OP_T, d, u.data(), v.data(),
                      x_.data() + static_cast<std::size_t>(b) * n_, 1, false);
    }
  }

  /// gesvdjBatched on the whole pass (d ≤ 32).
  void gesvdj_batched() {
    const std::size_t total = n_ * static_cast<std::size_t>(count_);
    DeviceBuffer<S> a(total, stream_), u(total, stream_), v(total, stream_),
        s(static_cast<std::size_t>(d_ * count_), stream_);
    const unsigned blocks = static_cast<unsigned>(count_);
    gather<S><<<blocks, kThreads, 0, stream_>>>(m_, first_, a.data(), d_, nullptr);
    HEADALIGN_CUDA_CHECK_LAUNCH("gather");
    GesvdjParams params(o_.tolerance, o_.max_iterations);
    cusolverDnHandle_t solver = ctx_.solver(stream_);
    const int d = static_cast<int>(d_), c = static_cast<int>(count_);
    int lwork = 0;
    HEADALIGN_CUDA_TRY(cusolver_gesvdj_batched_size(solver, d, a.data(), s.data(), u.data(), v.data(), &lwork,
                                                    params.info, c));
    DeviceBuffer<S> work(static_cast<std::size_t>(std::max(lwork, 1)), stream_);
    HEADALIGN_CUDA_TRY(cusolver_gesvdj_batched(solver, d, a.data(), s.data(), u.data(), v.data(), work.data(),
                                               lwork, info_ + first_, params.info, c));
    gemm_batched<S>(ctx_.blas(stream_), CUBLAS_OP_N, CUBLAS_OP_T, d, u.data(), v.data(), x_.data(), c, false);
  }

  /// RoPE rotations in closed form; the non-rotary block by Newton–Schulz.
  std::vector<double> rope() {
    const Index rd = rotary_dims(o_.rope, d_), k = d_ - rd;
    const std::size_t rest_size = static_cast<std::size_t>(k * k) * static_cast<std::size_t>(count_);
    DeviceBuffer<S> rest(rest_size, stream_);
    const unsigned blocks = static_cast<unsigned>(count_);
    rope_rotations<S><<<blocks, kThreads, 0, stream_>>>(m_, first_, x_.data(), d_, rd,
                                                        o_.rope.pairing == RopeSpec::Pairing::Interleaved,
                                                        k > 0 ? rest.data() : nullptr);
    HEADALIGN_CUDA_CHECK_LAUNCH("rope_rotations");
    if (k == 0) return {};
    PolarOptions inner = o_;
    inner.method = PolarMethod::NewtonSchulz;
    BatchRef<const S> rest_ref{rest.data(), k * k, nullptr};
    Pass<S> sub(ctx_, rest_ref, k, 0, count_, stream_, inner, nullptr, report_);
    std::vector<double> errors = sub.newton_schulz();
    place_rest<S><<<blocks, kThreads, 0, stream_>>>(sub.x(), x_.data(), d_, rd);
    HEADALIGN_CUDA_CHECK_LAUNCH("place_rest");
    return errors;
  }

  /// ‖X_bᵀX_b − I‖_F of every matrix of the pass (waits for the stream).
  std::vector<double> orthogonality_errors() {
    DeviceBuffer<S> p(n_ * static_cast<std::size_t>(count_), stream_);
    DeviceBuffer<double> err(static_cast<std::size_t>(count_), stream_);
    gemm_batched<S>(ctx_.blas(stream_), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(d_), x_.data(), x_.data(),
                    p.data(), static_cast<int>(count_), false);
    newton_schulz_update<S><<<static_cast<unsigned>(count_), kThreads, 0, stream_>>>(p.data(), nullptr, d_,
                                                                                     S(0), S(0), err.data());
    HEADALIGN_CUDA_CHECK_LAUNCH("newton_schulz_update");
    return to_host(err.data(), count_, stream_);
  }

  /// Writes R and the scores of the pass.
  void finish_to(BatchRef<S> r, S* scores) {
    finish<S><<<static_cast<unsigned>(count_), kThreads, 0, stream_>>>(x_.data(), r, m_, scores, d_, first_);
    HEADALIGN_CUDA_CHECK_LAUNCH("finish");
  }

 private:
  Context& ctx_;
  BatchRef<const S> m_;
  Index d_, first_, count_;
  cudaStream_t stream_;
  const PolarOptions& o_;
  int* info_;
  PolarReport& report_;
  std::size_t n_;
  DeviceBuffer<S> x_;
};

template <class S>
PolarReport run_batched(Context& context, BatchRef<const S> m, BatchRef<S> r, S* scores, Index d, Index batch,
                        cudaStream_t stream, const PolarOptions& given) {
  const PolarOptions o = resolved<S>(given, d, batch, m.valid(), r.valid() || scores != nullptr);
  PolarReport report;
  report.method = o.method;
  report.checked = o.verify;
  report.converged = o.verify;
  if (o.verify) report.max_orthogonality_error = 0;
  if (batch == 0) return report;
  const std::size_t n = static_cast<std::size_t>(d) * static_cast<std::size_t>(d);
  // X, Y, P (NewtonSchulz) or X, A, U, V (gesvdjBatched): four d × d matrices per matrix at most.
  const std::size_t per_matrix = 4 * n * sizeof(S);
  const Index chunk =
      std::max<Index>(1, std::min<Index>({batch, static_cast<Index>(o.scratch_bytes / per_matrix),
                                          Index(std::numeric_limits<int>::max() / 4)}));
  DeviceBuffer<int> info(static_cast<std::size_t>(batch), stream);
  HEADALIGN_CUDA_TRY(cudaMemsetAsync(info.data(), 0, sizeof(int) * static_cast<std::size_t>(batch), stream));
  const bool gesvdj = o.method == PolarMethod::GesvdjLoop || o.method == PolarMethod::GesvdjBatched;
  if (o.verify) {
    // Every input is checked before the first output is written (one read of the batch).
    DeviceBuffer<int> bad(static_cast<std::size_t>(batch), stream);
    for (Index first = 0; first < batch; first += chunk) {
      const Index count = std::min(chunk, batch - first);
      gather<S><<<static_cast<unsigned>(count), kThreads, 0, stream>>>(m, first, nullptr, d, bad.data());
      HEADALIGN_CUDA_CHECK_LAUNCH("gather");
    }
    check_inputs(to_host(bad.data(), batch, stream));
  }
  for (Index first = 0; first < batch; first += chunk) {
    const Index count = std::min(chunk, batch - first);
    Pass<S> pass(context, m, d, first, count, stream, o, info.data(), report);
    std::vector<double> errors;
    switch (o.method) {
      case PolarMethod::NewtonSchulz:
        errors = pass.newton_schulz();
        break;
      case PolarMethod::GesvdjBatched:
        pass.gesvdj_batched();
        break;
      case PolarMethod::GesvdjLoop: {
        std::vector<Index> all(static_cast<std::size_t>(count));
        for (Index i = 0; i < count; ++i) all[static_cast<std::size_t>(i)] = i;
        pass.gesvdj_loop(all, o.tolerance, o.max_iterations);
        break;
      }
      case PolarMethod::Rope:
        errors = pass.rope();
        break;
    }
    if (o.verify) {
      std::vector<Index> missed;
      for (std::size_t i = 0; i < errors.size(); ++i)
        if (!(errors[i] <= o.tolerance)) missed.push_back(static_cast<Index>(i));
      if (gesvdj) {
        const std::vector<int> status = to_host(info.data() + first, count, stream);
        for (std::size_t i = 0; i < status.size(); ++i)
          if (status[i] != 0) missed.push_back(static_cast<Index>(i));
      }
      report.not_converged += static_cast<Index>(missed.size());
      if (!missed.empty() && o.fallback && o.method != PolarMethod::Rope && !gesvdj) {
        pass.gesvdj_loop(missed, 0.0, 0);  // cuSOLVER's defaults, not the iteration's tolerance
        report.recomputed += static_cast<Index>(missed.size());
        const std::vector<int> status = to_host(info.data() + first, count, stream);
        for (Index i : missed)
          if (status[static_cast<std::size_t>(i)] != 0) report.converged = false;
      } else if (!missed.empty()) {
        report.converged = false;
      }
      for (double e : pass.orthogonality_errors())
        report.max_orthogonality_error = std::max(report.max_orthogonality_error, e);
    }
    pass.finish_to(r, scores);
  }
  if (o.verify) HEADALIGN_CUDA_TRY(cudaStreamSynchronize(stream));
  return report;
}

}  // namespace detail

template <class S>
PolarReport procrustes_batched(Context& context, const S* m, S* r, S* scores, Index d, Index batch,
                               cudaStream_t stream, const PolarOptions& options) {
  static_assert(std::is_same<S, float>::value || std::is_same<S, double>::value,
                "headalign: float or double matrices");
  return detail::run_batched<S>(context, detail::BatchRef<const S>{m, d * d, nullptr},
                                detail::BatchRef<S>{r, d * d, nullptr}, scores, d, batch, stream, options);
}

template <class S>
PolarReport procrustes_batched(Context& context, const S* const* m, S* const* r, S* scores, Index d,
                               Index batch, cudaStream_t stream, const PolarOptions& options) {
  static_assert(std::is_same<S, float>::value || std::is_same<S, double>::value,
                "headalign: float or double matrices");
  return detail::run_batched<S>(context, detail::BatchRef<const S>{nullptr, 0, m},
                                detail::BatchRef<S>{nullptr, 0, r}, scores, d, batch, stream, options);
}

}  // namespace cuda
}  // namespace headalign

#endif  // HEADALIGN_CUDA_DETAIL_PROCRUSTES_IMPL_CUH
