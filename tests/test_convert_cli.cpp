// headalign-convert end to end on small generated LLaMA-, Qwen2- and BERT-shaped checkpoints:
// the aligned-but-unmerged model reproduces the original layers' outputs, the merged one beats
// the plain mean-pool baseline, other tensors are copied bit-exact, shards are kept, and bad
// input gives a one-line error, a non-zero exit and no output directory.
#include <headalign/io/hf_model.hpp>
#include <headalign/io/safetensors.hpp>

#include "attention_ref.hpp"
#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>

#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace headalign;
using headalign::io::Dtype;
using headalign::test::gaussian;
using headalign::test::random_orthogonal;
using headalign::test::random_rope_rotation;

namespace {

struct Tiny {
  std::string arch = "llama";  // llama | qwen2 | bert
  Index heads = 4, head_dim = 8, hidden = 32, layers = 2;
  bool sharded = false;
  bool bert_prefix = false;
  Dtype dtype = Dtype::F32;
};

fs::path base_dir() {
  const char* t = std::getenv("TMPDIR");
  fs::path p = fs::path(t ? t : "/tmp") / "headalign_cli_tests";
  fs::create_directories(p);
  return p;
}

fs::path fresh(const std::string& name) {
  const fs::path p = base_dir() / name;
  fs::remove_all(p);
  return p;
}

bool rope_model(const Tiny& t) { return t.arch != "bert"; }

// Tensor names, written out independently of the library's own mapping.
std::vector<std::string> attention_names(const Tiny& t, Index layer) {
  const std::string i = std::to_string(layer);
  if (t.arch == "bert") {
    const std::string p = std::string(t.bert_prefix ? "bert." : "") + "encoder.layer." + i + ".attention.";
    return {p + "self.query.weight", p + "self.key.weight", p + "self.value.weight", p + "output.dense.weight",
            p + "self.query.bias",   p + "self.key.bias",   p + "self.value.bias",   p + "output.dense.bias"};
  }
  const std::string p = "model.layers." + i + ".self_attn.";
  return {p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight", p + "o_proj.weight",
          p + "q_proj.bias",   p + "k_proj.bias",   p + "v_proj.bias",   p + "o_proj.bias"};
}

// A layer whose heads come in pairs of noisy rotated copies, shuffled.
AttentionWeights<double> planted(const Tiny& t, std::mt19937_64& rng) {
  const Index h = t.heads, d = t.head_dim, hid = t.hidden;
  AttentionWeights<double> w = test::random_layer<double>(h, d, hid, true, rng);
  std::vector<Index> label(static_cast<std::size_t>(h));
  for (Index i = 0; i < h; ++i) label[static_cast<std::size_t>(i)] = i % (h / 2);
  std::shuffle(label.begin(), label.end(), rng);
  std::vector<Matrix<double>> wk, wv, bk, bv;
  for (Index c = 0; c < h / 2; ++c) {
    wk.push_back(gaussian<double>(d, hid, rng, 0.3));
    wv.push_back(gaussian<double>(d, hid, rng, 0.3));
    bk.push_back(gaussian<double>(d, 1, rng, 0.3));
    bv.push_back(gaussian<double>(d, 1, rng, 0.3));
  }
  for (Index j = 0; j < h; ++j) {
    const auto c = static_cast<std::size_t>(label[static_cast<std::size_t>(j)]);
    const Matrix<double> qk = rope_model(t) ? random_rope_rotation<double>(d, RopeSpec{}, rng) : random_orthogonal<double>(d, rng);
    const Matrix<double> qv = random_orthogonal<double>(d, rng);
    w.k.middleRows(j * d, d) = qk.transpose() * wk[c] + gaussian<double>(d, hid, rng, 0.01);
    w.v.middleRows(j * d, d) = qv.transpose() * wv[c] + gaussian<double>(d, hid, rng, 0.01);
    w.k_bias.segment(j * d, d) = qk.transpose() * bk[c];
    w.v_bias.segment(j * d, d) = qv.transpose() * bv[c];
  }
  if (t.arch == "llama") w.q_bias = w.k_bias = w.v_bias = w.o_bias = AttentionWeights<double>::Vec();
  if (t.arch == "qwen2") w.o_bias = AttentionWeights<double>::Vec();
  return w;
}

nlohmann::json config_json(const Tiny& t) {
  nlohmann::json c = {{"model_type", t.arch},
                      {"hidden_size", t.hidden},
                      {"num_attention_heads", t.heads},
                      {"num_hidden_layers", t.layers},
                      {"vocab_size", 10},
                      {"torch_dtype", "float32"}};
  if (t.arch != "bert") {
    c["num_key_value_heads"] = t.heads;
    if (t.hidden != t.heads * t.head_dim) c["head_dim"] = t.head_dim;  // explicit, as Gemma-style configs
    c["rope_theta"] = 10000.0;
  }
  return c;
}

void write_json(const fs::path& p, const nlohmann::json& j) { std::ofstream(p) << j.dump(2); }

// Writes config.json and the weights (one file or two shards); returns the tensors' names in shard order.
void write_model(const fs::path& dir, const Tiny& t, std::mt19937_64& rng, const nlohmann::json& config) {
  fs::create_directories(dir);
  write_json(dir / "config.json", config);
  std::ofstream(dir / "tokenizer.json") << "{\"version\": \"1.0\"}";
  io::SafetensorsWriter shard[2];
  std::map<std::string, std::string> weight_map;
  const std::string shard_name[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
  int next = 0;
  auto target = [&](const std::string& name) -> io::SafetensorsWriter& {
    const int s = t.sharded ? (next++ % 2) : 0;
    weight_map[name] = t.sharded ? shard_name[s] : "model.safetensors";
    return shard[s];
  };
  for (Index l = 0; l < t.layers; ++l) {
    const AttentionWeights<double> w = planted(t, rng);
    const auto n = attention_names(t, l);
    target(n[0]).add_as(n[0], t.dtype, {w.q.rows(), w.q.cols()}, w.q.data());
    target(n[1]).add_as(n[1], t.dtype, {w.k.rows(), w.k.cols()}, w.k.data());
    target(n[2]).add_as(n[2], t.dtype, {w.v.rows(), w.v.cols()}, w.v.data());
    target(n[3]).add_as(n[3], t.dtype, {w.o.rows(), w.o.cols()}, w.o.data());
    const AttentionWeights<double>::Vec* biases[4] = {&w.q_bias, &w.k_bias, &w.v_bias, &w.o_bias};
    for (int b = 0; b < 4; ++b)
      if (biases[b]->size()) target(n[4 + b]).add_as(n[4 + b], t.dtype, {biases[b]->size()}, biases[b]->data());
    const Matrix<double> ln = gaussian<double>(t.hidden, 1, rng);
    const std::string ln_name = t.arch == "bert" ? "encoder.layer." + std::to_string(l) + ".output.LayerNorm.weight"
                                                 : "model.layers." + std::to_string(l) + ".input_layernorm.weight";
    target(ln_name).add_as(ln_name, Dtype::BF16, {t.hidden}, ln.data());
  }
  const Matrix<double> embed = gaussian<double>(10, t.hidden, rng);
  const std::string embed_name = t.arch == "bert" ? "embeddings.word_embeddings.weight" : "model.embed_tokens.weight";
  target(embed_name).add_as(embed_name, Dtype::F16, {10, t.hidden}, embed.data());
  std::vector<unsigned char> ids(4 * 8);
  std::iota(ids.begin(), ids.end(), static_cast<unsigned char>(3));
  target("position_ids").add_raw("position_ids", Dtype::I64, {4}, ids);
  for (int s = 0; s < (t.sharded ? 2 : 1); ++s) {
    shard[s].set_metadata("format", "pt");
    shard[s].write((dir / (t.sharded ? shard_name[s] : "model.safetensors")).string());
  }
  if (t.sharded) write_json(dir / "model.safetensors.index.json", {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}});
}

// Calibration activations of every layer from tokens x: keys, values and (unless `queries` is
// false) queries, with biases, pre-RoPE.
void write_calibration(const fs::path& path, const fs::path& model, const Tiny& t, Index tokens, std::mt19937_64& rng,
                       Dtype dtype = Dtype::F32, bool queries = true) {
  io::ModelCheckpoint ck(model.string());
  io::SafetensorsWriter w;
  for (Index l = 0; l < t.layers; ++l) {
    const auto a = ck.read_attention<double>(l);
    const Matrix<double> x = gaussian<double>(tokens, t.hidden, rng);
    using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const RowMajor k = test::projections<double>(x, a.k, a.k_bias), v = test::projections<double>(x, a.v, a.v_bias),
                   q = test::projections<double>(x, a.q, a.q_bias);
    w.add_as("layers." + std::to_string(l) + ".key", dtype, {tokens, k.cols()}, k.data());
    w.add_as("layers." + std::to_string(l) + ".value", dtype, {tokens, v.cols()}, v.data());
    if (queries) w.add_as("layers." + std::to_string(l) + ".query", dtype, {tokens, q.cols()}, q.data());
  }
  w.write(path.string());
}

struct Run {
  int status = -1;
  std::string out, err;
};

Run convert(const std::string& args) {
  const std::string tag = std::to_string(::getpid());
  const fs::path out = base_dir() / ("stdout." + tag), err = base_dir() / ("stderr." + tag);
  const std::string cmd = std::string(HEADALIGN_CONVERT_EXE) + " " + args + " > " + out.string() + " 2> " + err.string();
  const int raw = std::system(cmd.c_str());
  Run r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream o(out), e(err);
  std::stringstream so, se;
  so << o.rdbuf();
  se << e.rdbuf();
  r.out = so.str();
  r.err = se.str();
  return r;
}

test::AttentionOptions forward_options(const Tiny& t) { return {rope_model(t), RopeSpec{}, rope_model(t)}; }

// Relative difference of one layer's outputs between two checkpoints on tokens x.
double layer_diff(const fs::path& a, const fs::path& b, const Tiny& t, Index layer, const Matrix<double>& x) {
  io::ModelCheckpoint ca(a.string()), cb(b.string());
  return test::relative_diff(test::attention_forward(cb.read_attention<double>(layer), x, forward_options(t)),
                             test::attention_forward(ca.read_attention<double>(layer), x, forward_options(t)));
}

}  // namespace

TEST_CASE("headalign-convert: aligned model keeps the function, merged model beats mean-pool", "[cli]") {
  for (const std::string arch : {"llama", "qwen2", "bert"}) {
    for (bool sharded : {false, true}) {
      CAPTURE(arch, sharded);
      Tiny t;
      t.arch = arch;
      t.sharded = sharded;
      t.bert_prefix = arch == "bert" && sharded;
      if (arch == "llama") t.hidden = 24;  // head_dim (8) ≠ hidden / heads: config.json states it
      std::mt19937_64 rng(arch.size() * 31 + sharded);
      const fs::path model = fresh(arch + (sharded ? "_sharded" : "") + "_model"), calib = base_dir() / (arch + "_calib.st");
      write_model(model, t, rng, config_json(t));
      write_calibration(calib, model, t, 400, rng);
      const fs::path aligned = fresh(arch + "_aligned"), merged = fresh(arch + "_merged"), plain = fresh(arch + "_plain");
      const std::string common = "--model " + model.string() + " --calibration " + calib.string() + " --kv-heads 2 --quiet";
      Run r = convert(common + " --output " + aligned.string() + " --aligned-only");
      REQUIRE(r.status == 0);
      r = convert(common + " --output " + merged.string() + " --group-by joint --criterion dist --threads 2");
      REQUIRE(r.status == 0);
      r = convert(common + " --output " + plain.string() + " --group-by none --keys none --values none");
      REQUIRE(r.status == 0);

      const Matrix<double> x = gaussian<double>(9, t.hidden, rng);
      for (Index l = 0; l < t.layers; ++l) {
        CHECK(layer_diff(model, aligned, t, l, x) < 1e-5);
        const double e_merged = layer_diff(model, merged, t, l, x), e_plain = layer_diff(model, plain, t, l, x);
        INFO("layer " << l << ": merged " << e_merged << ", mean-pool " << e_plain);
        CHECK(e_merged < 0.5 * e_plain);
      }
      // Config: identical except num_key_value_heads.
      nlohmann::json in = nlohmann::json::parse(std::ifstream(model / "config.json"));
      nlohmann::json out = nlohmann::json::parse(std::ifstream(merged / "config.json"));
      CHECK(out["num_key_value_heads"] == 2);
      out.erase("num_key_value_heads");
      in.erase("num_key_value_heads");
      CHECK(out == in);
      CHECK(nlohmann::json::parse(std::ifstream(aligned / "config.json"))["num_key_value_heads"] == t.heads);
      // Every other tensor bit-exact, in its dtype and shard; attention tensors keep their dtype.
      io::ModelCheckpoint a(model.string()), b(merged.string());
      CHECK(a.shards() == b.shards());
      CHECK(b.sharded() == sharded);
      std::set<std::string> attention;
      for (Index l = 0; l < t.layers; ++l)
        for (const auto& n : attention_names(t, l)) attention.insert(n);
      for (const auto& shard : a.shards())
        for (const auto& name : a.reader(shard).names()) {
          REQUIRE(b.contains(name));
          CHECK(b.shard_of(name) == shard);
          CHECK(b.reader_for(name).info(name).dtype == a.reader(shard).info(name).dtype);
          if (!attention.count(name)) CHECK(b.reader_for(name).read_raw(name) == a.reader(shard).read_raw(name));
        }
      CHECK(b.reader_for(attention_names(t, 0)[1]).info(attention_names(t, 0)[1]).shape ==
            std::vector<std::int64_t>{2 * t.head_dim, t.hidden});
      CHECK(fs::exists(merged / "tokenizer.json"));
      // report.json: per layer groups, scores, GPA, predicted errors (aligned below mean-pool).
      const nlohmann::json rep = nlohmann::json::parse(std::ifstream(merged / "report.json"));
      REQUIRE(rep["layers"].size() == static_cast<std::size_t>(t.layers));
      for (const auto& layer : rep["layers"]) {
        CHECK(layer["groups"].size() == 2);
        CHECK(layer["similarity"].size() == static_cast<std::size_t>(t.heads));
        CHECK(layer["keys"]["predicted_error"]["relative"].get<double>() <
              layer["keys"]["mean_pool_predicted_error"]["relative"].get<double>());
        CHECK(layer["values"]["predicted_error"]["relative"].get<double>() <
              layer["values"]["mean_pool_predicted_error"]["relative"].get<double>());
      }
      if (sharded) {
        const nlohmann::json idx = nlohmann::json::parse(std::ifstream(merged / "model.safetensors.index.json"));
        std::uint64_t bytes = 0;
        for (const auto& shard : b.shards()) {
          io::SafetensorsReader rr((merged / shard).string());
          for (const auto& name : rr.names()) bytes += rr.info(name).end - rr.info(name).begin;
        }
        CHECK(idx["metadata"]["total_size"].get<std::uint64_t>() == bytes);
      }
    }
  }
}

TEST_CASE("headalign-convert: Gram sets, data-free mode, BF16 checkpoints, summary table", "[cli]") {
  Tiny t;
  t.dtype = Dtype::BF16;
  std::mt19937_64 rng(77);
  const fs::path model = fresh("bf16_model"), calib = base_dir() / "bf16_calib.st", grams = base_dir() / "bf16_grams.st";
  fs::remove(grams);
  write_model(model, t, rng, config_json(t));
  write_calibration(calib, model, t, 300, rng, Dtype::BF16);
  const fs::path a = fresh("bf16_a"), b = fresh("bf16_b"), c = fresh("bf16_free");
  Run r = convert("--model " + model.string() + " --calibration " + calib.string() + " --kv-heads 2 --output " + a.string() +
                  " --save-grams " + grams.string());
  REQUIRE(r.status == 0);
  CHECK(r.out.find("predicted merge error") != std::string::npos);
  CHECK(r.out.find("wrote") != std::string::npos);
  r = convert("--model " + model.string() + " --calibration " + grams.string() + " --kv-heads 2 --quiet --output " + b.string());
  REQUIRE(r.status == 0);
  io::ModelCheckpoint ca(a.string()), cb(b.string());
  for (const auto& name : ca.reader(ca.shards()[0]).names()) CHECK(ca.reader_for(name).read_raw(name) == cb.reader_for(name).read_raw(name));
  CHECK(ca.reader_for(attention_names(t, 0)[0]).info(attention_names(t, 0)[0]).dtype == Dtype::BF16);
  r = convert("--model " + model.string() + " --calibration none --kv-heads 2 --quiet --output " + c.string());
  REQUIRE(r.status == 0);
  CHECK(nlohmann::json::parse(std::ifstream(c / "report.json"))["calibration"]["kind"] == "data-free");
  // A Gram set made with cos cannot drive --criterion dist.
  r = convert("--model " + model.string() + " --calibration " + grams.string() + " --kv-heads 2 --criterion dist --output " +
              fresh("bf16_bad").string());
  CHECK(r.status != 0);
  CHECK(r.err.find("row normalisation") != std::string::npos);
}

TEST_CASE("headalign-convert: --merge weightings, query statistics in activations and Gram sets", "[cli]") {
  Tiny t;  // LLaMA-shaped: RoPE, so query metrics are averaged over relative positions
  std::mt19937_64 rng(91);
  const fs::path model = fresh("merge_model"), calib = base_dir() / "merge_calib.st", bare = base_dir() / "merge_bare.st",
                 grams = base_dir() / "merge_grams.st";
  fs::remove(grams);
  write_model(model, t, rng, config_json(t));
  write_calibration(calib, model, t, 300, rng);
  write_calibration(bare, model, t, 300, rng, Dtype::F32, /*queries=*/false);
  const std::string m = "--model " + model.string() + " --kv-heads 2 --quiet";
  auto report = [](const fs::path& dir) { return nlohmann::json::parse(std::ifstream(dir / "report.json")); };

  for (const std::string merge : {"mean", "output", "query", "full"}) {
    CAPTURE(merge);
    const fs::path out = fresh("merge_" + merge);
    REQUIRE(convert(m + " --calibration " + calib.string() + " --merge " + merge + " --output " + out.string()).status == 0);
    const auto rep = report(out);
    CHECK(rep["settings"]["merge_used"] == merge);
    CHECK(rep["calibration"]["query_statistics"] == true);
    for (const auto& layer : rep["layers"]) {
      const double logit = layer["merge"]["logit_error"]["total"], logit_mean = layer["merge"]["logit_error_mean"]["total"];
      const double output = layer["merge"]["output_error"]["total"], output_mean = layer["merge"]["output_error_mean"]["total"];
      if (merge == "query" || merge == "full") CHECK(logit < logit_mean);
      else CHECK(logit == Approx(logit_mean).epsilon(1e-12));
      if (merge == "output" || merge == "full") CHECK(output < output_mean);
      else CHECK(output == Approx(output_mean).epsilon(1e-12));
    }
  }
  // The default is full; without query statistics it falls back to output-aware, and the summary says so.
  const fs::path fallback = fresh("merge_fallback");
  Run r = convert("--model " + model.string() + " --kv-heads 2 --calibration " + bare.string() + " --output " + fallback.string());
  REQUIRE(r.status == 0);
  CHECK(report(fallback)["settings"]["merge"] == "full");
  CHECK(report(fallback)["settings"]["merge_used"] == "output");
  CHECK(r.out.find("merge output") != std::string::npos);
  CHECK(report(fallback)["layers"][0]["merge"].count("logit_error") == 0);
  // Query moments travel in a Gram set: the same bytes from activations and from the set.
  const fs::path a = fresh("merge_a"), b = fresh("merge_b");
  REQUIRE(convert(m + " --calibration " + calib.string() + " --output " + a.string() + " --save-grams " + grams.string()).status == 0);
  REQUIRE(convert(m + " --calibration " + grams.string() + " --output " + b.string()).status == 0);
  CHECK(report(b)["settings"]["merge_used"] == "full");
  io::ModelCheckpoint ca(a.string()), cb(b.string());
  for (const auto& name : ca.reader(ca.shards()[0]).names()) CHECK(ca.reader_for(name).read_raw(name) == cb.reader_for(name).read_raw(name));
  // Data-free: query moments from the weights.
  const fs::path free = fresh("merge_free");
  REQUIRE(convert(m + " --calibration none --output " + free.string()).status == 0);
  CHECK(report(free)["settings"]["merge_used"] == "full");

  // --merge query without query statistics, and query statistics for only some layers: errors.
  const fs::path none = fresh("merge_none");
  r = convert(m + " --calibration " + bare.string() + " --merge query --output " + none.string());
  CHECK(r.status != 0);
  CHECK(r.err.find("merge = query needs query statistics") != std::string::npos);
  CHECK_FALSE(fs::exists(none));
  {
    io::SafetensorsReader full(calib.string());
    io::SafetensorsWriter w;
    for (const auto& name : full.names_in_file_order())
      if (name != "layers.1.query") w.add_raw(name, full.info(name).dtype, full.info(name).shape, full.read_raw(name));
    w.write((base_dir() / "merge_partial.st").string());
  }
  r = convert(m + " --calibration " + (base_dir() / "merge_partial.st").string() + " --output " + none.string());
  CHECK(r.status != 0);
  CHECK(r.err.find("query statistics for 1 of 2 layers") != std::string::npos);
  CHECK_FALSE(fs::exists(none));
}

TEST_CASE("headalign-convert: bad input gives one clear line, a non-zero exit and no output", "[cli][errors]") {
  Tiny t;
  std::mt19937_64 rng(99);
  const fs::path model = fresh("bad_model"), calib = base_dir() / "bad_calib.st";
  write_model(model, t, rng, config_json(t));
  write_calibration(calib, model, t, 50, rng);
  auto expect_error = [&](const std::string& args, const std::string& message) {
    const fs::path out = fresh("bad_out");
    const Run r = convert(args + " --output " + out.string());
    CAPTURE(args, r.err);
    CHECK(r.status != 0);
    CHECK(r.err.find(message) != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') <= 1);
    CHECK_FALSE(fs::exists(out));
    for (const auto& e : fs::directory_iterator(base_dir())) CHECK(e.path().filename().string().find("bad_out.tmp") == std::string::npos);
  };
  const std::string m = "--model " + model.string(), c = " --calibration " + calib.string();
  expect_error(m + c + " --kv-heads 3", "does not divide num_attention_heads (4)");
  expect_error(m + c + " --kv-heads 2 --keys orthogonal", "does not commute with RoPE");

  // Calibration problems.
  {
    io::SafetensorsWriter w;
    const std::vector<float> k(50 * 32, 0.5f);
    w.add("layers.0.key", {50, 32}, k.data());
    w.add("layers.0.value", {50, 32}, k.data());
    w.add("layers.1.key", {50, 32}, k.data());
    w.write((base_dir() / "missing.st").string());
    expect_error(m + " --calibration " + (base_dir() / "missing.st").string() + " --kv-heads 2", "lacks tensor 'layers.1.value'");
    io::SafetensorsWriter w2;
    std::vector<float> nan = k;
    nan[77] = std::nanf("");
    for (int l = 0; l < 2; ++l) {
      w2.add("layers." + std::to_string(l) + ".key", {50, 32}, l == 1 ? nan.data() : k.data());
      w2.add("layers." + std::to_string(l) + ".value", {50, 32}, k.data());
    }
    w2.write((base_dir() / "nan.st").string());
    expect_error(m + " --calibration " + (base_dir() / "nan.st").string() + " --kv-heads 2", "NaN or Inf");
    io::SafetensorsWriter w3;
    const std::vector<float> narrow(50 * 31, 0.5f);
    for (int l = 0; l < 2; ++l) {
      w3.add("layers." + std::to_string(l) + ".key", {50, 31}, narrow.data());
      w3.add("layers." + std::to_string(l) + ".value", {50, 31}, narrow.data());
    }
    w3.write((base_dir() / "narrow.st").string());
    expect_error(m + " --calibration " + (base_dir() / "narrow.st").string() + " --kv-heads 2", "expected [tokens > 0, 32]");
    io::SafetensorsWriter w4;
    const std::vector<std::int64_t> ints(50 * 32, 1);
    const std::vector<float> values(50 * 32, 0.5f);
    for (int l = 0; l < 2; ++l) {
      w4.add_raw("layers." + std::to_string(l) + ".key", Dtype::I64, {50, 32},
                 std::vector<unsigned char>(reinterpret_cast<const unsigned char*>(ints.data()),
                                            reinterpret_cast<const unsigned char*>(ints.data() + ints.size())));
      w4.add("layers." + std::to_string(l) + ".value", {50, 32}, values.data());
    }
    w4.write((base_dir() / "ints.st").string());
    expect_error(m + " --calibration " + (base_dir() / "ints.st").string() + " --kv-heads 2", "has dtype I64, not F32/F16/BF16/F64");
  }
  // Model problems.
  {
    const fs::path gqa = fresh("gqa_model");
    nlohmann::json cfg = config_json(t);
    cfg["num_key_value_heads"] = 2;
    write_model(gqa, t, rng, cfg);
    expect_error("--model " + gqa.string() + c + " --kv-heads 2", "already uses GQA");
    const fs::path gpt = fresh("gpt_model");
    cfg = config_json(t);
    cfg["model_type"] = "gpt2";
    write_model(gpt, t, rng, cfg);
    expect_error("--model " + gpt.string() + c + " --kv-heads 2", "unsupported model_type 'gpt2'");
    const fs::path trunc = fresh("trunc_model");
    write_model(trunc, t, rng, config_json(t));
    fs::resize_file(trunc / "model.safetensors", fs::file_size(trunc / "model.safetensors") - 10);
    expect_error("--model " + trunc.string() + c + " --kv-heads 2", "model.safetensors");
    const fs::path evil = fresh("evil_model");
    Tiny ts = t;
    ts.sharded = true;
    write_model(evil, ts, rng, config_json(ts));
    nlohmann::json idx = nlohmann::json::parse(std::ifstream(evil / "model.safetensors.index.json"));
    idx["weight_map"]["model.embed_tokens.weight"] = "../../etc/passwd";
    write_json(evil / "model.safetensors.index.json", idx);
    expect_error("--model " + evil.string() + c + " --kv-heads 2", "is not a plain file name");
    expect_error("--model " + (base_dir() / "no_such_model").string() + c + " --kv-heads 2", "config.json");
  }
  // An existing output is never overwritten.
  const fs::path existing = fresh("existing_out");
  fs::create_directories(existing);
  const Run r = convert(m + c + " --kv-heads 2 --output " + existing.string());
  CHECK(r.status != 0);
  CHECK(r.err.find("already exists") != std::string::npos);
  CHECK(fs::is_empty(existing));
  // Unknown flags and values are refused by the parser, in one line with the program's prefix.
  auto parse_error = [&](const std::string& args, const std::string& message) {
    const Run p = convert(args);
    CAPTURE(args, p.err);
    CHECK(p.status != 0);
    CHECK(p.err.rfind("headalign-convert: error: ", 0) == 0);
    CHECK(p.err.find(message) != std::string::npos);
    CHECK(std::count(p.err.begin(), p.err.end(), '\n') == 1);
    CHECK(p.out.empty());
  };
  parse_error(m + c + " --kv-heads 2 --group-by heads --output " + fresh("x").string(), "heads");
  parse_error(m + c + " --kv-heads 2 --merge all --output " + fresh("x").string(), "--merge");
  parse_error(m + c + " --output " + fresh("y").string(), "--kv-heads");  // --kv-heads missing
  parse_error(m + c + " --kv-heads 2 --frobnicate --output " + fresh("y").string(), "--frobnicate");
  parse_error(m + c + " --kv-heads two --output " + fresh("y").string(), "two");
  // A library error carries no second "headalign:" prefix.
  const Run e = convert(m + c + " --kv-heads 3 --output " + fresh("z").string());
  CHECK(e.err.find("headalign-convert: error: headalign:") == std::string::npos);
  // --help is not an error.
  const Run help = convert("--help");
  CHECK(help.status == 0);
  CHECK(help.out.find("--kv-heads") != std::string::npos);
  CHECK(help.out.find("{mean,output,query,full}=full") != std::string::npos);  // choices and defaults are shown
  parse_error(m + c + " --kv-heads 2 --group-by 2 --output " + fresh("x").string(), "not in {value,key,joint,none}");
}

TEST_CASE("headalign-convert: a full disk, an unwritable output and a killed run leave no output", "[cli][errors]") {
  Tiny t;
  t.layers = 3;
  t.hidden = 64;
  std::mt19937_64 rng(95);
  const fs::path model = fresh("io_model"), calib = base_dir() / "io_calib.st";
  write_model(model, t, rng, config_json(t));
  write_calibration(calib, model, t, 200, rng);
  const std::string args = "--model " + model.string() + " --calibration " + calib.string() + " --kv-heads 2 --quiet";
  auto leftovers = [&](const fs::path& out) {
    int n = 0;
    for (const auto& e : fs::directory_iterator(out.parent_path()))
      if (e.path().filename() == out.filename() || e.path().filename().string().rfind(out.filename().string() + ".tmp.", 0) == 0) ++n;
    return n;
  };

  // Disk full: a file-size limit of 8 KB (SIGXFSZ ignored, so writes fail with EFBIG as on a full disk).
  const fs::path full = fresh("io_full");
  const std::string cmd = "bash -c \"ulimit -f 8; trap '' XFSZ; exec " + std::string(HEADALIGN_CONVERT_EXE) + " " + args +
                          " --output " + full.string() + "\" 2> " + (base_dir() / "io_full.err").string();
  const int raw = std::system(cmd.c_str());
  CHECK((WIFEXITED(raw) && WEXITSTATUS(raw) == 1));
  std::ifstream err(base_dir() / "io_full.err");
  const std::string message((std::istreambuf_iterator<char>(err)), {});
  CHECK(message.find("cannot write") != std::string::npos);
  CHECK(leftovers(full) == 0);  // neither the output nor its temporary directory

  // An output that cannot be created.
  Run r = convert(args + " --output /proc/headalign_cannot_write_here");
  CHECK(r.status == 1);
  CHECK(r.err.find("headalign-convert: error:") == 0);
  r = convert(args + " --output " + (calib / "sub").string());  // the parent is a file
  CHECK(r.status == 1);
  CHECK(r.err.find("does not exist") != std::string::npos);

  // Killed at any moment: the output is either absent or complete (it appears by one rename).
  for (int delay_ms : {0, 5, 20, 60, 150}) {
    CAPTURE(delay_ms);
    const fs::path out = fresh("io_killed");
    const std::string run = std::string(HEADALIGN_CONVERT_EXE) + " " + args + " --output " + out.string() +
                            " > /dev/null 2>&1 & pid=$!; sleep " + std::to_string(delay_ms / 1000.0) +
                            "; kill -9 $pid 2> /dev/null; wait $pid 2> /dev/null; true";
    std::system(("bash -c '" + run + "'").c_str());
    if (fs::exists(out)) {
      CHECK(fs::exists(out / "report.json"));
      CHECK(fs::exists(out / "config.json"));
      io::ModelCheckpoint ck(out.string());  // validates every tensor's header and size
      CHECK(ck.config().num_kv_heads == 2);
    }
    for (const auto& e : fs::directory_iterator(base_dir()))  // a killed run may leave its .tmp.<pid>; clear it
      if (e.path().filename().string().rfind("io_killed.tmp.", 0) == 0) fs::remove_all(e.path());
  }
}
