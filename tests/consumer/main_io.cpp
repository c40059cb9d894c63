// headalign::io from a consumer: a Gram written and read back through io/gram_file.hpp, and the
// option names that headalign-convert and report.json use.
#include <headalign/io/convert_checkpoint.hpp>
#include <headalign/io/gram_file.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(32, 6);
  headalign::HeadGram<double> g(3, 2, true);
  g.add(x);
  const std::string path = std::string(argv[1]) + "/consumer_gram.safetensors";
  headalign::io::save_gram(path, g);
  const auto back = headalign::io::load_gram<double>(path);
  const bool same = back.gram() == g.gram() && back.tokens() == 32;
  std::printf("headalign::io %s: Gram round trip %s, default merge '%s'\n", HEADALIGN_VERSION_STRING, same ? "exact" : "differs",
              headalign::io::option_name(headalign::io::ConvertOptions{}.merge).c_str());
  return same ? 0 : 1;
}
