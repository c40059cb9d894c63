/// @file io/hf_model.hpp
/// @brief Hugging Face model directories: config.json, single or sharded safetensors, and the
/// attention weights of each layer for the architectures headalign converts.
///
/// Supported `model_type`s: `llama` and `mistral` (half-split RoPE, optional explicit `head_dim`,
/// optional `attention_bias`, optional `partial_rotary_factor`), `qwen2` (q/k/v biases), `bert`
/// (no RoPE, all four biases; tensor names with or without the `bert.` prefix).
#ifndef HEADALIGN_IO_HF_MODEL_HPP
#define HEADALIGN_IO_HF_MODEL_HPP

#include "../rope.hpp"
#include "../transforms.hpp"
#include "safetensors.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace headalign::io {

/// @brief The attention layout family of a model.
enum class Architecture { Llama, Qwen2, Bert };

/// @brief What headalign needs from a model's config.json.
struct ModelConfig {
  std::string model_type;  ///< as in config.json
  Architecture architecture = Architecture::Llama;
  Index num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, hidden_size = 0;
  bool has_rope = true;  ///< false for BERT
  RopeSpec rope = {};    ///< pairing and rotary dims (half-split for Llama/Mistral/Qwen2)
  nlohmann::json json;   ///< the whole config, for writing it back
};

namespace detail {

inline std::string read_text_file(const std::string& path, std::uint64_t max_bytes = 64u << 20) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ::headalign::detail::throw_io_error("cannot open '" + path + "'");
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::int64_t>(in.tellg());
  if (size < 0 || static_cast<std::uint64_t>(size) > max_bytes)
    ::headalign::detail::throw_io_error("'" + path + "' is larger than " + std::to_string(max_bytes) +
                                        " bytes");
  in.seekg(0);
  std::string text(static_cast<std::size_t>(size), '\0');
  in.read(text.data(), size);
  if (!in) ::headalign::detail::throw_io_error("cannot read '" + path + "'");
  return text;
}

inline nlohmann::json parse_json_file(const std::string& path) {
  try {
    return nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    ::headalign::detail::throw_io_error("'" + path + "' is not valid JSON (" + e.what() + ")");
  }
}

/// A positive integer field of a JSON object; @p fallback (≥ 0) when absent, throws otherwise.
inline Index json_positive(const nlohmann::json& j, const std::string& key, const std::string& source,
                           Index fallback = -1) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback >= 0) return fallback;
    ::headalign::detail::throw_io_error(source + ": '" + key + "' is missing");
  }
  const auto& v = j[key];
  if (!v.is_number_integer() || v.get<std::int64_t>() <= 0 || v.get<std::int64_t>() > (std::int64_t(1) << 24))
    ::headalign::detail::throw_io_error(source + ": '" + key + "' = " + v.dump() +
                                        " is not a positive integer");
  return static_cast<Index>(v.get<std::int64_t>());
}

}  // namespace detail

/// @brief Reads the fields headalign needs from a parsed config.json.
/// @throws io_error for an unknown `model_type`, missing or invalid fields
inline ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source = "config.json") {
  if (!j.is_object()) ::headalign::detail::throw_io_error(source + " is not a JSON object");
  if (!j.contains("model_type") || !j["model_type"].is_string())
    ::headalign::detail::throw_io_error(source + ": 'model_type' is missing");
  ModelConfig c;
  c.json = j;
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type == "llama" || c.model_type == "mistral") {
    c.architecture = Architecture::Llama;
  } else if (c.model_type == "qwen2") {
    c.architecture = Architecture::Qwen2;
  } else if (c.model_type == "bert") {
    c.architecture = Architecture::Bert;
  } else {
    ::headalign::detail::throw_io_error(source + ": unsupported model_type '" + c.model_type +
                                        "' (supported: llama, mistral, qwen2, bert)");
  }
  c.hidden_size = detail::json_positive(j, "hidden_size", source);
  c.num_heads = detail::json_positive(j, "num_attention_heads", source);
  c.num_layers = detail::json_positive(j, "num_hidden_layers", source);
  c.num_kv_heads = detail::json_positive(j, "num_key_value_heads", source, c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    ::headalign::detail::throw_io_error(source + ": num_attention_heads (" + std::to_string(c.num_heads) +
                                        ") is not divisible by num_key_value_heads (" +
                                        std::to_string(c.num_kv_heads) + ")");
  if (c.architecture != Architecture::Bert && j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = detail::json_positive(j, "head_dim", source);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      ::headalign::detail::throw_io_error(source + ": hidden_size (" + std::to_string(c.hidden_size) +
                                          ") is not divisible by num_attention_heads (" +
                                          std::to_string(c.num_heads) + ")");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.has_rope = c.architecture != Architecture::Bert;
  if (c.has_rope) {
    c.rope.pairing = RopeSpec::Pairing::HalfSplit;
    c.rope.rotary_dims = 0;
    if (j.contains("partial_rotary_factor") && !j["partial_rotary_factor"].is_null()) {
      const auto& f = j["partial_rotary_factor"];
      if (!f.is_number() || !(f.get<double>() > 0) || f.get<double>() > 1)
        ::headalign::detail::throw_io_error(source + ": partial_rotary_factor = " + f.dump() +
                                            " is not in (0, 1]");
      c.rope.rotary_dims = static_cast<Index>(std::floor(static_cast<double>(c.head_dim) * f.get<double>()));
    }
    try {
      rotary_dims(c.rope, c.head_dim);
    } catch (const ::headalign::invalid_argument& e) {
      ::headalign::detail::throw_io_error(source + ": " + e.what());
    }
  }
  return c;
}

/// @brief A Hugging Face model directory opened for reading: config.json plus `model.safetensors`
/// or `model.safetensors.index.json` and its shards (all validated when opened).
class ModelCheckpoint {
 public:
  /// Tensor names of one layer's attention (bias names empty when the checkpoint has none).
  struct AttentionNames {
    std::string q, k, v, o, q_bias, k_bias, v_bias, o_bias;
  };

  /// @throws io_error when a file is missing or malformed, the architecture unknown, or the index
  ///         names shards outside the directory or tensors its shards do not hold
  explicit ModelCheckpoint(const std::string& dir) : dir_(dir) {
    config_ = parse_model_config(detail::parse_json_file(dir + "/config.json"), dir + "/config.json");
    const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
    if (std::ifstream(index).good()) {
      sharded_ = true;
      const nlohmann::json j = detail::parse_json_file(index);
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        ::headalign::detail::throw_io_error("'" + index + "' has no weight_map object");
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it.value().is_string())
          ::headalign::detail::throw_io_error("'" + index + "': shard of '" + it.key() + "' is not a string");
        const std::string file = it.value().get<std::string>();
        if (file.empty() || file.find('/') != std::string::npos || file.find('\\') != std::string::npos ||
            file == "." || file == "..")
          ::headalign::detail::throw_io_error("'" + index + "': shard name '" + file +
                                              "' is not a plain file name");
        open_shard(file);
        shard_of_[it.key()] = file;
      }
      for (const auto& kv : shard_of_)
        if (!readers_.at(kv.second)->contains(kv.first))
          ::headalign::detail::throw_io_error("'" + index + "' maps '" + kv.first + "' to '" + kv.second +
                                              "', which lacks it");
      for (const auto& file : shards_)
        for (const auto& name : readers_.at(file)->names())
          if (!shard_of_.count(name))
            ::headalign::detail::throw_io_error("shard '" + file + "' holds '" + name +
                                                "', which the index does not list");
    } else {
      open_shard("model.safetensors");
      for (const auto& name : readers_.at("model.safetensors")->names())
        shard_of_[name] = "model.safetensors";
    }
    if (config_.architecture == Architecture::Bert)
      bert_prefix_ = contains("encoder.layer.0.attention.self.query.weight") ? "" : "bert.";
  }

  const ModelConfig& config() const { return config_; }
  const std::string& directory() const { return dir_; }
  bool sharded() const { return sharded_; }
  /// Shard file names in the order first seen ("model.safetensors" when not sharded).
  const std::vector<std::string>& shards() const { return shards_; }
  bool contains(const std::string& name) const { return shard_of_.count(name) != 0; }
  /// The shard file that holds tensor @p name.
  const std::string& shard_of(const std::string& name) const {
    auto it = shard_of_.find(name);
    if (it == shard_of_.end())
      ::headalign::detail::throw_io_error("model '" + dir_ + "' has no tensor '" + name + "'");
    return it->second;
  }
  SafetensorsReader& reader(const std::string& shard) { return *readers_.at(shard); }
  SafetensorsReader& reader_for(const std::string& name) { return reader(shard_of(name)); }

  /// The attention tensor names of layer @p layer.
  AttentionNames attention_names(Index layer) const {
    AttentionNames n;
    const std::string i = std::to_string(layer);
    if (config_.architecture == Architecture::Bert) {
      const std::string p = bert_prefix_ + "encoder.layer." + i + ".attention.";
      n.q = p + "self.query.weight";
      n.k = p + "self.key.weight";
      n.v = p + "self.value.weight";
      n.o = p + "output.dense.weight";
      n.q_bias = p + "self.query.bias";
      n.k_bias = p + "self.key.bias";
      n.v_bias = p + "self.value.bias";
      n.o_bias = p + "output.dense.bias";
    } else {
      const std::string p = "model.layers." + i + ".self_attn.";
      n.q = p + "q_proj.weight";
      n.k = p + "k_proj.weight";
      n.v = p + "v_proj.weight";
      n.o = p + "o_proj.weight";
      n.q_bias = p + "q_proj.bias";
      n.k_bias = p + "k_proj.bias";
      n.v_bias = p + "v_proj.bias";
      n.o_bias = p + "o_proj.bias";
    }
    for (std::string* b : {&n.q_bias, &n.k_bias, &n.v_bias, &n.o_bias})
      if (!contains(*b)) b->clear();
    return n;
  }

  /// @brief Reads layer @p layer's attention weights (any floating dtype, converted to S).
  /// @throws io_error for missing tensors or shapes that disagree with config.json
  template <class S>
  AttentionWeights<S> read_attention(Index layer) {
    HEADALIGN_CHECK(layer >= 0 && layer < config_.num_layers,
                    "layer " << layer << " out of range for " << config_.num_layers << " layers");
    const AttentionNames n = attention_names(layer);
    const Index h = config_.num_heads, kv = config_.num_kv_heads, d = config_.head_dim,
                hid = config_.hidden_size;
    AttentionWeights<S> w;
    w.num_heads = h;
    w.num_kv_heads = kv;
    w.head_dim = d;
    auto matrix = [&](const std::string& name, Index rows, Index cols,
                      typename AttentionWeights<S>::Rows& out) {
      const TensorInfo& t = reader_for(name).info(name);
      if (t.shape.size() != 2 || t.shape[0] != rows || t.shape[1] != cols)
        ::headalign::detail::throw_io_error("tensor '" + name + "' has shape " + shape_string(t.shape) +
                                            ", config.json implies [" + std::to_string(rows) + ", " +
                                            std::to_string(cols) + "]");
      out.resize(rows, cols);
      reader_for(name).read(name, 0, static_cast<std::uint64_t>(rows * cols), out.data());
    };
    auto vector = [&](const std::string& name, Index size, typename AttentionWeights<S>::Vec& out) {
      if (name.empty()) return;
      const TensorInfo& t = reader_for(name).info(name);
      if (t.shape.size() != 1 || t.shape[0] != size)
        ::headalign::detail::throw_io_error("tensor '" + name + "' has shape " + shape_string(t.shape) +
                                            ", expected [" + std::to_string(size) + "]");
      out.resize(size);
      reader_for(name).read(name, 0, static_cast<std::uint64_t>(size), out.data());
    };
    matrix(n.q, h * d, hid, w.q);
    matrix(n.k, kv * d, hid, w.k);
    matrix(n.v, kv * d, hid, w.v);
    matrix(n.o, hid, h * d, w.o);
    vector(n.q_bias, h * d, w.q_bias);
    vector(n.k_bias, kv * d, w.k_bias);
    vector(n.v_bias, kv * d, w.v_bias);
    vector(n.o_bias, hid, w.o_bias);
    try {
      w.validate();
    } catch (const ::headalign::invalid_argument& e) {
      ::headalign::detail::throw_io_error("layer " + std::to_string(layer) + " of '" + dir_ +
                                          "': " + e.what());
    }
    return w;
  }

  static std::string shape_string(const std::vector<std::int64_t>& shape) {
    std::ostringstream os;
    os << "[";
    for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
    os << "]";
    return os.str();
  }

 private:
  void open_shard(const std::string& file) {
    if (readers_.count(file)) return;
    readers_[file] = std::make_unique<SafetensorsReader>(dir_ + "/" + file);
    shards_.push_back(file);
  }

  std::string dir_;
  ModelConfig config_;
  bool sharded_ = false;
  std::string bert_prefix_;
  std::vector<std::string> shards_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> readers_;
  std::map<std::string, std::string> shard_of_;
};

}  // namespace headalign::io

#endif  // HEADALIGN_IO_HF_MODEL_HPP
