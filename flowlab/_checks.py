"""Value checks and the error they raise, one vocabulary for `IntegratorOptions` and the config
schema (`flowlab.study.config`): a `Check` returns the value or raises a `SettingError` that
carries the setting's key, what was expected and what was found."""

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["Check", "SettingError"]


class SettingError(ValueError):
    """A refused setting (a ValueError), raised by `IntegratorOptions` and the config schema.

    The message reads "{scope} {key} = {got!r}: expected {expected}" unless `message` is
    given; `key`, `expected` and `got` are kept as attributes.

    **Arguments:**

    - `key`: the setting's name, or a dotted config key ('' where the caller knows it).
    - `expected`: what is accepted ("a positive number").
    - `got`: the value found.
    - `scope`: the word before the key in the message ("setting", "integrator setting").
    - `message`: the whole message, in place of the default.
    """

    def __init__(self, key: str, expected: str, got: Any, *, scope: str = "setting",
                 message: str | None = None):
        self.key, self.expected, self.got = key, expected, got
        super().__init__(message or f"{scope} {key} = {got!r}: expected {expected}")


@dataclasses.dataclass(frozen=True)
class Check:
    """A value check: `check(value, key)` returns the (parsed) value or raises SettingError.

    `parse(value)` refuses with ValueError or TypeError (then `expected` is what the error
    says was expected), or with a SettingError of its own that states a narrower expectation
    (a close match, the failing entry of a list); `expected` is also used verbatim in the
    messages of checks built from this one. `optional`: None is accepted (and returned)."""

    expected: str
    parse: Callable[[Any], Any]
    optional: bool = False

    def __call__(self, value, key: str = "", *, scope: str = "setting"):
        if value is None and self.optional:
            return None
        try:
            if value is None:
                raise ValueError
            return self.parse(value)
        except SettingError as e:
            raise SettingError(key, e.expected, value, scope=scope) from None
        except (ValueError, TypeError):
            raise SettingError(key, self.expected, value, scope=scope) from None
