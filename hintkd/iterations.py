"""Iteration counts under --scale (standard library only: the driver checks its
arguments with it before anything is installed)."""
import math


def scaled(iterations, scale):
    return max(1, int(round(iterations * scale)))


def scale_problem(stepvalues, max_iter, scale, what):
    """Why a scale is refused, or None. A scale so small that two learning-rate steps, or
    the last step and the end, fall on one iteration does not shorten the schedule but
    makes another one (--scale 1e-9: every stage one iteration); the message gives the
    smallest scale that keeps every step apart."""
    unscaled = [*stepvalues, max_iter]
    values = [scaled(v, scale) for v in unscaled]
    if len(values) < 2 or all(a < b for a, b in zip(values, values[1:])):
        return None
    if any(a >= b for a, b in zip(unscaled, unscaled[1:])):
        return None  # steps the schedule itself puts together (a user's solver): not the scale's doing
    smallest = next(s for s in _candidates(1 / min(b - a for a, b in zip(unscaled, unscaled[1:])))
                    if scale_problem(stepvalues, max_iter, s, what) is None)
    return (f"--scale {scale:g} leaves {what} (learning-rate steps at {', '.join(map(str, unscaled[:-1]))}, "
            f"end {unscaled[-1]}) at steps {', '.join(map(str, values[:-1]))}, end {values[-1]}: two of them on "
            f"one iteration; use --scale {smallest:g} or more (or --scale-anyway to run it so)")


def _candidates(start):
    """Scales from start upwards in steps of two significant digits (0.003333 -> 0.0034, 0.0035, ...)."""
    unit = 10.0 ** (math.floor(math.log10(start)) - 1)
    value = math.ceil(start / unit)
    while True:
        yield round(value * unit, 12)
        value += 1
