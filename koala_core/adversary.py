"""The adversarial half of KOALA training: a discriminator, its game, its optimizer and its guards.

Per head step the trainer calls :meth:`Adversary.discriminator_steps` (n_d updates of the
discriminator on real samples against the head's detached fakes), then adds
:meth:`Adversary.generator_loss` (lambda_adv, warmed up from 0, times the game's head loss) to the
supervised loss. Discriminator accuracy is the share of positions where the real sample scores
above the fake one for the same context (threshold-free, so it means the same for every game).

With a batch in several micro-batches (gradient accumulation, or data-parallel workers) the game
keeps that order: the trainer first collects every micro-batch's samples (:meth:`samples`, from a
forward pass without gradients), :meth:`update` gathers them from every worker and runs the same
n_d updates on each, and only then does each micro-batch add its head loss against the updated
discriminator. Which positions and which noise each micro-batch draws depends only on the seed,
the step and the micro-batch's index, so N workers compute what one process computes with
``--micro-batches N``, and a run resumes on any number of workers.

Guards: a non-finite discriminator or adversarial loss stops training with a clear error; a
discriminator that wins outright (accuracy >= ``collapse_acc`` for ``collapse_patience`` steps)
gives the head little useful signal, so it backs off (halves its learning rate and pauses its
updates for ``collapse_patience`` steps); after ``max_backoffs`` back-offs without recovery the
adversarial game stops (lambda_adv = 0 from then on, recorded in the checkpoint's metrics) and
training goes on supervised, with a message naming the settings to change.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .errors import KoalaError
from .interfaces import DepthOutput
from .tensors import keyed_generator, load_optimizer, optimizer_tensors
from .train_config import AdversaryConfig


class CollapseError(KoalaError):
    """Adversarial training collapsed (NaN, or a discriminator that cannot be kept in the game)."""


class Adversary:
    def __init__(self, config: AdversaryConfig, registry, context_dim: int, topk: int, device,
                 seed: int = 0) -> None:
        self.config = config
        self.disc = registry.create("discriminators", config.discriminator,
                                    config.discriminator_options, context_dim=context_dim, topk=topk)
        self.disc.to(device).train()
        self.game = registry.create("adversarial_losses", config.adv_loss, config.adv_loss_options)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=config.d_lr, betas=(0.5, 0.999))
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed + 1)  # its own stream: the data order stays put
        self.pinned = 0  # consecutive steps at collapse accuracy
        self.paused = 0  # steps left without discriminator updates
        self.backoffs = 0
        self.stopped_at: int | None = None  # the step the game was given up, if it was
        self.last: dict[str, float] = {}

    # -- one training step ---------------------------------------------------------------------
    def lambda_at(self, step: int) -> float:
        c = self.config
        return c.adv_weight * (1.0 if c.adv_warmup == 0 else min(1.0, step / c.adv_warmup))

    def noise_at(self, step: int) -> float:
        """The instance-noise level at a head step (decaying linearly over ``noise_steps``)."""
        c = self.config
        if not c.instance_noise or not c.noise_steps:
            return c.instance_noise
        return c.instance_noise * max(0.0, 1.0 - step / c.noise_steps)

    def stream(self, step: int, micro_batch: int, what: str) -> torch.Generator:
        """The random stream of one micro-batch's draws at one step (its own, whichever worker
        runs it): ``what`` is ``"d"`` (the discriminator's samples), ``"g"`` (the head's) or
        ``"noise"`` (the update's instance noise, ``micro_batch`` -1)."""
        return keyed_generator(self.seed, step, micro_batch, what)

    @staticmethod
    def _noisy(x: torch.Tensor, spread: torch.Tensor, sigma: float,
               gen: torch.Generator) -> torch.Tensor:
        """``x`` plus Gaussian noise of ``sigma`` x ``spread`` per feature (instance noise: the
        real and fake distributions overlap, so the discriminator cannot separate them outright
        and its gradient for the head stays informative; Sonderby et al. 2017)."""
        if not sigma:
            return x
        noise = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
        return x + sigma * spread * noise

    @staticmethod
    def _spread(real: torch.Tensor) -> torch.Tensor:
        return real.detach().float().std(0, keepdim=True).clamp_min(1e-6).to(real.dtype)

    def _pick(self, out: DepthOutput, gen: torch.Generator, cap: int) -> torch.Tensor:
        idx = torch.nonzero(out.weight > 0).flatten()
        if idx.numel() > cap:
            perm = torch.randperm(idx.numel(), generator=gen)[:cap]
            idx = idx[perm.to(idx.device)]
        return idx

    def _subset(self, out: DepthOutput, gen: torch.Generator, cap: int) -> DepthOutput:
        """The depth output at up to ``cap`` random weighted positions (a cheaper game)."""
        idx = self._pick(out, gen, cap)
        return DepthOutput(**{f.name: None if getattr(out, f.name) is None else getattr(out, f.name)[idx]
                              for f in dataclasses.fields(out)})

    def _cap(self, micro_batches: int) -> int:
        """Positions per depth a micro-batch gives the game (``d_positions`` a step in all)."""
        return math.ceil(self.config.d_positions / micro_batches)

    def samples(self, outs: list[DepthOutput], gen: torch.Generator | None = None,
                micro_batches: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(context, real, fake) rows for the discriminator from one micro-batch's depth outputs,
        detached from the head; ``gen`` picks the positions (default: the adversary's stream)."""
        ctx, real, fake = [], [], []
        for out in outs:
            sub = self._subset(out, gen or self.gen, self._cap(micro_batches))
            r, f = self.disc.samples(sub)
            ctx.append(sub.context.float())
            real.append(r)
            fake.append(f)
        return torch.cat(ctx).detach(), torch.cat(real).detach(), torch.cat(fake).detach()

    def discriminator_steps(self, outs: list[DepthOutput], step: int) -> dict[str, float]:
        """n_d discriminator updates on this batch's samples (fakes detached from the head)."""
        if self.stopped_at is not None:
            return self.last
        return self.update(*self.samples(outs), step=step, gen=self.gen)

    def update(self, ctx: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, step: int,
               gen: torch.Generator | None = None, workers=None) -> dict[str, float]:
        """n_d discriminator updates on these samples; under ``workers``, on every worker's
        samples (gathered in rank order, so each worker runs the same updates) and then rank 0's
        discriminator everywhere (nondeterministic GPU kernels cannot drift the copies apart)."""
        if self.stopped_at is not None:
            return self.last
        if workers is not None and workers.distributed:
            ctx, real, fake = (workers.gather_rows(t) for t in (ctx, real, fake))
        gen = gen or self.stream(step, -1, "noise")
        weight = torch.ones(real.shape[0], device=real.device)
        sigma = self.noise_at(step)
        spread = self._spread(real) if sigma else None
        for _ in range(self.config.d_steps if not self.paused else 0):
            if sigma:  # fresh noise for every update
                real_in = self._noisy(real, spread, sigma, gen)
                fake_in = self._noisy(fake, spread, sigma, gen)
            else:
                real_in, fake_in = real, fake
            r, f = self.disc(ctx, real_in), self.disc(ctx, fake_in)
            loss = self.game.discriminator_loss(r, f, weight)
            loss = loss + self.game.penalty(self.disc, ctx, real_in, fake_in, weight, gen)
            if not torch.isfinite(loss):
                raise CollapseError(f"discriminator loss is {loss.item()} at step {step}; lower --d-lr "
                                    "or use spectral_norm=true / the wgan-gp game")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.last["d_loss"] = loss.item()
        if workers is not None and workers.distributed:
            workers.broadcast_module(self.disc)
        with torch.no_grad():
            acc = (self.disc(ctx, real) > self.disc(ctx, fake)).float().mean().item()
        self.last["d_acc"] = acc
        self._guard(acc, step)
        return self.last

    def generator_loss(self, outs: list[DepthOutput], step: int, depth_decay: float,
                       gen: torch.Generator | None = None, micro_batches: int = 1) -> torch.Tensor:
        """lambda_adv(step) x the game's head loss, summed over depths with the supervised weights;
        ``gen`` picks the positions and draws the noise (default: the adversary's stream). In a
        batch of several micro-batches the discriminator scores in eval mode (spectral norm's
        power iteration and dropout stand still), so every micro-batch, on whichever worker,
        is scored by the same discriminator: the one this step's update left."""
        lam = self.lambda_at(step) if self.stopped_at is None else 0.0
        total = outs[0].logits.new_zeros(())
        if lam == 0:
            self.last["g_adv"] = 0.0
            return total
        gen = gen or self.gen
        sigma = self.noise_at(step)
        self.disc.train(micro_batches == 1)
        for k, out in enumerate(outs):
            sub = self._subset(out, gen, self._cap(micro_batches))
            real, fake = self.disc.samples(sub)
            if sigma:
                fake = self._noisy(fake, self._spread(real), sigma, gen)
            score = self.disc(sub.context.float().detach(), fake)
            total = total + depth_decay ** k * self.game.generator_loss(
                score, torch.ones_like(score))
        self.disc.train()
        if not torch.isfinite(total):
            raise CollapseError(f"adversarial head loss is {total.item()} at step {step}; "
                                "lower --adv-weight or --d-lr")
        self.last["g_adv"] = total.item()
        return lam * total

    def _guard(self, acc: float, step: int) -> None:
        c = self.config
        if self.paused:
            self.paused -= 1
            return
        self.pinned = self.pinned + 1 if acc >= c.collapse_acc else 0
        if self.pinned < c.collapse_patience:
            if self.pinned == 0 and self.backoffs:
                self.backoffs = 0  # recovered
            return
        self.pinned = 0
        from tqdm.auto import tqdm

        if self.backoffs >= c.max_backoffs:
            self.stopped_at = step
            self.last = {}
            tqdm.write(
                f"step {step}: the discriminator still wins outright (accuracy >= "
                f"{c.collapse_acc:.0%} for {c.collapse_patience} steps) after {self.backoffs} "
                "back-offs: adversarial training stops here and the head goes on supervised only. "
                "Next time try a lower --d-lr, spectral_norm=true, fewer --d-steps, a longer "
                "--adv-warmup, or the hinge / wgan-gp game.")
            return
        self.backoffs += 1
        self.paused = c.collapse_patience
        for group in self.opt.param_groups:
            group["lr"] *= 0.5
        tqdm.write(f"step {step}: discriminator accuracy pinned at {acc:.0%}; backing off "
                   f"(#{self.backoffs}: lr halved to {self.opt.param_groups[0]['lr']:.2e}, "
                   f"paused for {c.collapse_patience} steps)")

    # -- resumable state -----------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"disc.{k}": v.detach().cpu().contiguous() for k, v in self.disc.state_dict().items()}
        tensors.update(optimizer_tensors(self.opt, "dopt"))
        tensors["drng"] = self.gen.get_state()
        return tensors

    def state_meta(self) -> dict:
        return {"param_groups": self.opt.state_dict()["param_groups"], "pinned": self.pinned,
                "paused": self.paused, "backoffs": self.backoffs, "stopped_at": self.stopped_at}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if "drng" not in tensors:
            raise KoalaError("cannot resume: the saved training state has no discriminator")
        self.disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        load_optimizer(self.opt, tensors, "dopt", meta["param_groups"])
        self.gen.set_state(tensors["drng"])
        self.pinned, self.paused, self.backoffs = meta["pinned"], meta["paused"], meta["backoffs"]
        self.stopped_at = meta.get("stopped_at")
