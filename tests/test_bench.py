"""`koala bench` on a tiny model: every field present, lossless methods identical to vanilla."""

import json
import statistics

from conftest import tiny_target
from koala_core.bench import Method, draft_dtypes, load_prompts, name_repeats, run_bench, write_report
from koala_core.compose import build_method
from koala_core.engine import GenerationConfig, SpeculativeEngine


def test_bench_results_have_every_field(tmp_path, registry):
    target = tiny_target()
    prompts_file = tmp_path / "p.jsonl"
    rows = [{"id": "a", "prompt": "t5 t6 t7 t5 t6 t7", "category": "x"},
            {"turns": ["t9 t10 t11 t9 t10"], "category": "y"},
            {"prompt": "t20 t21 t22 t20 t21", "category": "x"}]
    prompts_file.write_text("\n".join(json.dumps(r) for r in rows))
    prompts = load_prompts(str(prompts_file))
    assert [p["category"] for p in prompts] == ["x", "y", "x"]
    methods = [Method("vanilla", SpeculativeEngine(target)),
               Method("lookup", SpeculativeEngine(target, registry.create("heads", "lookup"))),
               Method("hf-lookup", hf_target=target),
               build_method("vanilla-again", target, registry),
               Method("lookup-auto", SpeculativeEngine(target, registry.create("heads", "lookup"),
                                                       registry.create("tree_policies", "auto",
                                                                       {"copy": 1})))]
    results = run_bench(methods, target, prompts, GenerationConfig(24, stop_at_eos=False),
                        progress=False)
    write_report(results, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    by_name = {m["method"]: m for m in saved["methods"]}
    for m in by_name.values():
        assert set(m["speedup"]) == {"median", "min", "max", "mean"}
        assert m["tokens_per_s"] > 0
    assert by_name["lookup"]["identical_to_vanilla"] == 1.0
    assert by_name["lookup"]["tau"] > 1.0 and by_name["lookup"]["accept_histogram"]
    assert by_name["hf-lookup"]["tau"] is None
    assert 0 <= by_name["lookup"]["overhead_share"] < 1 and by_name["hf-lookup"]["overhead_share"] is None
    assert set(saved["by_category"]) == {"x", "y"}
    again = by_name["vanilla-again"]  # the A/A control: plain decoding, timed like the others
    assert again["tau"] == 1.0 and again["identical_to_vanilla"] == 1.0 and again["token_efficiency"] is None
    rows = saved["per_prompt"]  # every prompt's own figures, the summaries' source
    assert [(r["id"], r["category"]) for r in rows] == [(p.get("id"), p["category"]) for p in prompts]
    assert all(r["speedup"]["vanilla"] == 1.0 and r["tau"]["hf-lookup"] is None for r in rows)
    assert abs(statistics.median(r["speedup"]["lookup"] for r in rows)
               - by_name["lookup"]["speedup"]["median"]) < 1e-3
    report = (tmp_path / "out" / "results.md").read_text()
    assert report.count("|") > 10
    pivot = report[report.index("## Median speedup (tau) per category"):].splitlines()
    assert pivot[2] == "| category | vanilla | lookup | hf-lookup | vanilla-again | lookup-auto |"
    assert pivot[4].startswith("| x (2) | 1.00x (1.00) | ") and pivot[5].startswith("| y (1) | ")
    assert pivot[4].split("|")[4].endswith(" (-) ")  # hf-lookup: no tau
    noise = next(line for line in report.splitlines() if line.startswith("Noise (A/A)"))
    lo, hi = again["speedup"]["min"], again["speedup"]["max"]
    assert f"per prompt {lo:.2f}-{hi:.2f}x" in noise and "per-category medians" in noise
    # what the adaptive policy chose, one row per method that has one (`auto` here, not lookup's)
    chose = report[report.index("## What the adaptive trees chose"):].split("\n\n")[1].splitlines()
    auto = by_name["lookup-auto"]["tree"]
    assert len(chose) == 3 and chose[2].startswith(f"| lookup-auto | {auto['drafting_share']:.1%} | ")
    assert f"| {auto['switched_off']} | {auto['mean_nodes']:.2f} |" in chose[2]
    assert by_name["lookup"]["draft_dtype"] is None  # no trained head
    # trained heads drafting in different dtypes (recipes' draft_dtype) are said so under the table
    assert draft_dtypes([{"method": "a", "draft_dtype": "int8"}, {"method": "b", "draft_dtype": None},
                         {"method": "c", "draft_dtype": "int8-dynamic"}]) == [
        "", "Draft dtypes: a int8, c int8-dynamic."]
    assert draft_dtypes([{"method": "a", "draft_dtype": "int8"}, {"method": "c", "draft_dtype": "int8"}]) == []
    assert (tmp_path / "out" / "speedup.png").is_file()
    assert (tmp_path / "out" / "acceptance.png").is_file()


def test_plots_are_redrawn_from_a_results_file_and_bad_folders_say_why(tmp_path, monkeypatch):
    """Committed results carry no plots: `koala bench --plot-from DIR` draws them from
    results.json, runs nothing, leaves results.md alone, and a wrong folder gets a clear error."""
    from click.testing import CliRunner
    from koala_core.cli import main

    target = tiny_target()
    results = run_bench([Method("vanilla", SpeculativeEngine(target))], target,
                        [{"prompt": "t5 t6 t7", "category": "x"}],
                        GenerationConfig(4, stop_at_eos=False), progress=False)
    out = tmp_path / "run"
    write_report(results, out)
    for name in ("speedup.png", "acceptance.png"):
        (out / name).unlink()
    (out / "results.md").write_text("kept as committed")
    ran = CliRunner().invoke(main, ["bench", "--plot-from", str(out)])
    assert ran.exit_code == 0, ran.output
    assert (out / "speedup.png").is_file() and (out / "acceptance.png").is_file()
    assert (out / "results.md").read_text() == "kept as committed"

    def no_matplotlib(*args):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr("koala_core.bench.plot", no_matplotlib)
    ran = CliRunner().invoke(main, ["bench", "--plot-from", str(out)])
    assert ran.exit_code == 2 and "pip install matplotlib" in ran.output
    other, broken = tmp_path / "other", tmp_path / "broken"
    for folder, text in ((other, '{"steps": []}'), (broken, "{truncated")):
        folder.mkdir()
        (folder / "results.json").write_text(text)
    for bad, says in ((tmp_path / "none", "no such file"), (other, "not a `koala bench` results"),
                      (broken, "not valid JSON")):
        ran = CliRunner().invoke(main, ["bench", "--plot-from", str(bad)])
        assert ran.exit_code == 2 and says in ran.output and "Traceback" not in ran.output


def test_bench_at_temperature_reports_acceptance_without_claiming_identity(registry):
    """At T>0 outputs are samples: no identity column, the default verifier is exact sampling
    (never greedy), and hf-lookup samples too."""
    import pytest

    from koala_core.errors import ConfigError
    from koala_core.sampling import Sampling

    target = tiny_target()
    lookup = SpeculativeEngine(target, registry.create("heads", "lookup"))
    methods = [Method("vanilla", SpeculativeEngine(target)), Method("lookup", lookup),
               Method("hf-lookup", hf_target=target)]
    config = GenerationConfig(16, sampling=Sampling(0.8), seed=3, stop_at_eos=False)
    results = run_bench(methods, target, [{"prompt": "t5 t6 t7 t5 t6 t7"}], config, progress=False)
    for m in results["methods"]:
        assert m["identical_to_vanilla"] is None and m["lossy"] is False
    assert lookup.verifier_name(config.sampling) == "rejection"
    assert lookup.verifier_name(Sampling()) == "greedy"
    assert results["methods"][1]["tau"] is not None
    greedy = SpeculativeEngine(target, registry.create("heads", "lookup"),
                               verifier=registry.create("verifiers", "greedy"))
    with pytest.raises(ConfigError, match="temperature 0"):
        run_bench([methods[0], Method("greedy", greedy)], target, [{"prompt": "t5 t6"}], config,
                  progress=False)


def test_a_method_listed_twice_runs_twice_under_its_own_again_name():
    methods = [Method(n) for n in ("vanilla", "default", "vanilla-again", "default", "vanilla", "default")]
    assert [m.name for m in name_repeats(methods)] == [
        "vanilla", "default", "vanilla-again", "default-again", "vanilla-again-2", "default-again-2"]
    assert len({id(m) for m in methods}) == 6  # each listing keeps its own method (its own engine)
