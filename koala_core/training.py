"""Supervised training of a draft head from prepared data (``koala prepare``).

AdamW, linear warm-up then cosine decay, gradient clipping, per-depth weights decaying with depth,
per-depth top-1 validation accuracy, periodic resumable training state (safetensors + JSON, never
pickle), and a final inference checkpoint. Deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import torch

from .adversary import Adversary
from .checkpoint import save_head
from .files import write_folder_atomic
from .data import load_splits
from .distributed import Workers, no_sync
from .errors import ConfigError, KoalaError
from .heads import NeuralHead, TrainBatch
from .kernels import warn_if_bf16_emulated
from .tensors import keyed_generator, load_optimizer, optimizer_tensors
from .train_config import AdversaryConfig, TrainConfig



class WindowSampler:
    """Random (B, L) windows inside single conversations of a split."""

    def __init__(self, split: dict[str, torch.Tensor], window: int, device) -> None:
        self.split, self.window, self.device = split, window, device
        lengths = split["lengths"].tolist()
        self.starts = [0]
        for n in lengths[:-1]:
            self.starts.append(self.starts[-1] + n)
        self.lengths = lengths

    def batch(self, picks: list[tuple[int, int]], rng: torch.Generator | None = None) -> TrainBatch:
        """picks: (conversation, offset) pairs -> a padded TrainBatch (``rng``: its random stream)."""
        L = self.window
        s = {}
        for k in ("input_ids", "hidden", "labels", "loss_mask", "topk_ids", "topk_logp", "aux"):
            if k not in self.split:
                continue
            src = self.split[k]
            buf = torch.zeros((len(picks), L) + src.shape[1:], dtype=src.dtype)  # zero-padded
            for i, (conv, off) in enumerate(picks):
                a, n = self.starts[conv] + off, min(L, self.lengths[conv] - off)
                buf[i, :n] = src[a:a + n]
            # floats are stored fp16 and widened to fp32 where they are used (on a GPU after the
            # copy, which then moves half the bytes)
            buf = buf.to(self.device)
            s[k] = buf.float() if buf.is_floating_point() else buf
        return TrainBatch(s["input_ids"].long(), s["hidden"], s["labels"].long(),
                          s["loss_mask"].float(), s.get("topk_ids"), s.get("topk_logp"), s.get("aux"),
                          counted_only=True, rng=rng)

    def picks(self, batch_size: int, gen: torch.Generator) -> list[tuple[int, int]]:
        """Random (conversation, offset) windows of one global batch."""
        convs = torch.randint(0, len(self.lengths), (batch_size,), generator=gen).tolist()
        picks = []
        for c in convs:
            span = max(1, self.lengths[c] - self.window + 1)
            picks.append((c, int(torch.randint(0, span, (1,), generator=gen))))
        return picks

    def random(self, batch_size: int, gen: torch.Generator) -> TrainBatch:
        return self.batch(self.picks(batch_size, gen))

    def sequential(self, batch_size: int):
        """Every conversation, window by window (for validation)."""
        picks = [(c, off) for c, n in enumerate(self.lengths) for off in range(0, n, self.window)]
        for i in range(0, len(picks), batch_size):
            yield self.batch(picks[i:i + batch_size])


def draft_vocabulary(split: dict[str, torch.Tensor], size: int, vocab: int) -> torch.Tensor:
    """The ``size`` most frequent target tokens (labels) in the training data."""
    counts = torch.bincount(split["labels"].long(), minlength=vocab).float()
    counts += torch.bincount(split["input_ids"].long(), minlength=vocab).float() * 1e-3  # ties
    return torch.topk(counts, size).indices.sort().values


def sets_hash(manifests: list[dict]) -> str:
    """What identifies the data of a training run: each set's shard list and prepare settings."""
    digest = hashlib.sha256()
    for m in manifests:
        digest.update(json.dumps(m["shards"]).encode() + json.dumps(m["config"], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def data_summary(folders: list[Path]) -> dict:
    """Tokens, prepare settings and a hash of the prepared set(s) a head was trained on."""
    manifests = [json.loads((f / "manifest.json").read_text()) for f in folders]
    if len(manifests) == 1:
        m = manifests[0]
        return {"tokens": m["tokens"], "prepare": m["config"], "hash": sets_hash(manifests)}
    return {"tokens": {s: sum(m["tokens"][s] for m in manifests) for s in ("train", "val")},
            "prepare": [m["config"] for m in manifests], "hash": sets_hash(manifests),
            "sets": [f.name for f in folders]}


@torch.no_grad()
def evaluate(head: NeuralHead, sampler: WindowSampler, batch_size: int = 16) -> list[float]:
    """Top-1 accuracy of each depth against the target's own next tokens (weighted positions)."""
    head.eval()
    hits: list[float] = []
    totals: list[float] = []
    for batch in sampler.sequential(batch_size):
        for k, out in enumerate(head.train_outputs(batch)):
            out = head.to_draft_space(out)
            ok = (out.logits.argmax(-1) == out.labels).float() * out.weight
            if k >= len(hits):
                hits.append(0.0)
                totals.append(0.0)
            hits[k] += float(ok.sum())
            totals[k] += float(out.weight.sum())
    head.train()
    return [h / max(t, 1.0) for h, t in zip(hits, totals)]


def warm_start(head: NeuralHead, folder: str | Path, target, registry) -> None:
    """Load a trained checkpoint's weights and draft vocabulary into ``head`` (fine-tuning): same
    head family and parameter shapes; options that change no weight (e.g. ``ttt_steps``) may differ.
    A head with more ``layers`` than the checkpoint's grows (KOALA's K from a trained K = 1 head):
    the trained layers are loaded, the added ones start as the identity."""
    from .checkpoint import Checkpoint

    ck = Checkpoint.open(folder)
    name = getattr(head, "plugin_name", None)
    if name is not None and ck.plugin != name:
        raise ConfigError(f"--init {folder}: a {ck.plugin!r} checkpoint cannot start a {name!r} head")
    trained = ck.build_head(target, registry, "float32")
    state = trained.state_dict()
    had = getattr(trained.config, "layers", None)
    grows = had is not None and getattr(head.config, "layers", had) > had
    try:
        if grows:  # the trained head must fit this head cut to its K: only the layers differ
            options = {**dataclasses.asdict(head.config), "layers": had}
            registry.create("heads", ck.plugin, options, target=target).load_state_dict(state)
        head.load_state_dict(state, strict=not grows)
    except RuntimeError as exc:
        raise ConfigError(f"--init {folder}: its weights do not fit this head's options "
                          f"({ck.meta['head_config']} vs {head.config}): {exc}") from None
    if grows:
        head.start_added_layers(had)
    head.train()


def lr_factor(step: int, config: TrainConfig, elapsed_share: float = 0.0) -> float:
    """Linear warm-up, then cosine decay over the steps, or over the time budget
    (``elapsed_share``: the share of ``max_minutes`` spent) where that is further along."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = max((step - config.warmup) / max(1, config.steps - config.warmup), elapsed_share)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(target, data: str | Path | list, out: str | Path, config: TrainConfig = TrainConfig(),
          resume: bool = False, registry=None, progress: bool = True,
          tree: tuple[str, dict] | None = None, workers: Workers = Workers()) -> dict:
    """Train ``config.head`` on prepared ``data`` (a folder, or several whose splits are joined);
    writes the checkpoint to ``out``.

    ``workers``: this process's place in a data-parallel run (see :mod:`koala_core.distributed`);
    each worker runs its share of every batch's ``micro_batches`` chunks, rank 0 writes.
    """
    from tqdm.auto import tqdm

    from .registry import default_registry

    reg = registry or default_registry()
    share = workers.share(config.micro_batches)
    folders = [Path(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
    out = Path(out)
    torch.manual_seed(config.seed)
    head = reg.create("heads", config.head, config.head_options, target=target)
    if not isinstance(head, NeuralHead):
        raise ConfigError(f"head {config.head!r} has nothing to train")
    head.to(target.device).train()
    if config.precision == "bf16":
        warn_if_bf16_emulated(target.device, "training with precision bf16")
    loss_name = config.loss or head.default_loss
    loss_fn = reg.create("losses", loss_name, config.loss_options)
    train_split = load_splits(folders, "train", head.aux_layers)
    val_split = load_splits(folders, "val", head.aux_layers)
    if config.init:
        warm_start(head, config.init, target, reg)
    else:
        head.set_draft_vocab(draft_vocabulary(train_split, head.vocab_ids.numel(), target.vocab_size))
    sampler = WindowSampler(train_split, config.window, target.device)
    val_sampler = WindowSampler(val_split, config.window, target.device)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    adversary = None
    if config.adversary.enabled:
        topk = int(train_split["topk_ids"].shape[-1]) if "topk_ids" in train_split else 0
        adversary = Adversary(config.adversary, reg, target.hidden_size, topk, target.device,
                              seed=config.seed)
    step, before = 0, 0.0  # before: training seconds spent before a resume
    history: list[dict] = []  # validation per eval step, across resumes
    state_dir = out.parent / f"{out.name}.train-state"
    if resume:
        step, before, history = load_train_state(state_dir, head, opt, gen, config, adversary)
    bar = tqdm(total=config.steps, initial=step, desc=f"train {config.head}",
               disable=not progress or not workers.main)
    t0 = time.perf_counter()
    accs: list[float] = []
    model = workers.wrap(head)
    chunk = config.batch_size // config.micro_batches
    budget = 60.0 * config.max_minutes

    def elapsed_share() -> float:
        """Of the time budget, over every resume (0 without one), by rank 0's clock: the learning
        rate and the stop are the same on every worker."""
        if not budget:
            return 0.0
        return workers.from_main((before + time.perf_counter() - t0) / budget, target.device)

    stopped_by_time = False
    split_game = adversary is not None and config.micro_batches > 1  # see adversary.py
    while step < config.steps:
        picks = sampler.picks(config.batch_size, gen)  # the same global batch on every worker
        opt.zero_grad(set_to_none=True)
        loss_sum = supervised = g_adv = 0.0  # this worker's share, averaged over its micro-batches
        post = {}
        chunks = [picks[i * chunk:(i + 1) * chunk] for i in share]
        if split_game and adversary.stopped_at is None:  # the discriminator first learns from
            # the whole batch (see adversary.py); a game given up costs no extra forward pass
            adversary.update(*gathered_samples(head, sampler, chunks, share, adversary, step, config),
                             step=step, workers=workers)
        for j, i in enumerate(share):
            batch = sampler.batch(chunks[j], batch_rng(config, step, i))
            with no_sync(model, last=j == len(share) - 1), config.autocast(target.device):
                outs = [head.to_draft_space(o) for o in model(batch)]
                losses = [loss_fn(o) for o in outs]
                total = sum(config.depth_decay ** k * l for k, l in enumerate(losses))
                supervised += total.item() / len(share)
                if split_game:
                    total = total + adversary.generator_loss(
                        outs, step, config.depth_decay, adversary.stream(step, i, "g"),
                        config.micro_batches)
                elif adversary is not None:
                    adversary.discriminator_steps(outs, step)
                    total = total + adversary.generator_loss(outs, step, config.depth_decay)
                if adversary is not None:
                    g_adv += adversary.last.get("g_adv", 0.0) / len(share)
                    post.update({k: f"{v:.3f}" for k, v in adversary.last.items()})
                if not torch.isfinite(total):
                    raise KoalaError(f"training diverged at step {step} (loss {total.item()}); "
                                     f"lower --lr")
                (total / len(share)).backward()  # DDP averages over the workers
            loss_sum += total.item() / len(share)
        post["loss"] = f"{supervised:.3f}"
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        spent = elapsed_share()  # one clock reading (a broadcast under workers) a step: LR and stop
        factor = lr_factor(step, config, spent)
        for group in opt.param_groups:
            group["lr"] = config.lr * factor
        opt.step()
        step += 1
        bar.update()
        stopped_by_time = spent >= 1.0
        last = step == config.steps or stopped_by_time
        report = step % config.eval_every == 0 or last
        if report:  # the whole batch's losses, whatever the number of workers
            loss_sum, g_adv = workers.mean([loss_sum, g_adv], target.device)
            if adversary is not None and "g_adv" in adversary.last:
                adversary.last["g_adv"] = g_adv
        if workers.main and report:
            with config.autocast(target.device):
                accs = evaluate(head, val_sampler)
            history.append({"step": step, "loss": loss_sum, "val_top1": accs,
                            **(adversary.last if adversary is not None else {})})
            post["acc"] = "/".join(f"{a:.2f}" for a in accs[:4])
        bar.set_postfix(post)
        if last:
            break
        if step % config.save_every == 0:
            if workers.main:
                save_train_state(state_dir, head, opt, gen, step, config, adversary,
                                 before + time.perf_counter() - t0, history)
            workers.barrier()
    bar.close()
    seconds = before + time.perf_counter() - t0  # the whole run's, over every resume
    metrics = {"val_top1": accs, "steps": step, "train_seconds": round(seconds, 1),
               "history": history}
    if stopped_by_time:
        metrics["stopped_by_time"] = True
    if adversary is not None:
        metrics["adversary"] = {"backoffs": adversary.backoffs, "stopped_at": adversary.stopped_at}
    if workers.distributed:
        metrics["workers"] = workers.world
    recipe = {"train": dataclasses.asdict(config), "loss": loss_name, "data": data_summary(folders)}
    if adversary is None:
        recipe["train"].pop("adversary")
    if workers.main:
        save_head(head, out, config.head, recipe=recipe, metrics=metrics, tree=tree, registry=reg)
        save_train_state(state_dir, head, opt, gen, step, config, adversary, seconds, history)
    workers.barrier()
    return metrics


def batch_rng(config: TrainConfig, step: int, micro_batch: int) -> torch.Generator:
    """The random stream of micro-batch ``micro_batch`` (of the whole step's) at ``step``."""
    return keyed_generator(config.seed, step, micro_batch, "batch")


def gathered_samples(head, sampler, chunks, share, adversary, step: int, config: TrainConfig):
    """This worker's discriminator samples from each of its micro-batches (a forward pass without
    gradients at the weights of this step), drawn from each micro-batch's own stream."""
    parts = []
    with torch.no_grad(), config.autocast(next(head.parameters()).device):
        for picked, i in zip(chunks, share):
            batch = sampler.batch(picked, batch_rng(config, step, i))  # the main pass's draws
            outs = [head.to_draft_space(o) for o in head(batch)]
            parts.append(adversary.samples(outs, adversary.stream(step, i, "d"), config.micro_batches))
    return [torch.cat(rows) for rows in zip(*parts)]


def save_train_state(folder: Path, head, opt, gen, step: int, config: TrainConfig,
                     adversary: Adversary | None = None, seconds: float = 0.0,
                     history: list[dict] | None = None) -> None:
    """Head + optimizer (+ discriminator) tensors in safetensors, the rest in JSON (no pickle),
    with the training seconds and validation history so far (a resumed run reports the whole run)."""
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors.update(optimizer_tensors(opt, "opt"))
    tensors["rng"] = gen.get_state()
    meta = {"step": step, "config": dataclasses.asdict(config),
            "param_groups": opt.state_dict()["param_groups"], "seconds": round(seconds, 1),
            "history": history or []}
    if adversary is not None:
        tensors.update(adversary.state_tensors())
        meta["adversary"] = adversary.state_meta()
    write_folder_atomic(folder, {
        "state.safetensors": lambda p: save_file(tensors, str(p)),
        "state.json": json.dumps(meta, indent=2).encode(),
    })


def load_train_state(folder: Path, head, opt, gen, config: TrainConfig,
                     adversary: Adversary | None = None) -> tuple[int, float, list[dict]]:
    """Restore a saved state into ``head``, ``opt``, ``gen`` (and the adversary); returns its
    step, the training seconds spent so far and the validation history (0 and [] for a state
    saved before koala recorded them)."""
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        raise KoalaError(f"nothing to resume: {folder} has no training state")
    meta = json.loads((folder / "state.json").read_text())
    lengths = ("steps", "max_minutes")  # how long to go on may change between resumes
    saved = {k: v for k, v in meta["config"].items() if k not in lengths}
    saved.setdefault("adversary", dataclasses.asdict(AdversaryConfig()))  # states from before it
    saved.setdefault("precision", "fp32")  # states from before the option
    saved.setdefault("micro_batches", 1)
    now = {k: v for k, v in dataclasses.asdict(config).items() if k not in lengths}
    if saved != now:
        changed = sorted(k for k in now if saved.get(k) != now[k])
        raise KoalaError(f"cannot resume: settings differ from the interrupted run ({changed})")
    tensors = load_file(str(folder / "state.safetensors"))
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    load_optimizer(opt, tensors, "opt", meta["param_groups"])
    gen.set_state(tensors["rng"])
    if adversary is not None:
        adversary.load_state(tensors, meta.get("adversary", {}))
    return int(meta["step"]), float(meta.get("seconds", 0.0)), list(meta.get("history", []))
