// procrustes_npy: align two activation matrices stored as .npy files — the research-code use.
//
//   procrustes_npy A.npy B.npy [--alignment orthogonal|rotation|rope|none] [--save-rotation R.npy]
//
// A and B are n × d (any float or integer dtype, either byte order, C or Fortran order, .npy
// versions 1–3). The program finds the transform R of the chosen set that maximises tr(Rᵀ AᵀB),
// i.e. brings A R closest to B, and prints the score and how close the rows are before and after.
// The arrays are read with headalign's validated .npy reader into xtensor containers and passed
// to the xtensor overloads (headalign/interop/xtensor.hpp) without another copy.
#include <headalign/interop/xtensor.hpp>
#include <headalign/io/npy.hpp>

#include <xtensor/xadapt.hpp>

#include <cstdio>
#include <exception>
#include <string>

using namespace headalign;

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: procrustes_npy A.npy B.npy [--alignment orthogonal|rotation|rope|none] [--save-rotation R.npy]\n");
  return 2;
}

// Mean over rows of cos(a_t, b_t), rows of zero length skipped.
template <class MA, class MB>
double mean_row_cosine(const MA& a, const MB& b) {
  double sum = 0;
  Index counted = 0;
  for (Index t = 0; t < a.rows(); ++t) {
    const double na = a.row(t).norm(), nb = b.row(t).norm();
    if (na == 0 || nb == 0) continue;
    sum += a.row(t).dot(b.row(t)) / (na * nb);
    ++counted;
  }
  return counted ? sum / static_cast<double>(counted) : 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string a_path, b_path, save, alignment = "orthogonal";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--alignment" && i + 1 < argc) {
      alignment = argv[++i];
    } else if (arg == "--save-rotation" && i + 1 < argc) {
      save = argv[++i];
    } else if (!arg.empty() && arg[0] == '-') {
      return usage();
    } else if (a_path.empty()) {
      a_path = arg;
    } else if (b_path.empty()) {
      b_path = arg;
    } else {
      return usage();
    }
  }
  if (b_path.empty()) return usage();
  const Alignment al = alignment == "orthogonal" ? Alignment::Orthogonal
                       : alignment == "rotation" ? Alignment::Rotation
                       : alignment == "rope"     ? Alignment::Rope
                       : alignment == "none"     ? Alignment::None
                                                 : static_cast<Alignment>(-1);
  if (al == static_cast<Alignment>(-1)) return usage();
  try {
    io::NpyArray<double> a = io::read_npy<double>(a_path), b = io::read_npy<double>(b_path);
    for (const auto* x : {&a, &b})
      if (x->info.shape.size() != 2)
        throw invalid_argument("expected 2-D arrays (tokens × dims); got " + std::to_string(x->info.shape.size()) + " dimensions");
    if (a.info.shape != b.info.shape)
      throw invalid_argument("A is " + std::to_string(a.info.shape[0]) + " × " + std::to_string(a.info.shape[1]) + " but B is " +
                             std::to_string(b.info.shape[0]) + " × " + std::to_string(b.info.shape[1]));
    const std::array<std::size_t, 2> shape = {static_cast<std::size_t>(a.info.shape[0]), static_cast<std::size_t>(a.info.shape[1])};
    // xtensor views of the read buffers (no copy), then Eigen views of those (no copy either).
    auto xa = xt::adapt(a.data, shape), xb = xt::adapt(b.data, shape);
    const auto ea = as_eigen(xa), eb = as_eigen(xb);
    const xt::xtensor<double, 2> m = to_xtensor(ea.transpose() * eb);  // AᵀB, d × d
    const ProcrustesResult<double> r = procrustes(m, al);
    const Matrix<double> aligned = ea * r.rotation;
    std::printf("A %s, B %s: %zu tokens × %zu dims (%s, %s)\n", a_path.c_str(), b_path.c_str(), shape[0], shape[1],
                a.info.descr.c_str(), b.info.descr.c_str());
    std::printf("alignment %s: score tr(R^T A^T B) = %.6g (identity: %.6g)\n", alignment.c_str(), r.score, ea.cwiseProduct(eb).sum());
    std::printf("mean row cosine: before %.4f, after %.4f\n", mean_row_cosine(ea, eb), mean_row_cosine(aligned, eb));
    const double nb = eb.norm() > 0 ? eb.norm() : 1.0;
    std::printf("relative residual |A R - B| / |B|: before %.4f, after %.4f\n", (ea - eb).norm() / nb, (aligned - eb).norm() / nb);
    if (!save.empty()) {
      io::write_npy(save, r.rotation);
      std::printf("wrote %s (%zu × %zu float64)\n", save.c_str(), shape[1], shape[1]);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "procrustes_npy: error: %s\n", e.what());
    return 1;
  }
}
