"""The arguments of one context-reliance example: Inseq 0.7.1's ``AttributeContextArgs`` names, defaults and
checks (templates filled in, placeholders validated), minus its interactive prompts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("manual", "auto", "pre")


@dataclass
class ContextArgs:
    """One example and how to treat it; see the README (Context reliance) for each field."""

    input_current_text: str = ""
    input_context_text: str | None = None
    input_template: str | None = None
    output_context_text: str | None = None
    output_current_text: str | None = None
    output_template: str | None = None
    contextless_input_current_text: str | None = None
    contextless_output_current_text: str | None = None
    attribution_method: str = "saliency"
    attributed_fn: str | None = None
    attribution_kwargs: dict[str, Any] = field(default_factory=dict)
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    context_sensitivity_metric: str = "kl_divergence"
    context_sensitivity_std_threshold: float | None = 1.0
    context_sensitivity_topk: int | None = None
    attribution_std_threshold: float | None = 1.0
    attribution_topk: int | None = None
    handle_output_context_strategy: str = "manual"
    contextless_output_next_tokens: list[str] = field(default_factory=list)
    special_tokens_to_keep: list[str] = field(default_factory=list)
    decoder_input_output_separator: str = " "
    normalize_attributions: bool = False
    rescale_attributions: bool = False
    add_output_info: bool = True

    def __post_init__(self) -> None:
        if not self.input_current_text:
            raise ValueError("input_current_text must be a non-empty string.")
        if self.handle_output_context_strategy not in STRATEGIES:
            raise ValueError(
                f"handle_output_context_strategy={self.handle_output_context_strategy!r}; valid: {', '.join(STRATEGIES)}."
            )
        if self.input_template is None:
            self.input_template = "{current}" if self.input_context_text is None else "{context} {current}"
        if self.output_template is None:
            self.output_template = "{current}" if self.output_context_text is None else "{context} {current}"
        for name in ("contextless_input_current_text", "contextless_output_current_text"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, "{current}")
            elif "{current}" not in value:
                raise ValueError(f"{{current}} placeholder is missing from {name} template {value!r}.")
        for name in ("input_template", "output_template"):
            if "{current}" not in getattr(self, name):
                raise ValueError(f"{{current}} placeholder is missing from {name} {getattr(self, name)!r}.")
        self._check_contexts()

    def _check_contexts(self) -> None:
        if self.input_context_text and not self.has_input_context:
            raise ValueError(
                f"input_context_text is given but input_template {self.input_template!r} has no {{context}}: "
                "add it to the template or drop the context."
            )
        if self.output_context_text and not self.has_output_context:
            raise ValueError(
                f"output_context_text is given but output_template {self.output_template!r} has no {{context}}: "
                "add it to the template or drop the context."
            )
        if not self.input_context_text and self.has_input_context:
            raise ValueError(f"input_template {self.input_template!r} has {{context}} but no input_context_text.")
        template = str(self.output_template)
        if self.has_output_context and template.find("{context}") > template.find("{current}"):
            raise ValueError(f"{{context}} must come before {{current}} in output_template {template!r}.")
        if self.has_output_context and self.output_context_text is None:
            if self.handle_output_context_strategy != "auto":
                raise ValueError(
                    f"output_template {template!r} asks for an output context that would have to be split from the "
                    "generation: give output_context_text (and output_current_text), or "
                    "handle_output_context_strategy='auto' (split at the template's separator); inseq_ray never "
                    "prompts interactively."
                )

    @property
    def has_input_context(self) -> bool:
        return "{context}" in str(self.input_template)

    @property
    def has_output_context(self) -> bool:
        return "{context}" in str(self.output_template)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "has_input_context": self.has_input_context,
                "has_output_context": self.has_output_context}  # fmt: skip
