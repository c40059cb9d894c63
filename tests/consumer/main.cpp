#include <headalign/headalign.hpp>

#include <cstdio>

int main() {
  // Two heads that are copies of each other: the Gram block between them equals each diagonal block.
  Eigen::MatrixXf x = Eigen::MatrixXf::Random(64, 8);
  x.rightCols(4) = x.leftCols(4);
  headalign::HeadGram<float> g(2, 4);
  g.add(x);
  const float diff = (g.block(0, 1) - g.block(0, 0)).cwiseAbs().maxCoeff();
  const auto groups = headalign::group_contiguous(8, 2);
  std::printf("headalign %s: block difference %g, %zu groups\n", HEADALIGN_VERSION_STRING, diff, groups.groups.size());
  return diff < 1e-4f && groups.groups.size() == 2 ? 0 : 1;
}
