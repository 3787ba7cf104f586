"""LXT 2.1's own AttnLRP, per generation step, run as a script (its patches edit transformers' classes for the
whole process, so it never runs inside the test process).

    python tests/lxt_reference.py MODEL_DIR FAMILY PROMPT FULL_TEXT  ->  JSON: per step, (prefix length, H) relevance

LXT's package imports modules this environment cannot load (its BERT patches need a transformers 4 module, its
ViT patches torchvision, its zennit patches zennit); they are stubbed, and only the family's own patch map is
used (Llama, GPT-2, Qwen2, Qwen3 or Gemma 3; its attention wrapper installed into transformers 5's registry: LXT's ``patch_attention`` swaps the
registry for a plain dict, which transformers 5 cannot call), as LXT's own examples do: the per-step forward from ``inputs_embeds``, the logit of the next target token
backpropagated, relevance = input embeddings x gradient."""

from __future__ import annotations

import json
import sys
import types


def _stub_lxt_extras() -> None:
    for name, attrs in {
        "lxt.efficient.zennit_patches": {"monkey_patch_zennit": None},
        "lxt.efficient.models.bert": {"modeling_bert": types.ModuleType("modeling_bert"), "attnLRP": {}},
        "lxt.efficient.models.vit_torch": {"vision_transformer": types.ModuleType("vision_transformer"), "cp_LRP": {}},
    }.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def main() -> None:
    path, family, prompt, full = sys.argv[1:5]
    _stub_lxt_extras()
    import torch
    from lxt.efficient import monkey_patch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if family == "llama":
        import transformers.models.llama.modeling_llama as modeling
        from lxt.efficient.models.llama import attnLRP
    elif family == "qwen2":
        import transformers.models.qwen2.modeling_qwen2 as modeling
        from lxt.efficient.models.qwen2 import attnLRP
    elif family == "qwen3":
        import transformers.models.qwen3.modeling_qwen3 as modeling
        from lxt.efficient.models.qwen3 import attnLRP
    elif family == "gemma3":
        import transformers.models.gemma3.modeling_gemma3 as modeling
        from lxt.efficient.models.gemma3 import attnLRP
    else:
        import transformers.models.gpt2.modeling_gpt2 as modeling
        from lxt.efficient.models.gpt2 import attnLRP
    from lxt.efficient.patches import wrap_attention_forward

    monkey_patch(modeling, {k: v for k, v in attnLRP.items() if k is not modeling})
    # LXT's patch_attention swaps transformers' attention registry for a dict, which transformers 5 cannot call
    # (``get_interface``); LXT's own wrapper is installed into the registry instead
    modeling.ALL_ATTENTION_FUNCTIONS["sdpa"] = wrap_attention_forward(modeling.ALL_ATTENTION_FUNCTIONS["sdpa"])
    modeling.eager_attention_forward = wrap_attention_forward(modeling.eager_attention_forward)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tok(full)["input_ids"]
    out = []
    for p in range(len(tok(prompt)["input_ids"]), len(ids)):
        x = model.get_input_embeddings()(torch.tensor([ids[:p]])).detach().requires_grad_(True)
        logit = model(inputs_embeds=x, use_cache=False).logits[0, -1, ids[p]]
        logit.backward()
        out.append((x * x.grad)[0].tolist())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
