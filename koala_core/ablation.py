"""The KOALA ablation: for each head family, K layers x {supervised, + adversarial}, same data and
steps, then one interleaved benchmark of every trained head against plain greedy decoding.

Resumable: a configuration whose checkpoint exists is not trained again (an interrupted one resumes
from its training state), so rerunning the command after a crash only does what is missing.
Writes ``OUT/ablation.json``, ``OUT/ablation.md`` and ``OUT/ablation.png``, plus the benchmark's own
report in ``OUT/bench`` and the checkpoints in ``OUT/checkpoints``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .adversary import AdversaryConfig
from .bench import format_speedup
from .errors import ConfigError
from .training import TrainConfig

@dataclass(frozen=True)
class AblationConfig:
    families: tuple[str, ...] = ()  # empty: every trainable head installed
    layers: tuple[int, ...] = (1, 2, 3)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=150, eval_every=150,
                                                                    save_every=50))
    adversary: AdversaryConfig = field(default_factory=lambda: AdversaryConfig(
        discriminator="logit-mlp", adv_loss="bce", adv_weight=1.0, adv_warmup=50))
    head_options: dict = field(default_factory=dict)  # given to every family that has the option
    tree: tuple[str, dict] | None = None  # inference tree of every head; None: each head's default

    def __post_init__(self):
        if not self.layers or min(self.layers) < 1:
            raise ConfigError("ablation: layers must be K >= 1")
        if not self.adversary.enabled:
            raise ConfigError("ablation: the adversarial arm needs a discriminator")

    def runs(self, registry) -> list[tuple[str, TrainConfig, tuple]]:
        """(name, training config, inference tree) of every configuration, in a fixed order."""
        from .config import describe_options
        from .heads import NeuralHead

        trainable = [n for n in registry.names("heads")
                     if issubclass(registry.get("heads", n).cls, NeuralHead)]
        unknown = sorted(set(self.families) - set(trainable))
        if unknown:
            raise ConfigError(f"ablation: {', '.join(unknown)} is not a trainable head; choose from "
                              f"{', '.join(trainable)}")
        out = []
        for family in self.families or tuple(trainable):
            cls = registry.get("heads", family).cls
            own = {o["name"] for o in describe_options(cls)}
            if "layers" not in own:
                raise ConfigError(f"ablation: head {family!r} has no 'layers' option (K)")
            options = {k: v for k, v in self.head_options.items() if k in own}
            tree = self.tree or cls.default_tree
            for k in self.layers:
                for adv in (False, True):
                    cfg = replace(self.train, head=family, head_options={**options, "layers": k},
                                  adversary=self.adversary if adv else AdversaryConfig())
                    out.append((f"{family}-k{k}-{'koala' if adv else 'sup'}", cfg, tree))
        return out


def run_ablation(target, data: str | Path, out: str | Path, config: AblationConfig, prompts: list[dict],
                 gen_config, registry=None, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from .bench import run_bench, write_report
    from .compose import build_method
    from .registry import default_registry
    from .training import train

    reg = registry or default_registry()
    out = Path(out)
    ck_dir = out / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    runs = config.runs(reg)
    for name, cfg, tree in runs:
        folder = ck_dir / name
        if (folder / "koala.json").is_file():
            tqdm.write(f"{name}: trained already, kept")
            continue
        resume = (ck_dir / f"{name}.train-state" / "state.json").is_file()
        train(target, data, folder, cfg, resume=resume, registry=reg, progress=progress, tree=tree)
    methods = [build_method("vanilla", target, reg)]
    methods += [build_method(str(ck_dir / name), target, reg) for name, _, _ in runs]
    for m, (name, _, _) in zip(methods[1:], runs):
        m.name = name
    results = run_bench(methods, target, prompts, gen_config, progress=progress)
    write_report(results, out / "bench")
    table = ablation_rows(results, runs, ck_dir)
    doc = {"config": asdict(config), "rows": table, "bench": results.get("meta", {})}
    (out / "ablation.json").write_text(json.dumps(doc, indent=2))
    (out / "ablation.md").write_text(markdown(table, gen_config, len(prompts)))
    plot(table, out / "ablation.png")
    return doc


def ablation_rows(results: dict, runs, ck_dir: Path) -> list[dict]:
    by_name = {m["method"]: m for m in results["methods"]}
    rows = []
    for name, cfg, _ in runs:
        m = by_name[name]
        meta = json.loads((ck_dir / name / "koala.json").read_text())
        rows.append({"name": name, "family": cfg.head, "layers": cfg.head_options["layers"],
                     "adversarial": cfg.adversary.enabled, "tau": m["tau"],
                     "speedup": m["speedup"], "token_efficiency": m["token_efficiency"],
                     "draft_ms_per_step": m["draft_ms_per_step"],
                     "identical": m["identical_to_vanilla"],
                     "val_top1": meta["metrics"]["val_top1"],
                     "train_seconds": meta["metrics"]["train_seconds"]})
    return rows


def markdown(rows: list[dict], gen_config, n_prompts: int) -> str:
    lines = [f"{n_prompts} held-out prompts x {gen_config.max_new_tokens} tokens, greedy; speedup = "
             "median [min-max] over prompts against plain greedy decoding, interleaved in one run.", "",
             "| head | K | adversarial | val top-1 (depth 1) | tau | speedup | token eff. | "
             "draft ms/step | identical |",
             "|---|---:|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['layers']} | {'yes' if r['adversarial'] else 'no'} | "
                     f"{r['val_top1'][0]:.3f} | {r['tau']:.2f} | {format_speedup(r['speedup'])} | "
                     f"{r['token_efficiency']:.2f} | "
                     f"{r['draft_ms_per_step']:.1f} | {r['identical']:.0%} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(max(6, 0.7 * len(rows)), 3.8))
    names = [r["name"] for r in rows]
    colors = ["#c44e52" if r["adversarial"] else "#4c72b0" for r in rows]
    axes[0].bar(names, [r["tau"] for r in rows], color=colors)
    axes[0].set_ylabel("tau (tokens per target forward)")
    med = [r["speedup"]["median"] for r in rows]
    err = [[m - r["speedup"]["min"] for m, r in zip(med, rows)],
           [r["speedup"]["max"] - m for m, r in zip(med, rows)]]
    axes[1].bar(names, med, yerr=err, capsize=3, color=colors)
    axes[1].axhline(1.0, color="gray", lw=1, ls="--")
    axes[1].set_ylabel("speedup over greedy (median, min-max)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=60)
    axes[0].set_title("blue: supervised only, red: + adversarial (KOALA)", fontsize=9)
    axes[1].set_title("speedup over plain greedy decoding", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
