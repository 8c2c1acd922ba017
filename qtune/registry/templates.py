"""Chat templates qtune knows by name, for models whose files carry none of their own.

A recipe names one with ``data.chat_template``; ``auto`` takes the model's own template (its
tokenizer config, or ``tokenizer.chat_template`` of the GGUF it came from) and only falls back to a
named one — the family's, else ChatML — with a line saying so. Each template ends an assistant turn
with the token its family stops generating on (ChatML and Mistral: the tokenizer's EOS; Llama 3
``<|eot_id|>``; Gemma ``<end_of_turn>``; Phi-3 ``<|end|>``), and prints ``bos_token`` where the
family's own template does. Gemma and Mistral have no system role: a system message is put in front
of the first user message, as their own templates do.
"""

from __future__ import annotations

_SYSTEM_INTO_FIRST_USER = (
    "{%- set sys = messages[0]['content'] + '\\n\\n' if messages and messages[0]['role'] == 'system' else '' -%}"
    "{%- set first = 1 if sys else 0 -%}"
)

NAMED_TEMPLATES: dict[str, str] = {
    # ChatML with the tokenizer's own EOS closing a turn (<|im_end|> where that is the EOS).
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "eos_token + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
        "+ message['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}" + _SYSTEM_INTO_FIRST_USER +
        "{% for message in messages %}{% if message['role'] != 'system' %}"
        "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
        "{{ '<start_of_turn>' + role + '\n' + (sys if loop.index0 == first else '') + message['content'] + '<end_of_turn>\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "phi3": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}" + _SYSTEM_INTO_FIRST_USER +
        "{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + (sys if loop.index0 == first else '') + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
    ),
}
# Special tokens a template's turns are built from: a family's template is used for a model without
# one of its own only when its tokenizer has all of them as single tokens (a Llama 2 checkpoint is of
# the llama family too, but has no <|eot_id|>; ChatML and Mistral's [INST] read fine as plain text).
TEMPLATE_TOKENS: dict[str, tuple[str, ...]] = {
    "chatml": (),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "phi3": ("<|user|>", "<|assistant|>", "<|end|>"),
    "mistral": (),
}
FALLBACK_TEMPLATE = "chatml"  # for a model whose family has no known template its tokenizer can spell
TEMPLATE_CHOICES = ("auto", "tokenizer", *NAMED_TEMPLATES)  # data.chat_template
