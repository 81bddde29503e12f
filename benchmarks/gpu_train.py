"""Heads trained on the lent GPU at a scale this project's CPU cannot reach, in one call.

    bash benchmarks/gpu_machine.sh train                 # the last of the staging calls (DEVELOPERS.md)
    python benchmarks/gpu_train.py OUT --model M.gguf    # on a machine with CUDA
    python benchmarks/gpu_train.py OUT --dry-run         # every stage on the CPU, tiny model and data (CI)

Stages, all against one deadline (``--budget`` seconds from the start); each writes the report
(OUT/report.json, OUT/report.md) as it ends, so a timeout or an error loses nothing before it:
  model   the target loaded once (a GGUF is converted into the cache here, not by every process)
  data    ``koala prepare`` in ``--ranges`` processes side by side on the one GPU, each over its own
          range of ShareGPT records before 10,000 (``--skip``/``--until``; conversations up to 1024
          tokens, the target's top-8), until the ranges are done or the stage's share of the budget
          is spent (a stopped set keeps every shard it committed); beside them the held-out set,
          records 10,000 on, which no range reaches
  train   every head of ``--heads`` side by side, one ``koala train`` process each (bf16, 32 windows
          of 512 tokens a step), ``--max-minutes`` = what the budget leaves them
  eval    each trained head and the shipped head of its family: teacher-forced top-1 per depth on
          the held-out set, and free-running acceptance on MT-bench 0-15 (a chain of 4)
  heads   the trained checkpoints under OUT/heads/NAME (each < 16 MiB), with the tail of each log

The heads come back to the CPU machine, where `koala bench` on the tuning prompts, then on unseen
ones, decides whether one replaces a shipped head (DEVELOPERS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gpu_check import recorded, summary_markdown, tiny_target  # one way to run and report

HELD_OUT = 10_000  # ShareGPT records from here on are never trained on (README: held-out top-1)
SHIPPED = {"eagle": "eagle-k1", "hydra": "hydra-k1", "medusa": "medusa-k1"}
TREE_EAGLE = ["--tree", "static", "--tree-option", "preset=tiny", "--tree-option", "copy=3"]
HEADS = {  # name -> (family, `koala train` arguments): the shipped heads' settings, at scale
    "eagle-gpu": ("eagle", ["--head", "eagle", *TREE_EAGLE]),
    "eagle-ttt-gpu": ("eagle", ["--head", "eagle", "--head-option", "ttt_steps=3", *TREE_EAGLE]),
    "hydra-gpu": ("hydra", ["--head", "hydra", "--head-option", "heads=3", "--tree", "auto",
                            "--tree-option", "copy=1"]),
    "medusa-gpu": ("medusa", ["--head", "medusa", "--head-option", "heads=3", "--tree", "auto",
                              "--tree-option", "copy=3"]),
}
SHARES = {"data": 0.30, "train": 0.83}  # where each stage must end, as shares of the budget


class Run:
    """The job's settings, its clock and the report being written."""

    def __init__(self, args) -> None:
        self.args, self.out = args, Path(args.out)
        self.work = Path(args.work)
        self.start = time.monotonic()
        self.device = args.device
        self.model = args.model
        self.report: dict = {"dry_run": args.dry_run, "budget_s": args.budget, "stages": {}}
        self.data: list[Path] = []
        self.heldout: Path | None = None
        self.trained: dict[str, Path] = {}

    def left(self, share: float = 1.0) -> float:
        """Seconds until the share ``share`` of the budget is spent."""
        return share * self.args.budget - (time.monotonic() - self.start)

    def koala(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "koala_core.cli", *argv]

    def save(self) -> None:
        from koala_core.files import write_json_atomic

        write_json_atomic(self.out / "report.json", self.report)
        (self.out / "report.md").write_text(summary_markdown(self.report, "koala GPU training",
                                                             "stages", 6000))

    def stage(self, name: str, fn) -> None:
        """One stage (an error is recorded; the later stages run with what there is)."""
        print(f"[gpu-train] {self.left():.0f} s of the budget left", flush=True)
        recorded(self.report["stages"], name, lambda: fn(self), self.save, "gpu-train")


def side_by_side(jobs: dict[str, list[str]], logs: Path, seconds: float, width: int = 0) -> dict:
    """Run the commands at once (``width`` at a time, 0: all), stop what is still running after
    ``seconds`` (SIGTERM, then SIGKILL), and return each one's exit code (None: stopped) and the
    tail of its log."""
    logs.mkdir(parents=True, exist_ok=True)
    waiting, running, done = list(jobs.items()), {}, {}
    deadline = time.monotonic() + max(seconds, 1.0)
    while waiting or running:
        while waiting and (not width or len(running) < width):
            name, argv = waiting.pop(0)
            log = open(logs / f"{name}.log", "w")
            running[name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True), log)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                done[name] = proc.returncode
                del running[name]
        if time.monotonic() >= deadline:
            for name, (proc, log) in running.items():
                stop(proc)
                log.close()
                done[name] = None
            running = {}
            done.update({name: None for name, _ in waiting})  # never started
            waiting = []
        time.sleep(0.5)
    return {name: {"exit": code, "log": tail(logs / f"{name}.log")} for name, code in done.items()}


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 15 s. What koala writes is atomic: a stopped
    `koala prepare` keeps every shard it committed."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def tail(path: Path, lines: int = 6) -> str:
    """The last lines of a log (progress bars' carriage returns folded)."""
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


# -- stages ----------------------------------------------------------------------------------------
def model(run: Run) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": run.device}
    if run.args.dry_run:
        run.model = str(tiny_model_folder(run.work / "tiny-model"))
    if run.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device: use --dry-run (or --device cpu) on a CPU")
        info["gpu"] = torch.cuda.get_device_name(0)
    from koala_core.model import load_target

    target = load_target(run.model, device=run.device)  # converts a GGUF into the cache once
    info.update(model=run.model, parameters=sum(p.numel() for p in target.model.parameters()),
                fingerprint=target.identity().as_dict().get("lm_head_fingerprint"))
    return info


def data(run: Run) -> dict:
    a = run.args
    bounds = [round(i * a.records / a.ranges) for i in range(a.ranges + 1)]
    common = ["--model", run.model, "--device", run.device, "--max-length", str(a.max_length),
              "--topk", "8"]
    jobs, folders = {}, {}
    for i in range(a.ranges):
        folders[f"range-{i}"] = run.work / "data" / f"range-{bounds[i]}-{bounds[i + 1]}"
        jobs[f"range-{i}"] = run.koala("prepare", *common, "--skip", str(bounds[i]),
                                       "--until", str(bounds[i + 1]),
                                       "--max-tokens", str(a.max_tokens // a.ranges),
                                       "--out", str(folders[f"range-{i}"]))
    run.heldout = run.work / "data" / f"heldout-skip{HELD_OUT}"
    jobs["heldout"] = run.koala("prepare", "--model", run.model, "--device", run.device,
                                "--max-length", "512", "--topk", "0", "--skip", str(HELD_OUT),
                                "--max-tokens", str(a.heldout_tokens), "--out", str(run.heldout))
    t0 = time.monotonic()
    exits = side_by_side(jobs, run.out / "logs" / "data", run.left(SHARES["data"]))
    seconds = time.monotonic() - t0
    sets = {}
    for name, folder in folders.items():
        manifest = read_manifest(folder)
        if manifest and manifest["tokens"]["train"] > 0:
            run.data.append(folder)
        sets[name] = summary_of(manifest, exits[name])
    sets["heldout"] = summary_of(read_manifest(run.heldout), exits["heldout"])
    tokens = sum(s["tokens"] for name, s in sets.items() if name != "heldout")
    if not run.data:
        raise RuntimeError("no training data was prepared (see logs/data)")
    return {"sets": sets, "train_tokens": tokens, "tokens_per_s": round(tokens / seconds),
            "records": f"0-{a.records - 1} in {a.ranges} ranges; held-out from {HELD_OUT}"}


def read_manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summary_of(manifest: dict | None, exit_info: dict) -> dict:
    if manifest is None:
        return {"tokens": 0, "exit": exit_info["exit"], "log": exit_info["log"]}
    records = manifest["records"]["train"] + manifest["records"]["val"]
    return {"tokens": manifest["tokens"]["train"] + manifest["tokens"]["val"],
            "train_tokens": manifest["tokens"]["train"], "records": len(records),
            "complete": manifest["complete"], "exit": exit_info["exit"]}


def train(run: Run) -> dict:
    a = run.args
    if not run.data:
        raise RuntimeError("no prepared data: the data stage failed")
    # the processes load their data (~1 minute for millions of tokens), then train until the time
    # the stage leaves, less a margin for the final validation and the checkpoint
    minutes = a.train_minutes or max(0.05, (run.left(SHARES["train"]) - a.load_seconds - 20) / 60)
    shutil.rmtree(run.work / "heads", ignore_errors=True)  # a fresh run, not a resumed one
    schedule = (["--precision", "fp32", "--batch-size", "2", "--window", "32", "--warmup", "2",
                 "--head-option", "draft_vocab=512"] if a.dry_run else
                ["--precision", "bf16", "--batch-size", "32", "--window", "512", "--warmup", "100"])
    jobs = {}
    for name in a.heads.split(","):
        if name not in HEADS:
            raise ValueError(f"unknown head {name!r}; choose from {', '.join(HEADS)}")
        folder = run.work / "heads" / name
        jobs[name] = run.koala("train", "--model", run.model, "--device", run.device,
                               *[x for d in run.data for x in ("--data", str(d))], *HEADS[name][1],
                               *schedule, "--lr", "1e-3", "--steps", "1000000",
                               "--eval-every", "2000", "--seed", "0",
                               "--max-minutes", f"{minutes:.2f}", "--out", str(folder))
        run.trained[name] = folder
    exits = side_by_side(jobs, run.out / "logs" / "train", run.left(SHARES["train"]))
    heads = {}
    for name, folder in list(run.trained.items()):
        card = folder / "koala.json"
        if not card.is_file():
            heads[name] = {"exit": exits[name]["exit"], "log": exits[name]["log"]}
            del run.trained[name]
            continue
        metrics = json.loads(card.read_text())["metrics"]
        heads[name] = {k: metrics.get(k) for k in ("steps", "train_seconds", "val_top1",
                                                    "stopped_by_time")}
    if not run.trained:
        raise RuntimeError("no head finished training (see logs/train)")
    return {"max_minutes": round(minutes, 2), "heads": heads}


def evaluate(run: Run) -> dict:
    a = run.args
    if not run.trained:
        raise RuntimeError("no trained head to evaluate")
    heads = {name: str(folder) for name, folder in run.trained.items()}
    if not a.dry_run:  # the shipped heads are for the real model only
        heads.update({SHIPPED[HEADS[name][0]]: SHIPPED[HEADS[name][0]] for name in run.trained})
    jobs = {}
    for name, checkpoint in heads.items():
        base = ["eval", "--checkpoint", checkpoint, "--model", run.model, "--device", run.device,
                "--json"]
        if run.heldout is not None and read_manifest(run.heldout):
            jobs[f"{name}.heldout"] = run.koala(*base, "--data", str(run.heldout), "--split", "all")
        jobs[f"{name}.free"] = run.koala(*base, "--prompts", "mtbench", "--limit",
                                         str(a.eval_prompts), "--depth", "4", "--max-new-tokens",
                                         "16" if a.dry_run else "64")
    exits = side_by_side(jobs, run.out / "logs" / "eval", run.left() - 10,
                         width=os.cpu_count() or 2)
    rows: dict[str, dict] = {name: {} for name in heads}
    for job, result in exits.items():
        name, kind = job.rsplit(".", 1)
        found = last_json(run.out / "logs" / "eval" / f"{job}.log")
        if found is None:
            rows[name][kind] = {"exit": result["exit"], "log": result["log"]}
        elif kind == "heldout":
            rows[name][kind] = {"top1": [round(x, 4) for x in found["top1"]],
                                "positions": found["positions"]}
        else:
            free = found["free_running"]
            rows[name][kind] = {k: free.get(k) for k in ("rates", "tau", "steps", "count")}
    return {"heads": rows}


def last_json(log: Path) -> dict | None:
    """The JSON object `koala eval --json` printed (its last line that parses)."""
    if not log.is_file():
        return None
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def heads(run: Run) -> dict:
    """The trained checkpoints (koala.json + model.safetensors) into OUT/heads, nothing else."""
    if not run.trained:
        raise RuntimeError("no trained head to bring back")
    out, sizes = run.out / "heads", {}
    for name, folder in run.trained.items():
        dest = out / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("koala.json", "model.safetensors"):
            shutil.copyfile(folder / f, dest / f)
        sizes[name] = round(sum(p.stat().st_size for p in dest.iterdir()) / 2**20, 2)
    return {"MiB": sizes}


def tiny_model_folder(folder: Path) -> Path:
    """The GPU check's tiny random Llama (the real model's tokenizer), saved as an HF folder for
    the CLI's processes (dry run)."""
    if not (folder / "config.json").is_file():
        target = tiny_target("default", "float32")
        target.model.save_pretrained(folder)
        target.tokenizer.save_pretrained(folder)
    return folder


STAGES = {"model": model, "data": data, "train": train, "eval": evaluate, "heads": heads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="report folder (report.json, report.md, heads/, logs/)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny random model, tiny data (CI)")
    parser.add_argument("--model", default="default", help="target model (default, a folder or a .gguf)")
    parser.add_argument("--device", default=None, help="cuda (cpu in a dry run); --device cpu "
                        "with the real model and small sizes rehearses the real run's commands")
    parser.add_argument("--work", default=None, help="where data and checkpoints are made "
                        "(default: $KOALA_CACHE/gpu-train); only the heads go to OUT")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole job (default: 500; 240 in a dry run)")
    parser.add_argument("--heads", default=",".join(HEADS), help="comma-separated, of: " + ", ".join(HEADS))
    parser.add_argument("--ranges", type=int, default=None, help="prepare processes side by side "
                        "(default: 4; 2 in a dry run)")
    parser.add_argument("--records", type=int, default=None,
                        help=f"ShareGPT records the ranges cover (default: {HELD_OUT}; 400 in a dry run)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="training tokens in all, at most (default: 8M; 12000 in a dry run)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per conversation "
                        "(default: 1024; 128 in a dry run)")
    parser.add_argument("--heldout-tokens", type=int, default=None, help="(default: 45000; 1000 in a dry run)")
    parser.add_argument("--eval-prompts", type=int, default=None, help="(default: 16; 2 in a dry run)")
    parser.add_argument("--load-seconds", type=float, default=None, help="what a training process "
                        "takes to start and load its data (default: 60; 15 in a dry run)")
    parser.add_argument("--train-minutes", type=float, default=None, help="each head's training "
                        "time (default: what the budget leaves; 0.1 in a dry run)")
    args = parser.parse_args(argv)
    dry = args.dry_run
    defaults = {"budget": (500, 240), "ranges": (4, 2), "records": (HELD_OUT, 400),
                "max_tokens": (8_000_000, 12_000), "max_length": (1024, 128),
                "heldout_tokens": (45_000, 1000), "eval_prompts": (16, 2), "load_seconds": (60, 15),
                "train_minutes": (0.0, 0.1), "device": ("cuda", "cpu")}
    for key, (real, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if dry else real)
    if args.records > HELD_OUT:
        parser.error(f"--records reaches into the held-out records ({HELD_OUT} on)")
    if args.work is None:
        from koala_core.model import cache_dir

        args.work = str(cache_dir() / ("gpu-train-dry" if dry else "gpu-train"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    run = Run(args)
    for name, fn in STAGES.items():
        run.stage(name, fn)
    failed = [n for n, s in run.report["stages"].items() if s["status"] != "ok"]
    print(f"[gpu-train] report in {args.out}/report.md"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
