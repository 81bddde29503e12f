"""Run inside a venv with the ``speculators`` package (not koala): load an exported EAGLE-3 head with
speculators' own loader, run its own forward on the target features in INPUTS, and print the
largest difference of its draft logits (per training-time-test step) from koala's, as JSON.

    python speculators_forward.py EXPORT_DIR INPUTS.safetensors [--verifier PATH]

INPUTS holds ``aux`` (1, T, n*D), ``input_ids`` (1, T) (row t reads token t+1), ``position_ids``
(1, T) and ``logits_0``, ``logits_1``, ... (T, Vd): koala's draft logits per step.
"""

import argparse
import json

import torch
from safetensors.torch import load_file
from speculators import SpeculatorModel
from speculators.models.eagle3 import Eagle3SpeculatorConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("inputs")
    ap.add_argument("--verifier", default=None)
    args = ap.parse_args()
    inputs = load_file(args.inputs)
    steps = sum(1 for k in inputs if k.startswith("logits_"))
    config_dict, _ = Eagle3SpeculatorConfig.get_config_dict(args.export_dir)
    if "speculators_model_type" in config_dict:  # speculators format: load it as it is
        config = Eagle3SpeculatorConfig.from_pretrained(args.export_dir)
        config.transformer_layer_config._attn_implementation = "eager"  # flex attention needs a GPU
        model = SpeculatorModel.from_pretrained(args.export_dir, config=config)
    else:  # the EAGLE-3 release / SGLang layout: speculators' own converter turns it into its format
        import tempfile

        from speculators.convert.eagle.eagle3_converter import Eagle3Converter

        converted = tempfile.mkdtemp()
        aux = (config_dict.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        Eagle3Converter().convert(args.export_dir, converted, base_model=args.verifier,
                                  validate=False, eagle_aux_hidden_state_layer_ids=aux)
        config = Eagle3SpeculatorConfig.from_pretrained(converted)
        config.transformer_layer_config._attn_implementation = "eager"
        model = SpeculatorModel.from_pretrained(converted, config=config)
    # speculators 0.9 + transformers 5.19: from_pretrained leaves a weight the checkpoint omits on
    # purpose (embed_tokens, the verifier's own) at zero rather than NaN, so load_verifier_weights
    # does not fill it; its own loader fills it when asked (vLLM shares the target's embedding).
    embed_was_zero = bool((model.embed_tokens.weight == 0).all())
    if embed_was_zero:
        model._load_verifier_weights(overwrite_embed_tokens=True)
    model = model.float().eval()
    captured = []
    model.lm_head.register_forward_hook(lambda m, i, o: captured.append(o[0].detach()))
    T = inputs["input_ids"].shape[1]
    with torch.no_grad():
        model(hidden_states=inputs["aux"].float(), input_ids=inputs["input_ids"].long(),
              document_ids=torch.zeros(1, T, dtype=torch.long),
              position_ids=inputs["position_ids"].long(), ttt_steps=steps)
    report = {"type": type(model).__name__, "embed_was_zero": embed_was_zero, "steps": []}
    for s in range(steps):
        mine, theirs = inputs[f"logits_{s}"].float(), captured[s].float()
        valid = T - s - 1  # later rows read padding in both
        diff = (mine[:valid] - theirs[:valid]).abs().max().item()
        agree = (mine[:valid].argmax(-1) == theirs[:valid].argmax(-1)).float().mean().item()
        report["steps"].append({"max_abs_diff": diff, "argmax_agreement": agree,
                                "logit_scale": mine[:valid].abs().max().item()})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
