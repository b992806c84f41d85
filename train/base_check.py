"""Is a base model folder trainable? Checked before anything is loaded or written, so a
bad base is one line, not a traceback from deep inside transformers."""

from __future__ import annotations

from pathlib import Path

from sftmerge.errors import SftmergeError
from sftmerge.io.checkpoint import read_header


def check_weights(base: str) -> None:
    """The folder holds weights, and every safetensors file is whole (header and tensors fit the file)."""
    folder = Path(base)
    safetensors = sorted(folder.glob("*.safetensors"))
    if not safetensors:
        if sorted(folder.glob("pytorch_model*.bin")):
            return  # PyTorch pickles: transformers reads them; nothing cheap to check
        raise SftmergeError(f"base {base}: no weights in that folder (no *.safetensors file)")
    for file in safetensors:
        try:
            read_header(file)
        except SftmergeError as e:
            raise SftmergeError(f"base {base}: corrupt weights: {e}") from None
        except OSError as e:
            raise SftmergeError(f"base {base}: cannot read {file.name}: {e.strerror or e}") from None


def check_chat_template(base: str) -> None:
    """Training formats every sample with the tokenizer's chat template: it must have one."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except Exception as e:  # missing or broken tokenizer files: whatever transformers raises
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise SftmergeError(f"base {base}: cannot load its tokenizer ({type(e).__name__}: {first})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise SftmergeError(f"base {base}: its tokenizer has no chat template (training formats every sample "
                            "as a chat; add chat_template.jinja to the folder or use an instruct model)")
