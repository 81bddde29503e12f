"""The GPU check: is koala's engine lossless and fast on CUDA? One script, one report folder.

    make gpu-check OUT=gpu-report MODEL=default          # on a machine with CUDA (< 8 minutes on an H200)
    python benchmarks/gpu_check.py --dry-run OUT         # every section on the CPU with a tiny model (CI)

Sections (each writes into the report as it finishes, so a failure or a timeout loses nothing
before it; an error is recorded and the next section runs):
  env        torch / transformers / device
  lossless   greedy on CUDA fp32: HF ``generate`` vs koala's plain decoding vs every method, per
             prompt, token for token; then bf16: each method vs koala's plain bf16 decoding
  syncs      host reads per decode step outside drafting (counted by koala_core.syncs.HostReads),
             and CUDA's own count of synchronising calls (torch.cuda.set_sync_debug_mode)
  cost       verify cost curve n = 1..64 (tree masks, as verification runs) in fp32 and bf16
  cost-1b    the same on a random-weight 1B-parameter Llama shape built in memory (bf16)
  bench      ``koala bench``: vanilla, hf-lookup, lookup and the shipped heads (fp32)

``--dry-run`` swaps the model for a tiny random Llama with the real tokenizer, the shipped heads for
freshly initialised ones, the 1B shape for a small one and CUDA for the CPU, so the script cannot
rot between the rare sessions that have a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

from koala_core.bench import Method, load_prompts, run_bench, write_report
from koala_core.compose import build_method
from koala_core.engine import GenerationConfig, SpeculativeEngine
from koala_core.files import write_json_atomic
from koala_core.prompts import encode_prompt
from koala_core.registry import default_registry
from koala_core.syncs import HostReads

SHIPPED = ["lookup", "default", "eagle-k1", "hydra-k1", "medusa-k1", "eagle3-k1"]
SIZES = [1, 2, 4, 8, 16, 32, 64]


class Check:
    """The run's settings, its target loader and the report being written."""

    def __init__(self, out: Path, dry_run: bool, model: str, prompts: str, limit: int,
                 max_new_tokens: int) -> None:
        self.out, self.dry_run, self.model = out, dry_run, model
        self.device = "cpu" if dry_run else "cuda"
        self.prompts = load_prompts(prompts)[:limit]
        self.max_new = max_new_tokens
        self.report: dict = {"dry_run": dry_run, "sections": {}}
        self._targets: dict[str, object] = {}

    def save(self) -> None:
        write_json_atomic(self.out / "report.json", self.report)
        (self.out / "report.md").write_text(summary_markdown(self.report))

    def target(self, dtype: str):
        if dtype not in self._targets:
            self._targets.clear()  # one model in memory at a time
            if self.dry_run:
                self._targets[dtype] = tiny_target(self.model, dtype)
            else:
                from koala_core.model import load_target

                self._targets[dtype] = load_target(self.model, device=self.device, dtype=dtype)
        return self._targets[dtype]

    def methods(self, target) -> list[Method]:
        """vanilla first, then hf-lookup, lookup and the shipped heads (fresh heads in a dry run)."""
        out = [build_method("vanilla", target), build_method("hf-lookup", target)]
        if not self.dry_run:
            return out + [build_method(name, target) for name in SHIPPED]
        reg = default_registry()
        out.append(build_method("lookup", target, reg))
        for family in ("eagle", "hydra", "medusa"):
            head = reg.create("heads", family, {"draft_vocab": 512}, target=target)
            head.to(target.device).prepare_drafting(target.dtype)
            out.append(Method(f"{family}-random", SpeculativeEngine(target, head)))
        return out

    def encoded(self, target) -> list[list[int]]:
        return [encode_prompt(target.tokenizer, p["prompt"]) for p in self.prompts]

    def run(self, name: str, fn) -> None:
        recorded(self.report["sections"], name, fn, self.save, "gpu-check")


def recorded(parts: dict, name: str, fn, save, tag: str) -> None:
    """Run one section: its result, or the error it raised (the next section still runs), goes
    into ``parts[name]`` with its status and seconds, and the report is saved at once."""
    t0 = time.perf_counter()
    print(f"[{tag}] {name} ...", flush=True)
    try:
        result, status = fn(), "ok"
    except Exception as exc:
        result, status = {"error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()}, "error"
    result["status"], result["seconds"] = status, round(time.perf_counter() - t0, 1)
    parts[name] = result
    save()
    print(f"[{tag}] {name}: {status} in {result['seconds']} s", flush=True)


def tiny_target(model: str, dtype: str):
    """A 2-layer random Llama with the real model's tokenizer (so real prompts encode)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from koala_core.adapter import TargetModel
    from koala_core.model import resolve_dtype, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True)
    hf = LlamaForCausalLM(config).to(resolve_dtype(dtype)).eval().requires_grad_(False)
    hf.generation_config.eos_token_id = tokenizer.eos_token_id
    return TargetModel(hf, tokenizer, name="tiny-random")


# -- sections ---------------------------------------------------------------------------------
def env(check: Check) -> dict:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "device": check.device}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    elif not check.dry_run:
        raise RuntimeError("no CUDA device: run with --dry-run on a CPU")
    return info


def hf_greedy(target, ids: list[int], n: int) -> list[int]:
    eos = sorted(target.eos_token_ids)
    out = target.model.generate(torch.tensor([ids], device=target.device), do_sample=False,
                                max_new_tokens=n, eos_token_id=eos, pad_token_id=eos[0])
    return out[0, len(ids):].tolist()


def lossless(check: Check) -> dict:
    config = GenerationConfig(max_new_tokens=check.max_new)
    result: dict = {}
    for dtype in ("float32", "bfloat16"):
        target = check.target(dtype)
        methods = check.methods(target)
        base = [methods[0].run(ids, config).tokens for ids in check.encoded(target)]
        rows = {}
        if dtype == "float32":
            hf = [hf_greedy(target, ids, check.max_new) for ids in check.encoded(target)]
            rows["vanilla vs HF generate"] = sum(a == b for a, b in zip(base, hf)) / len(hf)
        for m in methods[1:]:
            got = [m.run(ids, config).tokens for ids in check.encoded(target)]
            rows[m.name] = sum(a == b for a, b in zip(got, base)) / len(base)
        result[dtype] = {"identical_to_plain_decoding": rows,
                         "all_identical": all(v == 1.0 for v in rows.values())}
    return result


def syncs(check: Check) -> dict:
    """Host reads and CUDA synchronisations per decode step, outside drafting."""
    target = check.target("float32")
    rows = {}
    for m in check.methods(target):
        if m.engine is None:
            continue
        engine = m.engine
        drafting = [(engine.head, "begin"), (engine.tree_policy, "build")] if engine.head else []
        per_step, cuda_syncs = [], []
        ids = check.encoded(target)[0]
        with HostReads() as reads, reads.excluding(*drafting, also=lambda: _cuda_sync_mode(0)), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stream = engine.stream(ids, GenerationConfig(max_new_tokens=min(32, check.max_new)))
            with reads.paused():
                next(stream)  # prefill
            while True:
                before, seen = reads.count, len(caught)
                with _cuda_sync_mode(1):
                    try:
                        next(stream)
                    except StopIteration:
                        break
                per_step.append(reads.count - before)
                cuda_syncs.append(sum("synchroniz" in str(w.message) for w in caught[seen:]))
        rows[m.name] = {"steps": len(per_step), "host_reads_max": max(per_step, default=0),
                        "host_reads_mean": sum(per_step) / max(len(per_step), 1),
                        "cuda_syncs_max": max(cuda_syncs, default=0) if not check.dry_run else None,
                        "cuda_syncs_mean": (sum(cuda_syncs) / max(len(cuda_syncs), 1)
                                            if not check.dry_run else None)}
    return {"per_method": rows, "max_host_reads": max(r["host_reads_max"] for r in rows.values())}


class _cuda_sync_mode:
    """torch.cuda.set_sync_debug_mode for a block (1 = warn on every synchronising call)."""

    def __init__(self, mode: int) -> None:
        self.mode, self.saved = mode, None

    def __enter__(self):
        if torch.cuda.is_available():
            self.saved = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(self.mode)

    def __exit__(self, *exc):
        if self.saved is not None:
            torch.cuda.set_sync_debug_mode(self.saved)


def cost(check: Check) -> dict:
    from koala_core.costs import verify_cost_curve

    out = {}
    for dtype in ("float32", "bfloat16"):
        rows = verify_cost_curve(check.target(dtype), SIZES, context=256,
                                 repeats=3 if check.dry_run else 10)
        out[dtype] = rows
    return out


def cost_1b(check: Check) -> dict:
    """A random-weight Llama of ~1.2B parameters (or a small one in a dry run), bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from koala_core.adapter import TargetModel
    from koala_core.costs import verify_cost_curve

    check._targets.clear()
    shape = (dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=4096) if check.dry_run else
             dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256))
    config = LlamaConfig(max_position_embeddings=4096, tie_word_embeddings=True, **shape)
    dtype = torch.float32 if check.dry_run else torch.bfloat16
    with torch.device(check.device):
        torch.manual_seed(0)
        hf = LlamaForCausalLM(config).to(dtype).eval().requires_grad_(False)
    params = sum(p.numel() for p in hf.parameters())
    target = TargetModel(hf, tokenizer=None, name="random-llama")
    rows = verify_cost_curve(target, SIZES, context=512, repeats=3 if check.dry_run else 10)
    del hf, target
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    ratio32 = next(r["ratio"] for r in rows if r["n"] == 32)
    return {"config": shape, "parameters": params, "dtype": str(dtype), "curve": rows,
            "verify32_over_step": ratio32}


def bench(check: Check) -> dict:
    target = check.target("float32")
    results = run_bench(check.methods(target), target, check.prompts,
                        GenerationConfig(max_new_tokens=check.max_new), progress=False)
    results["meta"] = {"device": check.device, "dtype": "float32", "prompts": len(check.prompts),
                       "max_new_tokens": check.max_new, "kernels": target.kernels}
    write_report(results, check.out / "bench")
    return {"methods": {r["method"]: {"tau": r["tau"], "speedup": r["speedup"],
                                      "tokens_per_s": r["tokens_per_s"],
                                      "identical_to_vanilla": r["identical_to_vanilla"]}
                        for r in results["methods"]}}


def summary_markdown(report: dict, title: str = "koala GPU check", parts: str = "sections",
                     width: int = 4000) -> str:
    lines = [f"# {title}{' (dry run on CPU)' if report['dry_run'] else ''}", ""]
    for name, sec in report[parts].items():
        lines.append(f"## {name}: {sec['status']} ({sec['seconds']} s)")
        shown = {k: v for k, v in sec.items() if k not in ("status", "seconds", "traceback")}
        lines += ["```", json.dumps(shown, indent=1)[:width], "```", ""]
    return "\n".join(lines)


SECTIONS = {"env": env, "lossless": lossless, "syncs": syncs, "cost": cost, "cost-1b": cost_1b,
            "bench": bench}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="report folder (report.json, report.md, bench/)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny random model (CI)")
    parser.add_argument("--model", default="default", help="target model (default, a folder or a .gguf)")
    parser.add_argument("--prompts", default=str(Path(__file__).parent / "prompts" / "mixed-heldout.jsonl"))
    parser.add_argument("--limit", type=int, default=8, help="prompts used")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; use --dry-run on a CPU", file=sys.stderr)
        return 2
    check = Check(out, args.dry_run, args.model, args.prompts, args.limit,
                  12 if args.dry_run else args.max_new_tokens)
    for name in args.sections.split(","):
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        check.run(name, lambda fn=SECTIONS[name]: fn(check))
    failed = [n for n, s in check.report["sections"].items() if s["status"] != "ok"]
    print(f"[gpu-check] report in {out}/report.md" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
