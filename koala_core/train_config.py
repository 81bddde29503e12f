"""Training settings: :class:`TrainConfig` and its adversarial half :class:`AdversaryConfig`.

A module of plain dataclasses (torch is imported only when a run asks for its autocast), so reading
a recipe never imports the training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class AdversaryConfig:
    discriminator: str = field(default="", metadata={"help": "discriminator plugin; empty = supervised only"})
    discriminator_options: dict = field(default_factory=dict)
    adv_loss: str = field(default="bce", metadata={"help": "adversarial loss plugin (the game)"})
    adv_loss_options: dict = field(default_factory=dict)
    adv_weight: float = field(default=0.1, metadata={"help": "lambda_adv after warm-up"})
    adv_warmup: int = field(default=200, metadata={"help": "head steps over which lambda_adv ramps from 0"})
    d_lr: float = field(default=2e-4, metadata={"help": "discriminator learning rate (Adam)"})
    d_steps: int = field(default=1, metadata={"help": "discriminator updates per head update (n_d)"})
    d_positions: int = field(default=1024, metadata={"help": "positions per depth the discriminator sees per step (over all micro-batches)"})
    collapse_acc: float = field(default=0.99, metadata={"help": "accuracy counted as a won game"})
    collapse_patience: int = field(default=100, metadata={"help": "steps at collapse_acc before backing off"})
    max_backoffs: int = field(default=3, metadata={"help": "back-offs before training stops"})
    instance_noise: float = field(default=0.0, metadata={
        "help": "Gaussian noise added to every sample the discriminator sees, real and fake, in "
                "units of the real samples' spread per feature (0 = none)"})
    noise_steps: int = field(default=0, metadata={
        "help": "head steps over which instance_noise decays linearly to 0 (0 = constant)"})

    def __post_init__(self):
        if self.adv_weight < 0 or self.adv_warmup < 0:
            raise ConfigError("adversarial: adv_weight and adv_warmup must be >= 0")
        if self.d_lr <= 0 or self.d_steps < 1 or self.d_positions < 1:
            raise ConfigError("adversarial: need d_lr > 0, d_steps >= 1, d_positions >= 1")
        if self.instance_noise < 0 or self.noise_steps < 0:
            raise ConfigError("adversarial: instance_noise and noise_steps must be >= 0")
        if not 0.5 < self.collapse_acc <= 1 or self.collapse_patience < 1 or self.max_backoffs < 0:
            raise ConfigError("adversarial: need 0.5 < collapse_acc <= 1, collapse_patience >= 1, "
                              "max_backoffs >= 0")

    @property
    def enabled(self) -> bool:
        return bool(self.discriminator)


@dataclass(frozen=True)
class TrainConfig:
    """How to train one head (each default defined here once; the CLI derives its options)."""

    head: str = "eagle"
    head_options: dict = field(default_factory=dict)
    loss: str = ""  # empty: the head's own default loss (its class attribute default_loss)
    loss_options: dict = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 8
    micro_batches: int = 1  # the batch in this many chunks, gradients accumulated (and split over workers)
    window: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 50
    grad_clip: float = 1.0
    depth_decay: float = 0.8  # weight of depth k is depth_decay ** (k - 1)
    eval_every: int = 250
    save_every: int = 250
    seed: int = 0
    precision: str = "fp32"  # bf16: forward and losses under bf16 autocast (weights and Adam stay fp32)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)  # off unless a discriminator
    init: str = ""  # a checkpoint folder to start from (fine-tuning): its weights and draft vocabulary
    # a wall-clock budget (0 = none): training stops after this many minutes (of the whole run, over
    # resumes) even before `steps`, and the cosine decay follows whichever of the two is further
    # along, so a run cut by time still ends at a low learning rate (its step count then depends on
    # the machine: the checkpoint records the steps done)
    max_minutes: float = 0.0

    def __post_init__(self):
        if isinstance(self.adversary, dict):  # from JSON / TOML
            object.__setattr__(self, "adversary", AdversaryConfig(**self.adversary))
        for name in ("steps", "batch_size", "micro_batches", "window", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train: {name} must be >= 1")
        if self.batch_size % self.micro_batches:
            raise ConfigError(f"train: batch_size {self.batch_size} must split into "
                              f"{self.micro_batches} equal micro-batches")
        if self.max_minutes < 0:
            raise ConfigError("train: max_minutes must be >= 0 (0 = no time limit)")
        if self.lr <= 0 or self.grad_clip <= 0 or not 0 < self.depth_decay <= 1:
            raise ConfigError("train: need lr > 0, grad_clip > 0, 0 < depth_decay <= 1")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train: precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")

    def autocast(self, device):
        """The autocast context the forward and the losses run in (a no-op for fp32)."""
        import torch

        device_type = torch.device(device).type
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
