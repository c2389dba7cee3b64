import re


class InfraError(RuntimeError):
    """A one-line, actionable error about the local infrastructure (missing JDK, busy port...)."""


class PortTaken(InfraError):
    """A process could not bind a port chosen for it (another process took it meanwhile): retry with others."""


# "Exception in thread "main" java.lang.IllegalArgumentException: requirement failed: ..." or
# "Caused by: java.net.BindException: Address already in use", or Python's "OSError: [Errno 98] ...".
_EXCEPTION_LINE = re.compile(
    r"^\s*(?:Exception in thread \"[^\"]*\"\s+|Caused by:\s+)?(?:[\w$]+\.)*([\w$]*(?:Exception|Error)): (.+)$",
    re.MULTILINE)
_BIND_FAILED = re.compile(r"Address already in use|BindException|could not bind|failed to bind", re.IGNORECASE)


def cause_line(output: str, limit: int = 400) -> str:
    """The line that says what went wrong in a program's output: the first exception's own message
    ("IllegalArgumentException: requirement failed: Each listener must have a different port..."), else the
    last non-empty line; never a stack trace."""
    match = _EXCEPTION_LINE.search(output or "")
    if match:
        line = f"{match.group(1)}: {match.group(2).strip()}"
    else:
        lines = [ln.strip() for ln in (output or "").splitlines() if ln.strip() and not ln.lstrip().startswith("at ")]
        line = lines[-1] if lines else "(no output)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def bind_failed(output: str) -> bool:
    """Whether a program's output says it could not bind its port."""
    return bool(_BIND_FAILED.search(output or ""))
