// The float and double instantiations of the CUDA backend, compiled once by nvcc for the tests
// and benchmarks (which are plain C++ units).
#define HEADALIGN_CUDA_INSTANTIATE
#include <headalign/cuda/backend.cuh>
