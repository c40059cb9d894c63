// The CUDA backend's headers from a plain C++ unit: declarations, the Context, the error macro
// and the host-side math; runs with or without a GPU.
#include <headalign/cuda/backend.cuh>

#include <cstdio>

int main() {
  headalign::cuda::Context context;  // handles are created on first use
  HEADALIGN_CUDA_TRY(cudaSuccess);
  const auto steps = headalign::cuda::newton_schulz_scalings(1e-4, 1e-6);
  std::printf("headalign::cuda: %d device(s), %zu scaled Newton-Schulz steps for l0 = 1e-4\n",
              headalign::cuda::device_count(), steps.size());
  return steps.empty() ? 1 : 0;
}
