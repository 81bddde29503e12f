"""The `auto` tree policy: lossless, drafts when drafts are accepted, and switches drafting off
(probing now and then) when they are not."""

import time

import pytest
import torch

from conftest import tiny_target
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.interfaces import Candidates, DraftHead

PROMPT = [0, 5, 6, 7, 8, 5, 6, 7, 9, 10, 5, 6]


def hf_greedy(target, prompt, n):
    out = target.model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                                pad_token_id=1, eos_token_id=None)
    return out[0, len(prompt):].tolist()


class WrongHead(DraftHead):
    """Confidently proposes what the target never picks (and takes 5 ms to do it)."""

    def expand(self, tree, nodes, k):
        time.sleep(0.005)
        tokens = torch.tensor([[95 - j for j in range(k)]] * len(nodes))
        return Candidates(tokens, torch.full((len(nodes), k), -0.05))


def test_auto_is_lossless_and_drafts_when_drafts_are_accepted(registry):
    target = tiny_target(scale=4.0)  # a sharp model that repeats itself: lookup drafts well
    policy = registry.create("tree_policies", "auto")
    engine = SpeculativeEngine(target, registry.create("heads", "lookup"), policy)
    config = GenerationConfig(max_new_tokens=48, stop_at_eos=False)
    for prompt in (PROMPT, PROMPT[:7]):
        result = engine.generate(prompt, config)
        assert result.token_ids == hf_greedy(target, prompt, 48)
    summary = policy.summary()
    assert summary["drafting_share"] > 0.5 and result.tau > 1.5, summary
    assert set(summary["verify_ms"]) >= {1}  # it measured plain steps and tree sizes


def test_auto_switches_drafting_off_when_nothing_is_accepted(registry):
    target = tiny_target()
    policy = registry.create("tree_policies", "auto", {"probe_every": 4})
    engine = SpeculativeEngine(target, WrongHead(target=target), policy)
    result = engine.generate(PROMPT, GenerationConfig(max_new_tokens=60, stop_at_eos=False))
    assert result.token_ids == hf_greedy(target, PROMPT, 60)
    summary = policy.summary()
    assert summary["switched_off"] >= 1
    assert summary["drafting_share"] < 0.3, summary  # mostly plain steps, a few probes
    # what it learnt: confident drafts of this head are not accepted
    cell = policy.table[(1, 9)]
    assert cell[0] / cell[1] < 0.3


class ScriptHead(DraftHead):
    """Proposes ``script`` (the target's own continuation of PROMPT) at depth 1, or a wrong token."""

    def __init__(self, script, right=True, **kw):
        super().__init__(**kw)
        self.script, self.right = script, right

    def expand(self, tree, nodes, k):
        pos = len(self.ctx.tokens) - len(PROMPT)
        token = self.script[pos] if self.right else 95
        tokens = torch.tensor([[token] + [-1] * (k - 1)] * len(nodes))
        logprobs = torch.tensor([[-0.05] + [-float("inf")] * (k - 1)] * len(nodes))
        return Candidates(tokens, logprobs)


@pytest.mark.parametrize("right", [True, False])
def test_a_tree_that_does_not_pay_is_not_verified_but_still_grades_its_guesses(registry, right):
    target = tiny_target()
    truth = hf_greedy(target, PROMPT, 8)
    policy = registry.create("tree_policies", "auto", {"probe_every": 100})
    for cell in policy.table.values():
        cell[0] = 0.0  # the calibration says: no guess of this head is ever accepted
    engine = SpeculativeEngine(target, ScriptHead(truth, right, target=target), policy)
    result = engine.generate(PROMPT, GenerationConfig(max_new_tokens=6, stop_at_eos=False))
    assert result.token_ids == truth[:6]
    assert result.steps[2].drafted == 0 and policy.summary()["shadow_share"] > 0
    hits, trials = policy.table[(1, 9)]  # the head's guesses (p = 0.95) were graded all the same
    assert trials > 4 and (hits > 0) == right
    # what the grades taught: verify the guesses of a head that turned out right, never the others
    assert (result.drafted > 0) == right


def test_a_new_generation_starts_with_drafting_on(registry):
    target = tiny_target(scale=4.0)
    policy = registry.create("tree_policies", "auto")
    engine = SpeculativeEngine(target, registry.create("heads", "lookup"), policy)
    policy.off_until, policy.paused = 10**6, True  # as if the last generation switched it off
    result = engine.generate(PROMPT, GenerationConfig(max_new_tokens=32, stop_at_eos=False))
    assert result.drafted > 0


def test_koala_cost_keeps_this_machines_curve_for_auto(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from conftest import tiny_model, tiny_tokenizer
    from koala_core.cli import main
    from koala_core.costs import saved_ratios
    from koala_core.model import load_target
    from koala_trees.auto import verify_ratio

    monkeypatch.setenv("KOALA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    result = CliRunner().invoke(main, ["cost", "--model", str(folder), "--sizes", "1,2,4",
                                       "--context", "8,300", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc["curves"]) == {"8", "300"} and doc["shape"] == "tree"
    target = load_target(folder)
    ratios = saved_ratios(target)
    assert set(ratios) == {1, 2, 4} and ratios[1] == 1.0
    assert saved_ratios(load_target(folder, kernels="torch")) is None  # another setup: no curve
    # the prior interpolates the saved curve and extends its last slope
    saved = {1: 1.0, 2: 1.2, 4: 1.4}
    assert verify_ratio(3, saved) == pytest.approx(1.3) and verify_ratio(6, saved) == pytest.approx(1.6)
    assert verify_ratio(2, saved) == 1.2 and verify_ratio(1, saved) == 1.0


def test_cost_key_names_the_onednn_path_it_was_measured_with(tmp_path, monkeypatch):
    """A curve measured through the converting oneDNN path must not steer ``auto`` on a torch that
    has the faster dense one (they cost differently), nor the other way round."""
    from conftest import tiny_model, tiny_tokenizer
    from koala_core import kernels
    from koala_core.costs import cost_key
    from koala_core.model import load_target

    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    target = load_target(folder)
    if target.kernels != "onednn":
        pytest.skip("no oneDNN here")
    monkeypatch.setattr(kernels, "_pointwise_available", lambda: True)
    dense = cost_key(target)
    monkeypatch.setattr(kernels, "_pointwise_available", lambda: False)
    converting = cost_key(target)
    assert dense != converting and "onednn-pointwise" in dense and "onednn-mkldnn" in converting
    assert "torch" in cost_key(load_target(folder, kernels="torch"))


def test_cost_key_names_the_processor(tmp_path, monkeypatch):
    """A curve measured on an AVX-512 CPU must not steer ``auto`` on an AVX2-only one sharing the
    cache (a network home directory), nor the other way round."""
    import torch
    from conftest import tiny_target
    from koala_core.costs import cost_key

    target = tiny_target()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    wide = cost_key(target)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    narrow = cost_key(target)
    assert wide != narrow and "-AVX2_" in narrow and "/" not in narrow


def test_generate_verbose_reports_the_policys_choices(tmp_path):
    import json

    from click.testing import CliRunner

    from conftest import tiny_model, tiny_tokenizer
    from koala_core.cli import main

    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    result = CliRunner().invoke(main, ["generate", "--model", str(folder), "--head", "lookup",
                                       "--tree", "auto", "--verbose", "--json", "--max-new-tokens",
                                       "16", "t5 t6 t7 t5 t6"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output.strip().splitlines()[-1])
    tree = doc["tree"]
    assert tree["policy"] == "auto" and tree["steps"] >= 1 and "drafting_share" in tree
    assert doc["engine"] == {"target_cache": "DynamicCache", "draft_dtype": None}  # CPU, lookup


def test_verify_cost_keeps_the_shape_of_this_machines_curve(registry):
    from koala_core.tree import Tree

    def steps(policy, times):  # plain and tree steps measured at these seconds per size
        for n, t in times.items():
            tree = Tree(0)
            for i in range(1, n):
                tree.add(i - 1, i)
            policy.observe(tree, [0], 0.0, t)

    saved = {1: 1.0, 2: 1.5, 4: 1.1, 8: 1.6}  # oneDNN-like: 2 rows cost more than 4
    times = {1: 0.040, 2: 0.060, 4: 0.044, 8: 0.064}
    curve = registry.create("tree_policies", "auto")
    curve.saved = saved
    steps(curve, times)
    assert curve.verify_s(2) > curve.verify_s(4)  # the curve's bump survives
    assert abs(curve.verify_s(8) - 0.064) < 1e-3
    fit = registry.create("tree_policies", "auto", {"verify_model": "fit"})
    fit.saved = saved
    steps(fit, times)
    assert fit.model_s(2) <= fit.model_s(4)  # a line cannot bend (before per-size measurements)
    without = registry.create("tree_policies", "auto")
    without.saved = {}  # no `koala cost` curve on this machine: the line fit
    steps(without, times)
    assert without.verify_s(4) == pytest.approx(fit.verify_s(4))
    with pytest.raises(Exception, match="verify_model"):
        registry.create("tree_policies", "auto", {"verify_model": "guess"})


def test_sizes_are_priced_by_what_they_measured_in_the_loop(registry):
    """The saved curve is a prior: a size that measured slow in the loop is priced slow, one that
    measured fast is picked, and a size rarely verified is priced optimistically so it gets tried."""
    from koala_core.tree import Tree

    def observe(policy, n, t, times=20):
        for _ in range(times):
            tree = Tree(0)
            for i in range(1, n):
                tree.add(i - 1, i)
            policy.observe(tree, [0], 0.0, t)

    p = [0.6, 0.3] + [0.05] * 5  # candidate nodes' path probabilities, best first
    policy = registry.create("tree_policies", "auto", {"explore": 0.0})
    policy.saved = {1: 1.0, 4: 1.0, 8: 1.0}  # the curve says: 5 rows cost what 8 do
    observe(policy, 1, 0.040)
    observe(policy, 8, 0.060)
    assert policy.verify_s(8) == pytest.approx(0.060, rel=0.02)
    assert policy.best_size(p, 0.0) == 7  # nothing says fewer rows are cheaper: all 7 pay
    observe(policy, 5, 0.042)  # until 5 rows are measured in the loop
    assert policy.verify_s(5) < 0.046 and policy.verify_s(8) > 0.058
    assert policy.best_size(p, 0.0) == 4
    before = registry.create("tree_policies", "auto", {"measured_sizes": False, "explore": 0.0})
    before.saved = dict(policy.saved)  # auto before per-size prices: the curve's shape alone
    for n, t in ((1, 0.040), (8, 0.060), (5, 0.042)):
        observe(before, n, t)
    assert before.verify_s(5) == before.model_s(5) and before.best_size(p, 0.0) == 7
    explorer = registry.create("tree_policies", "auto")  # explore=0.1
    explorer.saved = dict(policy.saved)
    observe(explorer, 1, 0.040)
    observe(explorer, 8, 0.060)
    assert explorer.choice_s(5) == pytest.approx(0.9 * explorer.verify_s(5))  # never verified
    assert explorer.choice_s(8) > 0.97 * explorer.verify_s(8)  # verified often: little optimism
    close = registry.create("tree_policies", "auto")
    close.saved = dict(policy.saved)
    observe(close, 1, 0.058)  # plain decoding costs about what a tree does
    observe(close, 8, 0.060)
    assert close.choice_s(2) < close.verify_s(1) < close.verify_s(2)
    assert close.best_size([0.0] * 7, 0.0) == 0  # optimism never verifies a tree of no value


def test_nodes_that_make_a_tree_large_are_priced_by_how_their_rank_fared(registry):
    """The k-th best node of a tree has its own factor, hits over forecast of the nodes verified at
    that rank: over-forecast marginal nodes stop growing trees, the best ones keep their forecast."""
    from koala_core.tree import Tree

    p = [0.6, 0.3] + [0.1] * 5  # candidate nodes' path probabilities, best first
    curve = {1: 1.0, 2: 1.0, 8: 1.12}  # each row past the second costs 2 % more

    def policy_with(**options):
        policy = registry.create("tree_policies", "auto", {"explore": 0.0, **options})
        policy.saved = dict(curve)
        for n in (1, 8):
            tree = Tree(0)
            for i in range(1, n):
                tree.add(i - 1, i)
            policy.observe(tree, [0], 0.0, 0.040 * curve[n])
        return policy

    policy, before = policy_with(), policy_with(rank_factors=False)
    assert policy.best_size(p, 0.0) == before.best_size(p, 0.0) == 7  # 0.1 pays for 2 %
    chain = Tree(0)
    for i in range(1, 8):
        chain.add(i - 1, i)
    paths = [[0, 1, 2]] * 3 + [[0, 1]] * 3 + [[0]] * 4  # the 2 best accepted as forecast
    for step in range(40):  # ... and the 3rd-7th never
        policy.built, policy.levels = True, 1
        policy.kept = list(enumerate(p))  # a chain: node i + 1 is the rank-i node
        policy.observe(chain, paths[step % 10], 0.0, 0.040 * 1.12)
    assert policy.kept == []  # consumed by the step that verified them
    assert policy.rank_factor(0) == pytest.approx(1.0, abs=0.05)
    assert policy.rank_factor(1) == pytest.approx(1.0, abs=0.05)
    assert policy.rank_factor(4) < 0.25 and before.rank_factor(4) == 1.0
    assert policy.best_size(p, 0.0) == 2 and before.best_size(p, 0.0) == 7
    assert policy.best_size(p, 0.0, by_rank=False) == 7  # a copy chain is not priced by rank


def test_a_policy_written_before_bonus_joined_observe_still_runs(registry):
    from koala_core.interfaces import TreePolicy

    class OldPolicy(TreePolicy):
        seen = 0

        def build(self, head, ctx):
            return registry.create("tree_policies", "chain", {"depth": 2}).build(head, ctx)

        def observe(self, tree, path, draft_s, verify_s):  # the four-argument signature
            OldPolicy.seen += 1

    target = tiny_target(scale=4.0)
    engine = SpeculativeEngine(target, registry.create("heads", "lookup"), OldPolicy())
    result = engine.generate(PROMPT, GenerationConfig(max_new_tokens=12, stop_at_eos=False))
    assert result.token_ids == hf_greedy(target, PROMPT, 12) and OldPolicy.seen == len(result.steps) - 1


def test_bench_says_when_auto_has_no_cost_curve_and_records_it(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from conftest import tiny_model, tiny_tokenizer
    from koala_core.cli import main

    monkeypatch.setenv("KOALA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    recipe = tmp_path / "auto.toml"
    run = CliRunner().invoke
    assert run(main, ["compose", "--model", str(folder), "--head", "lookup", "--tree", "auto",
                      "-o", str(recipe)]).exit_code == 0
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a b c a b c"}) + "\n")
    bench = ["bench", "--model", str(folder), "--prompts", str(prompts), "--methods",
             f"vanilla,{recipe}", "--max-new-tokens", "8", "--out", str(tmp_path / "b")]
    result = run(main, bench)
    assert result.exit_code == 0, result.output
    assert "koala cost" in result.output  # the note (stderr is mixed in here)
    assert json.loads((tmp_path / "b" / "results.json").read_text())["meta"]["verify_curve"] is None
    assert run(main, ["cost", "--model", str(folder), "--sizes", "1,2,4", "--repeats", "1"]).exit_code == 0
    result = run(main, bench)
    assert result.exit_code == 0 and "koala cost" not in result.output
    curve = json.loads((tmp_path / "b" / "results.json").read_text())["meta"]["verify_curve"]
    assert set(curve) == {"1", "2", "4"} and curve["1"] == 1.0


def test_noisy_times_never_give_a_cost_at_or_below_zero(registry):
    """A line fitted through noisy tree times can cross zero below the sizes it saw; a cost <= 0
    would make every later time an 'outlier' and the recent gain undefined (this crashed once)."""
    from koala_core.tree import Tree

    policy = registry.create("tree_policies", "auto", {"verify_model": "fit", "patience": 1})
    for n, t in ((2, 0.001), (10, 0.1), (2, 0.001), (10, 0.1)):
        policy.observe(Tree(0), [0], 0.0, 0.0)  # a plain step of zero seconds (a coarse clock)
        policy.fit = [policy.fit[0] + 1, policy.fit[1] + n, policy.fit[2] + n * n,
                      policy.fit[3] + t, policy.fit[4] + n * t]
    policy.verify.clear()  # no plain step measured: the fit alone
    assert all(policy.verify_s(n) > 0 for n in range(1, 12))
    tree = Tree(0)
    tree.add(0, 5, -0.1)
    policy.built, policy.levels = True, 1
    policy.observe(tree, [0], 0.0, 0.0)  # zero seconds everywhere: no gain known, no crash
    assert policy.gain() is None or policy.gain() >= 0


class CountingWrongHead(WrongHead):
    """WrongHead that records the decode steps at which the engine began it and expanded it."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.begun, self.expanded = [], []

    def begin(self, ctx):
        super().begin(ctx)
        self.begun.append(ctx.step)

    def expand(self, tree, nodes, k):
        self.expanded.append(self.ctx.step)
        return super().expand(tree, nodes, k)


def test_while_drafting_is_off_copy_steps_draft_what_copying_proposes_without_the_head(registry):
    """With copy proposals on, the steps between probes verify the chain that copying alone
    proposes (the target repeats itself here), and neither begin nor expand the head."""
    target = tiny_target(scale=4.0)
    config = GenerationConfig(max_new_tokens=60, stop_at_eos=False)
    truth = hf_greedy(target, PROMPT, 60)
    results = {}
    for copy in (0, 1):
        # floor 2.0: drafting is switched off after `patience` steps whatever it yields
        policy = registry.create("tree_policies", "auto", {"copy": copy, "floor": 2.0,
                                                           "patience": 2, "probe_every": 8})
        policy.gain = lambda: 0.0  # whatever one stalled plain step measured (a loaded machine)
        head = CountingWrongHead(target=target)
        result = SpeculativeEngine(target, head, policy).generate(PROMPT, config)
        assert result.token_ids == truth
        summary = policy.summary()
        assert summary["switched_off"] >= 1, summary
        c = policy.counts
        assert len(head.begun) == c["drafted_steps"] + c["shadow_steps"]  # never in a copy step
        assert set(head.expanded) <= set(head.begun)
        results[copy] = (result, summary)
    (plain, off), (copying, on) = results[0], results[1]
    assert off["copy_share"] == 0 and off["copied_tokens"] == 0
    assert on["copy_share"] > 0.3 and on["copied_tokens"] > 10, on
    assert copying.target_forwards < plain.target_forwards


def test_a_head_skipped_by_copy_steps_catches_up_at_the_next_probe(registry):
    """EAGLE keeps a KV cache of its own rows: after copy steps skipped its ``begin``, the next
    probe builds the rows of every token they committed (the output stays the target's)."""
    target = tiny_target(scale=4.0)
    head = registry.create("heads", "eagle", {"draft_vocab": 0}, target=target)
    policy = registry.create("tree_policies", "auto", {"copy": 1, "floor": 2.0, "patience": 2,
                                                       "probe_every": 3})
    policy.gain = lambda: 0.0  # switched off after `patience` steps, whatever the timings
    rows = []
    begin = head.begin

    def recording_begin(ctx):
        rows.append(ctx.hidden.shape[0])
        # over its begins the head has seen the target's state of every committed token once
        assert sum(rows) == len(ctx.tokens) - 1
        begin(ctx)

    head.begin = recording_begin
    result = SpeculativeEngine(target, head, policy).generate(
        PROMPT, GenerationConfig(max_new_tokens=48, stop_at_eos=False))
    assert result.token_ids == hf_greedy(target, PROMPT, 48)
    assert policy.counts["copy_steps"] > 0
    assert len(rows) < result.target_forwards  # begins were skipped, and caught up after


def test_copy_first_verifies_the_copy_chain_alone_when_it_beats_drafting(registry):
    """With ``copy_first`` a step whose copy chain forecasts more tokens per second than the
    recent drafting steps yielded verifies that chain alone: the head (always wrong here) is not
    expanded that step, the output stays the target's, and fewer target forwards are needed."""
    target = tiny_target(scale=4.0)
    config = GenerationConfig(max_new_tokens=60, stop_at_eos=False)
    truth = hf_greedy(target, PROMPT, 60)
    results = {}
    for first in (False, True):
        # floor 0.01: drafting is never switched off, so only copy_first can skip the head
        policy = registry.create("tree_policies", "auto", {"copy": 1, "floor": 0.01,
                                                           "copy_first": first})
        head = CountingWrongHead(target=target)
        result = SpeculativeEngine(target, head, policy).generate(PROMPT, config)
        assert result.token_ids == truth
        c = policy.counts
        assert c["switched_off"] == 0 and c["copy_steps"] == c["copy_first"]
        # a copy-first step begins the head (before the policy can look) but never expands it
        assert len(set(head.expanded)) == c["drafted_steps"] + c["shadow_steps"]
        results[first] = (result, policy.summary())
    (off, summary_off), (on, summary_on) = results[False], results[True]
    assert summary_off["copy_first_share"] == 0
    assert summary_on["copy_first_share"] > 0.2 and summary_on["copied_tokens"] > 10, summary_on
    assert on.target_forwards < off.target_forwards


def test_the_generation_scale_follows_its_hits_held_back_by_its_prior(registry):
    """A generation whose guesses miss shrinks its trees (scale < 1), one that hits grows them;
    a larger scale_prior moves the scale less; options out of range are refused."""
    from koala_core.errors import ConfigError

    def scale_after(prior, hit):
        policy = registry.create("tree_policies", "auto", {"scale_prior": prior})
        for _ in range(10):
            policy.learn(1, 0.55, hit)  # ten guesses the calibration forecasts at ~0.55
        return policy.scale()

    assert scale_after(6.0, False) < scale_after(18.0, False) < 1.0
    assert scale_after(6.0, True) > scale_after(18.0, True) > 1.0
    for bad in ({"scale_prior": 0.0}, {"explore": 1.0}, {"verify_model": "guess"}, {"top_k": 0}):
        with pytest.raises(ConfigError):
            registry.create("tree_policies", "auto", bad)
