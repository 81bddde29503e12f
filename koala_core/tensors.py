"""Small tensor helpers shared across koala, one of each: additive attention masks, weighted means,
keyed random streams, and optimizer state as flat tensors (for safetensors training states, never
pickle)."""

from __future__ import annotations

import hashlib

import torch


def keyed_generator(*key) -> torch.Generator:
    """A CPU random stream determined by ``key`` alone (e.g. seed, step, micro-batch, purpose): the
    same draws whichever worker makes them and after any resume, with no state to save."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def additive_mask(allow: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., T, S) bool 'may attend' -> (1, 1, T, S) float mask: 0 where allowed, finfo.min elsewhere.

    Always float: a boolean 4-D mask is silently wrong under eager attention.
    """
    mask = torch.zeros(allow.shape[-2:], dtype=dtype, device=allow.device)
    return mask.masked_fill_(~allow.reshape(allow.shape[-2:]), torch.finfo(dtype).min)[None, None]


def to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """A long tensor of ``values`` on ``device``; on CUDA copied from pinned memory without waiting
    for the device (a plain ``torch.tensor(values, device="cuda")`` synchronises the stream)."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=torch.long, device=device)
    return torch.tensor(values, dtype=torch.long, pin_memory=True).to(device, non_blocking=True)


def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(values * weight) / sum(weight), 0 when no position counts."""
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """The per-parameter state of ``opt`` as ``{prefix.PARAM_ID.NAME: tensor}``."""
    out = {}
    for pid, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{prefix}.{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str,
                   param_groups: list[dict]) -> None:
    """Restore ``opt`` from :func:`optimizer_tensors` output and its (JSON) ``param_groups``."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def hidden_and_aux(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A target forward's output as (hidden, aux): aux is None when no aux layers were asked."""
    return out if isinstance(out, tuple) else (out, None)
