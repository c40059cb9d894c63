"""Similarity, grouping, GPA, alignment, merging and one-call conversion: reference computations and
planted structure."""
import numpy as np
import pytest

import headalign as ha
from conftest import random_rotation
from model import attention


def rope_rotation(rng, d):
    """A random rotation made of one 2×2 rotation per half-split RoPE plane: it commutes with RoPE."""
    r = np.zeros((d, d))
    for p in range(d // 2):
        t = rng.uniform(-np.pi, np.pi)
        a, b = p, p + d // 2
        r[a, a], r[a, b], r[b, a], r[b, b] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_similarity_equals_direct_svd(rng, dtype):
    h, d, n = 5, 6, 400
    x = rng.standard_normal((n, h * d))
    g = ha.HeadGram(h, d, normalize_rows=True, dtype=dtype)
    g.add(x)
    heads = x.reshape(n, h, d)
    y = heads / np.linalg.norm(heads, axis=2, keepdims=True)
    cos = ha.similarity_matrix(g, ha.Alignment.ORTHOGONAL, ha.Metric.COSINE)
    dist = ha.similarity_matrix(g, ha.Alignment.ORTHOGONAL, ha.Metric.DISTANCE)
    plain = ha.similarity_matrix(g, ha.Alignment.NONE, ha.Metric.COSINE)
    tol = 1e-4 if dtype == "float32" else 1e-10
    for i in range(h):
        for j in range(h):
            if i == j:
                continue
            m = y[:, i].T @ y[:, j]
            sv = np.linalg.svd(m, compute_uv=False).sum()
            assert cos[i, j] == pytest.approx(sv / n, rel=tol)
            ref = -(np.sum(y[:, i] ** 2) + np.sum(y[:, j] ** 2) - 2 * sv) / n
            assert dist[i, j] == pytest.approx(ref, rel=tol, abs=tol)
            assert plain[i, j] == pytest.approx(np.trace(m) / n, rel=tol, abs=tol)


def planted_heads(rng, sources, per_group, d, n, noise):
    """Heads that are rotated noisy copies of `sources` source heads, in shuffled order."""
    src = rng.standard_normal((sources, n, d))
    perm = rng.permutation(sources * per_group)
    heads = np.empty((sources * per_group, n, d))
    rotations = {}
    for slot, h in enumerate(perm):
        c = slot // per_group
        q = random_rotation(rng, d)
        rotations[h] = (c, q)
        heads[h] = src[c] @ q + noise * rng.standard_normal((n, d))
    truth = sorted(sorted(int(h) for h in perm[c * per_group:(c + 1) * per_group]) for c in range(sources))
    return heads, truth, rotations


@pytest.mark.parametrize("method", [ha.GroupingMethod.LOCAL_SEARCH, ha.GroupingMethod.HILL_CLIMB, ha.GroupingMethod.EXACT])
def test_planted_groups_are_recovered(rng, method):
    heads, truth, _ = planted_heads(rng, 3, 4, 8, 300, 0.05)
    g = ha.HeadGram.from_activations(heads, normalize_rows=True)
    s = ha.similarity_matrix(g)
    kwargs = dict(restarts=20, iterations=500) if method == ha.GroupingMethod.HILL_CLIMB else {}
    grouping = ha.group_heads(s, 3, method=method, seed=7, **kwargs)
    assert sorted(sorted(x) for x in grouping.groups) == truth
    assert grouping.score == pytest.approx(ha.grouping_score(s, grouping.groups))
    # Without alignment the rotated copies look unrelated: the planted grouping is not special then.
    assert s[truth[0][0], truth[0][1]] > 0.9


def test_local_search_reaches_hill_climb_and_exact_is_optimal(rng):
    for _ in range(5):
        a = rng.standard_normal((12, 12))
        s = a + a.T
        hc = ha.group_heads(s, 3, method=ha.GroupingMethod.HILL_CLIMB, restarts=20, iterations=300)
        ls = ha.group_heads(s, 3)
        ex = ha.group_heads(s, 3, method=ha.GroupingMethod.EXACT)
        assert ls.score >= hc.score - 1e-9
        assert ex.score >= ls.score - 1e-9


def test_group_heads_errors():
    with pytest.raises(ValueError, match="divisible"):
        ha.group_heads(np.eye(6), 4)
    with pytest.raises(ValueError):
        ha.group_heads(np.ones((3, 4)), 1)
    with pytest.raises(ValueError):
        ha.group_contiguous(5, 2)
    assert ha.group_contiguous(6, 3).groups == [[0, 1], [2, 3], [4, 5]]


def test_gpa_recovers_relative_rotations(rng):
    heads, _, rot = planted_heads(rng, 1, 4, 6, 200, 0.0)
    g = ha.HeadGram.from_activations(heads)
    res = ha.align_group(g, [0, 1, 2, 3], ha.Alignment.ORTHOGONAL, tolerance=1e-12)
    assert res.converged
    assert res.rotations.shape == (4, 6, 6)
    aligned = [heads[t] @ res.rotations[t] for t in range(4)]
    for t in range(1, 4):
        np.testing.assert_allclose(aligned[t], aligned[0], atol=1e-8)
    # The objective is Σ_{t<u} tr(R_tᵀ G_tu R_u) / n.
    ref = sum(np.trace(aligned[t].T @ aligned[u]) for t in range(4) for u in range(t + 1, 4)) / 200
    assert res.objective == pytest.approx(ref, rel=1e-10)


def test_gpa_rope_rotations_stay_in_their_planes(rng):
    d = 8
    base = rng.standard_normal((300, d))
    heads = np.stack([base @ rope_rotation(rng, d) + 0.01 * rng.standard_normal((300, d)) for _ in range(3)])
    g = ha.HeadGram.from_activations(heads)
    res = ha.align_group(g, [0, 1, 2], ha.Alignment.ROPE)
    for r in res.rotations:
        mask = np.zeros((d, d), bool)
        for p in range(d // 2):
            for a in (p, p + d // 2):
                for b in (p, p + d // 2):
                    mask[a, b] = True
        assert np.abs(r[~mask]).max() == 0
        np.testing.assert_allclose(r.T @ r, np.eye(d), atol=1e-12)


def random_layer(rng, h, kv, d, hidden):
    q = rng.standard_normal((h * d, hidden)) / np.sqrt(hidden)
    k = rng.standard_normal((kv * d, hidden)) / np.sqrt(hidden)
    v = rng.standard_normal((kv * d, hidden)) / np.sqrt(hidden)
    o = rng.standard_normal((hidden, h * d)) / np.sqrt(h * d)
    return q, k, v, o


def test_apply_alignment_preserves_the_attention_function(rng):
    h, d, hidden = 4, 8, 24
    q, k, v, o = random_layer(rng, h, h, d, hidden)
    x = rng.standard_normal((16, hidden))
    w = ha.AttentionWeights(q, k, v, o, num_heads=h)
    before = attention(x, w.q, w.k, w.v, w.o, h, h)
    address = w.k.ctypes.data
    order = [2, 0, 3, 1]
    kr = np.stack([rope_rotation(rng, d) for _ in range(h)])
    vr = np.stack([random_rotation(rng, d) for _ in range(h)])
    ha.apply_alignment(w, order, kr, vr)
    assert w.k.ctypes.data == address  # in place: the views still show the layer's storage
    after = attention(x, w.q, w.k, w.v, w.o, h, h)
    np.testing.assert_allclose(after, before, atol=1e-12)
    # The weights moved as documented: k_p ← R_pᵀ k_order[p].
    np.testing.assert_allclose(w.k[:d], kr[0].T @ k[2 * d:3 * d], atol=1e-12)
    with pytest.raises(ValueError):  # not a permutation: nothing changes
        ha.apply_alignment(w, [0, 0, 1, 2], kr, vr)
    np.testing.assert_allclose(attention(x, w.q, w.k, w.v, w.o, h, h), before, atol=1e-12)
    with pytest.raises(ValueError):  # not orthogonal
        ha.apply_alignment(w, order, kr * 2, vr)


def test_merge_to_gqa_is_the_group_mean(rng):
    h, d, hidden = 6, 4, 10
    q, k, v, o = random_layer(rng, h, h, d, hidden)
    w = ha.AttentionWeights(q, k, v, o, num_heads=h)
    m = ha.merge_to_gqa(w, 2)
    assert (m.num_kv_heads, m.k.shape) == (2, (2 * d, hidden))
    np.testing.assert_allclose(m.k[:d], k.reshape(h, d, hidden)[:3].mean(axis=0), atol=1e-14)
    np.testing.assert_allclose(m.v[d:], v.reshape(h, d, hidden)[3:].mean(axis=0), atol=1e-14)
    np.testing.assert_array_equal(m.q, q)
    wts = np.array([1.0, 2.0, 3.0, 1.0, 1.0, 2.0])
    mw = ha.merge_to_gqa(w, 2, key_weights=wts)
    kk = k.reshape(h, d, hidden)
    np.testing.assert_allclose(mw.k[:d], (kk[0] + 2 * kk[1] + 3 * kk[2]) / 6, atol=1e-14)
    with pytest.raises(ValueError):
        ha.merge_to_gqa(w, 4)


def test_attention_weights_validation(rng):
    q, k, v, o = random_layer(rng, 4, 4, 8, 16)
    with pytest.raises(ValueError):
        ha.AttentionWeights(q, k, v, o[:, :-1], num_heads=4)
    with pytest.raises(ValueError):
        ha.AttentionWeights(q, k, v, o, num_heads=3)
    bad = q.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        ha.AttentionWeights(bad, k, v, o, num_heads=4)
    with pytest.raises(ValueError):
        ha.AttentionWeights(q, k, v, o, num_heads=4, q_bias=np.ones(5))
    w = ha.AttentionWeights(q, k, v, o, num_heads=4, k_bias=np.ones(32))
    assert w.q_bias is None and w.k_bias.shape == (32,)
    assert w.dtype == np.float64
    assert ha.AttentionWeights(q.astype(np.float32), k, v, o, num_heads=4).dtype == np.float32


def planted_layer(rng, h, groups, d, hidden, noise):
    """An MHA layer whose key heads are RoPE-plane-rotated copies of `groups` sources (values: any
    orthogonal copies), in shuffled order: aligned merging loses almost nothing."""
    per = h // groups
    ks, vs = rng.standard_normal((groups, d, hidden)), rng.standard_normal((groups, d, hidden))
    perm = rng.permutation(h)
    k = np.empty((h, d, hidden))
    v = np.empty((h, d, hidden))
    for slot, head in enumerate(perm):
        c = slot // per
        k[head] = rope_rotation(rng, d).T @ ks[c] + noise * rng.standard_normal((d, hidden))
        v[head] = random_rotation(rng, d).T @ vs[c] + noise * rng.standard_normal((d, hidden))
    q = rng.standard_normal((h * d, hidden))
    o = rng.standard_normal((hidden, h * d))
    scale = 1 / np.sqrt(hidden)
    return q * scale, k.reshape(h * d, hidden) * scale, v.reshape(h * d, hidden) * scale, o * scale


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_convert_layer_on_a_planted_layer(rng, dtype):
    h, groups, d, hidden, n = 8, 2, 8, 32, 2000
    q, k, v, o = (a.astype(dtype) for a in planted_layer(rng, h, groups, d, hidden, 0.01))
    x = rng.standard_normal((n, hidden)).astype(dtype)
    keys, values = ha.HeadGram(h, d, normalize_rows=True), ha.HeadGram(h, d, normalize_rows=True)
    keys.add(x @ k.T)
    values.add(x @ v.T)
    conv = ha.convert_layer(q, k, v, o, num_heads=h, num_groups=groups, keys=keys, values=values)
    w = conv.weights
    assert (w.num_heads, w.num_kv_heads, w.k.shape, w.q.shape) == (h, groups, (groups * d, hidden), (h * d, hidden))
    assert conv.plan.converged
    plain = ha.convert_layer(q, k, v, o, num_heads=h, num_groups=groups, keys=keys, values=values,
                             group_by=ha.GroupBy.NONE, key_alignment=ha.Alignment.NONE,
                             value_alignment=ha.Alignment.NONE)
    xt = rng.standard_normal((24, hidden))
    ref = attention(xt, q.astype(float), k.astype(float), v.astype(float), o.astype(float), h, h)
    err = np.linalg.norm(attention(xt, w.q, w.k, w.v, w.o, h, groups) - ref) / np.linalg.norm(ref)
    err_plain = np.linalg.norm(attention(xt, plain.weights.q, plain.weights.k, plain.weights.v, plain.weights.o, h, groups) - ref) / np.linalg.norm(ref)
    assert err < 0.05, err
    assert err_plain > 10 * err, (err, err_plain)
    # One call equals the steps it is made of: apply_alignment with the plan, then merge_to_gqa.
    steps = ha.AttentionWeights(q, k, v, o, num_heads=h, dtype="float64")
    plan = conv.plan
    ha.apply_alignment(steps, plan.order, plan.key_rotations, plan.value_rotations)
    merged = ha.merge_to_gqa(steps, groups)
    np.testing.assert_allclose(merged.k, w.k, atol=1e-12)
    np.testing.assert_allclose(merged.o, w.o, atol=1e-12)
    # Reusing the plan gives the same layer; the plan's predicted value error is small.
    again = ha.convert_layer(q, k, v, o, num_heads=h, num_groups=groups, plan=plan)
    np.testing.assert_array_equal(again.weights.v, w.v)
    assert plan.value_error.relative < 0.01
    assert plan.grouping.score == pytest.approx(ha.grouping_score(plan.similarity, plan.grouping.groups))


def test_convert_layer_accepts_torch_and_data_free(rng):
    import torch

    h, d, hidden = 4, 8, 16
    q, k, v, o = (torch.from_numpy(a).float() for a in random_layer(rng, h, h, d, hidden))
    conv = ha.convert_layer(q, k, v, o, num_heads=h, num_groups=2)
    assert conv.weights.dtype == np.float32
    assert conv.weights.num_kv_heads == 2
    # Data-free: the same as calibrating with Grams from the weights.
    gk = ha.HeadGram.from_weights(k, h, d, dtype="float32")
    gv = ha.HeadGram.from_weights(v, h, d, dtype="float32")
    same = ha.convert_layer(q, k, v, o, num_heads=h, num_groups=2, keys=gk, values=gv)
    np.testing.assert_allclose(same.weights.k, conv.weights.k, atol=1e-6)


def test_convert_layer_errors(rng):
    q, k, v, o = random_layer(rng, 4, 4, 8, 16)
    with pytest.raises(ValueError, match="divisible"):
        ha.convert_layer(q, k, v, o, num_heads=4, num_groups=3)
    with pytest.raises(ValueError):
        ha.convert_layer(q, k[:8], v[:8], o, num_heads=4, num_groups=1)  # GQA input: data-free needs MHA
    keys = ha.HeadGram(4, 8)
    with pytest.raises(ValueError):
        ha.convert_layer(q, k, v, o, num_heads=4, num_groups=2, keys=keys)  # values missing
    with pytest.raises(ValueError, match="no tokens"):
        ha.convert_layer(q, k, v, o, num_heads=4, num_groups=2, keys=keys, values=ha.HeadGram(4, 8))
    plan = ha.convert_layer(q, k, v, o, num_heads=4, num_groups=2).plan
    with pytest.raises(ValueError, match="plan"):
        ha.convert_layer(q, k, v, o, num_heads=4, num_groups=4, plan=plan)
    with pytest.raises(ValueError, match="dtype"):
        ha.convert_layer(q.astype(np.float32), k, v, o, num_heads=4, num_groups=2, plan=plan, dtype="float32")
    nan = v.copy()
    nan[3, 3] = np.nan
    with pytest.raises(ValueError):
        ha.convert_layer(q, k, nan, o, num_heads=4, num_groups=2)


def test_predicted_merge_error_equals_direct(rng):
    h, d, n = 4, 3, 500
    x = rng.standard_normal((n, h * d))
    g = ha.HeadGram(h, d)
    g.add(x)
    groups = [[0, 2], [1, 3]]
    rot = np.stack([random_rotation(rng, d) for _ in range(h)])
    e = ha.predicted_merge_error(g, groups, rot)
    heads = x.reshape(n, h, d)
    per_head = np.empty(h)
    for grp in groups:
        aligned = [heads[:, i] @ rot[i] for i in grp]
        mean = sum(aligned) / len(aligned)
        for i, a in zip(grp, aligned):
            per_head[i] = np.mean(np.sum((a - mean) ** 2, axis=1))
    np.testing.assert_allclose(e.per_head, per_head, rtol=1e-10)
    assert e.total == pytest.approx(per_head.sum())
    np.testing.assert_allclose(ha.head_energies(g), np.mean(np.sum(heads ** 2, axis=2), axis=0), rtol=1e-12)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_hard_concrete_matches_its_formulas(rng):
    la = rng.normal(0, 2, (3, 5))
    u = rng.uniform(0.01, 0.99, (3, 5))
    hc = ha.HardConcrete(beta=0.5, gamma=-0.2, zeta=1.2)
    np.testing.assert_allclose(ha.prob_nonzero(la, hc), sigmoid(la - 0.5 * np.log(0.2 / 1.2)), rtol=1e-12)
    np.testing.assert_allclose(ha.deterministic_gates(la, hc), np.clip(sigmoid(la) * 1.4 - 0.2, 0, 1), rtol=1e-12)
    s = sigmoid((np.log(u) - np.log(1 - u) + la) / 0.5)
    np.testing.assert_allclose(ha.sample_gates(la, u, hc), np.clip(s * 1.4 - 0.2, 0, 1), rtol=1e-12)
    assert ha.expected_l0(la, hc) == pytest.approx(ha.prob_nonzero(la, hc).sum())
    eps = 1e-6
    for f, g in [(ha.prob_nonzero, ha.prob_nonzero_grad), (ha.deterministic_gates, ha.deterministic_gates_grad)]:
        fd = (f(la + eps, hc) - f(la - eps, hc)) / (2 * eps)
        np.testing.assert_allclose(g(la, hc), fd, atol=1e-6)
    fd = (ha.sample_gates(la + eps, u, hc) - ha.sample_gates(la - eps, u, hc)) / (2 * eps)
    np.testing.assert_allclose(ha.sample_gates_grad(la, u, hc), fd, atol=1e-6)
    v = ha.prob_nonzero(np.zeros(4, dtype=np.float32))
    assert v.shape == (4,) and v.dtype == np.float32
    with pytest.raises(ValueError):
        ha.prob_nonzero(la, ha.HardConcrete(beta=-1))
    with pytest.raises(ValueError):
        ha.sample_gates(la, u[:, :2], hc)
    with pytest.raises(ValueError):
        ha.prob_nonzero(np.array([np.nan]))


def test_reference_gates(rng):
    r = ha.ReferenceGates()
    theta = rng.normal(0, 2e-3, 7)
    np.testing.assert_allclose(ha.reference_logits(theta, r), theta / (r.scale * r.temperature), rtol=1e-12)
    assert ha.reference_initial_parameter(r) == pytest.approx(6 * r.temperature * r.scale)
    z = ha.reference_deterministic_gates(theta, r, 3)
    assert (z == 0).sum() == 3
    assert ha.reference_sparsity_loss(0.3, 0.5) == pytest.approx(0.2 + (0.2 + 1e-6) ** 2)
    assert ha.reference_target_sparsity(15, 100, 0.5) == pytest.approx(0.25)
    assert ha.reference_gates_forced_off(80, 100) and not ha.reference_gates_forced_off(79, 100)


def test_head_moments_equal_numpy_and_merge(rng):
    h, d, n = 3, 4, 500
    x = rng.standard_normal((n, h * d))
    m, first, second = ha.HeadMoments(h, d), ha.HeadMoments(h, d), ha.HeadMoments(h, d)
    m.add(x)
    first.add(x[:200])
    second.add(x[200:].reshape(30, 10, h * d))  # leading axes are tokens
    first.merge(second)
    for acc in (m, first):
        assert (acc.num_heads, acc.head_dim, acc.tokens) == (h, d, n)
        for head in range(h):
            xs = x[:, head * d:(head + 1) * d]
            np.testing.assert_allclose(acc.block(head), xs.T @ xs, rtol=1e-12, atol=1e-10)
    w = rng.standard_normal((h * d, 7))
    data_free = ha.HeadMoments.from_weights(w, h, d)
    np.testing.assert_allclose(data_free.block(1), w[d:2 * d] @ w[d:2 * d].T, rtol=1e-12)
    with pytest.raises(ValueError, match="last axis"):
        m.add(x[:, :-1])
    bad = x[:5].copy()
    bad[2, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.add(bad)
    assert m.tokens == n  # nothing was added
    with pytest.raises(ValueError, match="dtypes"):
        m.merge(ha.HeadMoments(h, d, dtype="float32"))
    with pytest.raises(ValueError, match="out of range"):
        m.block(h)


def test_query_aware_merge_uses_the_query_moments(rng):
    """Planted: in each group of 4 heads, head j's queries read only RoPE plane j of its keys, and the
    heads' keys agree on nothing else. Weighting the key merge by the query moments keeps every
    head's logits; the plain mean does not."""
    h, groups, d, hidden, n = 8, 2, 8, 32, 3000
    per, half = h // groups, d // 2
    q = np.zeros((h, d, hidden))
    k = rng.standard_normal((h, d, hidden)) / np.sqrt(hidden)
    for head in range(h):
        plane = [head % per, head % per + half]  # half-split pairing: plane p = (p, p + d/2)
        q[head, plane] = rng.standard_normal((2, hidden)) / np.sqrt(hidden)
    q, k = q.reshape(h * d, hidden), k.reshape(h * d, hidden)
    v = rng.standard_normal((h * d, hidden)) / np.sqrt(hidden)
    o = rng.standard_normal((hidden, h * d)) / np.sqrt(h * d)
    x = rng.standard_normal((n, hidden))
    keys, values, queries = ha.HeadGram(h, d), ha.HeadGram(h, d), ha.HeadMoments(h, d)
    keys.add(x @ k.T)
    values.add(x @ v.T)
    queries.add(x @ q.T)
    none = dict(group_by=ha.GroupBy.NONE, key_alignment=ha.Alignment.NONE, value_alignment=ha.Alignment.NONE)
    mean = ha.convert_layer(q, k, v, o, num_heads=h, num_groups=groups, keys=keys, values=values, **none)
    aware = ha.convert_layer(q, k, v, o, num_heads=h, num_groups=groups, plan=mean.plan, queries=queries,
                             merge=ha.MergeWeighting.QUERY_AWARE)
    xt = rng.standard_normal((50, hidden))

    def logit_error(c):  # pre-RoPE logits q_h(x)·k_g(x') against the MHA layer's (RoPE turns within planes)
        w = c.weights
        err = ref = 0.0
        for head in range(h):
            g = head // per
            qh = xt @ w.q[head * d:(head + 1) * d].T
            want = qh @ (xt @ k[head * d:(head + 1) * d].T).T
            got = qh @ (xt @ w.k[g * d:(g + 1) * d].T).T
            err += np.sum((got - want) ** 2)
            ref += np.sum(want ** 2)
        return np.sqrt(err / ref)

    assert logit_error(aware) < 0.02 * logit_error(mean), (logit_error(aware), logit_error(mean))
    np.testing.assert_array_equal(aware.weights.v, mean.weights.v)  # QUERY_AWARE merges the values as the mean
    with pytest.raises(ValueError, match="quer"):
        ha.convert_layer(q, k, v, o, num_heads=h, num_groups=groups, plan=mean.plan, merge=ha.MergeWeighting.FULL)
    with pytest.raises(ValueError, match="dtype"):
        ha.convert_layer(q, k, v, o, num_heads=h, num_groups=groups, plan=mean.plan, queries=ha.HeadMoments(h, d, dtype="float32"),
                         merge=ha.MergeWeighting.FULL)
    with pytest.raises(ValueError, match="query moments are"):
        ha.convert_layer(q, k, v, o, num_heads=h, num_groups=groups, plan=mean.plan, queries=ha.HeadMoments(h, 4),
                         merge=ha.MergeWeighting.FULL)
