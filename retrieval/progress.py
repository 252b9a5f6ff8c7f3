"""Progress reporting as a tiny protocol: the library reports, the CLI decides how to draw."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress(Protocol):
    #: `total` None: the amount is not known in advance (count and rate, no time left).
    def start(self, total: int | None, label: str) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def note(progress: Progress, text: str) -> None:
    """Show `text` beside the count (an index run's "videos 2 (41 frames)": a count of files
    says little of the work where one file is a video of many frames), where `progress` can.
    Not part of the protocol, so a caller's own Progress without ``note`` still works."""
    method = getattr(progress, "note", None)
    if callable(method):
        method(text)


class NullProgress:
    """Reports nowhere: the default for library calls."""

    def start(self, total: int | None, label: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """Count, rate and time left on stderr (tqdm hides itself when stderr is not a terminal)."""

    def __init__(self, disable: bool | None = None):
        self.bar: tqdm[Any] | None = None
        self.disable = disable

    def start(self, total: int | None, label: str) -> None:
        from tqdm import tqdm

        self.close()
        if total is None or total > 0:
            self.bar = tqdm(total=total, desc=label, unit="it", dynamic_ncols=True, disable=self.disable)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, text: str) -> None:
        """Text after the count and rate, until the bar closes (drawn with the next update)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
