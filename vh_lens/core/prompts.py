"""Chat templates: the checkpoint's own when it has one, else the known LLaVA formats."""

from __future__ import annotations

IMAGE_PLACEHOLDER = "<image>"

LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
"""LLaVA-1.5's (Vicuna) conversation format, as in the llava-hf checkpoints."""

# Known formats for checkpoints that ship no chat template. "{image}" is replaced by the
# image placeholder and a newline, or by nothing for a text-only prompt.
KNOWN_FORMATS = {
    "llava-1.5": "USER: {image}{question} ASSISTANT:",
    "mistral-instruct": "[INST] {image}{question} [/INST]",
    "llama-3": (
        "<|start_header_id|>user<|end_header_id|>\n\n{image}{question}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "chatml": "<|im_start|>user\n{image}{question}<|im_end|>\n<|im_start|>assistant\n",
    "phi-3": "<|user|>\n{image}{question}<|end|>\n<|assistant|>\n",
}


def known_format(text_model_type: str, vocab_size: int) -> str:
    """The name of the known prompt format for a backbone without a chat template."""
    if text_model_type == "mistral":
        return "mistral-instruct"
    if text_model_type == "llama" and vocab_size >= 128000:
        return "llama-3"
    if text_model_type == "qwen2":
        return "chatml"
    if text_model_type == "phi3":
        return "phi-3"
    return "llava-1.5"


def build_prompt(question: str, *, has_image: bool, chat_template_owner=None, fmt: str = "llava-1.5") -> str:
    """Wrap ``question`` in a chat template, with the image placeholder first when there is an image.

    Args:
        question: the user's question, without placeholder.
        has_image: whether the sample carries an image.
        chat_template_owner: a processor or tokenizer with a ``chat_template``; its template is
            used when it has one.
        fmt: a key of :data:`KNOWN_FORMATS`, used when there is no chat template.
    """
    owner = chat_template_owner
    if owner is not None and getattr(owner, "chat_template", None):
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if fmt not in KNOWN_FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; known: {sorted(KNOWN_FORMATS)}")
    image = IMAGE_PLACEHOLDER + "\n" if has_image else ""
    return KNOWN_FORMATS[fmt].format(image=image, question=question)
