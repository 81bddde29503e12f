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
from .bench import format_speedup, noise_note
from .errors import ConfigError
from .training import TrainConfig, data_summary

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
    # configuration name (e.g. "eagle-k1-sup") -> a checkpoint trained exactly so already (checked:
    # same head, options, schedule, seed and data), used instead of training it again
    baselines: dict = field(default_factory=dict)
    # the configurations of the grid to train and bench (empty: all of them), e.g. the K=2
    # adversarial arm alone next to the K=1 pair when an hour of training is all there is
    only: tuple[str, ...] = ()
    # bench plain decoding a second time (`vanilla-again`) beside the heads: the run's own A/A
    # yardstick, printed under the table, for differences between arms that are often smaller
    noise_control: bool = True

    def __post_init__(self):
        if not self.layers or min(self.layers) < 1:
            raise ConfigError("ablation: layers must be K >= 1")
        if not self.adversary.enabled:
            raise ConfigError("ablation: the adversarial arm needs a discriminator")

    def runs(self, registry) -> list[tuple[str, TrainConfig, tuple]]:
        """(name, training config, inference tree) of every configuration, in a fixed order."""
        from .config import coerce_options, config_class, describe_options
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
            options = coerce_options(config_class(cls), {k: v for k, v in self.head_options.items()
                                                         if k in own}, f"head {family!r}")
            tree = self.tree or cls.default_tree
            for k in self.layers:
                for adv in (False, True):
                    cfg = replace(self.train, head=family, head_options={**options, "layers": k},
                                  adversary=self.adversary if adv else AdversaryConfig())
                    out.append((f"{family}-k{k}-{'koala' if adv else 'sup'}", cfg, tree))
        if self.only:
            unknown = sorted(set(self.only) - {name for name, _, _ in out})
            if unknown:
                raise ConfigError(f"ablation: no configuration named {', '.join(unknown)}; the "
                                  "names are " + ", ".join(name for name, _, _ in out))
            out = [run for run in out if run[0] in self.only]
        return out


def budget_of(recipe_path: str | Path) -> TrainConfig:
    """The training schedule of a recipe (steps, batch, window, lr, warm-up, precision, seed,
    evaluation cadence) without its head, loss or game: an ablation at that head's budget."""
    from .recipe import load_recipe

    return replace(load_recipe(recipe_path).train_config(), head="", head_options={}, loss="",
                   loss_options={}, adversary=AdversaryConfig(), init="")


def budget_tree(recipe_path: str | Path) -> tuple[str, dict] | None:
    """The tree a recipe's head drafts with (None: it names none), so that an ablation at its
    budget compares every head on the shipped head's tree."""
    from .recipe import load_recipe

    tree = load_recipe(recipe_path).tree
    return (tree.name, dict(tree.options)) if tree.name else None


# training settings that change what a run computes (eval/save cadence do not, nor micro-batching
# of a supervised run; an adversarial game draws per micro-batch, see baseline_differences)
SAME = ("head", "loss", "loss_options", "steps", "batch_size", "window", "lr", "weight_decay",
        "warmup", "grad_clip", "depth_decay", "seed", "precision", "init")


def baseline_differences(folder: Path, cfg: TrainConfig, data_hash: str) -> list[str]:
    """What differs between how the checkpoint in ``folder`` was trained and ``cfg`` on the data
    whose hash is ``data_hash`` (empty: it is that configuration, trained already)."""
    try:
        meta = json.loads((Path(folder) / "koala.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"no readable checkpoint at {folder} ({exc})"]
    trained = (meta.get("recipe") or {}).get("train")
    if not trained:
        return [f"{folder} records no training settings"]
    want = asdict(cfg)
    diffs = [f"{k}: {trained.get(k)!r} there, {want[k]!r} here" for k in SAME
             if k != "loss" and trained.get(k) != want[k]]
    loss = meta["recipe"].get("loss")
    if cfg.loss and loss != cfg.loss:
        diffs.append(f"loss: {loss!r} there, {cfg.loss!r} here")
    for key, value in cfg.head_options.items():
        if meta.get("head_config", {}).get(key) != value:
            diffs.append(f"head option {key}: {meta.get('head_config', {}).get(key)!r} there, "
                         f"{value!r} here")
    there = (trained.get("adversary") or {}).get("discriminator", "")
    if there != cfg.adversary.discriminator or (there and trained["adversary"] != want["adversary"]):
        diffs.append("adversarial settings differ")
    elif there and trained.get("micro_batches", 1) != want["micro_batches"]:
        diffs.append(f"micro_batches: {trained.get('micro_batches', 1)} there, "
                     f"{want['micro_batches']} here (the adversarial game draws per micro-batch)")
    got = meta["recipe"].get("data", {}).get("hash")
    if got != data_hash:
        diffs.append(f"data: set hash {got} there, {data_hash} here (other prepared sets, or "
                     f"grown since)")
    return diffs


def run_ablation(target, data, out: str | Path, config: AblationConfig, prompts: list[dict],
                 gen_config, registry=None, progress: bool = True, label: str = "") -> dict:
    from tqdm.auto import tqdm

    from .bench import bench_meta, run_bench, write_report
    from .compose import build_method
    from .registry import default_registry
    from .training import train

    reg = registry or default_registry()
    out = Path(out)
    ck_dir = out / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    runs = config.runs(reg)
    unknown = sorted(set(config.baselines) - {name for name, _, _ in runs})
    if unknown:
        raise ConfigError(f"ablation: no configuration named {', '.join(unknown)}; the names are "
                          + ", ".join(name for name, _, _ in runs))
    folders = [Path(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
    data_hash = data_summary(folders)["hash"]
    where = {name: ck_dir / name for name, _, _ in runs}
    for name, cfg, _ in runs:  # every baseline is checked before anything trains
        if name in config.baselines:
            loss = cfg.loss or reg.get("heads", cfg.head).cls.default_loss  # what training uses
            diffs = baseline_differences(Path(config.baselines[name]), replace(cfg, loss=loss),
                                         data_hash)
            if diffs:
                raise ConfigError(f"ablation: {config.baselines[name]} is not {name} as this "
                                  f"ablation trains it: " + "; ".join(diffs))
            where[name] = Path(config.baselines[name])
    for name, cfg, tree in runs:
        folder = where[name]
        if name in config.baselines:
            tqdm.write(f"{name}: the baseline {folder}, trained with the same settings and data")
            continue
        if (folder / "koala.json").is_file():
            tqdm.write(f"{name}: trained already, kept")
            continue
        resume = (ck_dir / f"{name}.train-state" / "state.json").is_file()
        train(target, folders, folder, cfg, resume=resume, registry=reg, progress=progress, tree=tree)
    controls = ["vanilla"] + (["vanilla-again"] if config.noise_control else [])
    # every configuration drafts with its run's tree, a baseline too (whatever its checkpoint names)
    heads = [build_method(str(where[name]), target, reg, tree=tree) for name, _, tree in runs]
    for m, (name, _, _) in zip(heads, runs):
        m.name = name
    methods = [build_method(name, target, reg) for name in controls] + heads
    results = run_bench(methods, target, prompts, gen_config, progress=progress)
    results["meta"] = bench_meta(target, label, prompts, gen_config)
    write_report(results, out / "bench")
    table = ablation_rows(results, runs, where)
    doc = {"config": asdict(config), "rows": table, "bench": results["meta"]}
    (out / "ablation.json").write_text(json.dumps(doc, indent=2))
    (out / "ablation.md").write_text(markdown(table, gen_config, len(prompts))
                                     + "".join(line + "\n" for line in noise_note(results)))
    plot(table, out / "ablation.png")
    return doc


def ablation_rows(results: dict, runs, where: dict[str, Path]) -> list[dict]:
    by_name = {m["method"]: m for m in results["methods"]}
    rows = []
    for name, cfg, tree in runs:
        m = by_name[name]
        meta = json.loads((where[name] / "koala.json").read_text())
        rows.append({"name": name, "family": cfg.head, "layers": cfg.head_options["layers"],
                     "tree": describe_tree(tree),
                     "adversarial": cfg.adversary.enabled, "tau": m["tau"],
                     "speedup": m["speedup"], "token_efficiency": m["token_efficiency"],
                     "draft_ms_per_step": m["draft_ms_per_step"],
                     "identical": m["identical_to_vanilla"],
                     "val_top1": meta["metrics"]["val_top1"], "checkpoint": str(where[name]),
                     "train_seconds": meta["metrics"]["train_seconds"]})
    return rows


def describe_tree(tree: tuple[str, dict]) -> str:
    name, options = tree
    return name + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")


def markdown(rows: list[dict], gen_config, n_prompts: int) -> str:
    lines = [f"{n_prompts} held-out prompts x {gen_config.max_new_tokens} tokens, greedy; speedup = "
             "median [min-max] over prompts against plain greedy decoding, interleaved in one run.", "",
             "| head | K | adversarial | tree | val top-1 (depth 1) | tau | speedup | token eff. | "
             "draft ms/step | identical |",
             "|---|---:|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['layers']} | {'yes' if r['adversarial'] else 'no'} | "
                     f"{r['tree']} | "
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
