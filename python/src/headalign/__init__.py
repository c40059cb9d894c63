"""headalign: align attention heads with orthogonal Procrustes transforms before merging them.

Converts multi-head attention (MHA) layers into grouped-query attention (GQA) as in
arXiv 2412.20677: statistics are streamed once into Gram matrices (:class:`HeadGram`), heads are
compared after pairwise alignment (:func:`similarity_matrix`), grouped (:func:`group_heads`),
aligned within each group by generalized Procrustes (:func:`align_group`), the rotations are folded
into the weights (:func:`apply_alignment`) and the groups merged (:func:`merge_to_gqa`).
:func:`convert_layer` does all of it for one layer in one call, :func:`convert_checkpoint` for a
whole Hugging Face checkpoint directory (as the ``headalign-convert`` program does).

Arrays may be NumPy arrays or PyTorch CPU tensors of any float dtype; they are read in place
where their layout allows. Results are NumPy arrays (``torch.from_numpy`` wraps them without a
copy). Bad input raises :class:`ValueError` with the C++ library's message; unreadable or
malformed files raise :class:`OSError`.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from ._core import (
    Alignment,
    AttentionWeights,
    ConvertedLayer,
    GpaResult,
    GpaUpdate,
    GroupBy,
    Grouping,
    GroupingMethod,
    HardConcrete,
    HeadGram,
    HeadMoments,
    LayerPlan,
    MergeError,
    MergeWeighting,
    Metric,
    PolarMethod,
    ReferenceGates,
    RopePairing,
    RopeSpec,
    __version__,
    align_group,
    apply_alignment,
    convert_checkpoint,
    convert_layer,
    deterministic_gates,
    deterministic_gates_grad,
    expected_l0,
    group_contiguous,
    group_heads,
    grouping_score,
    head_energies,
    joint_similarity,
    merge_to_gqa,
    plan_layer,
    predicted_merge_error,
    prob_nonzero,
    prob_nonzero_grad,
    procrustes,
    procrustes_score,
    reference_clamp_parameters,
    reference_deterministic_gates,
    reference_expected_sparsity,
    reference_gates_forced_off,
    reference_initial_parameter,
    reference_logits,
    reference_prob_nonzero,
    reference_prob_nonzero_grad,
    reference_sample_gates,
    reference_sample_gates_grad,
    reference_sparsity_loss,
    reference_sparsity_loss_grad,
    reference_target_sparsity,
    sample_gates,
    sample_gates_grad,
    similarity_matrix,
    with_blas,
)
from . import _core


def orthogonal_procrustes(A: Any, B: Any, check_finite: bool = True) -> Tuple[np.ndarray, float]:
    """Orthogonal matrix R minimising ``||A @ R - B||_F``, with SciPy's signature and results.

    A drop-in for :func:`scipy.linalg.orthogonal_procrustes`: ``R = U @ Vt`` from the SVD of
    ``A.T @ B``, and ``scale`` the sum of its singular values (``tr(R.T @ A.T @ B)``).

    Parameters
    ----------
    A, B : (M, N) array_like
        Matrices of the same shape (NumPy arrays, PyTorch CPU tensors or nested sequences).
        float32 input gives float32 output; other real input is computed in float64.
    check_finite : bool
        Accepted for compatibility; non-finite input always raises ValueError.

    Returns
    -------
    R : (N, N) ndarray
    scale : float

    Raises
    ------
    ValueError
        If A or B is not 2-D, their shapes differ, they are empty or hold NaN/Inf.
    """
    del check_finite  # always checked
    a, b = _as_float_matrix(A, "A"), _as_float_matrix(B, "B")
    if a.shape != b.shape:
        raise ValueError(f"the shapes of A and B differ ({a.shape} vs {b.shape})")
    return _core._orthogonal_procrustes(a, b)


def _as_float_matrix(x: Any, name: str) -> Any:
    """x unchanged when the bindings read it in place (a float array or tensor), else as float64."""
    if hasattr(x, "__dlpack__") or isinstance(x, np.ndarray):
        dtype = getattr(x, "dtype", None)
        if str(dtype).replace("torch.", "") in ("float16", "bfloat16", "float32", "float64"):
            if getattr(x, "ndim", 2) != 2:
                raise ValueError(f"expected ndim to be 2, but observed {x.ndim} ({name})")
            return x
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"expected ndim to be 2, but observed {arr.ndim} ({name})")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real")
    return np.asarray(arr, dtype=np.float64)


__all__ = [name for name in dir() if not name.startswith("_") and name not in ("annotations", "Any", "Tuple", "np")]
