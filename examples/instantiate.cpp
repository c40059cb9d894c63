// The SVD internals, compiled once for the examples that link headalign_examples_svd
// (HEADALIGN_EXTERN_TEMPLATES in their units).
#include <headalign/instantiate.hpp>
