// Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/), all produced by the
// library's own writers or spelled out here, so they can be regenerated:
//   make_seeds fuzz/corpus
// The .npy seeds are copies of tests/data/npy (files NumPy wrote).
#include <headalign/headalign.hpp>
#include <headalign/io/gram_file.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

using namespace headalign;
namespace fs = std::filesystem;

namespace {

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::vector<float> values(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

void safetensors_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  {
    io::SafetensorsWriter w;
    const auto v = values(12, 1);
    w.add("a", {3, 4}, v.data());
    w.set_metadata("format", "pt");
    w.write((dir / "f32.safetensors").string());
  }
  {
    io::SafetensorsWriter w;
    const auto v = values(6, 2);
    w.add_as("half", io::Dtype::F16, {2, 3}, v.data());
    w.add_as("bf", io::Dtype::BF16, {6}, v.data());
    w.add_as("dbl", io::Dtype::F64, {3, 2}, v.data());
    w.write((dir / "mixed.safetensors").string());
  }
  {
    io::SafetensorsWriter w;
    w.add_raw("ids", io::Dtype::I64, {2}, std::vector<unsigned char>(16, 1));
    w.add_raw("empty", io::Dtype::F32, {0, 4}, {});
    w.write((dir / "int_and_empty.safetensors").string());
  }
  {
    io::SafetensorsWriter w;
    w.write((dir / "no_tensors.safetensors").string());
  }
}

void gram_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> g;
  auto activations = [&](Index n, Index dim) {
    Matrix<double> x(n, dim);
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < dim; ++j) x(i, j) = g(rng);
    return x;
  };
  {
    HeadGram<double> k(4, 2, true);
    k.add(activations(16, 8));
    io::save_gram((dir / "single_cos.safetensors").string(), k);
  }
  for (bool cos : {true, false}) {
    HeadGram<double> k(4, 2, cos), v(4, 2, cos);
    HeadMoments<double> q(4, 2);
    k.add(activations(16, 8));
    v.add(activations(16, 8));
    q.add(activations(16, 8));
    io::save_grams<double>((dir / (cos ? "set_cos.safetensors" : "set_dist.safetensors")).string(),
                       {{"layers.0.key", &k}, {"layers.0.value", &v}}, {{"layers.0.query", &q}});
  }
  {
    HeadGram<float> k(3, 3, false), v(3, 3, false);
    k.add(activations(5, 9).cast<float>().eval());
    v.add(activations(5, 9).cast<float>().eval());
    io::save_grams<float>((dir / "set_f32_no_queries.safetensors").string(), {{"layers.0.key", &k}, {"layers.0.value", &v}});
  }
}

void config_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  write_text(dir / "llama.json",
             R"({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2})");
  write_text(dir / "qwen2.json",
             R"({"model_type": "qwen2", "hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2})");
  write_text(dir / "mistral_head_dim.json",
             R"({"model_type": "mistral", "hidden_size": 8, "head_dim": 2, "num_attention_heads": 4, "num_hidden_layers": 1, "partial_rotary_factor": 0.5})");
  write_text(dir / "bert.json",
             R"({"model_type": "bert", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1})");
  std::string sharded =
      R"({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 4, "num_hidden_layers": 2})";
  sharded += '\0';
  sharded += R"({"metadata": {}, "weight_map": {)";
  const char* parts[] = {"q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias", "o_proj.weight"};
  bool first = true;
  for (int layer = 0; layer < 2; ++layer)
    for (const char* p : parts) {
      sharded += std::string(first ? "" : ", ") + "\"model.layers." + std::to_string(layer) + ".self_attn." + p + "\": \"model-0000" +
                 std::to_string(layer + 1) + "-of-00002.safetensors\"";
      first = false;
    }
  sharded += "}}";
  write_text(dir / "llama_sharded.bin", sharded);
}

void convert_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  std::mt19937_64 rng(4);
  // Parameter bytes (decoded in fuzz_convert.cpp: heads, KV heads, head dim, alignment and
  // grouping flags, merge flags, tokens, hidden size, scale), then a random payload.
  const std::vector<std::vector<std::uint8_t>> params = {
      {3, 1, 2, 0x06, 0x00, 7, 7, 128},
      {3, 1, 3, 0x06, 0x03, 7, 7, 128},
      {5, 2, 3, 0x02, 0x01, 11, 9, 128},
      {4, 3, 5, 0x4a, 0x16, 3, 5, 128},
      {1, 0, 1, 0x36, 0x4a, 2, 4, 200},
      {2, 0, 0, 0x80, 0x02, 0, 0, 60},
      {3, 2, 3, 0x8e, 0x23, 5, 6, 190},
      {3, 250, 3, 0x06, 0x00, 4, 4, 128},
  };
  int i = 0;
  for (const auto& p : params) {
    std::string bytes(p.begin(), p.end());
    for (int j = 0; j < 512; ++j) bytes += static_cast<char>(rng() & 0xff);
    write_text(dir / ("params_" + std::to_string(i++) + ".bin"), bytes);
  }
  std::string raw(8, '\0');
  raw[0] = 3;
  raw[2] = 3;
  raw[4] = static_cast<char>(0x80);  // raw float bit patterns
  for (float x : {1.0f, -2.5f, 3e38f, 1e-40f, 0.0f, 7.0f, -1e-20f, 1e20f}) raw.append(reinterpret_cast<const char*>(&x), 4);
  write_text(dir / "raw_floats.bin", raw);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_seeds CORPUS_DIR NPY_TEST_DATA_DIR\n");
    return 2;
  }
  const fs::path out(argv[1]);
  safetensors_seeds(out / "safetensors");
  gram_seeds(out / "gram_file");
  config_seeds(out / "config");
  convert_seeds(out / "convert");
  fs::create_directories(out / "npy");
  for (const auto& e : fs::directory_iterator(argv[2]))
    if (e.path().extension() == ".npy") fs::copy_file(e.path(), out / "npy" / e.path().filename(), fs::copy_options::overwrite_existing);
  std::printf("seeds written to %s\n", out.string().c_str());
  return 0;
}
