"""The oneDNN fp32 Linear swap: same results (to float rounding), same weights, greedy unchanged."""

import pytest
import torch

from conftest import tiny_model, tiny_tokenizer
from koala_core.adapter import TargetModel
from koala_core.errors import ModelError
from koala_core.kernels import OneDNNLinear, onednn_available, use_onednn_linears
from koala_core.model import load_target

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def test_onednn_linear_matches_torch_and_shares_the_weight():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 80)
    fast = OneDNNLinear(lin)
    assert fast.weight is lin.weight and fast.bias is lin.bias
    for shape in [(1, 48), (5, 48), (2, 3, 48)]:
        x = torch.randn(shape)
        torch.testing.assert_close(fast(x), lin(x), atol=1e-5, rtol=1e-5)
    nobias = torch.nn.Linear(48, 16, bias=False)
    torch.testing.assert_close(OneDNNLinear(nobias)(torch.randn(3, 48)).shape, torch.Size([3, 16]))


def test_prepacked_path_equals_the_converting_path_and_ignores_the_row_count(monkeypatch):
    from koala_core import kernels

    torch.manual_seed(0)
    weight, bias = torch.randn(96, 64), torch.randn(96)
    x = torch.randn(7, 64)
    if not kernels._pointwise_available():
        pytest.skip("this torch has no mkldnn._linear_pointwise")
    fast = kernels.packed_linear(x, kernels.pack(weight, bias))
    for n in (1, 2, 3):  # a row's result does not depend on how many rows share the call
        assert torch.equal(kernels.packed_linear(x[:n], kernels.pack(weight, bias)), fast[:n])
    monkeypatch.setattr(kernels, "_pointwise_available", lambda: False)  # an older torch
    packed = kernels.pack(weight, bias)
    assert packed[0] == "mkldnn"
    torch.testing.assert_close(kernels.packed_linear(x, packed), fast, atol=1e-5, rtol=1e-5)


def test_swapped_model_decodes_like_the_original(tmp_path):
    model = tiny_model()
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
        n = use_onednn_linears(model)
        out = model(ids).logits
    assert n == 2 * 7 + 1  # 7 Linear per decoder layer, 2 layers, and the LM head
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(out.argmax(-1), ref.argmax(-1))


def test_load_target_kernels_option(tmp_path):
    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    target = load_target(folder)
    assert target.kernels == "onednn"
    # packed as it loads, each Linear alone or in its sibling group: the first forward (a
    # server's first request) packs nothing
    linears = [m for m in target.model.modules() if isinstance(m, OneDNNLinear)]
    assert linears and any(m._group for m in linears)
    assert all((m._group[0] if m._group else m._packed)._key is not None for m in linears)
    assert load_target(folder, kernels="torch").kernels == "torch"
    assert load_target(folder, dtype="bfloat16").kernels == "torch"  # auto: fp32 only
    with pytest.raises(ModelError, match="float32"):
        load_target(folder, dtype="bfloat16", kernels="onednn")
    with pytest.raises(ModelError, match="unknown kernels"):
        load_target(folder, kernels="fast")


@pytest.mark.parametrize("family", ["medusa", "hydra", "eagle"])
def test_heads_draft_alike_with_onednn_kernels(registry, family):
    """A head given the target's oneDNN kernels (what load_head does) proposes what it proposed
    before, its state dict untouched; the packed copies never enter a checkpoint."""
    from conftest import tiny_target
    from koala_core.engine import GenerationConfig, SpeculativeEngine

    target = tiny_target()
    head = registry.create("heads", family, {"layers": 2, "draft_vocab": 64}, target=target)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    head.eval()
    prompt, cfg = [0, 5, 6, 7, 8, 5, 6, 7], GenerationConfig(24, stop_at_eos=False)
    proposals = []

    def record(h):
        expand = h.expand

        def spy(tree, nodes, k):
            cand = expand(tree, nodes, k)
            proposals.append(cand.tokens.tolist())
            return cand
        return spy

    state = {k: v.clone() for k, v in head.state_dict().items()}
    head.expand = record(head)
    ref = SpeculativeEngine(target, head).generate(prompt, cfg).token_ids
    before, proposals[:] = list(proposals), []
    del head.expand
    assert head.use_kernels("onednn") is head
    assert any(type(m).__name__ == "OneDNNLinear" for m in head.modules())
    head.expand = record(head)
    got = SpeculativeEngine(target, head).generate(prompt, cfg).token_ids
    assert got == ref and proposals == before
    assert state.keys() == head.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in head.state_dict().items())


@pytest.mark.parametrize("family", ["medusa", "hydra", "eagle"])
def test_packed_heads_never_go_stale(registry, family):
    """After use_kernels: reloading weights, training and casting all behave as without kernels
    (the packed copies repack on change and step aside for autograd and other dtypes)."""
    from conftest import tiny_target
    from koala_core.heads import TrainBatch

    target = tiny_target()

    def make(seed):
        torch.manual_seed(seed)
        head = registry.create("heads", family, {"layers": 2, "draft_vocab": 64}, target=target)
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        return head

    g = torch.Generator().manual_seed(0)
    batch = TrainBatch(torch.randint(2, 96, (2, 10), generator=g), torch.randn(2, 10, 32, generator=g),
                       torch.randint(2, 96, (2, 10), generator=g), torch.ones(2, 10))

    def logits(head, grad=False):
        with torch.set_grad_enabled(grad):
            return torch.cat([o.logits for o in head.train_outputs(batch)])

    packed, other = make(0).use_kernels("onednn"), make(1)
    logits(packed)  # packs the first weights
    packed.load_state_dict(other.state_dict())
    torch.testing.assert_close(logits(packed), logits(other), atol=1e-5, rtol=1e-5)
    # training through the packed head: the same gradients as the plain one
    logits(packed, grad=True).square().mean().backward()
    logits(other, grad=True).square().mean().backward()
    for (name, a), (_, b) in zip(packed.named_parameters(), other.named_parameters()):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)
    # an optimizer step changes the weights in place: the next forward sees the new ones
    with torch.no_grad():
        for a, b in zip(packed.parameters(), other.parameters()):
            a.sub_(0.1 * a.grad)
            b.sub_(0.1 * b.grad)
    torch.testing.assert_close(logits(packed), logits(other), atol=1e-5, rtol=1e-5)
    packed.to(torch.float64)
    other.to(torch.float64)
    batch.hidden = batch.hidden.double()
    torch.testing.assert_close(logits(packed), logits(other), atol=1e-6, rtol=1e-6)


def test_draft_dtype_choice_and_bf16_drafting_stays_lossless(registry, monkeypatch):
    """auto drafts in int8-dynamic on a CPU with VNNI and fbgemm, else in weight-only int8 wherever
    the CPU kernel exists (with native bf16 or not), else in bf16 only where bf16 is native; a
    bf16-drafting head is still lossless."""
    from conftest import tiny_target
    from koala_core import kernels
    from koala_core.engine import GenerationConfig, SpeculativeEngine
    from koala_core.errors import ConfigError

    target = tiny_target()
    monkeypatch.setattr(kernels, "dynamic_int8_available", lambda: True)
    monkeypatch.setattr(kernels, "cpu_has_vnni", lambda: True)
    assert kernels.draft_dtype(target) == torch.qint8  # int8 activations too where VNNI multiplies them
    assert kernels.draft_dtype_name(kernels.draft_dtype(target)) == "int8-dynamic"
    bare = TargetModel(target.model, tokenizer=None)  # e.g. inside transformers' generate()
    assert kernels.draft_dtype(bare) == torch.int8  # nothing to calibrate on
    with pytest.raises(ConfigError, match="needs the target's tokenizer"):
        kernels.draft_dtype(bare, "int8-dynamic")
    monkeypatch.setattr(kernels, "cpu_has_vnni", lambda: False)
    for native in (False, True):  # an AVX2-only CPU, then one with AVX512-BF16
        monkeypatch.setattr(kernels, "cpu_has_bf16", lambda: native)
        assert kernels.draft_dtype(target) == torch.int8  # weight-only int8 where the kernel exists
    assert kernels.draft_dtype(target, "int8-dynamic") == torch.qint8  # chosen: used without VNNI
    monkeypatch.setattr(kernels, "dynamic_int8_available", lambda: False)
    with pytest.raises(ConfigError, match="int8-dynamic runs on a CPU"):
        kernels.draft_dtype(target, "int8-dynamic")
    monkeypatch.setattr(kernels, "int8_available", lambda: False)
    assert kernels.draft_dtype(target) == torch.bfloat16
    monkeypatch.setattr(kernels, "cpu_has_bf16", lambda: False)
    assert kernels.draft_dtype(target) == torch.float32
    with pytest.raises(ConfigError, match="int8 runs on a CPU"):
        kernels.draft_dtype(target, "int8")
    monkeypatch.undo()
    assert kernels.draft_dtype(target, "float32") == torch.float32
    with pytest.raises(ConfigError, match="draft dtype"):
        kernels.draft_dtype(target, "fp8")
    head = registry.create("heads", "eagle", {"draft_vocab": 64}, target=target)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    head.prepare_drafting(torch.bfloat16)
    assert head.fc.weight.dtype == torch.bfloat16 and head.lm_rows.dtype == torch.bfloat16
    prompt, cfg = [0, 5, 6, 7, 8, 5, 6, 7], GenerationConfig(24, stop_at_eos=False)
    plain = SpeculativeEngine(target).generate(prompt, cfg).token_ids
    result = SpeculativeEngine(target, head).generate(prompt, cfg)
    assert result.token_ids == plain and result.drafted > 0


def test_int8_drafting_is_lossless_close_to_bf16_and_keeps_the_weights(registry):
    """Weight-only int8 drafting: the engine stays lossless, draft scores stay close to bf16's,
    the state dict is the bf16 one, and changed weights are requantised (never a stale copy)."""
    from conftest import tiny_target
    from koala_core import kernels
    from koala_core.engine import GenerationConfig, SpeculativeEngine

    if not kernels.int8_available():
        pytest.skip("this torch has no weight-only int8 kernel")
    target = tiny_target()
    torch.manual_seed(0)
    head = registry.create("heads", "hydra", {"heads": 3, "draft_vocab": 0}, target=target)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref = registry.create("heads", "hydra", {"heads": 3, "draft_vocab": 0}, target=target)
    ref.load_state_dict(head.state_dict())
    ref.prepare_drafting(torch.bfloat16)
    head.prepare_drafting(torch.int8)
    assert isinstance(head.inputs[0], kernels.Int8Linear)
    assert set(head.state_dict()) == set(ref.state_dict())
    h = torch.randn(4, target.hidden_size).to(torch.bfloat16)
    with torch.inference_mode():
        a = head.project(head.head(1, h, torch.tensor([[3], [4], [5], [6]])))
        b = ref.project(ref.head(1, h, torch.tensor([[3], [4], [5], [6]])))
    assert (a.float() - b.float()).abs().max() < 0.05 * b.float().abs().max()
    prompt, cfg = [0, 5, 6, 7, 8, 5, 6, 7], GenerationConfig(24, stop_at_eos=False)
    plain = SpeculativeEngine(target).generate(prompt, cfg).token_ids
    result = SpeculativeEngine(target, head).generate(prompt, cfg)
    assert result.token_ids == plain and result.drafted > 0
    with torch.no_grad():
        head.inputs[0].weight.mul_(2)  # an edit after packing: the int8 copy must follow
    with torch.inference_mode():
        x = torch.randn(2, 2 * target.hidden_size).to(torch.bfloat16)
        dense = torch.nn.functional.linear(x, head.inputs[0].weight, head.inputs[0].bias)
        torch.testing.assert_close(head.inputs[0](x).float(), dense.float(), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("family", ["hydra", "eagle"])
def test_dynamic_int8_drafting_is_lossless_close_to_fp32_and_keeps_the_weights(registry, family):
    """int8-dynamic drafting (int8 weights and activations): the engine stays lossless, draft
    scores stay close to fp32's, the state dict is unchanged, and changed weights are
    requantised (never a stale copy)."""
    from conftest import tiny_target
    from koala_core import kernels
    from koala_core.engine import GenerationConfig, SpeculativeEngine

    if not kernels.dynamic_int8_available():
        pytest.skip("this torch has no fbgemm dynamic int8 linear")
    target = tiny_target()
    torch.manual_seed(0)
    options = {"heads": 3} if family == "hydra" else {}
    head = registry.create("heads", family, {**options, "draft_vocab": 0}, target=target)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref = registry.create("heads", family, {**options, "draft_vocab": 0}, target=target)
    ref.load_state_dict(head.state_dict())
    ref.prepare_drafting(torch.float32)
    head.prepare_drafting(torch.qint8)
    assert head.drafts_in == "int8-dynamic"
    linears = [m for m in head.modules() if isinstance(m, kernels.DynamicInt8Linear)]
    assert linears and not any(type(m) is torch.nn.Linear for m in head.modules())
    assert set(head.state_dict()) == set(ref.state_dict())
    assert all(t.dtype == torch.float32 for t in head.state_dict().values() if t.is_floating_point())
    x = torch.randn(4, target.hidden_size)
    with torch.inference_mode():
        a, b = head.project(x), ref.project(x)
    assert (a - b).abs().max() < 0.05 * b.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.75
    prompt, cfg = [0, 5, 6, 7, 8, 5, 6, 7], GenerationConfig(24, stop_at_eos=False)
    plain = SpeculativeEngine(target).generate(prompt, cfg).token_ids
    result = SpeculativeEngine(target, head).generate(prompt, cfg)
    assert result.token_ids == plain and result.drafted > 0
    if family == "eagle":  # q/k/v and gate/up: one int8 call each, every sibling its own columns
        attn = head.layers[0].self_attn
        group, _ = attn.q_proj._group
        assert attn.k_proj._group == (group, 1) and attn.v_proj._group == (group, 2)
        x = torch.randn(1, 3, target.hidden_size)
        with torch.inference_mode():
            for m, fused in zip((attn.q_proj, attn.k_proj, attn.v_proj),
                                [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]):
                dense = torch.nn.functional.linear(x, m.weight, m.bias)
                assert fused.shape == dense.shape
                assert (fused - dense).abs().max() < 0.05 * dense.abs().max()
    layer = linears[0]
    with torch.no_grad():
        layer.weight.mul_(2)  # an edit after packing: the int8 copy must follow
    with torch.inference_mode():
        x = torch.randn(2, layer.in_features)
        dense = torch.nn.functional.linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(layer(x), dense, atol=0.05 * dense.abs().max().item(), rtol=0.05)


def test_bf16_chosen_on_a_cpu_without_native_bf16_is_warned_about(monkeypatch):
    """bf16 is emulated (several times slower than fp32) on an AVX2-only CPU: the user who picks
    it (a bf16 teacher pass, a recipe training in bf16) is told, and nobody else is."""
    import warnings

    from koala_core import kernels

    monkeypatch.setattr(kernels, "cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no native bf16.*fp32"):
        kernels.warn_if_bf16_emulated("cpu", "training with precision bf16")
    monkeypatch.setattr(kernels, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.warn_if_bf16_emulated("cpu", "training with precision bf16")
    monkeypatch.setattr(kernels, "cpu_has_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.warn_if_bf16_emulated("meta", "the target in bfloat16")  # not a CPU: nothing to say


def test_sibling_projections_share_one_call_and_give_each_its_own_result(monkeypatch):
    """q/k/v and gate/up of a decoder layer run as one oneDNN call over their stacked weights;
    each sibling's rows equal its own call bit for bit, whatever the number of rows."""
    from koala_core import kernels

    if not kernels._pointwise_available():
        pytest.skip("this torch has no mkldnn._linear_pointwise")
    model = tiny_model()
    use_onednn_linears(model)
    attn = model.model.layers[0].self_attn
    group, _ = attn.q_proj._group
    assert attn.k_proj._group == (group, 1) and attn.v_proj._group == (group, 2)
    assert attn.o_proj._group is None and model.model.layers[0].mlp.gate_proj._group[1] == 0
    torch.manual_seed(0)
    inputs = [torch.randn(1, rows, 32) for rows in (1, 2, 5)]
    alone = [[m._packed(x) for m in (attn.q_proj, attn.k_proj, attn.v_proj)] for x in inputs]
    calls = []
    real = kernels.packed_linear
    monkeypatch.setattr(kernels, "packed_linear", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fused = [[attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)] for x in inputs]
    assert len(calls) == 3  # one call per input, not three
    assert all(torch.equal(a, b) for xs, ys in zip(alone, fused) for a, b in zip(xs, ys))
    # another input for one sibling: it computes alone, correctly
    x, other = torch.randn(3, 32), torch.randn(3, 32)
    with torch.no_grad():
        attn.q_proj(x)
        torch.testing.assert_close(attn.k_proj(other), other @ attn.k_proj.weight.T)
        # a weight changed in place: the stacked copy follows
        attn.v_proj.weight.mul_(2)
        torch.testing.assert_close(attn.v_proj(x), x @ attn.v_proj.weight.T)
    # with gradients the siblings run alone, and the gradient reaches every weight
    model.requires_grad_(True)
    attn.q_proj(x).sum().backward()
    attn.k_proj(x).sum().backward()
    assert attn.q_proj.weight.grad is not None and attn.k_proj.weight.grad is not None


@pytest.mark.parametrize("dtype", ["onednn", "int8", "int8-dynamic"])
def test_drafting_heads_are_packed_before_their_first_draft(registry, monkeypatch, dtype):
    """prepare_drafting packs every draft-time copy (layers, sibling groups, draft LM head), so
    the first draft step of a generation packs nothing; the packed head drafts as before."""
    from conftest import tiny_target
    from koala_core import kernels
    from koala_core.engine import GenerationConfig, SpeculativeEngine

    if dtype == "onednn" and not onednn_available():
        pytest.skip("no oneDNN in this torch")
    if dtype == "int8" and not kernels.int8_available():
        pytest.skip("no weight-only int8 kernel in this torch")
    if dtype == "int8-dynamic" and not kernels.dynamic_int8_available():
        pytest.skip("this torch has no fbgemm dynamic int8 linear")
    target = tiny_target()
    target.kernels = "onednn"
    torch.manual_seed(0)
    head = registry.create("heads", "eagle", {"draft_vocab": 0}, target=target)
    head.prepare_drafting({"onednn": torch.float32, "int8": torch.int8,
                           "int8-dynamic": torch.qint8}[dtype])
    packs = []
    for cls in (kernels.PackedWeight, kernels.Int8Weight, kernels.DynamicInt8Weight):
        original = cls.pack
        monkeypatch.setattr(cls, "pack", lambda self, w, b, original=original: packs.append(w.shape)
                            or original(self, w, b))
    prompt, cfg = [0, 5, 6, 7, 8, 5, 6, 7], GenerationConfig(12, stop_at_eos=False)
    plain = SpeculativeEngine(target).generate(prompt, cfg).token_ids
    packs.clear()  # plain decoding may pack the target's own layers on first use
    result = SpeculativeEngine(target, head).generate(prompt, cfg)
    assert result.token_ids == plain and result.drafted > 0
    assert packs == []
