"""Recipes: one plugin of each kind with its options, plus training settings, in a TOML file.

``koala compose`` writes one; ``koala train --recipe``, ``koala generate --recipe`` and
``koala bench --methods R.toml`` read it. Every name and option is checked against the installed
plugins' config dataclasses when the recipe is built or read, so a third-party plugin's options work
without any change here, and a typo fails before a model loads.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import build_config, check_draft_dtype, coerce_options, describe_options
from .errors import ConfigError
from .files import write_bytes_atomic
from .train_config import AdversaryConfig, TrainConfig

FORMAT = 1
# recipe section -> registry kind
SLOTS = {"head": "heads", "tree": "tree_policies", "verifier": "verifiers", "loss": "losses",
         "discriminator": "discriminators", "adv_loss": "adversarial_losses"}
SCALARS = ("temperature", "model", "checkpoint", "draft_dtype", "train")  # top-level keys
TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)
              if f.name not in ("head", "head_options", "loss", "loss_options", "adversary")]
ADV_KEYS = [f.name for f in dataclasses.fields(AdversaryConfig)
            if f.name not in ("discriminator", "discriminator_options", "adv_loss", "adv_loss_options")]


@dataclass(frozen=True)
class Slot:
    name: str = ""
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    head: Slot = Slot("eagle")
    tree: Slot = Slot("")  # empty: the checkpoint's own tree, else chain
    verifier: Slot = Slot("")  # empty: greedy at T=0, rejection at T>0
    loss: Slot = Slot("")  # empty: the family default
    discriminator: Slot = Slot("")  # empty: supervised only
    adv_loss: Slot = Slot("bce")
    temperature: float = 0.0
    model: str = "default"
    checkpoint: str = ""  # a trained head for generate / bench (relative to the recipe file)
    draft_dtype: str = ""  # what that head drafts in (config.DRAFT_DTYPES); "" = the command's
    train: dict = field(default_factory=dict)  # TrainConfig and AdversaryConfig scalars

    # -- building ------------------------------------------------------------------------------
    def validate(self, registry) -> "Recipe":
        """Check names, options and how the pieces fit; returns the recipe with typed options."""
        from .heads import NeuralHead

        typed = {}
        for slot, kind in SLOTS.items():
            s: Slot = getattr(self, slot)
            if not s.name:
                if s.options:
                    raise ConfigError(f"{slot} options given without a {slot}")
                typed[slot] = s
                continue
            info = registry.get(kind, s.name)  # unknown name: error listing the installed ones
            cfg = build_config(info.cls, s.options, where=f"{slot} {s.name!r}")
            typed[slot] = Slot(s.name, {k: v for k, v in dataclasses.asdict(cfg).items()
                                        if k in s.options})
        if self.temperature < 0:
            raise ConfigError("temperature must be >= 0")
        if self.draft_dtype:
            check_draft_dtype(self.draft_dtype)
        if self.verifier.name == "greedy" and self.temperature > 0:
            raise ConfigError("the greedy verifier needs temperature 0; use 'rejection' (lossless "
                              "sampling) or 'typical' (lossy) at T > 0")
        trainable = bool(self.head.name) and issubclass(registry.get("heads", self.head.name).cls,
                                                        NeuralHead)
        if not trainable and (self.discriminator.name or self.loss.name or self.train):
            raise ConfigError(f"head {self.head.name or '(none)'!r} has nothing to train: drop the "
                              "loss, discriminator and train settings (trainable heads: "
                              + ", ".join(n for n in registry.names("heads")
                                          if issubclass(registry.get("heads", n).cls, NeuralHead))
                              + ")")
        adv_given = sorted(k for k in self.train if k in ADV_KEYS)
        if adv_given and not self.discriminator.name:
            raise ConfigError(f"adversarial settings {adv_given} need a discriminator "
                              f"(choose one of {', '.join(registry.names('discriminators'))})")
        unknown = sorted(set(self.train) - set(TRAIN_KEYS) - set(ADV_KEYS))
        if unknown:
            raise ConfigError(f"train: unknown setting(s) {', '.join(unknown)}; valid: "
                              + ", ".join(TRAIN_KEYS + ADV_KEYS))
        config = self.train_config()  # types and range checks of the training settings
        train = {k: getattr(config, k) if k in TRAIN_KEYS else getattr(config.adversary, k)
                 for k in self.train}
        return dataclasses.replace(self, **typed, train=train)

    def train_config(self) -> TrainConfig:
        tr = coerce_options(TrainConfig, {k: v for k, v in self.train.items() if k in TRAIN_KEYS}, "train")
        adv = coerce_options(AdversaryConfig, {k: v for k, v in self.train.items() if k in ADV_KEYS},
                             "train")
        try:
            adversary = AdversaryConfig(discriminator=self.discriminator.name,
                                        discriminator_options=dict(self.discriminator.options),
                                        adv_loss=self.adv_loss.name or "bce",
                                        adv_loss_options=dict(self.adv_loss.options), **adv)
            return TrainConfig(head=self.head.name, head_options=dict(self.head.options),
                               loss=self.loss.name, loss_options=dict(self.loss.options),
                               adversary=adversary, **tr)
        except TypeError as exc:
            raise ConfigError(f"train settings: {exc}") from None

    # -- changing ------------------------------------------------------------------------------
    def with_overrides(self, **train: Any) -> "Recipe":
        """The recipe with training settings replaced (``eval_every`` also sets ``save_every``)."""
        if "eval_every" in train and "save_every" not in train:
            train["save_every"] = train["eval_every"]
        return dataclasses.replace(self, train={**self.train, **train})

    def with_flags(self, args: list[str], registry) -> "Recipe":
        """The recipe with ``--KEY VALUE`` / ``--KEY=VALUE`` / ``--SLOT.KEY VALUE`` flags applied to
        its plugins' options: a plain KEY goes to the first chosen plugin that has it (head, tree,
        verifier, loss, discriminator, adv-loss, then training settings)."""
        def owners(key: str) -> list[str]:
            found = [slot for slot, kind in SLOTS.items() if getattr(self, slot).name and key in
                     {o["name"] for o in describe_options(registry.get(kind, getattr(self, slot).name).cls)}]
            return found + (["train"] if key in TRAIN_KEYS or key in ADV_KEYS else [])

        updates: dict[str, dict] = {slot: dict(getattr(self, slot).options) for slot in SLOTS}
        updates["train"] = dict(self.train)
        i = 0
        while i < len(args):
            arg = args[i]
            if not arg.startswith("--") or len(arg) == 2:
                raise ConfigError(f"unexpected argument {arg!r}: options are --KEY VALUE")
            flag, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"--{flag} needs a value")
                value, i = args[i + 1], i + 1
            i += 1
            slot, dot, key = flag.partition(".")
            if not dot:
                slot, key = "", flag
            key, slot = key.replace("-", "_"), slot.replace("-", "_")
            if slot and slot not in updates:
                raise ConfigError(f"--{flag}: unknown section {slot!r}; use one of "
                                  + ", ".join([*SLOTS, "train"]))
            if slot and slot != "train" and not getattr(self, slot).name:
                raise ConfigError(f"--{flag}: no {slot} chosen (pass --{slot.replace('_', '-')} NAME)")
            if not slot:
                found = owners(key)
                if not found:
                    raise ConfigError(f"--{flag}: no chosen plugin has an option {key!r} "
                                      "(see `koala compose ... --help-options`)")
                slot = found[0]
            updates[slot][key] = value
        slots = {slot: Slot(getattr(self, slot).name, updates[slot]) for slot in SLOTS}
        return dataclasses.replace(self, **slots, train=updates["train"])

    # -- files ---------------------------------------------------------------------------------
    def to_toml(self) -> str:
        lines = ["# koala recipe (written by `koala compose`; edit freely, it is re-checked on use)",
                 f"format = {FORMAT}", f"model = {_toml(self.model)}",
                 f"temperature = {_toml(self.temperature)}"]
        if self.checkpoint:
            lines.append(f"checkpoint = {_toml(self.checkpoint)}")
        if self.draft_dtype:
            lines.append(f"draft_dtype = {_toml(self.draft_dtype)}")
        for slot in SLOTS:
            s: Slot = getattr(self, slot)
            if not s.name:
                continue
            lines += ["", f"[{slot}]", f"name = {_toml(s.name)}"]
            if s.options:
                lines.append(f"[{slot}.options]")
                lines += [f"{k} = {_toml(v)}" for k, v in sorted(s.options.items())]
        if self.train:
            lines += ["", "[train]"] + [f"{k} = {_toml(v)}" for k, v in sorted(self.train.items())]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_bytes_atomic(path, self.to_toml().encode())
        return path

    @classmethod
    def from_dict(cls, doc: dict, where: str = "recipe") -> "Recipe":
        doc = dict(doc)
        if doc.pop("format", FORMAT) != FORMAT:
            raise ConfigError(f"{where}: unsupported recipe format (this koala reads format {FORMAT})")
        kwargs: dict[str, Any] = {}
        for key, value in doc.items():
            if key in SLOTS:
                if not isinstance(value, dict) or set(value) - {"name", "options"}:
                    raise ConfigError(f"{where}: [{key}] takes 'name' and an [{key}.options] table")
                kwargs[key] = Slot(str(value.get("name", "")), dict(value.get("options", {})))
            elif key in SCALARS:
                kwargs[key] = value
            else:
                raise ConfigError(f"{where}: unknown key {key!r}; valid: " + ", ".join([*SLOTS, *SCALARS]))
        return cls(**kwargs)


def load_recipe(path: str | Path, registry=None) -> Recipe:
    """Read and validate a recipe file; a checkpoint path may start with ``~`` or name environment
    variables (``$KOALA_CACHE/runs/x``), and a relative one is resolved against the recipe's folder."""
    from .registry import default_registry

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no recipe file at {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    recipe = Recipe.from_dict(doc, where=str(path)).validate(registry or default_registry())
    if recipe.checkpoint:
        expanded = os.path.expandvars(recipe.checkpoint)
        if "$" in expanded:
            raise ConfigError(f"{path}: checkpoint {recipe.checkpoint!r} names an environment "
                              f"variable that is not set")
        where = Path(expanded).expanduser()
        if not where.is_absolute():
            where = (path.parent / where).resolve()
        recipe = dataclasses.replace(recipe, checkpoint=str(where))
    return recipe


def describe(recipe: Recipe, registry) -> str:
    """Every option of the recipe's plugins and of training, with defaults (``--help-options``)."""
    lines = ["A plain --KEY VALUE goes to the first chosen plugin with that option, in the order below."]
    for slot, kind in SLOTS.items():
        s: Slot = getattr(recipe, slot)
        if not s.name:
            continue
        lines.append(f"{slot} {s.name!r} (--{slot.replace('_', '-')}.KEY VALUE):")
        opts = describe_options(registry.get(kind, s.name).cls)
        lines += [f"  --{o['name'].replace('_', '-'):<22} {o['type']:<6} default {o['default']!r}  "
                  f"{o['help']}" for o in opts] or ["  (no options)"]
    if recipe.head.name:
        lines.append("training (--train.KEY VALUE):")
        defaults = {**dataclasses.asdict(TrainConfig()), **dataclasses.asdict(AdversaryConfig())}
        keys = TRAIN_KEYS + (ADV_KEYS if recipe.discriminator.name else [])
        lines += [f"  --{k.replace('_', '-'):<22} default {defaults[k]!r}" for k in keys]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} to a recipe")
