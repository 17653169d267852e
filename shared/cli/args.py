"""Validated numbers for the command line: a bad value is refused naming the option, never taken as "absent".

Every stage's numeric options use these ``type=`` functions, so ``--batch-size 0`` or ``--lr nan`` is an
error (exit 2, ``argument --lr: expected a number above 0, got nan``) rather than a silent default.
"""

import argparse

__all__ = ["non_negative_float", "non_negative_int", "positive_float", "positive_int", "rate"]


def _number(kind: type, low: float, *, low_included: bool, high: float | None = None, what: str):
    """An argparse ``type`` that reads ``kind`` and refuses values outside [low, high) with a clear message.

    Only an absent option takes the setting's value: ``--batch-size 0`` is an error, never "the default".
    """

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        too_low = value < low if low_included else value <= low
        if too_low or (high is not None and value >= high) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


positive_int = _number(int, 0, low_included=False, what="a whole number of at least 1")
non_negative_int = _number(int, 0, low_included=True, what="a whole number of at least 0")
positive_float = _number(float, 0.0, low_included=False, high=float("inf"), what="a number above 0")
non_negative_float = _number(float, 0.0, low_included=True, high=float("inf"), what="a number of at least 0")
rate = _number(float, 0.0, low_included=True, high=1.0, what="a rate of at least 0 and below 1")
