// The SVD internals, compiled once for all fuzz targets (HEADALIGN_EXTERN_TEMPLATES elsewhere).
#include <headalign/instantiate.hpp>
