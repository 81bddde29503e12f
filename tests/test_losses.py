"""The supervised losses on hand-made predictions: zero where the draft equals the target, the soft
token term of EAGLE's feature loss, clear errors when the data lacks what a loss needs."""

import pytest
import torch

from koala_core.errors import ConfigError
from koala_core.interfaces import DepthOutput


def output(with_topk=True):
    torch.manual_seed(0)
    N, V, D = 6, 10, 4
    topk_ids = torch.stack([torch.randperm(V)[:3] for _ in range(N)])
    topk_ids[0, 2] = -1  # a cell outside the draft vocabulary
    topk_logp = torch.log_softmax(torch.randn(N, 3), -1) - 0.1  # a little mass outside the top-k
    feats = torch.randn(N, D)
    return DepthOutput(logits=torch.randn(N, V), labels=topk_ids[:, 0], weight=torch.ones(N),
                       context=torch.randn(N, D), features=feats, target_features=feats + 0.5,
                       topk_ids=topk_ids if with_topk else None,
                       topk_logp=topk_logp if with_topk else None)


def test_kd_is_zero_when_the_draft_is_the_targets_top_k_distribution(registry):
    out = output()
    kd = registry.create("losses", "kd")
    assert float(kd(out)) > 0.1
    valid = out.topk_ids >= 0
    p = torch.softmax(out.topk_logp, -1) * valid
    p = p / p.sum(-1, keepdim=True)
    logits = torch.full_like(out.logits, -1e4)
    logits.scatter_(1, out.topk_ids.clamp_min(0), torch.where(valid, p.log(), torch.tensor(-1e4)))
    out.logits = logits
    assert float(kd(out)) == pytest.approx(0.0, abs=1e-5)


def test_feature_loss_soft_token_term(registry):
    from koala_losses.losses import token_ce, topk_kl

    out = output()
    reg = torch.nn.functional.smooth_l1_loss(out.features, out.target_features)
    hard = registry.create("losses", "feature", {"ce_weight": 0.5})
    soft = registry.create("losses", "feature", {"ce_weight": 0.5, "soft": True})
    torch.testing.assert_close(hard(out), reg + 0.5 * token_ce(out))
    torch.testing.assert_close(soft(out), reg + 0.5 * topk_kl(out))
    assert not torch.isclose(hard(out), soft(out))
    with pytest.raises(ConfigError, match="top-k"):
        soft(output(with_topk=False))
    with pytest.raises(ConfigError, match="top-k"):
        registry.create("losses", "kd")(output(with_topk=False))


def test_kd_temperature_softens_both_sides(registry):
    """kd at temperature T is kd at 1 of the logits and the target's log-probs divided by T (the
    divide is skipped at T = 1, the common case, for speed: both paths must agree)."""
    out, T = output(), 2.5
    scaled = DepthOutput(logits=out.logits / T, labels=out.labels, weight=out.weight,
                         context=out.context, topk_ids=out.topk_ids, topk_logp=out.topk_logp / T)
    warm = registry.create("losses", "kd", {"temperature": T})(out)
    torch.testing.assert_close(warm, registry.create("losses", "kd")(scaled))
    assert not torch.isclose(warm, registry.create("losses", "kd")(out))
