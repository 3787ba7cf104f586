"""Plausibility of attributions on the trained toy models, whose gold alignment is known.

For each method: the share of generated tokens whose top-attributed source token is the gold-aligned
one (``top1``), the alignment error rate (``aer``; predicted links = source tokens scoring at least
half the step's maximum), and the chance level of ``top1``. Inseq ships no such check.

    python -m inseq_ray.toy.evaluate            # translator + copier, all methods, printed as a table
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import inseq_ray
from inseq_ray.toy.tasks import copy_corpus, translation_corpus

METHODS: dict[str, dict] = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 20},
    "deeplift": {},
    "gradient_shap": {"n_samples": 10, "stdevs": 0.0},
    "attention": {},
    "occlusion": {},
    "lime": {},
    "value_zeroing": {},
    "sequential_integrated_gradients": {"n_steps": 20},
    "layer_gradient_x_activation": {},  # default target_layer: the input embeddings
    "layer_integrated_gradients": {"n_steps": 20},
    "layer_deeplift": {},
    "attnlrp": {},
    "alti_plus": {},
}


def task_accuracy(task: str = "translator", n: int = 300, seed: int = 1234, model: str | None = None) -> dict:
    """Greedy outputs on held-out examples vs the references: exact match and token accuracy.

    ``model``: a folder holding a rebuilt model of ``task`` (default: the shipped ``toy:<task>``).
    """
    am = inseq_ray.load_model(model or f"toy:{task}", device="cpu")
    pairs = translation_corpus(n, seed) if task == "translator" else copy_corpus(n, seed)
    hyps = am.generate([s for s, _, _ in pairs], batch_size=64)
    exact = sum(h.split() == t.split() for h, (_, t, _) in zip(hyps, pairs, strict=True))
    correct = total = 0
    for h, (_, t, _) in zip(hyps, pairs, strict=True):
        hw, tw = h.split(), t.split()
        correct += sum(a == b for a, b in zip(hw, tw))
        total += max(len(hw), len(tw))
    return {"exact_match": exact / n, "token_accuracy": correct / total, "n": n}


def _scores(links_gold: list[int], matrix) -> tuple[int, int, int, int, float]:
    """(top1 hits, |A|, |A ∩ S|, |S|, chance) for one sequence; matrix (src, steps) over aligned steps."""
    hits = a = both = 0
    for j, gold in enumerate(links_gold):
        col = matrix[:, j]
        hits += int(col.argmax()) == gold
        linked = (col >= 0.5 * col.max()).nonzero().flatten().tolist()
        a += len(linked)
        both += gold in linked
    return hits, a, both, len(links_gold), 1 / matrix.shape[0]


def plausibility(
    task: str = "translator", methods: Sequence[str] = tuple(METHODS), n: int = 100, seed: int = 99
) -> dict:
    """method -> {"top1", "aer", "chance"} on ``n`` held-out examples with forced gold targets."""
    model = inseq_ray.load_model(f"toy:{task}", device="cpu")
    data = translation_corpus(n, seed) if task == "translator" else copy_corpus(n, seed)
    sources, targets, golds = zip(*data, strict=True)
    out: dict[str, dict] = {}
    for method in methods:
        res = model.attribute(
            list(sources), list(targets), method=method, show_progress=False, batch_size=50, **METHODS.get(method, {})
        )
        hits = a = both = s = 0
        chance = 0.0
        for seq, gold in zip(res.aggregate().sequence_attributions, golds, strict=True):
            side = seq.source_attributions if task == "translator" else seq.target_attributions
            assert side is not None, "the toy tasks attribute this side"
            matrix = side if task == "translator" else side[: seq.attr_pos_start]
            steps = len(gold)  # the EOS step (translator) has no gold link
            h, na, nb, ns, c = _scores(gold, matrix[:, :steps].nan_to_num())
            hits, a, both, s, chance = hits + h, a + na, both + nb, s + ns, chance + c * ns
        out[method] = {"top1": hits / s, "aer": 1 - 2 * both / (a + s), "chance": chance / s}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=["translator", "copier"])
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("-n", type=int, default=100)
    args = p.parse_args()
    for task in args.tasks:
        acc = task_accuracy(task)
        print(
            f"toy:{task} held-out: exact match {acc['exact_match']:.3f}, token accuracy {acc['token_accuracy']:.3f} (n={acc['n']})"
        )
    for task in args.tasks:
        res = plausibility(task, args.methods, args.n)
        print(f"\ntoy:{task} (n={args.n}): top-1 alignment accuracy / AER / chance")
        print(f"{'method':<22}{'top1':>8}{'aer':>8}{'chance':>8}")
        for m, r in res.items():
            print(f"{m:<22}{r['top1']:>8.3f}{r['aer']:>8.3f}{r['chance']:>8.3f}")


if __name__ == "__main__":
    main()
