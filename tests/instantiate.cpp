#include <headalign/instantiate.hpp>
