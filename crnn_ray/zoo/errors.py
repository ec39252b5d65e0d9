"""The one error shape of the zoo: a one-line CliError naming the spec, the position and the token there.

Its own module because the grammar (spec.py), the op table (ops.py) and the family builders all raise it,
and the grammar imports the op table: keeping it here keeps the imports one-way.
"""

from __future__ import annotations

from crnn_ray.io import CliError


def spec_error(text: str, pos: int, message: str) -> CliError:
    """A one-line error naming the spec, the character position (0-based) and the token found there."""
    token = _token_at(text, pos)
    return CliError(f"model spec {text!r}: {message} at position {pos} (token {token!r})")


def _token_at(text: str, pos: int) -> str:
    if pos >= len(text):
        return "<end>"
    end = pos + 1
    if text[pos].isalnum() or text[pos] in "._":
        while end < len(text) and (text[end].isalnum() or text[end] in "."):
            end += 1
    return text[pos:end]
