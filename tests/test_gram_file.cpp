// io/gram_file.hpp: HeadGram files and Gram sets (with query moments) round-trip bit-exact, and
// every malformed or implausible file is an io_error; HeadGram::from_gram() and
// HeadMoments::from_moments(), through which they are read, validate what they take.
#include <headalign/io/gram_file.hpp>

#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>

using namespace headalign;
using headalign::test::gaussian;
using headalign::test::temp_path;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string write(const std::string& name, const std::string& content) {
  const std::string p = temp_path(name);
  std::ofstream(p, std::ios::binary) << content;
  return p;
}

}  // namespace

TEMPLATE_TEST_CASE("save_gram and load_gram round-trip bit-exact; bad files throw io_error", "[gram][io]", float, double) {
  using S = TestType;
  using Other = typename std::conditional<std::is_same<S, float>::value, double, float>::type;
  std::mt19937_64 rng(26);
  const Index h = 3, d = 4;
  HeadGram<S> g(h, d, true);
  g.add(gaussian<S>(50, h * d, rng));
  const std::string path = temp_path(std::string("gram_") + detail::scalar_name<S>() + ".safetensors");
  io::save_gram(path, g);
  const auto back = io::load_gram<S>(path);
  CHECK(back.num_heads() == h);
  CHECK(back.head_dim() == d);
  CHECK(back.tokens() == 50);
  CHECK(back.normalize_rows());
  CHECK(back.gram() == g.gram());  // bit-exact
  const auto other = io::load_gram<Other>(path);
  CHECK((other.gram().template cast<double>() - g.gram().template cast<double>()).cwiseAbs().maxCoeff() < 1e-6 * 50);

  // Corruptions.
  const std::string bytes = slurp(path);
  CHECK_THROWS_AS(io::load_gram<S>(write("trunc.st", bytes.substr(0, bytes.size() - 4))), headalign::io_error);
  CHECK_THROWS_AS(io::load_gram<S>(write("short.st", bytes.substr(0, 5))), headalign::io_error);
  CHECK_THROWS_AS(io::load_gram<S>(temp_path("does_not_exist.st")), headalign::io_error);
  std::string bad_meta = bytes;
  const auto pos = bad_meta.find("\"num_heads\":\"3\"");
  REQUIRE(pos != std::string::npos);
  bad_meta.replace(pos, 15, "\"num_heads\":\"x\"");
  CHECK_THROWS_WITH(io::load_gram<S>(write("meta.st", bad_meta)), Catch::Contains("num_heads"));
  std::string huge = bytes;
  huge[7] = '\x7f';  // header length ~ 9e18
  CHECK_THROWS_WITH(io::load_gram<S>(write("huge.st", huge)), Catch::Contains("header length"));
  // Data changed so that the matrix is not symmetric.
  std::string asym = bytes;
  asym[asym.size() - 2 * sizeof(S) - 1] ^= 0x40;
  CHECK_THROWS_AS(io::load_gram<S>(write("asym.st", asym)), headalign::io_error);
}

TEST_CASE("a symmetric Gram file that no real rows can produce is refused", "[gram][io]") {
  // G = [[1, 2], [2, 1]] is symmetric with a positive diagonal but |G_01| > √(G_00 G_11).
  io::SafetensorsWriter w;
  const double g[4] = {1, 2, 2, 1};
  w.add("gram", {2, 2}, g);
  for (const auto& kv : {std::pair<const char*, const char*>{"num_heads", "2"}, {"head_dim", "1"}, {"tokens", "3"},
                         {"normalize_rows", "0"}, {"format", "headalign.HeadGram"}, {"version", "1"}})
    w.set_metadata(kv.first, kv.second);
  const std::string path = temp_path("cauchy_schwarz.safetensors");
  w.write(path);
  CHECK_THROWS_AS(io::load_gram<double>(path), io_error);
  CHECK_THROWS_WITH(io::load_gram<double>(path), Catch::Contains("Cauchy–Schwarz") && Catch::Contains(path));
}

TEMPLATE_TEST_CASE("from_gram taking storage equals from_gram copying it", "[gram]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(27);
  HeadGram<S> g(3, 2, false);
  g.add(gaussian<S>(40, 6, rng));
  const auto copied = HeadGram<S>::from_gram(g.gram(), 3, 2, g.tokens());
  Matrix<S> storage = g.gram();
  storage.template triangularView<Eigen::StrictlyUpper>().setConstant(S(1e30));  // the upper triangle is not read
  const auto taken = HeadGram<S>::from_gram(std::move(storage), 3, 2, g.tokens());
  CHECK(taken.gram() == copied.gram());
  CHECK(taken.gram() == g.gram());
  CHECK(taken.tokens() == 40);
  Matrix<S> bad = g.gram();
  bad(4, 1) = std::numeric_limits<S>::quiet_NaN();
  CHECK_THROWS_WITH(HeadGram<S>::from_gram(std::move(bad), 3, 2, 40), Catch::Contains("NaN or Inf"));
  CHECK_THROWS_WITH(HeadGram<S>::from_gram(Matrix<S>(g.gram()), 2, 2, 40), Catch::Contains("expected (num_heads · head_dim)²"));
  CHECK_THROWS_WITH(HeadGram<S>::from_gram(Matrix<S>(g.gram()), 3, 2, -1), Catch::Contains("tokens (-1)"));
}

TEST_CASE("HeadMoments::from_moments takes valid moments and refuses others", "[gram]") {
  std::mt19937_64 rng(28);
  HeadMoments<double> m(3, 2);
  m.add(gaussian<double>(30, 6, rng));
  const auto back = HeadMoments<double>::from_moments({m.block(0), m.block(1), m.block(2)}, m.tokens());
  CHECK(back.tokens() == 30);
  for (Index h = 0; h < 3; ++h) CHECK(back.block(h) == m.block(h));
  CHECK_THROWS_AS(HeadMoments<double>::from_moments({}, 1), invalid_argument);
  CHECK_THROWS_WITH(HeadMoments<double>::from_moments({m.block(0), Matrix<double>::Identity(3, 3)}, 1), Catch::Contains("block 1"));
  Matrix<double> neg = m.block(0);
  neg(1, 1) = -1;
  CHECK_THROWS_WITH(HeadMoments<double>::from_moments({neg}, 1), Catch::Contains("negative diagonal"));
}

TEST_CASE("query moments round-trip through a safetensors file; bad ones throw io_error", "[gram][io]") {
  std::mt19937_64 rng(29);
  const Index h = 3, d = 4;
  HeadMoments<double> m(h, d);
  m.add(gaussian<double>(40, h * d, rng));
  const std::string path = temp_path("moments.safetensors");
  {
    io::SafetensorsWriter wr;
    io::write_moments(wr, "layers.0.query", m);
    wr.write(path);
  }
  io::SafetensorsReader r(path);
  const auto back = io::read_moments<double>(r, "layers.0.query");
  CHECK(back.tokens() == 40);
  for (Index i = 0; i < h; ++i) CHECK(back.block(i) == m.block(i));
  CHECK_THROWS_AS(io::read_moments<double>(r, "layers.1.query"), io_error);
  {
    // A tensor that is not a set of moments (wrong kind, then a non-symmetric block).
    io::SafetensorsWriter wr;
    io::write_moments(wr, "q", m);
    wr.set_metadata("q.kind", "gram");
    wr.write(path);
  }
  {
    io::SafetensorsReader r2(path);
    CHECK_THROWS_AS(io::read_moments<double>(r2, "q"), io_error);
  }
  {
    io::SafetensorsWriter wr;
    std::vector<double> data(static_cast<std::size_t>(h * d * d), 0.0);
    data[1] = 1.0;  // (0, 1) without (1, 0)
    wr.add("q", {h, d, d}, data.data());
    wr.set_metadata("q.kind", "moments");
    wr.set_metadata("q.num_heads", std::to_string(h));
    wr.set_metadata("q.head_dim", std::to_string(d));
    wr.set_metadata("q.tokens", "1");
    wr.write(path);
  }
  {
    io::SafetensorsReader r3(path);
    CHECK_THROWS_AS(io::read_moments<double>(r3, "q"), io_error);
  }
  std::remove(path.c_str());
}

TEST_CASE("Gram sets hold several named Grams", "[io][gram]") {
  std::mt19937_64 rng(9);
  HeadGram<double> a(2, 3, true), b(2, 3, false);
  a.add(gaussian<double>(20, 6, rng));
  b.add(gaussian<double>(30, 6, rng));
  const std::string path = temp_path("set.safetensors");
  io::save_grams<double>(path, {{"layers.0.key", &a}, {"layers.0.value", &b}});
  CHECK(io::is_gram_set(path));
  const auto a2 = io::load_gram<double>(path, "layers.0.key"), b2 = io::load_gram<double>(path, "layers.0.value");
  CHECK(a2.gram() == a.gram());
  CHECK(b2.gram() == b.gram());
  CHECK(a2.normalize_rows());
  CHECK_FALSE(b2.normalize_rows());
  CHECK(b2.tokens() == 30);
  CHECK_THROWS_WITH(io::load_gram<double>(path, "layers.1.key"), Catch::Contains("layers.1.key"));
  io::save_gram(temp_path("single.safetensors"), a);
  CHECK_FALSE(io::is_gram_set(temp_path("single.safetensors")));
  CHECK_THROWS_WITH(io::load_gram<double>(temp_path("single.safetensors"), "gram"), Catch::Contains("HeadGramSet"));
  CHECK_THROWS_WITH(io::load_gram<double>(path), Catch::Contains("headalign.HeadGram file"));

  // With query moments beside the Grams.
  HeadMoments<double> q(2, 3);
  q.add(gaussian<double>(25, 6, rng));
  io::save_grams<double>(path, {{"layers.0.key", &a}}, {{"layers.0.query", &q}});
  const auto q2 = io::load_moments<double>(path, "layers.0.query");
  CHECK(q2.tokens() == 25);
  CHECK(q2.block(1) == q.block(1));
  CHECK(io::load_gram<double>(path, "layers.0.key").gram() == a.gram());
  CHECK_THROWS_AS(io::load_moments<double>(path, "layers.0.key"), io_error);  // a Gram, not moments
}
