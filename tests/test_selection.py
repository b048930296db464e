import logging

import pytest
import torch

from dean_hf import DeanError, NeuronMask, select_coupled_neurons
from dean_hf.selection import top_k_flat


def scores_from(values):
    return {"m": torch.tensor(values, dtype=torch.float32)}


def ranked(top, numel=10):
    """Scores whose top-k set is exactly `top` (in that order of importance)."""
    s = torch.zeros(numel)
    for rank, i in enumerate(top):
        s[i] = 100.0 - rank
    return s


def test_exact_set_difference():
    f = {"m": ranked([1, 2, 5, 7])}
    p = {"m": ranked([2, 5, 8, 7])}
    g = {"m": ranked([2, 9])}
    mask = select_coupled_neurons({"fairness": f, "privacy": p}, g, q=0.4, p=0.2)
    # top-4 F = {1,2,5,7}, top-4 P = {2,5,7,8}, top-2 G = {2,9}: (F ∩ P) \ G = {5, 7}
    assert mask["m"].tolist() == [5, 7]
    assert mask["m"].dtype == torch.int64
    assert mask.num_masked == 2


def test_three_targets_and_no_general():
    a, b, c = ({"m": ranked(t)} for t in ([0, 1, 2], [1, 2, 3], [2, 1, 4]))
    mask = select_coupled_neurons({"a": a, "b": b, "c": c}, None, q=0.3)
    assert mask["m"].tolist() == [1, 2]


def test_floor_of_q_times_numel():
    f = {"m": ranked([0, 1, 2], numel=10)}
    # floor(0.29 * 10) = 2: only the two best.
    mask = select_coupled_neurons({"f": f, "p": f}, None, q=0.29)
    assert mask["m"].tolist() == [0, 1]


def test_ties_broken_by_index():
    flat = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0, 3.0])
    assert top_k_flat(flat, 2).nonzero().squeeze(1).tolist() == [1, 2]
    assert top_k_flat(flat, 0).sum() == 0 and top_k_flat(flat, 6).all()
    f = {"m": flat}
    a = select_coupled_neurons({"f": f, "p": f}, None, q=0.5)
    b = select_coupled_neurons({"f": f, "p": f}, None, q=0.5)
    assert a["m"].tolist() == b["m"].tolist() == [1, 2, 3]


def test_legacy_reproduces_reference_defect():
    # Module docstring's worked example: F = {1,2,5}, P = {3,5,9}, G = {2,0,4} (the same k for p and q: the
    # reference fails otherwise).
    f = {"m": ranked([1, 2, 5])}
    p = {"m": ranked([3, 5, 9])}
    g = {"m": ranked([2, 0, 4])}
    correct = select_coupled_neurons({"fairness": f, "privacy": p}, g, q=0.3, p=0.3)
    legacy = select_coupled_neurons({"fairness": f, "privacy": p}, g, q=0.3, p=0.3, legacy=True)
    assert correct["m"].tolist() == [5]
    # Reference: sorted F [1,2,5] not-in-G [T,F,T]; sorted P [3,5,9] not-in-G [T,T,T]; AND -> F[[0,2]]
    assert legacy["m"].tolist() == [1, 5]
    assert legacy.metadata["legacy"] is True


def test_legacy_agrees_when_sets_align():
    f = {"m": ranked([1, 2, 5])}
    p = {"m": ranked([2, 5, 8])}
    g = {"m": ranked([2, 0, 4])}
    kw = dict(q=0.3, p=0.3)
    assert select_coupled_neurons({"f": f, "p": p}, g, **kw)["m"].tolist() == [5]
    assert select_coupled_neurons({"f": f, "p": p}, g, legacy=True, **kw)["m"].tolist() == [5]


def test_multi_dim_weights_and_mask_type():
    f = {"a.layers.0.mlp.up_proj": torch.rand(4, 6, generator=torch.Generator().manual_seed(0))}
    mask = select_coupled_neurons({"f": f, "p": f}, None, q=0.25)
    assert isinstance(mask, NeuronMask)
    assert mask.shapes["a.layers.0.mlp.up_proj"] == (4, 6)
    assert mask.num_masked == 6


@pytest.mark.parametrize("q", [0, -0.1, 1.5, float("nan"), "0.1", True])
def test_bad_q(q):
    with pytest.raises(DeanError, match="q="):
        select_coupled_neurons({"f": scores_from([1.0, 2.0])}, None, q=q)


def test_bad_p():
    with pytest.raises(DeanError, match="p="):
        select_coupled_neurons({"f": scores_from([1.0])}, scores_from([1.0]), q=0.5, p=2)


def test_mismatched_modules_and_shapes():
    with pytest.raises(DeanError, match="other modules"):
        select_coupled_neurons({"f": {"a": torch.ones(2)}, "p": {"b": torch.ones(2)}}, None, q=0.5)
    with pytest.raises(DeanError, match="shape"):
        select_coupled_neurons({"f": {"a": torch.ones(2)}, "p": {"a": torch.ones(3)}}, None, q=0.5)
    with pytest.raises(DeanError, match="NaN"):
        select_coupled_neurons({"f": {"a": torch.tensor([1.0, float("nan")])}}, None, q=0.5)
    with pytest.raises(DeanError, match="empty"):
        select_coupled_neurons({}, None, q=0.5)


def test_warns_when_nothing_can_be_selected(caplog):
    logging.getLogger("dean_hf").propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="dean_hf"):
            mask = select_coupled_neurons({"f": {"a": torch.rand(10, 10)}}, None, q=5e-7)
    finally:
        logging.getLogger("dean_hf").propagate = False
    assert mask.num_masked == 0
    assert "q >= 0.01" in caplog.text


def test_warns_when_the_mask_is_large(dean_log):
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(10, 10, generator=g), "b": torch.rand(4, 5, generator=g)}
    mask = select_coupled_neurons({"f": scores, "p": scores}, None, q=1)
    assert mask.num_masked == 120
    assert "q=1 " in dean_log.text and "120 weights in 2 of 2 modules" in dean_log.text
    assert "at most 100% of one matrix" in dean_log.text and "5e-7" in dean_log.text

    dean_log.clear()
    other = {"a": -scores["a"], "b": -scores["b"]}  # q = 3% lets a mask be large; F ∩ P here is 2% of one matrix
    other["a"].view(-1)[scores["a"].view(-1).topk(2).indices] = 9.0
    mask = select_coupled_neurons({"f": scores, "p": other}, None, q=0.03)
    assert mask.num_masked == 2
    assert "q=0.03 " in dean_log.text and "2 weights in 1 of 2 modules" in dean_log.text
    assert "at most 2% of one matrix (a)" in dean_log.text

    dean_log.clear()
    select_coupled_neurons({"f": scores, "p": scores}, None, q=0.01)  # 1 weight of 100: the limit, no warning
    select_coupled_neurons({"f": scores}, None, q=5e-3)
    assert "DEAN masks are meant to be tiny" not in dean_log.text


def test_scores_without_modules():
    with pytest.raises(DeanError, match="hold no module"):
        select_coupled_neurons({"f": {}}, None, q=0.5)


def test_legacy_keeps_the_first_targets_indices_in_either_order():
    """The reference keeps dataset1's indices: the order of the targets decides the legacy mask."""
    import torch

    from dean_hf import ImportanceScores

    shape = (1, 10)
    fair = torch.zeros(shape)
    fair[0, [1, 2, 5]] = torch.tensor([3.0, 2.0, 1.0])  # F = {1, 2, 5}
    priv = torch.zeros(shape)
    priv[0, [3, 5, 9]] = torch.tensor([3.0, 2.0, 1.0])  # P = {3, 5, 9}
    gen = torch.zeros(shape)
    gen[0, [2, 0, 4]] = torch.tensor([3.0, 2.0, 1.0])  # G = {0, 2, 4}
    f, p, g = (ImportanceScores({"m": t}) for t in (fair, priv, gen))
    fairness_first = select_coupled_neurons({"fairness": f, "privacy": p}, g, q=0.35, p=0.35, legacy=True)
    privacy_first = select_coupled_neurons({"privacy": p, "fairness": f}, g, q=0.35, p=0.35, legacy=True)
    assert fairness_first["m"].tolist() == [1, 5]  # [T, F, T] & [T, T, T] over F sorted [1, 2, 5]
    assert privacy_first["m"].tolist() == [3, 9]  # [T, T, T] & [T, F, T] over P sorted [3, 5, 9]
    exact = select_coupled_neurons({"fairness": f, "privacy": p}, g, q=0.35, p=0.35)
    assert exact["m"].tolist() == [5]  # (F ∩ P) \ G, the same in either order


def test_legacy_counts_like_the_reference_and_refuses_different_k():
    import torch

    from dean_hf import ImportanceScores

    g = torch.Generator().manual_seed(0)
    s = {n: ImportanceScores({"m": torch.rand(3, 10, generator=g)}) for n in ("a", "b", "c")}
    legacy = select_coupled_neurons({"a": s["a"], "b": s["a"]}, None, q=0.7, legacy=True)
    exact = select_coupled_neurons({"a": s["a"], "b": s["a"]}, None, q=0.7)
    assert legacy["m"].numel() == 20 and exact["m"].numel() == 21  # int(0.7 * 3 * 10) vs floor(0.7 * 30)
    with pytest.raises(DeanError, match="p and q keep different numbers"):
        select_coupled_neurons({"a": s["a"], "b": s["b"]}, s["c"], q=0.5, p=0.2, legacy=True)
