"""`koala eval`: teacher-forced top-1 on prepared data and free-running acceptance on prompts."""

import json

import pytest
from click.testing import CliRunner

from conftest import tiny_model_folder
from koala_core.acceptance import ChainAcceptance
from koala_core.cli import main


def test_chain_acceptance_counts_each_depth_given_the_ones_before():
    stats = ChainAcceptance(depth=3)
    for drafted, accepted in [(3, 0), (3, 1), (3, 3), (2, 2), (3, 2)]:
        stats.add(drafted, accepted)
    # depth 1 reached 5 times, accepted 4; depth 2 reached 4 (accepted >= 1), accepted 3;
    # depth 3 reached by the 3-long chains with 2 accepted: 2 of them, accepted 1
    assert stats.reached == [5, 4, 2] and stats.accepted == [4, 3, 1]
    assert stats.rates == [0.8, 0.75, 0.5]
    assert stats.tau == pytest.approx((1 + 2 + 4 + 3 + 3) / 5)
    # fewer trials, a wider interval around each rate; none without trials
    (lo1, hi1), (lo2, hi2), (lo3, hi3) = stats.intervals
    assert lo1 < 0.8 < hi1 and lo3 < 0.5 < hi3 and hi3 - lo3 > hi1 - lo1
    assert ChainAcceptance(depth=1).intervals == [(0.0, 1.0)]
    assert stats.describe().startswith("0.800 (5: ")


def test_wilson_interval_matches_the_closed_form():
    from koala_core.acceptance import wilson

    lo, hi = wilson(45, 100)  # the textbook example: 0.45 of 100 -> 0.356-0.548
    assert lo == pytest.approx(0.3561, abs=1e-4) and hi == pytest.approx(0.5476, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.31  # never below 0, and not 0 wide at p = 0
    lo, hi = wilson(1000, 1000)
    assert hi == 1.0 and lo > 0.99


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from koala_core.training import TrainConfig, train

    root = tmp_path_factory.mktemp("eval")
    target = tiny_model_folder(root, max_tokens=3000, aux_layers="0,1")
    train(target, root / "data", root / "ck",
          TrainConfig(head="eagle", head_options={"draft_vocab": 64, "aux_layers": "0,1",
                                                  "ttt_steps": 2},
                      steps=4, batch_size=2, window=32, warmup=1, eval_every=4),
          progress=False)
    (root / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": f"t{5 + i} t9 t12 t{20 + i}"})
                                                  for i in range(2)))
    return root


def test_eval_reports_both_measures(trained):
    root = trained
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(root / "ck"), "--model",
                                       str(root / "model"), "--data", str(root / "data"),
                                       "--prompts", str(root / "prompts.jsonl"), "--depth", "3",
                                       "--max-new-tokens", "12", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{\"checkpoint\""):].splitlines()[0])
    assert len(report["top1"]) == 2  # ttt_steps=2: depths 1 and 2
    free = report["free_running"]
    assert free["count"] == 2 and len(free["rates"]) == 3 and free["steps"] > 0
    assert free["reached"][0] == free["steps"]  # every step drafts depth 1
    assert all(0 <= r <= 1 for r in free["rates"]) and free["tau"] >= 1
    assert all(lo <= r <= hi for r, (lo, hi) in zip(free["rates"], free["intervals"]))


def test_eval_needs_something_to_measure_and_data_with_the_heads_layers(trained, tmp_path):
    from koala_core.data import PrepareConfig, prepare
    from koala_core.model import load_target

    root = trained
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(root / "ck"), "--model",
                                       str(root / "model")])
    assert result.exit_code == 2 and "--data" in result.output
    plain = tmp_path / "plain"  # prepared without the aux layers this EAGLE-3 head reads
    prepare(load_target(str(root / "model")), plain, PrepareConfig(max_tokens=500, max_length=64),
            data=root / "s.json", progress=False)
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(root / "ck"), "--model",
                                       str(root / "model"), "--data", str(plain)])
    assert result.exit_code == 2 and "--aux-layers 0,1" in result.output
