// align_heads: align one attention head's activations onto another's and report how alike they are.
//
//   align_heads [--alignment orthogonal|rotation|rope|none] [--dim D] [--tokens N] [--noise S] [--seed K]
//   align_heads [--alignment ...] A.csv B.csv
//
// Without files, head B is planted as a rotated, noisy copy of a random head A, and the recovered
// rotation is compared with the planted one. With files, A and B are n × d matrices of
// comma- or space-separated numbers (one token per line).
#include <headalign/headalign.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using headalign::Index;
using Mat = headalign::Matrix<double>;

[[noreturn]] void usage(const std::string& error) {
  std::cerr << "align_heads: " << error << "\n"
            << "usage: align_heads [--alignment orthogonal|rotation|rope|none] [--dim D] [--tokens N] [--noise S]\n"
            << "                   [--seed K] [A.csv B.csv]\n";
  std::exit(2);
}

long parse_int(const std::string& flag, const std::string& value, long lo, long hi) {
  char* end = nullptr;
  const long v = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || v < lo || v > hi)
    usage(flag + " needs an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + value + "'");
  return v;
}

Mat read_matrix(const std::string& path) {
  std::ifstream in(path);
  if (!in) usage("cannot open '" + path + "'");
  std::vector<std::vector<double>> rows;
  std::string line;
  while (std::getline(in, line)) {
    for (char& c : line)
      if (c == ',') c = ' ';
    std::istringstream ls(line);
    std::vector<double> row;
    std::string tok;
    while (ls >> tok) {
      char* end = nullptr;
      const double v = std::strtod(tok.c_str(), &end);
      if (*end != '\0') usage("'" + path + "': '" + tok + "' is not a number");
      row.push_back(v);
    }
    if (row.empty()) continue;
    if (!rows.empty() && row.size() != rows[0].size())
      usage("'" + path + "': line " + std::to_string(rows.size() + 1) + " has " + std::to_string(row.size()) +
            " values, the first has " + std::to_string(rows[0].size()));
    rows.push_back(std::move(row));
  }
  if (rows.empty()) usage("'" + path + "' holds no numbers");
  Mat m(static_cast<Index>(rows.size()), static_cast<Index>(rows[0].size()));
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
  return m;
}

double mean_cosine(const Mat& a, const Mat& b) {
  double s = 0;
  for (Index t = 0; t < a.rows(); ++t) {
    const double den = a.row(t).norm() * b.row(t).norm();
    s += den > 0 ? a.row(t).dot(b.row(t)) / den : 0.0;
  }
  return s / static_cast<double>(a.rows());
}

}  // namespace

int main(int argc, char** argv) {
  headalign::Alignment alignment = headalign::Alignment::Orthogonal;
  std::string alignment_name = "orthogonal";
  long dim = 64, tokens = 2048, seed = 0;
  double noise = 0.5;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--alignment") {
      alignment_name = value();
      if (alignment_name == "orthogonal") alignment = headalign::Alignment::Orthogonal;
      else if (alignment_name == "rotation") alignment = headalign::Alignment::Rotation;
      else if (alignment_name == "rope") alignment = headalign::Alignment::Rope;
      else if (alignment_name == "none") alignment = headalign::Alignment::None;
      else usage("unknown alignment '" + alignment_name + "'");
    } else if (arg == "--dim") {
      dim = parse_int(arg, value(), 2, 4096);
    } else if (arg == "--tokens") {
      tokens = parse_int(arg, value(), 1, 10000000);
    } else if (arg == "--seed") {
      seed = parse_int(arg, value(), 0, 1L << 40);
    } else if (arg == "--noise") {
      const std::string v = value();
      char* end = nullptr;
      noise = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(noise >= 0)) usage("--noise needs a non-negative number, got '" + v + "'");
    } else if (arg == "-h" || arg == "--help") {
      usage("aligns head A onto head B by orthogonal Procrustes");
    } else if (!arg.empty() && arg[0] == '-') {
      usage("unknown option '" + arg + "'");
    } else {
      files.push_back(arg);
    }
  }
  if (!files.empty() && files.size() != 2) usage("give two files (A and B) or none");

  try {
    Mat a, b, planted;
    if (files.empty()) {
      std::mt19937_64 rng(static_cast<std::uint64_t>(seed));
      std::normal_distribution<double> normal;
      a.resize(tokens, dim);
      for (Index i = 0; i < a.size(); ++i) a.data()[i] = normal(rng);
      Mat g(dim, dim), e(tokens, dim);
      for (Index i = 0; i < g.size(); ++i) g.data()[i] = normal(rng);
      for (Index i = 0; i < e.size(); ++i) e.data()[i] = normal(rng);
      // A rotation from the set being searched, so that it can be recovered.
      planted = headalign::procrustes(g, alignment == headalign::Alignment::None ? headalign::Alignment::Orthogonal
                                                                                : alignment)
                    .rotation;
      b = a * planted + noise * e;
      std::printf("planted: B = A·Q + %.3g·noise, %ld tokens × %ld dims, seed %ld\n", noise, tokens, dim, seed);
    } else {
      a = read_matrix(files[0]);
      b = read_matrix(files[1]);
    }
    // Gram space: the statistics of both heads in one accumulator, then the d × d block A^T B.
    headalign::HeadGram<double> gram(2, a.cols(), /*normalize_rows=*/true);
    if (a.rows() != b.rows() || a.cols() != b.cols())
      throw headalign::invalid_argument("headalign: A is " + std::to_string(a.rows()) + " × " + std::to_string(a.cols()) +
                                        " but B is " + std::to_string(b.rows()) + " × " + std::to_string(b.cols()));
    Mat both(a.rows(), 2 * a.cols());
    both << a, b;
    gram.add(both);
    const auto result = headalign::procrustes(gram.block(0, 1), alignment);
    const auto cos = headalign::similarity_matrix(gram, alignment, headalign::Metric::Cosine);
    const auto dist = headalign::similarity_matrix(gram, alignment, headalign::Metric::Distance);
    std::printf("alignment: %s\n", alignment_name.c_str());
    std::printf("mean cosine before alignment:  %.6f\n", mean_cosine(a, b));
    std::printf("mean cosine after alignment:   %.6f  (Gram space: %.6f)\n", mean_cosine(a * result.rotation, b), cos(0, 1));
    std::printf("mean squared distance after (unit rows): %.6f\n", -dist(0, 1));
    std::printf("orthogonality error |R^T R - I|_max: %.3g\n",
                (result.rotation.transpose() * result.rotation - Mat::Identity(a.cols(), a.cols())).cwiseAbs().maxCoeff());
    if (planted.size() != 0)
      std::printf("recovered vs planted rotation |R - Q|_max: %.3g\n", (result.rotation - planted).cwiseAbs().maxCoeff());
  } catch (const std::exception& e) {
    std::cerr << "align_heads: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
