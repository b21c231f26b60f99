"""The reason a failed process or call gives, in one line, for the operator's terminal: Ray, vLLM
and ``ray start`` report failures as tracebacks and multi-line validation errors."""

from __future__ import annotations


def one_line(text: str) -> str:
    """The most telling line of a (possibly 200-line) error text.

    Takes the last ``...Error:``/``...Exception:`` line; for a pydantic validation error (vLLM's
    config classes) the reason is on the next line, so it is appended.
    """
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for marker in ("Error:", "Exception:", "error:"):
        hits = [i for i, ln in enumerate(lines) if marker in ln and not ln.startswith("File ")]
        if hits:
            i = hits[-1]
            line = lines[i]
            if "validation error" in line and i + 1 < len(lines):
                line += ": " + lines[i + 1].removeprefix("Value error, ")
            return line[:500]
    return (lines[-1] if lines else "")[:500]
