"""Library output a user cannot act on, kept out of qtune's logs; qtune says what matters in its own words.

- bitsandbytes, on a CPU with AVX512-BF16, warns at import that it could not fetch an optional
  kernel from the Hub ("Failed to load CPU gemm_4bit_forward from kernels-community ... pip install
  kernels"). That kernel only serves the bf16 inference path, which qtune turns on for ``generate``
  and ``chat`` alone and names when it does (:mod:`qtune.models.bnb_layout`); bitsandbytes then uses
  its own kernel. The warning is dropped, nothing else from bitsandbytes is.
- transformers and datasets draw a progress bar per checkpoint load and per dataset map, and
  transformers' GGUF reader a plain tqdm bar per conversion. On a terminal they redraw in place; in a
  file or a CI log each redraw is a new line. When stderr is not a terminal they are switched off (an
  explicit ``HF_HUB_DISABLE_PROGRESS_BARS`` / ``HF_DATASETS_DISABLE_PROGRESS_BARS`` / ``TQDM_DISABLE``
  set by the user wins); qtune says itself when it converts a packaged model.
- peft asks every model ``is_gradient_checkpointing``, which transformers 5 answers with a
  FutureWarning about its own rename; nothing a qtune user can change, so that one warning is dropped.

:func:`quiet` is called once by the CLI before any command imports those libraries.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

_BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_OPTIONAL_KERNEL = "Failed to load CPU gemm_4bit_forward"


class _DropOptionalKernelWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_BNB_OPTIONAL_KERNEL)


def quiet(stream=None) -> None:
    """Drop the noise described in the module docstring (idempotent)."""
    logger = logging.getLogger(_BNB_CPU_OPS_LOGGER)
    if not any(isinstance(f, _DropOptionalKernelWarning) for f in logger.filters):
        logger.addFilter(_DropOptionalKernelWarning())
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
