"""The PyTorch example: hooks collect the right statistics (keys, values, queries), and the converted model is what the
planted structure promises."""
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import convert_torch_model as example  # noqa: E402

import headalign as ha  # noqa: E402


def test_hooks_accumulate_the_pre_rope_keys_and_values():
    torch.manual_seed(1)
    model = example.TinyLlama(hidden=64, layers=2, heads=4).eval()
    batches = [torch.randint(0, 256, (2, 16)) for _ in range(3)]
    grams = example.collect_grams(model, batches)
    with torch.no_grad():  # the direct computation: the layer inputs, then k_proj / v_proj
        outs = {}
        hooks = [b.attn.register_forward_pre_hook(lambda m, inp, i=i: outs.setdefault(i, []).append(inp[0]))
                 for i, b in enumerate(model.blocks)]
        for batch in batches:
            model(batch)
        for h in hooks:
            h.remove()
    for i, block in enumerate(model.blocks):
        x = torch.cat([t.reshape(-1, 64) for t in outs[i]]).double()
        for gram, proj in zip(grams[i], (block.attn.k_proj, block.attn.v_proj)):
            y = (x @ proj.weight.detach().double().T).reshape(-1, 4, 16)
            y = (y / y.norm(dim=2, keepdim=True)).reshape(-1, 64).numpy()  # normalize_rows
            assert gram.tokens == 96
            np.testing.assert_allclose(gram.gram(), y.T @ y, rtol=1e-4, atol=1e-4)
        queries = grams[i][2]
        yq = (x @ block.attn.q_proj.weight.detach().double().T).numpy()
        assert queries.tokens == 96
        for h in range(4):
            np.testing.assert_allclose(queries.block(h), yq[:, h * 16:(h + 1) * 16].T @ yq[:, h * 16:(h + 1) * 16],
                                       rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("heads,groups,seed", [(8, 2, 0), (4, 2, 3), (8, 4, 5)])
def test_aligned_conversion_beats_mean_pool_on_redundant_heads(heads, groups, seed):
    r = example.run(heads=heads, groups=groups, noise=0.002, seed=seed, verbose=False)
    assert r["aligned"] < 0.02, r
    assert r["aligned_full"] < 0.02, r
    assert r["mean_pool"] > 5 * r["aligned"], r


def test_one_group_per_head_keeps_the_model():
    r = example.run(heads=4, groups=4, verbose=False)
    assert r["aligned"] < 1e-5 and r["aligned_full"] < 1e-5 and r["mean_pool"] < 1e-5


def test_parameters_that_require_grad_are_read_like_detached_tensors():
    w = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    r, s = ha.procrustes(w)
    r2, s2 = ha.procrustes(w.detach())
    np.testing.assert_array_equal(r, r2)
    assert s == s2
