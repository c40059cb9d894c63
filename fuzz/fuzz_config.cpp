// Fuzz target: config.json (and model.safetensors.index.json) handling. The input is the text
// of config.json, optionally followed by a NUL byte and the text of an index; the directory also
// holds fixed shards with LLaMA/Qwen2-style layers 0 and 1 (hidden 8, 4 heads of 2) and a BERT
// layer 0 (hidden 8). Every layer the config names is read back and checked.
#include <headalign/io/hf_model.hpp>

#include "fuzz_common.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>

using namespace headalign;

namespace {

void add(io::SafetensorsWriter& w, const std::string& name, std::vector<std::int64_t> shape, float seed) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = seed + 0.125f * static_cast<float>(i % 13) - 0.5f;
  w.add(name, shape, v.data());
}

void add_llama_layer(io::SafetensorsWriter& w, int layer) {
  const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
  const float s = static_cast<float>(layer);
  for (const char* m : {"q", "k", "v"}) {
    add(w, p + m + "_proj.weight", {8, 8}, s);
    add(w, p + m + "_proj.bias", {8}, s);
  }
  add(w, p + "o_proj.weight", {8, 8}, s + 1);
}

// The fixed shards, written once per process.
const std::string& model_dir() {
  static const std::string dir = [] {
    const std::string d = fuzz::scratch_path("model");
    std::filesystem::create_directories(d);
    io::SafetensorsWriter all, a, b;
    add_llama_layer(all, 0);
    add_llama_layer(all, 1);
    for (const char* m : {"query", "key", "value"}) {
      add(all, std::string("encoder.layer.0.attention.self.") + m + ".weight", {8, 8}, 2);
      add(all, std::string("encoder.layer.0.attention.self.") + m + ".bias", {8}, 2);
    }
    add(all, "encoder.layer.0.attention.output.dense.weight", {8, 8}, 3);
    add(all, "encoder.layer.0.attention.output.dense.bias", {8}, 3);
    add_llama_layer(a, 0);
    add_llama_layer(b, 1);
    all.write(d + "/model.safetensors");
    a.write(d + "/model-00001-of-00002.safetensors");
    b.write(d + "/model-00002-of-00002.safetensors");
    return d;
  }();
  return dir;
}

void write(const std::string& path, const char* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data, static_cast<std::streamsize>(size));
  if (!out) fuzz::finding("cannot write " + path);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string dir = model_dir();
  const char* text = reinterpret_cast<const char*>(data);
  const char* nul = static_cast<const char*>(std::memchr(text, '\0', size));
  const std::size_t config_size = nul ? static_cast<std::size_t>(nul - text) : size;
  write(dir + "/config.json", text, config_size);
  const std::string index = dir + "/model.safetensors.index.json";
  if (nul)
    write(index, nul + 1, size - config_size - 1);
  else
    std::filesystem::remove(index);

  fuzz::expect_contract([&] {
    io::ModelCheckpoint ckpt(dir);
    const io::ModelConfig& c = ckpt.config();
    if (c.num_heads <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0 || c.num_heads % c.num_kv_heads != 0)
      fuzz::finding("an accepted config has inconsistent head counts");
    if (c.has_rope && rotary_dims(c.rope, c.head_dim) % 2 != 0) fuzz::finding("odd rotary dimensions accepted");
    for (Index layer = 0; layer < std::min<Index>(c.num_layers, 3); ++layer) {
      fuzz::expect_contract([&] {
        const AttentionWeights<float> w = ckpt.read_attention<float>(layer);
        w.validate();
        if (w.q.rows() != c.num_heads * c.head_dim || w.k.rows() != c.num_kv_heads * c.head_dim ||
            w.q.cols() != c.hidden_size || w.o.rows() != c.hidden_size)
          fuzz::finding("read_attention returned shapes that disagree with config.json");
      });
    }
  });
  return 0;
}
