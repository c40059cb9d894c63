// A small BERT sentence encoder (sentence-transformers style: mean pooling + L2 normalisation)
// over a Hugging Face checkpoint read with headalign's own safetensors reader, with GQA
// attention (`num_key_value_heads`, Hugging Face repeat_kv) and a hook that sees every layer's
// key and value projections — how an inference engine feeds headalign's HeadGram.
//
// Tokenizer: BERT's basic tokenizer (clean, lower-case, strip accents, split on whitespace and
// punctuation, CJK characters apart) and greedy longest-match WordPiece on vocab.txt. Lower-casing
// and accent stripping cover ASCII and Latin-1; other scripts pass through unchanged (exact for
// the English text of the demo).
#ifndef HEADALIGN_EXAMPLES_BERT_RUNNER_HPP
#define HEADALIGN_EXAMPLES_BERT_RUNNER_HPP

#include <headalign/io/hf_model.hpp>
#include <headalign/io/safetensors.hpp>
#include <headalign/transforms.hpp>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace bert {

using headalign::Index;
using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using VecF = Eigen::VectorXf;

// ----------------------------------------------------------------------------------------------
// Tokenizer
// ----------------------------------------------------------------------------------------------

/// Decodes UTF-8 into code points (invalid bytes become U+FFFD).
inline std::vector<char32_t> utf8_decode(const std::string& s) {
  std::vector<char32_t> out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + static_cast<std::size_t>(len) > s.size()) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    char32_t cp = len == 1 ? c : c & (0x3F >> (len - 1));
    bool ok = true;
    for (int k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
      if ((cc >> 6) != 2) ok = false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    out.push_back(ok ? cp : 0xFFFD);
    i += ok ? static_cast<std::size_t>(len) : 1;
  }
  return out;
}

inline std::string utf8_encode(const std::vector<char32_t>& cps) {
  std::string s;
  for (char32_t c : cps) {
    if (c < 0x80) {
      s += static_cast<char>(c);
    } else if (c < 0x800) {
      s += static_cast<char>(0xC0 | (c >> 6));
      s += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      s += static_cast<char>(0xE0 | (c >> 12));
      s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (c >> 18));
      s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return s;
}

inline bool is_whitespace(char32_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}
inline bool is_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  return c < 0x20 || (c >= 0x7F && c < 0xA0);
}
inline bool is_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  return (c >= 0xA1 && c <= 0xBF && c != 0xAA && c != 0xB2 && c != 0xB3 && c != 0xB5 && c != 0xB9 && c != 0xBA &&
          c != 0xBC && c != 0xBD && c != 0xBE) ||
         (c >= 0x2010 && c <= 0x2027) || (c >= 0x2030 && c <= 0x205E) || (c >= 0x3001 && c <= 0x3003) ||
         (c >= 0x3008 && c <= 0x3011);
}
inline bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/// Lower case and accent stripping (NFD, then combining marks dropped) for ASCII and Latin-1;
/// other code points pass through unchanged.
inline void lower_strip(char32_t c, std::vector<char32_t>& out) {
  if (c >= 0x300 && c <= 0x36F) return;  // combining marks
  if ((c >= 'A' && c <= 'Z') || (c >= 0xC0 && c <= 0xDE && c != 0xD7)) c += 32;
  if (c >= 0xE0 && c <= 0xFF) {
    // Base letters of U+00E0 … U+00FF after NFD ('.' = no decomposition: æ ð ÷ ø þ).
    static const char base[] = "aaaaaa.ceeeeiiii.nooooo..uuuuy.y";
    if (base[c - 0xE0] != '.') c = static_cast<char32_t>(base[c - 0xE0]);
  }
  out.push_back(c);
}

/// BERT's uncased WordPiece tokenizer.
class WordPiece {
 public:
  explicit WordPiece(const std::string& vocab_path) {
    std::ifstream in(vocab_path);
    if (!in) throw headalign::io_error("cannot open vocabulary '" + vocab_path + "'");
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      vocab_.emplace(line, static_cast<int>(vocab_.size()));
    }
    for (const char* special : {"[UNK]", "[CLS]", "[SEP]"})
      if (!vocab_.count(special)) throw headalign::io_error(vocab_path + " lacks " + special);
    unk_ = vocab_.at("[UNK]");
    cls_ = vocab_.at("[CLS]");
    sep_ = vocab_.at("[SEP]");
  }

  /// Token ids of @p text: [CLS] word pieces [SEP], at most @p max_len ids.
  std::vector<int> encode(const std::string& text, std::size_t max_len = 256) const {
    std::vector<int> ids{cls_};
    for (const std::string& word : basic_tokens(text)) {
      for (int id : word_pieces(word)) {
        if (ids.size() + 1 >= max_len) break;
        ids.push_back(id);
      }
    }
    ids.push_back(sep_);
    return ids;
  }

  /// Basic tokenization: cleaned, lower-cased, accent-stripped words and punctuation marks.
  static std::vector<std::string> basic_tokens(const std::string& text) {
    std::vector<char32_t> cleaned;
    for (char32_t c : utf8_decode(text)) {
      if (c == 0 || c == 0xFFFD || is_control(c)) continue;
      if (is_whitespace(c)) {
        cleaned.push_back(' ');
      } else if (is_cjk(c)) {
        cleaned.push_back(' ');
        cleaned.push_back(c);
        cleaned.push_back(' ');
      } else {
        lower_strip(c, cleaned);
      }
    }
    std::vector<std::string> out;
    std::vector<char32_t> cur;
    auto flush = [&] {
      if (!cur.empty()) out.push_back(utf8_encode(cur));
      cur.clear();
    };
    for (char32_t c : cleaned) {
      if (c == ' ') {
        flush();
      } else if (is_punctuation(c)) {
        flush();
        out.push_back(utf8_encode({c}));
      } else {
        cur.push_back(c);
      }
    }
    flush();
    return out;
  }

  /// Greedy longest-match-first WordPiece of one word ([UNK] when a piece is missing).
  std::vector<int> word_pieces(const std::string& word) const {
    const std::vector<char32_t> cps = utf8_decode(word);
    if (cps.size() > 100) return {unk_};
    std::vector<int> out;
    std::size_t start = 0;
    while (start < cps.size()) {
      std::size_t end = cps.size();
      int found = -1;
      while (start < end) {
        std::string piece = utf8_encode(std::vector<char32_t>(cps.begin() + static_cast<long>(start), cps.begin() + static_cast<long>(end)));
        if (start > 0) piece = "##" + piece;
        auto it = vocab_.find(piece);
        if (it != vocab_.end()) {
          found = it->second;
          break;
        }
        --end;
      }
      if (found < 0) return {unk_};
      out.push_back(found);
      start = end;
    }
    return out;
  }

  std::size_t size() const { return vocab_.size(); }

 private:
  std::unordered_map<std::string, int> vocab_;
  int unk_ = 0, cls_ = 0, sep_ = 0;
};

// ----------------------------------------------------------------------------------------------
// Encoder
// ----------------------------------------------------------------------------------------------

struct Layer {
  headalign::AttentionWeights<float> attention;
  VecF ln1_g, ln1_b, ln2_g, ln2_b, inter_b, out_b;
  MatF inter, out;  // [intermediate, hidden], [hidden, intermediate]
};

/// Called for every layer with the token rows of its query, key and value projections
/// (n × H·d, n × Hkv·d, n × Hkv·d; biases included).
using KvHook = std::function<void(Index layer, const Eigen::MatrixXf& queries, const Eigen::MatrixXf& keys,
                                  const Eigen::MatrixXf& values)>;

class Encoder {
 public:
  /// Reads config.json (num_key_value_heads honoured), vocab.txt and the safetensors weights of @p dir.
  explicit Encoder(const std::string& dir) : tokenizer_(dir + "/vocab.txt") {
    headalign::io::ModelCheckpoint ck(dir);
    const auto& cfg = ck.config();
    if (cfg.architecture != headalign::io::Architecture::Bert)
      throw headalign::io_error("'" + dir + "' is not a BERT model");
    hidden_ = cfg.hidden_size;
    eps_ = cfg.json.value("layer_norm_eps", 1e-12);
    const std::string p = ck.contains("embeddings.word_embeddings.weight") ? "" : "bert.";
    word_ = matrix(ck, p + "embeddings.word_embeddings.weight");
    pos_ = matrix(ck, p + "embeddings.position_embeddings.weight");
    type_ = matrix(ck, p + "embeddings.token_type_embeddings.weight");
    emb_g_ = vector(ck, p + "embeddings.LayerNorm.weight");
    emb_b_ = vector(ck, p + "embeddings.LayerNorm.bias");
    for (Index l = 0; l < cfg.num_layers; ++l) {
      Layer layer;
      layer.attention = ck.read_attention<float>(l);
      const std::string q = p + "encoder.layer." + std::to_string(l) + ".";
      layer.ln1_g = vector(ck, q + "attention.output.LayerNorm.weight");
      layer.ln1_b = vector(ck, q + "attention.output.LayerNorm.bias");
      layer.inter = matrix(ck, q + "intermediate.dense.weight");
      layer.inter_b = vector(ck, q + "intermediate.dense.bias");
      layer.out = matrix(ck, q + "output.dense.weight");
      layer.out_b = vector(ck, q + "output.dense.bias");
      layer.ln2_g = vector(ck, q + "output.LayerNorm.weight");
      layer.ln2_b = vector(ck, q + "output.LayerNorm.bias");
      layers_.push_back(std::move(layer));
    }
  }

  const WordPiece& tokenizer() const { return tokenizer_; }
  Index num_layers() const { return static_cast<Index>(layers_.size()); }
  const headalign::AttentionWeights<float>& attention(Index l) const { return layers_[static_cast<std::size_t>(l)].attention; }
  /// Replaces layer @p l's attention (e.g. by a converted GQA layer).
  void set_attention(Index l, headalign::AttentionWeights<float> w) {
    w.validate();
    layers_[static_cast<std::size_t>(l)].attention = std::move(w);
  }

  /// Sentence embedding: mean over tokens of the last hidden states, L2-normalised.
  VecF embed(const std::string& text, const KvHook& hook = {}) const { return embed_ids(tokenizer_.encode(text), hook); }

  VecF embed_ids(const std::vector<int>& ids, const KvHook& hook = {}) const {
    const Index n = static_cast<Index>(ids.size());
    if (n > pos_.rows()) throw headalign::invalid_argument("sequence longer than the position table");
    Eigen::MatrixXf x(n, hidden_);
    for (Index t = 0; t < n; ++t) {
      if (ids[static_cast<std::size_t>(t)] < 0 || ids[static_cast<std::size_t>(t)] >= word_.rows())
        throw headalign::invalid_argument("token id out of range");
      x.row(t) = word_.row(ids[static_cast<std::size_t>(t)]) + pos_.row(t) + type_.row(0);
    }
    layer_norm(x, emb_g_, emb_b_);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const Layer& L = layers_[l];
      const auto& a = L.attention;
      const Index d = a.head_dim, h = a.num_heads, per = a.num_heads / a.num_kv_heads;
      Eigen::MatrixXf q = x * a.q.transpose(), k = x * a.k.transpose(), v = x * a.v.transpose();
      q.rowwise() += a.q_bias.transpose();
      k.rowwise() += a.k_bias.transpose();
      v.rowwise() += a.v_bias.transpose();
      if (hook) hook(static_cast<Index>(l), q, k, v);
      Eigen::MatrixXf ctx(n, h * d);
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      for (Index head = 0; head < h; ++head) {
        const Index kv = head / per;
        Eigen::MatrixXf s = (q.middleCols(head * d, d) * k.middleCols(kv * d, d).transpose()) * scale;
        for (Index t = 0; t < n; ++t) {
          const float mx = s.row(t).maxCoeff();
          s.row(t) = (s.row(t).array() - mx).exp();
          s.row(t) /= s.row(t).sum();
        }
        ctx.middleCols(head * d, d).noalias() = s * v.middleCols(kv * d, d);
      }
      Eigen::MatrixXf y = ctx * a.o.transpose();
      y.rowwise() += a.o_bias.transpose();
      x += y;
      layer_norm(x, L.ln1_g, L.ln1_b);
      Eigen::MatrixXf inter = x * L.inter.transpose();
      inter.rowwise() += L.inter_b.transpose();
      inter = inter.unaryExpr([](float z) { return 0.5f * z * (1.0f + std::erf(z * 0.70710678118654752f)); });
      Eigen::MatrixXf out = inter * L.out.transpose();
      out.rowwise() += L.out_b.transpose();
      x += out;
      layer_norm(x, L.ln2_g, L.ln2_b);
    }
    VecF pooled = x.colwise().mean().transpose();
    return pooled / std::max(pooled.norm(), 1e-12f);
  }

 private:
  static MatF matrix(headalign::io::ModelCheckpoint& ck, const std::string& name) {
    const auto& t = ck.reader_for(name).info(name);
    if (t.shape.size() != 2) throw headalign::io_error("'" + name + "' is not a matrix");
    MatF m(t.shape[0], t.shape[1]);
    ck.reader_for(name).read(name, 0, static_cast<std::uint64_t>(m.size()), m.data());
    return m;
  }
  static VecF vector(headalign::io::ModelCheckpoint& ck, const std::string& name) {
    const auto& t = ck.reader_for(name).info(name);
    if (t.shape.size() != 1) throw headalign::io_error("'" + name + "' is not a vector");
    VecF v(t.shape[0]);
    ck.reader_for(name).read(name, 0, static_cast<std::uint64_t>(v.size()), v.data());
    return v;
  }
  void layer_norm(Eigen::MatrixXf& x, const VecF& g, const VecF& b) const {
    for (Index t = 0; t < x.rows(); ++t) {
      const float mean = x.row(t).mean();
      const float var = (x.row(t).array() - mean).square().mean();
      x.row(t) = ((x.row(t).array() - mean) / std::sqrt(var + static_cast<float>(eps_))).matrix();
      x.row(t) = x.row(t).cwiseProduct(g.transpose()) + b.transpose();
    }
  }

  WordPiece tokenizer_;
  Index hidden_ = 0;
  double eps_ = 1e-12;
  MatF word_, pos_, type_;
  VecF emb_g_, emb_b_;
  std::vector<Layer> layers_;
};

}  // namespace bert

#endif  // HEADALIGN_EXAMPLES_BERT_RUNNER_HPP
