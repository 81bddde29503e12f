"""benchmarks/category_gaps.py: a method against the best of others per category, with the paired
measure and the A/A controls of methods listed twice."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def summary(name, median, tps):
    return {"method": name, "speedup": {"median": median}, "tokens_per_s": tps}


def gaps(folder, *args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "category_gaps.py"), str(folder),
                           *args], capture_output=True, text=True, timeout=120)


def test_gaps_pick_the_best_per_category_and_pair_prompts(tmp_path):
    names = ["vanilla", "vanilla-again", "auto", "tiny", "deep", "auto-again"]
    per_prompt = []
    for cat, speed in (("math", {"auto": 1.8, "tiny": 2.0, "deep": 1.5, "auto-again": 1.98}),
                       ("code", {"auto": 2.2, "tiny": 1.6, "deep": 2.0, "auto-again": 2.2})):
        for i in range(3):
            per_prompt.append({"id": f"{cat}{i}", "category": cat,
                               "speedup": {"vanilla": 1.0, "vanilla-again": 1.0, **speed}})
    by_category = {cat: [summary(n, next(p["speedup"][n] for p in per_prompt if p["category"] == cat),
                                 10.0) for n in names] for cat in ("math", "code")}
    results = {"methods": [summary(n, 1.0, 10.0) for n in names], "per_prompt": per_prompt,
               "by_category": by_category}
    (tmp_path / "results.json").write_text(json.dumps(results))
    run = gaps(tmp_path, "--method", "auto", "--against", "tiny,deep")
    assert run.returncode == 0, run.stderr
    rows = {line.split(" | ")[0].strip("| "): line for line in run.stdout.splitlines()[2:]}
    assert "| tiny | -10.0 % / +0.0 % / -10.0 % | +10.0 % | - | +0.0 % |" in rows["math"]
    assert "| deep | +10.0 % / +0.0 % / +10.0 % |" in rows["code"]
    run = gaps(tmp_path, "--method", "auto", "--against", "lookup")
    assert run.returncode != 0 and "'lookup' is not in" in run.stderr
