"""A module instance's forward replaced for the length of a `with` block, and given back on exit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn


class ForwardSwap:
    """Within a `with`, each of `modules` runs `self.wrap(module, its_forward)` as its forward; on exit the instance
    gets back what it had (its class's forward, or a wrapper the instance carried, e.g. accelerate's hooks)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list({id(module): module for module in modules}.values())
        self._saved: list[tuple[nn.Module, Any]] = []

    def wrap(self, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError

    def __enter__(self):
        for module in self.modules:
            self._saved.append((module, module.__dict__.get("forward")))
            module.forward = self.wrap(module, module.forward)
        return self

    def __exit__(self, *exc: object) -> None:
        for module, saved in reversed(self._saved):
            if saved is None:
                del module.forward
            else:
                module.forward = saved
        self._saved.clear()
