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


class NullProgress:
    """Reports nowhere: the default for library calls."""

    def start(self, total: int | None, label: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
