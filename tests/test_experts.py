"""σ intervals of the expert tree and routing (eDiff-I §4.1, Appendix B)."""

import math

import pytest
import torch
from scipy.stats import lognorm

from ediff_core.core.experts import ExpertEnsemble, ExpertSpec, Interval, check_tiling, node, three_expert_specs

P = lognorm(s=1.2, scale=math.exp(-1.2))


@pytest.mark.parametrize("level", [1, 2, 3, 5, 9])
def test_node_boundaries_are_lognormal_quantiles(level):
    for i in range(0, 2**level, max(1, 2**level // 7)):
        iv = node(level, i)
        assert math.isclose(iv.lo, P.ppf(i / 2**level), rel_tol=1e-9, abs_tol=1e-12)
        hi = P.ppf((i + 1) / 2**level)
        assert (math.isinf(iv.hi) and math.isinf(hi)) or math.isclose(iv.hi, hi, rel_tol=1e-9)


def test_paper_landmarks():
    assert abs(node(1, 0).hi - 0.301) < 1e-3
    assert abs(node(3, 0).hi - 0.0757) < 1e-3
    assert abs(node(9, 511).lo - 9.6) < 0.05
    with pytest.raises(ValueError):
        node(3, 8)


def test_three_expert_preset_tiles():
    specs = three_expert_specs()
    assert [s.name for s in specs] == ["E3_0", "complement_3_9", "E9_511"]
    check_tiling(specs)
    with pytest.raises(ValueError, match="gap or overlap"):
        check_tiling([ExpertSpec("a", Interval(0, 1.0)), ExpertSpec("b", Interval(1.5, math.inf))])


class _Tag(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x, sigma, cond):
        return torch.full_like(x, float(self.k))


class _Cond:
    def index(self, m):
        return self


def test_every_sigma_routes_to_exactly_one_expert():
    specs = three_expert_specs(5, 3)
    ens = ExpertEnsemble([_Tag(i) for i in range(3)], specs)
    sigma = torch.cat([torch.logspace(-6, 4, 5000), torch.tensor([s.interval.lo for s in specs[1:]]), torch.tensor([0.0])])
    idx = ens.expert_index(sigma)
    assert (idx >= 0).all()
    for i, s in enumerate(specs):
        inside = (sigma >= s.interval.lo) & (sigma < s.interval.hi)
        assert torch.equal(idx == i, inside)
    out = ens(torch.zeros(len(sigma), 1, 1, 1), sigma, _Cond())
    assert torch.equal(out.flatten().long(), idx)


def test_ensemble_of_identical_experts_equals_the_single_model(tiny_pipe):
    expert = tiny_pipe.base.ensemble.experts[0]
    specs = three_expert_specs(2, 2)
    ens = ExpertEnsemble([expert, expert, expert], specs)
    enc = tiny_pipe.encoders
    cond = enc.encode(["a red circle", "two blue stars", "a star", "a green heart"])
    x = torch.randn(4, 3, 16, 16)
    sigma = torch.tensor([0.01, 0.3, 5.0, 40.0])
    with torch.no_grad():
        # Same computation, sample by sample: bit-identical.
        for i in range(4):
            one = cond.index(slice(i, i + 1))
            assert torch.equal(ens(x[i : i + 1], sigma[i : i + 1], one), expert(x[i : i + 1], sigma[i : i + 1], one))
        # All σ inside one expert: one batched call, bit-identical.
        same = torch.tensor([1.0, 2.0, 5.0, 40.0])
        assert torch.equal(ens(x, same, cond), expert(x, same, cond))
        # Mixed σ splits the batch into per-expert calls; only float rounding may differ.
        torch.testing.assert_close(ens(x, sigma, cond), expert(x, sigma, cond), rtol=0, atol=1e-5)


def test_per_expert_guidance():
    specs = [ExpertSpec("lo", Interval(0, 1.0), 2.0), ExpertSpec("hi", Interval(1.0, math.inf))]
    ens = ExpertEnsemble([_Tag(0), _Tag(1)], specs)
    g = ens.guidance(torch.tensor([0.5, 3.0]), torch.tensor([7.0, 7.0]))
    assert g.tolist() == [2.0, 7.0]
